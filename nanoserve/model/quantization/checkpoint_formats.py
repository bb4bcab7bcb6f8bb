"""Pre-quantized checkpoints, recognised from config.json's `quantization_config` with no flag needed.

    quant_method "gptq"               -> GPTQConfig              (gptq.py: 4/8-bit, act-order, sym or not)
    quant_method "awq"                -> AWQConfig               (awq.py: 4-bit GEMM layout)
    quant_method "compressed-tensors" -> CompressedTensorsConfig (compressed_tensors.py: W4A16, W8A8)

Anything else, or a setting a reader cannot honour (3-bit GPTQ, AWQ GEMV, static activation scales ...),
is a ModelLoadError naming it. How the loader uses this:

    qc = parse_quantization_config(hf_config)            # None: an ordinary float checkpoint
    layers = quantized_layer_tensors(qc, all_tensor_names)  # {"model.layers.0.self_attn.q_proj": (names)}
    linears = read_quantized_linears(qc, tensors_of_those_names)  # {layer prefix: CheckpointLinear}

Every other tensor (norms, embeddings, biases, unquantized layers) loads as in a float checkpoint.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import torch

from nanoserve.errors import ModelLoadError
from nanoserve.model.quantization.awq import AWQConfig
from nanoserve.model.quantization.checkpoint_linear import CheckpointLinear
from nanoserve.model.quantization.compressed_tensors import CompressedTensorsConfig
from nanoserve.model.quantization.gptq import GPTQConfig

CheckpointQuantConfig = GPTQConfig | AWQConfig | CompressedTensorsConfig
CONFIG_CLASSES: dict[str, type[GPTQConfig] | type[AWQConfig] | type[CompressedTensorsConfig]] = {
    "gptq": GPTQConfig,
    "awq": AWQConfig,
    "compressed-tensors": CompressedTensorsConfig,
}


def parse_quantization_config(hf_config: Mapping[str, Any]) -> CheckpointQuantConfig | None:
    """The checkpoint's quantization, validated; None when config.json has no `quantization_config`."""
    qc = hf_config.get("quantization_config")
    if not qc:
        return None
    method = str(qc.get("quant_method", "")).lower().replace("_", "-")
    if method not in CONFIG_CLASSES:
        raise ModelLoadError(
            f"checkpoint quantization quant_method={qc.get('quant_method')!r} is not supported; "
            f"supported: {', '.join(CONFIG_CLASSES)}"
        )
    return CONFIG_CLASSES[method].from_config(qc)


def quantized_layer_tensors(qc: CheckpointQuantConfig, names: Collection[str]) -> dict[str, tuple[str, ...]]:
    """{layer prefix: the names of its tensors} for every quantized linear among a checkpoint's tensor
    `names` (all shards): what the loader hands to read_quantized_linears instead of loading them.

    GPTQ/AWQ: `<prefix>.qweight/.qzeros/.scales(/.g_idx)`; compressed-tensors: `<prefix>.weight_packed/
    .weight_shape/.weight_scale(/.weight_zero_point/.weight_g_idx)` or `<prefix>.weight/.weight_scale
    (/.weight_zero_point)`."""
    return qc.layer_tensors(set(names))


def read_quantized_linear(qc: CheckpointQuantConfig, prefix: str,
                          tensors: Mapping[str, torch.Tensor]) -> CheckpointLinear:
    """One quantized linear `prefix` from `tensors` (a mapping that holds at least that layer's tensors)."""
    return qc.read_linear(prefix, tensors)


def read_quantized_linears(qc: CheckpointQuantConfig,
                           tensors: Mapping[str, torch.Tensor]) -> dict[str, CheckpointLinear]:
    """{layer prefix: CheckpointLinear} for every quantized linear whose tensors are in `tensors`."""
    return {prefix: qc.read_linear(prefix, tensors) for prefix in qc.layer_tensors(set(tensors))}
