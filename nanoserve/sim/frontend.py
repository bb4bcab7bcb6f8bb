"""The serving front end's two terms for the simulator (SimConfig.frontend_*), measured on a server.

`nanoserve simulate` models the engine's steps; a request sent to `nanoserve serve` also passes the
HTTP front end: parsing, tokenizing and admitting it, and one SSE chunk per token on the way back, in
the same process as the engine thread. A light probe (requests far enough apart that each runs alone)
measures what that adds. Send it with `nanoserve bench serve`, simulate the same probe with the
engine's calibrated profile and no front end, and the differences are the two terms:

    frontend_latency = median TTFT measured - median TTFT simulated
    frontend_token   = median TPOT measured - median TPOT simulated   (alone, a step emits one token)

The probe is its own workload, not the one being validated (benchmarks/validate_sim.sh sends 40
requests at 4/s before the 20/s row). Usage, printing the simulate flags:

    python -m nanoserve.sim.frontend PROBE_BENCH_SERVE.json PROBE_SIMULATE.json
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

from nanoserve.errors import InvalidRequestError


@dataclass
class FrontendTerms:
    latency_s: float
    token_s: float
    derivation: str  # the inputs, the formula and the numbers substituted

    def flags(self) -> str:
        return (f"--frontend-latency-ms {self.latency_s * 1e3:.4f} "
                f"--frontend-token-ms {self.token_s * 1e3:.4f}")


def _median_ms(result: dict[str, Any], metric: str) -> float:
    """bench serve nests its latencies (metrics_ms.ttft.median); simulate flattens them (median_ttft_ms)."""
    try:
        if "metrics_ms" in result:
            return float(result["metrics_ms"][metric]["median"])
        return float(result[f"median_{metric}_ms"])
    except (KeyError, TypeError, ValueError):
        raise InvalidRequestError(f"no median {metric} in the result", "result") from None


def fit_frontend(measured: dict[str, Any], simulated: dict[str, Any]) -> FrontendTerms:
    """The two terms from a probe's bench serve result and its simulation without a front end. A
    difference below 0 (the engine alone measured slower than it ran behind the server) is noise: 0."""
    ttft_m, ttft_s = _median_ms(measured, "ttft"), _median_ms(simulated, "ttft")
    tpot_m, tpot_s = _median_ms(measured, "tpot"), _median_ms(simulated, "tpot")
    latency_ms, token_ms = max(0.0, ttft_m - ttft_s), max(0.0, tpot_m - tpot_s)
    derivation = (
        f"frontend_latency = median TTFT measured - simulated = {ttft_m:.3f} - {ttft_s:.3f} "
        f"= {latency_ms:.3f} ms\n"
        f"frontend_token = median TPOT measured - simulated = {tpot_m:.3f} - {tpot_s:.3f} = {token_ms:.3f} ms"
    )
    return FrontendTerms(latency_ms / 1e3, token_ms / 1e3, derivation)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    with open(argv[0]) as f, open(argv[1]) as g:
        terms = fit_frontend(json.load(f), json.load(g))
    print(terms.derivation, file=sys.stderr)
    print(terms.flags())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
