"""Argument checks shared by the generators (they fail early with the offending value)."""

from __future__ import annotations


def require_length(length: int) -> None:
    if length < 1:
        raise ValueError(f"length must be at least 1, got {length}")


def require_fraction(name: str, value: float, *, upper_inclusive: bool = False) -> None:
    """Rates and probabilities: 0 <= value < 1 (or <= 1 where a full share makes sense)."""
    upper_ok = value <= 1.0 if upper_inclusive else value < 1.0
    if not (value >= 0.0 and upper_ok):
        bound = "]" if upper_inclusive else ")"
        raise ValueError(f"{name} must be in [0, 1{bound}, got {value}")
