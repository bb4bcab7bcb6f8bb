"""The build sandbox: hidden tests in a subprocess with time and memory limits and no escape hatches."""

from __future__ import annotations

import time

import pytest

from nanoserve.workbook.sandbox import grade_function

CASES = [([4, 1], 0.75), ([16, 32], 15 / 47)]
GOOD = "def f(pp, m):\n    return (pp - 1) / (pp - 1 + m)\n"


def test_correct_function_passes_and_wrong_one_fails():
    assert grade_function(GOOD, "f", CASES).ok
    bad = grade_function("def f(pp, m):\n    return pp / (pp + m)\n", "f", CASES)
    assert not bad.ok and bad.passed == 0 and "expected" in bad.message


def test_endless_loop_is_killed_within_the_time_limit():
    t0 = time.perf_counter()
    res = grade_function("def f(pp, m):\n    while True:\n        pass\n", "f", CASES, time_limit_s=1.0)
    elapsed = time.perf_counter() - t0
    assert not res.ok and res.timed_out
    # whichever limit fires first (wall clock on a loaded box, the 1 s CPU rlimit on a quiet one)
    assert ("did not return within 1 s" in res.message or "used more than 1 s of CPU" in res.message)
    assert "stopped" in res.message
    assert elapsed < 3.0


@pytest.mark.parametrize("module", ["os", "socket", "subprocess", "sys", "shutil", "pathlib", "ctypes",
                                    "importlib"])
def test_forbidden_imports_are_refused_before_running(module):
    for code in (f"import {module}\n" + GOOD, f"from {module} import *\n" + GOOD,
                 f"def f(pp, m):\n    import {module}\n    return 0\n"):
        res = grade_function(code, "f", CASES)
        assert not res.ok and res.refused and res.cases == []
        assert f"import {module}" in res.message and "refused" in res.message


@pytest.mark.parametrize("snippet", ["__import__('os')", "open('/etc/passwd').read()", "eval('1')",
                                     "exec('x = 1')", "getattr(pp, 'real')", "(1).__class__",
                                     "compile('1', 'x', 'eval')"])
def test_escape_hatches_are_refused(snippet):
    res = grade_function(f"def f(pp, m):\n    return {snippet}\n", "f", CASES)
    assert res.refused and "refused" in res.message


def test_memory_bomb_hits_the_limit_not_the_host():
    res = grade_function("def f(pp, m):\n    x = bytearray(2 * 1024 ** 3)\n    return 1\n", "f", CASES,
                         memory_bytes=256 * 2**20)
    assert not res.ok and "MemoryError" in res.message


def test_runtime_errors_and_missing_function_are_reported():
    res = grade_function("def f(pp, m):\n    return 1 / 0\n", "f", CASES)
    assert "ZeroDivisionError" in res.message
    res = grade_function("def g(pp, m):\n    return 0\n", "f", CASES)
    assert res.refused and "define a function named `f`" in res.message
    res = grade_function("def f(pp, m)\n    return 0\n", "f", CASES)
    assert res.refused and "syntax error" in res.message


def test_expected_exceptions_can_be_tested():
    code = "def f(a, b):\n    if a > b:\n        raise ValueError('no')\n    return a / b\n"
    assert grade_function(code, "f", [([1, 2], 0.5), ([3, 2], {"raises": "ValueError"})]).ok
    assert not grade_function("def f(a, b):\n    return 0.5\n", "f", [([3, 2], {"raises": "ValueError"})]).ok


def test_printed_output_cannot_forge_a_result():
    code = ("def f(pp, m):\n    print('@@RESULT@@{\"results\": [{\"value\": 0.75}, {\"value\": 0.3191}]}')\n"
            "    return -1\n")
    res = grade_function(code, "f", CASES)
    assert not res.ok and res.passed == 0
