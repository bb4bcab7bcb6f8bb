"""The baselines: transformers `generate`, greedy, ignore_eos (min_new_tokens = max_new_tokens).

- ``hf``: one request at a time — what a naive server does.
- ``hf-batched``: static batches of `batch_size` requests in arrival order, prompts left-padded to the
  longest of the batch, every request of the batch decoding until the batch's longest output is
  done — what batching without an engine gives.

Both count the tokens the requests asked for (the extra tokens a static batch computes for its
shorter requests are the waste a continuous-batching engine avoids).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from nanoserve.bench.dataset import BenchRequest


@dataclass
class BaselineRun:
    elapsed_s: float
    output_token_ids: list[list[int]]  # per request, in input order
    load_s: float


def load_hf_model(model_dir: str, dtype: str = "auto"):
    import torch
    import transformers

    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype)
    model.eval()
    return model


def _generate(model, input_ids, attention_mask, max_new_tokens: int, streamer=None):
    pad = model.generation_config.pad_token_id
    if pad is None:
        pad = 0
    return model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        do_sample=False,
        max_new_tokens=max_new_tokens,
        min_new_tokens=max_new_tokens,
        pad_token_id=pad,
        temperature=None,
        streamer=streamer,
        top_p=None,
        top_k=None,
    )


def run_hf(
    model_dir: str,
    requests: list[BenchRequest],
    batch_size: int = 1,
    dtype: str = "auto",
    progress: bool = False,
) -> BaselineRun:
    """Generate every request with transformers; batch_size 1 = `hf`, > 1 = `hf-batched`."""
    import torch

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    t0 = time.perf_counter()
    model = load_hf_model(model_dir, dtype)
    load_s = time.perf_counter() - t0
    outputs: list[list[int]] = [[] for _ in requests]
    n = len(requests)
    batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(requests), desc=f"hf (batch {batch_size})", unit="req")
    start = time.perf_counter()
    with torch.inference_mode():
        for idx in batches:
            reqs = [requests[i] for i in idx]
            width = max(r.prompt_len for r in reqs)
            ids = torch.zeros(len(reqs), width, dtype=torch.long)  # [B, width], left-padded
            mask = torch.zeros(len(reqs), width, dtype=torch.long)
            for row, r in enumerate(reqs):
                ids[row, width - r.prompt_len :] = torch.tensor(r.prompt_token_ids)
                mask[row, width - r.prompt_len :] = 1
            new = max(r.output_len for r in reqs)
            out = _generate(model, ids, mask, new)  # [B, width + new]
            for row, (i, r) in enumerate(zip(idx, reqs, strict=True)):
                outputs[i] = out[row, width : width + r.output_len].tolist()
            if bar is not None:
                bar.update(len(reqs))
    elapsed = time.perf_counter() - start
    if bar is not None:
        bar.close()
    del model
    return BaselineRun(elapsed, outputs, load_s)
