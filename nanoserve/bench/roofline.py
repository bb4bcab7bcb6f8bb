"""`nanoserve bench roofline`: this machine's limits, the model's bound, and how close the engine gets.

1. Probe: memory read bandwidth (summing a tensor far larger than the caches) and dense matmul
   FLOP/s in bf16 and fp32, with the torch threads the engine uses. Bandwidth on a shared host is
   noisy, so both the best and the median of the repeats are kept; the bound uses the best.
2. Bound, through the planner (`planner.serving.decode_step_time`, `planner.params`): a decode step
   of B sequences must read every weight once plus each sequence's KV cache, and do B·2N FLOPs;
   prefill of P tokens must do P·(2N + attention) FLOPs.
3. Measurement: the engine's decode step time at each batch (from the step profiler, steps with
   exactly B decoding sequences) and its prefill time, beside the bound:
   MBU = bytes a decode step must read / step time / bandwidth;
   MFU = FLOPs of the step / step time / peak matmul FLOP/s (reported for prefill and decode).
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Probe:
    read_gb_s_best: float
    read_gb_s_median: float
    bf16_gflop_s: float
    fp32_gflop_s: float
    threads: int


@dataclass
class RooflineRow:
    phase: str  # "decode" or "prefill"
    batch: int  # sequences (decode) or 1 (prefill)
    tokens: int  # tokens in the step
    context_len: int  # mean context of the sequences
    measured_ms: float
    bound_ms: float  # roofline lower bound at the probed peaks
    bound: str  # "memory" or "compute"
    bytes_read: float  # weights + KV the step must read
    flops: float
    mbu: float
    mfu: float
    tok_per_s: float  # decode: batch / step; prefill: tokens / step


def probe(
    threads: int | None = None, read_bytes: int = 512 << 20, repeats: int = 7, matmul_n: int = 2048
) -> Probe:
    import torch

    if threads:
        torch.set_num_threads(threads)
    x = torch.ones(read_bytes // 4, dtype=torch.float32)  # [read_bytes / 4], pages touched
    x.sum()
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        x.sum()
        rates.append(read_bytes / (time.perf_counter() - t0) / 1e9)
    del x

    def mm_rate(dtype) -> float:
        a = torch.randn(matmul_n, matmul_n).to(dtype)
        b = torch.randn(matmul_n, matmul_n).to(dtype)
        torch.mm(a, b)
        best = 0.0
        for _ in range(3):
            t0 = time.perf_counter()
            torch.mm(a, b)
            best = max(best, 2 * matmul_n**3 / (time.perf_counter() - t0) / 1e9)
        return best

    return Probe(
        max(rates),
        statistics.median(rates),
        mm_rate(torch.bfloat16),
        mm_rate(torch.float32),
        torch.get_num_threads(),
    )


def model_costs(model_dir: str):
    """(ModelSpec, weight bytes read per decode step, KV bytes per token, bytes per element)."""
    from nanoserve.planner.models import from_hf_config
    from nanoserve.planner.params import matmul_params, param_count

    spec = from_hf_config(model_dir)
    elem = 4 if spec.dtype in ("fp32", "float32") else 2
    n_matmul = matmul_params(spec)
    # Every linear weight is read once per step; the embedding row lookups are negligible unless tied
    # (then the lm_head read covers it). Norm weights and biases: the rest of the parameters.
    n_total = param_count(spec).value
    n_other = n_total - n_matmul - (0 if spec.tied_embeddings else spec.vocab * spec.hidden)
    weight_bytes = (n_matmul + max(0, n_other)) * elem
    kv_bytes_per_token = 2 * spec.layers * spec.kv_dim * elem
    return spec, weight_bytes, kv_bytes_per_token, elem


def decode_row(model_dir: str, probe_: Probe, batch: int, context_len: int, step_s: float) -> RooflineRow:
    from nanoserve.planner.params import flops_per_token
    from nanoserve.planner.serving import decode_step_time

    spec, weight_bytes, kv_tok, _ = model_costs(model_dir)
    kv_seq = kv_tok * context_len
    fpt = flops_per_token(spec, context_len).value
    bw, peak = probe_.read_gb_s_best * 1e9, probe_.bf16_gflop_s * 1e9
    bound = decode_step_time(weight_bytes, bw, batch, kv_seq, fpt, peak)
    moved, flops = weight_bytes + batch * kv_seq, batch * fpt
    return RooflineRow(
        "decode",
        batch,
        batch,
        context_len,
        step_s * 1e3,
        bound.value * 1e3,
        bound.inputs["bound"],
        moved,
        flops,
        moved / step_s / bw,
        flops / step_s / peak,
        batch / step_s,
    )


def prefill_row(model_dir: str, probe_: Probe, prompt_len: int, step_s: float) -> RooflineRow:
    from nanoserve.planner.params import flops_per_token

    spec, weight_bytes, kv_tok, _ = model_costs(model_dir)
    flops = prompt_len * flops_per_token(spec, prompt_len, causal_average=True).value
    moved = weight_bytes + prompt_len * kv_tok
    bw, peak = probe_.read_gb_s_best * 1e9, probe_.bf16_gflop_s * 1e9
    t_mem, t_cmp = moved / bw, flops / peak
    return RooflineRow(
        "prefill",
        1,
        prompt_len,
        prompt_len,
        step_s * 1e3,
        max(t_mem, t_cmp) * 1e3,
        "compute" if t_cmp > t_mem else "memory",
        moved,
        flops,
        moved / step_s / bw,
        flops / step_s / peak,
        prompt_len / step_s,
    )


def measure_engine(
    model_dir: str,
    batches: list[int],
    input_len: int,
    output_len: int,
    prefill_len: int,
    engine_kwargs: dict[str, Any],
    seed: int = 0,
) -> tuple[dict[int, tuple[float, int]], float]:
    """({batch: (median decode step s, mean context)}, prefill step s) on the nanoserve engine.

    `engine_kwargs` (LLM's keywords) must let the largest batch run at once and each prefill in one step.
    """
    from nanoserve import LLM, SamplingParams
    from nanoserve.bench.dataset import random_requests
    from nanoserve.bench.models import special_token_ids, vocab_size
    from nanoserve.bench.profile import StepProfiler

    vocab, special = vocab_size(model_dir), special_token_ids(model_dir)
    llm = LLM(model=model_dir, **engine_kwargs)
    engine = llm.llm_engine
    llm.generate(
        [{"prompt_token_ids": [3 + i % 50 for i in range(16)]}],
        SamplingParams(max_tokens=4, ignore_eos=True, temperature=0.0),
        use_tqdm=False,
    )  # warm-up
    decode: dict[int, tuple[float, int]] = {}
    for i, b in enumerate(batches):
        reqs = random_requests(b, input_len, output_len, vocab, seed=seed + 17 * i, special_ids=special)
        prof = StepProfiler(split_forward=False).attach(engine)
        llm.generate(
            [{"prompt_token_ids": r.prompt_token_ids} for r in reqs],
            SamplingParams(max_tokens=output_len, ignore_eos=True, temperature=0.0),
            use_tqdm=False,
        )
        prof.detach()
        steps = [r for r in prof.records if r.num_prefill_seqs == 0 and r.num_seqs == b]
        if steps:
            decode[b] = (statistics.median(r.total_s for r in steps), input_len + output_len // 2)
    req = random_requests(1, prefill_len, 1, vocab, seed=seed + 5, special_ids=special)[0]
    prof = StepProfiler(split_forward=False).attach(engine)
    llm.generate(
        [{"prompt_token_ids": req.prompt_token_ids}],
        SamplingParams(max_tokens=1, ignore_eos=True, temperature=0.0),
        use_tqdm=False,
    )
    prof.detach()
    prefill_s = sum(r.total_s for r in prof.records)  # one step, or a few chunks
    del llm
    return decode, prefill_s


def print_report(p: Probe, rows: list[RooflineRow]) -> None:
    from nanoserve.bench.report import print_table

    print(
        f"probe ({p.threads} threads): memory read {p.read_gb_s_best:.1f} GB/s best, "
        f"{p.read_gb_s_median:.1f} GB/s median; matmul bf16 {p.bf16_gflop_s:.0f} GFLOP/s, "
        f"fp32 {p.fp32_gflop_s:.0f} GFLOP/s"
    )
    print_table(
        ["phase", "batch", "tokens", "ctx", "measured ms", "bound ms", "bound", "tok/s", "MBU", "MFU"],
        [
            [
                r.phase,
                r.batch,
                r.tokens,
                r.context_len,
                f"{r.measured_ms:.1f}",
                f"{r.bound_ms:.1f}",
                r.bound,
                f"{r.tok_per_s:.1f}",
                f"{r.mbu:.0%}",
                f"{r.mfu:.0%}",
            ]
            for r in rows
        ],
        title="nanoserve against the roofline (bound = planner's max(bytes/bandwidth, FLOPs/peak))",
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    from nanoserve.bench.engine_flags import add_engine_arguments

    p.add_argument("--batch-sizes", default="1,8,32")
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--prefill-len", type=int, default=512)
    p.add_argument("--probe-only", action="store_true", help="measure the machine, not the engine")
    p.add_argument("--save-result", default=None, metavar="FILE.json")
    # Fresh prompts each batch: a prefix-cache hit would shorten the steps being timed.
    # --max-num-seqs and --max-num-batched-tokens default to what the largest batch and prefill need.
    add_engine_arguments(p, enable_prefix_caching=False)


def run(args: argparse.Namespace) -> int:
    from nanoserve.bench.report import save_json

    p = probe(args.num_cpu_threads)
    rows: list[RooflineRow] = []
    model_dir = None
    if not args.probe_only:
        from nanoserve.bench.engine_flags import engine_kwargs
        from nanoserve.bench.models import resolve_model

        model_dir = resolve_model(args.model, args.random_model, args.random_layers)
        batches = [int(b) for b in args.batch_sizes.split(",")]
        kwargs = engine_kwargs(
            args,
            model_dir,
            max_num_seqs=args.max_num_seqs or max(batches),
            max_num_batched_tokens=args.max_num_batched_tokens
            or max(2048, args.prefill_len, args.input_len * max(batches)),
        )
        decode, prefill_s = measure_engine(
            model_dir, batches, args.input_len, args.output_len, args.prefill_len, kwargs, args.seed
        )
        rows = [decode_row(model_dir, p, b, ctx, s) for b, (s, ctx) in sorted(decode.items())]
        rows.append(prefill_row(model_dir, p, args.prefill_len, prefill_s))
    print_report(p, rows)
    if args.save_result:
        save_json(
            args.save_result,
            {
                "benchmark": "roofline",
                "model": model_dir,
                "args": vars(args),
                "probe": asdict(p),
                "rows": [asdict(r) for r in rows],
            },
        )
    return 0
