"""A tied model keeps one copy of its embedding matrix: the embedding reads the lm_head's packed weight,
with the plain table's exact rows, in the per-op and the fused decode paths, and the engine's weight
bytes drop to what the planner counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nanoserve import LLM, SamplingParams
from nanoserve.model.cpu_linear import load_avx512_kernel, pack_weight, pack_weight_f32, packed_rows
from nanoserve.model.tied_embedding import PackedEmbedding
from nanoserve.planner.memory import weight_memory

GREEDY = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
PROMPTS = [{"prompt_token_ids": [5, 9, 33, 7, 100, 3]}, {"prompt_token_ids": list(range(10, 90))}]


@pytest.mark.parametrize("n,k", [(200, 64), (64, 7), (130, 33), (1, 2)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_packed_rows_are_the_plain_rows(n, k, dtype):
    weight = torch.randn(n, k).to(dtype)  # [N, K]
    packed = pack_weight(weight) if dtype == torch.bfloat16 else pack_weight_f32(weight)
    ids = torch.tensor([0, n - 1, n // 2, 0, n - 1])
    assert torch.equal(packed_rows(packed, ids, k), weight[ids])


def test_packed_embedding_checks_the_token_range():
    from nanoserve.model.cpu_linear import FastLinear

    head = FastLinear(8, 70)
    head._packed = pack_weight(torch.randn(70, 8).bfloat16())
    emb = PackedEmbedding(head, 70)
    assert emb(torch.tensor([[1, 69]])).shape == (1, 2, 8)
    with pytest.raises(IndexError, match="out of range"):
        emb(torch.tensor([70]))


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("fused", [True, False])
def test_a_tied_model_holds_one_copy_and_generates_the_same_tokens(tiny_model, dtype, fused, monkeypatch):
    if load_avx512_kernel() is None:
        pytest.skip("the avx512 linear kernel is not available: nothing is packed")
    if not fused:
        monkeypatch.setenv("NANOSERVE_DISABLE_FUSED_DECODE", "1")
    path = str(tiny_model("qwen2", dtype=dtype))
    llm = LLM(path, dtype=dtype, num_gpu_blocks_override=32, block_size=4)
    model = llm.llm_engine.runner.model
    assert isinstance(model.model.embed_tokens, PackedEmbedding)
    assert not [n for n, _ in model.named_parameters() if "embed_tokens" in n], "the plain table is gone"
    assert (model.model.fused_decode is not None) == fused
    if dtype == "bfloat16":  # the packed layouts carry no padding at these sizes: the planner's count
        assert llm.llm_engine.weight_bytes == weight_memory(path, "bf16").value
    ref = LLM(path, dtype=dtype, cpu_linear="torch", num_gpu_blocks_override=32, block_size=4)
    assert type(ref.llm_engine.runner.model.model.embed_tokens) is nn.Embedding  # nothing packed there
    got = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, GREEDY, use_tqdm=False)]
    want = [o.outputs[0].token_ids for o in ref.generate(PROMPTS, GREEDY, use_tqdm=False)]
    if dtype == "float32":  # the same rows; fp32 linears then agree to rounding, greedy tokens equal
        assert got == want
    else:  # bf16: compare against the same packed kernels with the plain embedding instead
        monkeypatch.setattr("nanoserve.model.loader.share_tied_embedding", lambda model: False)
        plain = LLM(path, dtype=dtype, num_gpu_blocks_override=32, block_size=4)
        assert type(plain.llm_engine.runner.model.model.embed_tokens) is nn.Embedding
        assert got == [o.outputs[0].token_ids for o in plain.generate(PROMPTS, GREEDY, use_tqdm=False)]
