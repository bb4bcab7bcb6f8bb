"""Seed 000 ("Workbook — Systems & Serving"), chapters 0–5: every numeric answer, by exercise.

Each test computes the answer with the planner from the exercise's own inputs and asserts it to the
seed's printed rounding. Where the seed's figure is wrong or mixes units, the test asserts ours and
states how far off the seed is, and why. Units: this chapter's "KB/MB/GB" of the KV cache are
1024-based (320 KB per token = 327,680 bytes), so those tests compare in KiB/MiB/GiB.
"""

from __future__ import annotations

import pytest

from nanoserve.planner import serving
from nanoserve.planner.hardware import get_hardware
from nanoserve.planner.memory import (
    expected_fragmentation,
    internal_fragmentation,
    kv_cache_bytes,
    kv_cache_per_token,
    kv_pages,
    paged_savings,
    preallocation_waste,
    quick_fit,
)
from nanoserve.planner.parallel import (
    dp_comm_per_step,
    dp_degree,
    fsdp_memory_per_gpu,
    global_batch_tokens,
    layers_per_stage,
    microbatches_for_bubble,
    pipeline_bubble_fraction,
    tp_allreduce_bytes_per_layer,
    tp_allreduce_message_bytes,
    tp_comm_time,
    tp_params_per_gpu,
    tp_weight_memory_per_gpu,
    weight_memory_3d,
    zero_memory_per_gpu,
)
from nanoserve.planner.params import dense_layer_params

KiB, MiB, GiB = 2**10, 2**20, 2**30

# ---------------------------------------------------------------- chapter 0: tensor parallelism


def test_000_ex0_1_tp_params_per_gpu_per_layer():
    layer = dense_layer_params(8192)
    assert layer.value == 805_306_368
    per_gpu = tp_params_per_gpu(layer.value, 8)
    assert per_gpu.value == 100_663_296
    assert round(per_gpu.value / 1e6, 1) == 100.7


def test_000_ex0_2_tp_allreduce_volume():
    msg = tp_allreduce_message_bytes(32, 2048, 8192, 2)
    assert msg.value == 1_073_741_824 == GiB  # the seed's "≈ 1.0 GB" is exactly 1 GiB
    # The exercise's convention: each all-reduce costs ~1× the message → 2 per layer = "2.0 GB"
    seed_conv = tp_allreduce_bytes_per_layer(32, 2048, 8192, tp=8, ring=False)
    assert seed_conv.value / GiB == 2.0
    # Exact ring all-reduce: each GPU sends 2·(TP−1)/TP × message per all-reduce, 1.75× the seed's
    # figure at TP=8. (The exercise text says (TP−1)/TP, which is a reduce-scatter alone; the chapter
    # intro's "2d bytes" is the large-TP limit of the right formula.)
    exact = tp_allreduce_bytes_per_layer(32, 2048, 8192, tp=8)
    assert exact.value == 2 * 1.75 * GiB
    assert exact.value / seed_conv.value == 1.75


def test_000_ex0_2_tp_comm_time_80_layers():
    per_layer = tp_allreduce_bytes_per_layer(32, 2048, 8192, tp=8, ring=False)
    nvlink = get_hardware("h100").intra_node_bytes_per_s  # the seed's 900 GB/s
    t = tp_comm_time(per_layer, 80, nvlink)
    assert t.value == pytest.approx(0.1909, abs=1e-4)
    # Seed: "160 GB … ~178 ms". 80 × 2 GiB = 171.8 GB, not 160 GB: dividing GiB by GB/s makes the
    # seed's time 6.9% short (1e9 / 2^30).
    assert 0.178 / t.value == pytest.approx(0.931, abs=0.002)
    # Seed: "InfiniBand at 400 GB/s → 400 ms". NDR InfiniBand is 400 Gb/s (bits) = 50 GB/s per GPU,
    # so the same traffic takes ~3.4 s; the seed's link is 8× too fast.
    ib = get_hardware("h100").inter_node_bytes_per_s
    t_ib = tp_comm_time(per_layer, 80, ib)
    assert t_ib.value == pytest.approx(3.436, abs=1e-3)
    assert t_ib.value / 0.400 > 8


