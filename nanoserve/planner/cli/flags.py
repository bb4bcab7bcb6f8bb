"""Every flag of `nanoserve plan`, defined once; a topic names the flags it reads and gets a parser.

A topic's parser offers only its own flags (so `nanoserve plan decode --help` lists what decode
uses, and a flag that would be ignored is an error), grouped under the sections below, plus the
output flags every topic has. Numbers accept suffixes (70B, 1.5k, 3.35T); sizes accept units
(80GB = 80e9 bytes, 80GiB = 80 * 2^30).
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nanoserve.planner.cli.output import Output
from nanoserve.planner.parallel import ZERO_STAGE_DEFAULT

_SUFFIX = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12, "p": 1e15}
_SIZES = {
    "b": 1,
    "kb": 1e3,
    "mb": 1e6,
    "gb": 1e9,
    "tb": 1e12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def number(text: str) -> float:
    """ "70e9", "70B", "1.5k", "3.35T" → float (K, M, B/G, T, P suffixes)."""
    s = str(text).strip().replace(",", "").replace("_", "")
    m = re.fullmatch(r"([-+]?[0-9.]+(?:e[-+]?\d+)?)\s*([kmbgtp]?)", s, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}")
    try:
        v = float(m.group(1)) * _SUFFIX.get(m.group(2).lower(), 1.0)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from e
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return v


def size_bytes(text: str) -> float:
    """ "80GB" (1e9), "80GiB" (2^30), "5e9" (bytes) → bytes."""
    s = str(text).strip().replace(",", "")
    m = re.fullmatch(r"([0-9.]+(?:e[-+]?\d+)?)\s*([kmgt]i?b|b)?", s, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 80GB, 80GiB, 5e9)")
    return float(m.group(1)) * _SIZES[(m.group(2) or "b").lower()]


def positive_int(text: str) -> int:
    v = number(text)
    if v != int(v) or v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(v)


# section title → flag name (`--name`) → add_argument keywords. A string default goes through the
# flag's type, so a topic can set "5GB" and its --help shows it as written.
SECTIONS: dict[str, dict[str, dict[str, Any]]] = {
    "model and hardware": {
        "model": dict(help="preset (llama-3.1-70b, qwen2.5-7b, gpt2, …) or a config.json path"),
        "params": dict(type=number, help="override the parameter count (e.g. 70e9, 70B)"),
        "gpu": dict(default="h100", help="hardware preset (h100, a100, tpu-v5e, …) or a JSON/YAML file"),
        "price": dict(type=number, help="$ per GPU-hour (default: the preset's on-demand price)"),
        "gpu-mem": dict(type=size_bytes, help="override GPU memory, e.g. 80GiB or 80GB"),
        "dtype": dict(default="bf16", help="weight dtype: bf16, fp8, int8, int4 (default: %(default)s)"),
        "act-dtype": dict(default="bf16", help="activation dtype of a matmul"),
        "kv-dtype": dict(default="bf16", help="KV cache dtype"),
        "group-size": dict(type=positive_int, help="quantization group size (adds scale bytes)"),
        "efficiency": dict(type=number, default=1.0, help="fraction of peak achieved (0-1]"),
    },
    "workload": {
        "batch": dict(type=positive_int, help="sequences per batch / micro-batch"),
        "context": dict(type=positive_int, help="context (sequence) length in tokens"),
        "prompt": dict(type=positive_int, help="prompt tokens for prefill / TTFT"),
        "block-size": dict(type=positive_int, default=16, help="KV page size in tokens"),
        "mean-len": dict(type=number, help="mean output / used length"),
        "max-len": dict(type=number, help="max output length in a static batch"),
        "m": dict(type=positive_int, help="matmul rows of A"),
        "k": dict(type=positive_int, help="matmul inner dimension"),
        "n": dict(type=positive_int, help="matmul columns of B"),
        "flops": dict(type=number, help="FLOPs of an op"),
        "bytes": dict(type=number, help="bytes an op moves"),
        "queue": dict(type=number, default=0.0, help="queueing seconds before prefill (TTFT)"),
    },
    "parallelism and training": {
        "tp": dict(type=positive_int, help="tensor-parallel degree"),
        "allreduce-latency-us": dict(
            type=number,
            help="per-message all-reduce latency α in µs (default: by interconnect, NVLink 8, PCIe 25)",
        ),
        "pp": dict(type=positive_int, help="pipeline-parallel degree"),
        "dp": dict(type=positive_int, help="data-parallel degree"),
        "gpus": dict(type=positive_int, help="GPU count (a whole number >= 1)"),
        "zero-stage": dict(
            type=int, default=ZERO_STAGE_DEFAULT, choices=(0, 1, 2, 3),
            help="ZeRO stage (default: %(default)s)",
        ),
        "microbatches": dict(type=positive_int, help="pipeline microbatches"),
        "bubble": dict(type=number, default=0.05, help="target bubble fraction"),
        "tokens": dict(type=number, help="training tokens"),
        "mfu": dict(type=number, default=0.4, help="model FLOPs utilisation"),
        "tok-s-per-gpu": dict(type=number, help="measured training tokens/s per GPU (MFU)"),
        "compute": dict(type=number, help="training compute budget in FLOPs"),
        "tokens-per-param": dict(type=number, default=20.0, help="Chinchilla ratio"),
    },
    "serving, speculative decoding and cost": {
        "users": dict(type=number, default=10_000, help="concurrent users"),
        "active": dict(type=number, default=0.3, help="fraction of users generating"),
        "tok-per-user": dict(type=number, default=30.0, help="tokens/s each active user receives"),
        "ttft": dict(type=number, default=2.0, help="TTFT target in seconds"),
        "headroom": dict(type=number, help="spare capacity fraction (default: %(default)s)"),
        "overhead": dict(type=size_bytes, help="per-GPU runtime overhead (default: %(default)s)"),
        "max-batch": dict(type=positive_int, help="cap on the decode batch per replica"),
        "kv-read-fraction": dict(
            type=number,
            default=0.0,
            help="mean context / context read per decode step (0 = weights only, like the workbook)",
        ),
        "request-rate": dict(type=number, help="requests/s the service must carry (default: from --users)"),
        "ttft-ms": dict(type=number, default=2000.0, help="TTFT SLO in ms (default: %(default)s)"),
        "tpot-ms": dict(type=number, help="TPOT SLO in ms (default: 1000 / --tok-per-user)"),
        "modes": dict(default="shared,disaggregated", help="pool layouts to try: shared, disaggregated"),
        "simulate": dict(
            action="store_true",
            help="check the cheapest shared-pool plan on one simulated replica (nanoserve.sim)",
        ),
        "step-overhead-ms": dict(type=number, default=2.0, help="host time per engine step in ms"),
        "rate": dict(type=number, help="arrival rate λ in requests/s"),
        "latency": dict(type=number, help="time in system W in seconds"),
        "concurrency": dict(type=number, help="requests in system L"),
        "alpha": dict(type=number, default=0.7, help="draft acceptance rate"),
        "spec-k": dict(type=positive_int, default=5, help="draft tokens per step"),
        "target-ms": dict(type=number, default=50.0, help="target forward pass in ms"),
        "draft-ms": dict(type=number, default=5.0, help="draft forward pass in ms"),
        "draft-parallel": dict(action="store_true", help="draft runs on its own device"),
        "dtypes": dict(default="bf16,int8,int4", help="comma-separated dtypes"),
        "tok-s": dict(type=number, help="sustained output tokens/s"),
        "prefill-tok-s": dict(type=number, help="prefill tokens/s for input pricing"),
        "utilization": dict(type=number, default=1.0, help="busy fraction of paid hours"),
        "target-price": dict(type=number, help="target $ per 1M tokens"),
        "spot": dict(type=number, help="spot $/hour"),
        "availability": dict(type=number, default=0.85, help="spot availability"),
        "reserved": dict(type=number, help="reserved $/hour"),
        "fleet": dict(action="append", help="NAME:SHARE:TOK_PER_S[:GPUS] per model (repeat)"),
        "requests-per-s": dict(type=number, help="fleet request rate"),
        "output-tokens": dict(type=number, help="output tokens per request (fleet)"),
        "hours": dict(type=number, default=720.0, help="hours in a month"),
    },
    "output": {
        "json": dict(action="store_true", help="print JSON instead of tables"),
        "plot": dict(help="write a PNG: roofline with the workload's points and/or memory bars"),
        "brief": dict(action="store_true", help="tables only, without the derivations"),
    },
}
OUTPUT_FLAGS = tuple(SECTIONS["output"])

# Bundles that many topics share.
MODEL = ("model", "params")
GPU = ("gpu", "price")


@dataclass(frozen=True)
class Topic:
    """One `nanoserve plan TOPIC`: its calculator, the flags it reads, what it cannot do without."""

    compute: Callable[[argparse.Namespace], Output]
    help: str
    flags: tuple[str, ...]
    needs: str = ""  # "model", "model or params", or "" (checked before compute runs)
    defaults: dict[str, Any] = field(default_factory=dict)  # this topic's defaults over the sections'


def topic_parser(name: str, topic: Topic) -> argparse.ArgumentParser:
    """The parser of `nanoserve plan NAME`: the topic's flags by section, then the output flags."""
    parser = argparse.ArgumentParser(prog=f"nanoserve plan {name}", description=topic.help)
    wanted = set(topic.flags) | set(OUTPUT_FLAGS)
    unknown = wanted - {f for flags in SECTIONS.values() for f in flags}
    if unknown:
        raise KeyError(f"topic {name!r} names undefined flags: {sorted(unknown)}")
    for title, flags in SECTIONS.items():
        mine = [f for f in flags if f in wanted]
        if not mine:
            continue
        group = parser.add_argument_group(title)
        for flag in mine:
            kwargs = dict(flags[flag])
            if flag in topic.defaults:
                kwargs["default"] = topic.defaults[flag]
            group.add_argument(f"--{flag}", **kwargs)
    return parser
