"""Train nanoserve's bundled demo models (toy-assistant and its draft) from scratch on CPU.

    python scripts/train_demo_models.py --out models/                 # stage 1 then stage 2, both models
    python scripts/train_demo_models.py --out scratch/ --resume-from models/   # stage 2 only

(models/README.md gives the exact commands that produced the bundled models.)

Both are transformers ``LlamaForCausalLM`` models over a character-level tokenizer, trained on the
tasks of nanoserve/demo_tasks.py. Stage 1 trains from scratch on four of them (addition, subtraction,
sorting digits, reversing a word; operands from the length-balanced mix). Stage 2 continues from the
stage-1 weights at a lower learning rate on add/sub with operands uniform over 0-999 (plus extra
problems whose carries or borrows run into the tens digit), the stage-1 hard mix, a little sort and
reverse so they are not forgotten, and the fifth task, copy. The prompt
is ``<bos>{task}`` and the answer follows directly, ending with ``<eos>``; the chat template renders
the last user message exactly that way, so raw prompts and chat requests are the same tokens.

Each stage is seeded (same seed, same machine -> same weights). ``--minutes`` instead of ``--steps``
times a few steps first and fixes the step count from the measured speed (printed, so the run can be
repeated with ``--steps``). The model directory is rewritten every ``--save-every-s`` seconds, so a
usable model exists even if the run is cut short.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, processors
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from nanoserve.demo_tasks import (  # noqa: E402
    Problem,
    evaluation_sets,
    grade,
    hf_greedy_ids,
    is_held_out,
    training_problem,
)

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
# Renders <bos> + the last user message (trimmed); an assistant reply after it ends with <eos>.
# The toy assistant has no memory: earlier turns and system messages are dropped.
CHAT_TEMPLATE = (
    "{%- set ns = namespace(last=0) -%}"
    "{%- for m in messages -%}{%- if m['role'] == 'user' -%}{%- set ns.last = loop.index0 -%}{%- endif -%}"
    "{%- endfor -%}"
    "{{- bos_token -}}"
    "{%- for m in messages[ns.last:] -%}"
    "{%- if m['role'] == 'user' -%}{{- m['content'] | trim -}}"
    "{%- elif m['role'] == 'assistant' -%}{{- m['content'] | trim -}}{{- eos_token -}}{%- endif -%}"
    "{%- endfor -%}"
)
# Share of training prompts given a doubled or missing <bos>, so a client that tokenizes the
# rendered chat prompt with add_special_tokens=True (or sends raw ids) still gets right answers.
BOS_NOISE = 0.03
MAX_MODEL_LEN = 128
# Greedy replies are cut here: the longest answer is a 48-character copy plus <eos>.
MAX_ANSWER_TOKENS = 64


@dataclass(frozen=True)
class ModelSpec:
    name: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    lr: float
    stage2_lr: float  # peak lr of stage 2 (continuing from trained weights: well below lr)


MAIN = ModelSpec("toy-assistant", 192, 512, 4, 6, 2, 1.5e-3, 7e-4)
DRAFT = ModelSpec("toy-assistant-draft", 128, 320, 2, 4, 2, 2e-3, 6e-4)
# Problems per step for each task: arithmetic is the hardest, so it gets the most (subtraction, with
# its borrow chains, most of all); sort and reverse are learned early and their long sequences cost
# the most compute per problem.
BATCH = {"add": 64, "sub": 96, "sort": 12, "reverse": 12}
# Share of add/sub problems drawn from hard_problem from the first step.
HARD_FRACTION = 0.3
# The bundled models' step counts: each model trains on one thread, both at once (about 80 and 20
# minutes on this project's 2-core machine).
MAIN_STEPS = 6000
DRAFT_STEPS = 4000
# Stage 2, per step: add/sub problems drawn from STAGE2_SOURCES, sort and reverse so they are kept, copy.
# Reverse gets twice stage 1's share: copy prompts look like reverse prompts, and with 6 per step the
# main model's reverse fell to 53-69% while it learned copy (models/README.md); with 24 it stayed >= 92%.
STAGE2_BATCH = {"add": 80, "sub": 112, "sort": 12, "reverse": 24, "copy": 32}
# Where stage 2's add/sub problems come from: uniform 0-999 operands; uniform operands whose units
# carry (or borrow) into the tens digit (the misses after stage 1: 885+938=1833, 895-829=76); the
# stage-1 hard problems; the stage-1 mix.
STAGE2_SOURCES = {"uniform": 0.45, "carry": 0.25, "hard": 0.15, "mix": 0.15}
# The bundled models' stage-2 steps (about 40 and 30 minutes here, both at once, one thread each).
STAGE2_STEPS = 2000
DRAFT_STAGE2_STEPS = 3000
STAGE2_WARMUP = 100


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level tokenizer: 4 specials + printable ASCII; unknown characters map to <unk>."""
    chars = [chr(c) for c in range(32, 127)]
    vocab = {tok: i for i, tok in enumerate(list(SPECIAL_TOKENS) + chars)}
    # BPE with no merges splits every string into single characters (spaces included).
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    tok.decoder = decoders.Fuse()
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        model_max_length=MAX_MODEL_LEN, clean_up_tokenization_spaces=False,
    )
    hf.chat_template = CHAT_TEMPLATE
    return hf


