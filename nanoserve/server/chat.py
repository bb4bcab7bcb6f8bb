"""POST /v1/chat/completions: messages rendered with the tokenizer's chat template, n replies.

A model without a chat template gets a 400 (transformers no longer guesses one). `max_completion_tokens`
wins over the deprecated `max_tokens`; with neither, the reply may fill the rest of the context.
The first streamed chunk of each choice carries `role: assistant`.

Templates are rendered by transformers in jinja2's ImmutableSandboxedEnvironment, on a preparation
thread, never on the event loop. A request's own template (`chat_template`, or
`chat_template_kwargs.chat_template`) is a 400 unless the server trusts them
(`--trust-request-chat-template`, vLLM's flag): even sandboxed, a template can loop for minutes.
Those renders run one at a time and a render over `--chat-template-timeout-s` is a 400 (its thread
finishes in the background; Python threads cannot be killed).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from nanoserve.errors import InvalidRequestError
from nanoserve.server.errors import APIError
from nanoserve.server.limits import check_request_limits
from nanoserve.server.logprobs import chat_logprobs, prompt_logprobs
from nanoserve.server.protocol import (
    ChatChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatResponseMessage,
    ChatStreamChoice,
    DeltaMessage,
)
from nanoserve.server.serving import Generation, Prompt, ServerState, clamp_max_tokens, status_of
from nanoserve.server.streaming import SSEResponse, sse
from nanoserve.server.tools import ToolPlan, delta_tool_calls, history_fields, plan_tools, template_tools

router = APIRouter()

# apply_chat_template's own arguments: as template variables they would change what it returns.
_RESERVED_TEMPLATE_KWARGS = frozenset({
    "conversation", "tools", "documents", "add_generation_prompt", "continue_final_message", "tokenize",
    "padding", "truncation", "max_length", "return_tensors", "return_dict", "return_assistant_tokens_mask",
    "tokenizer_kwargs",
})


def _messages(body: ChatCompletionRequest) -> list[dict[str, Any]]:
    out = []
    for i, m in enumerate(body.messages):
        content = m.content
        if isinstance(content, list):
            texts = []
            for part in content:
                if part.type != "text" or part.text is None:
                    raise APIError(400, f"Content parts of type {part.type!r} are not supported; only text.",
                                   f"messages.{i}.content")
                texts.append(part.text)
            content = "".join(texts)
        msg = {"role": m.role, "content": content or ""}
        if m.name is not None:
            msg["name"] = m.name
        msg.update(history_fields(m))
        out.append(msg)
    return out


def _template_kwargs(state: ServerState, body: ChatCompletionRequest) -> tuple[str | None, dict[str, Any]]:
    """(the request's own template or None, the other template variables); 400s for what is refused."""
    kwargs = dict(body.chat_template_kwargs or {})
    for key in kwargs:
        if key in _RESERVED_TEMPLATE_KWARGS:
            raise APIError(400, f"chat_template_kwargs cannot set `{key}`.", f"chat_template_kwargs.{key}")
    template = kwargs.pop("chat_template", None)
    param = "chat_template_kwargs.chat_template"
    if body.chat_template is not None:
        template, param = body.chat_template, "chat_template"
    if template is not None:
        if not state.trust_request_chat_template:
            raise APIError(400, "Chat templates in requests are refused: the server must be started with "
                           "--trust-request-chat-template to accept them.", param)
        if not isinstance(template, str):
            raise APIError(400, "A chat template must be a string.", param)
    if body.tools:
        kwargs["tools"] = template_tools(body)
    return template, kwargs


def _render(state: ServerState, messages: list[dict[str, Any]], body: ChatCompletionRequest,
            template: str | None, kwargs: dict[str, Any]) -> str:
    try:
        return state.tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=False,
            add_generation_prompt=body.add_generation_prompt,
            continue_final_message=body.continue_final_message, **kwargs,
        )
    except Exception as e:  # noqa: BLE001 -- a template that rejects these messages is the client's 400
        raise APIError(400, f"The chat template could not render these messages: {e}", "messages") from e


async def _render_request_template(state: ServerState, messages: list[dict[str, Any]],
                                   body: ChatCompletionRequest, template: str, kwargs: dict[str, Any]) -> str:
    """One at a time (the lock is held until the render's thread ends, even after a timeout), so slow
    templates cannot take every preparation thread; over the time limit the client gets a 400."""
    timeout_s = state.chat_template_timeout_s
    deadline = asyncio.get_running_loop().time() + timeout_s
    too_slow = APIError(400, f"The chat template took longer than {timeout_s:g} s to render (or to get "
                        "its turn).", "chat_template")
    try:
        await asyncio.wait_for(state.template_lock.acquire(), timeout_s)
    except TimeoutError:
        raise too_slow from None
    try:
        render = asyncio.ensure_future(state.off_loop(_render, state, messages, body, template, kwargs))
    except BaseException:
        state.template_lock.release()
        raise
    # Releases the lock when the thread ends; retrieving the exception keeps asyncio from logging one
    # that nobody awaited (after a timeout).
    render.add_done_callback(lambda f: (state.template_lock.release(), f.cancelled() or f.exception()))
    try:
        return await asyncio.wait_for(asyncio.shield(render),
                                      max(0.0, deadline - asyncio.get_running_loop().time()))
    except TimeoutError:
        raise too_slow from None


