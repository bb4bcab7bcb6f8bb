"""Argument checks shared by the planner's calculators: a bad number is an InvalidRequestError naming it."""

from __future__ import annotations

import math

from nanoserve.errors import InvalidRequestError


def positive(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0 or math.isinf(value):
        if hasattr(value, "hbm_bytes_per_s"):  # a Hardware where one of its numbers belongs
            raise InvalidRequestError(
                f"{name} takes a number, not a Hardware: pass one of its fields "
                f"(hbm_bytes_per_s, bf16_flops_per_s, hbm_bytes, …)", name)
        raise InvalidRequestError(f"{name} must be a positive number (got {value!r})", name)
    return float(value)


def fraction(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise InvalidRequestError(f"{name} must be in (0, 1] (got {value!r})", name)
    return float(value)


def positive_int(name: str, value: float) -> int:
    """A count (GPUs, batch, layers): a whole number ≥ 1; 2.7 GPUs is an error, not 2."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value != int(value) or value < 1:
        raise InvalidRequestError(f"{name} must be a whole number >= 1 (got {value!r})", name)
    return int(value)