def test_000_ex0_3_13b_fits_one_gpu():
    # the premise: a 13B model in fp16 fits one 80 GB GPU (26 GB of weights), so DP=8 copies work
    assert tp_weight_memory_per_gpu(13e9, 1).value == 26e9
    assert quick_fit(13e9, 2, n_gpu=1, gpu_bytes=80e9).fits


def test_000_ex0_5_70b_weights_tp8():
    assert tp_weight_memory_per_gpu(70e9, 1).value == 140e9
    r = tp_weight_memory_per_gpu(70e9, 8)
    assert r.value == 17.5e9


# ---------------------------------------------------------------- chapter 1: pipeline parallelism


def test_000_ex1_1_bubble_pp4_m1():
    assert pipeline_bubble_fraction(4, 1).value == 0.75


def test_000_ex1_2_microbatches_below_10_percent():
    # Seed: "M > 27 … you need at least 27 microbatches. With M=27, bubble = 3/30 = 10%."
    # 10% is not *below* 10%: the strict target needs 28; 27 is the answer to "at most 10%".
    strict = microbatches_for_bubble(4, 0.10)
    assert strict.value == 28
    assert pipeline_bubble_fraction(4, 28).value == pytest.approx(3 / 31)
    assert microbatches_for_bubble(4, 0.10, strict=False).value == 27  # the seed's figure
    assert pipeline_bubble_fraction(4, 27).value == pytest.approx(0.10)
    assert round(pipeline_bubble_fraction(4, 32).value, 3) == 0.086


def test_000_ex1_3_layers_per_stage():
    assert layers_per_stage(32, 4).value == 8
    assert layers_per_stage(32, 8).value == 4
    for m in (1, 8, 32):  # PP=8 always has the larger bubble
        assert pipeline_bubble_fraction(8, m).value > pipeline_bubble_fraction(4, m).value


def test_000_ex1_4_bubble_pp16_m32():
    r = pipeline_bubble_fraction(16, 32)
    assert round(r.value, 3) == 0.319
    # "To get this below 5%, you'd need M > 285"
    assert microbatches_for_bubble(16, 0.05).value == 286


def test_000_ex1_5_pipeline_bubble_fraction_build():
    for pp, m in [(1, 1), (2, 3), (4, 1), (8, 64), (16, 32)]:
        assert pipeline_bubble_fraction(pp, m).value == (pp - 1) / (pp - 1 + m)


# ---------------------------------------------------------------- chapter 2: DP / FSDP / ZeRO


def test_000_ex2_1_ddp_memory_7b():
    r = zero_memory_per_gpu(7e9, dp=32, stage=0)  # DDP: the dp degree does not matter
    assert r.value == 112e9
    assert r.value > get_hardware("h100").hbm_bytes


def test_000_ex2_2_fsdp_memory_7b_32gpus():
    assert zero_memory_per_gpu(7e9, dp=32, stage=3).value == 3.5e9
    assert fsdp_memory_per_gpu(7e9, 32).value == 3.5e9


def test_000_ex2_3_ddp_comm_per_step():
    # the seed uses the large-N ring limit (2× the message): 28 GB; FSDP ≈ 42 GB (1.5×)
    ddp = dp_comm_per_step(7e9)
    assert ddp.value == 28e9
    fsdp = dp_comm_per_step(7e9, strategy="fsdp")
    assert fsdp.value == 42e9 and fsdp.value / ddp.value == 1.5
    # at a concrete N the ring sends (N−1)/N of that: 24.5 GB for N=8
    assert dp_comm_per_step(7e9, dp=8).value == 24.5e9


def test_000_ex2_4_zero1_memory_7b_8gpus():
    r = zero_memory_per_gpu(7e9, dp=8, stage=1)
    assert r.value == 38.5e9
    assert int(r.value / 1e9 + 0.5) == 39  # "≈ 39 GB" (round half up; Python rounds 38.5 to even)


def test_000_ex2_5_fsdp_memory_per_gpu_build():
    for billions, gpus in [(7, 32), (70, 64), (1, 1)]:
        assert fsdp_memory_per_gpu(billions * 1e9, gpus).value / 1e9 == pytest.approx(billions * 16 / gpus)


