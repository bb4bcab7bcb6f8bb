"""The draft model's dtype (speculative_config "dtype"): "auto" runs an fp32 target's draft in bf16 where
the native bf16 kernels are, which changes neither the output nor (on the demo tasks) the acceptance,
and the draft's KV pool is sized in the draft's own dtype."""

from __future__ import annotations

import pytest
from spec_configs import draft

from nanoserve.demo_tasks import TASKS, held_out_problems
from nanoserve.model.cpu_linear import load_avx512_kernel
from nanoserve.sampling_params import SamplingParams

PROMPTS = [p.prompt for task in TASKS for p in held_out_problems(task, 8)]
GREEDY = SamplingParams(temperature=0, max_tokens=40)


def _draft_weight_dtype(llm):
    return next(llm.llm_engine.proposer.runner.model.parameters()).dtype


def _generate(llm):
    outs = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs], llm.llm_engine.get_stats().spec_decode_num_accepted_tokens


def test_auto_runs_an_fp32_targets_draft_in_bf16_with_the_same_output(demo_llm):
    import torch

    auto = demo_llm(speculative_config=draft(5), max_num_seqs=4)
    assert auto.llm_engine.model_config.dtype == "float32"
    expected = torch.bfloat16 if load_avx512_kernel() is not None else torch.float32
    assert _draft_weight_dtype(auto) == expected
    fp32 = demo_llm(speculative_config={**draft(5), "dtype": "float32"}, max_num_seqs=4)
    assert _draft_weight_dtype(fp32) == torch.float32
    off = demo_llm(max_num_seqs=4)
    out_auto, accepted_auto = _generate(auto)
    out_fp32, accepted_fp32 = _generate(fp32)
    plain = [o.outputs[0].token_ids for o in off.generate(PROMPTS, GREEDY, use_tqdm=False)]
    assert out_auto == out_fp32 == plain
    assert accepted_auto >= 0.95 * accepted_fp32 > 0


def test_an_explicit_draft_dtype_is_used_and_its_kv_pool_is_sized_in_it(demo_llm):
    import torch

    budget = {"kv_cache_memory_bytes": 4 << 20, "max_num_seqs": 2}
    bf16 = demo_llm(speculative_config={**draft(3), "dtype": "bfloat16"}, **budget)
    fp32 = demo_llm(speculative_config={**draft(3), "dtype": "float32"}, **budget)
    assert _draft_weight_dtype(bf16) == torch.bfloat16
    # The same bytes hold more blocks for both pools when the draft's K/V take half the bytes.
    assert bf16.llm_engine.cache_config.num_blocks > fp32.llm_engine.cache_config.num_blocks
    assert _generate(bf16)[0] == _generate(fp32)[0]


@pytest.mark.parametrize("bad, words", [
    ({**draft(2), "dtype": "int8"}, "dtype"),
    ({"method": "ngram", "num_speculative_tokens": 2, "dtype": "bfloat16"}, "draft_model"),
])
def test_bad_draft_dtypes_say_why(bad, words):
    from nanoserve.engine.spec_decode.config import parse_speculative_config
    from nanoserve.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError, match=words):
        parse_speculative_config(bad)
