"""StructuredOutputManager: the engine's side of structured outputs.

At add_request it compiles the request's grammar (cached) and gives each completion its own matcher;
before a step it fills the token bitmask of the constrained rows that sample; after the step it
feeds each sampled token to its matcher and says when the grammar has ended. A matcher only ever
advances on newly sampled tokens, so a preempted sequence's recompute (which samples only its next
token) never replays tokens into it.
"""

from __future__ import annotations

import logging
from typing import Any

from nanoserve.engine.sequence import Request, Sequence
from nanoserve.engine.structured_output.bitmask import TokenBitmask
from nanoserve.sampling_params import SamplingParams

logger = logging.getLogger(__name__)


class StructuredOutputManager:
    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: list[int]) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.stop_token_ids = stop_token_ids
        self._cache = None  # a GrammarCache, built at the first constrained request (imports xgrammar)

    @property
    def cache(self) -> Any:
        if self._cache is None:
            from nanoserve.engine.structured_output.compiler import GrammarCache

            self._cache = GrammarCache(self.tokenizer, self.vocab_size, self.stop_token_ids)
        return self._cache

    def compile(self, params: SamplingParams) -> Any:
        """The request's CompiledGrammar (None when unconstrained); InvalidRequestError when invalid."""
        if params.structured_outputs is None:
            return None
        return self.cache.get(params.structured_outputs)

    def attach(self, requests: list[Request], compiled: Any) -> None:
        """One fresh matcher per completion: n > 1 children each follow the grammar on their own."""
        import xgrammar as xgr

        for request in requests:
            request.grammar = xgr.GrammarMatcher(compiled)

    def token_bitmask(self, seqs: list[Sequence]) -> TokenBitmask | None:
        """The allowed tokens of every constrained sequence among `seqs` (the step's sampling rows, in
        logits order); None when none is constrained."""
        rows = [i for i, s in enumerate(seqs) if s.request.grammar is not None]
        if not rows:
            return None
        import xgrammar as xgr

        bitmask = xgr.allocate_token_bitmask(len(rows), self.vocab_size)  # [R, ceil(V / 32)] int32
        for i, row in enumerate(rows):
            seqs[row].request.grammar.fill_next_token_bitmask(bitmask, i)
        return TokenBitmask(bitmask, rows)

    @staticmethod
    def accept(seq: Sequence, token: int) -> bool:
        """Advance seq's matcher by its sampled `token`; True when the grammar has ended (the output
        is complete), or when the token was refused (a masked row had nothing left; logged)."""
        matcher = seq.request.grammar
        if not matcher.accept_token(token):
            logger.error("request %s: token %d does not match its grammar; finishing it",
                         seq.request.request_id, token)
            return True
        return matcher.is_terminated()
