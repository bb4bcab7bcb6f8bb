"""`nanoserve bench calibrate` at tiny scale: a well-formed profile that the simulator loads."""

import json

import pytest

from nanoserve.cli import main
from nanoserve.sim.step_model import ALL_FEATURES, CalibratedStepModel, StepShape


def test_calibrate_writes_a_profile_the_simulator_loads(tiny_model, tmp_path, capsys):
    out = tmp_path / "profile.json"
    rc = main(["bench", "calibrate", "--model", str(tiny_model("llama")), "--decode-batches", "1,3",
               "--contexts", "20", "--prefill-tokens", "8,16,24", "--prefill-batches", "1,2",
               "--repeats", "2", "--idle-gaps", "0.02", "--output", str(out)])
    assert rc == 0
    profile = json.loads(out.read_text())
    kinds = [s["kind"] for s in profile["samples"]]
    assert kinds == ["prefill 1x P=8", "prefill 1x P=16", "prefill 1x P=24", "prefill 2x P=8",
                     "prefill 2x P=16", "prefill 2x P=24", "decode B=1 C=20", "decode B=3 C=20",
                     "mixed B=1 C=20 P=16", "mixed B=1 C=20 P=24", "mixed B=3 C=20 P=16",
                     "mixed B=3 C=20 P=24",
                     *[f"idle 20 ms P={p}{f' decode {d}' if d else ''}" for p in (8, 16) for d in range(7)]]
    for s in profile["samples"]:
        assert s["step_s"] > 0 and s["num_steps"] >= 2
        assert set(ALL_FEATURES) <= set(s)
    by_kind = {s["kind"]: s for s in profile["samples"]}
    # the features are the scheduler's actual steps: decodes at context ~20, whole prompts as one chunk
    decode = by_kind["decode B=3 C=20"]
    assert decode["decode_batch"] == 3 and decode["prefill_tokens"] == 0
    assert 3 * 20 <= by_kind["decode B=3 C=20"]["context_tokens"] <= 3 * 24
    prefill = by_kind["prefill 2x P=24"]
    assert prefill["prefill_tokens"] == 48 and prefill["prefill_seqs"] == 2
    assert by_kind["mixed B=3 C=20 P=24"]["decode_batch"] == 3
    assert by_kind["mixed B=3 C=20 P=24"]["prefill_tokens"] == 24
    # the idle points' step follows 20 ms of idle engine (cold); every other point runs warm
    idle = by_kind["idle 20 ms P=16"]
    assert idle["cold_start"] > 0.9 and idle["prefill_tokens"] == 16
    assert all(s["cold_start"] < 0.2 for s in profile["samples"] if not s["kind"].startswith("idle"))
    # the decode steps after the wake-up are points of their own, warming less with each step
    after = [by_kind[f"idle 20 ms P=16 decode {d}"] for d in range(1, 7)]
    assert all(p["decode_batch"] == 1 and p["prefill_tokens"] == 0 and p["cold_start"] == 0 for p in after)
    warming = [p["warming"] for p in after]
    assert warming[0] > 0.5 and warming == sorted(warming, reverse=True) and warming[-1] > 0
    # the wait's overshoot and admitting the request: positive, well under the 20 ms waited
    assert 0 < profile["wake_s"] < 0.02 and idle["wake_s"] > 0
    model = CalibratedStepModel.from_file(out)
    assert model.wake_s == profile["wake_s"]
    # one idle gap: the slow part of the cold start cannot be told from the fast part, so it is left out
    assert set(model.coefficients) == set(ALL_FEATURES) - {"cold_start_slow"}
    # the fit reproduces its own decode point roughly (tiny steps are noisy; the shape is what matters)
    shape = StepShape(3, 0, int(decode["context_tokens"]), int(decode["attention_pairs"]), 3)
    assert model.step_time_s(shape) == pytest.approx(decode["step_s"], rel=0.5)
    assert profile["fit"]["coefficients"] == pytest.approx(model.coefficients)


