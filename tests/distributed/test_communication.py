"""The communicator's per-step counts against the planner: all-reduced bytes per step =
tp_allreduce_bytes_per_layer × layers (two all-reduces a layer), plus the embedding's all-reduce and
the gathered logits."""

from __future__ import annotations

from nanoserve import SamplingParams
from nanoserve.distributed.communicator import wire_bytes_per_rank
from nanoserve.planner.parallel import tp_allreduce_bytes_per_layer

HIDDEN, LAYERS, VOCAB, FP32 = 64, 2, 128, 4  # tests/tiny_models.py's llama


def test_bytes_per_step_match_the_planner(tiny_llama, make_llm):
    llm = make_llm(tiny_llama, 2, enable_prefix_caching=False)
    engine = llm.llm_engine
    comm = engine.runner.step_sink.comm
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    engine.add_request("a", [5, 6, 7, 8, 9], params)
    engine.add_request("b", [10, 11, 12, 13, 14, 15, 16], params)

    engine.step()  # both prompts in one prefill step: 12 tokens, 2 sampling rows
    tokens = 12
    planned = tp_allreduce_bytes_per_layer(1, tokens, HIDDEN, tp=2, bytes_per_element=FP32).value * LAYERS
    assert wire_bytes_per_rank(comm.step.bytes("layer"), 2) == planned
    # the workbook's "≈ 1 × the message" form counts the payload itself
    assert comm.step.bytes("layer") == tp_allreduce_bytes_per_layer(
        1, tokens, HIDDEN, tp=2, bytes_per_element=FP32, ring=False).value * LAYERS
    assert comm.step.calls("layer") == 2 * LAYERS
    assert comm.step.bytes("embedding") == tokens * HIDDEN * FP32
    assert comm.step.bytes("logits") == 2 * VOCAB * FP32  # 2 rows × (2 ranks × 64 vocab rows)

    engine.step()  # a decode step of batch 2
    planned = tp_allreduce_bytes_per_layer(2, 1, HIDDEN, tp=2, bytes_per_element=FP32).value * LAYERS
    assert wire_bytes_per_rank(comm.step.bytes("layer"), 2) == planned
    assert comm.step.bytes("control") > 0 and comm.step.seconds > 0
    assert comm.total.bytes("layer") > comm.step.bytes("layer")
