"""Length units: nanometres per unit, and the rounding that keeps converted sizes readable;
time units, which make a stack a series rather than a volume.

Examples
--------
>>> nm_factor("µm"), tidy(0.0037 * 1000)
(1000.0, 3.7)
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["is_positive", "is_time_unit", "nm_factor", "tidy"]

# Length units -> nanometres. Keys are lower-case; "µ" (micro sign) and "μ" (Greek mu) both occur.
_NM_PER_UNIT: dict[str, float] = {
    "pm": 1e-3, "picometer": 1e-3, "picometre": 1e-3,
    "a": 0.1, "å": 0.1, "\u212b": 0.1, "angstrom": 0.1, "angstroms": 0.1, "ångström": 0.1,
    "nm": 1.0, "nanometer": 1.0, "nanometre": 1.0, "nanometers": 1.0, "nanometres": 1.0,
    "um": 1e3, "µm": 1e3, "μm": 1e3, "micron": 1e3, "microns": 1e3,
    "micrometer": 1e3, "micrometre": 1e3, "micrometers": 1e3, "micrometres": 1e3,
    "mm": 1e6, "millimeter": 1e6, "millimetre": 1e6,
    "cm": 1e7, "centimeter": 1e7, "centimetre": 1e7,
    "m": 1e9, "meter": 1e9, "metre": 1e9,
}  # fmt: skip


def nm_factor(unit: str | None) -> float | None:
    """Nanometres per ``unit`` (``"um"`` -> 1000.0), or None for an unknown unit."""
    if unit is None:
        return None
    return _NM_PER_UNIT.get(unit.strip().lower())


_TIME_UNITS = frozenset({"s", "sec", "second", "seconds", "ms", "µs", "μs", "us", "ns", "min", "h"})


def is_time_unit(unit: str | None) -> bool:
    """Whether ``unit`` measures time (a stack along it is a series, not sections).

    Examples
    --------
    >>> is_time_unit("s"), is_time_unit("second"), is_time_unit("nm"), is_time_unit(None)
    (True, True, False, False)
    """
    return unit is not None and unit.strip().lower() in _TIME_UNITS


def tidy(value: float) -> float:
    """``value`` to 12 significant digits: 0.0037 um * 1000 is 3.7000000000000006, and 12
    digits is far below any tolerance."""
    return float(f"{value:.12g}")


def is_positive(value: Any) -> bool:
    """A finite number above 0 (not a bool, not a string)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
