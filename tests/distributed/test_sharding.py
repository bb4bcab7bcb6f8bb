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
    ],
)
def test_shard_heads_gives_each_rank_the_kv_heads_of_its_q_heads(heads, kv_heads, world, expected):
    shards = [shard_heads(heads, kv_heads, world, r) for r in range(world)]
    assert shards == expected
    for first, local, kv in shards:  # every local q head maps to the KV head it uses in the full model
        g = local // len(kv)
        assert all(kv[i // g] == (first + i) // (heads // kv_heads) for i in range(local))


def test_q_heads_not_divisible_by_the_ranks_is_an_error_naming_both():
    with pytest.raises(ModelLoadError, match=r"5 attention heads .* tensor_parallel_size 2"):
        shard_heads(5, 5, 2, 0)


def test_split_range_covers_everything_once():
    parts = [split_range(130, 4, r) for r in range(4)]
    assert parts == [(0, 33), (33, 33), (66, 32), (98, 32)]


def test_vocab_shard_pads_a_vocab_not_divisible():
    assert [vocab_shard(131, 2, r) for r in range(2)] == [(0, 66, 66), (66, 65, 66)]
