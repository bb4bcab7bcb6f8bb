"""Engine configuration: what the user asks for (EngineArgs) and what the engine resolves it to.

`EngineArgs` carries vLLM's argument names. `LLMEngine.from_engine_args` reads the checkpoint's
config.json into a `ModelConfig`, sizes the KV pool into a `CacheConfig` and fills a
`SchedulerConfig`. This module imports no torch: the scheduler and the simulator use it too.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from nanoserve.errors import InvalidRequestError

logger = logging.getLogger(__name__)

DTYPES = ("auto", "float32", "bfloat16", "float16")
# cpu_linear's paths for bf16 CPU weights; "torch" is plain F.linear (the reference path).
CPU_LINEAR_BACKENDS = ("auto", "torch", "mkldnn", "avx512", "hybrid")
# nanoserve/model/attention's backends; "auto" = cpu_native on CPU when the native kernels load, else torch.
ATTENTION_BACKENDS = ("auto", "torch", "cpu_native")
DEFAULT_MAX_NUM_SEQS = 256
DEFAULT_MAX_NUM_BATCHED_TOKENS = 2048
CPU_KV_FRACTION_OF_AVAILABLE = 0.25
CPU_KV_CAP_BYTES = 4 << 30


@dataclass
class EngineArgs:
    """Every knob of the engine, with vLLM's names and defaults where vLLM has them."""

    model: str
    tokenizer: str | None = None
    dtype: str = "auto"
    seed: int = 0
    max_model_len: int | None = None
    block_size: int = 16
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    kv_cache_memory_bytes: int | None = None
    num_gpu_blocks_override: int | None = None
    device: str = "auto"  # "auto" = cuda when available, else cpu
    gpu_memory_utilization: float = 0.9
    # torch's intra-op threads on CPU (None = torch's default). On a contended machine 1 can be far faster.
    num_cpu_threads: int | None = None
    # How bf16 linears run on CPU (see nanoserve/model/cpu_linear.py); "torch" turns the fast paths off.
    cpu_linear: str = "auto"
    attention_backend: str = field(
        default="auto",
        metadata={
            "help": "paged attention implementation: torch (reference, any device), cpu_native (native C++ "
            "decode kernel, CPU only); auto = cpu_native on CPU when the native kernels are available",
            "choices": ATTENTION_BACKENDS,
        },
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if not self.model:
            raise InvalidRequestError("model must name a checkpoint directory", "model")
        if self.dtype not in DTYPES:
            raise InvalidRequestError(f"dtype must be one of {DTYPES}, got {self.dtype!r}", "dtype")
        if self.block_size < 1 or self.block_size > 1024:
            raise InvalidRequestError(f"block_size must be in [1, 1024], got {self.block_size}", "block_size")
        if self.cpu_linear not in CPU_LINEAR_BACKENDS:
            raise InvalidRequestError(
                f"cpu_linear must be one of {CPU_LINEAR_BACKENDS}, got {self.cpu_linear!r}", "cpu_linear"
            )
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise InvalidRequestError(
                f"attention_backend must be one of {ATTENTION_BACKENDS}, got {self.attention_backend!r}",
                "attention_backend",
            )
        if self.attention_backend == "cpu_native" and self.device.startswith("cuda"):
            raise InvalidRequestError("attention_backend cpu_native runs on CPU only", "attention_backend")
        _check_positive("max_model_len", self.max_model_len)
        _check_positive("max_num_seqs", self.max_num_seqs)
        _check_positive("max_num_batched_tokens", self.max_num_batched_tokens)
        _check_positive("kv_cache_memory_bytes", self.kv_cache_memory_bytes)
        _check_positive("num_gpu_blocks_override", self.num_gpu_blocks_override)
        _check_positive("num_cpu_threads", self.num_cpu_threads)
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise InvalidRequestError(f"device must be auto, cpu or cuda[:N], got {self.device!r}", "device")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise InvalidRequestError(
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}",
                "gpu_memory_utilization",
            )


def _check_positive(name: str, value: int | None) -> None:
    if value is not None and (not isinstance(value, int) or value < 1):
        raise InvalidRequestError(f"{name} must be a positive integer, got {value!r}", name)


