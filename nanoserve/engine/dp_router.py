"""Which data-parallel replica gets a request: the least loaded, unless another holds its prompt's prefix.

Pure Python over token ids and load figures, so it is tested without engines.

Load is (live requests, waiting requests) per replica, compared in that order; among equally loaded
replicas the choice rotates, so a trickle of requests on an idle server still spreads over all of them.

Prefix affinity: each replica's KV cache keeps the blocks of prompts it computed (prefix caching), so
a prompt that starts like a recent one is cheapest on the replica that ran it. The router cannot see the
replicas' caches; it keeps, per replica, a bounded LRU record of the block hashes of the prompts it sent
there (full blocks, chained like the block manager's, so a hash names a whole prefix). The replica with
the longest recorded prefix wins unless it has more than `affinity_slack` live requests above the least
loaded one: affinity must not pile every request of a shared system prompt onto one replica.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from nanoserve.engine.block_manager import chain_hash


@dataclass(frozen=True)
class ReplicaLoad:
    live_requests: int  # accepted and not finished (running or waiting), plus those being handed over
    waiting_requests: int  # of those, not yet scheduled (from the replica's last stats)


@dataclass
class PrefixAffinityRouter:
    num_replicas: int
    block_size: int  # the replicas' KV block size: only full blocks are cached
    max_hashes_per_replica: int = 8192  # bounded memory: about one 128k-token history per replica at 16
    affinity_slack: int = 2  # extra live requests tolerated on the replica that holds the prefix
    _records: list[OrderedDict[int, None]] = field(init=False, repr=False)
    _next: int = field(default=0, init=False, repr=False)  # where the rotation among equals starts

    def __post_init__(self) -> None:
        if self.num_replicas < 1 or self.block_size < 1:
            raise ValueError("num_replicas and block_size must be positive")
        self._records = [OrderedDict() for _ in range(self.num_replicas)]

    def prompt_hashes(self, token_ids: list[int]) -> list[int]:
        """The chained hash of each full block of the prompt (block i's hash names tokens 0..i)."""
        hashes: list[int] = []
        parent: int | None = None
        bs = self.block_size
        for start in range(0, len(token_ids) - bs + 1, bs):
            parent = chain_hash(parent, tuple(token_ids[start:start + bs]))
            hashes.append(parent)
        return hashes

    def matched_blocks(self, replica: int, hashes: list[int]) -> int:
        """How many leading blocks of the prompt `replica` was recently sent."""
        record = self._records[replica]
        n = 0
        for h in hashes:
            if h not in record:
                break
            n += 1
        return n

    def choose(self, token_ids: list[int] | None, loads: list[ReplicaLoad | None]) -> int:
        """The replica for a prompt (None: unknown ids, no affinity); loads[i] None = replica i is down.

        Records the prompt's blocks on the chosen replica. ValueError if every replica is down.
        """
        candidates = [i for i, load in enumerate(loads) if load is not None]
        if not candidates:
            raise ValueError("no replica is available")
        n = self.num_replicas

        def load_key(i: int) -> tuple[int, int, int]:
            load = loads[i]
            assert load is not None
            return load.live_requests, load.waiting_requests, (i - self._next) % n

        least = min(candidates, key=load_key)
        chosen = least
        hashes = self.prompt_hashes(token_ids) if token_ids else []
        if hashes:
            best = max(candidates, key=lambda i: (self.matched_blocks(i, hashes), -load_key(i)[0]))
            best_load, least_load = loads[best], loads[least]
            assert best_load is not None and least_load is not None
            if (self.matched_blocks(best, hashes) > 0
                    and best_load.live_requests <= least_load.live_requests + self.affinity_slack):
                chosen = best
        self._next = (chosen + 1) % n
        self.record(chosen, hashes)
        return chosen

    def record(self, replica: int, hashes: list[int]) -> None:
        record = self._records[replica]
        for h in hashes:
            record[h] = None
            record.move_to_end(h)
        while len(record) > self.max_hashes_per_replica:
            record.popitem(last=False)

    def forget(self, replica: int) -> None:
        """Drop a replica's record (it died: its cache is gone)."""
        self._records[replica].clear()
