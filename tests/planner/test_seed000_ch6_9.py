"""Seed 000 ("Workbook — Systems & Serving"), chapters 6–9: every numeric answer, by exercise.

Each test computes the answer with the planner from the exercise's own inputs and asserts it to the
seed's printed rounding. Where the seed's figure is wrong, the test asserts ours and says how far off
the seed is, and why.
"""

from __future__ import annotations

import math

import pytest

from nanoserve.planner import cost, quantization, serving, speculative
from nanoserve.planner.capacity import plan_serving
from nanoserve.planner.memory import kv_cache_per_token

H100_BW = 3350e9  # the chapter's "3.35 TB/s"
H100_FLOPS = 990e12  # the chapter's "990 TFLOPS"
GiB, KiB = 2**30, 2**10

# ---------------------------------------------------------------- chapter 6: speculative decoding


def test_000_ex6_1_expected_tokens_approx():
    e = speculative.expected_tokens(0.7, 5, method="approx")
    assert e.value == pytest.approx(4.5)
    assert "k·α + 1" in e.formula


def test_000_ex6_2_wall_clock_speedup():
    # the seed's chain: 4.5 tokens per 75 ms round = 60 tok/s vs 20 tok/s → 3.0×
    s = speculative.speedup(0.7, 5, target_time_s=0.050, draft_time_s=0.005, method="approx")
    assert s.steps[1].value == pytest.approx(0.075)
    assert s.inputs["tok_per_s"] == pytest.approx(60.0)
    assert s.inputs["baseline_tok_per_s"] == pytest.approx(20.0)
    assert s.value == pytest.approx(3.0)
    # With the exact expectation (ex. 6.5: 2.941 tokens) the same round gives 1.96×, not 3×: the seed's
    # 3× inherits the kα + 1 overestimate.
    exact = speculative.speedup(0.7, 5, 0.050, 0.005)
    assert exact.value == pytest.approx(1.961, abs=5e-4)
    assert s.value / exact.value == pytest.approx(1.53, abs=0.01)


def test_000_ex6_2_parallel_draft_approaches_tokens_per_step():
    # "If the draft model ran on a separate GPU in parallel, you'd get closer to 4.5×"
    s = speculative.speedup(0.7, 5, 0.050, 0.005, method="approx", draft_parallel=True)
    assert s.value == pytest.approx(4.5)


def test_000_ex6_3_break_even_acceptance():
    a = speculative.break_even_acceptance(5, target_time_s=0.050, draft_time_s=0.005, method="approx")
    assert a.value == pytest.approx(0.10)
    # Exact expectation: 1 + α + … + α^5 must reach 75/50 = 1.5 tokens per round → α ≈ 0.334, a
    # break-even more than 3× the seed's 10%.
    exact = speculative.break_even_acceptance(5, 0.050, 0.005)
    assert exact.value == pytest.approx(0.3343, abs=1e-4)
    assert speculative.expected_tokens(exact.value, 5).value == pytest.approx(1.5)


def test_000_ex6_3_twenty_percent_acceptance_claim():
    # Seed: "Even a terrible draft model (20% acceptance) gives a 1.47× speedup." Wrong under either
    # formula: kα + 1 gives 2 tokens / 75 ms = 1.33×, and the exact 1.25 tokens / 75 ms = 0.83×, a slowdown.
    approx = speculative.speedup(0.2, 5, 0.050, 0.005, method="approx")
    exact = speculative.speedup(0.2, 5, 0.050, 0.005)
    assert approx.value == pytest.approx(4 / 3)
    assert exact.value == pytest.approx(0.8333, abs=1e-4)
    assert exact.value < 1 and "slower" in exact.note
    assert 1.47 - approx.value == pytest.approx(0.137, abs=1e-3)


