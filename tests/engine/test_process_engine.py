"""The replica process's lifeline: it dies with its parent even when the parent is killed with -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from nanoserve.engine.process_engine import _portable
from nanoserve.errors import InvalidRequestError, PromptTooLongError

# A parent that spawns one child (which calls _die_with_parent, says so in a file, then sleeps), prints
# the child's pid, and waits.
PARENT = """
import multiprocessing, os, sys, time
from nanoserve.engine.process_engine import _die_with_parent

def child(parent_pid, marker):
    _die_with_parent(parent_pid)
    open(marker, "w").close()
    time.sleep(120)

if __name__ == "__main__":
    p = multiprocessing.get_context("spawn").Process(target=child, args=(os.getpid(), sys.argv[1]))
    p.start()
    print(p.pid, flush=True)
    time.sleep(120)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_child_dies_when_its_parent_is_killed(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    marker = tmp_path / "armed"
    parent = subprocess.Popen([sys.executable, str(script), str(marker)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        child = psutil.Process(int(parent.stdout.readline()))
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists() and child.is_running()
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        while child.is_running() and child.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    finally:
        parent.kill()


def test_errors_cross_the_pipe_as_the_server_maps_them():
    err = _portable(PromptTooLongError("too long", 10, 5))  # its __init__ does not unpickle
    assert type(err) is InvalidRequestError and err.param == "prompt" and err.message == "too long"
    same = InvalidRequestError("bad", "n")
    assert _portable(same) is same
    assert isinstance(_portable(_Unpicklable("x", 1)), RuntimeError)


class _Unpicklable(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code
