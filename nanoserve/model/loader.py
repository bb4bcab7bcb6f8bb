"""A local Hugging Face directory (or a .gguf file) -> ModelConfig, model with weights, tokenizer.

Reads config.json, the safetensors weights (single file or sharded via model.safetensors.index.json)
and the tokenizer (transformers' AutoTokenizer); a .gguf file goes through model/gguf_loader.py, a
named real model (`nanoserve fetch`) is first resolved to its cached folder (models_cache.py).
Anything we cannot load or honour is a ModelLoadError that names the problem: never a silently wrong model.
A checkpoint with a `quantization_config` (GPTQ, AWQ, compressed-tensors) is recognised with no flag: its
quantized linears are read straight into QuantLinears (model/quantization/checkpoint_load.py); so are a
quantized .gguf file's decoder linears (quantization "gguf", model/quantization/gguf_checkpoint.py).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from nanoserve.config import (
    CHECKPOINT_QUANTIZATION_FORMATS,
    EngineArgs,
    ModelConfig,
    make_quantization_config,
)
from nanoserve.errors import InvalidRequestError, ModelLoadError
from nanoserve.model import gguf_loader
from nanoserve.model.cpu_linear import prepare_linears
from nanoserve.model.layers import SUPPORTED_ROPE_TYPES
from nanoserve.model.llama import DecoderSpec, LlamaForCausalLM
from nanoserve.model.parallel_layers import CheckpointSlice
from nanoserve.model.tied_embedding import share_tied_embedding

logger = logging.getLogger(__name__)

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")
IGNORED_TENSOR_SUFFIXES = ("rotary_emb.inv_freq",)
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def read_hf_config(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir)
    if not path.is_dir():
        raise ModelLoadError(f"model directory not found: {path}")
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ModelLoadError(f"no config.json in {path}")
    try:
        return json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{cfg_file} is not valid JSON: {e}") from e


def rope_parameters(cfg: dict[str, Any]) -> dict[str, Any]:
    """transformers 5 writes `rope_parameters`; older checkpoints `rope_theta` + `rope_scaling`."""
    rope = dict(cfg.get("rope_parameters") or {})
    if not rope:
        rope = dict(cfg.get("rope_scaling") or {})
        rope.setdefault("rope_theta", cfg.get("rope_theta", 10000.0))
    rope_type = rope.get("rope_type") or rope.get("type") or "default"
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ModelLoadError(
            f"unsupported rope_scaling type {rope_type!r}; supported: {SUPPORTED_ROPE_TYPES}"
        )
    rope["rope_type"] = rope_type
    if float(rope.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0)) or 1.0) != 1.0:
        raise ModelLoadError("partial_rotary_factor != 1 is not supported")
    return rope


def _sliding_window(cfg: dict[str, Any], arch: str) -> int | None:
    window = cfg.get("sliding_window")
    if window is None:
        return None
    if arch == "MistralForCausalLM":
        return int(window)
    if cfg.get("use_sliding_window") or "sliding_attention" in (cfg.get("layer_types") or []):
        return int(window)
    return None


def _resolve_dtype(requested: str, cfg: dict[str, Any], device: torch.device) -> str:
    if requested != "auto":
        return requested
    dtype = str(cfg.get("dtype") or cfg.get("torch_dtype") or "float32").replace("torch.", "")
    if dtype not in TORCH_DTYPES:
        raise ModelLoadError(
            f"checkpoint dtype {dtype!r} is not supported; pass dtype=float32|bfloat16|float16"
        )
    if dtype == "float16" and device.type == "cpu":
        logger.info("float16 checkpoint on CPU: computing in float32")
        return "float32"
    return dtype


def _eos_token_ids(model_dir: Path, cfg: dict[str, Any]) -> list[int]:
    ids: list[int] = []
    sources = [cfg.get("eos_token_id")]
    gen = model_dir / "generation_config.json"
    if gen.is_file():
        try:
            sources.append(json.loads(gen.read_text()).get("eos_token_id"))
        except json.JSONDecodeError:
            pass
    for value in sources:
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, int) and v not in ids:
                ids.append(v)
    return ids


def load_model_config(args: EngineArgs) -> ModelConfig:
    from nanoserve.models_cache import resolve_model

    model = resolve_model(args.model)
    if gguf_loader.is_gguf(model):
        cfg = gguf_loader.read_gguf_config(model)
        # Dequantized weights have no dtype of their own: serve them as a converted folder is stored.
        cfg["dtype"] = cfg.get("dtype") or "bfloat16"
    else:
        cfg = read_hf_config(model)
    quantization = make_quantization_config(args)
    if gguf_loader.is_gguf(model):  # quantized linears are read as such ("gguf"), with no flag
        from nanoserve.model.quantization.gguf_checkpoint import gguf_quantization

        quantization = gguf_quantization(args, model, cfg)
    else:  # a bad quantization_config fails here, before anything is built
        from nanoserve.model.quantization.checkpoint_load import checkpoint_quantization

        quantization = checkpoint_quantization(args, cfg)
    archs = cfg.get("architectures") or []
    arch = next((a for a in archs if a in SUPPORTED_ARCHITECTURES), None)
    if arch is None:
        raise ModelLoadError(
            f"unsupported architecture {', '.join(archs) or '(none in config.json)'}; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    rope_parameters(cfg)  # validate early
    device = resolve_device(args.device)
    max_pos = int(cfg.get("max_position_embeddings", 4096))
    window = _sliding_window(cfg, arch)
    if args.max_model_len is not None:
        max_model_len = args.max_model_len
        if max_model_len > max_pos:
            raise InvalidRequestError(
                f"max_model_len {max_model_len} exceeds the model's max_position_embeddings {max_pos}",
                "max_model_len",
            )
        if window is not None and window < max_model_len:
            raise ModelLoadError(
                f"{arch} uses a sliding window of {window} tokens, shorter than max_model_len "
                f"{max_model_len}; sliding-window attention is not supported: pass max_model_len <= {window}"
            )
    else:
        max_model_len = max_pos
        if window is not None and window < max_model_len:
            logger.info(
                "sliding window %d < max_position_embeddings %d: max_model_len = %d", window, max_pos, window
            )
            max_model_len = window
    num_heads = int(cfg["num_attention_heads"])
    hidden = int(cfg["hidden_size"])
    tokenizer = resolve_model(args.tokenizer) if args.tokenizer else model
    return ModelConfig(
        model=str(model),
        tokenizer=str(tokenizer),
        architecture=arch,
        hf_config=cfg,
        dtype=_resolve_dtype(args.dtype, cfg, device),
        max_model_len=max_model_len,
        num_layers=int(cfg["num_hidden_layers"]),
        hidden_size=hidden,
        num_heads=num_heads,
        num_kv_heads=int(cfg.get("num_key_value_heads") or num_heads),
        head_dim=int(cfg.get("head_dim") or hidden // num_heads),
        vocab_size=int(cfg["vocab_size"]),
        eos_token_ids=_eos_token_ids(Path(model), cfg),
        quantization=quantization,
    )


def decoder_spec(mc: ModelConfig) -> DecoderSpec:
    cfg, arch = mc.hf_config, mc.architecture
    attention_bias = bool(cfg.get("attention_bias", False))
    return DecoderSpec(
        vocab_size=mc.vocab_size,
        hidden_size=mc.hidden_size,
        intermediate_size=int(cfg["intermediate_size"]),
        num_layers=mc.num_layers,
        num_heads=mc.num_heads,
        num_kv_heads=mc.num_kv_heads,
        head_dim=mc.head_dim,
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope=rope_parameters(cfg),
        max_positions=mc.max_model_len,
        qkv_bias=True if arch == "Qwen2ForCausalLM" else attention_bias,
        o_bias=attention_bias if arch in ("LlamaForCausalLM", "Qwen3ForCausalLM") else False,
        qk_norm=arch == "Qwen3ForCausalLM",
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        mlp_bias=bool(cfg.get("mlp_bias", False)),
    )


def weight_files(model_dir: str | Path) -> list[Path]:
    path = Path(model_dir)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise ModelLoadError(f"{index} has no valid weight_map: {e}") from e
        files = [path / f for f in dict.fromkeys(weight_map.values())]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ModelLoadError(f"weight shard(s) listed in {index.name} are missing: {', '.join(missing)}")
        return files
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    if list(path.glob("*.bin")):
        raise ModelLoadError(f"only safetensors weights are supported; {path} has only .bin files")
    raise ModelLoadError(f"no weights in {path}: expected model.safetensors or model.safetensors.index.json")


def _materialize(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Give every meta-device parameter uninitialised storage on `device` (the loader fills them).

    Not `Module.to_empty`: its meta-tensor path imports torch's symbolic-shape machinery (sympy),
    seconds of start-up for nothing."""
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if param.is_meta:
                storage = torch.empty(param.shape, dtype=dtype, device=device)
                module._parameters[name] = torch.nn.Parameter(storage, requires_grad=False)