# ---------------------------------------------------------------- chapter 3: 3D parallelism


def test_000_ch3_intro_256_gpus():
    assert dp_degree(256, 8, 4).value == 8  # TP 8 × PP 4 × DP 8 = 256


def test_000_ex3_1_dp_degree_256():
    assert dp_degree(256, tp=8, pp=4).value == 8


def test_000_ex3_2_weight_memory_3d():
    assert layers_per_stage(80, 4).value == 20
    r = weight_memory_3d(70e9, tp=8, pp=4)
    assert r.value == 4.375e9
    # "optimizer states (~4.375 × 6 = ~26 GB if not using FSDP)": 12 B/param of the tp·pp slice
    opt = zero_memory_per_gpu(70e9, dp=8, stage=0, weight_bytes=0, grad_bytes=0, model_parallel=32)
    assert opt.value == 26.25e9 == 6 * r.value


def test_000_ex3_3_allreduces_per_forward():
    # 2 all-reduces per layer (after W_O and W_2) × 80 layers = 160 per forward pass
    r = tp_allreduce_bytes_per_layer(1, 1, 8192, tp=8)
    assert r.inputs["allreduces_per_layer"] * 80 == 160


def test_000_ex3_4_dp_degree_405b():
    assert dp_degree(16_384, tp=8, pp=16).value == 128
    # "16M token batch → ~128K tokens per replica": 2^24 / 128 = 131,072
    assert 2**24 / 128 == 131_072


def test_000_ex3_5_global_batch_tokens():
    r = global_batch_tokens(dp=128, micro_batch_seqs=4, seq_len=4096)
    assert r.value == 2_097_152
    assert round(r.value / 1e6, 1) == 2.1
    assert global_batch_tokens(128, 4, 4096, grad_accum=8).value == 16_777_216  # "16M+"


def test_000_ex3_6_dp_does_not_shard_weights():
    correct = weight_memory_3d(70e9, tp=8, pp=4).value
    buggy = 70e9 * 2 / (8 * 4 * 8)  # the exercise's bug: dividing by dp as well
    assert correct / 1e9 == 4.375 and correct / buggy == 8


# ---------------------------------------------------------------- chapter 4: continuous batching


def test_000_ex4_1_static_utilization():
    r = serving.static_batching_utilization(200, 512)
    assert round(r.value, 3) == 0.391
    assert round(1 - r.value, 2) == 0.61  # "wastes 61% of compute"


def test_000_ex4_2_continuous_gain():
    g = serving.continuous_batching_gain(200, 512)
    assert g.value == pytest.approx(2.56)
    assert round(2.0 / g.value, 2) == 0.78  # "$2/hr → $0.78/hr for the same throughput"


def test_000_ex4_3_least_improvement():
    assert round(serving.static_batching_utilization(500, 512).value, 3) == 0.977
    assert round(serving.continuous_batching_gain(500, 512).value, 2) == 1.02


def test_000_ex4_4_slot_utilization_build():
    for avg, mx in [(200, 512), (1, 1), (300, 1000)]:
        assert serving.static_batching_utilization(avg, mx).value == avg / mx


def test_000_ex4_5_littles_law_queue():
    r = serving.littles_law(arrival_rate_per_s=10, latency_s=5)
    assert r.value == 50
    assert r.value - 32 == 18  # 18 requests queue behind 32 slots


# ---------------------------------------------------------------- chapter 5: PagedAttention


def _llama70b_kv_per_token():
    return kv_cache_per_token(layers=80, kv_heads=8, head_dim=128, kv_dtype="fp16")


def test_000_ch5_intro_kv_per_request_and_batch():
    per_req = kv_cache_bytes(seq_len=4096, layers=80, kv_heads=8, head_dim=128, kv_dtype="fp16")
    assert per_req.value == 1_342_177_280 == 1.25 * GiB
    # Seed: "1.28 GB per request … 41 GB for 32". 320 KiB × 4096 = 1,280 MiB, then read as 1.28 GB:
    # the true figure is 1.25 GiB = 1.34 GB (GiB→GB slip, 4.7% low); 32 requests = 40 GiB = 42.9 GB.
    assert per_req.value / 1e9 == pytest.approx(1.342, abs=1e-3)
    batch = kv_cache_bytes(seq_len=4096, batch=32, layers=80, kv_heads=8, head_dim=128, kv_dtype="fp16")
    assert batch.value == 40 * GiB
    assert batch.value / 1e9 == pytest.approx(42.95, abs=0.01)


