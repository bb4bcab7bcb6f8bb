"""The engine tests' oracle: prompts that put the engine under pressure, and an unquantized engine whose
linears compute with given (dequantized) weights by the plain formula."""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from quant_checkpoints import StoredLinear
from torch import nn

from nanoserve import LLM, SamplingParams
from nanoserve.model.quantization.apply import decoder_linears

MAX_TOKENS = 12
GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
# 16 blocks x 16 tokens for ~560 prompt tokens: preemption; 32-token steps: chunked prefill.
PRESSURE = dict(num_gpu_blocks_override=16, block_size=16, max_num_batched_tokens=32,
                enable_prefix_caching=True)


def prompts(seed: int = 0) -> list[list[int]]:
    """Prompts of 1 to 200 tokens; three share a 70-token prefix (prefix-cache hits)."""
    rng = random.Random(seed)

    def rand(n: int) -> list[int]:
        return [rng.randrange(3, 128) for _ in range(n)]

    prefix = rand(70)
    return [rand(n) for n in (1, 4, 19, 64, 130, 200)] + [prefix + rand(n) for n in (2, 15, 40)]


class OracleLinear(nn.Module):
    """F.linear over a dequantized weight [N, K]; with codes [N, K] int8 and scales [N], W8A8: per-token
    int8 activations computed here too, with an exact float64 integer product."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, codes: torch.Tensor | None = None,
                 scales: torch.Tensor | None = None) -> None:
        super().__init__()
        self.weight, self.bias, self.codes, self.scales = weight, bias, codes, scales

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.codes is None:
            return F.linear(x, self.weight.to(x.dtype), self.bias)
        xf = x.float()
        sx = xf.abs().amax(-1, keepdim=True)
        sx = torch.where(sx > 0, sx / 127, torch.ones_like(sx))
        xq = torch.round(xf / sx).clamp(-127, 127)
        acc = (xq.double() @ self.codes.double().t()).float()
        y = acc * sx * self.scales.float()
        return (y + self.bias.float() if self.bias is not None else y).to(x.dtype)


def stacked_oracle(parts: list[StoredLinear], bias: torch.Tensor | None) -> OracleLinear:
    """One OracleLinear for projections stacked in rows (q/k/v, gate/up), like the engine's."""
    weight = torch.cat([p.weight for p in parts])
    if parts[0].codes is None:
        return OracleLinear(weight, bias)
    codes, scales = torch.cat([p.codes for p in parts]), torch.cat([p.scales for p in parts])
    return OracleLinear(weight, bias, codes, scales)


def oracle_llm(float_path: str, stored: dict[str, StoredLinear]) -> LLM:
    """The float checkpoint in fp32 on the plain paths, every layer of `stored` computing with its
    stored weight (decoder projections by the oracle, a stored lm_head copied into the float head)."""
    llm = LLM(float_path, dtype="float32", cpu_linear="torch", num_gpu_blocks_override=256)
    model = llm.llm_engine.runner.model
    packed = model.packed_modules_mapping
    for i, layer in enumerate(model.model.layers):
        for parent, attr, lin in decoder_linears(layer):
            group = "self_attn" if attr in ("qkv_proj", "o_proj") else "mlp"
            names = packed.get(attr, (attr,))
            parts = [stored[f"model.layers.{i}.{group}.{name}"] for name in names]
            setattr(parent, attr, stacked_oracle(parts, lin.bias))
    if "lm_head" in stored:
        with torch.no_grad():
            model.lm_head.weight.copy_(stored["lm_head"].weight)
    return llm
