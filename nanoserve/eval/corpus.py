"""The offline English corpus every machine has: the documentation topics CPython ships in `pydoc_data`.

The text is the topics in sorted-key order, joined by blank lines: the same bytes for a given Python
version (3.12 and 3.13 ship different topics, so results name the version and a digest of the text).
"""

from __future__ import annotations

import hashlib
import platform
from dataclasses import dataclass
from typing import Any

CORPUS_NAME = "pydoc_data.topics"


@dataclass(frozen=True)
class Corpus:
    name: str
    python_version: str  # whose pydoc_data the text comes from
    text_sha256: str  # of the whole joined text, first 16 hex digits
    text_chars: int
    token_ids: list[int]  # the first max_tokens tokens of the text, no special tokens added


def pydoc_text() -> str:
    """Every pydoc topic, in sorted-key order, separated by a blank line."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key].strip() for key in sorted(topics))


def load_corpus(tokenizer: Any, max_tokens: int) -> Corpus:
    """The corpus' first `max_tokens` tokens under `tokenizer` (plain text: no BOS or other specials)."""
    if max_tokens < 2:
        raise ValueError(f"max_tokens must be at least 2 (one of context, one scored), got {max_tokens}")
    text = pydoc_text()
    ids = tokenizer.encode(text, add_special_tokens=False)[:max_tokens]
    return Corpus(
        name=CORPUS_NAME,
        python_version=platform.python_version(),
        text_sha256=hashlib.sha256(text.encode()).hexdigest()[:16],
        text_chars=len(text),
        token_ids=list(ids),
    )
