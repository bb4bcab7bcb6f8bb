"""benchmarks/gpu_check.py in --smoke mode on CPU: every section runs and writes its report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_smoke_on_cpu_writes_json_and_markdown(tmp_path, native_extensions_built):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke", "--device", "cpu",
         "--models", "qwen2.5-0.5b", "--out", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    eq = report["equivalence"]
    assert eq["float32"]["eager"]["identical"] is True  # fp32 greedy equals transformers
    assert 0.0 <= eq["bfloat16"]["eager"]["token_agreement"] <= 1.0
    bench = report["benchmarks"]["qwen2.5-0.5b"]
    assert "error" not in bench, bench.get("error")
    rows = {(r["engine"], r["phase"], r["batch"]) for r in bench["rows"]}
    assert rows == {("transformers", "decode", 1), ("transformers", "decode", 2),
                    ("transformers", "prefill", 1), ("nanoserve eager", "decode", 1),
                    ("nanoserve eager", "decode", 2), ("nanoserve", "prefill", 1)}  # no graphs on CPU
    assert all(r["bound_ms"] > 0 for r in bench["rows"])  # the H200 roofline beside every row
    ours = [r for r in bench["rows"] if r["engine"].startswith("nanoserve")]
    assert all(r["mbu"] > 0 and r["mfu"] > 0 and r["tok_per_s"] > 0 for r in ours)
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| engine | phase | batch | ms/step | tok/s | MBU | MFU | roofline ms |" in md
    assert "H200" in md