def checkpoint_tensors(model: LlamaForCausalLM) -> dict[str, torch.Tensor]:
    """{checkpoint tensor name: the parameter (or the rows of one) it fills} for every tensor expected.

    A stacked projection (model.packed_modules_mapping: q/k/v -> qkv_proj, gate/up -> gate_up_proj)
    expects one checkpoint tensor per projection, each copied into its rows of the stacked weight/bias.
    """
    return {name: s.target for name, s in checkpoint_slices(model).items()}


def checkpoint_slices(model: LlamaForCausalLM) -> dict[str, CheckpointSlice]:
    """`checkpoint_tensors`, each with the slice of its checkpoint tensor it holds: the whole tensor,
    except in a tensor-parallel shard (parallel_layers.py), whose layers say which rows or columns."""
    slices: dict[str, CheckpointSlice] = {}
    for name, _ in model.named_parameters():
        module_path, _, leaf = name.rpartition(".")
        prefix, _, module_name = module_path.rpartition(".")
        module = model.get_submodule(module_path)
        parts = model.packed_modules_mapping.get(module_name)
        sliced = getattr(module, "checkpoint_slice", None)
        if parts is None:
            if sliced is not None:
                slices[name] = sliced(leaf, None)
            else:
                param = getattr(module, leaf)
                slices[name] = CheckpointSlice(param, tuple(param.shape))
            continue
        for index, part in enumerate(parts):
            if sliced is not None:
                slices[f"{prefix}.{part}.{leaf}"] = sliced(leaf, index)
            else:
                rows = module.shard(leaf, index)  # a view of its rows
                slices[f"{prefix}.{part}.{leaf}"] = CheckpointSlice(rows, tuple(rows.shape))
    return slices


