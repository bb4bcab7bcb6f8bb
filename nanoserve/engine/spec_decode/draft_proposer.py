"""Draft-model proposals: a small model sharing the target's tokenizer guesses the next k tokens.

The lean loop: per engine step, one forward of the draft over every drafting sequence's tokens it has
not seen (its prompt the first time; afterwards the tokens the last verify step kept, usually 1 to
k + 1), then k - 1 single-token forwards, each batched over all sequences; no scheduler, no sampler,
no detokenizer in between. Where the draft model decodes natively (model/fused_decode.py) and every
sequence wants the same number of drafts, the k forwards with their lm_head and argmax are one
native call (`FusedDecoder.greedy_steps`: ~60 us of Python per draft token saved on the demo draft),
the first forward included where it runs as decode rows (about 0.12 ms of Python more per step).
Drafts are the draft model's argmax (a point mass for the rejection sampler: exact for greedy and
for sampled requests alike). A sequence's drafting stops at a draft that would finish it (EOS or a
stop token id): the drafts after it could never be emitted.

The draft's KV is paged in its own pool (a BlockManager without prefix caching) through a shadow of
each sequence. What the draft has computed is checked against the sequence's tokens before every
proposal: the KV of rejected drafts is simply overwritten. The shadow and its blocks go when the
sequence finishes, is aborted or is preempted (the engine calls `free`).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch

from nanoserve.engine.block_manager import BlockManager
from nanoserve.engine.scheduler import ScheduledSeq, SchedulerOutput
from nanoserve.engine.sequence import Sequence
from nanoserve.engine.stop_checker import token_stop
from nanoserve.model.attention.torch_backend import runs_as_decode_rows
from nanoserve.model.fused_decode import FusedDecoder, GreedySeq

# What ModelRunner.prepare reads of a request: no prompt logprobs for the draft.
_DRAFT_REQUEST = SimpleNamespace(params=SimpleNamespace(prompt_logprobs=None))


@dataclass(eq=False)
class DraftSeq:
    """The draft pool's view of one sequence (the fields ModelRunner and BlockManager use)."""

    token_ids: list[int]  # the sequence's tokens, then the drafts proposed after them
    num_computed_tokens: int = 0  # leading token_ids whose draft K/V is in the draft pool
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)
    num_cached_blocks: int = 0
    num_prompt_tokens: int = 0
    request: object = field(default_factory=lambda: _DRAFT_REQUEST)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