def build_model(spec: ModelSpec, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers, num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads, max_position_embeddings=MAX_MODEL_LEN,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False, hidden_act="silu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, initializer_range=0.02,
    )
    return LlamaForCausalLM(config)


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def encode_batch(problems: list[Problem], tok: PreTrainedTokenizerFast, rng: random.Random):
    """Token ids and labels (loss on the answer and <eos> only), right-padded to the longest."""
    bos, eos, pad = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    rows = []
    for p in problems:
        prompt = tok.encode(p.prompt, add_special_tokens=False)
        answer = tok.encode(p.answer, add_special_tokens=False) + [eos]
        r = rng.random()
        prefix = [bos, bos] if r < BOS_NOISE else ([] if r < 2 * BOS_NOISE else [bos])
        rows.append((prefix + prompt, answer))
    width = max(len(a) + len(b) for a, b in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)  # [batch, width]
    labels = torch.full((len(rows), width), -100, dtype=torch.long)  # [batch, width]
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # [batch, width]
    for i, (prompt, answer) in enumerate(rows):
        n = len(prompt) + len(answer)
        ids[i, :n] = torch.tensor(prompt + answer)
        labels[i, len(prompt) : n] = torch.tensor(answer)
        mask[i, :n] = 1
    return ids, labels, mask


def hard_problem(task: str, rng: random.Random) -> Problem:
    """Arithmetic the model finds hardest: same-length operands that are close (long borrow chains
    and small results in subtraction) or whose sum crosses a power of ten (long carry chains); for
    subtraction also a shorter operand that borrows through the longer one's zeros (``503-78=``)."""
    while True:
        digits = rng.choice((2, 3))
        a = rng.randint(10 ** (digits - 1), 10**digits - 1)
        if task == "sub" and rng.random() < 1 / 3:
            b = rng.randint(1, 10 ** (digits - 1) - 1)
            a = a - a % 10 ** (digits - 1) + rng.randint(0, b)  # a's tail is at most b: it borrows
            a, b = (a, b) if rng.random() < 0.5 else (b, a)
            problem = Problem(task, f"{a}-{b}=", str(a - b))
        elif task == "sub":
            b = min(10**digits - 1, max(10 ** (digits - 1), a + rng.randint(-30, 30)))
            problem = Problem(task, f"{a}-{b}=", str(a - b))
        else:
            b = min(10**digits - 1, max(0, 10**digits - a + rng.randint(-30, 30)))
            problem = Problem(task, f"{a}+{b}=", str(a + b))
        if not is_held_out(problem.prompt):
            return problem


def carry_problem(task: str, rng: random.Random) -> Problem:
    """Uniform 0-999 operands whose units digits carry (add) or borrow (sub) into the tens digit; in
    half of them the tens digit passes the carry or borrow on to the hundreds."""
    chain = rng.random() < 0.5
    while True:
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        if task == "add":
            units = a % 10 + b % 10 >= 10
            tens = a // 10 % 10 + b // 10 % 10 + 1 >= 10
            problem = Problem(task, f"{a}+{b}=", str(a + b))
        else:
            hi, lo = max(a, b), min(a, b)
            units = hi % 10 < lo % 10
            tens = hi // 10 % 10 - 1 < lo // 10 % 10
            problem = Problem(task, f"{a}-{b}=", str(a - b))
        if units and (tens or not chain) and not is_held_out(problem.prompt):
            return problem


def stage2_problem(task: str, rng: random.Random) -> Problem:
    if task not in ("add", "sub"):
        return training_problem(task, rng)
    source = rng.choices(list(STAGE2_SOURCES), weights=list(STAGE2_SOURCES.values()))[0]
    if source == "carry":
        return carry_problem(task, rng)
    if source == "hard":
        return hard_problem(task, rng)
    return training_problem(task, rng, "uniform" if source == "uniform" else "mix")


