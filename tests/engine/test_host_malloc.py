"""The CPU serving process's allocator policy (engine/host_malloc.py)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from nanoserve.engine import host_malloc

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="the policy is glibc's mallopt")

# A child process: its allocator is untouched by this test run's engines. It frees a 16 MiB block and
# allocates it again, and reports the page faults of the second allocation's first touch.
_PROBE = r"""
import ctypes, resource, sys
from nanoserve.engine import host_malloc
policy = host_malloc.tune()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
n = 16 << 20
p = libc.malloc(n); ctypes.memset(p, 1, n); libc.free(p)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
p = libc.malloc(n); ctypes.memset(p, 1, n)
print(policy.applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _probe(env: dict[str, str]) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True,
                         env=env).stdout.split()
    return out[0] == "True", int(out[1])


@glibc
def test_freed_activations_are_reused_instead_of_faulted_in_again():
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    applied, faults = _probe(env)
    assert applied and faults < 64  # 16 MiB fresh from the kernel would be 4096 faults of 4 KiB pages
    applied, faults = _probe({**env, "NANOSERVE_MALLOC_TUNE": "0"})
    assert not applied and faults > 1000  # glibc's default: a 16 MiB block comes from mmap every time


def test_the_switch_and_the_result(monkeypatch):
    monkeypatch.setenv("NANOSERVE_MALLOC_TUNE", "0")
    policy = host_malloc._tune()
    assert not policy.applied and "NANOSERVE_MALLOC_TUNE=0" in policy.reason


@glibc
def test_a_cpu_engine_applies_it(tiny_model):
    from nanoserve import LLM

    runner = LLM(model=str(tiny_model("llama"))).llm_engine.runner
    assert runner.malloc_policy is not None and runner.malloc_policy.applied
    assert runner.malloc_policy.mmap_threshold_bytes == 32 << 20
