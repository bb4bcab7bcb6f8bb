"""compressed-tensors' on-disk layout, written by the compressed-tensors package itself (its min-max
qparams and its compressors): shared by the reader tests and the engine tests. Import it after
`pytest.importorskip("compressed_tensors")`."""

from __future__ import annotations

import torch
from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme, preset_name_to_scheme
from compressed_tensors.quantization.utils import calculate_qparams
from quant_checkpoints import write_checkpoint


def scheme(preset: str, **weight_args) -> QuantizationScheme:
    s = preset_name_to_scheme(preset, ["Linear"])
    s.weights = s.weights.model_copy(update=weight_args)
    return s


def compress(w: torch.Tensor, s: QuantizationScheme, compressor, scale_dtype=torch.bfloat16):
    """The library's min-max qparams and its compressor -> (the module's tensors as saved, the library's
    own dequantization of them)."""
    n, k = w.shape
    gs = s.weights.group_size if s.weights.strategy == "group" else k
    groups = w.reshape(n, k // gs, gs)
    scale, zp = calculate_qparams(groups.amin(-1), groups.amax(-1), s.weights)  # [N, G]
    state = {"weight": w, "weight_scale": scale.to(scale_dtype), "weight_zero_point": zp.to(torch.int8)}
    saved = compressor.compress(state, s)
    return saved, compressor.decompress(saved, s)["weight"]


def ct_quantization_config(schemes: list[QuantizationScheme], fmt: str, ignore=("lm_head",)) -> dict:
    """The quantization_config llm-compressor saves for these config groups."""
    groups = {f"group_{i}": s for i, s in enumerate(schemes)}
    return QuantizationConfig(config_groups=groups, format=fmt, ignore=list(ignore),
                              quantization_status="compressed").model_dump(mode="json")


def write_ct(tmp_path, layers: dict[str, tuple[dict, QuantizationScheme]], fmt: str, ignore=("lm_head",)):
    tensors = {f"{prefix}.{name}": t for prefix, (saved, _) in layers.items() for name, t in saved.items()}
    config = ct_quantization_config([s for _, s in layers.values()], fmt, ignore)
    return write_checkpoint(tmp_path, tensors, config)
