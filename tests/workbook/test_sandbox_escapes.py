"""The escape corpus: every known way out of the build sandbox fails, the host stays untouched.

Each attack runs twice: as a learner would submit it (the static check usually refuses it before
anything runs), and with the static check switched off, so the worker's own layers (audit hook,
dropped privileges, network namespace, rlimits, timeout) are what stops it. An attack that worked
would return a string starting with ESCAPED, create the canary file, read the secret, or signal the
test process.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from nanoserve.workbook import sandbox
from nanoserve.workbook.bank import build_cases, default_bank
from nanoserve.workbook.sandbox import grade_function

SECRET = "nanoserve-canary-secret-4711"
OS = "typing.sys.modules['os']"

# name → function body (inside `def f(a):`, `typing` and `random` imported). {canary}, {secret_file}
# and {signal} are filled in per test.
ATTACKS = {
    "random._os.popen": "return 'ESCAPED' + random._os.popen('id').read()",
    "typing.sys os.system": f"{OS}.system('touch {{canary}}')\n    return 'ESCAPED'",
    "subclasses walk to os": (
        "for c in ().__class__.__base__.__subclasses__():\n"
        "        try:\n            g = c.__init__.__globals__\n"
        "        except Exception:\n            continue\n"
        "        if 'system' in g:\n"
        "            g['system']('touch {canary}')\n"
        "            return 'ESCAPED'\n"
        "    return 'not allowed: no target found'"),
    "subclasses walk to Popen": (
        "for c in object.__subclasses__():\n"
        "        if c.__name__ == 'Popen':\n"
        "            return 'ESCAPED' + c(['id']).communicate()\n"
        "    imp = typing.sys.modules['_frozen_importlib']\n"
        "    return 'ESCAPED' + imp._gcd_import('subprocess').Popen(['id'])"),
    "posix via BuiltinImporter": (
        "imp = typing.sys.modules['_frozen_importlib'].BuiltinImporter\n"
        "    posix = typing.sys.modules.get('posix') or imp.load_module('posix')\n"
        "    return 'ESCAPED' + str(posix.system('touch {canary}'))"),
    "ctypes": "import ctypes\n    return 'ESCAPED' + str(ctypes.CDLL(None).system(b'touch {canary}'))",
    "ctypes via sys.modules": (
        "c = typing.sys.modules.get('ctypes')\n"
        "    c = c or typing.sys.modules['_frozen_importlib'].__import__('ctypes')\n"
        "    return 'ESCAPED' + str(c.CDLL(None).system(b'touch {canary}'))"),
    "importlib.import_module": "import importlib\n    return 'ESCAPED' + str(importlib.import_module('os'))",
    "importlib via sys.modules": (
        "imp = typing.sys.modules['_frozen_importlib']\n"
        "    return 'ESCAPED' + str(imp._gcd_import('subprocess').check_output(['id']))"),
    "__import__": "return 'ESCAPED' + __import__('os').popen('id').read()",
    "io.open read": "import io\n    return 'ESCAPED' + io.open('{secret_file}').read()",
    "io.open via sys.modules": "return 'ESCAPED' + typing.sys.modules['io'].open('{secret_file}').read()",
    "os.open read": (
        f"o = {OS}\n    fd = o.open('{{secret_file}}', o.O_RDONLY)\n"
        "    return 'ESCAPED' + o.read(fd, 100).decode()"),
    "/etc/passwd": "return 'ESCAPED' + typing.sys.modules['io'].open('/etc/passwd').read()",
    "open for write": "typing.sys.modules['io'].open('{canary}', 'w').write('x')\n    return 'ESCAPED'",
    "os.open for write": (
        f"o = {OS}\n    o.open('{{canary}}', o.O_WRONLY | o.O_CREAT)\n    return 'ESCAPED'"),
    "signal the server": f"{OS}.kill({OS}.getppid(), {{signal}})\n    return 'ESCAPED'",
    "signal module": (
        "import signal\n    signal.pthread_kill(0, 0)\n"
        f"    {OS}.kill({OS}.getppid(), {{signal}})\n    return 'ESCAPED'"),
    "thread bomb": (
        "t = typing.sys.modules['_thread']\n"
        "    for _ in range(10000):\n        t.start_new_thread(lambda: None, ())\n    return 'ESCAPED'"),
    "threading import": "import threading\n    return 'ESCAPED'",
    "fork bomb": f"while True:\n        {OS}.fork()\n    return 'ESCAPED'",
    "memory bomb": "x = bytearray(8 * 1024 ** 3)\n    return 'ESCAPED'",
    "memory bomb list": "x = [0] * (2 * 1024 ** 3)\n    return 'ESCAPED'",
    "infinite loop": "while True:\n        pass",
    "socket.create_connection": (
        "import socket\n    socket.create_connection(('127.0.0.1', 22), timeout=1)\n    return 'ESCAPED'"),
    "socket via sys.modules": (
        "s = typing.sys.modules['_frozen_importlib']._gcd_import('_socket')\n"
        "    s.socket().connect(('1.1.1.1', 80))\n    return 'ESCAPED'"),
    "environment secrets": (
        f"e = dict({OS}.environ)\n"
        "    if 'NANOSERVE_TEST_SECRET' in e:\n        return 'ESCAPED' + str(e)\n"
        "    return 'not allowed: ' + str(sorted(e))"),
    "server's environ via /proc": (
        f"p = '/proc/%d/environ' % {OS}.getppid()\n"
        "    return 'ESCAPED' + typing.sys.modules['io'].open(p, 'rb').read().decode(errors='replace')"),
    "frame walk to the marker": (
        "return 'ESCAPED' + str(typing.sys._getframe(1).f_locals)"),
    "traceback frame walk": (
        "try:\n        1 / 0\n    except ZeroDivisionError:\n"
        "        tb = typing.sys.exc_info()[2]\n        return 'ESCAPED' + str(tb.tb_frame.f_back.f_locals)"),
}
CLEAR_WORDS = ("not allowed", "refused", "not available", "No module named", "did not return", "memory limit",
               "MemoryError", "CPU", "can't start new thread", "not a function")


@pytest.fixture
def host(tmp_path, monkeypatch):
    """Canary paths outside the sandbox, a secret in the server's environment, a signal trap."""
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text(SECRET)
    secret_file.chmod(0o644)
    tmp_path.chmod(0o755)
    monkeypatch.setenv("NANOSERVE_TEST_SECRET", SECRET)
    got_signal: list[int] = []
    old = signal.signal(signal.SIGUSR1, lambda n, f: got_signal.append(n))
    yield {"canary": str(tmp_path / "canary"), "secret_file": str(secret_file),
           "signal": int(signal.SIGUSR1), "got_signal": got_signal, "tmp": tmp_path}
    signal.signal(signal.SIGUSR1, old)


