"""Quantize a loaded model's decoder linears in place, one layer at a time, and prepare their kernels.

Only the decoder layers' linears (qkv, o, gate_up, down) are quantized: the embedding and the lm_head
stay in the model dtype (as vLLM's common formats keep them), and so do the norms; with
`quantization_lm_head` the lm_head is quantized too (as llama.cpp's GGUFs do), while a tied embedding
keeps its float weight for the token lookup.
Each FastLinear is replaced by its QuantLinear as soon as it is quantized, so its float weight is freed
before the next one is made: the peak stays at the float model plus one linear's temporaries.
"""

from __future__ import annotations

import torch
from torch import nn

from nanoserve.config import QuantizationConfig
from nanoserve.errors import ModelLoadError
from nanoserve.model.cpu_linear import FastLinear
from nanoserve.model.quantization.methods import get_method
from nanoserve.model.quantization.quant_linear import QuantLinear


def decoder_linears(layer: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute, linear) for every FastLinear or QuantLinear inside one decoder layer."""
    found = []
    for parent in layer.modules():
        for attr, child in parent.named_children():
            if isinstance(child, FastLinear | QuantLinear):
                found.append((parent, attr, child))
    return found


def quantize_model(model: nn.Module, config: QuantizationConfig) -> None:
    """Replace every decoder layer's FastLinear with a QuantLinear of `config.method` (before `prepare`)."""
    method = get_method(config.method)
    if method.quantize is None:
        raise ModelLoadError(
            f"quantization {config.method!r} is a checkpoint format: it is read from a quantized checkpoint, "
            "not applied at load to a float one"
        )
    for layer in model.model.layers:
        for parent, attr, linear in decoder_linears(layer):
            if isinstance(linear, FastLinear):
                setattr(parent, attr, QuantLinear.from_linear(linear, lambda w: method.quantize(w, config)))
        # this layer's float weights go with their modules here, before the next layer is quantized
    if config.lm_head:
        model.lm_head = QuantLinear.from_linear(model.lm_head, lambda w: method.quantize(w, config))


def prepare_quant_linears(model: nn.Module, backend: str, dtype: torch.dtype = torch.bfloat16) -> None:
    """`QuantLinear.prepare(backend, dtype)` for every quantized linear (backend "torch": the reference
    path; the native kernels serve bf16 models only)."""
    for module in model.modules():
        if isinstance(module, QuantLinear):
            module.prepare(backend, dtype)
