"""The model runner: owns the model and the paged KV pool; turns a scheduled step into tensors,
runs one forward for every sequence of the step, and samples.

Flat step layout (vLLM's): all scheduled tokens packed into one [T] row of input_ids/positions;
sequence i owns rows query_start_loc[i]:query_start_loc[i+1]; slot_mapping says where each new
token's K/V goes in the pool; block_tables/context_lens say what each sequence may attend to.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from nanoserve.config import CacheConfig, ModelConfig
from nanoserve.engine.scheduler import SchedulerOutput
from nanoserve.engine.sequence import Sequence
from nanoserve.model.attention import AttentionMetadata
from nanoserve.model.llama import LlamaForCausalLM
from nanoserve.model.loader import TORCH_DTYPES
from nanoserve.model.native_kernels import load_native_kernels
from nanoserve.sampler import Sampler, SamplingMetadata, child_seed, make_generator

logger = logging.getLogger(__name__)


@dataclass
class StepInputs:
    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    meta: AttentionMetadata
    logits_rows: torch.Tensor  # [S] int64: row of the last token of each sequence that samples
    sample_seqs: list[Sequence]  # the sequences that sample, one per logits row


@dataclass
class StepResult:
    seqs: list[Sequence]
    token_ids: list[int]
    logprobs: list[dict[int, float] | None]


class ModelRunner:
    def __init__(
        self,
        model: LlamaForCausalLM,
        model_config: ModelConfig,
        cache_config: CacheConfig,
        device: torch.device,
    ) -> None:
        self.model = model
        self.model_config = model_config
        self.cache_config = cache_config
        self.device = device
        self.block_size = cache_config.block_size
        self.sampler = Sampler()
        mc = model_config
        dtype = TORCH_DTYPES[mc.dtype]
        self.dtype = dtype
        shape = (mc.num_layers, 2, mc.num_kv_heads, cache_config.num_blocks, self.block_size, mc.head_dim)
        self.kv_cache = torch.zeros(shape, dtype=dtype, device=device)  # the whole pool, allocated once
        # Loaded from the disk cache now (or built in the background on a first start, this engine then
        # keeping the PyTorch decode attention); None -> PyTorch paths.
        native = load_native_kernels(background_if_unbuilt=True) if device.type == "cpu" else None
        self.native_attention = native is not None
        for i, attn in enumerate(model.attention_layers()):
            attn.k_cache, attn.v_cache = self.kv_cache[i, 0], self.kv_cache[i, 1]
            attn.backend.native = native

    # ---- step --------------------------------------------------------------------------------
    @torch.inference_mode()
    def execute(self, out: SchedulerOutput) -> StepResult:
        inputs = self.prepare(out)
        hidden = self.model(inputs.input_ids, inputs.positions, inputs.meta)  # [T, hidden]
        if not inputs.sample_seqs:
            return StepResult([], [], [])
        logits = self.model.compute_logits(hidden[inputs.logits_rows])  # [S, vocab]
        seqs = inputs.sample_seqs
        for s in seqs:
            seed = s.request.params.seed
            if seed is not None and s.generator is None:  # each completion draws from its own stream
                s.generator = make_generator(child_seed(seed, s.index), self.device)
        meta = SamplingMetadata(
            params=[s.request.params for s in seqs],
            prompt_token_ids=[s.token_ids[: s.num_prompt_tokens] for s in seqs],
            output_token_ids=[s.output_token_ids for s in seqs],
            generators=[s.generator for s in seqs],
            eos_token_ids=self.model_config.eos_token_ids,
        )
        sampled = self.sampler(logits, meta)
        return StepResult(seqs, sampled.token_ids, sampled.logprobs)

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
        decode_idx: list[int] = []
        prefill_idx: list[int] = []
        for i, item in enumerate(out.scheduled):
            seq, start, n = item.seq, item.start, item.num_new_tokens
            end = start + n
            table = seq.block_table
            if n == 1:  # a decode: no per-token ranges
                input_ids.append(seq.token_ids[start])
                positions.append(start)
                slots.append(table[start // bs] * bs + start % bs)
                decode_idx.append(i)
            else:
                input_ids.extend(seq.token_ids[start:end])
                pos = np.arange(start, end)
                positions.extend(pos.tolist())
                slots.extend((np.asarray(table)[pos // bs] * bs + pos % bs).tolist())
                prefill_idx.append(i)
            query_start.append(query_start[-1] + n)
            context_lens.append(end)
            tables.append(table)
            if item.samples:
                logits_rows.append(query_start[-1] - 1)
                sample_seqs.append(seq)
        dev = self.device
        num_seqs = len(tables)
        max_blocks = max(len(t) for t in tables)
        table_arr = np.zeros((num_seqs, max_blocks), dtype=np.int64)  # [B, max_blocks], padded with 0
        for i, t in enumerate(tables):
            table_arr[i, : len(t)] = t
        ctx_arr = np.asarray(context_lens, dtype=np.int64)
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.int64, device=dev),
            query_start_loc=torch.tensor(query_start, dtype=torch.int32, device=dev),
            context_lens=torch.from_numpy(ctx_arr).to(dev),
            block_tables=torch.from_numpy(table_arr).to(dev),
            query_lens_list=np.diff(query_start).tolist(),
            context_lens_list=context_lens,
            decode_indices=torch.tensor(decode_idx, dtype=torch.int64, device=dev),
            prefill_indices_list=prefill_idx,
            block_size=bs,
            query_start_list=query_start if prefill_idx else None,
        )
        if decode_idx:
            self._decode_meta(meta, decode_idx, table_arr, ctx_arr, query_start, len(prefill_idx) > 0)
        return StepInputs(
            input_ids=torch.tensor(input_ids, dtype=torch.int64, device=dev),
            positions=torch.tensor(positions, dtype=torch.int64, device=dev),
            meta=meta,
            logits_rows=torch.tensor(logits_rows, dtype=torch.int64, device=dev),
            sample_seqs=sample_seqs,
        )

    def _decode_meta(
        self,
        meta: AttentionMetadata,
        decode_idx: list[int],
        table_arr: np.ndarray,
        ctx_arr: np.ndarray,
        query_start: list[int],
        mixed: bool,
    ) -> None:
        """Padded block tables and the additive mask of the step's decodes, shared by every layer."""
        bs, dev = self.block_size, self.device
        ctx = ctx_arr[decode_idx] if mixed else ctx_arr  # [Bd]
        nb = -(-int(ctx.max()) // bs)
        tables = table_arr[decode_idx, :nb] if mixed else table_arr[:, :nb]  # [Bd, nb]
        meta.decode_tables = torch.from_numpy(np.ascontiguousarray(tables)).to(dev)
        if self.native_attention:
            meta.decode_ctx_lens = torch.from_numpy(np.ascontiguousarray(ctx))
        else:
            masked = np.arange(nb * bs)[None, :] >= ctx[:, None]  # [Bd, L]: padding past each context
            bias = torch.zeros(masked.shape, dtype=self.dtype)
            bias.masked_fill_(torch.from_numpy(masked), float("-inf"))
            meta.decode_bias = bias.unsqueeze(1).to(dev)  # [Bd, 1, L]
        if mixed:
            meta.decode_rows = torch.tensor(
                [query_start[i] for i in decode_idx], dtype=torch.int64, device=dev
            )
