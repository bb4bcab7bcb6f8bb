"""The model runner: owns the model and the paged KV pool; turns a scheduled step into tensors,
runs one forward for every sequence of the step, and samples.

Prompt logprobs: for a request with `prompt_logprobs`, every prompt position computed this step also
yields the log-probability of the next prompt token (raw logits, as vLLM); its positions arrive over
as many steps as its chunked prefill takes. The logits of those rows are computed in blocks of at
most `_PROMPT_LOGITS_ELEMENTS`, so a long prompt never materialises a [prompt_len, vocab] tensor.

Speculative decoding: a sequence scheduled with k draft tokens feeds its last token and the drafts
(k + 1 rows, like a prefill chunk) and yields logits at all of them; spec_decode/verifier.py turns
those into the tokens to emit.

Flat step layout (vLLM's): all scheduled tokens packed into one [T] row of input_ids/positions;
the runner describes where they sit (a `StepLayout`) and the attention backend, one for every
layer, turns that into whatever tensors it reads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from nanoserve.config import CacheConfig, ModelConfig
from nanoserve.engine import host_malloc
from nanoserve.engine.cuda_graph import CudaGraphConfig, CudaGraphRunner
from nanoserve.engine.host_tensor import host_tensor
from nanoserve.engine.sampler import Sampler, SamplingMetadata, child_seed, make_generator
from nanoserve.engine.scheduler import SchedulerOutput
from nanoserve.engine.sequence import Sequence
from nanoserve.engine.spec_decode.verifier import SeqOutcome, verify_step
from nanoserve.engine.structured_output.bitmask import TokenBitmask
from nanoserve.model.attention import (
    AttentionMetadata,
    StepLayout,
    allocate_kv_caches,
    make_attention_backend,
)
from nanoserve.model.fused_decode import make_fused_decoder
from nanoserve.model.kernels import Kernels, select_kernels
from nanoserve.model.llama import LlamaForCausalLM
from nanoserve.model.loader import TORCH_DTYPES
from nanoserve.model.weight_bytes import model_weight_bytes

logger = logging.getLogger(__name__)

# Most logits elements computed at once for prompt logprobs (64 MiB in float32).
_PROMPT_LOGITS_ELEMENTS = 1 << 24


@dataclass
class PromptLogprobsChunk:
    """Prompt tokens [first_index, first_index + count) of `seq` scored this step: their logits come
    from the hidden rows of the positions just before them."""

    seq: Sequence
    first_index: int  # index in the prompt of the first token scored (>= 1: token 0 has no prefix)
    count: int
    num_top: int  # alternatives per token (params.prompt_logprobs)


@dataclass
class StepPlan:
    """A step's inputs as host lists: everything a rank needs to run the forward, no Sequence objects.

    Tensor-parallel: rank 0 sends it to the other ranks (distributed/step_codec.py) before its forward."""

    input_ids: list[int]  # [T]
    positions: list[int]  # [T]
    layout: StepLayout
    logits_rows: list[int]  # [S]: rows that sample
    prompt_rows: list[int]  # [R]: rows whose logits score the next prompt token


@dataclass
class StepInputs:
    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    meta: AttentionMetadata  # built by the attention backend
    logits_rows: torch.Tensor  # [S] int64: row of the last token of each sequence that samples (and
    # of each of its draft tokens: 1 + k rows for a sequence verifying k drafts)
    sample_seqs: list[Sequence]  # the sequences that sample, in logits-row order
    # None when the step scores no prompt token:
    prompt_rows: torch.Tensor | None  # [R] int64: hidden rows whose logits score the next prompt token
    prompt_targets: torch.Tensor | None  # [R] int64: that next prompt token
    prompt_chunks: list[PromptLogprobsChunk]  # which sequence each run of prompt_rows belongs to
    drafts: list[list[int]] = field(default_factory=list)  # per sample_seqs entry: its drafts verified
    # A step the CUDA-graph runner serves: input_ids, positions and meta are then None (not built).
    graph_plan: StepPlan | None = None


@dataclass
class StepResult:
    seqs: list[Sequence]
    token_ids: list[int]
    logprobs: list[dict[int, float] | None]
    # (seq, index of the first prompt token scored, {token id: logprob} per token: top-N then the token)
    prompt_logprobs: list[tuple[Sequence, int, list[dict[int, float]]]] = field(default_factory=list)
    # A verify step (some sequence had drafts): per seqs entry, every token it emits; token_ids and
    # logprobs then hold only the last of them.
    spec: list[SeqOutcome] | None = None


class ModelRunner:
    def __init__(
        self,
        model: LlamaForCausalLM,
        model_config: ModelConfig,
        cache_config: CacheConfig,
        device: torch.device,
        attention_backend: str = "auto",
        kernels: Kernels | None = None,
        step_sink: Any = None,
        cuda_graphs: CudaGraphConfig | None = None,
    ) -> None:
        """step_sink: tensor-parallel rank 0's executor (distributed/executor.py): sent every StepPlan,
        and runs each step (so a dead worker becomes a typed error); None in a single process.
        cuda_graphs: pure-decode steps through captured CUDA graphs (engine/cuda_graph.py); None: eager."""
        self.model = model
        self.step_sink = step_sink
        self.model_config = model_config
        self.cache_config = cache_config
        self.device = device
        # Reuse freed activations instead of faulting in fresh pages every step (host_malloc.py).
        self.malloc_policy = host_malloc.tune() if device.type == "cpu" else None
        self.block_size = cache_config.block_size
        # Chosen once (None: native on CPU when they build, compiled now on a first start) and handed to
        # every layer and the sampler: a run never changes kernels midway.
        self.kernels = kernels if kernels is not None else select_kernels(device)
        model.bind_kernels(self.kernels)
        self.sampler = Sampler(self.kernels)
        mc = model_config
        dtype = TORCH_DTYPES[mc.dtype]
        self.dtype = dtype
        # This process's heads: all of them, or a tensor-parallel rank's share (its share of the pool).
        first = model.attention_layers()[0]
        num_heads, num_kv_heads = first.num_heads, first.num_kv_heads
        # The whole pool, allocated once: (k, v) per layer, in the model's dtype or quantized (kv_cache.py).
        # With CUDA graphs, one block more than the block manager knows of: padding rows write there.
        pool_blocks = cache_config.num_blocks + (cuda_graphs is not None)
        self.kv_caches = allocate_kv_caches(
            mc.num_layers, num_kv_heads, pool_blocks, self.block_size, mc.head_dim, dtype,
            cache_config.cache_dtype, device,
        )
        # Memory truth: the weights as held (quantized, packed) and the KV pool's cost of one token.
        self.weight_bytes = model_weight_bytes(model)
        self.kv_bytes_per_token = mc.kv_bytes_per_token(cache_config.cache_dtype)
        # The native decode attention comes with the native kernels (kernels.ext; None on the PyTorch paths).
        self.attention_backend = make_attention_backend(
            attention_backend, device, self.kernels.ext, num_heads, num_kv_heads, mc.head_dim, dtype
        )
        for i, attn in enumerate(model.attention_layers()):
            attn.k_cache, attn.v_cache = self.kv_caches[i]
            attn.backend = self.attention_backend
        # Decode steps of a bf16/fp32 CPU model in one native call when every layer allows it (else None).
        model.model.fused_decode = make_fused_decoder(model, self.kernels)
        self.graphs = self._graph_runner(cuda_graphs) if cuda_graphs is not None else None

    @torch.inference_mode()
    def warm_up(self, num_tokens: int, max_seq_len: int) -> None:
        """Two forwards of `num_tokens` prompt tokens at start-up (CPU, one process), as vLLM's profile
        run: the heap grows to a full step's activations here, and the allocator keeps the pages
        (host_malloc.py), instead of faulting them in during the first requests' steps (the demo
        model's first 64 x 32-token step: 9.4k page faults and 36 ms, against 24 ms warm). One in
        prompts of up to `max_seq_len` tokens (the per-op path), one in prompts of one block (short
        prompts run as decode rows: the fused path on CPU). Their K/V go to blocks no sequence holds
        yet; a sequence writes its K/V before it reads them."""
        bs = self.block_size
        n = min(num_tokens, self.cache_config.num_blocks * bs)
        if n < bs or self.device.type != "cpu" or self.step_sink is not None:
            return
        for length in (max(bs, min(max_seq_len, n) // bs * bs), bs):
            k = n // length  # prompts of `length` tokens (k >= 1), each in blocks of its own
            per = length // bs
            layout = StepLayout(list(range(0, k * length + 1, length)), [length] * k,
                                [list(range(i * per, (i + 1) * per)) for i in range(k)],
                                list(range(k * length)), bs)
            meta = self.attention_backend.build_metadata(layout)
            positions = torch.arange(length).repeat(k)  # [k * length]
            hidden = self.model(torch.zeros(k * length, dtype=torch.int64), positions, meta)  # [T, hidden]
            self.model.compute_logits(hidden[-1:])

    def _graph_runner(self, config: CudaGraphConfig) -> CudaGraphRunner | None:
        """The CUDA-graph runner, start-up buckets captured; None where the backend has no graph metadata."""
        try:
            graphs = CudaGraphRunner(self.model, self.attention_backend, config, self.block_size,
                                     self.cache_config.num_blocks, self.device)
        except NotImplementedError as e:
            logger.info("CUDA graphs off (%s); decode steps run eagerly", e)
            return None
        graphs.capture_startup()
        return graphs

    # ---- step --------------------------------------------------------------------------------
    def execute(self, out: SchedulerOutput, token_bitmask: TokenBitmask | None = None) -> StepResult:
        """token_bitmask: the allowed tokens of the constrained rows among the step's sampling sequences
        (in scheduled order, as the logits' rows), from the engine's structured-output manager."""
        if self.step_sink is not None:
            return self.step_sink.run_step(lambda: self._execute(out, token_bitmask))
        return self._execute(out, token_bitmask)

    @torch.inference_mode()
    def execute_plan(self, plan: StepPlan) -> None:
        """A tensor-parallel rank > 0: the forward and the collectives `execute` runs, in the same order
        (prompt-logprob blocks, then the sampling rows), without sampling."""
        inputs = self._tensors(plan)
        hidden = self.model(inputs.input_ids, inputs.positions, inputs.meta)  # [T, hidden]
        if inputs.prompt_rows is not None:
            for rows in self._prompt_row_blocks(inputs.prompt_rows):
                self.model.compute_logits(hidden[rows])
        if plan.logits_rows:
            self.model.compute_logits(hidden[inputs.logits_rows])

    def check_health(self) -> None:
        """EngineDeadError if a tensor-parallel worker has died (a no-op in one process)."""
        if self.step_sink is not None:
            self.step_sink.check_health()

    def shutdown(self) -> None:
        """Stop the tensor-parallel workers, if any (idempotent)."""
        if self.step_sink is not None:
            self.step_sink.shutdown()

    def _prompt_row_blocks(self, prompt_rows: torch.Tensor) -> list[torch.Tensor]:
        block = max(1, _PROMPT_LOGITS_ELEMENTS // self.model_config.vocab_size)
        return [prompt_rows[b : b + block] for b in range(0, prompt_rows.shape[0], block)]

    @torch.inference_mode()
    def _execute(self, out: SchedulerOutput, token_bitmask: TokenBitmask | None) -> StepResult:
        inputs = self.prepare(out)
        if inputs.graph_plan is not None:
            plan = inputs.graph_plan
            hidden = self.graphs.run(plan.input_ids, plan.positions, plan.layout)  # [T, hidden]
        else:
            hidden = self.model(inputs.input_ids, inputs.positions, inputs.meta)  # [T, hidden]
        prompt_logprobs = self._prompt_logprobs(hidden, inputs) if inputs.prompt_chunks else []
        if not inputs.sample_seqs:
            return StepResult([], [], [], prompt_logprobs)
        logits = self.model.compute_logits(hidden[inputs.logits_rows])  # [S, vocab]
        seqs = inputs.sample_seqs
        for s in seqs:
            seed = s.request.params.seed
            if seed is not None and s.generator is None:  # each completion draws from its own stream
                s.generator = make_generator(child_seed(seed, s.index), self.device)
        if any(inputs.drafts):
            spec = verify_step(self.sampler, logits, seqs, inputs.drafts, self.model_config.eos_token_ids,
                               token_bitmask)
            return StepResult(seqs, [o.token_ids[-1] for o in spec], [o.logprobs[-1] for o in spec],
                              prompt_logprobs, spec)
        meta = SamplingMetadata(
            params=[s.request.params for s in seqs],
            prompt_token_ids=[s.token_ids[: s.num_prompt_tokens] for s in seqs],
            output_token_ids=[s.output_token_ids for s in seqs],
            generators=[s.generator for s in seqs],
            eos_token_ids=self.model_config.eos_token_ids,
            token_bitmask=token_bitmask,
        )
        sampled = self.sampler(logits, meta)
        return StepResult(seqs, sampled.token_ids, sampled.logprobs, prompt_logprobs)

    def _prompt_logprobs(self, hidden: torch.Tensor,
                         inputs: StepInputs) -> list[tuple[Sequence, int, list[dict[int, float]]]]:
        """Raw log-softmax of the prompt rows' logits, in blocks of rows, at the next prompt token."""
        vocab = self.model_config.vocab_size
        max_top = max(c.num_top for c in inputs.prompt_chunks)
        chosen: list[float] = []
        top_vals: list[list[float]] = []
        top_ids: list[list[int]] = []
        b = 0
        for rows in self._prompt_row_blocks(inputs.prompt_rows):
            logits = self.model.compute_logits(hidden[rows]).float()  # [r, vocab]
            logprobs = torch.log_softmax(logits, dim=-1)  # [r, vocab]
            targets = inputs.prompt_targets[b : b + rows.shape[0]].unsqueeze(1)  # [r, 1]
            b += rows.shape[0]
            chosen += logprobs.gather(1, targets).squeeze(1).tolist()
            if max_top > 0:
                vals, ids = logprobs.topk(min(max_top, vocab), dim=-1)  # [r, N]
                top_vals += vals.tolist()
                top_ids += ids.tolist()
        target_ids = inputs.prompt_targets.tolist()
        out = []
        row = 0
        for c in inputs.prompt_chunks:
            entries = []
            for r in range(row, row + c.count):
                top = zip(top_ids[r][: c.num_top], top_vals[r][: c.num_top], strict=True) if c.num_top else ()
                entry = dict(top)
                entry.setdefault(target_ids[r], chosen[r])
                entries.append(entry)
            out.append((c.seq, c.first_index, entries))
            row += c.count
        return out

    def prepare(self, out: SchedulerOutput) -> StepInputs:
        """The step's flat tensors, built from Python lists with one tensor per field (no per-layer work)."""
        bs = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        query_start = [0]
        context_lens: list[int] = []
        tables: list[list[int]] = []
        logits_rows: list[int] = []
        sample_seqs: list[Sequence] = []
        prompt_rows: list[int] = []
        prompt_targets: list[int] = []
        prompt_chunks: list[PromptLogprobsChunk] = []
        drafts: list[list[int]] = []
        for item in out.scheduled:
            seq, start, n = item.seq, item.start, item.num_new_tokens
            end = start + n
            table = seq.block_table
            if n == 1:  # a decode: no per-token ranges
                input_ids.append(seq.token_ids[start])
                positions.append(start)
                slots.append(table[start // bs] * bs + start % bs)
            else:
                input_ids.extend(seq.token_ids[start:end])
                input_ids.extend(item.spec_token_ids)  # the drafts follow the sequence's last token
                pos = np.arange(start, end)
                positions.extend(pos.tolist())
                slots.extend((np.asarray(table)[pos // bs] * bs + pos % bs).tolist())
            num_top = seq.request.params.prompt_logprobs
            # Position q's logits score prompt token q + 1; the last prompt position's are sampled from.
            last = min(end, seq.num_prompt_tokens - 1)
            if num_top is not None and last > start:
                first_row = query_start[-1]
                prompt_rows.extend(range(first_row, first_row + last - start))
                prompt_targets.extend(seq.token_ids[start + 1 : last + 1])
                prompt_chunks.append(PromptLogprobsChunk(seq, start + 1, last - start, num_top))
            query_start.append(query_start[-1] + n)
            context_lens.append(end)
            tables.append(table)
            if item.samples:
                k = len(item.spec_token_ids)
                logits_rows.extend(range(query_start[-1] - 1 - k, query_start[-1]))
                sample_seqs.append(seq)
                drafts.append(item.spec_token_ids)
        layout = StepLayout(query_start, context_lens, tables, slots, bs)
        plan = StepPlan(input_ids, positions, layout, logits_rows, prompt_rows)
        if self.step_sink is not None:
            self.step_sink.send_step(plan)  # the other ranks run the same forward
        inputs = self._tensors(plan)
        inputs.sample_seqs = sample_seqs
        inputs.drafts = drafts
        if prompt_chunks:
            inputs.prompt_targets = host_tensor(prompt_targets, torch.int64, self.device)
            inputs.prompt_chunks = prompt_chunks
        return inputs

    def _tensors(self, plan: StepPlan) -> StepInputs:
        """The plan's tensors; the Sequence-side fields are left empty for `prepare` to fill."""
        dev = self.device
        graphs = self.graphs
        if graphs is not None and graphs.applies(plan.input_ids, plan.layout, bool(plan.prompt_rows)):
            rows = host_tensor(plan.logits_rows, torch.int64, dev)
            return StepInputs(None, None, None, rows, [], None, None, [], graph_plan=plan)
        return StepInputs(
            input_ids=host_tensor(plan.input_ids, torch.int64, dev),
            positions=host_tensor(plan.positions, torch.int64, dev),
            meta=self.attention_backend.build_metadata(plan.layout),
            logits_rows=host_tensor(plan.logits_rows, torch.int64, dev),
            sample_seqs=[],
            # Only steps that score prompt tokens pay for these two tensors.
            prompt_rows=host_tensor(plan.prompt_rows, torch.int64, dev) if plan.prompt_rows else None,
            prompt_targets=None,
            prompt_chunks=[],
        )
