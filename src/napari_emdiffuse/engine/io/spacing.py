"""Voxel sizes: checked, and the isotropic factor they imply."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..errors import InputError

__all__ = ["FACTOR_TOLERANCE", "check_spacing", "factor_from_spacing", "output_origin"]

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


def output_origin(
    origin: Sequence[float] | None,
    spacing: Sequence[float] | None,
    ndim: int,
    *,
    scale: float = 1,
    start: Sequence[int] = (0, 0),
) -> tuple[float, ...] | None:
    """Where the first pixel centre of an output made from an ``ndim``-D input lies, in the
    input's units (napari's ``translate``; pixels where ``spacing`` is None).

    The input's ``origin`` (None: 0), moved by ``start`` input pixels along the last axes (a
    region's first row and column; with a third value, its first section) and, for a Y-X grid
    ``scale`` times finer, by ``(1 / scale - 1) / 2`` of an input pixel: the finer grid's
    first pixel centre lies a quarter of an input pixel before the input's at x2, and a
    2 x 2 bin's (``scale`` 1/2) half a pixel after it. Other leading axes keep theirs (an
    isotropic volume's first slice is the input's). None where every value is 0.

    Examples
    --------
    >>> output_origin(None, (8.0, 8.0), 2, scale=2)
    (-2.0, -2.0)
    >>> output_origin((0.0, 100.0, 0.0), (30.0, 4.0, 4.0), 3, start=(10, 20))
    (0.0, 140.0, 80.0)
    >>> output_origin(None, (8.0, 8.0), 2, scale=1 / 2)
    (4.0, 4.0)
    >>> output_origin(None, None, 2) is None
    True
    """
    try:
        at = [float(v) for v in origin] if origin is not None else [0.0] * ndim
        step = [float(v) for v in spacing] if spacing is not None else [1.0] * ndim
    except (TypeError, ValueError):
        raise InputError(f"an origin and a spacing are numbers, one per axis; got {origin!r} and {spacing!r}") from None
    if not all(math.isfinite(v) for v in at + step):
        raise InputError(f"an origin and a spacing are finite numbers; got {origin!r} and {spacing!r}")
    first = tuple(start)[-ndim:] if not any(tuple(start)[:-ndim]) else tuple(start)  # (0, 0) fits a 1-D line
    if len(at) != ndim or len(step) != ndim or len(first) > ndim:
        raise InputError(f"an origin and a spacing need one value per axis of a {ndim}-D image")
    for axis, n in zip(range(ndim - len(first), ndim), first):
        at[axis] += n * step[axis]
    for axis in range(max(ndim - 2, 0), ndim):
        at[axis] += (1.0 / scale - 1.0) / 2.0 * step[axis]
    return tuple(at) if any(at) else None
