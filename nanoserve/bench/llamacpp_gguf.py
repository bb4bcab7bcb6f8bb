"""The llama.cpp baseline's GGUF files: made from the benchmarked checkpoint by llama.cpp's own tools, cached.

- bf16 and q8_0: llama.cpp's `convert_hf_to_gguf.py --outtype bf16|q8_0` on the checkpoint folder;
- q4_0: llama.cpp's quantizer (`llama_cpp.llama_model_quantize`, what `llama-quantize` runs) on the
  bf16 GGUF, with its defaults (so, as for any llama.cpp user, a few tensors such as the output
  matrix may keep a wider type).

Files live under `<nanoserve cache>/llama.cpp/gguf/<folder name>-<key>/model-<type>.gguf`, the key a
digest of the checkpoint's absolute path and its files' latest mtime: a rebuilt checkpoint (e.g. a new
`--random-model`) gets new files, an unchanged one converts once.

The converter comes from, in order: `--llama-cpp-converter PATH`, `$NANOSERVE_LLAMA_CPP_CONVERTER`, a
copy already extracted in the cache, or the llama-cpp-python sdist of the installed version downloaded
once with pip (`pip download --no-binary :all: --no-deps llama-cpp-python==V`), whose
vendor/llama.cpp holds the converter, its `conversion/` package and `gguf-py/`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from nanoserve.errors import NanoserveError
from nanoserve.extras import require

logger = logging.getLogger(__name__)

GGUF_TYPES = ("bf16", "q8_0", "q4_0")
CONVERTER_ENV = "NANOSERVE_LLAMA_CPP_CONVERTER"
CONVERTER_NAME = "convert_hf_to_gguf.py"
# What the converter needs beside it, inside the sdist's vendor/llama.cpp/.
_SDIST_MEMBERS = (CONVERTER_NAME, "conversion/", "gguf-py/")
_FEATURE = "the llama.cpp benchmark backend"


class LlamaCppError(NanoserveError):
    """The llama.cpp baseline cannot run: a missing converter piece, a failed conversion."""


def _cache_root() -> Path:
    from nanoserve.models_cache import cache_dir

    return cache_dir() / "llama.cpp"


def checkpoint_key(model_dir: str | Path) -> str:
    """16 hex digits of sha256(absolute path, latest mtime_ns of the folder's files)."""
    folder = Path(model_dir).resolve()
    mtimes = [p.stat().st_mtime_ns for p in folder.iterdir() if p.is_file()]
    latest = max(mtimes, default=folder.stat().st_mtime_ns)
    return hashlib.sha256(f"{folder}\0{latest}".encode()).hexdigest()[:16]


def gguf_cache_path(model_dir: str | Path, gguf_type: str) -> Path:
    if gguf_type not in GGUF_TYPES:
        raise LlamaCppError(f"unknown llama.cpp type {gguf_type!r}; choose from {', '.join(GGUF_TYPES)}")
    folder = Path(model_dir).resolve()
    return _cache_root() / "gguf" / f"{folder.name}-{checkpoint_key(folder)}" / f"model-{gguf_type}.gguf"


def installed_version() -> str:
    """llama-cpp-python's version (MissingExtraError naming the `llamacpp` extra when absent)."""
    require("llama_cpp", _FEATURE)
    from importlib.metadata import version

    return version("llama-cpp-python")


def _check_converter(path: Path, origin: str) -> Path:
    if not path.is_file():
        raise LlamaCppError(f"{origin}: no llama.cpp converter at {path}")
    text = path.read_text(errors="replace")
    if "from conversion import" in text and not (path.parent / "conversion").is_dir():
        raise LlamaCppError(
            f"{origin}: {path} imports the `conversion` package, which is not beside it "
            f"({path.parent / 'conversion'} is missing: extract vendor/llama.cpp/conversion/ from the "
            "sdist too)"
        )
    return path


def extract_converter(sdist: Path, dest: Path) -> Path:
    """The converter, `conversion/` and `gguf-py/` of an sdist's vendor/llama.cpp, extracted into dest."""
    with tarfile.open(sdist) as tar:
        members = []
        for m in tar.getmembers():
            parts = m.name.split("/", 3)  # <pkg-ver>/vendor/llama.cpp/<rest>
            if len(parts) == 4 and parts[1:3] == ["vendor", "llama.cpp"]:
                rest = parts[3]
                if any(rest == p or rest.startswith(p) for p in _SDIST_MEMBERS) and (m.isfile() or m.isdir()):
                    m.name = rest
                    members.append(m)
        found = {p for p in _SDIST_MEMBERS if any(m.name == p or m.name.startswith(p) for m in members)}
        if missing := [p for p in _SDIST_MEMBERS if p not in found]:
            raise LlamaCppError(f"{sdist.name}: vendor/llama.cpp/ lacks {', '.join(missing)}")
        tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=dest.parent))
        tar.extractall(tmp, members=members, filter="data")
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest / CONVERTER_NAME


