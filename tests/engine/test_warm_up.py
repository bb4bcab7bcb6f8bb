"""The CPU engine's start-up warm-up (ModelRunner.warm_up): a full step's activations before the first
request, and nothing of it left in what requests see."""

from __future__ import annotations

from nanoserve import LLM, SamplingParams
from nanoserve.engine.model_runner import ModelRunner
from nanoserve.model.llama import DecoderModel


def test_two_forwards_of_the_token_budget_at_start_up(tiny_model, monkeypatch):
    calls = []
    forward = DecoderModel.forward

    def record(self, input_ids, positions, meta):
        calls.append((input_ids.shape[0], int(positions.max()) + 1))
        return forward(self, input_ids, positions, meta)

    monkeypatch.setattr(DecoderModel, "forward", record)
    llm = LLM(model=str(tiny_model("llama")), max_num_batched_tokens=256, max_model_len=64)
    bs = llm.llm_engine.cache_config.block_size
    # 256 tokens as 4 prompts of 64 (the per-op path), then as prompts of one block (decode rows)
    assert calls == [(256, 64), (256, bs)]


def test_requests_see_the_same_tokens_with_and_without_it(tiny_model, monkeypatch):
    prompts = ["hello world", "abc " * 20, "sort 5 3 9 1 ="]
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    path = str(tiny_model("llama"))
    warm = [o.outputs[0].token_ids for o in LLM(model=path).generate(prompts, params, use_tqdm=False)]
    monkeypatch.setattr(ModelRunner, "warm_up", lambda self, *a: None)
    cold = [o.outputs[0].token_ids for o in LLM(model=path).generate(prompts, params, use_tqdm=False)]
    assert warm == cold


def test_a_budget_smaller_than_a_sequence(tiny_model, monkeypatch):
    calls = []
    forward = DecoderModel.forward

    def record(self, ids, pos, meta):
        calls.append(ids.shape[0])
        return forward(self, ids, pos, meta)

    monkeypatch.setattr(DecoderModel, "forward", record)
    LLM(model=str(tiny_model("llama")), max_num_batched_tokens=40, max_model_len=128)
    assert calls == [32, 32]  # whole blocks of the 40-token budget, once as one prompt, once as two
