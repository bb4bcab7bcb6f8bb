"""Loading checkpoints: every problem is a ModelLoadError naming it; sharded and dtype variants load."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from nanoserve import LLM, SamplingParams
from nanoserve.errors import InvalidRequestError, ModelLoadError
from nanoserve.model.loader import SUPPORTED_ARCHITECTURES

GREEDY = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
PROMPTS = [{"prompt_token_ids": [5, 9, 33, 7]}, {"prompt_token_ids": list(range(10, 60))}]


def _tokens(llm: LLM) -> list[list[int]]:
    outs = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    llm.llm_engine.check_all_blocks_free()
    return [o.outputs[0].token_ids for o in outs]


def test_unsupported_architecture_is_named_with_the_supported_list(model_copy):
    path = model_copy(config={"architectures": ["GPT2LMHeadModel"]})
    with pytest.raises(ModelLoadError, match="GPT2LMHeadModel") as info:
        LLM(str(path))
    assert all(a in str(info.value) for a in SUPPORTED_ARCHITECTURES)


def test_missing_directory_config_and_weights(model_copy, tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        LLM(str(tmp_path / "nowhere"))
    path = model_copy()
    (path / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="no weights"):
        LLM(str(path))
    (path / "config.json").unlink()
    with pytest.raises(ModelLoadError, match="no config.json"):
        LLM(str(path))


def test_shape_mismatch_names_the_tensor_and_both_shapes(model_copy):
    path = model_copy(config={"intermediate_size": 96})
    with pytest.raises(
        ModelLoadError, match=r"mlp\.\w+_proj\.weight.*\[(128, 64|64, 128)\].*\[(96, 64|64, 96)\]"
    ):
        LLM(str(path))


def test_missing_and_unexpected_tensors(model_copy):
    path = model_copy()
    tensors = load_file(str(path / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(path / "model.safetensors"))
    with pytest.raises(ModelLoadError, match=r"missing tensor.*model\.layers\.1\.mlp\.up_proj\.weight"):
        LLM(str(path))
    tensors["model.layers.1.mlp.up_proj.weight"] = torch.zeros(128, 64)
    tensors["model.layers.1.mlp.extra.weight"] = torch.zeros(3)
    save_file(tensors, str(path / "model.safetensors"))
    with pytest.raises(ModelLoadError, match=r"unexpected tensor 'model\.layers\.1\.mlp\.extra\.weight'"):
        LLM(str(path))


def test_sliding_window_shorter_than_max_model_len(model_copy):
    path = model_copy("mistral", config={"sliding_window": 64})
    with pytest.raises(ModelLoadError, match="sliding window of 64"):
        LLM(str(path), max_model_len=128)
    llm = LLM(str(path))  # by default the context is capped at the window
    assert llm.llm_engine.model_config.max_model_len == 64
    assert LLM(str(path), max_model_len=64).llm_engine.model_config.max_model_len == 64


def test_qwen_sliding_window_counts_only_when_enabled(model_copy):
    path = model_copy("qwen2", config={"sliding_window": 32, "use_sliding_window": False})
    assert LLM(str(path), max_model_len=128).llm_engine.model_config.max_model_len == 128
    path = model_copy("qwen3", config={"sliding_window": 32, "use_sliding_window": True})
    with pytest.raises(ModelLoadError, match="sliding window"):
        LLM(str(path), max_model_len=128)


def test_unsupported_rope_scaling_type(model_copy):
    path = model_copy(config={"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}})
    with pytest.raises(ModelLoadError, match="unsupported rope_scaling type 'yarn'"):
        LLM(str(path))


def test_max_model_len_beyond_the_positions_is_rejected(tiny_llama):
    with pytest.raises(InvalidRequestError, match="max_position_embeddings") as info:
        LLM(str(tiny_llama), max_model_len=5000)
    assert info.value.param == "max_model_len"


def test_sharded_checkpoint_loads_like_the_single_file(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    src = tiny_model("qwen2")
    AutoModelForCausalLM.from_pretrained(str(src)).save_pretrained(
        tmp_path / "sharded", max_shard_size="40KB"
    )
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1
    for f in src.iterdir():
        if f.name.startswith("tokenizer") or f.name == "chat_template.jinja":
            (tmp_path / "sharded" / f.name).write_bytes(f.read_bytes())
    assert _tokens(LLM(str(tmp_path / "sharded"))) == _tokens(LLM(str(src)))
    (tmp_path / "sharded" / sorted(shards)[0]).unlink()
    with pytest.raises(ModelLoadError, match="missing"):
        LLM(str(tmp_path / "sharded"))


def test_dtype_auto_follows_the_checkpoint(tiny_model):
    assert LLM(str(tiny_model("llama", dtype="bfloat16"))).llm_engine.model_config.dtype == "bfloat16"
    # float16 on CPU computes in float32 (and says so in the log)
    assert LLM(str(tiny_model("llama", dtype="float16"))).llm_engine.model_config.dtype == "float32"
    assert LLM(str(tiny_model("llama")), dtype="bfloat16").llm_engine.model_config.dtype == "bfloat16"


def test_missing_tokenizer_is_a_load_error(model_copy):
    path = model_copy()
    for f in path.iterdir():
        if f.name.startswith("tokenizer"):
            f.unlink()
    with pytest.raises(ModelLoadError, match="tokenizer"):
        LLM(str(path))
