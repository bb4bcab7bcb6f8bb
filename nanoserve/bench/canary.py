"""Speed canaries: how fast this machine's CPU and memory run right now, independent of the engine.

The shared 2-core dev box switches between two speeds every few seconds: a fixed pure-Python loop
takes ~0.5 ms in one state and ~1.0 ms in the other, with nothing else of ours running (and not when
our own second core spins: the other tenant's load), and an engine step follows it (a demo-model
decode step of 8 sequences: 0.61 ms while the canary ran fast, 0.92 ms while it ran slow, over 30 s of
alternating samples). Its memory bandwidth flips too, on its own: a Qwen2.5-0.5B-shaped batch-1 decode
step, which streams ~1.2 GB of weights, takes 15 ms in one state and 25 ms in the other. How much of a
run fell in each slow state is the term a step-time model calibrated at another moment cannot know, so
calibration points and measured replays record both canaries beside their times (sim/validate.py
reports them).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

CANARY_LOOPS = 20_000
CANARY_BYTES = 48 << 20  # past the dev box's 32 MB L3: the copy streams from and to DRAM
SLOW_FACTOR = 1.3  # a canary this much slower than the fastest one seen counts as the slow state
_buffers: list = []  # the copy's two buffers, made once: a fresh allocation would time its page faults


def canary_s(loops: int = CANARY_LOOPS) -> float:
    """Seconds for a fixed pure-Python loop (~0.5 ms on the dev box in its fast state)."""
    t0 = time.perf_counter()
    acc = 0
    for i in range(loops):
        acc += i * i
    return time.perf_counter() - t0


def memory_canary_s() -> float:
    """Seconds to copy CANARY_BYTES once, one thread (~1.5 ms on the dev box in its fast state)."""
    import numpy as np

    if not _buffers:
        _buffers.extend(np.ones(CANARY_BYTES // 4, dtype=np.float32) for _ in range(2))
    src, dst = _buffers
    t0 = time.perf_counter()
    np.copyto(dst, src)
    return time.perf_counter() - t0


@dataclass
class CanaryLog:
    """Canary times sampled during a run: the CPU canary at most once per `every_s` of busy engine
    time, the memory canary at most once per `memory_every_s` (its copy evicts the caches)."""

    every_s: float = 0.1
    memory_every_s: float = 1.0
    samples_s: list[float] = field(default_factory=list)
    memory_samples_s: list[float] = field(default_factory=list)
    _next: float = 0.0
    _next_memory: float = 0.0

    def maybe_sample(self, now_s: float) -> bool:
        """Take the samples that are due; True when any was (the caller takes their time off its
        clock)."""
        took = False
        if now_s >= self._next:
            self.samples_s.append(canary_s())
            self._next, took = now_s + self.every_s, True
        if now_s >= self._next_memory:
            self.memory_samples_s.append(memory_canary_s())
            self._next_memory, took = now_s + self.memory_every_s, True
        return took


def slow_fraction(samples_s: list[float], fastest_s: float) -> float:
    """The fraction of canary samples in the slow state (over SLOW_FACTOR x fastest_s)."""
    if not samples_s:
        return 0.0
    return sum(1 for s in samples_s if s > SLOW_FACTOR * fastest_s) / len(samples_s)