def test_000_ex6_5_exact_expected_tokens():
    e = speculative.expected_tokens(0.7, 5)
    assert 0.7**6 == pytest.approx(0.117649)
    assert e.value == pytest.approx(2.941, abs=5e-4)
    # "the probability of accepting all k tokens is α^k = 0.7^5 = 16.8%"
    assert "0.1681" in e.note
    assert speculative.expected_tokens(0.7, 5, "approx").value - e.value == pytest.approx(1.559, abs=1e-3)


# ---------------------------------------------------------------- chapter 7: quantization for serving


@pytest.mark.parametrize(
    ("dtype", "gb", "ms", "tok_s"),
    [("fp16", 140, 41.8, 23.9), ("int8", 70, 20.9, 47.9), ("int4", 35, 10.4, 95.7)],
)
def test_000_ch7_intro_decode_latency_table(dtype, gb, ms, tok_s):
    s = quantization.quantized_decode_speed(70e9, dtype, H100_BW)
    assert s.steps[0].steps[0].value / 1e9 == pytest.approx(gb)
    assert s.inputs["ms_per_token"] == pytest.approx(ms, abs=0.05)
    assert s.value == pytest.approx(tok_s, abs=0.05)


def test_000_ch7_intro_seed_rounding_slips():
    # The intro prints INT8 "47.8 tok/s" (truncated; ex. 7.3 prints the correct 47.9) and INT4
    # "10.4 ms → 96.2 tok/s": 96.2 is 1/10.4 ms, the rounded latency inverted. 35 GB / 3.35 TB/s is
    # 10.448 ms → 95.7 tok/s (ex. 9.3 uses 95.7).
    int8 = quantization.quantized_decode_speed(70e9, "int8", H100_BW).value
    int4 = quantization.quantized_decode_speed(70e9, "int4", H100_BW).value
    assert int8 == pytest.approx(47.857, abs=1e-3)
    assert round(int8, 1) == 47.9 != 47.8
    assert int4 == pytest.approx(95.714, abs=1e-3)
    assert 1 / 0.0104 == pytest.approx(96.15, abs=0.01)
    assert 96.2 / int4 - 1 == pytest.approx(0.005, abs=1e-3)


def test_000_ex7_1_fp16_model_size():
    w = quantization.quantized_weight_bytes(70e9, "fp16")
    assert w.value / 1e9 == pytest.approx(140)


def test_000_ex7_2_int4_model_size():
    w = quantization.quantized_weight_bytes(70e9, "int4")
    assert w.value / 1e9 == pytest.approx(35)


def test_000_ex7_3_decode_throughput_int8():
    s = quantization.quantized_decode_speed(70e9, "int8", H100_BW)
    assert s.steps[0].value == pytest.approx(0.02090, abs=5e-6)
    assert s.value == pytest.approx(47.9, abs=0.05)
    # exactly 2× the fp16 speed: the model is exactly half the bytes
    assert s.value / quantization.quantized_decode_speed(70e9, "fp16", H100_BW).value == pytest.approx(2.0)


def test_000_ex7_4_batch_for_compute_bound():
    b = serving.decode_crossover_batch(H100_FLOPS, H100_BW, bytes_per_param=1.0)
    assert b.steps[0].value == pytest.approx(295.5, abs=0.05)
    assert b.value == pytest.approx(147.8, abs=0.05)
    assert math.ceil(b.value) == 148
    # The exercise calls 990 TFLOPS "INT8"; it is H100's dense bf16 peak, right for weight-only int8
    # (W8A16, computed in bf16). With int8 tensor cores (W8A8, 1,979 TOPS dense) the crossover doubles.
    w8a8 = serving.decode_crossover_batch(1979e12, H100_BW, bytes_per_param=1.0)
    assert w8a8.value == pytest.approx(295.4, abs=0.05)


