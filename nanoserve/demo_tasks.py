"""The demo models' five tasks: problem generator, held-out split and grader.

Shared by training (scripts/train_demo_models.py), evaluation (scripts/eval_demo_models.py) and the
tests, so all three agree on what a problem looks like and which problems are never trained on.

    add      "123+456="           -> "579"
    sub      "503-78="            -> "425"     (negative results allowed: "78-503=" -> "-425")
    sort     "sort 5 3 9 1 ="     -> "1 3 5 9" (1-12 digits, repeats allowed)
    reverse  "reverse hello ="    -> "olleh"   (1-16 lowercase letters)
    copy     "copy the quick brown fox =" -> "the quick brown fox" (1-8 lowercase words, <= 48 chars)

Arithmetic comes in two distributions. ``mix`` (the training mix, the default): operands have 1, 2 or
3 digits, each length equally likely, so mixed-length problems (``826+41=``) are as common as
same-length ones. ``uniform``: both operands uniform over 0-999 (mostly 3-digit), which is what a user
trying numbers at random sends. The held-out rule is the same hash for both (and for every task).
"""

from __future__ import annotations

import hashlib
import random
import string
from dataclasses import dataclass

TASKS: tuple[str, ...] = ("add", "sub", "sort", "reverse", "copy")
# What the bundled models (models/) were trained on and are graded on: all five since stage 2
# (scripts/train_demo_models.py, models/README.md).
BUNDLED_MODEL_TASKS: tuple[str, ...] = ("add", "sub", "sort", "reverse", "copy")
# Distributions make_problem can draw add/sub operands from (other tasks have one distribution).
DISTRIBUTIONS: tuple[str, ...] = ("mix", "uniform")
MAX_SORT_DIGITS = 12
MAX_REVERSE_LETTERS = 16
MAX_COPY_CHARS = 48
MAX_COPY_WORDS = 8
# Half of a copy prompt's words come from this list, half are random letters, so the model must copy
# what it reads rather than recall familiar words.
COPY_WORDS: tuple[str, ...] = tuple("""
the quick brown fox jumps over lazy dog a an and or but if then so to of in on at by for with from
cat sun moon star tree river stone house road car bus train ship boat bird fish horse cow sheep pig
red green blue black white gray pink gold big small old new hot cold fast slow good bad long short
one two three four five six seven eight nine ten time day night year week hand eye head door window
book page word line text code data model token cache batch queue server engine paged attention
""".split())
# A problem is held out (never trained on) when its hash lands in this 1-in-N bucket.
HELD_OUT_ONE_IN = 50
EVAL_SEED = 20261121


@dataclass(frozen=True)
class Problem:
    task: str
    prompt: str  # what the user sends, e.g. "123+456="
    answer: str  # the expected reply, without EOS


def _operand(rng: random.Random) -> int:
    digits = rng.choice((1, 2, 3))
    low = 0 if digits == 1 else 10 ** (digits - 1)
    return rng.randint(low, 10**digits - 1)


def _copy_text(rng: random.Random) -> str:
    words = []
    for _ in range(rng.randint(1, MAX_COPY_WORDS)):
        if rng.random() < 0.5:
            word = rng.choice(COPY_WORDS)
        else:
            word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(1, 8)))
        if len(" ".join([*words, word])) > MAX_COPY_CHARS:
            break
        words.append(word)
    return " ".join(words) or rng.choice(COPY_WORDS)


def make_problem(task: str, rng: random.Random, dist: str = "mix") -> Problem:
    """One random problem of ``task``; ``dist`` picks the add/sub operand distribution (see above)."""
    if dist not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution {dist!r}; expected one of {DISTRIBUTIONS}")
    if task in ("add", "sub"):
        if dist == "uniform":
            a, b = rng.randint(0, 999), rng.randint(0, 999)
        else:
            a, b = _operand(rng), _operand(rng)
        if task == "add":
            return Problem(task, f"{a}+{b}=", str(a + b))
        return Problem(task, f"{a}-{b}=", str(a - b))
    if task == "sort":
        digits = [rng.randint(0, 9) for _ in range(rng.randint(1, MAX_SORT_DIGITS))]
        return Problem(task, f"sort {' '.join(map(str, digits))} =", " ".join(map(str, sorted(digits))))
    if task == "reverse":
        word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(1, MAX_REVERSE_LETTERS)))
        return Problem(task, f"reverse {word} =", word[::-1])
    if task == "copy":
        text = _copy_text(rng)
        return Problem(task, f"copy {text} =", text)
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


def is_held_out(prompt: str) -> bool:
    """Whether a problem belongs to the evaluation split (decided by its text alone)."""
    digest = hashlib.blake2b(prompt.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % HELD_OUT_ONE_IN == 0


def training_problem(task: str, rng: random.Random, dist: str = "mix") -> Problem:
    """A random problem that is not in the held-out split."""
    while True:
        problem = make_problem(task, rng, dist)
        if not is_held_out(problem.prompt):
            return problem


def held_out_problems(task: str, n: int = 2000, seed: int = EVAL_SEED, dist: str = "mix") -> list[Problem]:
    """``n`` distinct held-out problems of ``task``, the same on every machine for a given seed."""
    rng = random.Random(f"{seed}-{task}" if dist == "mix" else f"{seed}-{task}-{dist}")
    seen: dict[str, Problem] = {}
    attempts = 0
    while len(seen) < n:
        attempts += 1
        if attempts > 2000 * n:
            raise RuntimeError(f"could not draw {n} distinct held-out {task} problems")
        problem = make_problem(task, rng, dist)
        if is_held_out(problem.prompt) and problem.prompt not in seen:
            seen[problem.prompt] = problem
    return list(seen.values())


def evaluation_sets(n: int = 2000, seed: int = EVAL_SEED) -> dict[str, list[Problem]]:
    """What the model card reports: ``n`` held-out problems of every task (add/sub from the mix), and
    ``add_uniform``/``sub_uniform``: ``n`` held-out add/sub problems with operands uniform over 0-999."""
    sets = {t: held_out_problems(t, n, seed=seed) for t in TASKS}
    for t in ("add", "sub"):
        sets[f"{t}_uniform"] = held_out_problems(t, n, seed=seed, dist="uniform")
    return sets


def grade(problem: Problem, reply: str) -> bool:
    """Exact match of the reply (surrounding whitespace ignored) with the expected answer."""
    return reply.strip() == problem.answer


def task_of(prompt: str) -> str:
    """Which task a prompt belongs to (for reporting)."""
    if prompt.startswith("copy "):
        return "copy"
    if prompt.startswith("sort "):
        return "sort"
    if prompt.startswith("reverse "):
        return "reverse"
    return "sub" if "-" in prompt else "add"


def hf_greedy_ids(model, tok, prompts: list[str], max_new_tokens: int = 64) -> list[list[int]]:
    """transformers' greedy token ids per prompt, cut before EOS: the reference the engine is held to.

    Prompts are grouped by token length so that no padding (and no attention mask subtlety) is needed.
    """
    import torch

    encoded = [tok.encode(p) for p in prompts]
    groups: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        groups.setdefault(len(ids), []).append(i)
    out: list[list[int]] = [[] for _ in prompts]
    with torch.no_grad():
        for idx in groups.values():
            ids = torch.tensor([encoded[i] for i in idx], device=model.device)  # [group, prompt_len]
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=max_new_tokens, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id)
            for row, i in enumerate(idx):
                new = gen[row, ids.shape[1]:].tolist()
                out[i] = new[: new.index(tok.eos_token_id)] if tok.eos_token_id in new else new
    return out