class DraftModelProposer:
    def __init__(self, runner, eos_token_ids: Collection[int] = ()) -> None:  # noqa: ANN001 - a ModelRunner
        self.runner = runner
        self.eos_token_ids = frozenset(eos_token_ids)  # the target's: a draft of one ends the drafting
        cache = runner.cache_config
        self.block_manager = BlockManager(cache.num_blocks, cache.block_size, enable_prefix_caching=False)
        self.shadows: dict[int, DraftSeq] = {}  # by seq_id

    @torch.inference_mode()
    def propose(self, seqs: list[Sequence], num_tokens: list[int]) -> list[list[int]]:
        num_tokens = list(num_tokens)  # cut short below where a draft would finish its sequence
        drafts: list[list[int]] = [[] for _ in seqs]
        active: list[int] = []  # indices into seqs that got their draft slots
        for i, (seq, k) in enumerate(zip(seqs, num_tokens, strict=True)):
            shadow = self._sync(seq)
            # Slots for the unseen tokens and k - 1 drafts (the last draft is never fed back).
            unseen = shadow.num_tokens - shadow.num_computed_tokens
            if self.block_manager.allocate_slots(shadow, unseen + k - 1):  # type: ignore[arg-type]
                active.append(i)
        if self._propose_natively(seqs, active, num_tokens, drafts):
            return drafts
        items = [self._item(self.shadows[seqs[i].seq_id]) for i in active]
        for step in range(max((num_tokens[i] for i in active), default=0)):
            if step > 0:  # feed back each sequence's latest draft
                active = [i for i in active if num_tokens[i] > step]
                if not active:  # every sequence drafted what it could use
                    break
                items = [self._item(self.shadows[seqs[i].seq_id]) for i in active]
            for i, token in zip(active, self._argmax(items), strict=True):
                shadow = self.shadows[seqs[i].seq_id]
                shadow.num_computed_tokens = shadow.num_tokens
                shadow.token_ids.append(token)
                drafts[i].append(token)
                if self._finishes(seqs[i], token, step):
                    num_tokens[i] = step + 1  # nothing after it is ever emitted: stop drafting there
        return drafts

    def _propose_natively(
        self, seqs: list[Sequence], active: list[int], num_tokens: list[int], drafts: list[list[int]]
    ) -> bool:
        """The whole proposal of `active` in one native call (FusedDecoder.greedy_steps) when they all
        want the same number of drafts, the draft model decodes natively and the Python loop's first
        forward would run every unseen token as a decode row (so both give the same bits); False
        (nothing done) otherwise. A draft that would finish its sequence still ends that sequence's
        drafts; the native loop stops once every sequence drew such a draft, and what it computed
        past one (in the sequence's own KV slots) is overwritten later."""
        fused = self._native_decoder()
        if fused is None or not active:
            return False
        steps = num_tokens[active[0]]
        shadows = [self.shadows[seqs[i].seq_id] for i in active]
        unseen = [sh.num_tokens - sh.num_computed_tokens for sh in shadows]
        if any(num_tokens[i] != steps for i in active) or not all(
            runs_as_decode_rows(n, sh.num_tokens) for n, sh in zip(unseen, shadows, strict=True)
        ):
            return False
        rows = [
            GreedySeq(sh.token_ids[-n:], sh.num_tokens - n, sh.block_table, *self._stop_rule(seqs[i]))
            for i, n, sh in zip(active, unseen, shadows, strict=True)
        ]
        tokens = fused.greedy_steps(rows, self.runner.block_size, steps)
        for i, shadow, row in zip(active, shadows, tokens, strict=True):
            for step, token in enumerate(row):
                shadow.token_ids.append(token)
                drafts[i].append(token)
                if self._finishes(seqs[i], token, step):
                    break
            shadow.num_computed_tokens = shadow.num_tokens - 1  # the last draft is never fed back
        return True

    def _native_decoder(self) -> FusedDecoder | None:
        """The draft model's native decoder if it can run the whole loop (its lm_head included)."""
        runner = self.runner
        fused = runner.model.model.fused_decode
        if fused is None or fused.lm_head is None or runner.step_sink is not None:
            return None
        return fused

    def _stop_rule(self, seq: Sequence) -> tuple[tuple[int, ...], int]:
        """_finishes as data for the native loop: the token ids that finish `seq`, and the first draft
        step (0-based) at which they do (min_tokens)."""
        params = seq.request.params
        ids = () if params.ignore_eos else tuple(self.eos_token_ids)
        return ids + tuple(params.stop_token_ids or ()), max(0, params.min_tokens - seq.num_output_tokens - 1)

    def _finishes(self, seq: Sequence, token: int, step: int) -> bool:
        """Whether draft `step` (0-based), emitted as it stands, would end `seq` (EOS or a stop token)."""
        emitted = seq.num_output_tokens + step + 1  # its output-token number
        return token_stop(seq.request.params, self.eos_token_ids, token, emitted) is not None

    def _sync(self, seq: Sequence) -> DraftSeq:
        """The shadow of `seq`, its computed part cut back to where it still agrees with seq's tokens."""
        shadow = self.shadows.get(seq.seq_id)
        if shadow is None:
            shadow = self.shadows[seq.seq_id] = DraftSeq(list(seq.token_ids))
            return shadow
        agree = 0
        limit = min(shadow.num_computed_tokens, seq.num_tokens - 1)  # the last token is always fed
        old, new = shadow.token_ids, seq.token_ids
        while agree < limit and old[agree] == new[agree]:
            agree += 1
        shadow.token_ids = list(new)
        shadow.num_computed_tokens = agree
        self.block_manager.trim(shadow, agree)  # drafts' slots past it are allocated again
        return shadow

    @staticmethod
    def _item(shadow: DraftSeq) -> ScheduledSeq:
        start = shadow.num_computed_tokens
        return ScheduledSeq(shadow, shadow.num_tokens - start, start)  # type: ignore[arg-type]

    def _argmax(self, items: list[ScheduledSeq]) -> list[int]:
        if not items:
            return []
        runner = self.runner
        fused = runner.model.model.fused_decode
        if fused is not None and runner.step_sink is None and all(i.num_new_tokens == 1 for i in items):
            # the k - 1 feedback forwards: one native call on plain lists (see FusedDecoder.decode_lists)
            hidden = fused.decode_lists(
                [i.seq.token_ids[i.start] for i in items], [i.start for i in items],
                [i.seq.block_table for i in items], runner.block_size,
            )  # [S, hidden]
            return runner.kernels.argmax_rows(runner.model.compute_logits(hidden)).tolist()
        inputs = runner.prepare(SchedulerOutput(scheduled=items))
        hidden = runner.model(inputs.input_ids, inputs.positions, inputs.meta)  # [T, hidden]
        logits = runner.model.compute_logits(hidden[inputs.logits_rows])  # [S, vocab]
        return runner.kernels.argmax_rows(logits).tolist()

    def free(self, seq: Sequence) -> None:
        shadow = self.shadows.pop(seq.seq_id, None)
        if shadow is not None:
            self.block_manager.free(shadow)  # type: ignore[arg-type]

    def check_all_free(self) -> None:
        assert not self.shadows, f"draft state of {len(self.shadows)} sequences still held"
        self.block_manager.check_all_free()
