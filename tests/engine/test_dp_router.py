"""The data-parallel router: least loaded first, prefix affinity within a slack, balance over
distinct prompts."""

from __future__ import annotations

import random

import pytest

from nanoserve.engine.block_manager import chain_hash
from nanoserve.engine.dp_router import PrefixAffinityRouter, ReplicaLoad

IDLE = ReplicaLoad(0, 0)


def prompt(seed: int, n: int = 64) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(1000) for _ in range(n)]


def test_least_loaded_by_live_then_waiting():
    r = PrefixAffinityRouter(3, block_size=4)
    assert r.choose(prompt(1), [ReplicaLoad(2, 0), ReplicaLoad(1, 1), ReplicaLoad(1, 0)]) == 2
    assert r.choose(prompt(2), [ReplicaLoad(2, 0), ReplicaLoad(1, 1), ReplicaLoad(3, 0)]) == 1
    assert r.choose(None, [ReplicaLoad(0, 0), ReplicaLoad(5, 5), ReplicaLoad(5, 0)]) == 0


def test_a_down_replica_is_never_chosen_and_none_up_is_an_error():
    r = PrefixAffinityRouter(2, block_size=4)
    p = prompt(1)
    assert r.choose(p, [None, ReplicaLoad(9, 9)]) == 1
    assert r.choose(p, [None, ReplicaLoad(9, 9)]) == 1  # affinity cannot lead to a down replica either
    assert r.choose(p, [IDLE, None]) == 0
    with pytest.raises(ValueError):
        r.choose(p, [None, None])


def test_equal_loads_rotate_so_a_trickle_spreads():
    r = PrefixAffinityRouter(3, block_size=4)
    chosen = [r.choose(prompt(i), [IDLE, IDLE, IDLE]) for i in range(6)]
    assert chosen == [0, 1, 2, 0, 1, 2]


def test_the_same_long_prompt_goes_back_to_the_same_replica():
    r = PrefixAffinityRouter(4, block_size=16)
    system = prompt(0, 200)
    first = r.choose(system + [1, 2, 3], [IDLE] * 4)
    # Idle replicas elsewhere (the rotation would pick another), yet the prefix's holder wins.
    for tail in range(10):
        assert r.choose(system + [tail, 7], [IDLE] * 4) == first
    assert r.matched_blocks(first, r.prompt_hashes(system)) == len(system) // 16


def test_affinity_gives_way_when_the_holder_is_much_busier():
    r = PrefixAffinityRouter(2, block_size=16, affinity_slack=2)
    p = prompt(3, 100)
    assert r.choose(p, [IDLE, ReplicaLoad(1, 0)]) == 0
    assert r.choose(p, [ReplicaLoad(2, 0), IDLE]) == 0  # 2 more live requests: within the slack
    assert r.choose(p, [ReplicaLoad(3, 0), IDLE]) == 1  # 3 more: the least loaded takes it
    # ... and now replica 1 holds it too: the longest match, ties broken by load.
    assert r.choose(p, [ReplicaLoad(3, 0), ReplicaLoad(1, 0)]) == 1


def test_the_longest_match_wins():
    r = PrefixAffinityRouter(2, block_size=4)
    base = prompt(4, 32)
    r.record(0, r.prompt_hashes(base[:8]))  # replica 0 holds 2 blocks
    r.record(1, r.prompt_hashes(base[:24]))  # replica 1 holds 6
    assert r.choose(base, [IDLE, ReplicaLoad(1, 0)]) == 1


def test_distinct_prompts_under_load_balance_over_replicas():
    """Requests that stay live (load grows with each one) spread evenly when no prefix is shared."""
    r = PrefixAffinityRouter(4, block_size=16)
    live = [0, 0, 0, 0]
    for i in range(200):
        live[r.choose(prompt(100 + i, 48), [ReplicaLoad(n, 0) for n in live])] += 1
    assert max(live) - min(live) <= 1


def test_hashes_are_the_block_managers_chain_over_full_blocks_only():
    r = PrefixAffinityRouter(1, block_size=4)
    ids = list(range(10))
    h0 = chain_hash(None, (0, 1, 2, 3))
    assert r.prompt_hashes(ids) == [h0, chain_hash(h0, (4, 5, 6, 7))]
    assert r.prompt_hashes(ids[:3]) == []


def test_the_record_is_bounded_and_forgets_the_oldest():
    r = PrefixAffinityRouter(1, block_size=1, max_hashes_per_replica=10)
    old, new = prompt(5, 10), prompt(6, 10)
    r.record(0, r.prompt_hashes(old))
    r.record(0, r.prompt_hashes(new))
    assert r.matched_blocks(0, r.prompt_hashes(new)) == 10
    assert r.matched_blocks(0, r.prompt_hashes(old)) == 0
    r.forget(0)
    assert r.matched_blocks(0, r.prompt_hashes(new)) == 0