def load_model(
    mc: ModelConfig, device: torch.device, cpu_linear: str = "auto", tp_rank: int = 0, tp_size: int = 1
) -> LlamaForCausalLM:
    """Build the model on `device` in mc.dtype, load its weights (checked by name and shape; q/k/v and
    gate/up straight into their stacked projections), quantize the decoder linears if mc.quantization
    asks (or read them quantized from a GPTQ/AWQ/compressed-tensors checkpoint), then prepare every
    linear's `cpu_linear` path.

    tp_size > 1: rank tp_rank's shard only; each sharded tensor is read as just its slice."""
    if tp_size > 1 and mc.quantization is not None:
        raise ModelLoadError(f"quantization ({mc.quantization.method}) with tensor_parallel_size {tp_size} "
                             "is not supported yet: the sharded layers hold float weights only")
    spec = decoder_spec(mc)
    spec.tp_rank, spec.tp_size = tp_rank, tp_size
    with torch.device("meta"):
        model = LlamaForCausalLM(spec)
    stored = _quantized_checkpoint(mc, model)  # drops the float weights it will fill quantized
    _materialize(model, device, TORCH_DTYPES[mc.dtype])
    if spec.tie_word_embeddings:  # materializing unties; tie again
        model.lm_head.weight = model.model.embed_tokens.weight
    model.model.rotary_emb.build(device)
    expected = checkpoint_slices(model)
    loaded: set[str] = set()
    for file_name, name, shape, read in _checkpoint_items(mc):
        if name.endswith(IGNORED_TENSOR_SUFFIXES):
            continue
        if name == "lm_head.weight" and spec.tie_word_embeddings:
            continue  # tied: the embedding is the head
        if stored is not None and stored.skips(name, expected, read):
            continue  # a quantized layer's tensor: read below, one module at a time
        if name not in expected:
            raise ModelLoadError(f"unexpected tensor {name!r} in {file_name} for {mc.architecture}")
        target = expected[name]
        if shape != target.full_shape:
            raise ModelLoadError(
                f"shape mismatch for {name!r}: checkpoint has {list(shape)}, "
                f"the config implies {list(target.full_shape)}"
            )
        with torch.no_grad():
            if target.ranges is None:
                target.target.copy_(read())  # casts into the model dtype
            else:
                target.target.copy_(torch.cat([read(target.dim, s, n) for s, n in target.ranges], target.dim))
        loaded.add(name)
    if stored is not None:
        loaded |= stored.load_dequantized(expected)
    _zero_vocab_padding(model)
    missing = sorted(set(expected) - loaded)
    if missing:
        raise ModelLoadError(
            f"missing tensor(s) in the checkpoint: {', '.join(missing[:5])}"
            + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        )
    model.eval()
    expected = target = None  # views of the float weights: quantizing frees them layer by layer
    if stored is not None:
        stored.load_quantized(model)
    elif mc.quantization is not None:
        from nanoserve.model.quantization.apply import quantize_model

        quantize_model(model, mc.quantization)
    prepare_linears(model, cpu_linear)
    share_tied_embedding(model)  # a tied head packed for the CPU kernel: the embedding reads that copy
    if mc.quantization is not None:
        from nanoserve.model.quantization.apply import prepare_quant_linears

        prepare_quant_linears(model, cpu_linear, TORCH_DTYPES[mc.dtype])
    return model


