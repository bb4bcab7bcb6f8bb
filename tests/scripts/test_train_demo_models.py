"""scripts/train_demo_models.py: seeded runs are reproducible, the hard problems are what they claim,
and a bad --mix is refused. (The full run takes over an hour; these take seconds.)"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import random
import sys
from pathlib import Path

import pytest

from nanoserve.demo_tasks import is_held_out

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
    args = ["--which", "main", "--steps", "3", "--final-n", "2", "--monitor-n", "2", "--threads", "1"]
    for run, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        train.main([*args, "--out", str(tmp_path / run), "--seed", seed])
    a, b, c = (_weights_digest(tmp_path / run / "toy-assistant") for run in "abc")
    assert a == b
    assert a != c
    assert "toy-assistant" in capsys.readouterr().out.splitlines()[-2]  # the final accuracy table


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