@dataclass
class ModelConfig:
    """What the engine needs to know about the checkpoint (from config.json), resolved."""

    model: str
    tokenizer: str
    architecture: str
    hf_config: dict[str, Any]
    dtype: str  # resolved: float32 | bfloat16 | float16
    max_model_len: int
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    eos_token_ids: list[int] = field(default_factory=list)

    @property
    def dtype_bytes(self) -> int:
        return 4 if self.dtype == "float32" else 2

    def kv_bytes_per_token(self) -> int:
        """K and V of every layer for one token, in bytes."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes


@dataclass
class CacheConfig:
    block_size: int
    num_blocks: int
    enable_prefix_caching: bool = True

    @property
    def num_tokens(self) -> int:
        """How many tokens the whole pool holds."""
        return self.block_size * self.num_blocks


@dataclass
class SchedulerConfig:
    max_num_seqs: int = DEFAULT_MAX_NUM_SEQS
    max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS
    max_model_len: int = 4096
    enable_chunked_prefill: bool = True

    def __post_init__(self) -> None:
        _check_positive("max_num_seqs", self.max_num_seqs)
        _check_positive("max_num_batched_tokens", self.max_num_batched_tokens)
        if not self.enable_chunked_prefill and self.max_num_batched_tokens < self.max_model_len:
            # Without chunking a prompt runs whole or not at all: a longer one would wait forever.
            raise InvalidRequestError(
                f"with chunked prefill off, max_num_batched_tokens ({self.max_num_batched_tokens}) must be "
                f">= max_model_len ({self.max_model_len})",
                "max_num_batched_tokens",
            )


def make_scheduler_config(args: EngineArgs, max_model_len: int) -> SchedulerConfig:
    tokens = args.max_num_batched_tokens
    if tokens is None:
        tokens = DEFAULT_MAX_NUM_BATCHED_TOKENS
        if not args.enable_chunked_prefill:
            tokens = max(tokens, max_model_len)
    return SchedulerConfig(
        max_num_seqs=args.max_num_seqs or DEFAULT_MAX_NUM_SEQS,
        max_num_batched_tokens=tokens,
        max_model_len=max_model_len,
        enable_chunked_prefill=args.enable_chunked_prefill,
    )


def available_cpu_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux); a conservative 4 GiB elsewhere."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    if hasattr(os, "sysconf"):
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            pass
    return 4 << 30


def default_cpu_kv_budget_bytes() -> int:
    """On CPU: a quarter of the available RAM, at most 4 GiB."""
    return min(int(available_cpu_memory_bytes() * CPU_KV_FRACTION_OF_AVAILABLE), CPU_KV_CAP_BYTES)


def make_cache_config(
    args: EngineArgs, model_config: ModelConfig, budget_bytes: int, max_num_seqs: int = DEFAULT_MAX_NUM_SEQS
) -> CacheConfig:
    """Size the pool: an exact block count, an explicit byte budget, or the device default.

    The device default is also capped at what max_num_seqs full-length sequences could ever use, so a
    small model does not zero gigabytes it can never fill.
    """
    block_bytes = args.block_size * model_config.kv_bytes_per_token()
    if args.num_gpu_blocks_override is not None:
        num_blocks = args.num_gpu_blocks_override
    elif args.kv_cache_memory_bytes is not None:
        num_blocks = args.kv_cache_memory_bytes // block_bytes
    else:
        per_seq_blocks = -(-model_config.max_model_len // args.block_size)
        num_blocks = min(budget_bytes // block_bytes, max_num_seqs * per_seq_blocks)
    if num_blocks < 1:
        raise InvalidRequestError(
            f"the KV cache budget holds no block of {block_bytes} bytes; raise kv_cache_memory_bytes",
            "kv_cache_memory_bytes",
        )
    logger.info(
        "KV cache: %d blocks x %d tokens = %d tokens, %.1f MiB",
        num_blocks,
        args.block_size,
        num_blocks * args.block_size,
        num_blocks * block_bytes / 2**20,
    )
    return CacheConfig(args.block_size, num_blocks, args.enable_prefix_caching)
