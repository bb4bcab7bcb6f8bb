"""The one loader of nanoserve's native CPU extensions (C++ under nanoserve/csrc/).

Every extension is compiled with OpenMP: ATen's `at::parallel_for` is a header template whose OpenMP
backend is a `#pragma omp parallel`, and an extension compiled without `-fopenmp` drops the pragma
silently and runs the whole range on the calling thread (the kernels then used one core of two). The
extension links `libgomp.so.1`, the soname torch already loaded, so both share one OpenMP runtime and
one thread pool. Every source includes csrc/threads_probe.h, whose `parallel_threads_used(n)` lets a
test fail when the flag is lost.

The extension's name carries a hash of its sources, the headers beside them and the flags, so a changed
source builds afresh instead of loading a stale module. A build on disk loads in well under a second and
silently; a first start compiles in the foreground (about a minute on a small machine) and says so,
with a progress line while it waits, so a run never switches kernels midway.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from pathlib import Path
from types import ModuleType

log = logging.getLogger(__name__)

CSRC_DIR = Path(__file__).resolve().parent.parent / "csrc"
OPENMP_CFLAGS = ["-fopenmp"]
OPENMP_LDFLAGS = ["-fopenmp"]
PROGRESS_EVERY_S = 15.0  # how often a first-start build says it is still compiling

_loaded: dict[str, ModuleType] = {}
_lock = threading.Lock()


def versioned_name(name: str, sources: list[str], cflags: list[str], ldflags: list[str]) -> str:
    """`name` + a hash of the sources, every header in csrc/ and the flags: what the build is cached as."""
    digest = hashlib.sha256()
    for path in [CSRC_DIR / s for s in sources] + sorted(CSRC_DIR.glob("*.h")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    digest.update(" ".join(cflags + ["|"] + ldflags).encode())
    return f"{name}_{digest.hexdigest()[:12]}"


def built_on_disk(full_name: str) -> bool:
    try:
        from torch.utils.cpp_extension import _get_build_directory

        return os.path.isfile(os.path.join(_get_build_directory(full_name, False), f"{full_name}.so"))
    except Exception:  # a private torch helper: if it moved, say a build is needed (only the log differs)
        return False


def load_extension(
    name: str, sources: list[str], extra_cflags: list[str] = (), extra_ldflags: list[str] = ()
) -> ModuleType:
    """Compile (first time only) and import the extension built from csrc/`sources`; raises on failure.

    name: a short label ("nanoserve_native_kernels"); the module is cached on disk under it plus a hash.
    Called once per process per extension (later calls return the same module).
    """
    cflags = ["-O3", *extra_cflags, *OPENMP_CFLAGS]
    ldflags = [*extra_ldflags, *OPENMP_LDFLAGS]
    full_name = versioned_name(name, sources, cflags, ldflags)
    with _lock:
        if full_name in _loaded:
            return _loaded[full_name]
        from torch.utils import cpp_extension

        cached = built_on_disk(full_name)
        if not cached:
            log.warning("compiling native CPU kernels %s (first start only, about a minute)…", name)
        started = time.perf_counter()
        done = threading.Event()
        if not cached:
            threading.Thread(target=_say_still_compiling, args=(name, started, done), daemon=True).start()
        try:
            ext = cpp_extension.load(
                name=full_name,
                sources=[str(CSRC_DIR / s) for s in sources],
                extra_cflags=cflags,
                extra_ldflags=ldflags,
                extra_include_paths=[str(CSRC_DIR)],
                verbose=False,
            )
        finally:
            done.set()
        if not cached:
            elapsed_s = time.perf_counter() - started
            log.warning("compiled %s in %.0f s (cached for later starts)", name, elapsed_s)
        _loaded[full_name] = ext
        return ext


def _say_still_compiling(name: str, started: float, done: threading.Event) -> None:
    """Log a line every PROGRESS_EVERY_S while the foreground build runs (it only logs)."""
    while not done.wait(PROGRESS_EVERY_S):
        log.warning("still compiling %s… %.0f s", name, time.perf_counter() - started)
