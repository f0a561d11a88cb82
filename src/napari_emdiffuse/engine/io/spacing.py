"""Voxel sizes: checked, and the isotropic factor they imply."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..errors import InputError

__all__ = ["FACTOR_TOLERANCE", "check_spacing", "factor_from_spacing"]

#: A z/xy spacing ratio within this relative distance of a whole number is taken as that factor.
FACTOR_TOLERANCE = 0.05


def factor_from_spacing(spacing: Sequence[float]) -> int:
    """The z factor that makes a volume with voxel size ``spacing`` (z, y, x) isotropic.

    The z spacing divided by the mean lateral spacing, rounded to the nearest whole number
    (halves round down); ratios more than 5% from a whole number are refused.

    Parameters
    ----------
    spacing : sequence of 3 floats
        Voxel size along z, y and x, in any one unit.

    Returns
    -------
    int
        The factor, at least 2.

    Raises
    ------
    InputError
        The spacing is not three positive numbers, the volume is already (nearly) isotropic,
        or the ratio is not close to a whole number.

    Examples
    --------
    >>> factor_from_spacing((50, 4, 4))
    12
    >>> factor_from_spacing((40.0, 8.0, 8.0))
    5
    >>> factor_from_spacing((1.0, 60.0, 60.0))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    napari_emdiffuse.engine.errors.InputError: the z spacing (1) is 0.0167 times the lateral spacing: the file most likely does not calibrate z; ...
    """
    values = check_spacing(spacing)
    assert values is not None
    ratio = values[0] / (0.5 * (values[1] + values[2]))
    if ratio < 0.75:  # sections thinner than pixels: no EM volume is cut so; z was not calibrated
        raise InputError(
            f"the z spacing ({values[0]:g}) is {ratio:.3g} times the lateral spacing: the file most likely "
            f"does not calibrate z; give the factor (factor= or --factor)"
        )
    if ratio < 1.5:
        raise InputError(
            f"the z spacing is {ratio:.3g} times the lateral spacing: the volume is already close to "
            f"isotropic; give the factor (factor= or --factor) to reconstruct anyway"
        )
    n = math.ceil(ratio - 0.5)
    if abs(ratio - n) > FACTOR_TOLERANCE * n:
        raise InputError(
            f"the z spacing is {ratio:.3g} times the lateral spacing, not a whole number; "
            f"give the factor yourself (factor= or --factor; e.g. {n} or {n + 1})"
        )
    return int(n)


def check_spacing(spacing: Any) -> tuple[float, float, float] | None:
    """``spacing`` as three positive floats (z, y, x), or None; a one-line InputError otherwise."""
    if spacing is None:
        return None
    try:
        values = tuple(float(v) for v in spacing)
    except (TypeError, ValueError):
        raise InputError(f"spacing must be three numbers (z, y, x), got {spacing!r}") from None
    if len(values) != 3:
        raise InputError(f"spacing must be three numbers (z, y, x), got {len(values)}")
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise InputError(f"spacing values must be positive numbers, got {values}")
    return values  # type: ignore[return-value]
