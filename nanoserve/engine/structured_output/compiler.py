"""GrammarCache: StructuredOutputsParams -> xgrammar CompiledGrammar, with an LRU of compiled grammars.

Compiling a JSON schema builds token masks over the whole vocabulary (milliseconds to seconds), so a
client that repeats a schema (the common case: one schema per application) compiles it once. The key
is (kind, canonical spec): a schema dict and the same schema as text share an entry.

JSON is compiled without free whitespace (`any_whitespace=False`, one space after ':' and ','): a model
(a random one especially) that may emit any whitespace can pad forever and never close the object.
A compile failure is the client's fault (a bad regex or schema) and becomes a 400 naming the field.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from typing import Any

from nanoserve.errors import InvalidRequestError
from nanoserve.sampling_params import StructuredOutputsParams

# Compiled grammars kept; a JSON schema's masks are typically tens of KB, so this bounds memory.
DEFAULT_CACHE_SIZE = 256
# xgrammar's C++ errors start with "[hh:mm:ss] /path/file.cc:123: "; the client needs the rest only.
_CPP_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: ")


class GrammarCache:
    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: list[int],
                 max_entries: int = DEFAULT_CACHE_SIZE) -> None:
        """tokenizer: the Hugging Face tokenizer; vocab_size: the model's lm_head rows (the logits'
        width, which may differ from the tokenizer's vocabulary); stop_token_ids: the model's EOS ids,
        the tokens that end a complete match."""
        import xgrammar as xgr

        self._xgr = xgr
        self.tokenizer_info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=list(stop_token_ids)
        )
        # One thread: compiles run on the engine thread between steps, beside the model's own threads.
        self._compiler = xgr.GrammarCompiler(self.tokenizer_info, max_threads=1, cache_enabled=False)
        self._cache: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0

    def get(self, params: StructuredOutputsParams) -> Any:
        """The CompiledGrammar for `params`; InvalidRequestError if it does not compile."""
        key = (params.kind, params.spec)
        compiled = self._cache.get(key)
        if compiled is not None:
            self._cache.move_to_end(key)
            self.hits += 1
            return compiled
        self.misses += 1
        compiled = self._compile(*key)
        self._cache[key] = compiled
        if len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        return compiled

    def _compile(self, kind: str, spec: str) -> Any:
        c = self._compiler
        try:
            if kind == "json":
                schema = bounded_strings_as_patterns(json.loads(spec))  # json.loads: a clearer message
                return c.compile_json_schema(json.dumps(schema), any_whitespace=False)
            if kind == "json_object":
                return c.compile_json_schema('{"type": "object"}', any_whitespace=False)
            if kind == "regex":
                return c.compile_regex(spec)
            if kind == "choice":
                return c.compile_grammar(choice_grammar(json.loads(spec)))
            if kind == "grammar":
                return c.compile_grammar(spec)
        except (RuntimeError, ValueError, TypeError) as e:
            message = _CPP_PREFIX.sub("", str(e).strip())
            raise InvalidRequestError(
                f"structured_outputs.{kind} is not a valid {_WHAT[kind]}: {message}",
                param="structured_outputs",
            ) from e
        raise AssertionError(f"unknown structured output kind {kind!r}")


_WHAT = {"json": "JSON schema", "json_object": "JSON object grammar", "regex": "regular expression",
         "choice": "list of choices", "grammar": "EBNF grammar"}


def bounded_strings_as_patterns(schema: Any) -> Any:
    """`schema` with each length-bounded string ({"type": "string", "maxLength": 6}) given as the
    equivalent pattern ("^.{0,6}$").

    xgrammar (0.2.x, mlc-ai/xgrammar#800) compiles minLength/maxLength to a character class that lets
    raw control characters (a tab) into the string, which is not JSON; its pattern path excludes them.
    Both paths leave out escape sequences, so the outputs are the same apart from that hole.
    """
    if isinstance(schema, list):
        return [bounded_strings_as_patterns(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: bounded_strings_as_patterns(v) for k, v in schema.items()}
    bounded = "minLength" in out or "maxLength" in out
    if out.get("type") == "string" and bounded and "pattern" not in out and "format" not in out:
        low, high = out.pop("minLength", 0), out.pop("maxLength", "")
        out["pattern"] = f"^.{{{low},{high}}}$"
    return out


def choice_grammar(choices: list[str]) -> str:
    """An EBNF grammar matching exactly one of `choices` (the literals escaped as JSON strings, which
    xgrammar's EBNF string syntax accepts)."""
    return "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)
