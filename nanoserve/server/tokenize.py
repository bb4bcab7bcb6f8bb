"""POST /tokenize and /detokenize with vLLM's request and response shapes.

/tokenize takes either a completion-style body (`prompt`, `add_special_tokens` default true) or a
chat-style one (`messages`, rendered with the chat template exactly as /v1/chat/completions renders
them, `add_special_tokens` default false: the template writes any BOS itself) and returns
`{count, max_model_len, tokens[, token_strs]}`. /detokenize turns `tokens` back into `{prompt}`;
an id outside the vocabulary is a 400. Tokenizing and rendering run in a worker thread, never on the
event loop (after the same length check as the completions). Both sit behind the API key, like /v1/*.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StrictBool, StrictInt

from nanoserve.server.chat import render_chat_prompt
from nanoserve.server.protocol import ChatCompletionRequest, ChatMessage, StrictRequest
from nanoserve.server.serving import ServerState, check_token_ids

router = APIRouter()


class TokenizeCompletionRequest(StrictRequest):
    model: str | None = None
    prompt: str
    add_special_tokens: StrictBool = True
    return_token_strs: StrictBool | None = False


class TokenizeChatRequest(StrictRequest):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    add_generation_prompt: StrictBool = True
    continue_final_message: StrictBool = False
    add_special_tokens: StrictBool = False
    return_token_strs: StrictBool | None = False
    chat_template_kwargs: dict[str, Any] | None = None


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(StrictRequest):
    model: str | None = None
    tokens: list[StrictInt]


class DetokenizeResponse(BaseModel):
    prompt: str


async def _tokenize(state: ServerState, body: TokenizeCompletionRequest | TokenizeChatRequest) -> list[int]:
    if isinstance(body, TokenizeChatRequest):
        chat = ChatCompletionRequest(messages=body.messages, add_generation_prompt=body.add_generation_prompt,
                                     continue_final_message=body.continue_final_message,
                                     chat_template_kwargs=body.chat_template_kwargs)
        chat.check_supported()
        prompt = await render_chat_prompt(state, chat)
        if not body.add_special_tokens:
            return prompt.token_ids
        text = prompt.text or ""
    else:
        text = body.prompt
    return await state.encode_async(text, add_special_tokens=body.add_special_tokens)


@router.post("/tokenize")
async def tokenize(body: TokenizeChatRequest | TokenizeCompletionRequest, request: Request) -> JSONResponse:
    state: ServerState = request.app.state.nanoserve
    state.check_model(body.model)
    ids = await _tokenize(state, body)
    strs = state.tokenizer.convert_ids_to_tokens(ids) if body.return_token_strs else None
    resp = TokenizeResponse(count=len(ids), max_model_len=state.max_model_len, tokens=ids, token_strs=strs)
    return JSONResponse(resp.model_dump())


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request) -> JSONResponse:
    state: ServerState = request.app.state.nanoserve
    state.check_model(body.model)
    check_token_ids(body.tokens, state.vocab_size, param="tokens")
    text = await state.off_loop(state.tokenizer.decode, body.tokens)
    return JSONResponse(DetokenizeResponse(prompt=text).model_dump())
