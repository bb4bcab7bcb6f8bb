"""Run a learner's Python function against hidden test cases, in a subprocess that cannot do harm.

Layers, outermost first:
1. Static check before anything runs: imports outside a small allow-list (os, socket, subprocess, sys,
   shutil, pathlib, ctypes, importlib, ... are named and refused) and escape hatches (`__import__`,
   `open`, `eval`, `exec`, dunder attributes such as `__class__`) are refused with a clear message.
2. A fresh `python -I` child in its own session, whose cwd is an empty temporary directory, with an
   empty environment, CPU-time, address-space, file-size and open-file limits (resource.setrlimit),
   and a wall-clock timeout after which the whole process group is killed (a `while True:` loop).
3. Inside the child the code runs with a trimmed `__builtins__`, an import hook that enforces the same
   allow-list, and `socket` replaced so no connection can be opened.
The child only *computes* the learner's outputs for the given arguments; expected values stay in the
parent (they come from the planner), so the code cannot read them.
"""

from __future__ import annotations

import ast
import json
import math
import os
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

ALLOWED_IMPORTS = frozenset({
    "math", "statistics", "fractions", "decimal", "itertools", "functools", "collections", "heapq",
    "bisect", "dataclasses", "typing", "operator", "random", "re", "string", "numbers", "cmath",
})
FORBIDDEN_IMPORTS = frozenset({
    "os", "socket", "subprocess", "sys", "shutil", "pathlib", "ctypes", "importlib", "builtins", "io",
    "multiprocessing", "threading", "signal", "resource", "pickle", "marshal", "urllib", "http",
    "requests", "asyncio", "selectors", "select", "ssl", "pty", "tempfile", "glob", "inspect", "gc",
    "code", "codeop", "runpy", "posix", "nt", "mmap", "fcntl", "ftplib", "smtplib", "telnetlib",
})
FORBIDDEN_NAMES = frozenset({
    "__import__", "open", "eval", "exec", "compile", "globals", "locals", "vars", "input", "breakpoint",
    "getattr", "setattr", "delattr", "__builtins__", "exit", "quit", "help", "memoryview", "__loader__",
    "__spec__",
})

DEFAULT_TIME_LIMIT_S = 2.0
DEFAULT_MEMORY_LIMIT_BYTES = 512 * 2**20


@dataclass
class CaseResult:
    args: list[Any]
    expected: Any
    got: Any = None
    passed: bool = False
    error: str = ""


@dataclass
class SandboxResult:
    ok: bool                       # every case passed
    message: str                   # one line for the learner
    cases: list[CaseResult] = field(default_factory=list)
    refused: bool = False          # the static check refused the code; nothing ran
    timed_out: bool = False
    wall_s: float = 0.0

    @property
    def passed(self) -> int:
        return sum(c.passed for c in self.cases)


class SourceRefused(ValueError):
    pass


def check_source(code: str, function_name: str) -> None:
    """Raise SourceRefused naming the first forbidden construct; also checks the function is defined."""
    try:
        tree = ast.parse(code)
    except SyntaxError as e:
        raise SourceRefused(f"syntax error on line {e.lineno}: {e.msg}") from None
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                root = name.split(".")[0]
                if root in FORBIDDEN_IMPORTS:
                    raise SourceRefused(
                        f"line {node.lineno}: `import {root}` is refused — build answers run without file, "
                        f"process or network access; use plain arithmetic (allowed modules: "
                        f"{', '.join(sorted(ALLOWED_IMPORTS))})")
                if root not in ALLOWED_IMPORTS:
                    raise SourceRefused(
                        f"line {node.lineno}: module {root!r} is not available here (allowed: "
                        f"{', '.join(sorted(ALLOWED_IMPORTS))})")
        elif isinstance(node, ast.Name) and node.id in FORBIDDEN_NAMES:
            raise SourceRefused(f"line {node.lineno}: `{node.id}` is refused in the sandbox")
        elif isinstance(node, ast.Attribute) and node.attr.startswith("__") and node.attr.endswith("__"):
            raise SourceRefused(f"line {node.lineno}: dunder attribute `.{node.attr}` is refused "
                                "in the sandbox")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "__" in node.value:
            raise SourceRefused(f"line {node.lineno}: strings containing '__' are refused in the sandbox")
    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    if function_name not in defined:
        found = ", ".join(sorted(defined)) or "none"
        raise SourceRefused(f"define a function named `{function_name}` (found: {found})")


# The child: reads {"code", "function", "cases"} from stdin, prints one JSON line with the outputs.
_CHILD = r'''
import builtins, json, sys
ALLOWED = set(%(allowed)r)
FORBIDDEN = set(%(forbidden)r)
req = json.loads(sys.stdin.read())
import socket as _socket
def _no_network(*a, **k):
    raise PermissionError("network access is disabled in the workbook sandbox")
_socket.socket = _no_network
_socket.create_connection = _no_network
_real_import = builtins.__import__
def _guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
    if name.split(".")[0] not in ALLOWED:
        raise ImportError(f"import of {name!r} is refused in the workbook sandbox")
    return _real_import(name, globals, locals, fromlist, level)
safe = {k: getattr(builtins, k) for k in dir(builtins) if k not in FORBIDDEN and not k.startswith("_")}
safe["__import__"] = _guarded_import
safe["__build_class__"] = builtins.__build_class__
safe["__name__"] = "learner"
out = sys.stdout
g = {"__builtins__": safe, "__name__": "learner"}
MARK = req["marker"]  # a per-run nonce the learner's code cannot see, so it cannot forge a result line
def emit(obj):
    out.write("\n" + MARK + json.dumps(obj) + "\n")
    out.flush()
try:
    exec(compile(req["code"], "<your code>", "exec"), g)
except BaseException as e:
    emit({"load_error": f"{type(e).__name__}: {e}"}); sys.exit(0)
fn = g.get(req["function"])
if not callable(fn):
    emit({"load_error": f"{req['function']} is not a function"}); sys.exit(0)
results = []
for args in req["cases"]:
    try:
        v = fn(*args)
        try:
            json.dumps(v)
        except (TypeError, ValueError):
            v = repr(v)
        results.append({"value": v})
    except BaseException as e:
        results.append({"error": f"{type(e).__name__}: {e}"})
emit({"results": results})
'''