def sample_stage2_batch(batch: dict[str, int], rng: random.Random) -> dict[str, list[Problem]]:
    return {task: [stage2_problem(task, rng) for _ in range(n)] for task, n in batch.items()}


def sample_batch(batch: dict[str, int], hard_fraction: float, rng: random.Random) -> dict[str, list[Problem]]:
    groups = {}
    for task, n in batch.items():
        hard = task in ("add", "sub")
        groups[task] = [hard_problem(task, rng) if hard and rng.random() < hard_fraction
                        else training_problem(task, rng) for _ in range(n)]
    return groups


def train_step(model, optimizer, tok, rng: random.Random, autocast: bool, batch: dict[str, int] | None = None,
               hard_fraction: float = HARD_FRACTION, device: str = "cpu", stage: int = 1) -> float:
    """One optimizer step over a batch of every task; each task is its own micro-batch so short
    arithmetic problems are not padded to the length of long sort problems."""
    optimizer.zero_grad(set_to_none=True)
    if stage == 2:
        groups = sample_stage2_batch(batch or STAGE2_BATCH, rng)
    else:
        groups = sample_batch(batch or BATCH, hard_fraction, rng)
    total_answer_tokens = sum(len(p.answer) + 1 for ps in groups.values() for p in ps)
    loss_sum = 0.0
    for problems in groups.values():
        ids, labels, mask = (t.to(device) for t in encode_batch(problems, tok, rng))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = model(input_ids=ids, attention_mask=mask).logits  # [batch, width, vocab]
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
            ignore_index=-100, reduction="sum",
        ) / total_answer_tokens
        loss.backward()
        loss_sum += loss.item()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return loss_sum


@torch.no_grad()
def greedy_answers(model, tok, prompts: list[str], max_new_tokens: int = MAX_ANSWER_TOKENS) -> list[str]:
    """transformers' greedy replies (see nanoserve.demo_tasks.hf_greedy_ids)."""
    model.eval()
    out = [tok.decode(ids, skip_special_tokens=True)
           for ids in hf_greedy_ids(model, tok, prompts, max_new_tokens)]
    model.train()
    return out


def accuracy(model, tok, problems_by_task: dict[str, list[Problem]]) -> dict[str, float]:
    acc = {}
    for task, problems in problems_by_task.items():
        replies = greedy_answers(model, tok, [p.prompt for p in problems])
        acc[task] = sum(grade(p, r) for p, r in zip(problems, replies, strict=True)) / len(problems)
    return acc


def save(model, tok, out_dir: Path) -> None:
    """Write the HF directory atomically (a reader never sees a half-written model)."""
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    _portable_tokenizer_config(tmp / "tokenizer_config.json")
    GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        do_sample=False, max_new_tokens=MAX_ANSWER_TOKENS,
    ).save_pretrained(tmp)
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in tmp.iterdir():
        os.replace(f, out_dir / f.name)
    shutil.rmtree(tmp, ignore_errors=True)


