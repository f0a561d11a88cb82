"""Self-supervised denoising of a stack from its neighbouring slices (Noise2Noise).

Neighbouring slices of a finely sectioned volume (FIB-SEM or block-face SEM with voxels close
to isotropic) show nearly the same structure, and each was recorded with its own noise. So
the mean of a slice's two neighbours is a target whose noise is independent of the slice's own,
and whose structure differs from the slice's only by what changes over one section (to first
order, not at all: the two neighbours' changes cancel). A network trained to map the slice onto
that target learns the clean slice, as Noise2Noise does from two recordings of one field. Unlike
a blind spot (:mod:`.selfsup`), this holds for any noise within a slice, spatially correlated
or not, and every pixel of every crop supervises the network, not 1 % of them.

On the near-isotropic C. elegans volume with simulated correlated noise (dose 30, neighbour
correlation 0.5), 200 iterations from the bundled predictor raised the stack from 24.35 dB to
24.92 (the anchored blind spot: 24.71; dose 100: 26.28 -> 26.68, blind spot 26.48; 7 slices
only: 24.40 -> 24.82). It needs slices that are alike: on ISBI 2012 (ssTEM sections 50 nm
apart, 12x the pixel size) the same fine-tune fell from 21.56 to 16.70 dB, while its own
validation against the neighbours' mean rose by 0.9 dB; on C. elegans with every third slice
kept it lost 0.37 dB. Nothing in the training tells those apart, so :func:`slice_alikeness`
measures beforehand how far apart the slices look, in pixels: two neighbouring slices shifted
``LATERAL_DISTANCE`` px against each other correlate as one slice with itself shifted by some
``r`` px (read off its own correlation at 3, 4, ... px), and the apparent spacing is
``sqrt(r**2 - 3**2)``. Only covariances between different slices, or pixels 3 px apart, enter:
their noise is independent (nearly so 3 px apart, beyond the correlation of a scanning
detector), so the estimate holds at any dose. On C. elegans it read 0.0-0.7 px with every
slice, 0.8-1.4 with every second, 2.2-2.4 with every third, at doses 10-1000 with white and
correlated noise; ISBI 2012 and stacks of unrelated images: beyond 8 px; a stack of one image
with noise: 0.0-0.8; an isotropic random field sampled every 1 / 2 / 3 / 4 px along z: 0.96 /
1.94 / 2.8 / 3.9, with or without noise. The slices are alike up to :data:`MAX_SPACING`: with
every second slice of C. elegans the neighbours still gained 0.12 dB (the blind spot 0.16),
with every third they lost (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError

__all__ = ["neighbour_pairs", "slice_alikeness", "Alikeness", "LATERAL_DISTANCE", "MAX_SPACING", "MIN_SLICES", "AUTO_SLICES"]

#: Lateral shift (px) between the slices compared in :func:`slice_alikeness`, and the shortest
#: within a slice: far enough that the noise of the pixels compared is nearly independent.
LATERAL_DISTANCE = 3

#: The largest apparent slice spacing (px) at which neighbouring slices teach each other.
MAX_SPACING = 1.5

#: Lateral shifts (px) up to which a slice's correlation is read; slices that correlate less
#: than a slice with itself this far apart look farther apart than can be measured.
_FARTHEST = 8

#: A slice needs a neighbour on each side.
MIN_SLICES = 3

#: The fewest slices from which a fine-tune learns from neighbouring slices unless told to:
#: on 7 alike slices of C. elegans (5 with two neighbours) the blind spot, which learns from
#: all 7, gained 0.49 dB and the neighbours 0.42; on 16, 0.36 against 0.55; on all 21, 0.37
#: against 0.58-0.63 (three seeds).
AUTO_SLICES = 16


def neighbour_pairs(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Training pairs of a stack (Z, Y, X): every inner slice and the mean of its two neighbours.

    Returns ``(inputs, targets)``: ``stack[1:-1]`` (a view, in the stack's dtype) and the float32
    means of ``stack[:-2]`` and ``stack[2:]``. Never modifies ``stack``.

    Examples
    --------
    >>> stack = np.arange(4 * 2 * 2, dtype=np.uint8).reshape(4, 2, 2)
    >>> inputs, targets = neighbour_pairs(stack)
    >>> inputs.shape, targets.dtype
    ((2, 2, 2), dtype('float32'))
    >>> float(targets[0, 0, 0]), int(stack[1, 0, 0])  # slices 0 and 2 average to slice 1 here
    (4.0, 4)
    """
    _check_stack(stack)
    a = np.asarray(stack)
    return a[1:-1], ((a[:-2].astype(np.float32) + a[2:].astype(np.float32)) / 2).astype(np.float32)


