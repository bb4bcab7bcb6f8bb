"""LLMEngine: add_request / step / abort_request, tying scheduler, runner, sampler and outputs together.

One step: the scheduler picks sequences and token counts, the runner runs one forward for all of
them and samples, then each sampled token is appended, detokenized and checked against the stop
conditions; finished sequences free their blocks at once, so the next step can admit waiting ones.
A request with n > 1 is fanned out here into n independent requests (engine/parent_request.py), and
their progress is gathered back into one RequestOutput per step; with prefix caching the siblings
reach the scheduler only once completion 0 has computed the prompt, so they hit its cached blocks.
With speculative decoding (engine/spec_decode/) each step ends by asking the proposer for drafts for
the running decodes; the next step verifies them, and a sequence then appends a run of tokens (the
accepted drafts and one from the target), checked one by one against the stop conditions. A prefill
chunk that samples gets its drafts before its forward (drafted from the prompt), so the prefill step
verifies them already.
Not thread-safe: one thread calls add_request / step / abort_request.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from nanoserve.config import (
    CacheConfig,
    EngineArgs,
    ModelConfig,
    SchedulerConfig,
    default_cpu_kv_budget_bytes,
    make_cache_config,
    make_scheduler_config,
)
from nanoserve.engine.block_manager import BlockManager
from nanoserve.engine.detokenizer import IncrementalDetokenizer
from nanoserve.engine.parent_request import ParentRequest
from nanoserve.engine.scheduler import Scheduler, SchedulerOutput
from nanoserve.engine.sequence import Sequence
from nanoserve.engine.spec_decode.config import SpeculativeConfig, parse_speculative_config
from nanoserve.engine.spec_decode.metrics import SpecDecodeCounters
from nanoserve.engine.spec_decode.proposer import (
    Proposer,
    draft_room,
    make_proposer,
    prefill_chunk_max_tokens,
)
from nanoserve.engine.spec_decode.step_timers import StepTimers
from nanoserve.engine.stats import EngineStats
from nanoserve.engine.stop_checker import check_stop
from nanoserve.engine.structured_output.manager import StructuredOutputManager
from nanoserve.errors import InvalidRequestError, PromptTooLongError
from nanoserve.outputs import RequestOutput
from nanoserve.sampling_params import SamplingParams

if TYPE_CHECKING:  # both import torch / transformers, which this module's importers may not need
    from transformers import PreTrainedTokenizerBase

    from nanoserve.engine.model_runner import ModelRunner
    from nanoserve.engine.spec_decode.verifier import SeqOutcome

logger = logging.getLogger(__name__)


class LLMEngine:
    def __init__(
        self,
        model_config: ModelConfig,
        cache_config: CacheConfig,
        scheduler_config: SchedulerConfig,
        runner: ModelRunner,
        tokenizer: PreTrainedTokenizerBase,
        speculative_config: SpeculativeConfig | None = None,
        proposer: Proposer | None = None,
    ) -> None:
        self.model_config = model_config
        self.cache_config = cache_config
        self.scheduler_config = scheduler_config
        self.runner = runner
        self.tokenizer = tokenizer
        self.weight_bytes: int = runner.weight_bytes  # the model's weights as held (bytes)
        self.kv_bytes_per_token: int = runner.kv_bytes_per_token
        self.block_manager = BlockManager(
            cache_config.num_blocks, cache_config.block_size, cache_config.enable_prefix_caching
        )
        self.scheduler = Scheduler(scheduler_config, self.block_manager)
        self.requests: dict[str, ParentRequest] = {}  # by the user's request id
        self._arrivals = itertools.count()
        self._aborted_outputs: list[RequestOutput] = []
        self.generation_tokens = 0
        self.structured_outputs = StructuredOutputManager(
            tokenizer, model_config.vocab_size, model_config.eos_token_ids
        )
        self.speculative_config = speculative_config
        if speculative_config is not None and proposer is None:
            proposer = make_proposer(speculative_config)  # n-gram; a draft model comes loaded
        self.proposer = proposer
        # The longest prefill chunk that may carry drafts (None: any); see _draft_for_prefills.
        self._prefill_draft_max_tokens = (
            prefill_chunk_max_tokens(model_config.dtype) if proposer is not None else None
        )
        self.spec_counters = SpecDecodeCounters()
        self.step_timers: StepTimers | None = None  # attached by the benchmarks only

    @classmethod
    def from_engine_args(cls, args: EngineArgs) -> LLMEngine:
        import torch

        from nanoserve.engine.cuda_graph import cuda_graph_config
        from nanoserve.engine.model_runner import ModelRunner
        from nanoserve.model.loader import load_model, load_model_config, load_tokenizer, resolve_device

        if args.data_parallel_size > 1:  # replicas are processes behind a router: engine/data_parallel.py
            raise InvalidRequestError("data_parallel_size > 1 is for `nanoserve serve`; one engine runs one "
                                      "replica", "data_parallel_size")
        torch.manual_seed(args.seed)
        if args.num_cpu_threads is not None:
            torch.set_num_threads(args.num_cpu_threads)
        spec = parse_speculative_config(args.speculative_config)
        model_config = load_model_config(args)
        device = resolve_device(args.device)
        tokenizer = load_tokenizer(model_config.tokenizer)
        eos = getattr(tokenizer, "eos_token_id", None)
        if isinstance(eos, int) and eos not in model_config.eos_token_ids:
            model_config.eos_token_ids.append(eos)
        scheduler_config = make_scheduler_config(args, model_config.max_model_len)
        if args.tensor_parallel_size > 1:
            if spec is not None:
                raise InvalidRequestError(
                    "speculative_config with tensor_parallel_size > 1 is not supported yet: the draft "
                    "model and the verify step run in one process", "speculative_config")
            runner = _tensor_parallel_runner(args, model_config, scheduler_config, device)
            return cls(model_config, runner.cache_config, scheduler_config, runner, tokenizer)
        draft = None
        if spec is not None and spec.method == "draft_model":
            from nanoserve.engine.spec_decode.draft_runner import load_draft

            draft = load_draft(spec, args, model_config, tokenizer, device)
        model = load_model(model_config, device, args.cpu_linear)
        if device.type == "cuda":
            free_bytes, _ = torch.cuda.mem_get_info(device)
            budget = int(free_bytes * args.gpu_memory_utilization) - (1 << 30)  # 1 GiB for activations
        else:
            budget = default_cpu_kv_budget_bytes()
        cache_args = args
        if draft is not None:  # both pools from one budget: one block of each per block of tokens
            from nanoserve.engine.spec_decode.draft_runner import split_kv_budget

            cache_args, budget = split_kv_budget(args, budget, model_config, draft.model_config)
        cache_config = make_cache_config(cache_args, model_config, budget, scheduler_config.max_num_seqs)
        graphs = cuda_graph_config(args, device, scheduler_config.max_num_seqs, model_config.max_model_len)
        runner = ModelRunner(model, model_config, cache_config, device, args.attention_backend,
                             cuda_graphs=graphs)
        runner.warm_up(scheduler_config.max_num_batched_tokens, scheduler_config.max_model_len)
        quant = model_config.quantization
        logger.info(
            "model %s: weights %.1f MiB (%s%s), KV cache %d bytes per token",
            model_config.model, runner.weight_bytes / 2**20, model_config.dtype,
            f", {quant.method} decoder linears" if quant else "", runner.kv_bytes_per_token,
        )
        proposer = None
        if draft is not None:
            proposer = make_proposer(spec, draft.make_runner(cache_config, args.attention_backend),
                                     model_config.eos_token_ids)
        return cls(model_config, cache_config, scheduler_config, runner, tokenizer, spec, proposer)

    def shutdown(self) -> None:
        """Stop the engine's worker processes (tensor parallelism); a no-op in one process. Idempotent."""
        self.runner.shutdown()

    def check_health(self) -> None:
        """EngineDeadError once a tensor-parallel worker has died (the engine can run no more steps)."""
        self.runner.check_health()

    # ---- requests ------------------------------------------------------------------------------
    def _tokenize(self, prompt: str | list[int] | dict) -> tuple[str | None, list[int]]:
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                return prompt.get("prompt"), self._check_ids(prompt["prompt_token_ids"])
            if "prompt" in prompt:
                prompt = prompt["prompt"]
            else:
                raise InvalidRequestError("a prompt dict needs 'prompt' or 'prompt_token_ids'", "prompt")
        if isinstance(prompt, str):
            return prompt, list(self.tokenizer.encode(prompt)) if prompt else []
        if isinstance(prompt, list | tuple):
            return None, self._check_ids(prompt)
        raise InvalidRequestError(
            f"a prompt must be a str, a token id list or a dict, got {type(prompt).__name__}", "prompt"
        )

    def _check_ids(self, ids: Any) -> list[int]:
        vocab = self.model_config.vocab_size
        if not isinstance(ids, list | tuple) or not all(
            isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab for t in ids
        ):
            raise InvalidRequestError(f"prompt_token_ids must be a list of ints in [0, {vocab})", "prompt")
        return list(ids)

    def add_request(
        self,
        request_id: str,
        prompt: str | list[int] | dict,
        params: SamplingParams | None = None,
        arrival_time: float | None = None,
    ) -> None:
        """Queue a request. Raises InvalidRequestError / PromptTooLongError for one that can never run."""
        if request_id in self.requests:
            raise InvalidRequestError(f"request id {request_id!r} is already in use", "request_id")
        params = params if params is not None else SamplingParams()
        vocab = self.model_config.vocab_size
        bad_bias = [t for t in params.logit_bias or {} if t >= vocab]
        if bad_bias:
            raise InvalidRequestError(
                f"logit_bias has token id {bad_bias[0]}, outside the vocabulary [0, {vocab}).", "logit_bias"
            )
        text, ids = self._tokenize(prompt)
        n = len(ids)
        if n == 0:
            raise InvalidRequestError("the prompt is empty", "prompt")
        max_len = self.model_config.max_model_len
        if n >= max_len:
            raise PromptTooLongError(
                f"This model's maximum context length is {max_len} tokens. However, your prompt contains "
                f"{n} input tokens, leaving no room for output.",
                n,
                max_len,
            )
        pool_tokens = self.cache_config.num_tokens
        if self.block_manager.blocks_needed(n + 1) > self.cache_config.num_blocks:
            raise PromptTooLongError(
                f"the prompt ({n} tokens) needs more KV blocks than the whole cache holds "
                f"({self.cache_config.num_blocks} blocks of {self.cache_config.block_size} tokens)",
                n,
                pool_tokens,
            )
        # A sequence must fit the context and, alone, the pool: then preemption can always make room.
        room = min(max_len, pool_tokens) - n
        max_tokens = min(params.max_tokens or room, room)
        grammar = self.structured_outputs.compile(params)  # before any state: a bad one is a 400
        parent = ParentRequest.fan_out(
            request_id,
            text,
            ids,
            params,
            time.monotonic() if arrival_time is None else arrival_time,
            self._arrivals,
            max_tokens,
            # Siblings can share a full block before the prompt's last token, and only through the cache.
            share_prompt=self.cache_config.enable_prefix_caching and n > self.cache_config.block_size,
        )
        if grammar is not None:
            self.structured_outputs.attach(parent.children, grammar)
        self.requests[request_id] = parent
        self._hand_out(parent)

    def _hand_out(self, parent: ParentRequest) -> None:
        for child in parent.take_ready():
            self.scheduler.add_request(child)

    def abort_request(self, request_id: str | Iterable[str]) -> None:
        """Finish the request(s) at once with finish_reason "abort"; their blocks go back to the pool."""
        ids = [request_id] if isinstance(request_id, str) else list(request_id)
        for rid in ids:
            parent = self.requests.pop(rid, None)
            if parent is None:
                continue
            parent.finish_staged("abort")  # siblings not yet handed out never will be
            for child in parent.children:
                self.scheduler.abort_request(child)
                if self.proposer is not None:
                    self.proposer.free(child.seq)
            parent.metrics.finished_time = time.monotonic()
            self._aborted_outputs.append(parent.make_output())

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def get_num_unfinished_requests(self) -> int:
        return len(self.requests)

    # ---- the step ------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        timers = self.step_timers
        t_start = time.perf_counter() if timers is not None else 0.0
        outputs, self._aborted_outputs = self._aborted_outputs, []
        sched = self.scheduler.schedule()
        if sched.is_empty:
            assert not self.scheduler.has_unfinished(), "scheduler made no progress with requests pending"
            return outputs
        now = time.monotonic()
        for item in sched.scheduled:
            m = item.seq.request.metrics
            if m.first_scheduled_time is None:
                m.first_scheduled_time = now
        if self.proposer is not None:
            for seq in sched.preempted:  # its draft KV goes with its target KV
                self.proposer.free(seq)
            self._draft_for_prefills(sched)
        mask = self.structured_outputs.token_bitmask([it.seq for it in sched.scheduled if it.samples])
        # A decode step: every sequence computes just its last token (plus drafts), read before execute.
        decode = timers is not None and all(
            it.num_new_tokens - len(it.spec_token_ids) == 1 and it.samples for it in sched.scheduled
        )
        t_exec = time.perf_counter() if timers is not None else 0.0
        result = self.runner.execute(sched, mask)  # mask None: unconstrained, the sampler's fast path
        t_exec = time.perf_counter() - t_exec if timers is not None else 0.0
        self.scheduler.update_after_step(sched)
        emitted_before = self.generation_tokens
        now = time.monotonic()
        touched: dict[str, ParentRequest] = {}
        for seq, first_index, entries in result.prompt_logprobs:
            _add_prompt_logprobs(seq, first_index, entries)
        if result.spec is None:
            for seq, token, logprobs in zip(result.seqs, result.token_ids, result.logprobs, strict=True):
                self._append_token(seq, token, logprobs, now)
                touched[seq.request.parent_id] = self.requests[seq.request.parent_id]
            self.generation_tokens += len(result.token_ids)
        else:
            for seq, outcome in zip(result.seqs, result.spec, strict=True):
                self._append_verified(seq, outcome, now)
                touched[seq.request.parent_id] = self.requests[seq.request.parent_id]
        proposed, t_prop = False, 0.0
        if self.proposer is not None:
            t_prop = time.perf_counter() if timers is not None else 0.0
            proposed = self._propose()
            t_prop = time.perf_counter() - t_prop if timers is not None else 0.0
        for parent in touched.values():
            self._hand_out(parent)  # siblings, once completion 0 has its first token
            if parent.is_finished:
                parent.metrics.finished_time = now
                del self.requests[parent.request_id]
            outputs.append(parent.make_output())
        if decode:
            timers.observe(len(sched.scheduled), time.perf_counter() - t_start, t_exec, t_prop,
                           result.spec is not None, proposed, self.generation_tokens - emitted_before)
        return outputs

    def _append_verified(self, seq: Sequence, outcome: SeqOutcome, now: float) -> None:
        """Append a verify step's run of tokens up to the first that finishes the sequence; the slots
        of the tokens not kept are rolled back."""
        self.spec_counters.observe(outcome.num_draft_tokens, outcome.num_accepted_tokens)
        m = seq.request.metrics
        m.spec_num_draft_tokens += outcome.num_draft_tokens
        m.spec_num_accepted_tokens += outcome.num_accepted_tokens
        for token, logprobs in zip(outcome.token_ids, outcome.logprobs, strict=True):
            self._append_token(seq, token, logprobs, now)
            self.generation_tokens += 1
            if seq.is_finished:  # its blocks (and draft blocks) are already free
                return
        self.scheduler.accept_spec_tokens(seq, outcome.num_accepted_tokens)

    def _propose(self) -> bool:
        """Drafts for every running decode that has none, for the next step to verify; False when the
        proposer was not asked (nothing to draft for, or the batch reached disable_by_batch_size)."""
        if self._drafting_off():
            self.spec_counters.num_disabled_steps += 1  # the next step decodes plainly; still exact
            return False
        running = [s for s in self.scheduler.running if not s.spec_token_ids and s.num_uncomputed_tokens == 1]
        seqs, room = self._with_room(running)  # skipped: unverified drafts (budget short), prefills
        if not seqs:
            return False
        for seq, drafts, n in zip(seqs, self.proposer.propose(seqs, room), room, strict=True):
            seq.spec_token_ids = list(drafts[:n])
        return True

    def _draft_for_prefills(self, sched: SchedulerOutput) -> None:
        """Drafts for the prefill chunks of this step that sample, verified by this very step: the step
        that samples a request's first token also checks the k after it, so a short answer can finish in
        its prefill step instead of paying a separate verify step (the draft model's prefill runs here,
        rather than after the step). Chunks too long for that to stay bit-exact (prefill_chunk_max_tokens)
        keep the old order: drafts after the step, verified by the next."""
        if self._drafting_off():
            return
        limit = self._prefill_draft_max_tokens
        items = [
            it for it in sched.scheduled
            if it.samples and not it.spec_token_ids and it.seq.is_prefill
            and (limit is None or it.num_new_tokens < limit)
        ]
        seqs, room = self._with_room([it.seq for it in items])
        if not seqs:
            return
        by_seq = {it.seq.seq_id: it for it in items}
        if limit is not None:  # room left in a chunk that keeps its verify rows bit-exact
            room = [min(n, limit - by_seq[s.seq_id].num_new_tokens) for s, n in zip(seqs, room, strict=True)]
        for seq, drafts, n in zip(seqs, self.proposer.propose(seqs, room), room, strict=True):
            self.scheduler.attach_drafts(sched, by_seq[seq.seq_id], drafts[:n])

    def _drafting_off(self) -> bool:
        off_at = self.speculative_config.disable_by_batch_size
        return off_at is not None and self.scheduler.num_running >= off_at

    def _with_room(self, candidates: list[Sequence]) -> tuple[list[Sequence], list[int]]:
        """The candidates that may take drafts, and how many each (draft_room)."""
        k = self.speculative_config.num_speculative_tokens
        max_len = self.model_config.max_model_len
        seqs, room = [], []
        for seq in candidates:
            n = draft_room(seq, k, max_len)
            if n > 0:
                seqs.append(seq)
                room.append(n)
        return seqs, room

    def _append_token(self, seq: Sequence, token: int, logprobs: dict[int, float] | None, now: float) -> None:
        request = seq.request
        params = request.params
        seq.token_ids.append(token)
        if params.logprobs is not None:
            if seq.logprobs is None:
                seq.logprobs = []
            seq.logprobs.append(logprobs or {})
        m = request.metrics
        if m.first_token_time is None:
            m.first_token_time = now
        m.last_token_time = now
        m.num_generation_tokens += 1
        ended = request.grammar is not None and self.structured_outputs.accept(seq, token)
        reason = self._check_stop(seq, token)
        if reason is None and ended:  # the grammar is complete (or, logged, could not go on)
            reason = "stop"
        if reason is not None:
            self.scheduler.finish_seq(seq, reason)
            if self.proposer is not None:
                self.proposer.free(seq)

    def _check_stop(self, seq: Sequence, token: int) -> str | None:
        """Detokenize incrementally and check the stop conditions; returns the finish reason or None."""
        params = seq.request.params
        if seq.detok_state is None:
            seq.detok_state = IncrementalDetokenizer(
                self.tokenizer, seq.token_ids[: seq.num_prompt_tokens], params.skip_special_tokens
            )
        delta = seq.detok_state.add_token(token)
        num_out = seq.num_output_tokens
        result = check_stop(
            params,
            self.model_config.eos_token_ids,
            seq.detok_state.output_text,
            len(delta),
            token,
            num_out,
            seq.num_tokens,
            self.model_config.max_model_len,
        )
        seq.output_text = result.text
        if result.finished:
            seq.stop_reason = result.stop_reason
            return result.finish_reason
        if num_out >= seq.request.max_tokens:  # clamped to the context and to the pool
            return "length"
        return None

    # ---- observability -------------------------------------------------------------------------
    def get_stats(self) -> EngineStats:
        bm, sched = self.block_manager, self.scheduler
        c = sched.counters
        pool = bm.stats()
        return EngineStats(
            num_running=sched.num_running,
            num_waiting=sched.num_waiting,
            kv_cache_usage=pool.usage,
            num_total_blocks=pool.num_total_blocks,
            num_free_blocks=pool.num_free_blocks,
            prefix_cache_queries=c.prefix_cache_queries,
            prefix_cache_hits=c.prefix_cache_hits,
            num_preemptions=c.num_preemptions,
            prompt_tokens=c.prompt_tokens,
            generation_tokens=self.generation_tokens,
            # By the user's request: n completions count once, running while any of them runs.
            num_running_requests=len({s.request.parent_id for s in sched.running}),
            num_waiting_requests=len(
                {s.request.parent_id for s in sched.waiting} - {s.request.parent_id for s in sched.running}
            ),
            kv_cache_fragmentation=bm.internal_fragmentation(sched.running),
            num_cached_blocks=pool.num_cached_blocks,
            spec_decode_num_drafts=self.spec_counters.num_drafts,
            spec_decode_num_draft_tokens=self.spec_counters.num_draft_tokens,
            spec_decode_num_accepted_tokens=self.spec_counters.num_accepted_tokens,
            spec_decode_num_accepted_tokens_per_pos=list(self.spec_counters.accepted_per_pos),
            spec_decode_num_disabled_steps=self.spec_counters.num_disabled_steps,
        )

    def check_all_blocks_free(self) -> None:
        """AssertionError unless the KV pool is entirely free (call when no request is in flight)."""
        self.block_manager.check_all_free()
        if self.proposer is not None:
            self.proposer.check_all_free()  # the draft model's pool


