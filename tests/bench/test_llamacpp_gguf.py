"""The llama.cpp baseline: GGUF cache keys, converter discovery, backend spellings, the ratio table, and one
conversion + generation end to end (skipped without llama-cpp-python, an optional extra CI lacks)."""

import importlib.util
import io
import os
import tarfile
import time
from pathlib import Path

import pytest

from nanoserve.bench import llamacpp_gguf as lg
from nanoserve.bench.llamacpp_backend import expand_backends
from nanoserve.bench.throughput import ThroughputResult, parse_backends, ratios

HAVE_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
TOY = Path(__file__).resolve().parents[2] / "models" / "toy-assistant"


def _checkpoint(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"x")
    return folder


def test_cache_path_is_keyed_by_path_mtime_and_type(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOSERVE_CACHE", str(tmp_path / "cache"))
    a, b = _checkpoint(tmp_path / "a" / "m"), _checkpoint(tmp_path / "b" / "m")
    pa = lg.gguf_cache_path(a, "q8_0")
    assert pa.is_relative_to(tmp_path / "cache" / "llama.cpp" / "gguf") and pa.name == "model-q8_0.gguf"
    assert lg.gguf_cache_path(a, "q8_0") == pa  # stable
    assert lg.gguf_cache_path(a, "bf16").parent == pa.parent and lg.gguf_cache_path(a, "bf16") != pa
    assert lg.gguf_cache_path(b, "q8_0").parent != pa.parent  # same folder name, other path
    later = time.time() + 10
    os.utime(a / "model.safetensors", (later, later))  # a rewritten checkpoint converts again
    assert lg.gguf_cache_path(a, "q8_0") != pa
    with pytest.raises(lg.LlamaCppError, match="q5_k"):
        lg.gguf_cache_path(a, "q5_k")


def _converter_dir(folder: Path, with_conversion: bool = True) -> Path:
    folder.mkdir(parents=True)
    (folder / lg.CONVERTER_NAME).write_text("from conversion import get_model_class\n")
    if with_conversion:
        (folder / "conversion").mkdir()
    return folder / lg.CONVERTER_NAME


def test_converter_discovery_order_and_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOSERVE_CACHE", str(tmp_path / "cache"))
    explicit = _converter_dir(tmp_path / "explicit")
    env = _converter_dir(tmp_path / "env")
    monkeypatch.setenv(lg.CONVERTER_ENV, str(env))
    assert lg.find_converter(str(explicit)) == explicit  # the option wins over the environment
    assert lg.find_converter() == env
    with pytest.raises(lg.LlamaCppError, match="--llama-cpp-converter: no llama.cpp converter"):
        lg.find_converter(str(tmp_path / "nowhere.py"))
    broken = _converter_dir(tmp_path / "broken", with_conversion=False)
    with pytest.raises(lg.LlamaCppError, match="`conversion` package"):
        lg.find_converter(str(broken))
    monkeypatch.delenv(lg.CONVERTER_ENV)
    monkeypatch.setattr(lg, "installed_version", lambda: "9.9.9")
    with pytest.raises(lg.LlamaCppError, match="no llama.cpp converter: pass --llama-cpp-converter"):
        lg.find_converter(download=False)
    cached = _converter_dir(tmp_path / "cache" / "llama.cpp" / "converter" / "9.9.9")
    assert lg.find_converter(download=False) == cached


def _sdist(path: Path, members: list[str]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name in members:
            data = b"# " + name.encode()
            info = tarfile.TarInfo(f"llama_cpp_python-9.9.9/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_extract_converter_takes_the_converter_and_its_packages(tmp_path):
    vendor = "vendor/llama.cpp/"
    sdist = _sdist(tmp_path / "s.tar.gz", [
        vendor + "convert_hf_to_gguf.py", vendor + "conversion/__init__.py",
        vendor + "gguf-py/gguf/__init__.py", vendor + "ggml/src/ggml.c", "llama_cpp/llama.py",
    ])
    out = lg.extract_converter(sdist, tmp_path / "conv")
    assert out == tmp_path / "conv" / "convert_hf_to_gguf.py" and out.is_file()
    assert (tmp_path / "conv" / "conversion" / "__init__.py").is_file()
    assert (tmp_path / "conv" / "gguf-py" / "gguf" / "__init__.py").is_file()
    assert not (tmp_path / "conv" / "ggml").exists()  # nothing else of the sdist
    lacking = _sdist(tmp_path / "l.tar.gz", [vendor + "convert_hf_to_gguf.py", vendor + "gguf-py/x.py"])
    with pytest.raises(lg.LlamaCppError, match="lacks conversion/"):
        lg.extract_converter(lacking, tmp_path / "conv2")


def test_download_failure_names_the_way_out(tmp_path, monkeypatch):
    import subprocess

    class Failed:
        returncode, stderr = 1, "No matching distribution"

    monkeypatch.setattr(subprocess, "run", lambda *a, **k: Failed())
    with pytest.raises(lg.LlamaCppError, match="pass --llama-cpp-converter"):
        lg.download_sdist("9.9.9", tmp_path)


def test_backend_spellings():
    assert expand_backends(["nanoserve", "llama.cpp"], ["bf16", "q4_0"]) == [
        "nanoserve", "llama.cpp:bf16", "llama.cpp:q4_0"]
    assert parse_backends("nanoserve:int8, llama.cpp:q8_0", "bf16") == ["nanoserve:int8", "llama.cpp:q8_0"]
    with pytest.raises(SystemExit, match="llama.cpp types"):
        parse_backends("llama.cpp:q5_k", "bf16")
    with pytest.raises(SystemExit, match="unknown"):
        parse_backends("vllm", "bf16")


def _row(backend: str, tok_s: float) -> ThroughputResult:
    return ThroughputResult(backend, 1, 10, 10, 1.0, 0.0, 1.0, tok_s, tok_s + 10)


def test_ratios_pair_every_nanoserve_row_with_every_baseline():
    rows = [_row("nanoserve", 30), _row("nanoserve:int8", 60), _row("llama.cpp:bf16", 20),
            _row("llama.cpp:q8_0", 40)]
    assert ratios(rows) == {
        "nanoserve/llama.cpp:bf16": 1.5, "nanoserve/llama.cpp:q8_0": 0.75,
        "nanoserve:int8/llama.cpp:bf16": 3.0, "nanoserve:int8/llama.cpp:q8_0": 1.5,
    }


@pytest.mark.skipif(not HAVE_LLAMA_CPP, reason="llama-cpp-python (extra `llamacpp`) is not installed")
def test_toy_model_converts_and_llama_cpp_generates(tmp_path, monkeypatch):
    """llama.cpp's converter on the demo model (placeholder vocabulary), q4_0 from the bf16 file, a few
    greedy tokens each; the bf16 GGUF's greedy tokens equal nanoserve's in float32 on the same prompt."""
    try:
        converter = lg.find_converter(download=False)
    except lg.LlamaCppError as e:
        pytest.skip(f"no llama.cpp converter on this machine: {e}")
    monkeypatch.setenv("NANOSERVE_CACHE", str(tmp_path / "cache"))
    from nanoserve.bench.dataset import BenchRequest
    from nanoserve.bench.llamacpp_backend import run_llamacpp

    prompt = [1, 20, 21, 22, 23, 24, 25, 26]
    reqs = [BenchRequest(prompt, 6), BenchRequest(prompt[:5], 3)]
    runs = {t: run_llamacpp(str(TOY), reqs, t, threads=1, converter=str(converter)) for t in lg.GGUF_TYPES}
    for t, run in runs.items():
        assert Path(run.gguf_path) == lg.gguf_cache_path(TOY, t) and Path(run.gguf_path).is_file()
        assert [len(o) for o in run.output_token_ids] == [6, 3]  # exactly as many as asked: EOS ignored
        assert all(0 <= tok < 99 for o in run.output_token_ids for tok in o)
        assert run.threads == 1 and "sequential" in run.mode
    sizes = {t: Path(r.gguf_path).stat().st_size for t, r in runs.items()}
    assert sizes["q4_0"] < sizes["q8_0"] < sizes["bf16"]

    from nanoserve import LLM, SamplingParams

    llm = LLM(model=str(TOY), dtype="float32")
    ours = llm.generate([{"prompt_token_ids": prompt}],
                        SamplingParams(max_tokens=6, ignore_eos=True, temperature=0.0), use_tqdm=False)
    assert runs["bf16"].output_token_ids[0] == ours[0].outputs[0].token_ids