def test_passes_repeat_the_sweep_and_keep_each_points_median(tiny_model, tmp_path):
    import statistics

    out = tmp_path / "profile.json"
    rc = main(["bench", "calibrate", "--model", str(tiny_model("llama")), "--decode-batches", "1,3",
               "--contexts", "20", "--prefill-tokens", "8,16,24", "--prefill-batches", "1",
               "--repeats", "2", "--idle-gaps", "", "--passes", "3", "--output", str(out)])
    assert rc == 0
    samples = json.loads(out.read_text())["samples"]
    assert [s["kind"] for s in samples] == [
        "prefill 1x P=8", "prefill 1x P=16", "prefill 1x P=24", "decode B=1 C=20", "decode B=3 C=20",
        "mixed B=1 C=20 P=16", "mixed B=1 C=20 P=24", "mixed B=3 C=20 P=16", "mixed B=3 C=20 P=24"]
    for s in samples:
        assert len(s["pass_step_s"]) == 3 and s["step_s"] == statistics.median(s["pass_step_s"])
    decode = samples[4]
    assert decode["num_steps"] == 3 * 3 * 2  # decode points run 3 x repeats steps a pass
    assert decode["decode_batch"] == 3 and decode["prefill_tokens"] == 0
    CalibratedStepModel.from_file(out)  # the merged profile loads


def test_decode_points_give_every_sequence_its_own_kv_blocks(tiny_model):
    # A batch of prompts sharing a cached prefix reads the same KV blocks in every row's attention, so
    # its decode steps ran 17-27% faster than a workload's of the same shape: each prompt is its own.
    from nanoserve import LLM
    from nanoserve.bench.calibrate import Calibrator

    llm = LLM(str(tiny_model("llama")), enable_prefix_caching=True)
    engine = llm.llm_engine
    cal = Calibrator(engine, vocab_size=100, repeats=1)
    ids = cal._decoding_batch(batch=3, context=40, extra_steps=2)
    seqs = [seq for seq in engine.scheduler.running if seq.request.request_id in ids]
    assert len(seqs) == 3 and all(seq.num_tokens >= 40 for seq in seqs)
    blocks = [set(seq.block_table) for seq in seqs]
    assert not (blocks[0] & blocks[1] or blocks[0] & blocks[2] or blocks[1] & blocks[2])
    cal._drain(ids)


def test_a_decode_point_keeps_its_batch_when_its_prompts_take_several_steps(tiny_model):
    # 6 prompts of 40 tokens at 64 tokens a step: the first prompts decode while the last are prefilled.
    # They used to reach max_tokens during the timed steps, and the point measured a smaller batch.
    from nanoserve import LLM
    from nanoserve.bench.calibrate import Calibrator

    llm = LLM(str(tiny_model("llama")), max_num_batched_tokens=64, enable_prefix_caching=False)
    cal = Calibrator(llm.llm_engine, vocab_size=100, repeats=2)
    assert cal.fill_steps(6, 40) == 5
    point = cal.decode(6, 40)
    assert point["decode_batch"] == 6 and point["num_steps"] == 6


def test_the_largest_batch_is_measured_when_max_model_len_caps_its_room(tiny_model):
    # 3 sequences at context 54 with max_model_len 64 hold 4 blocks each: exactly the 12-block pool. The
    # pool check counted context + decode room uncapped (66 tokens, 5 blocks) and skipped the point, so the
    # demo model's profile had no decode B=255 at its longest context and the simulator extrapolated there.
    from nanoserve import LLM
    from nanoserve.bench.calibrate import calibrate

    llm = LLM(str(tiny_model("llama")), max_model_len=64, num_gpu_blocks_override=12,
              enable_prefix_caching=False)
    points = calibrate(llm.llm_engine, 100, [3], [56], [8], (1,), repeats=2)
    decode = {p["kind"]: p for p in points}["decode B=3 C=54"]
    assert decode["decode_batch"] == 3
