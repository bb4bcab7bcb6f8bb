"""How tensor parallelism splits heads, rows and the vocabulary (no processes)."""

from __future__ import annotations

import pytest

from nanoserve.errors import ModelLoadError
from nanoserve.model.parallel_layers import shard_heads, split_range, vocab_shard


@pytest.mark.parametrize(
    ("heads", "kv_heads", "world", "expected"),
    [
        (4, 2, 2, [(0, 2, [0]), (2, 2, [1])]),  # KV heads sharded
        (4, 1, 2, [(0, 2, [0]), (2, 2, [0])]),  # one KV head: replicated on both ranks
        (6, 3, 2, [(0, 3, [0, 0, 1]), (3, 3, [1, 2, 2])]),  # a rank's q heads straddle KV groups
        (8, 8, 2, [(0, 4, [0, 1, 2, 3]), (4, 4, [4, 5, 6, 7])]),  # MHA
        (8, 2, 4, [(0, 2, [0]), (2, 2, [0]), (4, 2, [1]), (6, 2, [1])]),
        # q heads not divisible by the ranks: the first ranks take one more
        (3, 1, 2, [(0, 2, [0]), (2, 1, [0])]),
        (3, 3, 2, [(0, 2, [0, 1]), (2, 1, [2])]),
        (5, 5, 2, [(0, 3, [0, 1, 2]), (3, 2, [3, 4])]),
        (5, 1, 3, [(0, 2, [0]), (2, 2, [0]), (4, 1, [0])]),
        (10, 2, 4, [(0, 3, [0]), (3, 3, [0, 0, 1]), (6, 2, [1]), (8, 2, [1])]),  # straddles on rank 1 only
        (12, 2, 3, [(0, 4, [0]), (4, 4, [0, 1]), (8, 4, [1])]),  # ranks hold 1, 2 and 1 KV slots
    ],
)
def test_shard_heads_gives_each_rank_the_kv_heads_of_its_q_heads(heads, kv_heads, world, expected):
    shards = [shard_heads(heads, kv_heads, world, r) for r in range(world)]
    assert shards == expected


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize(("heads", "kv_heads"),
                         [(3, 1), (3, 3), (5, 5), (5, 1), (6, 3), (6, 2), (7, 7), (9, 3), (10, 5),
                          (12, 4), (14, 2)])
def test_every_q_head_is_held_once_with_the_kv_head_it_uses(heads, kv_heads, world):
    shards = [shard_heads(heads, kv_heads, world, r) for r in range(world)]
    held = [first + i for first, local, _ in shards for i in range(local)]
    assert held == list(range(heads))  # each exactly once, in rank order (o_proj's input columns)
    locals_ = [local for _, local, _ in shards]
    assert max(locals_) - min(locals_) <= 1 and locals_ == sorted(locals_, reverse=True)
    for first, local, kv in shards:
        assert local % len(kv) == 0  # a uniform group per rank for the grouped-attention kernels
        g = local // len(kv)
        # every local q head maps to the KV head it uses in the full model
        assert all(kv[i // g] == (first + i) // (heads // kv_heads) for i in range(local))


def test_fewer_q_heads_than_ranks_is_an_error_naming_both():
    with pytest.raises(ModelLoadError, match=r"2 attention heads .* tensor_parallel_size 3"):
        shard_heads(2, 1, 3, 0)


def test_split_range_covers_everything_once():
    parts = [split_range(130, 4, r) for r in range(4)]
    assert parts == [(0, 33), (33, 33), (66, 32), (98, 32)]


def test_vocab_shard_pads_a_vocab_not_divisible():
    assert [vocab_shard(131, 2, r) for r in range(2)] == [(0, 66, 66), (66, 65, 66)]
