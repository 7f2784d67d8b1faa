"""Argument checks shared by every layer of the library (the lowest module: it imports nothing)."""

from __future__ import annotations

import operator
from typing import Any

__all__ = ["check_int"]


def check_int(value: Any, name: str, minimum: int | None = 1) -> int:
    """``value`` as an int, or an error naming ``name``.

    Integers (Python, NumPy, 0-d integer tensors) pass; floats such as ``2.7`` or ``4.0`` and bools
    are a TypeError, never truncated; a value below ``minimum`` is a ValueError.
    """
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got a bool ({value})")
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {number}")
    return number
