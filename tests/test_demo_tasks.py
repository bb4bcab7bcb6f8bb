"""nanoserve.demo_tasks: the copy task's generator, grader and held-out split, and the uniform
add/sub distribution the model card reports beside the training mix."""

from __future__ import annotations

import random
import re

import pytest

from nanoserve.demo_tasks import (
    COPY_WORDS,
    MAX_COPY_CHARS,
    MAX_COPY_WORDS,
    TASKS,
    Problem,
    evaluation_sets,
    grade,
    held_out_problems,
    is_held_out,
    make_problem,
    task_of,
    training_problem,
)


def test_copy_problems_are_lowercase_words_within_the_limits():
    rng = random.Random(0)
    problems = [make_problem("copy", rng) for _ in range(2000)]
    lengths, word_counts, listed = [], [], 0
    for p in problems:
        assert p.prompt == f"copy {p.answer} ="
        assert re.fullmatch(r"[a-z]+( [a-z]+)*", p.answer), p.answer
        lengths.append(len(p.answer))
        words = p.answer.split(" ")
        word_counts.append(len(words))
        listed += sum(w in COPY_WORDS for w in words)
        assert task_of(p.prompt) == "copy"
    assert max(lengths) <= MAX_COPY_CHARS and max(lengths) >= 40  # long copies are drawn too
    assert min(word_counts) == 1 and max(word_counts) == MAX_COPY_WORDS
    total_words = sum(word_counts)
    assert 0.3 < listed / total_words < 0.8  # both dictionary words and random letters


def test_copy_grading_is_exact():
    p = Problem("copy", "copy the quick brown fox =", "the quick brown fox")
    assert grade(p, "the quick brown fox") and grade(p, " the quick brown fox\n")
    assert not grade(p, "the quick brown")
    assert not grade(p, "the quick  brown fox")
    assert not grade(p, "The quick brown fox")


def test_copy_follows_the_held_out_rule():
    rng = random.Random(1)
    assert not any(is_held_out(training_problem("copy", rng).prompt) for _ in range(500))
    held = held_out_problems("copy", 200)
    assert all(is_held_out(p.prompt) and p.task == "copy" for p in held)
    assert len({p.prompt for p in held}) == 200
    assert held == held_out_problems("copy", 200)  # the same set every time


@pytest.mark.parametrize("task", ["add", "sub"])
def test_uniform_operands_cover_0_to_999_and_stay_out_of_training(task):
    rng = random.Random(2)
    ops = []
    for _ in range(4000):
        p = make_problem(task, rng, "uniform")
        a, b = (int(x) for x in p.prompt.rstrip("=").split("+" if task == "add" else "-"))
        assert p.answer == str(a + b if task == "add" else a - b)
        ops += [a, b]
    three_digit = sum(x >= 100 for x in ops) / len(ops)
    assert 0.87 < three_digit < 0.93  # uniform over 0-999 (the mix would give about 1/3)
    assert min(ops) < 10 and max(ops) > 990
    held = held_out_problems(task, 300, dist="uniform")
    assert all(is_held_out(p.prompt) for p in held)
    assert not any(is_held_out(training_problem(task, rng, "uniform").prompt) for _ in range(300))
    # a different draw from the mix's held-out set
    assert {p.prompt for p in held} != {p.prompt for p in held_out_problems(task, 300)}


def test_evaluation_sets_name_every_task_and_both_distributions():
    sets = evaluation_sets(20)
    assert list(sets) == [*TASKS, "add_uniform", "sub_uniform"]
    assert "copy" in TASKS
    assert all(len(ps) == 20 for ps in sets.values())
    with pytest.raises(ValueError, match="distribution"):
        make_problem("add", random.Random(0), "gaussian")


def test_the_bundled_models_tasks_are_demo_tasks():
    from nanoserve.demo_tasks import BUNDLED_MODEL_TASKS

    assert set(BUNDLED_MODEL_TASKS) <= set(TASKS)
    assert set(BUNDLED_MODEL_TASKS) == {"add", "sub", "sort", "reverse", "copy"}  # since stage 2
