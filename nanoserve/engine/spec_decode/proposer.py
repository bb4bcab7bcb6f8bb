"""The proposer interface the engine drives, and how many drafts each sequence may take this step.

A proposer drafts for running decodes after every step; the engine tells it when a sequence's state
must go (finished, aborted, preempted), and checks at teardown that it holds nothing.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

from nanoserve.engine.sequence import Sequence


class Proposer(Protocol):
    def propose(self, seqs: list[Sequence], num_tokens: list[int]) -> list[list[int]]:
        """At most num_tokens[i] draft tokens to follow each of `seqs` (fewer, or none, is fine)."""

    def free(self, seq: Sequence) -> None:
        """Drop whatever the proposer holds for `seq` (a draft model's KV blocks)."""

    def check_all_free(self) -> None:
        """AssertionError unless nothing is held (no request in flight)."""


def draft_room(seq: Sequence, k: int, max_model_len: int) -> int:
    """How many drafts `seq` may verify next: k, less where its emitted run (drafts + 1) would pass its
    max_tokens or the context. A constrained sequence gets none (its grammar mask for a position
    depends on the drafts before it)."""
    if seq.request.grammar is not None:
        return 0
    left = min(seq.request.max_tokens - seq.num_output_tokens, max_model_len - seq.num_tokens)
    return max(0, min(k, left - 1))


def prefill_chunk_max_tokens(model_dtype: str) -> int | None:
    """The longest prefill chunk that may carry drafts (None: any).

    A bf16/fp16 model's verify rows are bit-identical to plain decode steps only while they run as
    decode rows of the attention kernel (chunks of at most DECODE_ROWS_MAX_QUERY_LEN queries; longer
    chunks take the prefill path, whose rounding differs), so there a prefill chunk takes drafts only
    when it stays that short. An fp32 model lets any chunk carry drafts: its greedy identity is
    argued on the argmax alone (rows of a long chunk go through the prefill attention, whose fp32
    rounding differs from the decode kernel's in the last bits), as it always was."""
    if model_dtype == "float32":
        return None
    from nanoserve.model.attention.torch_backend import DECODE_ROWS_MAX_QUERY_LEN

    return DECODE_ROWS_MAX_QUERY_LEN


def make_proposer(spec, draft_runner=None, eos_token_ids: Collection[int] = ()) -> Proposer:  # noqa: ANN001
    """spec: a SpeculativeConfig; draft_runner: the draft model's ModelRunner (draft_model only);
    eos_token_ids: the target's, where a draft model stops drafting."""
    if spec.method == "ngram":
        from nanoserve.engine.spec_decode.ngram_proposer import NgramProposer

        return NgramProposer(spec.prompt_lookup_min, spec.prompt_lookup_max)
    from nanoserve.engine.spec_decode.draft_proposer import DraftModelProposer

    assert draft_runner is not None, "method draft_model needs its loaded runner"
    return DraftModelProposer(draft_runner, eos_token_ids)