def download_sdist(version: str, into: Path) -> Path:
    """pip downloads llama-cpp-python's sdist (never installs or builds it)."""
    into.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
           f"llama-cpp-python=={version}", "-d", str(into)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(into.glob(f"llama_cpp_python-{version}.tar.gz"))
    if not found:
        raise LlamaCppError(
            f"could not download the llama-cpp-python {version} sdist for its converter "
            f"({' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()[-300:]}); "
            f"pass --llama-cpp-converter PATH/{CONVERTER_NAME} or set {CONVERTER_ENV}"
        )
    return found[0]


def find_converter(explicit: str | None = None, *, download: bool = True) -> Path:
    """Path of llama.cpp's convert_hf_to_gguf.py: the option, the environment, the cache, or a download."""
    if explicit:
        return _check_converter(Path(explicit), "--llama-cpp-converter")
    if env := os.environ.get(CONVERTER_ENV):
        return _check_converter(Path(env), f"${CONVERTER_ENV}")
    version = installed_version()
    dest = _cache_root() / "converter" / version
    if (dest / CONVERTER_NAME).is_file():
        return _check_converter(dest / CONVERTER_NAME, f"cached converter {dest}")
    if not download:
        raise LlamaCppError(
            f"no llama.cpp converter: pass --llama-cpp-converter PATH/{CONVERTER_NAME}, set {CONVERTER_ENV}, "
            f"or let nanoserve download the llama-cpp-python {version} sdist"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    logger.info("downloading the llama-cpp-python %s sdist for llama.cpp's converter", version)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        sdist = download_sdist(version, Path(tmp))
        return _check_converter(extract_converter(sdist, dest), f"converter extracted from {sdist.name}")


def needs_placeholder_vocab(model_dir: str | Path) -> bool:
    """Word-level tokenizers (random models') are not a vocabulary llama.cpp knows: skip the first try."""
    tok = Path(model_dir) / "tokenizer.json"
    if not tok.is_file():
        return False
    return json.loads(tok.read_text()).get("model", {}).get("type") == "WordLevel"


def _run_converter(model_dir: Path, converter: Path, outtype: str, out: Path,
                   placeholder: bool) -> subprocess.CompletedProcess:
    options = ["--placeholder-vocab"] if placeholder else []
    cmd = [sys.executable, str(Path(__file__).with_name("llamacpp_convert.py")), str(converter), *options,
           "--", str(model_dir), "--outtype", outtype, "--outfile", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True)


def _convert(model_dir: Path, converter: Path, outtype: str, out: Path) -> None:
    """The converter as is; if it fails on the vocabulary (a tokenizer llama.cpp does not know, like the
    demo model's), once more with the placeholder vocabulary (tensors are converted the same either way)."""
    tmp = out.with_name(out.name + ".partial")
    placeholder = needs_placeholder_vocab(model_dir)
    proc = _run_converter(model_dir, converter, outtype, tmp, placeholder)
    if proc.returncode != 0 and not placeholder and "set_vocab" in proc.stderr:
        logger.warning("llama.cpp does not know the tokenizer of %s: placeholder vocabulary", model_dir)
        proc = _run_converter(model_dir, converter, outtype, tmp, True)
    if proc.returncode != 0 or not tmp.is_file():
        raise LlamaCppError(f"llama.cpp's converter failed on {model_dir} ({outtype}): "
                            f"{proc.stderr.strip()[-800:]}")
    tmp.rename(out)


def _quantize(src: Path, out: Path, gguf_type: str, threads: int) -> None:
    llama_cpp = require("llama_cpp", _FEATURE)
    ftype = {"q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0}[gguf_type]
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    tmp = out.with_name(out.name + ".partial")
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
    if rc != 0 or not tmp.is_file():
        raise LlamaCppError(f"llama_model_quantize {src.name} -> {gguf_type} failed (returned {rc})")
    tmp.rename(out)


def ensure_gguf(
    model_dir: str | Path, gguf_type: str, converter: str | None = None, threads: int = 1
) -> Path:
    """The cached GGUF of `model_dir` at `gguf_type`, converting (and quantizing) on the first call."""
    out = gguf_cache_path(model_dir, gguf_type)
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    if gguf_type == "q4_0":
        bf16 = ensure_gguf(model_dir, "bf16", converter, threads)
        logger.info("quantizing %s to q4_0 with llama.cpp", bf16)
        _quantize(bf16, out, gguf_type, threads)
    else:
        conv = find_converter(converter)
        logger.info("converting %s to GGUF %s with %s", model_dir, gguf_type, conv)
        _convert(Path(model_dir).resolve(), conv, gguf_type, out)
    return out