def test_000_ex5_1_kv_per_token_70b():
    r = _llama70b_kv_per_token()
    assert r.value == 327_680 and r.value / KiB == 320
    # Seed: "Without GQA, this would be 2,560 KB per token — 10× more". 2,560 KiB is right, but it is
    # 8× (64 query heads / 8 KV heads), not 10×.
    mha = kv_cache_per_token(layers=80, kv_heads=64, head_dim=128, kv_dtype="fp16")
    assert mha.value / KiB == 2560
    assert mha.value / r.value == 8


def test_000_ex5_2_kv_32_requests():
    per_req = kv_cache_bytes(seq_len=4096, layers=80, kv_heads=8, head_dim=128, kv_dtype="fp16")
    assert per_req.value / KiB == 1_310_720 and per_req.value / GiB == 1.25
    total = kv_cache_bytes(seq_len=4096, batch=32, layers=80, kv_heads=8, head_dim=128, kv_dtype="fp16")
    assert total.value / GiB == 40
    # "Combined with 17.5 GB of weights (TP=8), that's 57.5 GB out of 80 GB" adds GiB to GB; in one
    # unit it is 42.9 GB + 17.5 GB = 60.4 GB (75.6% of the card), 5% more than the seed says.
    # (The seed's 40 GB is the whole batch's cache; under TP=8 each GPU holds 1/8 of it.)
    combined = total.value + tp_weight_memory_per_gpu(70e9, 8).value
    assert combined / 1e9 == pytest.approx(60.45, abs=0.01)


def test_000_ex5_3_page_count():
    page_bytes = 16 * _llama70b_kv_per_token().value
    assert page_bytes == 5 * MiB  # "5,120 KB = 5 MB per page"
    pages = kv_pages([4096] * 32, block_size=16)
    assert pages.value == 8192
    assert pages.value * page_bytes == 40 * GiB


def test_000_ex5_4_internal_fragmentation():
    per_tok = _llama70b_kv_per_token().value
    r = internal_fragmentation(200, 16, bytes_per_token=per_tok)
    assert r.steps[0].value == 13  # pages
    assert r.steps[1].value == 8   # wasted slots
    assert r.value == 0.5          # 50% of the last page
    # Seed: "average internal fragmentation is half a page = 8 tokens = 2.5 MB; 32 requests: 80 MB,
    # 0.2% of 40 GB". With lengths spread evenly mod 16 the mean waste is (16−1)/2 = 7.5 slots, not 8:
    # 2.34 MiB per request, 75 MiB for 32 (the seed rounds up by 1/15 = 6.7%). Both are ~0.2%.
    exp = expected_fragmentation(16, per_tok, 32)
    assert exp.value / MiB == 75
    assert 80 * MiB / exp.value == pytest.approx(16 / 15)
    assert exp.value / (40 * GiB) == pytest.approx(0.00183, abs=1e-5)
    # Seed: "pre-allocating … (4096−200) × 320 KB = 1.22 GB wasted per request". Exactly 1.19 GiB
    # = 1.28 GB; 1.22 comes from 1,246,720 KiB / 1024 = 1,217.5 MiB read as GB (mixed units).
    waste = preallocation_waste(4096, 200, per_tok)
    assert waste.value == 1_276_641_280
    assert waste.value / GiB == pytest.approx(1.189, abs=1e-3)
    assert waste.value / 1e9 == pytest.approx(1.277, abs=1e-3)


def test_000_ex5_5_paged_savings():
    r = paged_savings(4096, 800, 16)
    assert r.value == pytest.approx(5.12)
    # The seed's aside "+ 0.5 page ≈ 808" does not apply to exactly 800 tokens (50 whole pages); for
    # a spread of lengths averaging 800 the expected (16−1)/2-slot waste gives 4096/807.5 = 5.07×.
    assert r.steps[0].value == 50
    assert 4096 / (800 + 7.5) == pytest.approx(5.07, abs=0.005)
