"""Request and response bodies of the OpenAI API, with OpenAI's and vLLM's field names.

Pydantic checks types (a wrong type is a 400 naming `body.<field>`); ranges are checked once, by
`SamplingParams`, whose `InvalidRequestError.param` names the field. Types are strict (`n: true` and
`stream: "yes"` are 400s, not coerced). An unknown field is a 400 naming it, never silently ignored;
fields we know but do not implement are listed once, in `UNSUPPORTED_FIELDS`. /tokenize and
/detokenize bodies (vLLM's) are in server/tokenize.py.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, StrictBool, StrictInt, model_validator

from nanoserve.sampling_params import SamplingParams
from nanoserve.server.errors import APIError
from nanoserve.server.limits import check_unicode
from nanoserve.server.structured_outputs import structured_outputs_of

# A number that may be written as an int, but never as a bool or a string.
StrictFloat = Annotated[float, Strict()]

# Fields of the OpenAI / vLLM APIs this server knows but does not implement (yet): a 400 saying so,
# instead of pydantic's generic "extra inputs" message. Implementing one = declaring it on the request
# model and deleting its line here.
UNSUPPORTED_FIELDS: dict[str, str] = {
    "priority": "priority is not supported: requests are served first come, first served.",
    "use_beam_search": "beam search is not supported.",
    "bad_words": "bad_words is not supported.",
    "allowed_token_ids": "allowed_token_ids is not supported.",
}


class StrictRequest(BaseModel):
    """Unknown fields are 400s; every string in the body must be valid Unicode."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _check_raw(cls, data: Any) -> Any:
        # APIError is not a ValueError: pydantic lets it through, and its handler answers 400 with param.
        if isinstance(data, dict):
            for name in data:
                if name in UNSUPPORTED_FIELDS and name not in cls.model_fields:
                    raise APIError(400, UNSUPPORTED_FIELDS[name], name)
        check_unicode(data)
        return data

# ---------------------------------------------------------------------------------------- requests


class StreamOptions(BaseModel, extra="forbid"):
    include_usage: StrictBool = False


class _SamplingRequest(StrictRequest):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model: str | None = None
    n: StrictInt = 1
    temperature: StrictFloat | None = None
    top_p: StrictFloat | None = None
    top_k: StrictInt | None = None
    min_p: StrictFloat | None = None
    seed: StrictInt | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[StrictInt] | None = None
    presence_penalty: StrictFloat | None = None
    frequency_penalty: StrictFloat | None = None
    repetition_penalty: StrictFloat | None = None
    ignore_eos: StrictBool = False
    min_tokens: StrictInt = 0
    include_stop_str_in_output: StrictBool = False
    skip_special_tokens: StrictBool = True
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # accepted and ignored
    logit_bias: dict[str, StrictFloat] | None = None  # token id (as a string) -> bias in [-100, 100]
    prompt_logprobs: StrictInt | None = None  # vLLM's: logprobs of each prompt token, non-streaming only
    # The output's constraint, in one of three spellings (server/structured_outputs.py).
    response_format: dict[str, Any] | None = None
    structured_outputs: dict[str, Any] | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None

    def check_supported(self) -> None:
        if self.stream_options is not None and not self.stream:
            raise APIError(400, "Stream options can only be defined when `stream=True`.", "stream_options")
        if self.prompt_logprobs is not None and self.stream:
            raise APIError(400, "prompt_logprobs is not available when stream is enabled.", "prompt_logprobs")

    @property
    def engine_prompt_logprobs(self) -> int | None:
        """SamplingParams.prompt_logprobs for this request."""
        return self.prompt_logprobs

    def sampling_params(self, max_tokens: int, logprobs: int | None) -> SamplingParams:
        """SamplingParams from the request; unset optional fields keep vLLM's defaults."""
        optional = ("temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty",
                    "repetition_penalty")
        kwargs: dict[str, Any] = {k: getattr(self, k) for k in optional if getattr(self, k) is not None}
        return SamplingParams(
            n=self.n, seed=self.seed, stop=self.stop, stop_token_ids=self.stop_token_ids,
            ignore_eos=self.ignore_eos, max_tokens=max_tokens, min_tokens=self.min_tokens, logprobs=logprobs,
            include_stop_str_in_output=self.include_stop_str_in_output,
            skip_special_tokens=self.skip_special_tokens, logit_bias=self.logit_bias,
            prompt_logprobs=self.engine_prompt_logprobs, structured_outputs=structured_outputs_of(self),
            **kwargs,
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_SamplingRequest):
    # Token ids first: a list of ints must not be read as anything else.
    prompt: list[StrictInt] | list[list[StrictInt]] | str | list[str]
    max_tokens: StrictInt | None = 16
    logprobs: StrictInt | None = None
    echo: StrictBool = False
    suffix: str | None = None
    best_of: StrictInt | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.suffix:
            raise APIError(400, "suffix is not supported: this server has no fill-in-the-middle models.",
                           "suffix")
        if self.best_of is not None and self.best_of != self.n:
            raise APIError(400, f"best_of must equal n ({self.n}) if given: best_of is not supported.",
                           "best_of")

    @property
    def score_only(self) -> bool:
        """echo with max_tokens 0: return the prompt (and its logprobs) and generate nothing."""
        return self.echo and self.max_tokens == 0

    @property
    def engine_prompt_logprobs(self) -> int | None:
        # echo with logprobs reports the prompt's tokens too, with as many alternatives (vLLM's rule).
        if self.prompt_logprobs is None and self.echo:
            return self.logprobs
        return self.prompt_logprobs