def _attack(body: str, host: dict) -> str:
    filled = body.format(canary=host["canary"], secret_file=host["secret_file"], signal=host["signal"])
    return f"import typing\nimport random\ndef f(a):\n    {filled}\n"


def _assert_contained(res, host: dict) -> None:
    time.sleep(0.05)      # a signal, had one been sent, is delivered by now
    assert not res.ok
    got = " ".join(str(c.got) + " " + c.error for c in res.cases) + " " + res.message
    assert "ESCAPED" not in got, got
    assert SECRET not in got
    assert "uid=" not in got
    assert not os.path.exists(host["canary"]), "the sandbox wrote outside its directory"
    assert host["got_signal"] == [], "the sandbox signalled the server"
    assert any(w in got for w in CLEAR_WORDS), f"no clear message for the learner: {got!r}"


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_escape_is_refused_as_submitted(name, host):
    res = grade_function(_attack(ATTACKS[name], host), "f", [([1], 0)], time_limit_s=1.0,
                         memory_bytes=256 * 2**20)
    _assert_contained(res, host)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_escape_is_stopped_by_the_worker_without_the_static_check(name, host, monkeypatch):
    monkeypatch.setattr(sandbox, "check_source", lambda code, fn: compile(code, "<code>", "exec"))
    t0 = time.perf_counter()
    res = grade_function(_attack(ATTACKS[name], host), "f", [([1], 0)], time_limit_s=1.0,
                         memory_bytes=256 * 2**20)
    _assert_contained(res, host)
    assert time.perf_counter() - t0 < 30


def test_worker_runs_without_network_or_privileges(monkeypatch):
    """What the worker sees of its host: no interface up, not root, an empty environment."""
    monkeypatch.setattr(sandbox, "check_source", lambda code, fn: compile(code, "<code>", "exec"))
    code = (f"import typing\ndef f(a):\n    o = {OS}\n"
            "    return [o.getuid(), sorted(o.environ), o.getcwd()]\n")
    outputs, err, _, _ = sandbox.run_function(code, "f", [[1]])
    assert err == ""
    uid, env, cwd = outputs[0]["value"]
    if os.geteuid() == 0:
        assert uid != 0
    assert set(env) <= {"LANG", "HOME", "TMPDIR"}
    assert "nanoserve-sandbox-" in cwd


def test_legitimate_builds_still_pass():
    """Every build exercise's reference solution passes its hidden tests inside the locked-down worker,
    and ordinary Python (classes, dataclasses, namedtuple, math, statistics, prints) still works."""
    bank = default_bank()
    builds = [e for e in bank.exercises if e.type == "build"]
    assert builds
    for e in builds:
        res = grade_function(e.solution, e.function, build_cases(e))
        assert res.ok, f"{e.id}: {res.message}"
    code = ("import math, statistics, dataclasses, collections, fractions, typing\n"
            "@dataclasses.dataclass\nclass P:\n    x: float\n"
            "T = collections.namedtuple('T', 'a b')\n"
            "def f(a):\n    print('debug', a)\n"
            "    half = float(fractions.Fraction(1, 2))\n"
            "    return P(math.sqrt(a)).x + statistics.mean([a, a]) + T(1, 2).a + half\n")
    res = grade_function(code, "f", [([4], 7.5)])
    assert res.ok, res.message
