"""The scheduler, driven without a model (sim_harness checks budgets, block tables and cache contents)."""

from __future__ import annotations

import random

import pytest
from sim_harness import Harness


def _plan(out) -> list[tuple[str, int]]:
    return [(i.seq.request.request_id, i.num_new_tokens) for i in out.scheduled]


def _random_workload(
    h: Harness, rng: random.Random, num: int, pool_tokens: int, n_max: int = 1
) -> dict[str, int]:
    """Add `num` requests; returns each one's n."""
    ns = {}
    shared = [rng.randrange(50) for _ in range(24)]
    for i in range(num):
        plen = rng.randint(1, 30)
        prompt = (shared[: rng.randint(0, 24)] if i % 2 else []) + [rng.randrange(50) for _ in range(plen)]
        max_tokens = min(rng.randint(1, 12), pool_tokens - len(prompt))
        ns[f"r{i}"] = rng.randint(1, n_max)
        h.add(f"r{i}", prompt, max_tokens=max_tokens, n=ns[f"r{i}"])
    return ns


@pytest.mark.parametrize("chunked", [True, False])
@pytest.mark.parametrize("prefix", [True, False])
def test_every_request_finishes_with_the_same_tokens_under_memory_pressure(chunked, prefix):
    outputs = []
    for num_blocks in (12, 400):  # tight pool (preemption) vs a pool that never runs out
        h = Harness(
            num_blocks,
            block_size=4,
            max_num_seqs=6,
            max_num_batched_tokens=64 if not chunked else 16,
            chunked=chunked,
            prefix=prefix,
            max_model_len=64,
        )
        ns = _random_workload(h, random.Random(0), 30, pool_tokens=12 * 4, n_max=3)
        h.run()
        assert all(r.is_finished for r in h.requests.values())
        assert {rid: len(out) for rid, out in h.outputs().items()} == ns
        h.bm.check_all_free()
        outputs.append((h.outputs(), h.sched.counters.num_preemptions))
    (tight, tight_preempt), (roomy, roomy_preempt) = outputs
    assert tight == roomy
    assert tight_preempt > 0 and roomy_preempt == 0


def test_decodes_go_before_prefill_chunks_and_share_the_budget():
    h = Harness(100, block_size=4, max_num_batched_tokens=8)
    h.add("a", list(range(3)), max_tokens=20)
    h.add("b", list(range(3)), max_tokens=20)
    h.step()  # both prompts in one step (6 tokens)
    h.add("c", list(range(10, 40)), max_tokens=2)
    out = h.step()
    assert _plan(out) == [("a", 1), ("b", 1), ("c", 6)]
    out = h.step()  # the chunk continues after the decodes
    assert _plan(out) == [("a", 1), ("b", 1), ("c", 6)]
    assert not out.scheduled[2].samples
    h.run()
    h.bm.check_all_free()


def test_without_chunked_prefill_a_prompt_waits_whole():
    h = Harness(100, block_size=4, max_num_batched_tokens=10, chunked=False, max_model_len=10)
    h.add("a", list(range(4)), max_tokens=5)
    h.add("b", list(range(20, 28)), max_tokens=1)
    out = h.step()
    assert _plan(out) == [("a", 4)]
    out = h.step()  # a decodes (1) + b (8) fit in 10
    assert _plan(out) == [("a", 1), ("b", 8)]
    h.run()


def test_max_num_seqs_caps_the_running_set():
    h = Harness(100, block_size=4, max_num_seqs=2, max_num_batched_tokens=100)
    for i in range(4):
        h.add(f"r{i}", [i, i + 1], max_tokens=3)
    out = h.step()
    assert len(out.scheduled) == 2 and h.sched.num_waiting == 2
    h.run()
    assert all(r.is_finished for r in h.requests.values())


def test_finished_request_frees_its_slot_and_a_waiting_one_is_admitted_the_same_step():
    h = Harness(100, block_size=4, max_num_seqs=1, max_num_batched_tokens=100)
    h.add("a", [1, 2], max_tokens=1)
    h.add("b", [3, 4], max_tokens=1)
    out = h.step()
    assert [i.seq.request.request_id for i in out.scheduled] == ["a"]
    assert h.requests["a"].is_finished and h.bm.num_free_blocks == 100
    out = h.step()
    assert [i.seq.request.request_id for i in out.scheduled] == ["b"]


