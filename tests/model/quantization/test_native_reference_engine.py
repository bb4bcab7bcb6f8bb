"""The native quantized kernels against the PyTorch reference path through the whole engine: the demo
model in bf16 with int8, int4 and w8a8, greedy answers to 100 held-out demo problems.

Both engines are the same but for the QuantLinears' path (the lm_head and attention run the same native
code in both). The kernels round and sum in another order than the reference (the reference dequantizes
the weight to bf16 then multiplies in bf16; the kernels accumulate in fp32 and scale once), so a logit
near a tie may round the other way: the outputs must be identical on at least 99% of the problems (when
written, on an AVX-512 VNNI machine, they were identical on 100 of 100 for every method)."""

from __future__ import annotations

import pytest

from nanoserve import LLM, SamplingParams
from nanoserve.demo import DEMO_MODEL_NAME, MODELS_DIR
from nanoserve.demo_tasks import BUNDLED_MODEL_TASKS, grade, held_out_problems
from nanoserve.model.quantization import quant_linear as ql
from nanoserve.model.quantization.quant_linear import QuantLinear

MAIN = MODELS_DIR / DEMO_MODEL_NAME
N_PER_TASK = 25
GREEDY = SamplingParams(temperature=0.0, max_tokens=64)  # a 48-character copy fits
MIN_IDENTICAL = 0.99


def greedy_answers(method: str, prompts: list[str], native: bool,
                   monkeypatch) -> tuple[list[list[int]], set[str], list[str]]:
    """(token ids of each answer, the QuantLinears' backends, the answers' texts) of the demo model in
    bf16 with `method`."""
    with monkeypatch.context() as m:
        if not native:  # what a machine without the kernels runs: QuantLinear.prepare keeps the reference
            m.setattr(ql, "native_quant_kernels", lambda: None)
        llm = LLM(str(MAIN), dtype="bfloat16", quantization=method, seed=0, num_gpu_blocks_override=256)
    backends = {q.backend for q in llm.llm_engine.runner.model.modules() if isinstance(q, QuantLinear)}
    outs = llm.generate(prompts, GREEDY, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs], backends, [o.outputs[0].text for o in outs]


@pytest.mark.parametrize("method", ["int8", "int4", "w8a8"])
def test_native_kernels_answer_as_the_reference_path(method, monkeypatch, native_extensions_built):
    if ql.native_quant_kernels() is None:
        pytest.skip("native quantized kernels unavailable on this machine")
    problems = [p for task in BUNDLED_MODEL_TASKS for p in held_out_problems(task, N_PER_TASK)]
    prompts = [p.prompt for p in problems]
    native, native_backends, native_texts = greedy_answers(method, prompts, True, monkeypatch)
    reference, reference_backends, _ = greedy_answers(method, prompts, False, monkeypatch)
    assert native_backends == {"native"} and reference_backends == {"torch"}
    identical = sum(a == b for a, b in zip(native, reference, strict=True))
    assert identical >= MIN_IDENTICAL * len(problems), f"{identical}/{len(problems)} identical"
    # and the quantized model still does its job (int4 loses a little; the demo model is tiny)
    correct = sum(grade(p, text) for p, text in zip(problems, native_texts, strict=True))
    assert correct >= 0.9 * len(problems), f"only {correct}/{len(problems)} correct with {method}"