async def render_chat_prompt(state: ServerState, body: ChatCompletionRequest) -> Prompt:
    tokenizer = state.tokenizer
    template, kwargs = _template_kwargs(state, body)
    if not tokenizer.chat_template and template is None:
        raise APIError(400, "This model has no chat template, so /v1/chat/completions cannot format the "
                       "messages; use /v1/completions with a plain prompt.", "messages")
    messages = _messages(body)
    state.check_prompt_chars(sum(len(m["content"]) for m in messages), "messages")
    if template is None:
        text = await state.off_loop(_render, state, messages, body, None, kwargs)
    else:
        text = await _render_request_template(state, messages, body, template, kwargs)
    if not isinstance(text, str):
        raise APIError(400, "The chat template did not render to text.", "messages")
    # The template writes any BOS itself; adding special tokens again would double it.
    return Prompt(await state.encode_async(text, "messages", add_special_tokens=False), text)


@router.post("/v1/chat/completions")
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    state: ServerState = request.app.state.nanoserve
    model = state.check_model(body.model)
    body.check_supported()
    check_request_limits(state.limits, body.n, 1, body.stop)
    tools = plan_tools(body, state.auto_tool_parser)
    prompt = await render_chat_prompt(state, body)
    max_param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    max_tokens = clamp_max_tokens(state.max_model_len, prompt, body.requested_max_tokens, max_param,
                                  "messages")
    try:
        params = body.sampling_params(max_tokens, body.num_logprobs)
    except InvalidRequestError as e:
        # The engine calls it logprobs; the chat API calls the count top_logprobs.
        if e.param != "logprobs":
            raise
        raise APIError(400, e.message.replace("logprobs", "top_logprobs"), "top_logprobs") from e
    params = tools.sampling_params(params)
    gen = Generation(state, f"chatcmpl-{uuid.uuid4().hex}", [prompt], [params])
    try:
        await gen.submit()
    except InvalidRequestError as e:
        if tools.schema is not None and e.param == "structured_outputs":  # the grammar came from the tools
            raise APIError(400, f"The tools' parameters are not a usable JSON schema: {e.message}",
                           "tools") from e
        raise
    if body.stream:
        return SSEResponse(_stream(state, gen, body, model, tools), on_close=lambda: gen.close(status=499))
    if not await gen.run_to_end(request.receive):
        return Response(status_code=499)
    choices = []
    for c in gen.choices:
        content, tool_calls = tools.extract(c.text)
        choices.append(ChatChoice(
            index=c.index, message=ChatResponseMessage(content=content, tool_calls=tool_calls),
            finish_reason=tools.finish_reason(bool(tool_calls), c.finish_reason), stop_reason=c.stop_reason,
            logprobs=chat_logprobs(state.tokenizer, c.token_ids, c.logprobs, body.top_logprobs or 0)
            if body.logprobs else None))
    resp = ChatCompletionResponse(
        id=gen.request_id, model=model, choices=choices, usage=gen.usage,
        prompt_logprobs=prompt_logprobs(state.tokenizer, gen.prompt_logprobs[0], body.prompt_logprobs or 0))
    return JSONResponse(resp.model_dump())


async def _stream(state: ServerState, gen: Generation, body: ChatCompletionRequest,
                  model: str, tools: ToolPlan) -> AsyncIterator[str]:
    def chunk(choice: ChatStreamChoice) -> str:
        return sse(ChatCompletionChunk(id=gen.request_id, model=model, choices=[choice]))

    status = 200
    tool_streams = {c.index: tools.stream() for c in gen.choices}
    try:
        for c in gen.choices:
            yield chunk(ChatStreamChoice(index=c.index, delta=DeltaMessage(role="assistant", content="")))
        async for choice, delta in gen.deltas():
            logprobs = None
            if body.logprobs and delta.token_ids:
                logprobs = chat_logprobs(state.tokenizer, list(delta.token_ids), delta.logprobs or [],
                                         body.top_logprobs or 0)
            content, tool_calls = delta.text, None
            finish_reason = delta.finish_reason
            tool_stream = tool_streams[choice.index]
            if tool_stream is not None:
                content, deltas = tool_stream.push(delta.text, final=finish_reason is not None)
                tool_calls = delta_tool_calls(deltas)
                finish_reason = tools.finish_reason(tool_stream.tools_called, finish_reason)
            if content or tool_calls or finish_reason is not None or logprobs is not None:
                yield chunk(ChatStreamChoice(index=choice.index,
                                             delta=DeltaMessage(content=content, tool_calls=tool_calls),
                                             logprobs=logprobs, finish_reason=finish_reason,
                                             stop_reason=delta.stop_reason))
        if body.include_usage:
            yield sse(ChatCompletionChunk(id=gen.request_id, model=model, choices=[], usage=gen.usage))
    except BaseException as e:
        status = status_of(e)
        raise
    finally:
        gen.close(status=status)
