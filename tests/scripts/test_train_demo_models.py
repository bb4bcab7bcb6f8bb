"""scripts/train_demo_models.py: seeded runs are reproducible (stage 1 then stage 2 in one command,
and stage 2 alone from existing weights), the hard and carry problems are what they claim, and a bad
--mix is refused. (The full run takes over an hour; these take seconds.)"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import random
import sys
from pathlib import Path

import pytest

from nanoserve.demo_tasks import TASKS, is_held_out

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "train_demo_models.py"


@pytest.fixture(scope="module")
def train():
    spec = importlib.util.spec_from_file_location("train_demo_models", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def _weights_digest(model_dir: Path) -> str:
    return hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()


def test_same_seed_same_weights_other_seed_other_weights(train, tmp_path, capsys):
    args = ["--which", "main", "--steps", "3", "--stage2-steps", "2", "--final-n", "2", "--monitor-n", "2",
            "--threads", "1"]
    for run, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        train.main([*args, "--out", str(tmp_path / run), "--seed", seed])
    a, b, c = (_weights_digest(tmp_path / run / "toy-assistant") for run in "abc")
    assert a == b
    assert a != c
    table = capsys.readouterr().out.splitlines()
    assert "toy-assistant" in table[-3] and "toy-assistant" in table[-2]  # stage 1 and stage 2 rows
    summary = json.loads((tmp_path / "a" / ".toy-assistant-stage2.train.json").read_text())
    assert summary["stage"] == 2 and summary["steps"] == 2
    assert set(summary["accuracy_hf"]) == {*TASKS, "add_uniform", "sub_uniform"}


def test_stage2_resumes_from_existing_weights_deterministically(train, tmp_path):
    """--resume-from skips stage 1: stage 2 starts from the given weights, and two runs agree."""
    source = tmp_path / "stage1"
    train.main(["--which", "main", "--steps", "2", "--stage2-steps", "0", "--final-n", "1",
                "--monitor-n", "1", "--out", str(source)])
    assert not (source / ".toy-assistant-stage2.train.json").exists()  # --stage2-steps 0: stage 1 only
    args = ["--which", "main", "--resume-from", str(source), "--stage2-steps", "2", "--final-n", "1",
            "--monitor-n", "1"]
    for run in "ab":
        train.main([*args, "--out", str(tmp_path / run)])
        assert not (tmp_path / run / ".toy-assistant.train.json").exists()  # no stage 1 ran
    a, b = (_weights_digest(tmp_path / run / "toy-assistant") for run in "ab")
    assert a == b
    assert a != _weights_digest(source / "toy-assistant")  # it trained
    summary = json.loads((tmp_path / "a" / ".toy-assistant-stage2.train.json").read_text())
    assert summary["init_dir"] == str(source) and summary["peak_lr"] == train.MAIN.stage2_lr


@pytest.mark.parametrize("task", ["add", "sub"])
def test_carry_problems_carry_into_the_tens_and_stay_out_of_the_held_out_split(train, task):
    rng = random.Random(3)
    chains = 0
    for _ in range(300):
        p = train.carry_problem(task, rng)
        assert not is_held_out(p.prompt)
        a, b = (int(x) for x in p.prompt.rstrip("=").split("+" if task == "add" else "-"))
        assert p.answer == str(a + b if task == "add" else a - b)
        if task == "add":
            assert a % 10 + b % 10 >= 10
            chains += a // 10 % 10 + b // 10 % 10 + 1 >= 10
        else:
            hi, lo = max(a, b), min(a, b)
            assert hi % 10 < lo % 10
            chains += hi // 10 % 10 - 1 < lo // 10 % 10
    assert chains > 150  # about half, plus the ones that chain by chance


def test_stage2_batch_draws_every_source(train):
    rng = random.Random(4)
    groups = train.sample_stage2_batch(train.STAGE2_BATCH, rng)
    assert {t: len(ps) for t, ps in groups.items()} == train.STAGE2_BATCH
    assert all(p.task == "copy" for p in groups["copy"])
    ops = [int(x) for p in groups["add"] for x in p.prompt.rstrip("=").split("+")]
    assert sum(x >= 100 for x in ops) / len(ops) > 0.6  # mostly uniform 0-999, not the 1/2/3-digit mix


def test_hard_subtractions_borrow_and_stay_out_of_the_held_out_split(train):
    rng = random.Random(0)
    problems = [train.hard_problem("sub", rng) for _ in range(300)]
    assert not any(is_held_out(p.prompt) for p in problems)
    for p in problems:
        a, b = (int(x) for x in p.prompt.rstrip("=").split("-"))
        assert p.answer == str(a - b)
    # Each is either two close operands of the same length (small result, long borrow chain) or a
    # shorter operand that borrows through the longer one's tail (503-78).
    close = borrow = 0
    for p in problems:
        a, b = sorted(int(x) for x in p.prompt.rstrip("=").split("-"))
        if len(str(a)) == len(str(b)) and b - a <= 30:
            close += 1
        elif len(str(a)) < len(str(b)) and b % 10 ** len(str(a)) <= a:
            borrow += 1
    assert close + borrow == len(problems)
    assert close > 150 and borrow > 60


def test_hard_additions_carry_across_a_power_of_ten(train):
    rng = random.Random(1)
    for _ in range(200):
        p = train.hard_problem("add", rng)
        a, b = (int(x) for x in p.prompt.rstrip("=").split("+"))
        assert p.answer == str(a + b)
        assert abs(a + b - 10 ** len(str(max(a, b)))) <= 30


def test_mix_must_name_every_task(train):
    with pytest.raises(argparse.ArgumentTypeError, match="every task"):
        train._parse_mix("add=1,sub=2")
    assert train._parse_mix("add=1,sub=2,sort=3,reverse=4") == {"add": 1, "sub": 2, "sort": 3, "reverse": 4}
    with pytest.raises(argparse.ArgumentTypeError, match="every task"):  # stage 2 has copy too
        train._parse_stage2_mix("add=1,sub=2,sort=3,reverse=4")
    assert train._parse_stage2_mix("add=1,sub=2,sort=3,reverse=4,copy=5")["copy"] == 5
