"""The runner chooses the kernels once and the layers use exactly those: the reference kernels never
reach native code, whatever is loaded in the process, and native kernels handed in are the ones called."""

from __future__ import annotations

import pytest

from nanoserve import LLM, SamplingParams
from nanoserve.model import native_kernels
from nanoserve.model.kernels import NativeCpuKernels, TorchKernels

GREEDY = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
PROMPTS = [{"prompt_token_ids": [5, 9, 33, 7, 100, 3]}, {"prompt_token_ids": list(range(10, 40))}]
NATIVE_OPS = ("add_rms_norm", "silu_mul", "rope_cache", "argmax_rows", "decode_attention")


def _loaded_extension():
    ext = native_kernels.load_native_kernels()
    if ext is None:
        pytest.skip(f"native kernels unavailable: {native_kernels.unavailable_reason()}")
    return ext


def _kernels_of_every_layer(runner) -> set[int]:
    return {id(m.kernels) for m in runner.model.modules() if hasattr(m, "kernels")}


def test_reference_kernels_never_call_native_code(tiny_model, monkeypatch):
    ext = _loaded_extension()  # loaded in this process, and every entry point booby-trapped

    def trap(*args, **kwargs):
        raise AssertionError("native code called by a run that chose the reference kernels")

    for op in NATIVE_OPS:
        monkeypatch.setattr(ext, op, trap)
    monkeypatch.setenv("NANOSERVE_DISABLE_NATIVE_KERNELS", "1")
    llm = LLM(str(tiny_model("qwen2")), num_gpu_blocks_override=32, block_size=4)
    runner = llm.llm_engine.runner
    assert type(runner.kernels) is TorchKernels and runner.attention_backend.name == "torch"
    assert _kernels_of_every_layer(runner) == {id(runner.kernels)}
    assert runner.sampler.kernels is runner.kernels
    outs = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    assert all(len(o.outputs[0].token_ids) == GREEDY.max_tokens for o in outs)


def test_native_kernels_handed_in_are_the_ones_called(tiny_model, monkeypatch):
    ext = _loaded_extension()
    calls = dict.fromkeys(NATIVE_OPS, 0)

    def counting(op):
        real = getattr(ext, op)

        def call(*args, **kwargs):
            calls[op] += 1
            return real(*args, **kwargs)

        return call

    for op in NATIVE_OPS:
        monkeypatch.setattr(ext, op, counting(op))
    monkeypatch.delenv("NANOSERVE_DISABLE_NATIVE_KERNELS", raising=False)
    # the fused decode step calls them through their native table, not these attributes
    monkeypatch.setenv("NANOSERVE_DISABLE_FUSED_DECODE", "1")
    llm = LLM(str(tiny_model("qwen2")), num_gpu_blocks_override=32, block_size=4)
    runner = llm.llm_engine.runner
    assert isinstance(runner.kernels, NativeCpuKernels) and runner.kernels.ext is ext
    assert _kernels_of_every_layer(runner) == {id(runner.kernels)}
    llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    assert all(n > 0 for n in calls.values()), calls


def test_bind_kernels_reaches_every_layer_and_is_what_a_forward_uses(tiny_model):
    llm = LLM(str(tiny_model("llama")), num_gpu_blocks_override=32, block_size=4)
    runner = llm.llm_engine.runner

    class Recording(TorchKernels):
        def __init__(self) -> None:
            self.ops: list[str] = []

        def add_rms_norm(self, *args):
            self.ops.append("add_rms_norm")
            return super().add_rms_norm(*args)

        def silu_mul(self, *args):
            self.ops.append("silu_mul")
            return super().silu_mul(*args)

        def rope_cache(self, *args):
            self.ops.append("rope_cache")
            return super().rope_cache(*args)

    recording = Recording()
    runner.model.bind_kernels(recording)
    assert _kernels_of_every_layer(runner) == {id(recording)}
    llm.generate(PROMPTS[:1], SamplingParams(temperature=0.0, max_tokens=1), use_tqdm=False)
    layers = runner.model_config.num_layers
    assert recording.ops.count("rope_cache") == layers
    assert recording.ops.count("silu_mul") == layers
    assert recording.ops.count("add_rms_norm") == 2 * layers + 1  # two per layer and the final norm
