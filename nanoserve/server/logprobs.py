"""The engine's logprobs in the two shapes of the OpenAI API.

The engine gives, per generated token, `{token_id: logprob}`: the top-N alternatives (descending),
then the sampled token if it is not among them. Completions want parallel lists (`tokens`,
`token_logprobs`, `top_logprobs`, `text_offset`); chat wants one object per token.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from nanoserve.server.protocol import ChatLogprobs, ChatLogprobToken, CompletionLogprobs, TopLogprob

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# JSON has no -inf; vLLM reports it as this.
_NEG_INF_LOGPROB = -9999.0


def _finite(x: float) -> float:
    return x if math.isfinite(x) else _NEG_INF_LOGPROB


def _top(entry: dict[int, float], n: int) -> list[tuple[int, float]]:
    return list(entry.items())[:n]


def completion_logprobs(tokenizer: PreTrainedTokenizerBase, token_ids: list[int],
                        entries: list[dict[int, float]], text_offset_start: int) -> CompletionLogprobs:
    """Logprobs of `token_ids` (one engine entry each) as /v1/completions returns them.

    As in OpenAI's legacy API, `top_logprobs` holds the top-N and the sampled token (up to N+1 entries).
    """
    out = CompletionLogprobs()
    offset = text_offset_start
    for tid, entry in zip(token_ids, entries, strict=False):
        token = tokenizer.decode([tid])
        out.tokens.append(token)
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
