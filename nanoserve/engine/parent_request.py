"""ParentRequest: a user's request fanned out into one child Request per completion (vLLM V1's n > 1).

The scheduler, the block manager and the runner never see n: each child is an ordinary n=1 Request
with its own completion index, and the children share the prompt's KV only through the prefix cache.
Children admitted in the same step would each compute the whole prompt, so with prompt sharing only
child 0 goes to the scheduler at first; its siblings follow once it has sampled its first token
(its prompt is then computed and its full blocks registered), and each computes only the partial
last block. They keep their consecutive arrival orders, so the scheduler queues them where they
would have stood. The index picks the child's seed stream (sampler.child_seed), so child i draws what
the i-th of n completions drew before the fan-out, whenever it runs. The children's progress is
gathered back into one RequestOutput under the user's request id.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from nanoserve.engine.sequence import Request, SequenceStatus
from nanoserve.outputs import CompletionOutput, RequestMetrics, RequestOutput
from nanoserve.sampling_params import SamplingParams


@dataclass(eq=False)
class ParentRequest:
    request_id: str  # the user's
    prompt: str | None
    prompt_token_ids: list[int]
    metrics: RequestMetrics  # one for all children: first token of any, tokens of all
    children: list[Request]  # children[i] is completion i
    share_prompt: bool  # stage siblings behind child 0 (see take_ready)
    num_handed_out: int = 0  # children[:num_handed_out] have gone to the scheduler

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
        share_prompt: bool,
    ) -> ParentRequest:
        """n = params.n children, ids f"{i}_{request_id}" (n = 1: the user's id), taking arrival
        orders from `arrival_orders` so that they are scheduled together, in index order.

        `share_prompt`: the prefix cache is on and the prompt has a full block before its last token
        (one a sibling could hit); otherwise all children are handed out at once."""
        metrics = RequestMetrics(arrival_time=arrival_time)
        n = params.n
        child_params = params.clone(n=1) if n > 1 else params
        # The prompt's logprobs are the same for every completion: child 0 computes them, its siblings
        # keep their prefix-cache hits.
        sibling_params = child_params
        if n > 1 and params.prompt_logprobs is not None:
            sibling_params = child_params.clone(prompt_logprobs=None)
        children = [
            Request(
                f"{i}_{request_id}" if n > 1 else request_id,
                prompt_token_ids,
                child_params if i == 0 else sibling_params,
                next(arrival_orders),
                max_tokens,
                index=i,
                parent_id=request_id,
                metrics=metrics,
            )
            for i in range(n)
        ]
        if params.prompt_logprobs is not None:
            children[0].seq.prompt_logprobs = [None]  # token 0 has no prefix (a 1-token prompt is done)
        return cls(request_id, prompt, list(prompt_token_ids), metrics, children, share_prompt)

    def take_ready(self) -> list[Request]:
        """Children to hand to the scheduler now, each returned once: at the first call child 0
        (every child without prompt sharing); later its siblings, as soon as child 0 has a token.

        A sampled token means child 0 computed the whole prompt at least once, even if it finished at
        that token or was preempted since; while it has none (waiting, prefilling, or preempted
        mid-prompt) the siblings wait, so they never compute the full blocks it is about to cache.
        """
        n = len(self.children)
        if self.num_handed_out == 0:
            self.num_handed_out = 1 if self.share_prompt else n
            return self.children[: self.num_handed_out]
        if self.num_handed_out < n and self.children[0].seq.num_output_tokens > 0:
            ready = self.children[self.num_handed_out :]
            self.num_handed_out = n
            return ready
        return []

    def finish_staged(self, reason: str) -> None:
        """Finish the children never handed out (on abort): they hold no blocks and never will."""
        for child in self.children[self.num_handed_out :]:
            child.seq.status = SequenceStatus.FINISHED
            child.seq.finish_reason = reason
        self.num_handed_out = len(self.children)  # nothing left to hand out

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
        prompt_logprobs = self.children[0].seq.prompt_logprobs
        complete = prompt_logprobs is not None and len(prompt_logprobs) == len(self.prompt_token_ids)
        return RequestOutput(
            self.request_id,
            self.prompt,
            list(self.prompt_token_ids),
            completions,
            self.is_finished,
            self.metrics,
            prompt_logprobs=list(prompt_logprobs) if complete else None,
        )
