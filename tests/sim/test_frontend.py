"""The serving front end's terms: measured from a probe's bench serve result and its simulation, and
passed to `nanoserve simulate` as flags that move TTFT and TPOT by exactly what they say."""

from __future__ import annotations

import json

import pytest

from nanoserve.errors import InvalidRequestError
from nanoserve.sim.frontend import fit_frontend, main


def _served(ttft_ms: float, tpot_ms: float) -> dict:  # bench serve's nesting
    return {"metrics_ms": {"ttft": {"median": ttft_ms}, "tpot": {"median": tpot_ms}}}


def _simulated(ttft_ms: float, tpot_ms: float) -> dict:  # simulate's flat keys
    return {"median_ttft_ms": ttft_ms, "median_tpot_ms": tpot_ms}


def test_the_terms_are_what_the_server_adds_to_the_simulated_engine():
    terms = fit_frontend(_served(7.4, 0.40), _simulated(2.5, 0.27))
    assert terms.latency_s == pytest.approx(4.9e-3) and terms.token_s == pytest.approx(0.13e-3)
    assert "7.400 - 2.500 = 4.900 ms" in terms.derivation
    assert terms.flags() == "--frontend-latency-ms 4.9000 --frontend-token-ms 0.1300"
    # a server measured faster than the engine alone: noise, no negative term
    assert fit_frontend(_served(2.0, 0.2), _simulated(2.5, 0.27)).token_s == 0.0
    with pytest.raises(InvalidRequestError, match="tpot"):
        fit_frontend({"metrics_ms": {"ttft": {"median": 1.0}}}, _simulated(1.0, 1.0))


def test_the_module_prints_the_simulate_flags(tmp_path, capsys):
    served, simulated = tmp_path / "probe.json", tmp_path / "probe-sim.json"
    served.write_text(json.dumps(_served(6.0, 0.5)))
    simulated.write_text(json.dumps(_simulated(2.0, 0.25)))
    assert main([str(served), str(simulated)]) == 0
    assert capsys.readouterr().out.strip() == "--frontend-latency-ms 4.0000 --frontend-token-ms 0.2500"


def test_simulate_flags_shift_ttft_and_tpot_at_light_load(capsys):
    from nanoserve.cli import main as cli

    base = ["simulate", "--model", "llama-3.1-8b", "--gpu", "h100", "--num-prompts", "5", "--input-len", "64",
            "--output-len", "16", "--request-rate", "0.01", "--json"]

    def run(*extra: str) -> dict:
        assert cli(base + list(extra)) == 0
        return json.loads(capsys.readouterr().out)

    alone, served = run(), run("--frontend-latency-ms", "5", "--frontend-token-ms", "0.5")
    # TTFT: the latency and the first step's one token; TPOT: one token a step at this load
    assert served["median_ttft_ms"] == pytest.approx(alone["median_ttft_ms"] + 5 + 0.5)
    assert served["median_tpot_ms"] == pytest.approx(alone["median_tpot_ms"] + 0.5)
