"""Chapter notes: a short explanation and a formula box per chapter, in our own words.

chapters.yaml is keyed by "<seed>-<chapter>" (the chapter map's keys, e.g. "000-5"); each entry has
`title`, `notes` (paragraphs; inline math between \\( \\)) and `formulas` (a list of {tex, say}: the
formula in TeX, typeset by the bundled KaTeX, and one line on what it means). Served at
/chapter/<key> and linked from every exercise of the chapter.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml

CHAPTERS_FILE = Path(__file__).with_name("chapters.yaml")


@cache
def all_notes() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load(CHAPTERS_FILE.read_text()) or {}
    return {str(k): v for k, v in doc.items()}


def chapter_notes(key: str) -> dict[str, Any] | None:
    """The notes of one chapter, or None when it has none."""
    return all_notes().get(key)
