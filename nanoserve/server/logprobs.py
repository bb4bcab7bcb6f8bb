"""The engine's logprobs in the two shapes of the OpenAI API.

The engine gives, per generated token, `{token_id: logprob}`: the top-N alternatives (descending),
then the sampled token if it is not among them. Completions want parallel lists (`tokens`,
`token_logprobs`, `top_logprobs`, `text_offset`); chat wants one object per token. Prompt logprobs
(vLLM's `prompt_logprobs`) are one `{token id: Logprob}` object per prompt token, the first null.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from nanoserve.server.protocol import (
    ChatLogprobs,
    ChatLogprobToken,
    CompletionLogprobs,
    PromptLogprob,
    PromptLogprobs,
    TopLogprob,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# JSON has no -inf; vLLM reports it as this.
_NEG_INF_LOGPROB = -9999.0


def _finite(x: float) -> float:
    return x if math.isfinite(x) else _NEG_INF_LOGPROB


def _top(entry: dict[int, float], n: int) -> list[tuple[int, float]]:
    return list(entry.items())[:n]


def completion_logprobs(tokenizer: PreTrainedTokenizerBase, token_ids: list[int],
                        entries: list[dict[int, float] | None], text_offset_start: int) -> CompletionLogprobs:
    """Logprobs of `token_ids` (one engine entry each) as /v1/completions returns them.

    As in OpenAI's legacy API, `top_logprobs` holds the top-N and the sampled token (up to N+1 entries).
    A None entry (the first token of an echoed prompt: nothing precedes it) gives null logprobs.
    """
    out = CompletionLogprobs()
    offset = text_offset_start
    for tid, entry in zip(token_ids, entries, strict=False):
        token = tokenizer.decode([tid])
        out.tokens.append(token)
        if entry is None:
            out.token_logprobs.append(None)
            out.top_logprobs.append(None)
        else:
            out.token_logprobs.append(_finite(entry.get(tid, -math.inf)))
            out.top_logprobs.append({tokenizer.decode([t]): _finite(lp) for t, lp in entry.items()})
        out.text_offset.append(offset)
        offset += len(token)
    return out


def chat_logprobs(tokenizer: PreTrainedTokenizerBase, token_ids: list[int], entries: list[dict[int, float]],
                  n: int) -> ChatLogprobs:
    """Logprobs of `token_ids` as /v1/chat/completions returns them (`top_logprobs` = n alternatives)."""
    content = []
    for tid, entry in zip(token_ids, entries, strict=False):
        token = tokenizer.decode([tid])
        top = [TopLogprob(token=(s := tokenizer.decode([t])), logprob=_finite(lp), bytes=list(s.encode()))
               for t, lp in _top(entry, n)]
        content.append(ChatLogprobToken(token=token, logprob=_finite(entry.get(tid, -math.inf)),
                                        bytes=list(token.encode()), top_logprobs=top))
    return ChatLogprobs(content=content)


def prompt_logprobs(tokenizer: PreTrainedTokenizerBase, entries: list[dict[int, float] | None] | None,
                    num_top: int) -> PromptLogprobs | None:
    """The engine's prompt logprobs as vLLM's `prompt_logprobs` (None while the engine has none).

    Each engine entry lists the top `num_top` first (ranks 1..num_top), then the prompt token when it
    is not among them (rank not computed)."""
    if entries is None:
        return None
    out: PromptLogprobs = []
    for entry in entries:
        if entry is None:
            out.append(None)
            continue
        out.append({str(t): PromptLogprob(logprob=_finite(lp), rank=i + 1 if i < num_top else None,
                                          decoded_token=tokenizer.decode([t]))
                    for i, (t, lp) in enumerate(entry.items())})
    return out