def test_000_ex9_3_int4_crossover_is_74_not_300():
    # Ex. 9.3 says batch 32 is "<< crossover batch ~300 for INT4". Halving the bytes per weight halves
    # the crossover batch (intensity per token doubles to 4 FLOP/B): 295.5 / 4 ≈ 74 at 990 TFLOPS. The
    # conclusion (batch 32 is bandwidth-bound) still holds.
    b = serving.decode_crossover_batch(H100_FLOPS, H100_BW, bytes_per_param=0.5)
    assert b.value == pytest.approx(73.9, abs=0.05)
    assert 300 / b.value == pytest.approx(4.06, abs=0.01)
    assert 32 < b.value


def test_000_ex7_6_gpu_count_with_quantization():
    fp16 = quantization.gpus_for_weights(140e9, 80e9)
    int4 = quantization.gpus_for_weights(35e9, 80e9)
    assert fp16.value == 2 and "1.75" in fp16.substituted
    assert int4.value == 1 and "0.4375" in int4.substituted


# ---------------------------------------------------------------- chapter 8: cost optimization


def test_000_ch8_intro_utilisation_trap():
    assert cost.monthly_bill(1, 3.50).value == pytest.approx(2520)
    assert cost.effective_hourly_cost(3.50, 0.30).value == pytest.approx(11.67, abs=0.005)
    assert cost.effective_hourly_cost(3.50, 0.90).value == pytest.approx(3.89, abs=0.005)


def test_000_ex8_1_cost_per_million_tokens():
    c = cost.cost_per_million_tokens(3.50, 3000, n_gpus=2)
    assert c.steps[0].value == pytest.approx(7.00)
    assert c.steps[1].value == pytest.approx(10_800_000)
    assert c.value == pytest.approx(0.648, abs=5e-4)
    assert round(c.value, 2) == 0.65
    assert 15 / c.value == pytest.approx(23.1, abs=0.05)  # "~23× less" than a $15/1M API price


def test_000_ex8_2_spot_vs_on_demand():
    s = cost.effective_spot_price(2.00, 0.85, on_demand_usd_per_hour=3.50)
    assert s.value == pytest.approx(2.35, abs=0.005)
    assert 3.50 - s.value == pytest.approx(1.15, abs=0.005)
    assert round(100 * (1 - s.value / 3.50)) == 33  # "33% savings"
    assert s.note.startswith("saves 1.1471 $/h")


def test_000_ex8_3_break_even_utilization():
    u = cost.reserved_break_even_utilization(2.20, 3.50)
    assert u.value == pytest.approx(0.629, abs=5e-4)


def _fleet(int4_70b: bool = False):
    models = [cost.FleetModel("7B", 0.80, 15_000, 1)]
    if int4_70b:
        models.append(cost.FleetModel("70B", 0.20, 5_000, 1))
    else:
        models.append(cost.FleetModel("70B", 0.20, 3_000, 2))
    return cost.fleet_size(models, requests_per_s=1000, output_tokens_per_request=200)


def test_000_ex8_4_multi_model_serving():
    total, per_model = _fleet()
    small, large = per_model
    assert small.inputs["demand_tok_per_s"] == pytest.approx(160_000)
    assert small.value == 11
    assert large.inputs["demand_tok_per_s"] == pytest.approx(40_000)
    assert large.inputs["replicas"] == 14
    assert large.value == 28
    assert total.value == 39
    assert large.value / total.value == pytest.approx(0.72, abs=0.005)


def test_000_ex8_5_monthly_serving_bill():
    bill = cost.monthly_bill(39, 3.50)
    assert bill.value == pytest.approx(98_280)
    # The comment's blended figure is wrong by 30×: "200K tok/s = 17.28B tokens/month" is one DAY of
    # tokens (200K × 86,400). A 720-hour month is 518.4B tokens, so the blend is $0.19 per 1M, not $5.69.
    per_m = cost.cost_per_million_from_bill(bill.value, 200_000)
    assert per_m.steps[0].value == pytest.approx(518.4e9)
    assert per_m.value == pytest.approx(0.1896, abs=5e-5)
    assert 200_000 * 86_400 == pytest.approx(17.28e9)
    assert 5.69 / per_m.value == pytest.approx(30.0, abs=0.05)


