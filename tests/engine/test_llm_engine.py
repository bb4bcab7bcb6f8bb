"""LLMEngine end to end on tiny random checkpoints: greedy tokens identical to transformers under
queueing, preemption, chunked prefill and prefix caching; bad requests rejected without harming others."""

from __future__ import annotations

import random

import pytest
import torch

from nanoserve import SamplingParams
from nanoserve.errors import InvalidRequestError, PromptTooLongError

VARIANTS = ["llama", "llama_mqa", "llama_tied", "llama3_rope", "mistral", "qwen2", "qwen3"]
MAX_TOKENS = 8


def make_prompts(seed: int = 0, vocab: int = 128) -> list[list[int]]:
    """16+ prompts, 1 to 300 tokens; four share a 120-token prefix, two share a 40-token one."""
    rng = random.Random(seed)

    def rand(n: int) -> list[int]:
        return [rng.randrange(3, vocab) for _ in range(n)]

    prompts = [rand(n) for n in (1, 2, 3, 5, 8, 13, 31, 64, 100, 150, 211, 300)]
    long_prefix, short_prefix = rand(120), rand(40)
    prompts += [long_prefix + rand(n) for n in (1, 7, 20, 33)]
    prompts += [short_prefix + rand(n) for n in (3, 16)]
    return prompts


_hf_cache: dict[str, object] = {}


def hf_greedy(path, prompt: list[int], max_tokens: int = MAX_TOKENS) -> list[int]:
    """transformers' fp32 greedy continuation (full recompute per token, no KV cache)."""
    from transformers import AutoModelForCausalLM

    key = str(path)
    if key not in _hf_cache:
        _hf_cache[key] = AutoModelForCausalLM.from_pretrained(key, dtype=torch.float32).eval()
    model = _hf_cache[key]
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(max_tokens):
            logits = model(torch.tensor([ids])).logits[0, -1]
            ids.append(int(logits.argmax()))
    return ids[len(prompt) :]


@pytest.mark.parametrize("variant", VARIANTS)
def test_greedy_matches_transformers_under_pressure(variant, make_llm, tiny_model):
    """Pool of 24 blocks x 16 (384 tokens) for ~1900 prompt tokens; 48-token chunks; prefix caching on."""
    llm = make_llm(variant, num_gpu_blocks_override=24, block_size=16, max_num_batched_tokens=48)
    prompts = make_prompts()
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    stats = llm.llm_engine.get_stats()
    assert stats.num_preemptions > 0
    assert stats.prefix_cache_hits > 0
    assert stats.generation_tokens == MAX_TOKENS * len(prompts)
    path = tiny_model(variant)
    for prompt, out in zip(prompts, outs, strict=True):
        assert out.prompt_token_ids == prompt
        assert out.finished and out.outputs[0].finish_reason == "length"
        assert out.outputs[0].token_ids == hf_greedy(path, prompt), f"prompt of {len(prompt)} tokens"


def test_chunked_prefill_off_and_prefix_caching_off_give_the_same_tokens(make_llm, tiny_model):
    llm = make_llm(
        "qwen3",
        num_gpu_blocks_override=20,
        block_size=16,
        enable_chunked_prefill=False,
        enable_prefix_caching=False,
        max_model_len=320,
    )
    prompts = make_prompts(seed=1)
    outs = llm.generate(
        [{"prompt_token_ids": p} for p in prompts],
        SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True),
        use_tqdm=False,
    )
    stats = llm.llm_engine.get_stats()
    assert stats.prefix_cache_hits == 0 and stats.num_preemptions > 0
    path = tiny_model("qwen3")
    for prompt, out in zip(prompts, outs, strict=True):
        assert out.outputs[0].token_ids == hf_greedy(path, prompt)


def test_bfloat16_runs_and_mostly_agrees(make_llm, tiny_model):
    llm = make_llm("llama", dtype="bfloat16")
    assert llm.llm_engine.model_config.dtype == "bfloat16"
    prompts = make_prompts()[:6]
    outs = llm.generate(
        [{"prompt_token_ids": p} for p in prompts],
        SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True),
        use_tqdm=False,
    )
    first = [o.outputs[0].token_ids[0] for o in outs]
    ref = [hf_greedy(tiny_model("llama"), p, 1)[0] for p in prompts]
    assert sum(a == b for a, b in zip(first, ref, strict=True)) >= 5


# ---- requests that can never run -------------------------------------------------------------------


def _run_all(engine, max_steps: int = 1000) -> dict:
    done = {}
    for _ in range(max_steps):
        if not engine.has_unfinished_requests():
            break
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out
    assert not engine.has_unfinished_requests()
    return done