@dataclass(frozen=True)
class Alikeness:
    """The apparent spacing of a stack's slices, in pixels (``inf``: beyond measure); they are
    ``alike`` (they can teach each other) up to :data:`MAX_SPACING`."""

    spacing: float

    @property
    def alike(self) -> bool:
        return self.spacing <= MAX_SPACING

    def describe(self) -> str:
        far = f"{self.spacing:.1f} px" if math.isfinite(self.spacing) else f"more than {_FARTHEST} px"
        how = "within" if self.alike else "beyond"
        return f"its slices look {far} apart, {how} the {MAX_SPACING:g} px at which neighbouring slices teach each other"


def slice_alikeness(stack: Any, *, max_slices: int = 16, crop: int = 512) -> Alikeness:
    """How far apart a stack's slices look, in pixels, and whether they can teach each other.

    Reads only the central ``crop`` x ``crop`` pixels of at most ``max_slices`` central slices
    (numpy, dask and zarr arrays alike).

    Examples
    --------
    >>> from scipy.ndimage import gaussian_filter
    >>> rng = np.random.default_rng(0)
    >>> fields = gaussian_filter(rng.normal(size=(6, 64, 64)), (0, 3, 3))  # smooth within a slice
    >>> noise = 0.05 * rng.normal(size=(6, 64, 64))
    >>> slice_alikeness(fields[0] + noise).alike  # the same structure in every slice
    True
    >>> slice_alikeness(fields + noise)  # unrelated slices
    Alikeness(spacing=inf)
    """
    _check_stack(stack)
    z, h, w = stack.shape
    n = min(z, max(MIN_SLICES, max_slices))
    z0, y0, x0 = (z - n) // 2, max(0, (h - crop) // 2), max(0, (w - crop) // 2)
    part = stack[z0 : z0 + n, y0 : y0 + crop, x0 : x0 + crop]
    v = np.asarray(part.compute() if hasattr(part, "compute") else part, dtype=np.float64)
    if min(v.shape[1:]) <= 2 * _FARTHEST:
        raise InputError(f"slices of {h}x{w} px are too small to compare with their neighbours")
    v = np.where(np.isfinite(v), v, np.nan)
    v = v - np.nanmean(v, axis=(1, 2), keepdims=True)  # slices that drift in brightness still compare

    def cov(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.nanmean(a * b))

    def within(d: int) -> float:  # a slice with itself shifted d px, along y and x
        return (cov(v[:, d:], v[:, :-d]) + cov(v[:, :, d:], v[:, :, :-d])) / 2

    d = LATERAL_DISTANCE
    across = (cov(v[1:, d:], v[:-1, :-d]) + cov(v[1:, :-d], v[:-1, d:]) + cov(v[1:, :, d:], v[:-1, :, :-d])
              + cov(v[1:, :, :-d], v[:-1, :, d:])) / 4  # neighbouring slices shifted d px, four ways
    curve = [within(r) for r in range(d, _FARTHEST + 1)]
    if not across < curve[0]:
        return Alikeness(0.0)  # as alike as one slice with itself (nan: nothing to compare)
    for i, (near, far) in enumerate(zip(curve, curve[1:])):
        if far <= across <= near:
            r = d + i + (near - across) / (near - far)
            return Alikeness(math.sqrt(r * r - d * d))
    return Alikeness(math.inf)


def _check_stack(stack: Any) -> None:
    shape = tuple(getattr(stack, "shape", ()))
    if len(shape) != 3:
        raise InputError(f"learning from neighbouring slices needs a stack (Z, Y, X); the input has {len(shape)} dimensions")
    if shape[0] < MIN_SLICES:
        raise InputError(
            f"learning from neighbouring slices needs at least {MIN_SLICES} slices; the stack has {shape[0]}"
        )