def _limits(time_limit_s: float, memory_bytes: int):
    def apply() -> None:
        cpu = max(1, math.ceil(time_limit_s)) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return apply


def run_function(
    code: str,
    function_name: str,
    cases: list[list[Any]],
    time_limit_s: float = DEFAULT_TIME_LIMIT_S,
    memory_bytes: int = DEFAULT_MEMORY_LIMIT_BYTES,
) -> tuple[list[dict[str, Any]] | None, str, bool, float]:
    """(per-case outputs or None, error message, timed_out, wall_s). Static check first."""
    check_source(code, function_name)
    child = _CHILD % {"allowed": sorted(ALLOWED_IMPORTS), "forbidden": sorted(FORBIDDEN_NAMES)}
    marker = f"@@RESULT-{secrets.token_hex(8)}@@"
    payload = json.dumps({"code": code, "function": function_name, "cases": cases, "marker": marker})
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nanoserve-sandbox-") as tmp:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-c", child],
            cwd=tmp, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True, preexec_fn=_limits(time_limit_s, memory_bytes),
        )
        try:
            stdout, stderr = proc.communicate(payload.encode(), timeout=time_limit_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.communicate()
            return None, (f"your function did not return within {time_limit_s:g} s and was stopped "
                          f"(an endless loop?)"), True, time.perf_counter() - t0
    wall = time.perf_counter() - t0
    text = stdout.decode(errors="replace")
    at = text.rfind(marker)
    if at < 0:
        if proc.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
            return None, f"your function used more than {time_limit_s:g} s of CPU and was stopped", True, wall
        err = stderr.decode(errors="replace").strip().splitlines()
        last = err[-1] if err else f"exit status {proc.returncode}"
        if "MemoryError" in last:
            last = f"MemoryError: your code exceeded the {memory_bytes // 2**20} MiB memory limit"
        return None, f"your code crashed: {last}", False, wall
    data = json.loads(text[at + len(marker):].strip().splitlines()[0])
    if "load_error" in data:
        msg = data["load_error"]
        if "MemoryError" in msg:
            msg = f"MemoryError: your code exceeded the {memory_bytes // 2**20} MiB memory limit"
        return None, f"your code failed to load: {msg}", False, wall
    return data["results"], "", False, wall


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def values_match(got: Any, expected: Any, rel_tol: float = 1e-6, abs_tol: float = 1e-9) -> bool:
    """Numbers within tolerance; lists/tuples elementwise; bools and strings exactly."""
    if isinstance(expected, bool) or isinstance(got, bool):
        return isinstance(got, bool) and isinstance(expected, bool) and got == expected
    if isinstance(expected, (int, float)):
        return isinstance(got, (int, float)) and math.isfinite(got) and math.isclose(
            got, expected, rel_tol=rel_tol, abs_tol=abs_tol)
    if isinstance(expected, (list, tuple)):
        return isinstance(got, (list, tuple)) and len(got) == len(expected) and all(
            values_match(g, e, rel_tol, abs_tol) for g, e in zip(got, expected, strict=True))
    return got == expected


def grade_function(
    code: str,
    function_name: str,
    cases: list[tuple[list[Any], Any]],
    rel_tol: float = 1e-6,
    time_limit_s: float = DEFAULT_TIME_LIMIT_S,
    memory_bytes: int = DEFAULT_MEMORY_LIMIT_BYTES,
) -> SandboxResult:
    """Run `function_name` from `code` on each (args, expected) case and compare."""
    try:
        outputs, err, timed_out, wall = run_function(
            code, function_name, [list(a) for a, _ in cases], time_limit_s, memory_bytes)
    except SourceRefused as e:
        return SandboxResult(False, f"Refused before running: {e}", refused=True)
    results = [CaseResult(list(a), exp) for a, exp in cases]
    if outputs is None:
        return SandboxResult(False, err, results, timed_out=timed_out, wall_s=wall)
    for r, out in zip(results, outputs, strict=True):
        raises = r.expected.get("raises") if isinstance(r.expected, dict) else None
        if raises:
            r.got = out.get("error", out.get("value"))
            r.passed = "error" in out and out["error"].split(":")[0] == raises
            if not r.passed:
                r.error = f"expected it to raise {raises}, got {r.got!r}"
        elif "error" in out:
            r.error = out["error"]
            if r.error.startswith("MemoryError"):
                r.error = f"MemoryError: exceeded the {memory_bytes // 2**20} MiB memory limit"
        else:
            r.got = out["value"]
            r.passed = values_match(r.got, r.expected, rel_tol)
    n_ok = sum(r.passed for r in results)
    if n_ok == len(results):
        return SandboxResult(True, f"All {n_ok} hidden tests passed.", results, wall_s=wall)
    first = next(r for r in results if not r.passed)
    detail = first.error or f"returned {first.got!r}, expected {_short(first.expected)}"
    call = f"{function_name}({', '.join(map(repr, first.args))})"
    return SandboxResult(False, f"{n_ok}/{len(results)} hidden tests passed. First failure: {call} {detail}",
                         results, wall_s=wall)


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return repr(v)