class ContentPart(BaseModel, extra="allow"):  # image_url etc.: refused by type in chat.py
    type: str
    text: str | None = None


class FunctionDefinition(BaseModel):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema; None = no parameters
    strict: bool | None = None


class ChatCompletionToolsParam(BaseModel):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class ChatCompletionNamedFunction(BaseModel):
    name: str


class ChatCompletionNamedToolChoiceParam(BaseModel):
    type: Literal["function"] = "function"
    function: ChatCompletionNamedFunction


class FunctionCall(BaseModel):
    name: str
    arguments: str  # JSON text


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel, extra="allow"):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant turn that called tools
    tool_call_id: str | None = None  # a tool turn: the call it answers


class ChatCompletionRequest(_SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: StrictInt | None = None  # deprecated by OpenAI in favour of max_completion_tokens
    max_completion_tokens: StrictInt | None = None
    logprobs: StrictBool = False
    top_logprobs: StrictInt | None = None
    tools: list[ChatCompletionToolsParam] | None = None
    # None: "auto" when tools are given, else "none" (OpenAI's default).
    tool_choice: Literal["none", "auto", "required"] | ChatCompletionNamedToolChoiceParam | None = None
    parallel_tool_calls: StrictBool = True
    add_generation_prompt: StrictBool = True
    continue_final_message: StrictBool = False
    # A request's own template: refused unless the server runs with --trust-request-chat-template.
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.top_logprobs is not None and not self.logprobs:
            raise APIError(400, "top_logprobs requires logprobs to be true.", "top_logprobs")
        if self.add_generation_prompt and self.continue_final_message:
            raise APIError(400, "add_generation_prompt and continue_final_message cannot both be true.",
                           "continue_final_message")

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def num_logprobs(self) -> int | None:
        """How many alternatives the engine must return per token (None = no logprobs)."""
        return (self.top_logprobs or 0) if self.logprobs else None


# --------------------------------------------------------------------------------------- responses


def now_s() -> int:
    return int(time.time())


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class CompletionLogprobs(BaseModel):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)  # None: an echoed first prompt token
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class PromptLogprob(BaseModel):
    """vLLM's Logprob: rank is 1 for the most likely token; None where it was not computed (a prompt
    token outside the top-N)."""

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


# One entry per prompt token, keyed by token id (a JSON string); the first is None.
PromptLogprobs = list[dict[str, PromptLogprob] | None]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    prompt_logprobs: PromptLogprobs | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=now_s)
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class ChatLogprobToken(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(BaseModel):
    content: list[ChatLogprobToken] = Field(default_factory=list)


class ChatResponseMessage(BaseModel):
    role: str = "assistant"
    content: str | None
    tool_calls: list[ToolCall] = Field(default_factory=list)


class ChatChoice(BaseModel):
    index: int
    message: ChatResponseMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=now_s)
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo
    prompt_logprobs: PromptLogprobs | None = None


class DeltaFunctionCall(BaseModel):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(BaseModel):
    """A piece of a streamed tool call: the first has its id, type and name; the rest add arguments."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunctionCall


class DeltaMessage(BaseModel):
    role: str | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChatStreamChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=now_s)
    model: str
    choices: list[ChatStreamChoice]
    usage: UsageInfo | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=now_s)
    owned_by: str = "nanoserve"
    root: str
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
