"""Loading a pre-quantized checkpoint (GPTQ, AWQ, compressed-tensors) into the model: the loader's side.

The loader (model/loader.py) asks three things of this module:

1. `checkpoint_quantization(args, hf_config)`: which quantization the engine runs. A checkpoint whose
   config.json has a `quantization_config` is served in its own format with no flag (as vLLM does);
   `--quantization <that format>` is accepted, any other method on it is an error (a quantized
   checkpoint cannot be quantized again), and a format named for a float checkpoint is an error too.
2. `plan_checkpoint_linears(model, layers)`: which of the model's linears the checkpoint holds quantized
   (`layers` from `quantized_layer_tensors`). Stacked projections (q/k/v -> qkv_proj, gate/up ->
   gate_up_proj) must be quantized all or none. The decoder linears are planned as QuantLinears and
   their float weight is dropped while the model is still on the meta device, so it is never allocated:
   no float copy of the quantized weights exists at any point. A quantized lm_head (GPTQModel's
   `lm_head: true`) is dequantized into the float head instead (the head stays in the model dtype, as
   for the other methods); tied to the embedding, it is refused.
3. `load_checkpoint_linears(model, qc, plan, layers, read)`: after the float tensors are in, read each
   planned module's tensors (one module at a time: the peak is one module's packed tensors), build its
   QuantizedWeight (stacked when packed) and put a QuantLinear in its place, bias and act-order kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from nanoserve.config import (
    CHECKPOINT_QUANTIZATION_FORMATS,
    EngineArgs,
    QuantizationConfig,
    make_quantization_config,
)
from nanoserve.errors import ModelLoadError
from nanoserve.model.cpu_linear import FastLinear
from nanoserve.model.quantization.checkpoint_formats import (
    CONFIG_CLASSES,
    CheckpointQuantConfig,
    parse_quantization_config,
    read_quantized_linear,
)
from nanoserve.model.quantization.checkpoint_linear import stack_linears
from nanoserve.model.quantization.quant_linear import QuantLinear


def checkpoint_format(qc: CheckpointQuantConfig) -> str:
    """"gptq", "awq" or "compressed-tensors": the name of qc's format (and of its QuantMethod)."""
    return next(name for name, cls in CONFIG_CLASSES.items() if isinstance(qc, cls))


def checkpoint_quantization(args: EngineArgs, hf_config: dict[str, Any]) -> QuantizationConfig | None:
    """The quantization to run: the checkpoint's own format, or args.quantization on a float checkpoint."""
    qc = parse_quantization_config(hf_config)  # a bad or unsupported quantization_config raises here
    requested = args.quantization
    if qc is None:
        if requested in CHECKPOINT_QUANTIZATION_FORMATS:
            raise ModelLoadError(
                f"quantization={requested!r} reads a {requested} checkpoint, but config.json has no "
                "quantization_config: this is a float checkpoint (quantize it at load with int8, int4 or "
                "w8a8)"
            )
        return make_quantization_config(args)
    fmt = checkpoint_format(qc)
    if requested not in (None, fmt):
        raise ModelLoadError(
            f"this checkpoint is already quantized ({fmt}, from config.json's quantization_config); "
            f"quantization={requested!r} cannot be applied on top of it: leave quantization unset "
            f"or pass {fmt!r}"
        )
    return QuantizationConfig(fmt)


@dataclass
class CheckpointLinearPlan:
    """Which linears a quantized checkpoint fills, by module path -> its layer prefixes in row order."""

    quantized: dict[str, list[str]] = field(default_factory=dict)  # become QuantLinears
    dequantized: dict[str, str] = field(default_factory=dict)  # float module path -> layer (the lm_head)

    def layer_prefixes(self) -> list[str]:
        return [p for prefixes in self.quantized.values() for p in prefixes] + list(self.dequantized.values())


def plan_checkpoint_linears(model: nn.Module, layers: dict[str, tuple[str, ...]]) -> CheckpointLinearPlan:
    """Match the checkpoint's quantized layers to the model's linears, and drop the float weight of each
    decoder linear that will be quantized (call on the meta-device model, before it is materialized)."""
    packed = getattr(model, "packed_modules_mapping", {})
    plan = CheckpointLinearPlan()
    for path, module in model.named_modules():
        if not isinstance(module, FastLinear):
            continue
        parent, _, name = path.rpartition(".")
        parts = [f"{parent}.{p}" if parent else p for p in packed.get(name, ())] or [path]
        stored = [p for p in parts if p in layers]
        if not stored:
            continue
        if len(stored) != len(parts):
            floats = [p for p in parts if p not in layers]
            raise ModelLoadError(
                f"{path}: the checkpoint quantizes {', '.join(stored)} but not {', '.join(floats)}; "
                "projections stacked into one linear must be quantized alike"
            )
        if path.startswith("model.layers."):
            plan.quantized[path] = parts
            module.weight = None  # never allocated: the QuantLinear replaces the module
        elif path == "lm_head":
            if module.weight is model.get_submodule("model.embed_tokens").weight:
                raise ModelLoadError(
                    "the checkpoint quantizes lm_head but the model ties it to the embedding "
                    "(tie_word_embeddings); a quantized tied head is not supported"
                )
            plan.dequantized[path] = parts[0]
        else:
            raise ModelLoadError(
                f"{path} is quantized in the checkpoint; only decoder linears and lm_head can be"
            )
    unknown = sorted(set(layers) - set(plan.layer_prefixes()))
    if unknown:
        raise ModelLoadError(
            f"quantized layer(s) the model has no linear for: {', '.join(unknown[:5])}"
            + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        )
    return plan


def load_checkpoint_linears(
    model: nn.Module, qc: CheckpointQuantConfig, plan: CheckpointLinearPlan,
    layers: dict[str, tuple[str, ...]], read: Callable[[str], torch.Tensor],
) -> None:
    """Replace every planned decoder linear with a QuantLinear read from the checkpoint, one module at a
    time (`read(name)` loads one stored tensor); the float biases must be loaded already."""
    for path, prefixes in plan.quantized.items():
        module = model.get_submodule(path)
        tensors = {name: read(name) for prefix in prefixes for name in layers[prefix]}
        parts = [read_quantized_linear(qc, prefix, tensors) for prefix in prefixes]
        linear = parts[0] if len(parts) == 1 else stack_linears(parts, path)
        if linear.weight.shape != (module.out_features, module.in_features):
            raise ModelLoadError(
                f"shape mismatch for {path}: the checkpoint's quantized {' + '.join(prefixes)} hold "
                f"{list(linear.weight.shape)}, the config implies {[module.out_features, module.in_features]}"
            )
        bias = module.bias.detach() if module.bias is not None else None
        try:
            quantized = QuantLinear.from_quantized(
                linear.weight, bias, module.output_sizes, linear.input_perm
            )
        except ValueError as e:  # e.g. W8A8 with asymmetric weights: no kernel or reference computes it
            raise ModelLoadError(f"{path}: {e}") from e
        parent, _, attr = path.rpartition(".")
        setattr(model.get_submodule(parent), attr, quantized)
        del tensors, parts, linear  # this module's packed tensors go before the next module's are read


def dequantized_weight(qc: CheckpointQuantConfig, prefix: str, layers: dict[str, tuple[str, ...]],
                       read: Callable[[str], torch.Tensor]) -> torch.Tensor:
    """[N, K] float32 weight of a quantized layer loaded as float (the lm_head), in the input's order."""
    tensors = {name: read(name) for name in layers[prefix]}
    return read_quantized_linear(qc, prefix, tensors).dequantize()
