"""Logits of our decoder over the paged cache against transformers' (fp32), for prefill and decode."""

from __future__ import annotations

import pytest
import torch

from nanoserve import LLM, SamplingParams
from nanoserve.model.layers import rope_inv_freq

VARIANTS = ["llama", "llama_mqa", "llama_tied", "llama3_rope", "mistral", "qwen2", "qwen3"]


class RecordingSampler:
    """Wraps the engine's sampler and keeps (context token ids, logits row) for every sampled row."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.rows: list[tuple[list[int], torch.Tensor]] = []

    def __call__(self, logits, meta):
        for i in range(logits.shape[0]):
            context = list(meta.prompt_token_ids[i]) + list(meta.output_token_ids[i])
            self.rows.append((context, logits[i].clone()))
        return self.inner(logits, meta)


@pytest.mark.parametrize("variant", VARIANTS)
def test_prefill_and_decode_logits_match_transformers(variant, tiny_model):
    from transformers import AutoModelForCausalLM

    path = tiny_model(variant)
    # Small blocks and a 24-token budget: chunked prefill over several blocks, decode across block edges.
    llm = LLM(str(path), num_gpu_blocks_override=64, block_size=4, max_num_batched_tokens=24)
    runner = llm.llm_engine.runner
    runner.sampler = RecordingSampler(runner.sampler)
    prompts = [[5, 9, 33, 7, 100, 3], list(range(10, 67)), [42], list(range(10, 40)) + [7, 7]]
    llm.generate(
        [{"prompt_token_ids": p} for p in prompts],
        SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True),
        use_tqdm=False,
    )
    llm.llm_engine.check_all_blocks_free()
    rows = runner.sampler.rows
    assert len(rows) == 5 * len(prompts)
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    with torch.no_grad():
        for context, ours in rows:
            ref = hf(torch.tensor([context])).logits[0, -1]
            scale = ref.abs().max().item()
            torch.testing.assert_close(ours, ref, rtol=0, atol=1e-4 * max(1.0, scale))
    decodes = [c for c, _ in rows if len(c) not in {len(p) for p in prompts}]
    assert decodes, "decode steps were checked too"


def test_llama3_rope_scaling_changes_only_low_frequencies():
    base = rope_inv_freq(64, {"rope_theta": 500000.0})
    scaled = rope_inv_freq(
        64,
        {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    )
    assert torch.equal(scaled[:4], base[:4])  # high frequencies untouched
    torch.testing.assert_close(scaled[-1], base[-1] / 8.0)  # lowest frequency divided by the factor