def _tensor_parallel_runner(
    args: EngineArgs, model_config: ModelConfig, scheduler_config: SchedulerConfig, device: Any
) -> ModelRunner:
    """Rank 0's runner: the KV pool is sized first (every rank gets the same block count), then the
    workers are spawned and load their shards while this process loads rank 0's."""
    import torch

    from nanoserve.distributed.executor import (
        TensorParallelExecutor,
        rank_device,
        ranks_per_node,
        threads_per_rank,
    )
    from nanoserve.distributed.kv_sizing import kv_sizing_config
    from nanoserve.engine.model_runner import ModelRunner
    from nanoserve.model.loader import load_model
    from nanoserve.model.parallel_layers import bind_communicator

    torch.set_num_threads(threads_per_rank(args))
    tp = args.tensor_parallel_size
    if args.node_rank != 0:
        raise InvalidRequestError("node_rank > 0 runs only workers: distributed.executor.run_headless",
                                  "node_rank")
    device = rank_device(device, 0, ranks_per_node(args))
    if device.type == "cuda":  # before loading: the shard's weights are about 1/tp of the checkpoint's
        free_bytes, _ = torch.cuda.mem_get_info(device)
        # Per GPU; a rank holds 1/tp of the KV heads, so the pool has tp times the blocks.
        budget = (int(free_bytes * args.gpu_memory_utilization) - (1 << 30)) * tp
    else:
        budget = default_cpu_kv_budget_bytes()  # one RAM for all ranks: their shards add up to the pool
    # By each rank's own KV heads (replicated when fewer than the ranks), so the budget holds.
    sizing = kv_sizing_config(model_config, tp)
    cache_config = make_cache_config(args, sizing, budget, scheduler_config.max_num_seqs)
    executor = TensorParallelExecutor.start(args, model_config, cache_config, device)
    try:
        model = load_model(model_config, device, args.cpu_linear, 0, tp)
        bind_communicator(model, executor.comm)
        runner = ModelRunner(model, model_config, cache_config, device, args.attention_backend,
                             step_sink=executor)
        executor.wait_ready()
    except BaseException:
        executor.shutdown()
        raise
    return runner


def _add_prompt_logprobs(seq: Sequence, first_index: int, entries: list[dict[int, float]]) -> None:
    """Record prompt tokens first_index.. of `seq`; a recompute after preemption repeats known ones."""
    if seq.prompt_logprobs is None:
        seq.prompt_logprobs = [None]  # the first prompt token has no prefix to score it
    for i, entry in enumerate(entries, start=first_index):
        if i == len(seq.prompt_logprobs):
            seq.prompt_logprobs.append(entry)