def test_000_ex8_6_quantization_savings():
    total, per_model = _fleet(int4_70b=True)
    assert per_model[1].value == 8
    assert total.value == 19
    new = cost.monthly_bill(int(total.value), 3.50).value
    assert new == pytest.approx(47_880)
    assert cost.monthly_bill(39, 3.50).value - new == pytest.approx(50_400)
    assert 28 / per_model[1].value == 3.5  # "from 28 GPUs to 8 GPUs (3.5× reduction)"


# ---------------------------------------------------------------- chapter 9: capstone


def test_000_ex9_1_total_throughput_requirement():
    r = serving.aggregate_throughput(10_000, 0.30, 30)
    assert r.steps[0].value == pytest.approx(3000)
    assert r.value == pytest.approx(90_000)


def test_000_ex9_2_kv_per_token_and_capacity():
    # "35 GB weights leave 45 GB … at 320 KB/token, 144K tokens … ~36 concurrent 4K-context requests"
    kv = kv_cache_per_token("llama-3.1-70b").value
    assert kv == 320 * KiB
    # 144K only comes from mixed units (45 GB = 46,080 MB over 0.32 MB): 45 GiB / 320 KiB = 147,456
    # tokens (= 36 × 4096 exactly) and 45e9 B / 327,680 B = 137,329 tokens (33.5 requests).
    assert 45 * GiB / kv == 147_456 == 36 * 4096
    assert 45e9 / kv == pytest.approx(137_329, abs=1)
    assert 46_080 / 0.32 == pytest.approx(144_000)


def test_000_ex9_3_per_gpu_throughput():
    one = quantization.quantized_decode_speed(70e9, "int4", H100_BW)
    assert one.inputs["ms_per_token"] == pytest.approx(10.45, abs=0.005)
    assert one.value == pytest.approx(95.7, abs=0.05)
    b32 = serving.decode_throughput(35e9, H100_BW, batch=32)
    assert b32.value == pytest.approx(3062, abs=1)  # seed: 32 × 95.7 = 3,062


def test_000_ex9_3_kv_reads_ignored():
    # The seed's step reads only the 35 GB of weights. Each of the 32 sequences also reads its KV cache
    # (320 KiB per token of context): at a mean context of 2,048 tokens that is 21.5 GB more per step,
    # so a GPU makes ~1,900 tok/s, not 3,062.
    kv_seq = 2048 * 320 * KiB
    real = serving.decode_throughput(35e9, H100_BW, batch=32, kv_bytes_per_seq=kv_seq)
    assert real.value == pytest.approx(1898, abs=1)
    assert 3062 / real.value == pytest.approx(1.61, abs=0.01)


def test_000_ex9_4_number_of_gpus():
    r = serving.replicas_needed(90_000, 3000, headroom=0.20)
    assert r.inputs["base"] == 30
    assert r.value == 36
    # with the unrounded 3,062 tok/s: ceil(29.4) = 30 → 36 as well
    assert serving.replicas_needed(90_000, 3062.86, 0.20).value == 36
    assert math.ceil(36 / 8) == 5  # "about 4.5 nodes … round to 5 nodes"


def test_000_ex9_5_kv_cache_memory_budget():
    kv_req = 320 * KiB * 4096
    assert kv_req / KiB == 1_310_720 and kv_req / GiB == 1.25
    # The seed divides 40 "GB" (80 − 35 − 5, decimal) by 1.25 GiB: 40 / 1.25 = 32. In one unit system:
    # 40e9 B / 1.342e9 B = 29.8 → 29 requests (decimal 80 GB) — what the planner gives for an 80e9-byte
    # H100 — or, with the H100's physical 80 GiB of HBM, (80 GiB − 35 GB − 5 GB) / 1.25 GiB = 34.
    assert math.floor(40e9 / kv_req) == 29
    assert math.floor((80 * GiB - 35e9 - 5e9) / kv_req) == 34
    decimal = plan_serving("llama-3.1-70b", "h100", tp=1, n_params=70e9, usd_per_hour=2.20)
    assert decimal.kv_concurrency_per_replica == 29
    physical = plan_serving(
        "llama-3.1-70b", "h100", tp=1, n_params=70e9, usd_per_hour=2.20, gpu_memory_bytes=80 * GiB
    )
    assert physical.kv_concurrency_per_replica == 34 >= 32


