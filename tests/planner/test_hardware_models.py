"""Hardware and model presets: sourced numbers, forgiving lookup, custom hardware, HF configs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from nanoserve.errors import InvalidRequestError
from nanoserve.planner.hardware import (
    PRESETS as HW,
)
from nanoserve.planner.hardware import (
    custom_hardware,
    get_hardware,
    hardware_from_file,
)
from nanoserve.planner.models import PRESETS as MODELS
from nanoserve.planner.models import from_hf_config, get_model

# REFERENCES.md (dense): bf16 TFLOP/s, memory GB, bandwidth TB/s
DATASHEET = {
    "h100-sxm": (989, 80, 3.35), "h100-pcie": (756, 80, 2.0), "h200": (989, 141, 4.8),
    "b200": (2250, 180, 8.0), "a100-80gb": (312, 80, 2.039), "a100-40gb": (312, 40, 1.555),
    "l4": (121, 24, 0.3), "l40s": (362, 48, 0.864), "mi300x": (1307, 192, 5.3),
    "tpu-v5e": (197, 16, 0.819), "tpu-v5p": (459, 95, 2.765), "tpu-v6e": (918, 32, 1.638),
}


@pytest.mark.parametrize("key", sorted(DATASHEET))
def test_hardware_preset_numbers(key: str) -> None:
    hw = HW[key]
    tflops, gb, tbs = DATASHEET[key]
    assert hw.bf16_flops_per_s == pytest.approx(tflops * 1e12)
    assert hw.hbm_bytes == pytest.approx(gb * 1e9)
    assert hw.hbm_bytes_per_s == pytest.approx(tbs * 1e12)
    assert hw.usd_per_hour > 0 and hw.source
    # dense int8 ≈ 2× dense bf16 on every chip (L40S: 733 vs 362.05, datasheet rounding)
    assert hw.int8_ops_per_s == pytest.approx(2 * hw.bf16_flops_per_s, rel=0.03)


def test_all_requested_presets_exist() -> None:
    assert set(DATASHEET) == set(HW)


def test_fp8_flops_and_missing_fp8() -> None:
    assert get_hardware("h100").flops_per_s("fp8") == 1979e12
    assert get_hardware("h100").flops_per_s("int4") == 989e12  # weight-only int4 computes in bf16
    with pytest.raises(InvalidRequestError) as e:
        get_hardware("a100").flops_per_s("fp8")
    assert e.value.param == "dtype"


def test_nvlink_convention() -> None:
    h100 = get_hardware("H100-SXM")
    assert h100.intra_node_bytes_per_s == 900e9
    assert h100.intra_node_unidir_bytes_per_s == 450e9
    assert h100.inter_node_bytes_per_s == 50e9  # 400 Gb/s NDR per GPU = 50 GB/s, not 400 GB/s
    assert h100.ridge_point_flops_per_byte == pytest.approx(295.2, abs=0.1)


@pytest.mark.parametrize("name,key", [
    ("h100", "h100-sxm"), ("H100-SXM", "h100-sxm"), ("NVIDIA H100 SXM5", "h100-sxm"),
    ("h100 pcie", "h100-pcie"), ("A100_40GB", "a100-40gb"), ("a100", "a100-80gb"), ("H200", "h200"),
    ("v5e", "tpu-v5e"), ("TPU v6e", "tpu-v6e"), ("tpuv5p", "tpu-v5p"), ("MI300X", "mi300x"), ("L40S", "l40s"),
])
def test_forgiving_hardware_lookup(name: str, key: str) -> None:
    assert get_hardware(name) is HW[key]


def test_unknown_hardware_is_a_typed_error() -> None:
    with pytest.raises(InvalidRequestError) as e:
        get_hardware("h900")
    assert e.value.param == "hardware" and "h100-sxm" in e.value.message


def test_custom_hardware_from_kwargs_and_base() -> None:
    hw = custom_hardware(name="toy", bf16_tflops=100, hbm_gb=16, hbm_gb_per_s=500, usd_per_hour=1.0)
    assert hw.bf16_flops_per_s == 100e12 and hw.hbm_bytes_per_s == 500e9
    cheaper = custom_hardware("h100", usd_per_hour=2.2)
    assert cheaper.usd_per_hour == 2.2 and cheaper.hbm_bytes == 80e9
    with pytest.raises(InvalidRequestError):
        custom_hardware(name="x", bf16_tflops=1)          # missing memory numbers
    with pytest.raises(InvalidRequestError):
        custom_hardware("h100", warp_drive=True)
    with pytest.raises(InvalidRequestError):
        custom_hardware("h100", hbm_gb=0)


def test_custom_hardware_from_json_and_yaml(tmp_path) -> None:
    j = tmp_path / "gpu.json"
    j.write_text(json.dumps({"name": "my-gpu", "bf16_tflops": 400, "hbm_gb": 96, "hbm_gb_per_s": 4000}))
    assert hardware_from_file(j).hbm_bytes == 96e9
    y = tmp_path / "gpu.yaml"
    y.write_text("base: h100\nusd_per_hour: 1.99\n")
    hw = hardware_from_file(y)
    assert hw.usd_per_hour == 1.99 and hw.bf16_flops_per_s == 989e12
    with pytest.raises(InvalidRequestError):
        hardware_from_file(tmp_path / "missing.json")


@pytest.mark.parametrize("name,key", [
    ("gpt2", "gpt2"), ("GPT-2", "gpt2"), ("meta-llama/Llama-3.1-8B", "llama-3.1-8b"),
    ("llama3-70b", "llama-3.1-70b"), ("Llama-3.1-405B-Instruct", "llama-3.1-405b"),
    ("Qwen/Qwen2.5-0.5B-Instruct", "qwen2.5-0.5b"), ("qwen2.5-72b", "qwen2.5-72b"),
    ("mistralai/Mistral-7B-v0.1", "mistral-7b"), ("Mixtral-8x7B", "mixtral-8x7b"),
])
def test_forgiving_model_lookup(name: str, key: str) -> None:
    assert get_model(name) is MODELS[key]


def test_model_presets_shapes() -> None:
    q = get_model("qwen2.5-0.5b")
    assert (q.layers, q.hidden, q.heads, q.kv_heads, q.head_dim, q.vocab) == (24, 896, 14, 2, 64, 151936)
    assert q.tied_embeddings and q.qkv_bias and not q.o_bias
    m = get_model("mixtral")
    assert m.is_moe and (m.num_experts, m.experts_per_token) == (8, 2)
    assert get_model("llama-3.1-70b").gqa_group == 8
    assert get_model("gpt2").learned_positions == 1024 and get_model("gpt2").mlp_kind == "gelu"


def test_from_hf_config_variants() -> None:
    qwen3 = from_hf_config({"model_type": "qwen3", "hidden_size": 1024, "num_attention_heads": 16,
                            "num_key_value_heads": 8, "head_dim": 128, "num_hidden_layers": 28,
                            "intermediate_size": 3072, "vocab_size": 151936, "tie_word_embeddings": True})
    assert qwen3.head_dim == 128 and qwen3.q_dim == 2048 and qwen3.qk_norm  # head_dim ≠ hidden/heads
    llama = from_hf_config({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
                            "num_hidden_layers": 2, "intermediate_size": 128, "vocab_size": 100})
    assert llama.kv_heads == 4 and llama.head_dim == 16  # defaults: MHA, hidden/heads
    with pytest.raises(InvalidRequestError) as e:
        from_hf_config({"model_type": "bert"})
    assert e.value.param == "model"


def test_planner_never_imports_torch() -> None:
    code = ("import sys, nanoserve.planner.hardware, nanoserve.planner.models, nanoserve.planner.params, "
            "nanoserve.planner.memory, nanoserve.planner.parallel; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_hardware_file_with_a_non_number_field_is_a_clear_error(tmp_path) -> None:
    # PyYAML reads 24e9 (no exponent sign) as the string "24e9": a named error, not a TypeError.
    f = tmp_path / "box.yaml"
    f.write_text("name: box\nbf16_flops_per_s: 1.0e+12\nhbm_bytes: 24e9\nhbm_bytes_per_s: 40.0e+9\n")
    with pytest.raises(InvalidRequestError, match=r"hbm_bytes must be a number.*24\.0e\+9") as e:
        hardware_from_file(f)
    assert e.value.param == "hbm_bytes"
    f.write_text("name: box\nbf16_flops_per_s: 1.0e+12\nhbm_bytes: 24.0e+9\nhbm_bytes_per_s: 40.0e+9\n"
                 "int8_ops_per_s: [1]\n")
    with pytest.raises(InvalidRequestError, match="int8_ops_per_s must be a number"):
        hardware_from_file(f)
    f.write_text("name: box\nbf16_flops_per_s: 1.0e+12\nhbm_bytes: 24.0e+9\nhbm_bytes_per_s: 40.0e+9\n")
    assert hardware_from_file(f).hbm_bytes == 24e9
