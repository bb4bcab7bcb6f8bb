"""The paged KV pool's bookkeeping: free list, reference counts, prefix-cache hashes, LRU eviction.

Pure Python: blocks are integers indexing the KV tensors that the runner preallocated once.

Prefix caching: every full block of a sequence is named by a chained hash of (parent block's hash,
the block's token ids). A computed full block is registered under its hash; another sequence whose
prompt starts with the same tokens takes it (reference count + 1) instead of recomputing it, after
checking the stored token ids and parent hash (a hash match alone is never trusted). A block whose
reference count drops to zero goes to the back of the free queue but keeps its hash, so it can be
hit again until it is reused for something else: the front of the queue (least recently freed) is
evicted first, and a sequence frees its blocks tail first, so chains lose their tails before heads.
Only the prefix cache shares blocks, and only full computed ones, so a block being written into is
never shared: there is no copy-on-write (n > 1 completions are independent sequences).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from nanoserve.engine.sequence import Sequence


def chain_hash(parent_hash: int | None, token_ids: tuple[int, ...]) -> int:
    return hash((parent_hash, token_ids))


@dataclass
class BlockPoolStats:
    num_total_blocks: int
    num_free_blocks: int  # reference count zero (cached or empty)
    num_cached_blocks: int  # blocks currently registered in the prefix cache (used or free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_total_blocks - self.num_free_blocks

    @property
    def usage(self) -> float:
        return self.num_used_blocks / self.num_total_blocks


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        # Prefix-cache identity of each block: (hash, parent hash, token ids) or None.
        self.block_key: list[tuple[int, int | None, tuple[int, ...]] | None] = [None] * num_blocks
        self.cached: dict[int, int] = {}  # hash -> block id
        self.free_queue: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))

    # ---- queries -------------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self.free_queue)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def stats(self) -> BlockPoolStats:
        return BlockPoolStats(self.num_blocks, self.num_free_blocks, len(self.cached))

    def internal_fragmentation(self, seqs: list[Sequence]) -> float:
        """Fraction of the slots allocated to `seqs` that hold no token (the blocks' unused tails)."""
        allocated = sum(len(s.block_table) for s in seqs) * self.block_size
        if allocated == 0:
            return 0.0
        used = sum(min(s.num_tokens, len(s.block_table) * self.block_size) for s in seqs)
        return 1.0 - used / allocated

    def check_all_free(self) -> None:
        """Raise AssertionError unless every block is free (no leak, every reference count zero)."""
        leaked = [b for b, r in enumerate(self.ref_counts) if r != 0]
        assert not leaked, f"{len(leaked)} KV blocks still referenced: {leaked[:10]}"
        assert len(self.free_queue) == self.num_blocks, (
            f"free queue holds {len(self.free_queue)} of {self.num_blocks} blocks"
        )

    # ---- prefix cache --------------------------------------------------------------------------
    def _block_hashes(self, seq: Sequence, num_full_blocks: int) -> list[int]:
        """Extend seq.block_hashes to cover its first `num_full_blocks` full blocks."""
        bs = self.block_size
        hashes = seq.block_hashes
        while len(hashes) < num_full_blocks:
            i = len(hashes)
            parent = hashes[-1] if hashes else None
            hashes.append(chain_hash(parent, tuple(seq.token_ids[i * bs : (i + 1) * bs])))
        return hashes

    def get_computed_blocks(self, seq: Sequence) -> list[int]:
        """Cached blocks matching the start of `seq` (which holds no blocks yet).

        Never the whole sequence: the last token is always computed so that the step yields logits.
        """
        if not self.enable_prefix_caching:
            return []
        if getattr(seq.request.params, "prompt_logprobs", None) is not None:
            return []  # every prompt position must run to yield its logits (vLLM does the same)
        bs = self.block_size
        num_full = (seq.num_tokens - 1) // bs
        hashes = self._block_hashes(seq, num_full)
        hits: list[int] = []
        parent = None
        for i in range(num_full):
            block = self.cached.get(hashes[i])
            if block is None:
                break
            key = self.block_key[block]
            tokens = tuple(seq.token_ids[i * bs : (i + 1) * bs])
            if key is None or key[1] != parent or key[2] != tokens:
                break  # hash collision: never reuse a block whose tokens differ
            hits.append(block)
            parent = hashes[i]
        return hits

    def cache_full_blocks(self, seq: Sequence) -> None:
        """Register the newly computed full blocks of `seq` in the prefix cache."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        num_full = min(seq.num_computed_tokens // bs, len(seq.block_table))
        if num_full <= seq.num_cached_blocks:
            return
        hashes = self._block_hashes(seq, num_full)
        for i in range(seq.num_cached_blocks, num_full):
            block = seq.block_table[i]
            if self.block_key[block] is None and hashes[i] not in self.cached:
                parent = hashes[i - 1] if i > 0 else None
                self.block_key[block] = (hashes[i], parent, tuple(seq.token_ids[i * bs : (i + 1) * bs]))
                self.cached[hashes[i]] = block
        seq.num_cached_blocks = num_full

    # ---- allocation ----------------------------------------------------------------------------
    def _pop_free(self) -> int:
        block, _ = self.free_queue.popitem(last=False)  # least recently freed first
        key = self.block_key[block]
        if key is not None:  # evict its prefix-cache entry
            if self.cached.get(key[0]) == block:
                del self.cached[key[0]]
            self.block_key[block] = None
        self.ref_counts[block] = 1
        return block

    def _take(self, block: int) -> None:
        if self.ref_counts[block] == 0:
            del self.free_queue[block]
        self.ref_counts[block] += 1

    def _release(self, block: int) -> None:
        self.ref_counts[block] -= 1
        assert self.ref_counts[block] >= 0, f"block {block} freed twice"
        if self.ref_counts[block] == 0:
            self.free_queue[block] = None

    def allocate_slots(
        self, seq: Sequence, num_new_tokens: int, computed_blocks: list[int] | None = None
    ) -> bool:
        """Make room for `num_new_tokens` more tokens of `seq` (after its computed ones).

        `computed_blocks` are prefix-cache hits taken by a sequence that has no blocks yet; they
        advance seq.num_computed_tokens. Returns False (and changes nothing) when the pool is short.
        """
        computed_blocks = computed_blocks or []
        bs = self.block_size
        num_computed = seq.num_computed_tokens + len(computed_blocks) * bs
        total_blocks = self.blocks_needed(num_computed + num_new_tokens)
        new_blocks = max(0, total_blocks - len(seq.block_table) - len(computed_blocks))
        revived = sum(1 for b in computed_blocks if self.ref_counts[b] == 0)
        if new_blocks + revived > self.num_free_blocks:
            return False
        for b in computed_blocks:
            self._take(b)
        seq.block_table.extend(computed_blocks)
        seq.num_computed_tokens = num_computed
        seq.num_cached_blocks = max(seq.num_cached_blocks, len(computed_blocks))
        # In increasing order: the least recently freed blocks are often one sequence's, freed tail
        # first, and a CPU attention kernel streams a sequence's blocks faster in address order.
        seq.block_table.extend(sorted(self._pop_free() for _ in range(new_blocks)))
        return True

    def trim(self, seq: Sequence, num_tokens: int) -> None:
        """Release the blocks past the first `num_tokens` slots (rejected draft tokens' slots, tail first).

        They hold no verified token, so none of them was offered to the prefix cache."""
        keep = self.blocks_needed(num_tokens)
        while len(seq.block_table) > keep:
            self._release(seq.block_table.pop())

    def free(self, seq: Sequence) -> None:
        """Drop the sequence's blocks, tail first (so a chain's tail is evicted before its head)."""
        for b in reversed(seq.block_table):
            self._release(b)
        seq.block_table = []
        seq.num_cached_blocks = 0
