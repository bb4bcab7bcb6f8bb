"""Engine configuration: what the user asks for (EngineArgs) and what the engine resolves it to.

`EngineArgs` carries vLLM's argument names and is the one source of the engine's command-line flags
(`add_cli_args` / `from_cli_args`, used by serve, generate and bench). `LLMEngine.from_engine_args`
reads the checkpoint's config.json into a `ModelConfig`, sizes the KV pool into a `CacheConfig` and
fills a `SchedulerConfig`. This module imports no torch: the scheduler and the simulator use it too.
"""

from __future__ import annotations

import argparse
import logging
import os
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from nanoserve.errors import InvalidRequestError

logger = logging.getLogger(__name__)

DTYPES = ("auto", "float32", "bfloat16", "float16")
# cpu_linear's paths for bf16 CPU weights; "torch" is plain F.linear (the reference path).
CPU_LINEAR_BACKENDS = ("auto", "torch", "mkldnn", "avx512", "hybrid")
# nanoserve/model/attention's backends; "auto" = cpu_native on CPU when the native kernels load, triton on
# CUDA when triton is installed, else torch.
ATTENTION_BACKENDS = ("auto", "torch", "cpu_native", "triton")
# Methods quantized at load from a float checkpoint (nanoserve/model/quantization/methods.py).
QUANTIZATION_METHODS = ("int8", "int4", "w8a8")
# How the KV cache stores K and V (nanoserve/model/attention/kv_cache.py): auto = the model's dtype; int8 and
# fp8_e4m3 = one byte per element plus a float32 scale per (token, kv head) for K and for V.
KV_CACHE_DTYPES = ("auto", "int8", "fp8_e4m3")
KV_SCALE_BYTES = 4
# Pre-quantized checkpoint formats, recognised from config.json's quantization_config (gguf: from a .gguf
# file's quantized decoder linears, model/quantization/gguf_checkpoint.py) with no flag; naming
# one with --quantization only checks that the checkpoint is in it (model/quantization/checkpoint_formats.py).
CHECKPOINT_QUANTIZATION_FORMATS = ("gptq", "awq", "compressed-tensors", "gguf")
DEFAULT_MAX_NUM_SEQS = 256
DEFAULT_MAX_NUM_BATCHED_TOKENS = 2048
CPU_KV_FRACTION_OF_AVAILABLE = 0.25
CPU_KV_CAP_BYTES = 4 << 30


