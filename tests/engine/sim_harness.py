"""A model-free driver of the real Scheduler + BlockManager for tests.

It plays the runner's part with a fake KV pool: every computed token writes (token id, position) into
its cache slot, and after each step every scheduled sequence must find exactly its own tokens in the
slots its block table names. The "model" is a hash of the sequence so far, so outputs do not depend
on batching or preemption. A request with n > 1 is fanned out as the engine does (ParentRequest).
"""

from __future__ import annotations

import itertools

from nanoserve.config import SchedulerConfig
from nanoserve.engine.block_manager import BlockManager
from nanoserve.engine.parent_request import ParentRequest
from nanoserve.engine.scheduler import Scheduler, SchedulerOutput
from nanoserve.engine.sequence import SequenceStatus
from nanoserve.sampling_params import SamplingParams


def fake_next_token(token_ids: list[int], vocab: int = 50) -> int:
    return hash(tuple(token_ids)) % vocab


class Harness:
    def __init__(
        self,
        num_blocks: int,
        block_size: int = 4,
        max_num_seqs: int = 8,
        max_num_batched_tokens: int = 32,
        chunked: bool = True,
        prefix: bool = True,
        max_model_len: int = 4096,
    ) -> None:
        self.bm = BlockManager(num_blocks, block_size, prefix)
        self.config = SchedulerConfig(max_num_seqs, max_num_batched_tokens, max_model_len, chunked)
        self.sched = Scheduler(self.config, self.bm)
        self.slots: list[tuple[int, int] | None] = [None] * (num_blocks * block_size)
        self.requests: dict[str, ParentRequest] = {}
        self.order = itertools.count()
        self.steps: list[SchedulerOutput] = []

    def add(self, rid: str, prompt: list[int], max_tokens: int = 8, n: int = 1) -> ParentRequest:
        params = SamplingParams(n=n)  # the harness stops at the max_tokens given here
        share = self.bm.enable_prefix_caching and len(prompt) > self.bm.block_size  # as the engine does
        parent = ParentRequest.fan_out(rid, None, list(prompt), params, 0.0, self.order, max_tokens, share)
        self.requests[rid] = parent
        self._hand_out(parent)
        return parent

    def _hand_out(self, parent: ParentRequest) -> None:
        for child in parent.take_ready():
            self.sched.add_request(child)

    def abort(self, rid: str) -> None:
        self.requests[rid].finish_staged("abort")
        for child in self.requests[rid].children:
            self.sched.abort_request(child)

    def step(self) -> SchedulerOutput:
        out = self.sched.schedule()
        self.check_schedule(out)
        bs = self.bm.block_size
        for item in out.scheduled:
            seq = item.seq
            for p in range(item.start, item.start + item.num_new_tokens):
                self.slots[seq.block_table[p // bs] * bs + p % bs] = (seq.token_ids[p], p)
        for item in out.scheduled:  # every query sees exactly its own context
            seq = item.seq
            for p in range(item.start + item.num_new_tokens):
                got = self.slots[seq.block_table[p // bs] * bs + p % bs]
                assert got == (seq.token_ids[p], p), f"{seq} position {p}: cache holds {got}"
        self.sched.update_after_step(out)
        samplers = [i.seq for i in out.scheduled if i.samples]
        for seq in samplers:
            seq.token_ids.append(fake_next_token(seq.token_ids))
            if seq.num_output_tokens >= seq.request.max_tokens:
                self.sched.finish_seq(seq, "length")
            self._hand_out(self.requests[seq.request.parent_id])
        self.check_pool()
        self.steps.append(out)
        return out

    def run(self, max_steps: int = 10_000) -> None:
        for _ in range(max_steps):
            if all(p.is_finished for p in self.requests.values()):  # staged siblings included
                assert not self.sched.has_unfinished()
                return
            out = self.step()
            assert not out.is_empty, "no progress with requests pending"
        raise AssertionError("did not finish")

    def check_schedule(self, out: SchedulerOutput) -> None:
        assert out.num_batched_tokens == sum(i.num_new_tokens for i in out.scheduled)
        assert out.num_batched_tokens <= self.config.max_num_batched_tokens
        ids = [i.seq.seq_id for i in out.scheduled]
        assert len(ids) == len(set(ids))
        assert len(self.sched.running) <= self.config.max_num_seqs
        for item in out.scheduled:
            assert item.num_new_tokens >= 1
            assert item.seq.status is SequenceStatus.RUNNING
            assert len(item.seq.block_table) * self.bm.block_size >= item.start + item.num_new_tokens
            if not self.config.enable_chunked_prefill:
                assert item.samples, "without chunked prefill a prompt runs whole"

    def check_pool(self) -> None:
        """Every reference count equals the number of block tables naming the block."""
        counts = [0] * self.bm.num_blocks
        for seq in list(self.sched.running) + list(self.sched.waiting):
            for b in seq.block_table:
                counts[b] += 1
        assert counts == self.bm.ref_counts
        assert set(self.bm.free_queue) == {b for b, c in enumerate(counts) if c == 0}

    def outputs(self) -> dict[str, list[list[int]]]:
        return {
            rid: [c.seq.output_token_ids for c in sorted(p.children, key=lambda c: c.index)]
            for rid, p in self.requests.items()
        }
