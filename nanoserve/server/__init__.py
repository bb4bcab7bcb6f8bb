"""The OpenAI-compatible HTTP server (`nanoserve serve`).

app.py (FastAPI app, API key, body cap, lifespan) · protocol.py (request/response bodies) ·
completions.py, chat.py (the two generation endpoints) · serving.py (what they share: prompt checks,
`Generation`) · streaming.py (SSE) · disconnect.py (abort when the client leaves) · errors.py (OpenAI
error bodies) · logprobs.py · metrics.py (Prometheus) · cli.py (`serve` flags, draining SIGTERM).
The engine thread behind it is nanoserve/engine/async_engine.py.
"""
