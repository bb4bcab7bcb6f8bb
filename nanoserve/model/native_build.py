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
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

log = logging.getLogger(__name__)

CSRC_DIR = Path(__file__).resolve().parent.parent / "csrc"
OPENMP_CFLAGS = ["-fopenmp"]
OPENMP_LDFLAGS = ["-fopenmp"]
PROGRESS_EVERY_S = 15.0  # how often a first-start build says it is still compiling
STALE_LOCK_S = 600.0  # a build lock older than this was left by an interrupted build

_loaded: dict[str, ModuleType] = {}
_lock = threading.Lock()


def versioned_name(name: str, sources: list[str], cflags: list[str], ldflags: list[str]) -> str:
    """`name` + a hash of the sources, every header in csrc/, the flags and the Python and torch versions:
    what the build is cached as (an upgrade must not load a module built against another ABI)."""
    import torch

    digest = hashlib.sha256()
    for path in [CSRC_DIR / s for s in sources] + sorted(CSRC_DIR.glob("*.h")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    digest.update(" ".join([*cflags, "|", *ldflags, "|", sys.version, torch.__version__]).encode())
    return f"{name}_{digest.hexdigest()[:12]}"


def build_directory(full_name: str) -> Path:
    """Where the extension is built and cached: $TORCH_EXTENSIONS_DIR, else torch's per-user cache, one
    folder per versioned name, whichever checkout asks (the name already carries the Python and torch
    versions that torch's own per-version subfolder would)."""
    from torch.utils.cpp_extension import get_default_build_root

    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()) / full_name


def built_on_disk(full_name: str) -> bool:
    return (build_directory(full_name) / f"{full_name}.so").is_file()


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

        build_dir = build_directory(full_name)
        cached = built_on_disk(full_name)
        if not cached:
            log.warning("compiling native CPU kernels %s (first start only, about a minute)…", name)
            _remove_stale_lock(build_dir)
        build_dir.mkdir(parents=True, exist_ok=True)
        # torch rebuilds when the compile command changes, and the command names the source and include
        # paths: building from a copy in the build folder keeps one cached build for every checkout.
        for path in [CSRC_DIR / s for s in sources] + sorted(CSRC_DIR.glob("*.h")):
            _copy_if_changed(path, build_dir / path.name)
        started = time.perf_counter()
        done = threading.Event()
        if not cached:
            threading.Thread(target=_say_still_compiling, args=(name, started, done), daemon=True).start()
        try:
            ext = cpp_extension.load(
                name=full_name,
                sources=[str(build_dir / s) for s in sources],
                extra_cflags=cflags,
                extra_ldflags=ldflags,
                extra_include_paths=[str(build_dir)],
                build_directory=str(build_dir),
                verbose=False,
            )
        finally:
            done.set()
        if not cached:
            elapsed_s = time.perf_counter() - started
            log.warning("compiled %s in %.0f s (cached for later starts)", name, elapsed_s)
        _loaded[full_name] = ext
        return ext


def _copy_if_changed(src: Path, dst: Path) -> None:
    """Copy atomically (another process may be reading it), and only when it differs: a rewritten file
    would look newer to ninja and trigger a rebuild."""
    data = src.read_bytes()
    if dst.is_file() and dst.read_bytes() == data:
        return
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, dst)


def _remove_stale_lock(build_dir: Path) -> None:
    """torch's build lock is a bare file: a build killed midway (Ctrl-C on a first start) leaves it, and
    every later start would wait on it forever. No build takes STALE_LOCK_S, so an older lock is stale."""
    lock = build_dir / "lock"
    try:
        age_s = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return
    if age_s > STALE_LOCK_S:
        log.warning("removing a stale build lock %s (%.0f s old: an interrupted build)", lock, age_s)
        lock.unlink(missing_ok=True)


def _say_still_compiling(name: str, started: float, done: threading.Event) -> None:
    """Log a line every PROGRESS_EVERY_S while the foreground build runs (it only logs)."""
    while not done.wait(PROGRESS_EVERY_S):
        log.warning("still compiling %s… %.0f s", name, time.perf_counter() - started)


class LazyExtension:
    """One extension, built on first `load()` (then cached on disk) and at most once per process.

    `load()` returns the module, or None with the reason in `.reason` (logged once) when `check()`
    names why this machine cannot use it (e.g. a missing CPU feature, a disabling variable) or the build
    fails (no compiler, old gcc, sandbox without headers)."""

    def __init__(self, name: str, sources: list[str], extra_cflags: list[str] = (),
                 check: Callable[[], str | None] | None = None, label: str | None = None) -> None:
        self.name, self.sources, self.extra_cflags = name, sources, list(extra_cflags)
        self.check, self.label = check, label or name
        self.module: ModuleType | None = None
        self.reason: str | None = None
        self._lock = threading.Lock()

    def load(self) -> ModuleType | None:
        with self._lock:
            if self.module is not None or self.reason is not None:
                return self.module
            self.reason = self.check() if self.check is not None else None
            if self.reason is None:
                try:
                    self.module = load_extension(self.name, self.sources, self.extra_cflags)
                except Exception as e:  # noqa: BLE001 - any build failure means "not available"
                    self.reason = f"build failed: {type(e).__name__}: {str(e)[:300]}"
            if self.reason is not None:
                log.info("%s unavailable (%s)", self.label, self.reason)
            return self.module