def _portable_tokenizer_config(path: Path) -> None:
    """Name the generic fast-tokenizer class and inline the chat template, so transformers 4.x
    (which knows neither "TokenizersBackend" nor chat_template.jinja) loads the tokenizer too."""
    config = json.loads(path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["chat_template"] = CHAT_TEMPLATE
    path.write_text(json.dumps(config, indent=2) + "\n")


def lr_at(step: int, total: int, peak: float, warmup: int = 100) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train(spec: ModelSpec, args, steps: int | None, minutes: float | None, stage: int = 1,
          init_dir: Path | None = None) -> dict:
    """Stage 1 (from scratch) or stage 2 (from the weights in ``init_dir``/name) of one model."""
    torch.manual_seed(args.seed)
    suffix = "-stage2" if stage == 2 else ""
    rng = random.Random(f"{args.seed}-{spec.name}{suffix}")
    tok = build_tokenizer()
    model = build_model(spec, tok)
    if stage == 2:
        peak_lr, mix, warmup = args.stage2_lr or spec.stage2_lr, args.stage2_mix, STAGE2_WARMUP
        model = LlamaForCausalLM.from_pretrained(Path(init_dir) / spec.name, dtype=torch.float32)
    else:
        peak_lr, mix, warmup = args.lr or spec.lr, args.mix, 100
    model.to(args.device).train()
    out_dir = Path(args.out) / spec.name
    optimizer = torch.optim.AdamW(model.parameters(), lr=peak_lr, betas=(0.9, 0.98), weight_decay=0.01)
    monitor = evaluation_sets(args.monitor_n, seed=args.seed + 1)
    print(f"[{spec.name}] {num_params(model):,} parameters, layers={spec.num_hidden_layers} "
          f"hidden={spec.hidden_size} heads={spec.num_attention_heads}/{spec.num_key_value_heads} "
          f"ffn={spec.intermediate_size}", flush=True)

    t0 = time.monotonic()
    if steps is None:  # time a few steps at peak-lr warmup, then fix the step count
        calib = 20
        for s in range(calib):
            for g in optimizer.param_groups:
                g["lr"] = lr_at(s, 10**9, peak_lr, warmup)
            train_step(model, optimizer, tok, rng, args.autocast, mix, args.hard_fraction, args.device, stage)
        per_step_s = (time.monotonic() - t0) / calib
        steps = max(calib + 1, int(minutes * 60 / per_step_s))
        print(f"[{spec.name}] stage {stage}: {per_step_s:.3f} s/step measured -> {steps} steps for "
              f"{minutes} min (repeat with --{'stage2-' if stage == 2 else ''}steps {steps})", flush=True)
        start = calib
    else:
        start = 0

    last_save = last_eval = time.monotonic()
    losses: list[float] = []
    for step in range(start, steps):
        for g in optimizer.param_groups:
            g["lr"] = lr_at(step, steps, peak_lr, warmup)
        losses.append(train_step(model, optimizer, tok, rng, args.autocast, mix, args.hard_fraction,
                                 args.device, stage))
        now = time.monotonic()
        if (step + 1) % 50 == 0:
            print(f"[{spec.name}] stage {stage} step {step + 1}/{steps} loss {sum(losses) / len(losses):.4f} "
                  f"lr {optimizer.param_groups[0]['lr']:.2e} {now - t0:.0f}s", flush=True)
            losses.clear()
        if now - last_eval > args.eval_every_s:
            acc = accuracy(model, tok, monitor)
            print(f"[{spec.name}] step {step + 1} held-out sample acc "
                  + " ".join(f"{t}={a:.3f}" for t, a in acc.items()), flush=True)
            last_eval = time.monotonic()
        if now - last_save > args.save_every_s:
            save(model, tok, out_dir)
            last_save = time.monotonic()
    train_s = time.monotonic() - t0
    save(model, tok, out_dir)
    acc = accuracy(model, tok, evaluation_sets(args.final_n))
    default_mix = STAGE2_BATCH if stage == 2 else BATCH
    result = {
        "name": spec.name, "stage": stage, "params": num_params(model), "steps": steps,
        "train_s": round(train_s, 1), "problems_per_step": sum((mix or default_mix).values()),
        "mix": mix or default_mix, "accuracy_hf": acc, "spec": spec.__dict__, "seed": args.seed,
        "threads": args.threads, "final_n": args.final_n, "peak_lr": peak_lr, "warmup": warmup,
    }
    if stage == 2:
        result.update(sources=STAGE2_SOURCES, init_dir=str(init_dir))
    else:
        result.update(hard_fraction=args.hard_fraction)
    print(f"[{spec.name}] stage {stage} done in {train_s / 60:.1f} min: " + json.dumps(result), flush=True)
    (out_dir.parent / f".{spec.name}{suffix}.train.json").write_text(json.dumps(result, indent=2))
    return result


def train_both_stages(spec: ModelSpec, args, steps: int | None, minutes: float | None, stage2_steps: int,
                      stage2_minutes: float | None) -> list[dict]:
    """Stage 1 into --out then stage 2 from there, or only stage 2 from --resume-from."""
    results = []
    if args.resume_from is None:
        results.append(train(spec, args, steps, minutes))
    if stage2_steps > 0 or stage2_minutes is not None:
        steps2 = None if stage2_minutes is not None else stage2_steps
        init_dir = Path(args.resume_from or args.out)
        results.append(train(spec, args, steps2, stage2_minutes, stage=2, init_dir=init_dir))
    return results


def _parse_mix(text: str, tasks: tuple[str, ...] = tuple(BATCH)) -> dict[str, int]:
    mix = {k: int(v) for k, v in (item.split("=") for item in text.split(","))}
    if set(mix) != set(tasks):
        raise argparse.ArgumentTypeError(f"--mix must give every task {tasks}, got {sorted(mix)}")
    return mix


def _parse_stage2_mix(text: str) -> dict[str, int]:
    return _parse_mix(text, tuple(STAGE2_BATCH))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="models/")
    ap.add_argument("--which", choices=("main", "draft", "both"), default="both",
                    help="both: the draft trains in a second process beside the main model")
    ap.add_argument("--steps", type=int, default=MAIN_STEPS, help="main model's steps (exactly reproducible)")
    ap.add_argument("--draft-steps", type=int, default=DRAFT_STEPS, help="draft model's steps")
    ap.add_argument("--minutes", type=float, default=None, help="main model's time budget instead of steps")
    ap.add_argument("--draft-minutes", type=float, default=None, help="draft model's time budget")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per model")
    ap.add_argument("--device", default="cpu", help="torch device (cuda: quick recipe sweeps; the bundled "
                    "models are trained on CPU)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mix", type=_parse_mix, default=None,
                    help=f"problems per step per task, e.g. add=64,sub=96,sort=16,reverse=24 ({BATCH})")
    ap.add_argument("--hard-fraction", type=float, default=HARD_FRACTION,
                    help="share of add/sub problems drawn from hard_problem (close operands, carry chains)")
    ap.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the model's)")
    # The default command reproduces the bundled weights: stage 1, then stage 2.
    ap.add_argument("--stage2-steps", type=int, default=STAGE2_STEPS,
                    help="main model's stage-2 steps (0: stage 1 only)")
    ap.add_argument("--draft-stage2-steps", type=int, default=DRAFT_STAGE2_STEPS,
                    help="draft's stage-2 steps (its steps cost about a third of the main model's)")
    ap.add_argument("--stage2-minutes", type=float, default=None, help="main model's stage-2 time budget")
    ap.add_argument("--draft-stage2-minutes", type=float, default=None, help="draft's stage-2 time budget")
    ap.add_argument("--stage2-mix", type=_parse_stage2_mix, default=None,
                    help=f"stage-2 problems per step per task ({STAGE2_BATCH})")
    ap.add_argument("--stage2-lr", type=float, default=None, help="stage-2 peak lr (default: the model's)")
    ap.add_argument("--resume-from", default=None, help="skip stage 1: run stage 2 from the models in "
                    "this directory (e.g. models/), writing to --out")
    # bf16 autocast was ~3x slower than float32 for these small matrices on this CPU
    ap.add_argument("--autocast", action="store_true", help="bf16 autocast (default float32)")
    ap.add_argument("--eval-every-s", type=float, default=300)
    ap.add_argument("--save-every-s", type=float, default=300)
    ap.add_argument("--monitor-n", type=int, default=100, help="held-out problems per task for progress")
    ap.add_argument("--final-n", type=int, default=2000, help="held-out problems per task at the end")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.monotonic()
    draft_proc = None
    if args.which == "both":  # the draft beside the main model: two cores, one model each
        argv = list(sys.argv[1:] if argv is None else argv) + ["--which", "draft"]
        draft_proc = subprocess.Popen([sys.executable, __file__, *argv])
    results = []
    if args.which in ("main", "both"):
        steps = None if args.minutes is not None else args.steps
        results += train_both_stages(MAIN, args, steps, args.minutes, args.stage2_steps, args.stage2_minutes)
    if draft_proc is not None:
        if draft_proc.wait() != 0:
            raise SystemExit(f"the draft model's training failed (exit {draft_proc.returncode})")
        for r in json.loads((Path(args.out) / f".{DRAFT.name}.results.json").read_text()):
            results.append(r)
    elif args.which == "draft":
        steps = None if args.draft_minutes is not None else args.draft_steps
        steps2 = args.draft_stage2_steps if args.stage2_steps > 0 else 0  # --stage2-steps 0: stage 1 only
        minutes2 = args.draft_stage2_minutes
        results += train_both_stages(DRAFT, args, steps, args.draft_minutes, steps2, minutes2)
        (Path(args.out) / f".{DRAFT.name}.results.json").write_text(json.dumps(results, indent=2))
    keys = list(results[-1]["accuracy_hf"]) if results else []
    print("\nmodel               stage    params  steps  min  " + " ".join(f"{k[:9]:>9}" for k in keys))
    for r in results:
        print(f"{r['name']:<20} {r['stage']:>4} {r['params']:>9,} {r['steps']:>6} {r['train_s'] / 60:5.1f} "
              + " ".join(f"{r['accuracy_hf'].get(k, float('nan')):9.4f}" for k in keys))
    print(f"wall time {(time.monotonic() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
