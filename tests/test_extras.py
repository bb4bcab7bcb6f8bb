"""A command whose optional dependency is missing says which extra installs it, without a traceback.

A missing module is simulated the way Python spells it: `sys.modules[name] = None` makes the next
import of it raise ImportError.
"""

from __future__ import annotations

import sys

import pytest

from nanoserve.cli import main
from nanoserve.extras import MissingExtraError, require


def test_require_returns_the_module_or_names_the_extra(monkeypatch):
    assert require("json", "anything").dumps([1]) == "[1]"
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'nanoserve\[plots\]'") as e:
        require("matplotlib", "--plot")
    assert isinstance(e.value, ImportError) and e.value.extra == "plots"


def test_plan_plot_without_matplotlib(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    png = tmp_path / "chart.png"
    assert main(["plan", "memory", "--model", "llama-3.1-8b", "--plot", str(png)]) == 2
    err = capsys.readouterr().err
    assert "nanoserve plan: error: --plot needs matplotlib" in err
    assert "pip install 'nanoserve[plots]'" in err and "Traceback" not in err
    assert not png.exists()


def test_bench_latency_plot_without_matplotlib_fails_before_the_sweep(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    # No model is given or loaded: the check comes before the benchmark runs.
    assert main(["bench", "latency", "--plot", "latency.png"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'nanoserve[plots]'" in err and "Traceback" not in err


def test_workbook_without_fsrs(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "fsrs", None)
    for name in ("nanoserve.workbook.progress", "nanoserve.workbook.app"):
        monkeypatch.delitem(sys.modules, name, raising=False)  # imported afresh, without fsrs
    assert main(["workbook", "--cli", "--db", str(tmp_path / "progress.sqlite")]) == 2
    err = capsys.readouterr().err
    assert "nanoserve workbook: error: the workbook needs fsrs" in err
    assert "pip install 'nanoserve[workbook]'" in err and "Traceback" not in err