@dataclass
class EngineArgs:
    """Every knob of the engine, with vLLM's names and defaults where vLLM has them.

    Each field is also a command-line flag (`add_cli_args`): `--` + the name with `-` for `_`, its help
    and choices from the field's metadata. A new field needs nothing else to reach every command.
    """

    model: str = field(
        metadata={"help": "Hugging Face checkpoint directory (default: the bundled demo model, or "
                  "$NANOSERVE_MODEL)"}
    )
    tokenizer: str | None = field(
        default=None, metadata={"help": "tokenizer directory (default: the model's)"}
    )
    dtype: str = field(
        default="auto",
        metadata={"help": "weights and activations; auto = the checkpoint's (float16 ones run in "
                  "float32 on CPU)",
                  "choices": DTYPES},
    )
    seed: int = field(
        default=0, metadata={"help": "seeds the engine's random generator (for requests without a seed)"}
    )
    max_model_len: int | None = field(
        default=None, metadata={"help": "context length in tokens (default: the checkpoint's)"}
    )
    block_size: int = field(default=16, metadata={"help": "tokens per KV-cache block"})
    max_num_seqs: int | None = field(
        default=None, metadata={"help": f"sequences per step (default: {DEFAULT_MAX_NUM_SEQS})"}
    )
    max_num_batched_tokens: int | None = field(
        default=None,
        metadata={"help": f"tokens per step (default: {DEFAULT_MAX_NUM_BATCHED_TOKENS}, or max-model-len "
                  "without chunked prefill)"},
    )
    enable_prefix_caching: bool = field(
        default=True, metadata={"help": "reuse the KV blocks of prompt prefixes seen before"}
    )
    enable_chunked_prefill: bool = field(
        default=True, metadata={"help": "split long prompts over several steps, beside the decodes"}
    )
    kv_cache_memory_bytes: int | None = field(
        default=None,
        metadata={"help": "KV-cache budget in bytes (default: from gpu-memory-utilization on GPU; on CPU "
                  "a quarter of the available RAM, at most 4 GiB)"},
    )
    num_gpu_blocks_override: int | None = field(
        default=None, metadata={"help": "exact number of KV-cache blocks, overriding every budget"}
    )
    device: str = field(
        default="auto", metadata={"help": "auto (cuda when available, else cpu), cpu or cuda[:N]"}
    )
    gpu_memory_utilization: float = field(
        default=0.9, metadata={"help": "share of the free GPU memory (less 1 GiB) the KV cache takes"}
    )
    # On a contended machine 1 thread can be far faster than torch's default.
    num_cpu_threads: int | None = field(
        default=None, metadata={"help": "torch's intra-op threads on CPU (default: torch's choice)"}
    )
    # See nanoserve/model/cpu_linear.py for the paths.
    cpu_linear: str = field(
        default="auto",
        metadata={"help": "how bf16 linears run on CPU; torch = plain F.linear, the fast paths off",
                  "choices": CPU_LINEAR_BACKENDS},
    )
    attention_backend: str = field(
        default="auto",
        metadata={
            "help": "paged attention implementation: torch (reference, any device), cpu_native (native C++ "
            "decode kernel, CPU only), triton (Triton paged decode and prefill kernels, CUDA; needs the "
            "triton package); auto = cpu_native on CPU when the native kernels are available, triton on "
            "CUDA when triton is installed, else torch",
            "choices": ATTENTION_BACKENDS,
        },
    )
    quantization: str | None = field(
        default=None,
        metadata={"help": "quantize the decoder's linear layers at load: int8 (weights per channel), int4 "
                  "(weights per group), w8a8 (int8 weights and per-token int8 activations); the "
                  "embedding and lm_head stay in the model dtype. GPTQ, AWQ, compressed-tensors and "
                  "quantized GGUF checkpoints are recognised without it (naming their format here is "
                  "allowed)",
                  "choices": (None, *QUANTIZATION_METHODS, *CHECKPOINT_QUANTIZATION_FORMATS)},
    )
    quantization_group_size: int = field(
        default=128, metadata={"help": "int4: input columns per scale (the last group may be shorter)"}
    )
    quantization_zero_point: bool = field(
        default=False, metadata={"help": "int4: asymmetric, with a zero point per group (default symmetric)"}
    )
    # A dict from Python, a JSON object on the command line; see nanoserve/engine/spec_decode/config.py.
    speculative_config: dict | str | None = field(
        default=None,
        metadata={"help": 'speculative decoding, as JSON: {"method": "ngram", "num_speculative_tokens": 3, '
                  '"prompt_lookup_max": 4, "prompt_lookup_min": 1} or {"method": "draft_model", '
                  '"model": DIR, "num_speculative_tokens": 3} (default: off)',
                  "flag_type": str},
    )
    kv_cache_dtype: str = field(
        default="auto",
        metadata={
            "help": "KV-cache storage: auto = the model's dtype; int8 or fp8_e4m3 = 8-bit codes with a "
            "float32 scale per token and kv head (about 2x the tokens of bf16 in the same memory)",
            "choices": KV_CACHE_DTYPES,
        },
    )
    tensor_parallel_size: int = field(
        default=1,
        metadata={"help": "processes (GPUs on CUDA) the model is sharded over, Megatron-style; on CPU "
                  "num-cpu-threads is per rank and defaults to the cores split evenly",
                  "aliases": ("-tp",)},
    )
    # Across machines (torchrun's names): every node runs the same command with its own --node-rank;
    # node 0 runs the engine, the others only their workers (tensor_parallel_size / nnodes ranks each).
    nnodes: int = field(default=1, metadata={"help": "machines the tensor-parallel ranks span"})
    node_rank: int = field(default=0, metadata={"help": "this machine's index among nnodes (0: the engine)"})
    master_addr: str = field(
        default="127.0.0.1", metadata={"help": "address of node 0, where the ranks meet (env:// rendezvous)"}
    )
    master_port: int | None = field(
        default=None,
        metadata={"help": "port of the rendezvous on node 0 (default: a free one, one node only)"},
    )
    # `nanoserve serve` only (nanoserve/engine/data_parallel.py); vLLM's name, also -dp.
    data_parallel_size: int = field(
        default=1,
        metadata={"help": "engine replicas behind one server, each in its own process, requests routed "
                  "to the least loaded (with prefix-cache affinity); CPU threads are split between them",
                  "aliases": ("-dp",)},
    )
    quantization_lm_head: bool = field(
        default=False,
        metadata={"help": "with quantization int8|int4|w8a8, quantize the lm_head too (as llama.cpp's GGUFs "
                  "do; a tied embedding keeps its float copy for the token lookup): on large vocabularies "
                  "the lm_head is a third of a small model's bytes per decoded token"},
    )
    # CUDA graphs for decode steps (nanoserve/engine/cuda_graph.py); vLLM's names. CPU runs are always eager.
    enforce_eager: bool = field(
        default=False, metadata={"help": "on CUDA, run every step eagerly (no CUDA graphs for decode steps)"}
    )
    max_seq_len_to_capture: int = field(
        default=8192,
        metadata={"help": "the longest context a CUDA-graph decode step serves; longer ones run eagerly"}
    )

    @classmethod
    def add_cli_args(
        cls, parser: argparse.ArgumentParser, *, positional_model: bool = False
    ) -> argparse._ArgumentGroup:
        """Add one flag per field to an "engine" argument group of `parser`; returns the group.

        `--model` is always there; `positional_model` also takes it as an optional first positional
        (`nanoserve serve [MODEL]`, as `vllm serve`). Giving both with different values is an error.
        """
        group = parser.add_argument_group("engine", "engine arguments (EngineArgs' fields)")
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            help_text = f.metadata.get("help")
            if f.name == "model":
                if positional_model:
                    group.add_argument(
                        "model", nargs="?", default=None, metavar="MODEL", action=_ModelAction,
                        help="same as --model",
                    )
                group.add_argument("--model", default=None, action=_ModelAction, help=help_text)
                continue
            default = f.default_factory() if f.default_factory is not MISSING else f.default
            kwargs = _flag_kwargs(f.name, hints[f.name], default, f.metadata)
            flags = (*f.metadata.get("aliases", ()), "--" + f.name.replace("_", "-"))
            action = group.add_argument(*flags, help=help_text, **kwargs)
            if action.default is not None and action.help and "%(default)" not in action.help:
                action.help += " (default: %(default)s)"
        return group

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace, **overrides: Any) -> EngineArgs:
        """The EngineArgs a namespace parsed by `add_cli_args` asks for; `overrides` win over it.

        A missing model means the bundled demo model.
        """
        values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
        values.update(overrides)
        if values.get("model") is None:
            from nanoserve.demo import default_model

            values["model"] = default_model()
        return cls(**values)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if not self.model:
            raise InvalidRequestError("model must name a checkpoint directory", "model")
        # The choices the flags offer (field metadata) bind the Python API too.
        for f in fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices is not None and value not in choices:
                raise InvalidRequestError(f"{f.name} must be one of {choices}, got {value!r}", f.name)
        if self.block_size < 1 or self.block_size > 1024:
            raise InvalidRequestError(f"block_size must be in [1, 1024], got {self.block_size}", "block_size")
        if self.attention_backend == "cpu_native" and self.device.startswith("cuda"):
            raise InvalidRequestError("attention_backend cpu_native runs on CPU only", "attention_backend")
        _check_positive("max_model_len", self.max_model_len)
        _check_positive("max_num_seqs", self.max_num_seqs)
        _check_positive("max_num_batched_tokens", self.max_num_batched_tokens)
        _check_positive("kv_cache_memory_bytes", self.kv_cache_memory_bytes)
        _check_positive("num_gpu_blocks_override", self.num_gpu_blocks_override)
        _check_positive("num_cpu_threads", self.num_cpu_threads)
        _check_positive("tensor_parallel_size", self.tensor_parallel_size)
        _check_positive("nnodes", self.nnodes)
        if self.tensor_parallel_size % self.nnodes:
            raise InvalidRequestError(
                f"tensor_parallel_size {self.tensor_parallel_size} must be a multiple of nnodes "
                f"{self.nnodes}",
                "nnodes",
            )
        if not 0 <= self.node_rank < self.nnodes:
            raise InvalidRequestError(
                f"node_rank must be in [0, {self.nnodes}), got {self.node_rank}", "node_rank"
            )
        if self.nnodes > 1 and self.master_port is None:
            raise InvalidRequestError("nnodes > 1 needs master_port (the same on every node)", "master_port")
        _check_positive("data_parallel_size", self.data_parallel_size)
        _check_positive("max_seq_len_to_capture", self.max_seq_len_to_capture)
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise InvalidRequestError(f"device must be auto, cpu or cuda[:N], got {self.device!r}", "device")
        _check_positive("quantization_group_size", self.quantization_group_size)
        int4_knobs = self.quantization_zero_point or self.quantization_group_size != 128
        if self.quantization != "int4" and int4_knobs:
            raise InvalidRequestError(
                "quantization_group_size and quantization_zero_point apply to quantization=int4 only "
                f"(got quantization={self.quantization!r}; int8 and w8a8 are symmetric per output channel)",
                "quantization",
            )
        if self.quantization_lm_head and self.quantization not in QUANTIZATION_METHODS:
            raise InvalidRequestError(
                f"quantization_lm_head needs quantization in {QUANTIZATION_METHODS} (got "
                f"{self.quantization!r}: a quantized checkpoint says itself whether its lm_head is "
                "quantized)",
                "quantization_lm_head",
            )
        from nanoserve.engine.spec_decode.config import parse_speculative_config

        parse_speculative_config(self.speculative_config)  # raises with the reason
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise InvalidRequestError(
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}",
                "gpu_memory_utilization",
            )


