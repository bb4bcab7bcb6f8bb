import json

import numpy as np

from nanoserve.bench.report import percentile, save_json, summarize


def test_percentile_matches_numpy_linear():
    xs = [5.0, 1.0, 9.0, 3.0, 7.5, 2.25, 11.0]
    for q in (0, 10, 50, 90, 99, 100):
        assert abs(percentile(xs, q) - float(np.percentile(xs, q))) < 1e-12


def test_summarize_fields():
    s = summarize([1.0, 2.0, 3.0, 4.0], (50, 99))
    assert s["mean"] == 2.5 and s["median"] == 2.5 and s["p50"] == 2.5
    assert abs(s["std"] - float(np.std([1, 2, 3, 4]))) < 1e-12
    assert summarize([])["mean"] == 0.0


def test_save_json_is_strict_json_with_environment(tmp_path):
    path = tmp_path / "r.json"
    save_json(path, {"rate": float("inf"), "x": [1, 2]})
    data = json.loads(path.read_text(), parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    assert data["rate"] == "inf" and data["x"] == [1, 2]
    assert "date_utc" in data["environment"]
