"""The native prefill softmax (csrc/prefill_softmax.cpp) against the reference backend's mask + softmax:
same probabilities within one rounding, exact zeros on the masked keys, every tail width of the vector
loops."""

from __future__ import annotations

import pytest
import torch

from nanoserve.model import native_kernels
from nanoserve.model.attention.torch_backend import TorchAttentionBackend


@pytest.fixture(scope="module")
def ext():
    ext = native_kernels.load_native_kernels()
    if ext is None:
        pytest.skip(f"native kernels unavailable: {native_kernels.unavailable_reason()}")
    return ext


# (kvh, m, g, c): m queries, the last m positions of a c-token context; c spans every remainder mod 16
SHAPES = [(2, 128, 7, 512), (1, 1, 1, 1), (1, 5, 3, 37), (2, 17, 2, 17), (3, 4, 1, 300), (1, 16, 2, 16)]
SHAPES += [(1, 3, 2, c) for c in range(3, 35)]


ULPS = [(torch.float32, 1e-6), (torch.bfloat16, 2**-8), (torch.float16, 2**-10)]


@pytest.mark.parametrize("dtype,ulp", ULPS)
@pytest.mark.parametrize("kvh,m,g,c", SHAPES)
def test_causal_softmax_matches_the_reference_mask_and_softmax(ext, dtype, ulp, kvh, m, g, c):
    scores = (torch.randn(kvh, m, g, c, generator=torch.Generator().manual_seed(c)) * 6).to(dtype)
    ref = TorchAttentionBackend._causal_softmax(scores.clone(), m).float()
    out = ext.causal_softmax_(scores, m)
    assert out.data_ptr() == scores.data_ptr(), "in place"
    # within one rounding of the reference's (relative to each probability; 1 ulp of 1.0 for tiny ones)
    assert ((out.float() - ref).abs() <= ulp * torch.maximum(ref.abs(), torch.tensor(1e-3))).all()
    visible = torch.arange(c)[None, :] <= torch.arange(c - m, c)[:, None]  # [m, c]: query i sees key j
    mask = visible[None, :, None, :].expand(kvh, m, g, c)
    assert (out[~mask] == 0).all(), "masked keys get weight exactly 0"
    assert (out[mask] > 0).all() or dtype != torch.float32
    torch.testing.assert_close(out.float().sum(-1), torch.ones(kvh, m, g), atol=c * ulp, rtol=0)


def test_causal_softmax_keeps_large_and_equal_scores_finite(ext):
    scores = torch.full((1, 2, 1, 40), 1e4, dtype=torch.bfloat16)
    scores[..., 0] = -1e4  # exp underflows to 0 there, no NaN from the max subtraction
    out = ext.causal_softmax_(scores, 2).float()
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0, 1, 0, 1:], torch.full((39,), 1 / 39), atol=2e-3, rtol=0)
    assert out[0, 0, 0, 0] == 0 and out[0, 0, 0, 39] == 0


def test_causal_softmax_rejects_a_wrong_group(ext):
    with pytest.raises(RuntimeError, match="m queries"):
        ext.causal_softmax_(torch.zeros(1, 4, 1, 8), 3)
    with pytest.raises(RuntimeError, match="contiguous"):
        ext.causal_softmax_(torch.zeros(1, 4, 1, 8).transpose(1, 3), 4)
