"""Run a learner's Python function against hidden test cases, in a worker process that cannot do harm.

Choice: learner code runs on the server in a locked-down worker process per run, not in the browser
(Pyodide): the hidden tests' expected values stay on the server, nothing large is bundled, and every
layer below is testable here (tests/workbook/test_sandbox_escapes.py is the escape corpus).
Layers, outermost first:
1. Static check before anything runs: code over MAX_CODE_CHARS, imports outside a small allow-list
   (os, socket, subprocess, ctypes, importlib, ... are named and refused) and escape hatches
   (`__import__`, `open`, `eval`, `exec`, dunder attributes) are refused with a clear message.
2. The worker, `python -I -S sandbox_child.py`, in its own session (the wall-clock timeout kills the
   whole process group), cwd and HOME a throwaway directory, an empty environment, stdout/stderr files
   bounded by RLIMIT_FSIZE. Before the learner's code runs it isolates itself: an empty network
   namespace, rlimits (CPU, memory, file size, open files, no processes/threads, no core files), as
   root a drop to `nobody`, and an audit hook refusing sockets, subprocesses, exec/fork/kill, ctypes,
   signals, frame walks, imports outside the allow-list and any `open` outside its directory. See
   sandbox_child.py for the details and their order.
3. Inside, the code runs with trimmed `__builtins__` and an import hook enforcing the allow-list.
The worker only *computes* the learner's outputs for the given arguments; expected values stay in the
parent (they come from the planner), so the code cannot read them.
"""

from __future__ import annotations

import ast
import json
import math
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
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
MAX_CODE_CHARS = 64 * 1024       # longer code is refused before it is parsed


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


CHILD_PROGRAM = Path(__file__).with_name("sandbox_child.py")
STARTUP_GRACE_S = 1.0            # wall time for the worker's own start-up, on top of the learner's limit
FILE_LIMIT_BYTES = 1 << 20       # RLIMIT_FSIZE: the most any one file (stdout included) may grow
NOBODY_UID_GID = (65534, 65534)


def _nobody() -> tuple[int, int]:
    try:
        import pwd
        pw = pwd.getpwnam("nobody")
        return pw.pw_uid, pw.pw_gid
    except (ImportError, KeyError):
        return NOBODY_UID_GID


def run_function(
    code: str,
    function_name: str,
    cases: list[list[Any]],
    time_limit_s: float = DEFAULT_TIME_LIMIT_S,
    memory_bytes: int = DEFAULT_MEMORY_LIMIT_BYTES,
) -> tuple[list[dict[str, Any]] | None, str, bool, float]:
    """(per-case outputs or None, error message, timed_out, wall_s). Static check first."""
    if len(code) > MAX_CODE_CHARS:
        raise SourceRefused(f"your code is {len(code):,} characters; the limit is {MAX_CODE_CHARS:,}")
    check_source(code, function_name)
    uid, gid = _nobody()
    marker = f"@@RESULT-{secrets.token_hex(8)}@@"
    payload = json.dumps({
        "code": code, "function": function_name, "cases": cases, "marker": marker,
        "allowed": sorted(ALLOWED_IMPORTS), "forbidden_names": sorted(FORBIDDEN_NAMES),
        "cpu_s": max(1, math.ceil(time_limit_s)) + 1, "memory_bytes": memory_bytes,
        "file_bytes": FILE_LIMIT_BYTES, "uid": uid, "gid": gid})
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nanoserve-sandbox-") as tmp:
        # The worker may only write in work/ (its cwd and HOME); its stdout and stderr are files the
        # parent opened, so their size is bounded by RLIMIT_FSIZE, not by the parent's memory.
        work = Path(tmp) / "work"
        work.mkdir()
        if os.geteuid() == 0:
            os.chmod(tmp, 0o711)
            os.chown(work, uid, gid)
        with open(Path(tmp) / "stdout", "w+b") as out, open(Path(tmp) / "stderr", "w+b") as err:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", str(CHILD_PROGRAM)], cwd=work, stdin=subprocess.PIPE,
                stdout=out, stderr=err, start_new_session=True,
                env={"LANG": "C.UTF-8", "HOME": str(work), "TMPDIR": str(work)})
            try:
                proc.communicate(payload.encode(), timeout=time_limit_s + STARTUP_GRACE_S)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                proc.wait()
                return None, (f"your function did not return within {time_limit_s:g} s and was stopped "
                              f"(an endless loop?)"), True, time.perf_counter() - t0
            out.seek(0)
            stdout = out.read(FILE_LIMIT_BYTES + 1)
            err.seek(0)
            stderr = err.read(FILE_LIMIT_BYTES + 1)
    wall = time.perf_counter() - t0
    text = stdout.decode(errors="replace")
    at = text.rfind(marker)
    if at < 0:
        if proc.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
            return None, f"your function used more than {time_limit_s:g} s of CPU and was stopped", True, wall
        if len(stdout) >= FILE_LIMIT_BYTES:
            return None, f"your code wrote more than {FILE_LIMIT_BYTES >> 20} MiB of output", False, wall
        err_lines = stderr.decode(errors="replace").strip().splitlines()
        last = err_lines[-1][:500] if err_lines else f"exit status {proc.returncode}"
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
    except (ProcessLookupError, PermissionError):
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
