"""ParentRequest: a user's request fanned out into one child Request per completion (vLLM V1's n > 1).

The scheduler, the block manager and the runner never see n: each child is an ordinary n=1 Request
with its own completion index, and the children share the prompt's KV only through the prefix cache
(children admitted in the same step each compute the prompt; one admitted later hits the full blocks
an earlier one registered). The index picks the child's seed stream (sampler.child_seed), so child i
draws what the i-th of n completions drew before the fan-out. The children's progress is gathered
back into one RequestOutput under the user's request id.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from nanoserve.engine.sequence import Request
from nanoserve.outputs import CompletionOutput, RequestMetrics, RequestOutput
from nanoserve.sampling_params import SamplingParams


@dataclass(eq=False)
class ParentRequest:
    request_id: str  # the user's
    prompt: str | None
    prompt_token_ids: list[int]
    metrics: RequestMetrics  # one for all children: first token of any, tokens of all
    children: list[Request]  # children[i] is completion i

    @classmethod
    def fan_out(
        cls,
        request_id: str,
        prompt: str | None,
        prompt_token_ids: list[int],
        params: SamplingParams,
        arrival_time: float,
        arrival_orders: Iterator[int],
        max_tokens: int,
    ) -> ParentRequest:
        """n = params.n children, ids f"{i}_{request_id}" (n = 1: the user's id), taking arrival
        orders from `arrival_orders` so that they are scheduled together, in index order."""
        metrics = RequestMetrics(arrival_time=arrival_time)
        n = params.n
        child_params = params.clone(n=1) if n > 1 else params
        children = [
            Request(
                f"{i}_{request_id}" if n > 1 else request_id,
                prompt_token_ids,
                child_params,
                next(arrival_orders),
                max_tokens,
                index=i,
                parent_id=request_id,
                metrics=metrics,
            )
            for i in range(n)
        ]
        return cls(request_id, prompt, list(prompt_token_ids), metrics, children)

    @property
    def is_finished(self) -> bool:
        return all(c.is_finished for c in self.children)

    def make_output(self) -> RequestOutput:
        """Every completion so far (cumulative), in index order."""
        completions = [
            CompletionOutput(
                index=s.index,
                text=s.output_text,
                token_ids=list(s.output_token_ids),
                finish_reason=s.finish_reason,
                logprobs=list(s.logprobs) if s.logprobs is not None else None,
                stop_reason=s.stop_reason,
            )
            for s in (c.seq for c in self.children)
        ]
        return RequestOutput(
            self.request_id,
            self.prompt,
            list(self.prompt_token_ids),
            completions,
            self.is_finished,
            self.metrics,
        )
