"""BlockManager: allocation, prefix-cache identity and verification, LRU eviction, leak check."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from nanoserve.engine import block_manager as bm_module
from nanoserve.engine.block_manager import BlockManager
from nanoserve.engine.sequence import Request


def _seq(tokens: list[int], order: int = 0):
    return Request(f"r{order}", tokens, SimpleNamespace(), order, 4).seq


def _compute(bm: BlockManager, seq, n: int | None = None) -> None:
    """Allocate and 'compute' the sequence's remaining tokens, registering full blocks."""
    n = seq.num_tokens - seq.num_computed_tokens if n is None else n
    assert bm.allocate_slots(seq, n)
    seq.num_computed_tokens += n
    bm.cache_full_blocks(seq)


def test_allocation_on_demand_and_immediate_free():
    bm = BlockManager(8, 4)
    seq = _seq(list(range(5)))
    _compute(bm, seq)
    assert len(seq.block_table) == 2 and bm.num_free_blocks == 6
    seq.token_ids += [9, 9, 9]
    _compute(bm, seq, 3)  # 8 tokens still fit 2 blocks
    assert len(seq.block_table) == 2
    seq.token_ids.append(9)
    _compute(bm, seq, 1)
    assert len(seq.block_table) == 3
    assert bm.stats().usage == pytest.approx(3 / 8)
    assert bm.internal_fragmentation([seq]) == pytest.approx(1 - 9 / 12)
    bm.free(seq)
    bm.check_all_free()


def test_a_sequences_new_blocks_come_in_address_order_after_a_tail_first_free():
    # free() releases tail first, so the least recently freed blocks are one sequence's, reversed; the
    # next prompt gets them in increasing order (CPU decode attention streams address order faster).
    bm = BlockManager(8, 4, enable_prefix_caching=False)
    first = _seq(list(range(16)))
    _compute(bm, first)
    assert first.block_table == [0, 1, 2, 3]
    bm.free(first)  # free queue: 4, 5, 6, 7, then 3, 2, 1, 0
    second = _seq(list(range(100, 124)), 1)
    _compute(bm, second)
    assert second.block_table == [2, 3, 4, 5, 6, 7]  # not 4, 5, 6, 7, 3, 2


def test_pool_exhaustion_changes_nothing():
    bm = BlockManager(2, 4)
    seq = _seq(list(range(12)))
    assert not bm.allocate_slots(seq, 12)
    assert seq.block_table == [] and bm.num_free_blocks == 2


def test_hit_requires_matching_tokens_even_when_hashes_collide(monkeypatch):
    monkeypatch.setattr(bm_module, "chain_hash", lambda parent, tokens: 42)  # every block collides
    bm = BlockManager(8, 4)
    a = _seq([1, 2, 3, 4, 5])
    _compute(bm, a)
    b = _seq([7, 7, 7, 7, 5])
    assert bm.get_computed_blocks(b) == []
    c = _seq([1, 2, 3, 4, 6])
    assert bm.get_computed_blocks(c) == [a.block_table[0]]
    bm.free(a)
    bm.check_all_free()


def test_freed_cached_blocks_are_hit_until_evicted_least_recent_first():
    bm = BlockManager(4, 2)
    a = _seq([1, 2, 3, 4, 5])  # blocks [1,2] [3,4] cached
    _compute(bm, a)
    bm.free(a)
    assert bm.num_free_blocks == 4 and len(bm.cached) == 2
    b = _seq([1, 2, 3, 4, 9])
    assert len(bm.get_computed_blocks(b)) == 2
    # Fresh blocks come from the front of the free queue: the never-used block, then a's blocks in the
    # order a freed them, tail first ([5], then [3,4], then [1,2]). Three blocks evict [3,4] but not [1,2].
    x = _seq([50, 51, 52, 53, 54, 55])
    _compute(bm, x)
    assert len(bm.get_computed_blocks(b)) == 1  # [3,4] evicted, the head [1,2] survives
    bm.free(x)
    bm.check_all_free()


def test_shared_blocks_are_reference_counted():
    bm = BlockManager(8, 2)
    a = _seq([1, 2, 3, 4, 5])
    _compute(bm, a)
    b = _seq([1, 2, 3, 4, 6])
    hits = bm.get_computed_blocks(b)
    assert bm.allocate_slots(b, 1, hits)
    assert b.num_computed_tokens == 4 and b.block_table[:2] == a.block_table[:2]
    assert [bm.ref_counts[x] for x in a.block_table[:2]] == [2, 2]
    bm.free(a)
    with pytest.raises(AssertionError, match="still referenced"):
        bm.check_all_free()
    bm.free(b)
    bm.check_all_free()


def test_prefix_caching_off_never_hits():
    bm = BlockManager(8, 2, enable_prefix_caching=False)
    a = _seq([1, 2, 3, 4, 5])
    _compute(bm, a)
    assert bm.get_computed_blocks(_seq([1, 2, 3, 4, 5])) == []
    bm.free(a)
    bm.check_all_free()
