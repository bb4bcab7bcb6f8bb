"""Flags → the objects calculators take: the model, the hardware, a parameter count, a peak."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from nanoserve.errors import InvalidRequestError
from nanoserve.planner.derivation import Result, derive
from nanoserve.planner.hardware import Hardware, get_hardware, hardware_from_file
from nanoserve.planner.models import ModelSpec, get_model
from nanoserve.planner.moe import decode_weight_params
from nanoserve.planner.params import param_breakdown


def model_of(args: argparse.Namespace) -> ModelSpec:
    """--model: a preset name or a config.json path."""
    return get_model(args.model)


def hardware_of(args: argparse.Namespace) -> Hardware:
    """--gpu (a preset or a JSON/YAML file), priced at --price when given."""
    g = args.gpu
    hw = hardware_from_file(g) if Path(g).suffix.lower() in (".json", ".yaml", ".yml") else get_hardware(g)
    if args.price is not None:
        hw = hw.with_price(args.price)
    return hw


def n_params(args: argparse.Namespace, active: bool = True) -> float:
    """--params, else the model's count (the active experts' share for an MoE when `active`)."""
    if args.params:
        return args.params
    b = param_breakdown(model_of(args))
    return float(b.active if active else b.total)


def decode_weights_read(args: argparse.Namespace, batch: int) -> Result:
    """Parameters one decode step reads: --params as given, else the model's at this batch (an MoE
    batch touches more experts than one token's top-k: `moe.decode_weight_params`)."""
    if args.params:
        return derive("weights read per decode step", args.params, "params", "--params", f"{args.params:g}")
    return decode_weight_params(model_of(args), batch)


def peak_flops(hw: Hardware, dtype: str) -> float:
    """The chip's peak for a weight dtype: fp8/int8 run on their own units, the rest in bf16."""
    return hw.flops_per_s(dtype if dtype in ("fp8", "int8") else "bf16")


def labelled(r: Result, label: str) -> Result:
    """The same result, named with a suffix: "speedup (exact)"."""
    return replace(r, name=f"{r.name} ({label})")


def need(args: argparse.Namespace, *names: str) -> None:
    """Raise unless every named flag was given (flags a topic offers but cannot default)."""
    missing = [n for n in names if getattr(args, n.replace("-", "_")) is None]
    if missing:
        raise InvalidRequestError(f"topic {args.topic!r} needs --{', --'.join(missing)}", missing[0])
