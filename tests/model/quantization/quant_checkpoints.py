"""Writing a pre-quantized checkpoint to disk and reading it back the way the loader does."""

from __future__ import annotations

import json
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
