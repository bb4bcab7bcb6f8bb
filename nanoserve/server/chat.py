"""POST /v1/chat/completions: messages rendered with the tokenizer's chat template, n replies.

A model without a chat template gets a 400 (transformers no longer guesses one). `max_completion_tokens`
wins over the deprecated `max_tokens`; with neither, the reply may fill the rest of the context.
The first streamed chunk of each choice carries `role: assistant`.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from nanoserve.errors import InvalidRequestError
from nanoserve.server.errors import APIError
from nanoserve.server.logprobs import chat_logprobs
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


def render_chat_prompt(state: ServerState, body: ChatCompletionRequest) -> Prompt:
    tokenizer = state.tokenizer
    if not tokenizer.chat_template:
        raise APIError(400, "This model has no chat template, so /v1/chat/completions cannot format the "
                       "messages; use /v1/completions with a plain prompt.", "messages")
    kwargs = dict(body.chat_template_kwargs or {})
    if body.tools:
        kwargs["tools"] = template_tools(body)
    try:
        text = tokenizer.apply_chat_template(
            _messages(body), tokenize=False, add_generation_prompt=body.add_generation_prompt,
            continue_final_message=body.continue_final_message, **kwargs,
        )
    except APIError:
        raise
    except Exception as e:  # noqa: BLE001 -- a template that rejects these messages is the client's 400
        raise APIError(400, f"The chat template could not render these messages: {e}", "messages") from e
    # The template writes any BOS itself; adding special tokens again would double it.
    return Prompt(list(tokenizer(text, add_special_tokens=False).input_ids), text)


@router.post("/v1/chat/completions")
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    state: ServerState = request.app.state.nanoserve
    model = state.check_model(body.model)
    body.check_supported()
    tools = plan_tools(body, state.auto_tool_parser)
    prompt = render_chat_prompt(state, body)
    max_param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    max_tokens = clamp_max_tokens(state.max_model_len, prompt, body.requested_max_tokens, max_param,
                                  "messages")
    try:
        params = body.sampling_params(max_tokens, body.num_logprobs)
    except InvalidRequestError as e:
        # The engine calls it logprobs; the chat API calls the count top_logprobs.
        raise APIError(400, e.message.replace("logprobs", "top_logprobs"),
                       "top_logprobs" if e.param == "logprobs" else e.param) from e
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
    resp = ChatCompletionResponse(id=gen.request_id, model=model, choices=choices, usage=gen.usage)
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
