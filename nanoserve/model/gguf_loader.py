"""A .gguf file (llama.cpp's format) as `--model`: its config, tokenizer and weights.

Config and tokenizer (with the chat template GGUF carries) come from transformers' GGUF support; the
weights are read with the `gguf` package's reader and dequantized (gguf.quants.dequantize) into the
model dtype (`gguf_tensors`). `gguf_weights` instead keeps the decoder linears' quantized blocks as
our own integer format (QuantizedWeight, read by quantization/gguf_quant.py: Q8_0, Q4_0/1, Q5_0/1,
Q2_K..Q6_K) and dequantizes only the rest (embedding, norms, the head, F32/F16/BF16 linears).
Both read through `GGUFFile`, which opens the file once and reads each tensor only when asked; the loader
uses it to read a quantized GGUF's decoder linears into QuantLinears (ModelConfig.quantization "gguf",
quantization/gguf_checkpoint.py) and everything else as floats.

llama.cpp's converter permutes the rows of Llama's q_proj/k_proj (from HF's rotate-half rotary layout
to interleaved pairs); `unpermute_qk` undoes it, as transformers' GGUF loader does.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nanoserve.errors import ModelLoadError
from nanoserve.model.quantization.gguf_quant import READERS, permute_rows, read_gguf_linear
from nanoserve.model.quantization.quantized_weight import QuantizedWeight

# GGUF general.architecture / transformers' model_type → our architecture name
ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
# Architectures whose q/k rows llama.cpp's converter permuted (the others keep HF's layout).
PERMUTED_QK = ("llama", "mistral")
# Decoder linears `gguf_weights` keeps quantized (lm_head and the embedding stay in the model dtype).
QUANTIZED_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SUPPORTED_TENSOR_TYPES = (
    "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
)

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_LAYER_TENSOR = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


def is_gguf(path: str | Path) -> bool:
    return str(path).endswith(".gguf")


def architecture_of(model_type: str) -> str:
    if model_type not in ARCHITECTURES:
        raise ModelLoadError(
            f"unsupported GGUF architecture {model_type!r}; supported: {', '.join(ARCHITECTURES)}"
        )
    return ARCHITECTURES[model_type]


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise ModelLoadError(f"GGUF file not found: {path}")
    try:
        import gguf  # noqa: F401
    except ImportError as e:
        raise ModelLoadError("loading a .gguf file needs the `gguf` package: pip install gguf") from e


def read_gguf_config(path: str | Path) -> dict[str, Any]:
    """The Hugging Face config.json a GGUF file's metadata implies, with `architectures` filled in."""
    path = Path(path)
    _check_file(path)
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    except ValueError as e:  # transformers: unsupported architecture or malformed file
        raise ModelLoadError(f"cannot read the GGUF config of {path}: {e}") from e
    cfg = config.to_dict()
    cfg["architectures"] = [architecture_of(cfg.get("model_type", "?"))]
    return cfg


def load_gguf_tokenizer(path: str | Path) -> Any:
    path = Path(path)
    _check_file(path)
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as e:  # transformers raises many types here
        raise ModelLoadError(f"cannot load the tokenizer of {path}: {e}") from e


