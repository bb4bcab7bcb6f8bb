"""Incremental detokenization: a sequence's output text, grown one token at a time.

Decoding all output ids on every step costs O(n) per token. Instead (vLLM's prefix / read offsets) we
decode a short window twice: the tokens already released since the last prefix (`prefix_text`) and
the same window plus the new tokens (`new_text`); the difference is the new text. Decoding a window
that starts a few tokens back, rather than the new token alone, keeps tokenizer context right (a
SentencePiece "▁word" decodes to " word" only after another token). Text ending in U+FFFD is an
unfinished multi-byte character (byte-level BPE, byte fallback) and is held back until it completes.
"""

from __future__ import annotations

from typing import Any

# Prompt tokens kept as left context of the first window (vLLM uses 5 too).
INITIAL_CONTEXT_TOKENS = 5
_REPLACEMENT_CHAR = "\ufffd"


class IncrementalDetokenizer:
    """Per-sequence state; `output_text` is the cumulative text of the tokens added so far."""

    def __init__(self, tokenizer: Any, prompt_token_ids: list[int], skip_special_tokens: bool = True) -> None:
        self._decode = _decoder(tokenizer, skip_special_tokens)
        context = list(prompt_token_ids[max(0, len(prompt_token_ids) - INITIAL_CONTEXT_TOKENS):])
        self._ids: list[int] = context  # window ids: context, then every output id
        self._prefix_offset = 0  # start of the decode window in self._ids
        self._read_offset = len(context)  # ids before this are already in output_text
        self.output_text = ""

    def add_token(self, token_id: int) -> str:
        """Append one output token; return the text it released ("" while a character is incomplete)."""
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix_offset:self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset:])
        if len(new_text) <= len(prefix_text) or new_text.endswith(_REPLACEMENT_CHAR):
            # Nothing printable yet (a special token skipped, or half of a character).
            return ""
        delta = new_text[len(prefix_text):]
        self.output_text += delta
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        if self._prefix_offset > 4096:  # keep the id list short on very long outputs
            del self._ids[: self._prefix_offset]
            self._read_offset -= self._prefix_offset
            self._prefix_offset = 0
        return delta

    def add_tokens(self, token_ids: list[int]) -> str:
        return "".join(self.add_token(t) for t in token_ids)


def detokenize(tokenizer: Any, prompt_token_ids: list[int], output_token_ids: list[int],
               skip_special_tokens: bool = True) -> str:
    """The cumulative output text of `output_token_ids`, exactly as the incremental path builds it."""
    detok = IncrementalDetokenizer(tokenizer, prompt_token_ids, skip_special_tokens)
    detok.add_tokens(output_token_ids)
    return detok.output_text


def _decoder(tokenizer: Any, skip_special_tokens: bool):
    """ids -> str without transformers' clean-up of spaces (which would differ between windows).

    A fast tokenizer decodes through its Rust backend directly (microseconds instead of the Python
    wrapper's tens); a slow one through `decode`.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return lambda ids: backend.decode(ids, skip_special_tokens=skip_special_tokens)
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=skip_special_tokens,
                                        clean_up_tokenization_spaces=False)
