"""Writing a pre-quantized checkpoint to disk and reading it back the way the loader does."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from nanoserve.model.quantization.checkpoint_formats import CheckpointQuantConfig, parse_quantization_config


def write_checkpoint(path: Path, tensors: dict[str, torch.Tensor], quantization_config: dict) -> Path:
    """model.safetensors + a config.json carrying `quantization_config`, as a quantizer saves them."""
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "model.safetensors"))
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "float16",
              "quantization_config": quantization_config}
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return path


def read_checkpoint(path: Path) -> tuple[CheckpointQuantConfig, dict[str, torch.Tensor]]:
    """The parsed quantization config and every tensor, from the files alone."""
    qc = parse_quantization_config(json.loads((path / "config.json").read_text()))
    assert qc is not None
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    return qc, tensors


def random_weight(n: int, k: int, seed: int) -> torch.Tensor:
    """[N, K] float32 with a few outlier columns, like a trained projection."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.02
    w[:, torch.randint(0, k, (max(1, k // 32),), generator=g)] *= 8
    return w


DECODER_PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                       "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


@dataclass
class StoredLinear:
    """What a quantized layer computes by its format's own dequantization: the oracle's weight."""

    weight: torch.Tensor  # [N, K] float32, in the checkpoint's (original) column order
    codes: torch.Tensor | None = None  # W8A8: [N, K] int8 weight codes, activations quantized per token
    scales: torch.Tensor | None = None  # W8A8: [N] float32 per output channel


# (layer prefix, float weight [N, K]) -> (the layer's tensors as the format saves them, the oracle)
LayerQuantizer = Callable[[str, torch.Tensor], tuple[dict[str, torch.Tensor], StoredLinear]]


def is_decoder_projection(prefix: str) -> bool:
    return prefix.startswith("model.layers.") and prefix.split(".", 3)[3] in DECODER_PROJECTIONS


def write_quantized_model(src: Path, out: Path, quantize: LayerQuantizer, quantization_config: dict,
                          also: tuple[str, ...] = ()) -> dict[str, StoredLinear]:
    """A float checkpoint folder `src` -> a quantized one in `out`: every decoder projection (and the
    layers in `also`, e.g. "lm_head") replaced by `quantize`'s tensors, everything else (embeddings,
    norms, biases, tokenizer files) as it was, config.json with `quantization_config`. -> {prefix: oracle}."""
    out.mkdir(parents=True, exist_ok=True)
    for file in src.iterdir():
        if file.is_file() and file.suffix != ".safetensors" and file.name != "config.json":
            shutil.copy(file, out / file.name)
    tensors: dict[str, torch.Tensor] = {}
    stored: dict[str, StoredLinear] = {}
    with safe_open(str(src / "model.safetensors"), framework="pt") as f:
        for name in f.keys():
            prefix, _, leaf = name.rpartition(".")
            if leaf == "weight" and (is_decoder_projection(prefix) or prefix in also):
                saved, stored[prefix] = quantize(prefix, f.get_tensor(name).float())
                tensors.update({f"{prefix}.{k}": v for k, v in saved.items()})
            else:
                tensors[name] = f.get_tensor(name)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "model.safetensors"))
    config = json.loads((src / "config.json").read_text())
    config["quantization_config"] = quantization_config
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return stored
