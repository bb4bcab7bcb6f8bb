"""SamplingParams: how one request's tokens are chosen and when its generation stops.

Field names, defaults and accepted ranges follow vLLM's (and the OpenAI API's), so users' code carries
over. Every invalid value raises `InvalidRequestError(message, param=<field name>)`, a `ValueError`.
"""

from __future__ import annotations

import dataclasses
import json as _json
import math
from dataclasses import dataclass

from nanoserve.errors import InvalidRequestError

# Below this temperature sampling is greedy (argmax), as in vLLM.
SAMPLING_EPS = 1e-5
# The most alternatives `logprobs` may ask for (the OpenAI completions API caps it at 20 too).
MAX_LOGPROBS = 20
# torch.Generator takes a 64-bit seed; we accept any int that fits signed or unsigned 64 bits.
_SEED_MIN, _SEED_MAX = -(2**63), 2**64 - 1
# A constraint's spec (schema, regex, grammar, all choices together) is compiled on the engine thread;
# past this size a request could stall every other request's step, so it is refused up front.
MAX_STRUCTURED_SPEC_CHARS = 64 * 1024


@dataclass
class StructuredOutputsParams:
    """A constraint on the generated text (vLLM's names); exactly one of the fields is set.

    json: a JSON schema (dict or its text); json_object: any JSON object; regex: a regular expression;
    choice: one of these strings; grammar: an EBNF grammar (xgrammar's GBNF dialect, `root ::= ...`).
    """

    json: dict | str | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool = False

    def __post_init__(self) -> None:
        param = "structured_outputs"
        if self.json is not None and not isinstance(self.json, dict | str):
            raise _bad(param, "a JSON schema object or string in 'json'", self.json)
        for name in ("regex", "grammar"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise _bad(param, f"a string in '{name}'", value)
        if self.choice is not None:
            if (not isinstance(self.choice, list | tuple) or not self.choice
                    or not all(isinstance(c, str) for c in self.choice)):
                raise _bad(param, "a non-empty list of strings in 'choice'", self.choice)
            self.choice = list(self.choice)
        self.json_object = _bool(param, self.json_object)
        kinds = self.kinds
        if len(kinds) != 1:
            raise InvalidRequestError(
                f"structured_outputs must set exactly one of json, regex, choice, grammar, json_object; "
                f"got {kinds or 'none'}.",
                param=param,
            )
        if len(self.spec) > MAX_STRUCTURED_SPEC_CHARS:
            raise InvalidRequestError(
                f"structured_outputs is too large ({len(self.spec)} characters; at most "
                f"{MAX_STRUCTURED_SPEC_CHARS}).",
                param=param,
            )

    @property
    def kinds(self) -> list[str]:
        """The names of the fields that are set (exactly one after validation)."""
        names = [n for n in ("json", "regex", "choice", "grammar") if getattr(self, n) is not None]
        return names + ["json_object"] if self.json_object else names

    @property
    def kind(self) -> str:
        return self.kinds[0]

    @property
    def spec(self) -> str:
        """The constraint as one canonical string (the compiled-grammar cache key, with `kind`)."""
        kind = self.kind
        if kind == "json":
            # key order kept: a schema's property order is the order the output follows
            return self.json if isinstance(self.json, str) else _json.dumps(self.json)
        if kind == "choice":
            return _json.dumps(self.choice)
        if kind == "json_object":
            return ""
        return getattr(self, kind)


@dataclass
class SamplingParams:
    """Per-request sampling and stopping settings (vLLM's names and defaults)."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # 0 or -1 = off
    min_p: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None  # normalised to a list in __post_init__
    stop_token_ids: list[int] | None = None  # normalised to a list
    ignore_eos: bool = False
    max_tokens: int | None = 16  # None = up to the model's context
    min_tokens: int = 0
    logprobs: int | None = None  # top-N alternatives per token, besides the sampled one
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    # vLLM's output-shaping fields that the stop checker and detokenizer honour.
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    # A grammar the output must match (JSON schema, regex, choice, EBNF); None = unconstrained.
    structured_outputs: StructuredOutputsParams | None = None

    def __post_init__(self) -> None:
        self.n = _int("n", self.n, low=1)
        self.temperature = _float("temperature", self.temperature, 0.0, 2.0)
        self.top_p = _float("top_p", self.top_p, 0.0, 1.0, low_open=True)
        self.top_k = _int("top_k", self.top_k, low=-1)
        self.min_p = _float("min_p", self.min_p, 0.0, 1.0)
        if self.seed is not None:
            self.seed = _int("seed", self.seed, low=_SEED_MIN, high=_SEED_MAX)
        self.stop = _stop_strings(self.stop)
        self.stop_token_ids = _token_ids(self.stop_token_ids)
        self.ignore_eos = _bool("ignore_eos", self.ignore_eos)
        if self.max_tokens is not None:
            self.max_tokens = _int("max_tokens", self.max_tokens, low=1)
        self.min_tokens = _int("min_tokens", self.min_tokens, low=0)
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise InvalidRequestError(
                f"min_tokens must be at most max_tokens={self.max_tokens}, got {self.min_tokens}.",
                param="min_tokens",
            )
        if self.logprobs is not None:
            self.logprobs = _int("logprobs", self.logprobs, low=0, high=MAX_LOGPROBS)
        self.presence_penalty = _float("presence_penalty", self.presence_penalty, -2.0, 2.0)
        self.frequency_penalty = _float("frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        self.repetition_penalty = _float("repetition_penalty", self.repetition_penalty, 0.0, math.inf,
                                         low_open=True)
        self.include_stop_str_in_output = _bool("include_stop_str_in_output", self.include_stop_str_in_output)
        self.skip_special_tokens = _bool("skip_special_tokens", self.skip_special_tokens)
        if isinstance(self.structured_outputs, dict):
            self.structured_outputs = _structured_outputs(self.structured_outputs)
        elif self.structured_outputs is not None and not isinstance(self.structured_outputs,
                                                                    StructuredOutputsParams):
            raise _bad("structured_outputs", "a StructuredOutputsParams or a dict", self.structured_outputs)

    @property
    def greedy(self) -> bool:
        """True when the sampler takes the argmax (temperature below 1e-5, as vLLM)."""
        return self.temperature < SAMPLING_EPS

    @property
    def top_k_enabled(self) -> bool:
        return self.top_k > 0

    @property
    def has_penalties(self) -> bool:
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0 or self.repetition_penalty != 1.0

    def clone(self, **changes: object) -> SamplingParams:
        """A validated copy with `changes` applied (lists are copied, never shared)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields["stop"] = list(self.stop or [])
        fields["stop_token_ids"] = list(self.stop_token_ids or [])
        fields.update(changes)
        return SamplingParams(**fields)


def _bad(param: str, expected: str, value: object) -> InvalidRequestError:
    return InvalidRequestError(f"{param} must be {expected}, got {value!r}.", param=param)


def _int(param: str, value: object, low: int | None = None, high: int | None = None) -> int:
    # bool is an int subclass; True as "n" is a caller's bug, not a count. An integral float (2.0) is
    # accepted because JSON clients send those.
    if isinstance(value, bool):
        raise _bad(param, "an integer", value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise _bad(param, "an integer", value)
    if low is not None and value < low:
        raise _bad(param, f"at least {low}", value)
    if high is not None and value > high:
        raise _bad(param, f"at most {high}", value)
    return value


def _float(param: str, value: object, low: float, high: float, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(param, "a number", value)
    value = float(value)
    if math.isnan(value) or value > high or value < low or (low_open and value == low):
        left = "(" if low_open else "["
        right = ")" if math.isinf(high) else "]"
        raise _bad(param, f"in {left}{low}, {high}{right}", value)
    return value


def _bool(param: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise _bad(param, "a boolean", value)
    return value


def _stop_strings(stop: object) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list | tuple) or not all(isinstance(s, str) for s in stop):
        raise _bad("stop", "a string or a list of strings", stop)
    if any(s == "" for s in stop):
        raise InvalidRequestError("stop cannot contain an empty string.", param="stop")
    return list(stop)


def _structured_outputs(fields: dict) -> StructuredOutputsParams:
    known = {f.name for f in dataclasses.fields(StructuredOutputsParams)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise InvalidRequestError(f"structured_outputs has unknown fields {unknown}; "
                                  f"known: {sorted(known)}.", param="structured_outputs")
    return StructuredOutputsParams(**fields)


def _token_ids(ids: object) -> list[int]:
    if ids is None:
        return []
    if not isinstance(ids, list | tuple):
        raise _bad("stop_token_ids", "a list of token ids", ids)
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, int) or i < 0:
            raise _bad("stop_token_ids", "a list of non-negative integers", ids)
    return list(ids)
