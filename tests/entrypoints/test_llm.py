"""LLM.generate: prompt forms, per-prompt params, input order, progress bar, pool free afterwards."""

from __future__ import annotations

import pytest

from nanoserve import LLM, RequestOutput, SamplingParams
from nanoserve.errors import InvalidRequestError


@pytest.fixture
def llm(tiny_llama):
    llm = LLM(str(tiny_llama), num_gpu_blocks_override=64, max_num_seqs=3)
    yield llm
    assert not llm.llm_engine.has_unfinished_requests()
    llm.llm_engine.check_all_blocks_free()


def test_outputs_in_input_order_with_one_params_per_prompt(llm):
    prompts = ["abc", {"prompt_token_ids": [5, 6, 7, 8]}, "hello world", {"prompt": "xyz"}, "q"]
    params = [SamplingParams(temperature=0.0, max_tokens=k, ignore_eos=True) for k in (5, 1, 4, 2, 3)]
    outs = llm.generate(prompts, params, use_tqdm=False)
    assert all(isinstance(o, RequestOutput) and o.finished for o in outs)
    assert [len(o.outputs[0].token_ids) for o in outs] == [5, 1, 4, 2, 3]
    assert [o.prompt for o in outs] == ["abc", None, "hello world", "xyz", "q"]
    tok = llm.get_tokenizer()
    assert outs[0].prompt_token_ids == tok.encode("abc") and outs[1].prompt_token_ids == [5, 6, 7, 8]


def test_batched_greedy_equals_one_at_a_time(llm):
    prompts = ["abc", "hello world", "0123456789" * 5, "q"]
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    together = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    alone = [llm.generate(p, params, use_tqdm=False)[0].outputs[0].token_ids for p in prompts]
    assert together == alone


def test_seeded_sampling_is_the_same_alone_or_in_a_batch(llm):
    seeded = SamplingParams(temperature=1.0, seed=1234, max_tokens=8, ignore_eos=True)
    other = SamplingParams(temperature=1.0, max_tokens=8, ignore_eos=True)
    alone = llm.generate("hello", seeded, use_tqdm=False)[0].outputs[0].token_ids
    batch = llm.generate(["zzz", "hello", "ab"], [other, seeded, other], use_tqdm=False)
    assert batch[1].outputs[0].token_ids == alone


def test_single_prompt_and_default_params(llm):
    outs = llm.generate("abc", use_tqdm=False)
    assert len(outs) == 1 and 1 <= len(outs[0].outputs[0].token_ids) <= 16


def test_progress_bar_counts_prompts(llm, capsys):
    llm.generate(["a", "b", "c"], SamplingParams(max_tokens=2), use_tqdm=True)
    assert "3/3" in capsys.readouterr().err


def test_params_list_of_the_wrong_length(llm):
    with pytest.raises(InvalidRequestError, match="2 SamplingParams for 3 prompts"):
        llm.generate(["a", "b", "c"], [SamplingParams(), SamplingParams()], use_tqdm=False)


def test_a_bad_prompt_rejects_the_call_and_leaves_nothing_behind(llm):
    with pytest.raises(InvalidRequestError, match="empty"):
        llm.generate(["fine", "", "also fine"], SamplingParams(max_tokens=2), use_tqdm=False)
    outs = llm.generate(["fine"], SamplingParams(max_tokens=2), use_tqdm=False)
    assert outs[0].finished


def test_stop_string_truncates_the_text(llm):
    greedy = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    full = llm.generate("hello", greedy, use_tqdm=False)[0].outputs[0]
    assert len(full.text) >= 6
    stop = full.text[3:5]
    first = full.text.find(stop)
    out = llm.generate("hello", greedy.clone(stop=[stop]), use_tqdm=False)[0].outputs[0]
    assert out.text == full.text[:first] and out.finish_reason == "stop" and out.stop_reason == stop


def test_chat_applies_the_template(llm):
    out = llm.chat([{"role": "user", "content": "hi"}], SamplingParams(max_tokens=2), use_tqdm=False)[0]
    assert out.prompt == "<user>hi\n<assistant>"
    assert out.prompt_token_ids == llm.get_tokenizer().encode(out.prompt, add_special_tokens=False)
    two = llm.chat(
        [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]],
        SamplingParams(max_tokens=1),
        use_tqdm=False,
    )
    assert [o.prompt for o in two] == ["<user>a\n<assistant>", "<user>b\n<assistant>"]


def test_logprobs_hold_the_chosen_token_and_top_n(llm):
    out = llm.generate(
        "abc", SamplingParams(temperature=0.0, max_tokens=4, logprobs=3, ignore_eos=True), use_tqdm=False
    )[0].outputs[0]
    assert out.logprobs is not None and len(out.logprobs) == 4
    for token, lp in zip(out.token_ids, out.logprobs, strict=True):
        assert token in lp and len(lp) >= 3
        assert lp[token] == max(lp.values())  # greedy picks the most likely token


def test_min_tokens_defers_stop_tokens(llm):
    greedy = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    first = llm.generate("abc", greedy, use_tqdm=False)[0].outputs[0].token_ids[0]
    stopped = llm.generate("abc", greedy.clone(stop_token_ids=[first]), use_tqdm=False)[0].outputs[0]
    assert stopped.token_ids == [first] and stopped.finish_reason == "stop"
    out = llm.generate("abc", greedy.clone(stop_token_ids=[first], min_tokens=2), use_tqdm=False)[0].outputs[
        0
    ]
    assert len(out.token_ids) >= 2 and out.token_ids[0] != first


def test_llm_takes_every_engine_arg_and_names_an_unknown_one(tiny_llama):
    llm = LLM(str(tiny_llama), num_gpu_blocks_override=32, block_size=8, cpu_linear="torch", device="cpu",
              num_cpu_threads=1, enable_chunked_prefill=False)
    assert llm.llm_engine.cache_config.num_blocks == 32 and llm.llm_engine.cache_config.block_size == 8
    assert not llm.llm_engine.scheduler_config.enable_chunked_prefill
    with pytest.raises(TypeError, match="max_num_seq\\b"):
        LLM(str(tiny_llama), max_num_seq=4)  # a typo of max_num_seqs
    with pytest.raises(TypeError, match="bogus, nonsense"):
        LLM(str(tiny_llama), nonsense=1, bogus=2)


def test_logit_bias_forces_a_token_and_an_id_outside_the_vocabulary_is_refused(llm):
    forced = llm.get_tokenizer().encode("z", add_special_tokens=False)[0]
    for temperature in (0.0, 1.0):
        params = SamplingParams(temperature=temperature, max_tokens=4, ignore_eos=True,
                                logit_bias={forced: 100.0})
        assert llm.generate("abc", params, use_tqdm=False)[0].outputs[0].token_ids == [forced] * 4
    vocab = llm.llm_engine.model_config.vocab_size
    with pytest.raises(InvalidRequestError) as e:
        llm.generate("abc", SamplingParams(logit_bias={vocab: 1.0}), use_tqdm=False)
    assert e.value.param == "logit_bias"