def engine_arg_names() -> frozenset[str]:
    """The keyword arguments EngineArgs (and LLM) accept."""
    return frozenset(f.name for f in fields(EngineArgs))


def _flag_kwargs(name: str, hint: Any, default: Any, metadata: Any) -> dict[str, Any]:
    """argparse keywords for one field: type (X of `X | None`), default, choices or a bool's --no- form."""
    if default is MISSING:
        raise TypeError(f"EngineArgs.{name} needs a default to become a flag")
    base = metadata.get("flag_type", hint)  # a field of several types names the one its flag parses
    if typing.get_origin(base) in (types.UnionType, typing.Union):
        # X | None: the flag takes an X, and leaving it out keeps the field's default (None).
        non_none = [a for a in typing.get_args(base) if a is not type(None)]
        if len(non_none) == 1:
            base = non_none[0]
    choices = metadata.get("choices")
    if typing.get_origin(base) is typing.Literal:
        choices = choices or typing.get_args(base)
        base = type(typing.get_args(base)[0])
    if base is bool:
        return {"action": argparse.BooleanOptionalAction, "default": default}
    if base not in (int, float, str):
        raise TypeError(f"EngineArgs.{name}: no flag for type {hint!r}; use int, float, str or bool")
    kwargs: dict[str, Any] = {"type": base, "default": default}
    if choices is not None:
        kwargs["choices"] = tuple(choices)
    return kwargs


