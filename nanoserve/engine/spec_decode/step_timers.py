"""Where a step's time goes, for measuring speculative decoding against the planner (bench-only).

The engine fills a StepTimers only when one is attached (`engine.step_timers = StepTimers()`, done by
`nanoserve bench ... --speculative-config`); otherwise the step pays one attribute test. A step is
split into the target forward + sampling/verification (`runner.execute`), the proposer (the draft
loop, or n-gram lookup), and the rest (scheduling, appending tokens, detokenizing, stop checks).
Only decode steps (every scheduled sequence computes its last token, plus drafts) are counted: the
planner's round is a decode step, and a prefill step costs the same with speculation on or off.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StepTimers:
    num_decode_steps: int = 0
    num_verify_steps: int = 0  # decode steps that verified at least one draft
    num_decode_rows: int = 0  # sequences decoded, summed over decode steps (batch 1: = steps)
    num_propose_calls: int = 0  # decode steps that asked the proposer for drafts
    step_s: float = 0.0  # decode steps, whole engine.step
    execute_s: float = 0.0  # decode steps, runner.execute (target forward + sample or verify)
    verify_execute_s: float = 0.0  # the part of execute_s spent in steps that verified drafts
    propose_s: float = 0.0  # decode steps, the proposer
    # Tokens emitted by decode steps (0: not recorded). The spec counters also hold the drafts a prefill
    # step verified, so tokens per decode step come from here.
    num_decode_tokens: int = 0

    def observe(self, rows: int, step_s: float, execute_s: float, propose_s: float,
                verified: bool, proposed: bool, tokens: int = 0) -> None:
        self.num_decode_steps += 1
        self.num_decode_tokens += tokens
        self.num_decode_rows += rows
        self.step_s += step_s
        self.execute_s += execute_s
        self.propose_s += propose_s
        if verified:
            self.num_verify_steps += 1
            self.verify_execute_s += execute_s
        if proposed:
            self.num_propose_calls += 1

    @property
    def other_s(self) -> float:
        """Decode-step time outside the forward and the proposer: the per-step overhead."""
        return self.step_s - self.execute_s - self.propose_s
