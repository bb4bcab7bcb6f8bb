"""Loading the draft model beside the target: tokenizer check, its config, and the KV budget split.

The draft model's KV pool is paged like the target's and comes out of the same memory budget: the
budget is split so both pools get the same number of blocks (one block of each holds the same
tokens), so a sequence that fits the target's pool fits the draft's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from nanoserve.config import CacheConfig, EngineArgs, ModelConfig
from nanoserve.engine.spec_decode.config import SpeculativeConfig
from nanoserve.errors import InvalidRequestError


@dataclass
class LoadedDraft:
    model_config: ModelConfig
    model: Any  # LlamaForCausalLM
    device: torch.device

    def make_runner(self, target_cache: CacheConfig, attention_backend: str) -> Any:
        """A ModelRunner over the draft model with a pool of as many blocks as the target's."""
        from nanoserve.engine.model_runner import ModelRunner

        cache = CacheConfig(target_cache.block_size, target_cache.num_blocks, enable_prefix_caching=False)
        return ModelRunner(self.model, self.model_config, cache, self.device, attention_backend)


def load_draft(
    spec: SpeculativeConfig, args: EngineArgs, target: ModelConfig, tokenizer: Any, device: torch.device
) -> LoadedDraft:
    from nanoserve.model.loader import load_model, load_model_config, load_tokenizer

    draft_args = dataclasses.replace(
        args, model=spec.model, tokenizer=None, max_model_len=None, speculative_config=None,
        dtype=draft_dtype(spec, args, target, device),
    )
    mc = load_model_config(draft_args)
    if mc.max_model_len < target.max_model_len:
        raise InvalidRequestError(
            f"the draft model {spec.model} holds {mc.max_model_len} positions, fewer than the target's "
            f"max_model_len {target.max_model_len}; pass a smaller max_model_len",
            "speculative_config",
        )
    mc.max_model_len = target.max_model_len
    draft_tokenizer = load_tokenizer(mc.tokenizer)
    if mc.vocab_size != target.vocab_size or draft_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise InvalidRequestError(
            f"the draft model {spec.model} does not share the target's tokenizer (vocabulary of "
            f"{mc.vocab_size} vs {target.vocab_size} ids, or different tokens): its drafts would not "
            "be the target's token ids",
            "speculative_config",
        )
    return LoadedDraft(mc, load_model(mc, device, args.cpu_linear), device)


def draft_dtype(spec: SpeculativeConfig, args: EngineArgs, target: ModelConfig, device: torch.device) -> str:
    """The draft model's dtype argument: speculative_config's "dtype" unless "auto"; "auto" is bf16 for
    an fp32 target on a CPU with the native bf16 linear kernel (the draft only proposes, so its
    rounding changes acceptance at most, never the output), else the target's dtype argument."""
    if spec.dtype != "auto":
        return spec.dtype
    if target.dtype == "float32" and device.type == "cpu" and args.cpu_linear in ("auto", "avx512"):
        from nanoserve.model.cpu_linear import load_avx512_kernel

        if load_avx512_kernel() is not None:
            return "bfloat16"
    return args.dtype


def split_kv_budget(
    args: EngineArgs, budget_bytes: int, target: ModelConfig, draft: ModelConfig
) -> tuple[EngineArgs, int]:
    """(args, budget) for sizing the target's pool so that an equal draft pool fits the same bytes."""
    t = target.kv_bytes_per_token(args.kv_cache_dtype)
    d = draft.kv_bytes_per_token(args.kv_cache_dtype)  # the draft pool stores K/V as the target's does
    if args.kv_cache_memory_bytes is not None:
        share = max(1, args.kv_cache_memory_bytes * t // (t + d))
        args = dataclasses.replace(args, kv_cache_memory_bytes=share)
    return args, budget_bytes * t // (t + d)