class _ModelAction(argparse.Action):
    """Stores the model from `--model` or the positional MODEL; both with different values is an error."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if values is None:  # the optional positional, absent
            return
        given = getattr(namespace, self.dest, None)
        if given is not None and given != values:
            parser.error(f"the model is given twice: {given!r} and {values!r}")
        setattr(namespace, self.dest, values)


def _check_positive(name: str, value: int | None) -> None:
    if value is not None and (not isinstance(value, int) or value < 1):
        raise InvalidRequestError(f"{name} must be a positive integer, got {value!r}", name)


@dataclass
class QuantizationConfig:
    """How the model's decoder linears are quantized: a method of model/quantization/methods.py's
    registry (quantized at load, or read from a quantized checkpoint) and its knobs."""

    method: str
    group_size: int = 128  # int4: input columns per scale
    zero_point: bool = False  # int4: asymmetric, a zero code per group
    lm_head: bool = False  # quantize the lm_head too (methods quantized at load only)


def make_quantization_config(args: EngineArgs) -> QuantizationConfig | None:
    if args.quantization is None:
        return None
    return QuantizationConfig(args.quantization, args.quantization_group_size, args.quantization_zero_point,
                              args.quantization_lm_head)


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
    quantization: QuantizationConfig | None = None  # None: every weight in `dtype`

    @property
    def dtype_bytes(self) -> int:
        return 4 if self.dtype == "float32" else 2

    def kv_bytes_per_token(self, kv_cache_dtype: str = "auto") -> int:
        """K and V of every layer for one token, in bytes, as the pool stores them (EngineArgs.kv_cache_dtype:
        8-bit codes add a KV_SCALE_BYTES scale per kv head)."""
        if kv_cache_dtype == "auto":
            per_head = self.head_dim * self.dtype_bytes
        else:
            per_head = self.head_dim + KV_SCALE_BYTES
        return 2 * self.num_layers * self.num_kv_heads * per_head


@dataclass
class CacheConfig:
    block_size: int
    num_blocks: int
    enable_prefix_caching: bool = True
    cache_dtype: str = "auto"  # EngineArgs.kv_cache_dtype

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
    block_bytes = args.block_size * model_config.kv_bytes_per_token(args.kv_cache_dtype)
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
        "KV cache: %d blocks x %d tokens = %d tokens, %.1f MiB (%s)",
        num_blocks,
        args.block_size,
        num_blocks * args.block_size,
        num_blocks * block_bytes / 2**20,
        args.kv_cache_dtype,
    )
    return CacheConfig(args.block_size, num_blocks, args.enable_prefix_caching, args.kv_cache_dtype)
