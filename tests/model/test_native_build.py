"""The one native-extension loader: both extensions are built with OpenMP (their at::parallel_for really
uses torch's threads), a first build happens in the foreground and says so, a cached one is silent, and
the cached name follows the sources."""

import logging
import os
import time
import types
import uuid

import pytest
import torch

from nanoserve.model import cpu_linear, native_build, native_kernels, quant_kernels

LOADERS = {
    "cpu_linear": (cpu_linear.load_avx512_kernel, cpu_linear.avx512_unavailable_reason),
    "native_kernels": (native_kernels.load_native_kernels, native_kernels.unavailable_reason),
    "quant_kernels": (quant_kernels.load_quant_kernels, quant_kernels.quant_kernels_unavailable_reason),
}


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_extension_runs_on_every_thread(name):
    # Without -fopenmp at::parallel_for silently runs on the calling thread alone (half the speed here).
    load, reason = LOADERS[name]
    ext = load()
    if ext is None:
        pytest.skip(f"{name} unavailable: {reason()}")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert ext.parallel_threads_used(64) == 2
        torch.set_num_threads(1)
        assert ext.parallel_threads_used(64) == 1
    finally:
        torch.set_num_threads(before)


def _fake_build(monkeypatch, seconds: float, tmp_path):
    """Replace torch's compiler driver by one that takes `seconds` and records what it was asked; the
    build folders go under tmp_path."""
    from torch.utils import cpp_extension

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "extensions"))

    calls = []

    def load(**kwargs):
        calls.append(kwargs)
        time.sleep(seconds)
        return types.ModuleType(kwargs["name"])

    monkeypatch.setattr(cpp_extension, "load", load)
    return calls


def test_first_build_is_in_the_foreground_and_says_so_with_progress(monkeypatch, caplog, tmp_path):
    calls = _fake_build(monkeypatch, 0.3, tmp_path)
    monkeypatch.setattr(native_build, "built_on_disk", lambda name: False)
    monkeypatch.setattr(native_build, "PROGRESS_EVERY_S", 0.05)
    flags = [f"-DNANOSERVE_TEST_{uuid.uuid4().hex}"]  # a name no other test has loaded
    with caplog.at_level(logging.INFO, logger="nanoserve.model.native_build"):
        ext = native_build.load_extension("nanoserve_probe", ["native_kernels.cpp"], flags)
    assert isinstance(ext, types.ModuleType) and len(calls) == 1  # returned once built, not later
    assert calls[0]["name"].startswith("nanoserve_probe_") and "-fopenmp" in calls[0]["extra_cflags"]
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].startswith("compiling native CPU kernels nanoserve_probe (first start only")
    assert any(m.startswith("still compiling nanoserve_probe") for m in messages[1:-1])
    assert messages[-1].startswith("compiled nanoserve_probe in")
    assert native_build.load_extension("nanoserve_probe", ["native_kernels.cpp"], flags) is ext
    assert len(calls) == 1, "one build per process"


def test_a_cached_build_loads_silently(monkeypatch, caplog, tmp_path):
    _fake_build(monkeypatch, 0.0, tmp_path)
    monkeypatch.setattr(native_build, "built_on_disk", lambda name: True)
    with caplog.at_level(logging.INFO, logger="nanoserve.model.native_build"):
        native_build.load_extension("nanoserve_probe", ["native_kernels.cpp"], [f"-DT{uuid.uuid4().hex}"])
    assert caplog.records == []


def test_the_cached_name_changes_with_sources_headers_and_flags(monkeypatch, tmp_path):
    monkeypatch.setattr(native_build, "CSRC_DIR", tmp_path)
    (tmp_path / "a.cpp").write_text("int f();")
    (tmp_path / "probe.h").write_text("#pragma once")
    names = [native_build.versioned_name("ext", ["a.cpp"], ["-O3"], [])]
    (tmp_path / "a.cpp").write_text("int f(); // changed")
    names.append(native_build.versioned_name("ext", ["a.cpp"], ["-O3"], []))
    (tmp_path / "probe.h").write_text("#pragma once // changed")
    names.append(native_build.versioned_name("ext", ["a.cpp"], ["-O3"], []))
    names.append(native_build.versioned_name("ext", ["a.cpp"], ["-O2"], []))
    assert len(set(names)) == 4 and all(n.startswith("ext_") for n in names)
    assert native_build.versioned_name("ext", ["a.cpp"], ["-O2"], []) == names[-1]


def test_every_checkout_compiles_the_same_files_in_one_build_folder(monkeypatch, tmp_path):
    # torch rebuilds when the compile command changes; it names the sources and include paths, so they
    # must not depend on where the checkout is (else every clone, CI's included, compiles anew).
    calls = _fake_build(monkeypatch, 0.0, tmp_path)
    flags = [f"-DT{uuid.uuid4().hex}"]
    for checkout in ("a", "b"):
        csrc = tmp_path / checkout / "csrc"
        csrc.mkdir(parents=True)
        (csrc / "k.cpp").write_text('#include "probe.h"\nint f();')
        (csrc / "probe.h").write_text("#pragma once")
        monkeypatch.setattr(native_build, "CSRC_DIR", csrc)
        native_build._loaded.clear()
        native_build.load_extension("nanoserve_probe", ["k.cpp"], flags)
    build_dir = native_build.build_directory(calls[0]["name"])
    assert calls[0] == calls[1]
    assert calls[0]["sources"] == [str(build_dir / "k.cpp")]
    assert calls[0]["extra_include_paths"] == [str(build_dir)]
    assert calls[0]["build_directory"] == str(build_dir)
    assert (build_dir / "probe.h").read_text() == "#pragma once"


def test_a_lock_left_by_an_interrupted_build_is_removed_and_a_fresh_one_kept(monkeypatch, tmp_path):
    _fake_build(monkeypatch, 0.0, tmp_path)
    monkeypatch.setattr(native_build, "built_on_disk", lambda name: False)
    flags = [f"-DT{uuid.uuid4().hex}"]
    cflags = ["-O3", *flags, *native_build.OPENMP_CFLAGS]
    full_name = native_build.versioned_name("nanoserve_native_kernels", ["native_kernels.cpp"], cflags,
                                            native_build.OPENMP_LDFLAGS)
    lock = native_build.build_directory(full_name) / "lock"
    lock.parent.mkdir(parents=True)
    lock.touch()
    native_build.load_extension("nanoserve_native_kernels", ["native_kernels.cpp"], flags)
    assert lock.exists(), "a lock as young as a build in progress stays"
    native_build._loaded.clear()
    old = time.time() - native_build.STALE_LOCK_S - 60
    os.utime(lock, (old, old))
    native_build.load_extension("nanoserve_native_kernels", ["native_kernels.cpp"], flags)
    assert not lock.exists()
