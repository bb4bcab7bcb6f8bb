"""POST /v1/completions: a prompt (string, list of strings, token ids, list of token-id lists) in,
n completions per prompt out, whole or streamed.

Choice indices run prompt-major: prompt i's completion j is choice `i * n + j`, as in vLLM.
`echo` prepends the prompt's text; with `logprobs` the prompt's tokens come first in the logprobs
(the first one null), from the engine's prompt logprobs. `echo` with `max_tokens: 0` scores the prompt
without generating (what evaluation harnesses use for log-likelihoods): as vLLM, the engine runs it
with max_tokens 1 and the one token is dropped. `suffix` is rejected with a 400.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from nanoserve.server.errors import APIError
from nanoserve.server.limits import check_request_limits
from nanoserve.server.logprobs import completion_logprobs, prompt_logprobs
from nanoserve.server.protocol import CompletionChoice, CompletionRequest, CompletionResponse
from nanoserve.server.serving import (
    Generation,
    Prompt,
    ServerState,
    check_token_ids,
    clamp_max_tokens,
    status_of,
)
from nanoserve.server.streaming import SSEResponse, sse

router = APIRouter()


async def _prompts(state: ServerState, body: CompletionRequest) -> list[Prompt]:
    raw = body.prompt
    if isinstance(raw, str) or (isinstance(raw, list) and raw and isinstance(raw[0], int)):
        raw = [raw]
    if not raw:
        raise APIError(400, "The prompt is empty: it must contain at least one token.", "prompt")
    check_request_limits(state.limits, max(body.n, body.best_of or 0), len(raw), body.stop)
    for p in raw:
        if isinstance(p, str):
            state.check_prompt_chars(len(p))  # all of them before tokenizing any
    prompts = []
    for p in raw:
        if isinstance(p, str):
            if not p:  # the tokenizer would make it [BOS], which is not a prompt
                raise APIError(400, "The prompt is empty: it must contain at least one character.",
                               "prompt")
            prompts.append(Prompt(await state.encode_async(p), p))
        else:
            check_token_ids(p, state.vocab_size)
            prompts.append(Prompt(list(p)))
    return prompts


def _prompt_text(state: ServerState, prompt: Prompt) -> str:
    if prompt.text is None:
        prompt.text = state.tokenizer.decode(prompt.token_ids)
    return prompt.text


@router.post("/v1/completions")
async def create_completion(body: CompletionRequest, request: Request) -> Response:
    state: ServerState = request.app.state.nanoserve
    model = state.check_model(body.model)
    body.check_supported()
    prompts = await _prompts(state, body)
    max_tokens = 1 if body.score_only else body.max_tokens
    params = [body.sampling_params(clamp_max_tokens(state.max_model_len, p, max_tokens), body.logprobs)
              for p in prompts]
    gen = Generation(state, f"cmpl-{uuid.uuid4().hex}", prompts, params)
    await gen.submit()
    if body.stream:
        return SSEResponse(_stream(state, gen, body, model), on_close=lambda: gen.close(status=499))
    if not await gen.run_to_end(request.receive):
        return Response(status_code=499)  # nobody is listening any more
    if body.score_only:
        _drop_generated(gen)
    return JSONResponse(_response(state, gen, body, model).model_dump())


def _drop_generated(gen: Generation) -> None:
    """Forget the one token a score-only request generated (it is not part of the answer or usage)."""
    for c in gen.choices:
        c.text_parts, c.token_ids, c.logprobs = [], [], []


def _echo_logprobs(gen: Generation, prompt_index: int) -> tuple[list[int], list]:
    """The prompt's token ids and their engine logprobs entries (the first None)."""
    ids = gen.prompts[prompt_index].token_ids
    entries = gen.prompt_logprobs[prompt_index]
    return ids, list(entries) if entries is not None else [None] * len(ids)


def _response(state: ServerState, gen: Generation, body: CompletionRequest, model: str) -> CompletionResponse:
    choices = []
    num_top = body.engine_prompt_logprobs or 0
    for c in gen.choices:
        prefix = _prompt_text(state, gen.prompts[c.prompt_index]) if body.echo else ""
        logprobs = None
        if body.logprobs is not None and body.echo:
            ids, entries = _echo_logprobs(gen, c.prompt_index)
            logprobs = completion_logprobs(state.tokenizer, ids + c.token_ids, entries + c.logprobs, 0)
        elif body.logprobs is not None:
            logprobs = completion_logprobs(state.tokenizer, c.token_ids, c.logprobs, len(prefix))
        choices.append(CompletionChoice(
            index=c.index, text=prefix + c.text, logprobs=logprobs, finish_reason=c.finish_reason,
            stop_reason=c.stop_reason,
            prompt_logprobs=prompt_logprobs(state.tokenizer, gen.prompt_logprobs[c.prompt_index], num_top)))
    return CompletionResponse(id=gen.request_id, model=model, choices=choices, usage=gen.usage)


async def _stream(state: ServerState, gen: Generation, body: CompletionRequest,
                  model: str) -> AsyncIterator[str]:
    def chunk(index: int, text: str, **fields) -> str:
        return sse(CompletionResponse(id=gen.request_id, model=model,
                                      choices=[CompletionChoice(index=index, text=text, **fields)]))

    status = 200
    # With logprobs the echo waits for the prompt's logprobs, which come with the choice's first delta.
    echo_first = body.echo and body.logprobs is None
    try:
        if echo_first:
            for c in gen.choices:
                yield chunk(c.index, _prompt_text(state, gen.prompts[c.prompt_index]))
        offsets = {c.index: 0 for c in gen.choices}
        echoed: set[int] = set()
        async for choice, delta in gen.deltas():
            if body.echo and not echo_first and choice.index not in echoed:
                echoed.add(choice.index)
                ids, entries = _echo_logprobs(gen, choice.prompt_index)
                text = _prompt_text(state, gen.prompts[choice.prompt_index])
                echo_logprobs = completion_logprobs(state.tokenizer, ids, entries, 0)
                yield chunk(choice.index, text, logprobs=echo_logprobs)
                offsets[choice.index] = len(text)
            if body.score_only:  # only the end of the choice: its token is not part of the answer
                if delta.finish_reason is not None:
                    yield chunk(choice.index, "", finish_reason=delta.finish_reason)
                continue
            logprobs = None
            if body.logprobs is not None and delta.token_ids:
                logprobs = completion_logprobs(state.tokenizer, list(delta.token_ids), delta.logprobs or [],
                                               offsets[choice.index])
                offsets[choice.index] += len(delta.text)
            if delta.text or delta.finish_reason is not None or logprobs is not None:
                yield chunk(choice.index, delta.text, logprobs=logprobs, finish_reason=delta.finish_reason,
                            stop_reason=delta.stop_reason)
        if body.include_usage:
            if body.score_only:
                _drop_generated(gen)
            yield sse(CompletionResponse(id=gen.request_id, model=model, choices=[], usage=gen.usage))
    except BaseException as e:
        status = status_of(e)
        raise
    finally:
        gen.close(status=status)
