"""A quantized .gguf file as a quantized checkpoint: its decoder linears read straight into QuantLinears.

llama.cpp users run a Q4_K_M file at its own size, so nanoserve does too: a .gguf whose decoder linears
are stored in a type with an integer mapping (gguf_quant.py: Q8_0, Q4_0/1, Q5_0/1, Q2_K..Q6_K) is served
with ModelConfig.quantization "gguf", with no flag, through the same path as GPTQ/AWQ/compressed-tensors
(checkpoint_load.py): the planned linears' float weights are never allocated, and each module's blocks
are read (from the memory-mapped file) and put in place one module at a time. Everything else (embedding,
norms, the head, F16/F32 linears) is dequantized into the model dtype as before.

Parts of one stacked projection in different types (Q4_K q/k with a Q6_K v) are brought to a common
form by stack_linears (common_form.py, lossless). A stack with a part stored as floats (F16) cannot be
one QuantLinear: that whole projection is dequantized instead (`complete_stacks`).

With tensor parallelism the sharded layers hold float weights only: the file is dequantized, as before.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from nanoserve.config import EngineArgs, QuantizationConfig, make_quantization_config
from nanoserve.errors import ModelLoadError
from nanoserve.model.quantization.checkpoint_linear import CheckpointLinear
from nanoserve.model.quantization.quantized_weight import QuantizedWeight

logger = logging.getLogger(__name__)

GGUF_FORMAT = "gguf"


class GGUFLinears:
    """checkpoint_load's `qc` for a .gguf file: a quantized linear `<prefix>` is its one stored tensor
    `<prefix>.weight`, read (by GGUFFile.read_quantized) as a QuantizedWeight in HF's row order."""

    def layer_tensors(self, names: Collection[str]) -> dict[str, tuple[str, ...]]:
        return {name.removesuffix(".weight"): (name,) for name in names if name.endswith(".weight")}

    def read_linear(self, prefix: str, tensors: Mapping[str, QuantizedWeight]) -> CheckpointLinear:
        name = f"{prefix}.weight"
        if name not in tensors:
            raise ModelLoadError(f"missing tensor {name!r} of a quantized linear layer")
        return CheckpointLinear(tensors[name], None)  # GGUF columns are in the input's order


def gguf_quantization(
    args: EngineArgs, path: str | Path, hf_config: dict[str, Any]
) -> QuantizationConfig | None:
    """The quantization a .gguf runs with: "gguf" when it stores decoder linears quantized (any other
    --quantization on it is an error: they are quantized already), else args.quantization (an F16 file
    can be quantized at load like any float checkpoint)."""
    from nanoserve.model.gguf_loader import quantized_linear_names

    quantized = quantized_linear_names(path, hf_config)
    requested = args.quantization
    if not quantized:
        if requested == GGUF_FORMAT:
            raise ModelLoadError(f"quantization='gguf' reads quantized GGUF linears, but {Path(path).name} "
                                 "stores its decoder linears as floats (quantize them at load with int8, "
                                 "int4 or w8a8)")
        return make_quantization_config(args)
    if requested not in (None, GGUF_FORMAT):
        raise ModelLoadError(
            f"{Path(path).name} is already quantized (GGUF {', '.join(_types(path, hf_config, quantized))}); "
            f"quantization={requested!r} cannot be applied on top of it: leave quantization unset or pass "
            "'gguf'"
        )
    if args.tensor_parallel_size > 1:
        logger.info("GGUF with tensor_parallel_size %d: the sharded layers hold float weights, so the "
                    "quantized linears are dequantized into %s", args.tensor_parallel_size, args.dtype)
        return None
    return QuantizationConfig(GGUF_FORMAT)


def _types(path: str | Path, hf_config: dict[str, Any], names: list[str]) -> list[str]:
    from nanoserve.model.gguf_loader import GGUFFile

    file = GGUFFile(path, hf_config)
    return sorted({file.tensor_type(n) for n in names})


def complete_stacks(model: nn.Module, layers: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    """`layers` without the parts of a stacked projection (q/k/v, gate/up) that has a part the file
    stores as floats: such a projection loads dequantized as a whole (logged), not refused."""
    packed: dict[str, tuple[str, ...]] = getattr(model, "packed_modules_mapping", {})
    kept = dict(layers)
    for prefix in layers:
        parent, _, name = prefix.rpartition(".")
        stack = next((parts for parts in packed.values() if name in parts), None)
        if stack is None:
            continue
        siblings = [f"{parent}.{p}" for p in stack]
        floats = [s for s in siblings if s not in layers]
        if floats:
            kept.pop(prefix, None)
            logger.info("%s: %s stored as floats in the GGUF, so the stacked projection is dequantized",
                        prefix, ", ".join(floats))
    return kept