def _add_good(engine, n: int = 3) -> list[str]:
    ids = [f"good{i}" for i in range(n)]
    for i, rid in enumerate(ids):
        engine.add_request(
            rid, [5 + i] * (3 + i), SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
        )
    return ids


@pytest.mark.parametrize(
    ("prompt", "error", "param"),
    [
        ([7] * 64, PromptTooLongError, "prompt"),  # == max_model_len
        ([7] * 100, PromptTooLongError, "prompt"),
        ([], InvalidRequestError, "prompt"),
        ("", InvalidRequestError, "prompt"),
        ([1, 2, 999], InvalidRequestError, "prompt"),  # outside the vocabulary
        ({"nothing": 1}, InvalidRequestError, "prompt"),
    ],
)
def test_bad_prompt_is_rejected_and_others_complete(make_llm, prompt, error, param):
    llm = make_llm(max_model_len=64)
    engine = llm.llm_engine
    good = _add_good(engine)
    with pytest.raises(error) as info:
        engine.add_request("bad", prompt, SamplingParams())
    assert info.value.param == param
    done = _run_all(engine)
    assert sorted(done) == good and all(len(done[g].outputs[0].token_ids) == 4 for g in good)


def test_prompt_needing_more_blocks_than_the_pool_is_rejected(make_llm):
    llm = make_llm(num_gpu_blocks_override=4, block_size=8)  # 32 tokens in the whole pool
    engine = llm.llm_engine
    good = _add_good(engine)
    with pytest.raises(PromptTooLongError, match="KV blocks"):
        engine.add_request("big", [9] * 32, SamplingParams())  # 32 + 1 tokens need 5 blocks
    engine.add_request("fits", [9] * 31, SamplingParams(max_tokens=50, ignore_eos=True))
    done = _run_all(engine)
    assert sorted(done) == sorted(good + ["fits"])
    assert len(done["fits"].outputs[0].token_ids) == 1  # clamped to what the pool holds
    assert done["fits"].outputs[0].finish_reason == "length"


def test_duplicate_request_id_is_rejected(make_llm):
    engine = make_llm().llm_engine
    good = _add_good(engine)
    with pytest.raises(InvalidRequestError, match="already in use") as info:
        engine.add_request(good[0], [3, 4], SamplingParams())
    assert info.value.param == "request_id"
    assert sorted(_run_all(engine)) == good


def test_max_tokens_clamped_to_the_context(make_llm):
    engine = make_llm(max_model_len=32).llm_engine
    engine.add_request("r", [5] * 30, SamplingParams(max_tokens=100, ignore_eos=True))
    out = _run_all(engine)["r"].outputs[0]
    assert len(out.token_ids) == 2 and out.finish_reason == "length"


def test_abort_of_a_running_request_frees_it_and_others_complete(make_llm):
    engine = make_llm().llm_engine
    good = _add_good(engine)
    engine.add_request("victim", [8] * 20, SamplingParams(max_tokens=200, ignore_eos=True, n=2))
    done = {}
    for _ in range(3):
        done.update({o.request_id: o for o in engine.step() if o.finished})
    assert "victim" in engine.requests and len(engine.requests["victim"].children) == 2
    stats = engine.get_stats()
    assert stats.num_running == 5 and stats.num_running_requests == 4  # victim's 2 count as one request
    used_before = stats.num_used_blocks
    engine.abort_request("victim")
    engine.abort_request(["unknown-id"])  # ignored
    assert engine.get_stats().num_used_blocks < used_before
    outs = engine.step()
    done.update({o.request_id: o for o in outs if o.finished and o.request_id != "victim"})
    aborted = [o for o in outs if o.request_id == "victim"]
    assert aborted and aborted[0].finished
    assert {c.finish_reason for c in aborted[0].outputs} == {"abort"}
    done.update(_run_all(engine))
    assert sorted(done) == good
    assert all(len(done[g].outputs[0].token_ids) == 4 for g in good)


# ---- outputs, metrics, counters ----------------------------------------------------------------------


def test_step_outputs_are_cumulative_and_metrics_are_ordered(make_llm):
    engine = make_llm().llm_engine
    engine.add_request("r", "hello", SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True))
    seen = []
    while engine.has_unfinished_requests():
        for out in engine.step():
            seen.append(list(out.outputs[0].token_ids))
            last = out
    assert [len(s) for s in seen] == [1, 2, 3, 4, 5]
    assert all(seen[i] == seen[-1][: i + 1] for i in range(5))
    assert last.prompt == "hello" and last.outputs[0].text == engine.tokenizer.decode(seen[-1])
    m = last.metrics
    assert (
        m.arrival_time <= m.first_scheduled_time <= m.first_token_time <= m.last_token_time <= m.finished_time
    )
    assert m.ttft_s > 0 and m.tpot_s > 0 and m.e2e_s >= m.ttft_s and m.queue_s >= 0
    stats = engine.get_stats()
    assert stats.prompt_tokens == 5 and stats.generation_tokens == 5
    assert stats.num_running == stats.num_waiting == 0 and stats.kv_cache_usage == 0.0