def test_000_ex9_6_latency_check():
    pre = serving.prefill_time(4096, 70e9, H100_FLOPS)
    assert pre.steps[0].value == pytest.approx(573.44e12)
    assert pre.value == pytest.approx(0.5792, abs=5e-5)
    assert pre.value < 2.0
    # The seed writes 2 × 70e9 × 4096 = "573.7 × 10^12" (it is 573.44 × 10^12), and 573.7 / 990 rounds
    # to its 580 ms; the right figure is 579 ms, 0.14% less: "~580 ms" stands.
    assert 0.580 / pre.value - 1 == pytest.approx(0.0013, abs=1e-4)


def test_000_ex9_7_monthly_cost():
    assert cost.monthly_bill(36, 2.20).value == pytest.approx(57_024)
    assert 57_024 / 10_000 == pytest.approx(5.70, abs=0.01)  # per user per month
    assert (20 - 5.70) / 20 == pytest.approx(0.715)


def test_000_ex9_8_cost_per_million_tokens():
    c = cost.cost_per_million_from_bill(57_024, 90_000)
    assert c.steps[0].value == pytest.approx(233.28e9)
    assert c.value == pytest.approx(0.244, abs=5e-4)


def test_000_ch9_capstone_whole_chain_from_one_call():
    """The solver reproduces 9.1 → 9.8 from the scenario's inputs in one call.

    The seed's premises: 70B params, INT4, 3.35 TB/s, 990 TFLOPS, batch 32 (ex. 9.3), 5 GB overhead,
    80 GB per GPU. Its 32 requests per GPU need the H100's physical 80 GiB (see ex. 9.5), with which
    the KV cache holds 34 and the batch of 32 binds.
    """
    p = plan_serving(
        "llama-3.1-70b",
        "h100",
        weight_dtype="int4",
        users=10_000,
        active_fraction=0.30,
        tok_per_s_per_user=30,
        context_tokens=4096,
        ttft_target_s=2.0,
        headroom=0.20,
        usd_per_hour=2.20,
        max_batch=32,
        gpu_memory_bytes=80 * GiB,
        n_params=70e9,
    )
    assert p.required_tok_per_s == pytest.approx(90_000)
    assert p.tp == 1
    assert p.requests_per_gpu == 32 and p.binding == "max batch"
    assert p.tok_per_s_per_gpu == pytest.approx(3062, abs=1)
    assert p.gpus == 36 and p.nodes == 5
    assert p.prefill_s == pytest.approx(0.580, abs=1e-3)  # 989 TFLOPS preset: 0.5798 s
    assert p.latency_ok
    assert p.monthly_usd == pytest.approx(57_024)
    assert p.usd_per_million_tokens == pytest.approx(0.244, abs=5e-4)
    assert any("KV cache" in w for w in p.warnings)


def test_000_ch9_capstone_with_exact_llama_params():
    # Same plan with Llama-3.1-70B's exact 70.55B parameters: 35.28 GB of int4 weights, still 36 GPUs.
    p = plan_serving("llama-3.1-70b", "h100", usd_per_hour=2.20, max_batch=32, gpu_memory_bytes=80 * GiB)
    assert p.gpus == 36 and p.requests_per_gpu == 32
    assert p.prefill_s == pytest.approx(0.584, abs=1e-3)
    assert p.usd_per_million_tokens == pytest.approx(0.244, abs=5e-4)