def hf_name(gguf_name: str) -> str | None:
    """The Hugging Face tensor name of a GGUF tensor (None for one we do not know)."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    match = _LAYER_TENSOR.fullmatch(gguf_name)
    if match is None or match.group(2) not in _LAYER_NAMES:
        return None
    layer, part, leaf = match.groups()
    return f"model.layers.{layer}.{_LAYER_NAMES[part]}.{leaf}"


def unpermute_qk(w: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row permutation. Per head, llama.cpp stores the rotary pairs interleaved
    (rows 0,half,1,half+1,...); HF's rotate-half layout has the two halves contiguous."""
    rows = w.shape[0]
    half = rows // num_heads // 2
    # [heads, half, 2, ...] (interleaved) → [heads, 2, half, ...] (halves)
    return w.reshape(num_heads, half, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def unpermute_qk_quantized(w: QuantizedWeight, num_heads: int) -> QuantizedWeight:
    """`unpermute_qk` on a QuantizedWeight: its rows move, each with its own scales and zero points."""
    return permute_rows(w, unpermute_qk(torch.arange(w.shape[0]), num_heads))


def gguf_tensors(path: str | Path, hf_config: dict[str, Any]):
    """Yield (Hugging Face name, float32 tensor) for every tensor of the file, dequantized and with
    Llama's q/k un-permuted. Unknown tensors and unsupported quant types are ModelLoadErrors."""
    file = GGUFFile(path, hf_config)
    for name in file.names():
        yield name, file.read_float(name)


def gguf_weights(path: str | Path, hf_config: dict[str, Any]):
    """Like `gguf_tensors`, but a decoder linear's weight (QUANTIZED_LINEARS) stored in a quantized type
    comes as (name, QuantizedWeight [out, in]) read from its blocks, never through floats; every other
    tensor as (name, float32 tensor). q/k rows are un-permuted either way."""
    file = GGUFFile(path, hf_config)
    for name in file.names():
        yield name, file.read_quantized(name) if file.keeps_quantized(name) else file.read_float(name)


def quantized_linear_names(path: str | Path, hf_config: dict[str, Any]) -> list[str]:
    """The weights of the decoder linears the file stores in a type `gguf_weights` keeps quantized
    (from the header alone: no tensor is read)."""
    file = GGUFFile(path, hf_config)
    return [name for name in file.names() if file.keeps_quantized(name)]


@functools.lru_cache(maxsize=1)
def _reader(path: str, mtime_ns: int, size: int) -> Any:
    """gguf.GGUFReader of the file, kept for the next caller (keyed on its path, time and size): parsing
    the header's metadata (a 49k-token vocabulary is ~300k small fields) takes seconds, and one load opens
    the file three times (quantization check, quantized plan, float tensors)."""
    import gguf

    return gguf.GGUFReader(path)


class GGUFFile:
    """A .gguf file's tensors by Hugging Face name, each read only when asked (the file is memory-mapped,
    so the loader can read one module's tensors at a time). Every tensor's type and name is checked
    when the file is opened: unknown tensors and unsupported quant types are ModelLoadErrors."""

    def __init__(self, path: str | Path, hf_config: dict[str, Any]) -> None:
        self.path = Path(path)
        _check_file(self.path)
        stat = self.path.stat()
        reader = _reader(str(self.path.resolve()), stat.st_mtime_ns, stat.st_size)
        self._permute = hf_config.get("model_type") in PERMUTED_QK
        self._heads = {
            "q_proj": int(hf_config["num_attention_heads"]),
            "k_proj": int(hf_config.get("num_key_value_heads") or hf_config["num_attention_heads"]),
        }
        self._tensors: dict[str, Any] = {}  # HF name -> gguf ReaderTensor, in the file's order
        for t in reader.tensors:
            kind = t.tensor_type.name
            if kind not in SUPPORTED_TENSOR_TYPES:
                raise ModelLoadError(
                    f"tensor {t.name!r} of {self.path.name} is {kind}, which nanoserve cannot load; "
                    f"supported: {', '.join(SUPPORTED_TENSOR_TYPES)}"
                )
            name = hf_name(t.name)
            if name is None:
                raise ModelLoadError(f"unexpected tensor {t.name!r} in {self.path.name}")
            self._tensors[name] = t

    def names(self) -> list[str]:
        return list(self._tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(d) for d in reversed(self._tensors[name].shape))  # GGUF lists dims fastest first

    def tensor_type(self, name: str) -> str:
        return self._tensors[name].tensor_type.name

    def keeps_quantized(self, name: str) -> bool:
        """Whether `read_quantized` reads it: a decoder linear's weight in a type with an integer mapping."""
        proj = name.split(".")[-2]
        return self.tensor_type(name) in READERS and proj in QUANTIZED_LINEARS and name.endswith(".weight")

    def read_float(self, name: str) -> torch.Tensor:
        """The tensor as float32 (F16/BF16/quantized blocks expanded by the gguf package), q/k un-permuted."""
        import gguf

        t = self._tensors[name]
        values = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        if not values.flags.writeable:  # an F32 tensor is a view of the read-only memory map
            values = values.copy()
        tensor = torch.from_numpy(values.reshape(self.shape(name)))  # [rows, cols]
        proj = name.split(".")[-2]
        if self._permute and proj in self._heads:
            tensor = unpermute_qk(tensor, self._heads[proj])
        return tensor

    def read_quantized(self, name: str) -> QuantizedWeight:
        """A `keeps_quantized` weight as QuantizedWeight [out, in] read from its blocks, q/k un-permuted."""
        t = self._tensors[name]
        weight = read_gguf_linear(t.tensor_type.name, t.data, self.shape(name))  # codes, scales (and zeros)
        proj = name.split(".")[-2]
        if self._permute and proj in self._heads:
            weight = unpermute_qk_quantized(weight, self._heads[proj])
        return weight