def test_n_completions_share_the_prompt_and_finish(make_llm):
    llm = make_llm(max_num_batched_tokens=37)  # one prompt per step: the later completions hit the cache
    engine = llm.llm_engine
    params = SamplingParams(n=3, temperature=1.0, seed=7, max_tokens=6, ignore_eos=True)
    engine.add_request("r", [4] * 37, params)  # 2 full blocks + a partial one
    engine.step()  # completion 0 prefills
    engine.step()  # 1 and 2 take its 2 full blocks from the prefix cache
    seqs = [c.seq for c in engine.requests["r"].children]
    assert len(seqs) == 3 and seqs[0].block_table[:2] == seqs[1].block_table[:2] == seqs[2].block_table[:2]
    assert engine.get_stats().prefix_cache_hits == 2 * 32
    out = _run_all(engine)["r"]
    assert [c.index for c in out.outputs] == [0, 1, 2]
    assert all(len(c.token_ids) == 6 for c in out.outputs)
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1  # different streams per completion
    again = llm.generate({"prompt_token_ids": [4] * 37}, params, use_tqdm=False)[0]
    assert [c.token_ids for c in again.outputs] == [c.token_ids for c in out.outputs]  # seeded


def test_n_siblings_start_after_completion_0_and_compute_only_the_prompts_tail(make_llm):
    llm = make_llm(block_size=16)
    engine = llm.llm_engine
    prompt = [random.Random(3).randrange(3, 128) for _ in range(70)]  # 4 full blocks + 6 tokens
    params = SamplingParams(n=4, temperature=1.0, seed=3, max_tokens=4, ignore_eos=True)
    engine.add_request("r", prompt, params)
    stats = engine.get_stats()  # only completion 0 is queued, and the request counts as waiting
    assert (stats.num_waiting, stats.num_waiting_requests, stats.num_running_requests) == (1, 1, 0)
    assert engine.has_unfinished_requests()
    (out,) = engine.step()
    assert [len(c.token_ids) for c in out.outputs] == [1, 0, 0, 0] and not out.finished
    stats = engine.get_stats()  # the siblings joined the queue behind the running completion 0
    assert (stats.num_running, stats.num_waiting) == (1, 3)
    assert (stats.num_running_requests, stats.num_waiting_requests) == (1, 0)
    out = _run_all(engine)["r"]
    stats = engine.get_stats()
    assert stats.prompt_tokens == 70 + 3 * 6 and stats.prefix_cache_hits == 3 * 64
    assert [c.index for c in out.outputs] == [0, 1, 2, 3] and all(len(c.token_ids) == 4 for c in out.outputs)
    # Seeded streams do not depend on when a completion ran: all four start together without the cache.
    again = make_llm(block_size=16, enable_prefix_caching=False).generate(
        {"prompt_token_ids": prompt}, params, use_tqdm=False
    )[0]
    assert [c.token_ids for c in again.outputs] == [c.token_ids for c in out.outputs]


def test_staged_siblings_keep_their_place_ahead_of_later_requests(make_llm):
    engine = make_llm(block_size=16, max_num_batched_tokens=40).llm_engine  # one 40-token prompt a step
    engine.add_request("a", [4] * 40, SamplingParams(n=3, max_tokens=3, ignore_eos=True))
    engine.add_request("b", [5] * 40, SamplingParams(max_tokens=3, ignore_eos=True))
    engine.step()
    assert [s.request.request_id for s in engine.scheduler.waiting] == ["1_a", "2_a", "b"]
    assert sorted(_run_all(engine)) == ["a", "b"]