def _zero_vocab_padding(model: LlamaForCausalLM) -> None:
    """A sharded vocabulary's padding rows (past the last token id) hold zeros: no token, zero logit."""
    for module in (model.model.embed_tokens, model.lm_head):
        valid = getattr(module, "valid", None)
        if valid is not None and module.weight is not None:
            with torch.no_grad():
                module.weight[valid:].zero_()


# read() the whole tensor, or read(dim, start, length): that run of it along dim (a tensor-parallel shard)
CheckpointItem = tuple[str, str, tuple[int, ...], Callable[..., torch.Tensor]]


class _QuantizedCheckpoint:
    """The quantized layers of a GPTQ/AWQ/compressed-tensors checkpoint, as load_model meets them."""

    def __init__(self, mc: ModelConfig, model: LlamaForCausalLM) -> None:
        from nanoserve.model.quantization.checkpoint_formats import (
            parse_quantization_config,
            quantized_layer_tensors,
        )
        from nanoserve.model.quantization.checkpoint_load import plan_checkpoint_linears

        self.qc = parse_quantization_config(mc.hf_config)
        self.files = _tensor_files(mc)  # every tensor name of every shard -> its file
        self.layers = quantized_layer_tensors(self.qc, self.files)  # {layer prefix: its tensor names}
        self.names = {name for names in self.layers.values() for name in names}
        self.plan = plan_checkpoint_linears(model, self.layers)

    def read(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(str(self.files[name]), framework="pt", device="cpu") as f:
            return f.get_tensor(name)

    def skips(self, name: str, expected: dict[str, torch.Tensor], read: Callable[[], torch.Tensor]) -> bool:
        """Whether the float loader leaves `name` alone: a quantized layer's tensor, or the all-zero bias
        that GPTQ writers store for a layer with none (a non-zero one is unexpected, and an error)."""
        if name in self.names:
            return True
        layer, _, leaf = name.rpartition(".")
        return leaf == "bias" and name not in expected and layer in self.layers and not read().any()

    def load_dequantized(self, expected: dict[str, torch.Tensor]) -> set[str]:
        """Fill the float modules the checkpoint stores quantized (lm_head); their weights' names."""
        from nanoserve.model.quantization.checkpoint_load import dequantized_weight

        done = set()
        for path, prefix in self.plan.dequantized.items():
            target = expected[f"{path}.weight"].target  # the whole tensor: no tensor parallelism here
            weight = dequantized_weight(self.qc, prefix, self.layers, self.read)  # [N, K] float32
            if tuple(weight.shape) != tuple(target.shape):
                raise ModelLoadError(f"shape mismatch for quantized {prefix!r}: checkpoint has "
                                     f"{list(weight.shape)}, the config implies {list(target.shape)}")
            with torch.no_grad():
                target.copy_(weight)
            done.add(f"{path}.weight")
        return done

    def load_quantized(self, model: LlamaForCausalLM) -> None:
        from nanoserve.model.quantization.checkpoint_load import load_checkpoint_linears

        load_checkpoint_linears(model, self.qc, self.plan, self.layers, self.read)


class _GGUFCheckpoint(_QuantizedCheckpoint):
    """The quantized decoder linears of a .gguf file (quantization "gguf"): read from their blocks, one
    module at a time, by the GPTQ/AWQ path's planner and builder (quantization/gguf_checkpoint.py)."""

    def __init__(self, mc: ModelConfig, model: LlamaForCausalLM) -> None:
        from nanoserve.model.quantization.checkpoint_load import plan_checkpoint_linears
        from nanoserve.model.quantization.gguf_checkpoint import GGUFLinears, complete_stacks

        self.qc = GGUFLinears()  # type: ignore[assignment]
        self.file = gguf_loader.GGUFFile(mc.model, mc.hf_config)
        quantized = [name for name in self.file.names() if self.file.keeps_quantized(name)]
        self.layers = complete_stacks(model, self.qc.layer_tensors(quantized))
        self.names = {name for names in self.layers.values() for name in names}
        self.plan = plan_checkpoint_linears(model, self.layers)

    def read(self, name: str) -> Any:  # a QuantizedWeight
        return self.file.read_quantized(name)

    def skips(self, name: str, expected: dict[str, torch.Tensor], read: Callable[[], torch.Tensor]) -> bool:
        return name in self.names


def _quantized_checkpoint(mc: ModelConfig, model: LlamaForCausalLM) -> _QuantizedCheckpoint | None:
    quant = mc.quantization
    if quant is None or quant.method not in CHECKPOINT_QUANTIZATION_FORMATS:
        return None
    if gguf_loader.is_gguf(mc.model):
        return _GGUFCheckpoint(mc, model)
    return _QuantizedCheckpoint(mc, model)


def _tensor_files(mc: ModelConfig) -> dict[str, Path]:
    """{tensor name: its safetensors file} over every shard (headers only: no tensor is read)."""
    from safetensors import safe_open

    files: dict[str, Path] = {}
    for file in weight_files(mc.model):
        with safe_open(str(file), framework="pt", device="cpu") as f:
            files.update(dict.fromkeys(f.keys(), file))
    return files


def _checkpoint_items(mc: ModelConfig) -> Iterator[CheckpointItem]:
    """(file name, tensor name, shape, read the tensor) for every tensor of the checkpoint; a safetensors
    tensor is read only after its name and shape are checked."""
    if gguf_loader.is_gguf(mc.model):
        file_name, gguf_file = Path(mc.model).name, gguf_loader.GGUFFile(mc.model, mc.hf_config)
        for name in gguf_file.names():  # dequantized only when read: a quantized linear never is
            read = lambda *run, n=name: _narrow(gguf_file.read_float(n), run)  # noqa: E731
            yield file_name, name, gguf_file.shape(name), read
        return
    from safetensors import safe_open

    for file in weight_files(mc.model):
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for name in f.keys():
                shape = tuple(f.get_slice(name).get_shape())
                yield file.name, name, shape, lambda *run, f=f, name=name: _read(f, name, run)


def _narrow(tensor: torch.Tensor, run: tuple[int, ...]) -> torch.Tensor:
    return tensor.narrow(*run) if run else tensor


def _read(f: Any, name: str, run: tuple[int, ...]) -> torch.Tensor:
    """The tensor `name` of safetensors file `f`, or only run = (dim, start, length) of it."""
    if not run:
        return f.get_tensor(name)
    dim, start, length = run
    index = (slice(None),) * dim + (slice(start, start + length),)
    return f.get_slice(name)[index]


# tokenizer_config classes that are transformers' generic fast tokenizer: AutoTokenizer would resolve
# them to the same class, after importing the model's config machinery (~4-7 s here) to get there.
_GENERIC_FAST_TOKENIZERS = ("PreTrainedTokenizerFast", "TokenizersBackend")


def load_tokenizer(path: str) -> Any:
    """The checkpoint's tokenizer; the generic fast class is built directly (milliseconds, not seconds)."""
    if gguf_loader.is_gguf(path):
        return gguf_loader.load_gguf_tokenizer(path)
    try:
        config_file = Path(path) / "tokenizer_config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        tokenizer_class = config.get("tokenizer_class")
        if tokenizer_class in _GENERIC_FAST_TOKENIZERS and (Path(path) / "tokenizer.json").is_file():
            from transformers import PreTrainedTokenizerFast

            return PreTrainedTokenizerFast.from_pretrained(path)
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)
    except Exception as e:  # transformers raises many types here
        raise ModelLoadError(f"cannot load a tokenizer from {path}: {e}") from e
