"""Parameter checks every algorithm shares (audit methods, detector signals, the red team).

Each returns the value as the plain Python type or raises ``ValueError`` naming the parameter and the value,
so constructors validate their keywords in one line each.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def positive_int(name: str, value: Any, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def int_in(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be in {low}..{high}, got {value}")
    return int(value)


def positive_float(name: str, value: Any, *, maximum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not (math.isfinite(v) and v > 0) or (maximum is not None and v > maximum):
        bound = f" and <= {maximum}" if maximum is not None else ""
        raise ValueError(f"{name} must be a finite number > 0{bound}, got {v}")
    return v


def unit_interval(name: str, value: Any, *, open_low: bool = True, open_high: bool = True) -> float:
    """A float in (0, 1) (ends included where asked)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"{name} must be a number, got {value!r}")
    v = float(value)
    low_ok = v > 0 if open_low else v >= 0
    high_ok = v < 1 if open_high else v <= 1
    if not (math.isfinite(v) and low_ok and high_ok):
        raise ValueError(f"{name} must lie in {'(' if open_low else '['}0, 1{')' if open_high else ']'}, got {v}")
    return v


def clip_range(clip: bool, input_low: float, input_high: float) -> None:
    """Clipping inputs to [input_low, input_high] needs input_low < input_high (unchecked when off)."""
    if clip and not input_low < input_high:
        raise ValueError(f"clipping needs input_low < input_high, got {input_low}, {input_high}")