@pytest.mark.parametrize("stop_at_first", [False, True])
def test_completion_0_finishing_at_its_first_token_still_runs_its_siblings(make_llm, stop_at_first):
    prompt = {"prompt_token_ids": [7] * 40}  # 2 full blocks + 8 tokens
    greedy = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    ref = make_llm(enable_prefix_caching=False).generate(prompt, greedy, use_tqdm=False)[0]
    first = ref.outputs[0].token_ids[0]
    llm = make_llm(block_size=16)  # an empty prefix cache
    params = greedy.clone(n=4, max_tokens=5, stop_token_ids=[first]) if stop_at_first else greedy.clone(n=4)
    out = llm.generate(prompt, params, use_tqdm=False)[0]
    assert [c.token_ids for c in out.outputs] == [[first]] * 4
    assert {c.finish_reason for c in out.outputs} == {"stop" if stop_at_first else "length"}
    stats = llm.llm_engine.get_stats()  # the siblings hit the blocks completion 0 left in the cache
    assert stats.prompt_tokens == 40 + 3 * 8 and stats.prefix_cache_hits == 3 * 32


def test_abort_before_the_siblings_start_never_queues_them(make_llm):
    engine = make_llm(block_size=16, max_num_batched_tokens=32).llm_engine
    engine.add_request("r", [6] * 70, SamplingParams(n=3, max_tokens=4, ignore_eos=True))
    engine.step()  # completion 0 computes its first 32-token chunk
    assert engine.scheduler.num_running == 1 and engine.scheduler.num_waiting == 0
    engine.abort_request("r")
    (out,) = engine.step()
    assert out.finished and [(c.finish_reason, c.token_ids) for c in out.outputs] == [("abort", [])] * 3
    assert not engine.has_unfinished_requests() and not engine.scheduler.has_unfinished()
    assert engine.step() == []  # nothing is queued later


def test_eos_stops_with_reason_stop(make_llm):
    llm = make_llm()
    eos = llm.llm_engine.model_config.eos_token_ids[0]
    greedy = llm.generate(
        {"prompt_token_ids": [3, 4, 5]},
        SamplingParams(temperature=0.0, max_tokens=1, stop_token_ids=None),
        use_tqdm=False,
    )
    first = greedy[0].outputs[0].token_ids[0]
    out = llm.generate(
        {"prompt_token_ids": [3, 4, 5]},
        SamplingParams(temperature=0.0, max_tokens=5, stop_token_ids=[first]),
        use_tqdm=False,
    )[0]
    c = out.outputs[0]
    assert c.token_ids == [first] and c.finish_reason == "stop" and c.stop_reason == first
    assert eos in llm.llm_engine.model_config.eos_token_ids


def test_greedy_siblings_through_the_prefix_cache_and_preemption_match_transformers(make_llm, tiny_model):
    """n=3 greedy: every sibling must produce transformers' tokens, so the blocks they share through the
    prefix cache, and those they recompute after preemption, hold the right K/V."""
    llm = make_llm("qwen3", num_gpu_blocks_override=16, block_size=8, max_num_batched_tokens=40)
    prompts = [p for p in make_prompts(seed=2) if 5 <= len(p) <= 100][:6]
    params = SamplingParams(n=3, temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    assert llm.llm_engine.get_stats().num_preemptions > 0
    path = tiny_model("qwen3")
    for prompt, out in zip(prompts, outs, strict=True):
        ref = hf_greedy(path, prompt)
        assert [c.token_ids for c in out.outputs] == [ref] * 3


def test_mixed_workload_with_aborts_finishes_everything_and_frees_the_pool(make_llm):
    llm = make_llm(
        "llama_mqa", num_gpu_blocks_override=12, block_size=8, max_num_batched_tokens=32, max_num_seqs=6
    )
    engine = llm.llm_engine
    rng = random.Random(5)
    for i in range(20):
        params = SamplingParams(
            n=rng.choice([1, 1, 2, 3]),
            temperature=rng.choice([0.0, 0.7, 1.0]),
            top_k=rng.choice([-1, 5]),
            seed=rng.choice([None, i]),
            stop=rng.choice([None, ["ab"]]),
            max_tokens=rng.randint(1, 20),
            presence_penalty=rng.choice([0.0, 0.5]),
        )
        engine.add_request(f"r{i}", [rng.randrange(3, 128) for _ in range(rng.randint(1, 60))], params)
    finished: dict = {}
    aborted: list[str] = []
    for step in range(10_000):
        if step == 4:
            aborted = sorted(engine.requests)[:3]  # still unfinished, some running, some waiting
            assert len(aborted) == 3
            engine.abort_request(aborted)
        for out in engine.step():
            if out.finished:
                assert out.request_id not in finished
                finished[out.request_id] = out
        if not engine.has_unfinished_requests():
            break
    assert set(finished) == {f"r{i}" for i in range(20)}
    for rid, out in finished.items():
        reasons = {c.finish_reason for c in out.outputs}
        assert reasons == {"abort"} if rid in aborted else reasons <= {"stop", "length"}
    assert engine.get_stats().num_preemptions > 0
