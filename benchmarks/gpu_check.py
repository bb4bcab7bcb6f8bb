"""The GPU check of issue 19, in one run: greedy equivalence with transformers, then decode and prefill
benchmarks of nanoserve (CUDA graphs on and off) and transformers on the same GPU, each beside the
planner's roofline for the GPU (H200 preset: MBU for decode, MFU for prefill).

    python benchmarks/gpu_check.py --out $OUT              # on the GPU (scripts/gpu_check.sh)
    python benchmarks/gpu_check.py --smoke --device cpu --out /tmp/x   # every code path, tiny, on CPU

Models are random (transformers from a config, saved to a temp dir): Qwen2.5-0.5B- and Llama-3.1-8B-
shaped in bf16; no download. Results: $OUT/gpu_check.json and $OUT/gpu_check.md. Each section is
guarded: a failure is recorded (with its traceback) and the next section still runs.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # tiny_models: the test suite's tiny checkpoints and tokenizer

# Shapes of the real models (config.json fields); random weights.
SHAPES: dict[str, dict[str, Any]] = {
    "qwen2.5-0.5b": dict(arch="Qwen2ForCausalLM", vocab_size=151936, hidden_size=896, intermediate_size=4864,
                         num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                         max_position_embeddings=32768, rope_theta=1000000.0, tie_word_embeddings=True),
    "llama-3.1-8b": dict(arch="LlamaForCausalLM", vocab_size=128256, hidden_size=4096,
                         intermediate_size=14336,
                         num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                         max_position_embeddings=131072, rope_theta=500000.0, tie_word_embeddings=False),
}
# --smoke: the same code on a few-MB stand-in of each shape.
SMOKE_SHAPE = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)


def log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build_random_model(name: str, out_dir: Path, dtype: torch.dtype, device: str, smoke: bool):
    """A random checkpoint shaped like `name` in out_dir (config, safetensors, a tokenizer); returns the
    transformers model, still on `device`, for the baseline."""
    import transformers
    from tiny_models import char_tokenizer

    shape = dict(SHAPES[name])
    arch = shape.pop("arch")
    if smoke:
        shape.update(SMOKE_SHAPE)
    cls = getattr(transformers, arch.replace("ForCausalLM", "Config"))
    config = cls(**shape, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    with torch.device(device):  # initialised on the GPU: seconds, not minutes, for 8B parameters
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    model.save_pretrained(out_dir)
    char_tokenizer().save_pretrained(out_dir)
    return model


def make_llm(model_dir: Path, device: str, dtype: str, max_len: int, max_seqs: int, kv_bytes: int, **kw):
    from nanoserve import LLM

    return LLM(str(model_dir), device=device, dtype=dtype, max_model_len=max_len, max_num_seqs=max_seqs,
               max_num_batched_tokens=max(max_len, 2048), kv_cache_memory_bytes=kv_bytes,
               enable_prefix_caching=False, **kw)


# ---- (b) greedy equivalence ----------------------------------------------------------------------
def hf_greedy(model, prompt: list[int], n: int, device: str) -> list[int]:
    """Greedy tokens by full forwards (no cache, no generate config): the plainest reference."""
    ids = torch.tensor([prompt], device=device)
    out: list[int] = []
    with torch.inference_mode():
        for _ in range(n):
            nxt = int(model(ids).logits[0, -1].float().argmax())
            out.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]], device=device)], dim=1)
    return out


def equivalence(device: str, tmp: Path, smoke: bool) -> dict[str, Any]:
    """fp32: nanoserve's greedy tokens == transformers' (graphs on and off); bf16: the agreement fraction."""
    from tiny_models import build_tiny_model

    from nanoserve import SamplingParams

    rng = random.Random(0)
    num_prompts = 3 if smoke else 12
    prompts = [[rng.randrange(4, 128) for _ in range(rng.randrange(3, 60))] for _ in range(num_prompts)]
    n = 4 if smoke else 24
    result: dict[str, Any] = {}
    for dtype in ("float32", "bfloat16"):
        import transformers

        model_dir = build_tiny_model("llama", tmp / f"tiny_{dtype}", dtype=dtype)
        hf = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
        hf = hf.to(device)
        want = [hf_greedy(hf, p, n, device) for p in prompts]
        del hf
        row: dict[str, Any] = {}
        for label, eager in (("graphs", False), ("eager", True)):
            llm = make_llm(model_dir, device, dtype, 512, 16, 64 << 20, enforce_eager=eager)
            params = SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)
            outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
            got = [list(o.outputs[0].token_ids) for o in outs]
            same = sum(a == b for g, w in zip(got, want, strict=True) for a, b in zip(g, w, strict=True))
            prefix = [next((i for i, (a, b) in enumerate(zip(g, w, strict=True)) if a != b), n)
                      for g, w in zip(got, want, strict=True)]
            graphs = llm.llm_engine.runner.graphs
            row[label] = {"identical": got == want, "token_agreement": same / (n * len(prompts)),
                          "prefix_agreement": sum(prefix) / (n * len(prompts)),
                          "graph_steps": graphs.replays if graphs is not None else 0}
            del llm
            gc.collect()
        result[dtype] = row
        log(f"equivalence {dtype}: {row}")
    return result


# ---- (c) benchmarks --------------------------------------------------------------------------------
def roofline_probe(hardware: str, device: str):
    """The planner's peaks for `hardware` as the bench's Probe (so bench/roofline's rows apply)."""
    from nanoserve.bench.roofline import Probe
    from nanoserve.planner.hardware import get_hardware

    hw = get_hardware(hardware)
    return Probe(hw.hbm_bytes_per_s / 1e9, hw.hbm_bytes_per_s / 1e9, hw.bf16_flops_per_s / 1e9,
                 hw.bf16_flops_per_s / 2e9, 0), hw.name


def nanoserve_decode_step_s(llm, batch: int, prompt_len: int, out_len: int, vocab: int, seed: int) -> float:
    """Median step time of the steps with exactly `batch` decoding sequences."""
    from nanoserve import SamplingParams
    from nanoserve.bench.profile import StepProfiler

    rng = random.Random(seed)
    reqs = [{"prompt_token_ids": [rng.randrange(4, vocab) for _ in range(prompt_len)]} for _ in range(batch)]
    prof = StepProfiler(split_forward=False).attach(llm.llm_engine)
    llm.generate(reqs, SamplingParams(max_tokens=out_len, temperature=0.0, ignore_eos=True), use_tqdm=False)
    prof.detach()
    steps = [r.total_s for r in prof.records if r.num_prefill_seqs == 0 and r.num_seqs == batch]
    return statistics.median(steps)


def nanoserve_prefill_s(llm, prompt_len: int, vocab: int) -> float:
    from nanoserve import SamplingParams
    from nanoserve.bench.profile import StepProfiler

    rng = random.Random(5)
    ids = [rng.randrange(4, vocab) for _ in range(prompt_len)]
    times = []
    for _ in range(2):  # the first also warms the prefill shapes
        prof = StepProfiler(split_forward=False).attach(llm.llm_engine)
        params = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
        llm.generate([{"prompt_token_ids": ids}], params, use_tqdm=False)
        prof.detach()
        times.append(sum(r.total_s for r in prof.records))
    return min(times)


def hf_decode_step_s(model, batch: int, prompt_len: int, out_len: int, vocab: int, device: str) -> float:
    """transformers' generate: (time of out_len tokens - time of 1 token) / (out_len - 1)."""
    from nanoserve.bench.baselines import _generate

    g = torch.Generator().manual_seed(batch)
    ids = torch.randint(4, vocab, (batch, prompt_len), generator=g).to(device)
    mask = torch.ones_like(ids)

    def timed(n: int) -> float:
        sync(device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            _generate(model, ids, mask, n)
        sync(device)
        return time.perf_counter() - t0

    timed(2)  # warm-up
    return (min(timed(out_len) for _ in range(2)) - min(timed(1) for _ in range(2))) / (out_len - 1)


def hf_prefill_s(model, prompt_len: int, vocab: int, device: str) -> float:
    ids = torch.randint(4, vocab, (1, prompt_len), generator=torch.Generator().manual_seed(5)).to(device)
    times = []
    with torch.inference_mode():
        for _ in range(3):
            sync(device)
            t0 = time.perf_counter()
            model(ids, logits_to_keep=1)
            sync(device)
            times.append(time.perf_counter() - t0)
    return min(times[1:])


def benchmark(
    name: str, device: str, tmp: Path, smoke: bool, hardware: str, deadline: float, result: dict[str, Any],
    on_row: Any,
) -> None:
    """Fill `result` (settings, then rows as they are measured; on_row() after each, to save them)."""
    from nanoserve.bench.roofline import decode_row, prefill_row

    batches = [1, 2] if smoke else [1, 8, 64]
    prompt_len, out_len, prefill_len = (8, 4, 32) if smoke else (128, 64, 4096)
    dtype = "float32" if device == "cpu" else "bfloat16"  # bf16 on CPU would time oneDNN, not the point
    model_dir = tmp / name
    log(f"{name}: building random weights")
    hf = build_random_model(name, model_dir, getattr(torch, dtype), device, smoke)
    vocab = hf.config.vocab_size
    probe, hw_name = roofline_probe(hardware, device)
    ctx = prompt_len + out_len // 2
    rows: list[dict[str, Any]] = []
    result.update(hardware=hw_name, prompt_len=prompt_len, output_len=out_len, prefill_len=prefill_len,
                  dtype=dtype, rows=rows)

    def add(engine: str, phase: str, batch: int, step_s: float) -> None:
        r = (decode_row(str(model_dir), probe, batch, ctx, step_s) if phase == "decode"
             else prefill_row(str(model_dir), probe, prefill_len, step_s))
        rows.append({"model": name, "engine": engine, "phase": phase, "batch": batch, "tokens": r.tokens,
                     "step_ms": r.measured_ms, "tok_per_s": r.tok_per_s, "mbu": r.mbu, "mfu": r.mfu,
                     "bound_ms": r.bound_ms})
        log(f"{name} {engine} {phase} b={batch}: {r.measured_ms:.2f} ms/step, {r.tok_per_s:.0f} tok/s, "
            f"MBU {r.mbu:.1%}, MFU {r.mfu:.1%}")
        on_row()

    for b in batches:
        if time.time() > deadline:
            break
        add("transformers", "decode", b, hf_decode_step_s(hf, b, prompt_len, out_len, vocab, device))
    if time.time() < deadline:
        add("transformers", "prefill", 1, hf_prefill_s(hf, prefill_len, vocab, device))
    del hf
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    log(f"{name}: loading into nanoserve")
    kv_bytes = (64 << 20) if smoke else (16 << 30)
    llm = make_llm(model_dir, device, dtype, prefill_len + 64, max(batches), kv_bytes)
    runner = llm.llm_engine.runner
    # Which paths the figures are of (auto on CUDA: the Triton backend and fused ops where triton runs).
    result["paths"] = {"attention_backend": runner.attention_backend.name,
                       "kernels": type(runner.kernels).__name__}
    log(f"{name}: attention {result['paths']['attention_backend']}, kernels {result['paths']['kernels']}")
    graphs = runner.graphs  # toggled off for the eager rows: one load serves both
    modes = [("nanoserve+graphs", graphs), ("nanoserve eager", None)] if graphs is not None else [
        ("nanoserve eager", None)]
    for label, g in modes:
        runner.graphs = g
        for b in batches:
            if time.time() > deadline:
                break
            add(label, "decode", b, nanoserve_decode_step_s(llm, b, prompt_len, out_len, vocab, seed=b))
    runner.graphs = None
    if time.time() < deadline:
        add("nanoserve", "prefill", 1, nanoserve_prefill_s(llm, prefill_len, vocab))
    runner.graphs = graphs
    del llm, runner, graphs
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# GPU check ({report['device_name']}, torch {report['torch']})", ""]
    eq = report.get("equivalence", {})
    if "error" in eq:
        lines += [f"Equivalence: ERROR {eq['error'].splitlines()[-1]}", ""]
    elif eq:
        lines += ["## Greedy equivalence with transformers (tiny random Llama)", "",
                  "| dtype | mode | identical | token agreement | prefix agreement | graph steps |",
                  "|---|---|---|---|---|---|"]
        for dtype, modes in eq.items():
            for mode, r in modes.items():
                lines.append(f"| {dtype} | {mode} | {r['identical']} | {r['token_agreement']:.3f} | "
                             f"{r['prefix_agreement']:.3f} | {r['graph_steps']} |")
        lines.append("")
    for name, bench in report.get("benchmarks", {}).items():
        if "error" in bench:
            lines += [f"## {name}: ERROR {bench['error'].splitlines()[-1]}", ""]
        if "rows" not in bench:
            continue
        lines += [f"## {name} ({bench['dtype']}; decode: prompt {bench['prompt_len']}, {bench['output_len']} "
                  f"new tokens; prefill {bench['prefill_len']} tokens; roofline: {bench['hardware']})", "",
                  "| engine | phase | batch | ms/step | tok/s | MBU | MFU | roofline ms |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in bench["rows"]:
            lines.append(f"| {r['engine']} | {r['phase']} | {r['batch']} | {r['step_ms']:.2f} | "
                         f"{r['tok_per_s']:.0f} | {r['mbu']:.1%} | {r['mfu']:.1%} | {r['bound_ms']:.2f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for gpu_check.json and gpu_check.md")
    p.add_argument("--device", default="cuda")
    p.add_argument("--smoke", action="store_true", help="tiny stand-ins of every model: exercise the code")
    p.add_argument("--hardware", default="h200", help="the planner preset the roofline uses")
    p.add_argument("--models", default=",".join(SHAPES), help="comma-separated: " + ", ".join(SHAPES))
    p.add_argument("--budget-s", type=float, default=420.0, help="stop starting new measurements after this")
    args = p.parse_args(argv)
    deadline = time.time() + args.budget_s
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    report: dict[str, Any] = {"device": args.device, "device_name": name, "torch": torch.__version__,
                              "smoke": args.smoke, "benchmarks": {}}

    def save() -> None:
        (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
        (out / "gpu_check.md").write_text(markdown(report))

    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp_name:
        tmp = Path(tmp_name)
        try:
            report["equivalence"] = equivalence(args.device, tmp, args.smoke)
        except Exception:
            report["equivalence"] = {"error": traceback.format_exc()}
            log(report["equivalence"]["error"])
        save()
        for model in args.models.split(","):
            result: dict[str, Any] = {}
            report["benchmarks"][model] = result
            try:
                benchmark(model, args.device, tmp, args.smoke, args.hardware, deadline, result, save)
            except Exception:
                result["error"] = traceback.format_exc()
                log(result["error"])
            save()
            shutil_rmtree(tmp / model)
    log(f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")
    return 0


def shutil_rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)  # 16 GB of an 8B checkpoint: free the disk for the next


if __name__ == "__main__":
    sys.exit(main())
