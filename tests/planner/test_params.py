"""Parameter counts: exact against transformers for tiny random models; official counts for presets."""

from __future__ import annotations

import pytest

from nanoserve.errors import InvalidRequestError
from nanoserve.planner.models import ModelSpec, from_hf_config, get_model
from nanoserve.planner.params import (
    dense_layer_params,
    flops_per_token,
    matmul_params,
    param_breakdown,
    param_count,
)

# Tiny configs of every supported architecture (odd sizes so a swapped dimension cannot cancel out).
_COMMON = dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
               num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64)
TINY_CONFIGS = {
    "llama": ("LlamaConfig", dict(_COMMON)),
    "llama_bias_tied": ("LlamaConfig", dict(_COMMON, attention_bias=True, mlp_bias=True,
                                            tie_word_embeddings=True)),
    "llama_mqa_head_dim": ("LlamaConfig", dict(_COMMON, num_key_value_heads=1, head_dim=12)),
    "mistral": ("MistralConfig", dict(_COMMON, sliding_window=None)),
    "qwen2": ("Qwen2Config", dict(_COMMON)),
    "qwen2_tied": ("Qwen2Config", dict(_COMMON, tie_word_embeddings=True)),
    "qwen3": ("Qwen3Config", dict(_COMMON, head_dim=16)),
    "mixtral": ("MixtralConfig", dict(_COMMON, num_local_experts=4, num_experts_per_tok=2)),
    "gpt2": ("GPT2Config", dict(vocab_size=97, n_embd=48, n_layer=3, n_head=6, n_positions=40)),
    "gpt2_inner": ("GPT2Config", dict(vocab_size=97, n_embd=48, n_layer=2, n_head=4, n_positions=32,
                                      n_inner=72)),
}


def _hf_model(cls_name: str, kwargs: dict):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = getattr(transformers, cls_name)(**kwargs)
    with torch.device("meta"):  # shapes only: no memory, no init time
        model = transformers.AutoModelForCausalLM.from_config(config)
    return config, model


@pytest.mark.parametrize("variant", sorted(TINY_CONFIGS))
def test_param_count_exact_against_transformers(variant: str) -> None:
    config, model = _hf_model(*TINY_CONFIGS[variant])
    spec = from_hf_config(config.to_dict(), name=variant)
    assert param_count(spec).value == model.num_parameters()


def test_mixtral_active_params_exact() -> None:
    config, model = _hf_model(*TINY_CONFIGS["mixtral"])
    spec = from_hf_config(config.to_dict())
    expert_params = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    one_expert_share = expert_params // config.num_local_experts
    expected = model.num_parameters() - expert_params + config.num_experts_per_tok * one_expert_share
    assert param_count(spec, active=True).value == expected


def test_breakdown_components_match_named_tensors() -> None:
    config, model = _hf_model(*TINY_CONFIGS["qwen3"])
    b = param_breakdown(from_hf_config(config.to_dict()))

    def total(*keys: str) -> int:
        return sum(p.numel() for n, p in model.named_parameters() if any(k in n for k in keys))

    assert b.attn_q == total("q_proj")
    assert b.attn_k == total("k_proj")
    assert b.qk_norm == total("q_norm", "k_norm")
    assert b.mlp == total("mlp.")
    assert b.embedding == total("embed_tokens")
    assert b.lm_head == total("lm_head")


def test_from_hf_config_reads_saved_config_json(tmp_path) -> None:
    config, model = _hf_model(*TINY_CONFIGS["qwen2_tied"])
    config.save_pretrained(tmp_path)
    spec = get_model(str(tmp_path / "config.json"))
    assert spec.qkv_bias and spec.tied_embeddings and spec.kv_heads == 2
    assert param_count(spec).value == model.num_parameters()


# Official counts (model cards / REFERENCES.md); ours must be within 0.5%.
OFFICIAL = {
    "gpt2": 124.4e6, "llama-3.1-8b": 8.03e9, "llama-3.1-70b": 70.55e9, "llama-3.1-405b": 405.85e9,
    "qwen2.5-0.5b": 0.494e9, "qwen2.5-7b": 7.62e9, "qwen2.5-72b": 72.71e9, "mistral-7b": 7.24e9,
    "mixtral-8x7b": 46.7e9,
}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_preset_param_counts_match_official(name: str) -> None:
    assert param_count(name).value == pytest.approx(OFFICIAL[name], rel=0.005)


def test_mixtral_active_matches_official() -> None:
    assert param_count("mixtral-8x7b", active=True).value == pytest.approx(12.9e9, rel=0.005)
    assert param_count("mixtral-8x7b").value > 3.5 * param_count("mixtral-8x7b", active=True).value


def test_llama_8b_exact_components() -> None:
    b = param_breakdown("llama-3.1-8b")
    assert b.total == 8_030_261_248
    assert b.embedding == b.lm_head == 128256 * 4096
    assert b.attn_k == 32 * 4096 * 1024  # GQA: k is 4096 → 8·128, not 4096 → 4096


def test_param_count_derivation_sums_its_steps() -> None:
    r = param_count("qwen2.5-0.5b")
    assert sum(s.value for s in r.steps) == r.value
    assert "lm_head" in r.formula and "0 (tied)" in r.explain()


def test_dense_layer_params_is_12_d_squared() -> None:
    assert dense_layer_params(8192).value == 12 * 8192**2
    with pytest.raises(InvalidRequestError):
        dense_layer_params(0)


def test_flops_per_token_rules() -> None:
    assert flops_per_token(7e9).value == 14e9
    assert flops_per_token(7e9, training=True).value == 42e9
    m = get_model("llama-3.1-8b")
    n = matmul_params(m)
    # lm_head counted, embedding lookup not: N_matmul = total − embedding − norms
    assert n == param_breakdown(m).total - m.vocab * m.hidden - (2 * m.layers + 1) * m.hidden
    fwd = flops_per_token(m, context_len=4096)
    assert fwd.value == 2 * n + 4 * 32 * 4096 * 4096
    assert flops_per_token(m, context_len=4096, training=True).value == 3 * fwd.value
    # causal average over a sequence of S tokens ≈ Kaplan's 2·layers·S·d_attn
    avg = flops_per_token(m, context_len=4095, causal_average=True).value - 2 * n
    assert avg == 2 * 32 * 4096 * 4096


def test_flops_moe_uses_active_experts_only() -> None:
    m = get_model("mixtral-8x7b")
    active = param_count(m, active=True).value
    # active path = 2 of 8 experts + router; minus the embedding lookup and the norms
    assert matmul_params(m) == active - m.vocab * m.hidden - (2 * m.layers + 1) * m.hidden


def test_model_spec_validation() -> None:
    with pytest.raises(InvalidRequestError) as e:
        ModelSpec("bad", 2, 64, 6, 4, 16, 128, 100)
    assert e.value.param == "kv_heads"
    with pytest.raises(InvalidRequestError):
        flops_per_token("gpt2", context_len=-1)
