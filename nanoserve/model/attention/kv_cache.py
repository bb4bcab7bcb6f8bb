"""How K and V are stored in the paged pool: in the model's dtype, or quantized (EngineArgs.kv_cache_dtype).

A layer's K (or V) cache is either a plain tensor [KVH, num_blocks, block_size, D] in the model's
dtype (kv_cache_dtype "auto"), or a `QuantizedKV`: 8-bit codes of the same shape plus one float32
scale per (kv head, token), symmetric (code = round(x / scale), x ≈ code * scale). Per token and head,
because a token's K row is written once, whole, and never rewritten: its scale is known at write
time, and an outlier token or head cannot spoil the precision of the others.

- int8: scale = max|x| / 127 over the row, codes in [-127, 127]; error per element <= scale / 2.
- fp8_e4m3: scale = max|x| / 448 (e4m3's largest finite value), codes torch.float8_e4m3fn (3 mantissa bits).

Only this module and the backends' `write_kv` / `gather_kv` look at which kind a cache is; the
backends read the quantized codes directly, dequantizing only the blocks a step gathers (torch) or
each row as it streams past (the native decode kernel).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# kv_cache_dtype -> (code dtype, largest code magnitude); "auto" stores the model's dtype.
QUANTIZED_KV_DTYPES: dict[str, tuple[torch.dtype, float]] = {
    "int8": (torch.int8, 127.0),
    "fp8_e4m3": (torch.float8_e4m3fn, 448.0),
}
SCALE_DTYPE = torch.float32


@dataclass
class QuantizedKV:
    """One layer's K (or V) cache in 8-bit codes with a scale per (kv head, token)."""

    codes: torch.Tensor  # [KVH, num_blocks, block_size, D] int8 or float8_e4m3fn
    scales: torch.Tensor  # [KVH, num_blocks, block_size] float32

    @property
    def shape(self) -> torch.Size:
        return self.codes.shape

    @property
    def max_code(self) -> float:
        return 127.0 if self.codes.dtype == torch.int8 else 448.0


KVStore = torch.Tensor | QuantizedKV  # what Attention.k_cache / v_cache and the backends hold


def quantize_rows(x: torch.Tensor, code_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., D] -> (codes [..., D] in code_dtype, scales [...] float32), one scale per row.

    The native rope_cache_quant kernel computes the same numbers (same float32 operations in the same
    order), so the two write paths store identical codes and scales."""
    max_code = 127.0 if code_dtype == torch.int8 else 448.0
    amax = x.float().abs().amax(dim=-1)  # [...]
    # An all-zero row gets scale 1 (its codes are 0 whatever the scale); the division stays finite.
    amax = torch.where(amax > 0, amax, torch.full_like(amax, max_code))
    scales = amax * (1.0 / max_code)
    inv = max_code / amax  # [...]: a multiply per element instead of a division
    y = (x.float() * inv.unsqueeze(-1)).clamp_(-max_code, max_code)
    if code_dtype == torch.int8:
        return y.round_().to(torch.int8), scales
    return y.to(code_dtype), scales


def dequantize_rows(codes: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """codes [..., D], scales [...] -> values [..., D] in `dtype` (computed in float32, one rounding)."""
    return (codes.float() * scales.unsqueeze(-1)).to(dtype)


def fake_quantize(x: torch.Tensor, kv_cache_dtype: str) -> torch.Tensor:
    """x [..., D] -> what a `kv_cache_dtype` cache gives back for it, in x's dtype (tests' oracle)."""
    codes, scales = quantize_rows(x, QUANTIZED_KV_DTYPES[kv_cache_dtype][0])
    return dequantize_rows(codes, scales, x.dtype)


def allocate_kv_caches(
    num_layers: int,
    num_kv_heads: int,
    num_blocks: int,
    block_size: int,
    head_dim: int,
    dtype: torch.dtype,
    kv_cache_dtype: str,
    device: torch.device,
) -> list[tuple[KVStore, KVStore]]:
    """The whole pool, zeroed once: (k cache, v cache) of each layer, views into one or two tensors."""
    shape = (num_layers, 2, num_kv_heads, num_blocks, block_size, head_dim)
    if kv_cache_dtype == "auto":
        pool = torch.zeros(shape, dtype=dtype, device=device)  # [L, 2, KVH, NB, BS, D]
        return [(pool[i, 0], pool[i, 1]) for i in range(num_layers)]
    code_dtype = QUANTIZED_KV_DTYPES[kv_cache_dtype][0]
    codes = torch.zeros(shape, dtype=code_dtype, device=device)  # [L, 2, KVH, NB, BS, D]
    scales = torch.zeros(shape[:-1], dtype=SCALE_DTYPE, device=device)  # [L, 2, KVH, NB, BS]
    return [
        (QuantizedKV(codes[i, 0], scales[i, 0]), QuantizedKV(codes[i, 1], scales[i, 1]))
        for i in range(num_layers)
    ]


def write_kv(cache: KVStore, x: torch.Tensor, slots: torch.Tensor) -> None:
    """Store x [T, KVH, D] at cache slots [T] (block * block_size + offset), quantizing if the cache is."""
    if isinstance(cache, QuantizedKV):
        kvh, d = cache.codes.shape[0], cache.codes.shape[-1]
        codes, scales = quantize_rows(x.transpose(0, 1), cache.codes.dtype)  # [KVH, T, D], [KVH, T]
        # Through a same-size integer view: index_copy_ has no float8 kernel.
        cache.codes.view(kvh, -1, d).view(torch.uint8).index_copy_(1, slots, codes.view(torch.uint8))
        cache.scales.view(kvh, -1).index_copy_(1, slots, scales)
        return
    kvh, d = cache.shape[0], cache.shape[-1]
    cache.view(kvh, -1, d).index_copy_(1, slots, x.transpose(0, 1))


def gather_kv(cache: KVStore, blocks: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The blocks [...] (any index shape) of every kv head -> [KVH, *blocks.shape, block_size, D] in dtype.

    A quantized cache is dequantized here, only for the gathered blocks."""
    if isinstance(cache, QuantizedKV):
        return dequantize_rows(cache.codes[:, blocks], cache.scales[:, blocks], dtype)
    return cache[:, blocks]
