"""Structured outputs: grammars (JSON schema, regex, choice, EBNF) that constrain a request's tokens.

`bitmask` is torch only (the sampler applies it); `compiler` and `manager` import xgrammar, lazily, so
an engine that never sees a constrained request never loads it. The scheduler and block manager know
nothing of grammars; the engine keeps one matcher per sequence (Request.grammar).
"""

from nanoserve.engine.structured_output.bitmask import TokenBitmask, apply_token_bitmask

__all__ = ["TokenBitmask", "apply_token_bitmask"]
