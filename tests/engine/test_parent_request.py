"""n > 1 at the front (engine/parent_request.py), driven through the sim harness: the siblings reach the
scheduler only once completion 0 has computed the prompt, so they share its full blocks through the
prefix cache, and they keep their place in the queue."""

from __future__ import annotations

from sim_harness import Harness


def _ids(out) -> list[str]:
    return [i.seq.request.request_id for i in out.scheduled]


def test_siblings_compute_only_the_tail_of_a_prompt_of_full_blocks():
    h = Harness(100, block_size=4, max_num_batched_tokens=64)  # room for all four prompts in one step
    prompt = list(range(22))  # 5 full blocks + 2 tokens
    req = h.add("a", prompt, max_tokens=3, n=4)
    assert req.take_ready() == []  # child 0 has no token yet
    assert _ids(h.step()) == ["0_a"]  # alone, though the budget held all four
    out = h.step()
    assert _ids(out) == ["0_a", "1_a", "2_a", "3_a"] and [i.start for i in out.scheduled[1:]] == [20] * 3
    h.run()
    c = h.sched.counters
    assert c.prompt_tokens == 22 + 3 * 2  # the full blocks once, the partial one per completion
    assert c.prefix_cache_hits == 3 * 20 and c.prefix_cache_queries == 4 * 22
    assert h.outputs()["a"] == [h.outputs()["a"][0]] * 4 and len(h.outputs()["a"][0]) == 3
    h.bm.check_all_free()


def test_without_a_shareable_block_or_prefix_cache_all_children_start_together():
    for prefix, prompt in ((True, [1, 2, 3, 4]), (False, list(range(22)))):  # 4 tokens: no full block to hit
        h = Harness(100, block_size=4, max_num_batched_tokens=64, prefix=prefix)
        h.add("a", prompt, max_tokens=2, n=3)
        assert _ids(h.step()) == ["0_a", "1_a", "2_a"]
        h.run()
        assert h.sched.counters.prompt_tokens == 3 * len(prompt)
        h.bm.check_all_free()


def test_staged_siblings_keep_their_place_ahead_of_later_requests():
    h = Harness(100, block_size=4, max_num_batched_tokens=10)
    h.add("a", list(range(10)), max_tokens=4, n=3)
    h.add("b", list(range(30, 40)), max_tokens=4)  # arrives after a's siblings were fanned out
    assert _ids(h.step()) == ["0_a"]  # the budget holds one prompt; b waits
    assert [s.request.request_id for s in h.sched.waiting] == ["1_a", "2_a", "b"]
    out = h.step()
    assert _ids(out) == ["0_a", "1_a", "2_a", "b"]  # b gets what the siblings' tails leave
    h.run()
    h.bm.check_all_free()


def test_child_0_finishing_at_its_first_token_still_starts_its_siblings():
    h = Harness(100, block_size=4, max_num_batched_tokens=64)
    req = h.add("a", list(range(10)), max_tokens=1, n=3)
    h.step()
    assert req.children[0].is_finished and req.num_handed_out == 3 and not req.is_finished
    h.run()
    assert [len(o) for o in h.outputs()["a"]] == [1, 1, 1]
    assert h.sched.counters.prefix_cache_hits == 2 * 8  # its freed blocks stayed in the cache
    h.bm.check_all_free()


def test_abort_before_the_siblings_start_finishes_them_without_scheduling_them():
    h = Harness(100, block_size=4, max_num_batched_tokens=4)
    req = h.add("a", list(range(10)), max_tokens=5, n=3)
    h.add("b", [1, 2, 3], max_tokens=3)
    h.step()  # child 0 prefills its first chunk
    h.abort("a")
    assert req.is_finished and [c.seq.finish_reason for c in req.children] == ["abort"] * 3
    assert req.take_ready() == []
    assert h.bm.num_free_blocks == 100  # b has not started; 0_a's block is back
    h.run()
    scheduled = {i.seq.request.request_id for out in h.steps for i in out.scheduled}
    assert scheduled == {"0_a", "b"}
    h.bm.check_all_free()


def test_child_0_preempted_mid_prompt_holds_its_siblings_back_until_it_recomputes():
    h = Harness(4, block_size=4, max_num_batched_tokens=6)  # a tight pool: a's child 0 gets preempted
    h.add("b", [1, 2, 3], max_tokens=12)
    req = h.add("a", list(range(10, 22)), max_tokens=2, n=3)
    first = req.children[0].seq
    preempted_mid_prompt = False
    while not all(p.is_finished for p in h.requests.values()):
        out = h.step()
        if first in out.preempted and first.num_output_tokens == 0:
            preempted_mid_prompt = True
            assert req.num_handed_out == 1
        if req.num_handed_out == 1:  # the siblings are nowhere in the scheduler
            queued = h.sched.running + list(h.sched.waiting)
            assert [s.request.index for s in queued if s.request.parent_id == "a"] in ([], [0])
    assert preempted_mid_prompt
    assert h.outputs()["a"] == [h.outputs()["a"][0]] * 3 and len(h.outputs()["a"][0]) == 2
    h.bm.check_all_free()