def test_preemption_takes_the_newest_running_sequence_and_it_resumes_first():
    h = Harness(4, block_size=4, max_num_batched_tokens=64)  # 16 tokens in all
    h.add("old", list(range(7)), max_tokens=8)
    h.add("new", list(range(20, 27)), max_tokens=8)
    h.step()  # both prefilled: 2 blocks each, pool full
    out = h.step()  # both decode within their second block
    out = h.step()  # old needs a third block: new is preempted
    assert [s.request.request_id for s in out.preempted] == ["new"]
    assert [i.seq.request.request_id for i in out.scheduled] == ["old"]
    assert h.sched.waiting[0].request.request_id == "new"
    h.run()
    assert h.requests["new"].children[0].seq.num_preemptions >= 1
    h.bm.check_all_free()


def test_prefix_hits_skip_computation_and_are_counted_once_in_tokens():
    h = Harness(100, block_size=4, max_num_batched_tokens=64)
    prefix = list(range(10, 22))  # 12 tokens = 3 full blocks
    h.add("a", prefix + [1], max_tokens=1)
    h.run()
    h.add("b", prefix + [2, 3], max_tokens=1)
    out = h.step()
    assert out.scheduled[0].start == 12 and out.scheduled[0].num_new_tokens == 2
    c = h.sched.counters
    assert (c.prefix_cache_queries, c.prefix_cache_hits) == (13 + 14, 12)
    h.run()


def test_the_whole_prompt_is_never_a_hit():
    h = Harness(100, block_size=4, max_num_batched_tokens=64)
    prompt = list(range(8))  # exactly 2 full blocks
    h.add("a", prompt, max_tokens=1)
    h.run()
    h.add("b", prompt, max_tokens=1)
    out = h.step()
    assert out.scheduled[0].start == 4 and out.scheduled[0].num_new_tokens == 4  # last block recomputed
    h.run()


def test_preempted_recompute_does_not_inflate_prefix_hits():
    h = Harness(6, block_size=4, max_num_batched_tokens=64)
    h.add("a", list(range(9)), max_tokens=10)
    h.add("b", list(range(30, 39)), max_tokens=10)
    h.run()
    c = h.sched.counters
    assert c.num_preemptions > 0
    assert c.prefix_cache_queries == 18 and c.prefix_cache_hits == 0


def test_n_completions_share_the_prompt_through_the_prefix_cache():
    h = Harness(100, block_size=4, max_num_batched_tokens=10)
    req = h.add("a", list(range(10)), max_tokens=4, n=3)  # 2 full blocks + 2 tokens in a partial one
    out = h.step()  # the budget holds one prompt: completion 0 prefills alone
    assert _plan(out) == [("0_a", 10)]
    out = h.step()  # 1 and 2 hit the 2 full blocks that 0 registered and compute only the rest
    assert _plan(out) == [("0_a", 1), ("1_a", 2), ("2_a", 2)]
    assert [i.start for i in out.scheduled[1:]] == [8, 8]
    tables = [c.seq.block_table for c in req.children]
    assert tables[0][:2] == tables[1][:2] == tables[2][:2]  # full blocks shared
    assert len({t[2] for t in tables}) == 3  # each writes its own partial block
    assert [h.bm.ref_counts[b] for b in tables[0][:2]] == [3, 3]
    assert h.bm.num_free_blocks == 100 - 2 - 3
    assert h.sched.counters.prefix_cache_hits == 2 * 8
    h.run()
    assert h.outputs()["a"] == [h.outputs()["a"][0]] * 3  # the fake model: same tokens, same outputs
    h.bm.check_all_free()


def test_max_num_seqs_counts_each_completion():
    h = Harness(100, block_size=4, max_num_seqs=2, max_num_batched_tokens=100)
    h.add("a", [1, 2, 3], max_tokens=2, n=3)
    out = h.step()
    assert _plan(out) == [("0_a", 3), ("1_a", 3)] and h.sched.num_waiting == 1
    h.run()
    assert [len(o) for o in h.outputs()["a"]] == [2, 2, 2]
    h.bm.check_all_free()


def test_abort_frees_blocks_at_once():
    h = Harness(100, block_size=4, max_num_batched_tokens=64)
    req = h.add("a", list(range(10)), max_tokens=50, n=2)
    h.add("b", [1, 2, 3], max_tokens=3)
    h.step()
    h.abort("a")
    assert req.is_finished and all(c.seq.finish_reason == "abort" for c in req.children)
    assert h.bm.num_free_blocks == 100 - 1  # only b's block: both completions' blocks are back
    h.run()
    h.bm.check_all_free()
