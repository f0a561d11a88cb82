"""How alike a stack's neighbouring slices are: the apparent slice spacing, noise aside.

Neighbouring slices of a finely sectioned volume (FIB-SEM, block-face SEM with voxels close to
isotropic) show nearly the same structure; those of serial-section TEM, 40-50 nm apart on 4 nm
pixels, do not. Two things rely on telling them apart: a fine-tune that learns each slice from
its neighbours (:mod:`..training.neighbours`) and a restoration that averages its restored
slices along z (:mod:`..inference.zfilter`). Both help on alike slices and do harm elsewhere
(on ISBI 2012 the neighbours' fine-tune fell from 21.56 to 16.70 dB, averaging along z lost
1.4 dB), and neither can see the difference in its own result.

:func:`slice_alikeness` measures how far apart the slices look, in pixels: two neighbouring
slices shifted ``LATERAL_DISTANCE`` px against each other correlate as one slice with itself
shifted by some ``r`` px (read off its own correlation at 3, 4, ... px), and the apparent
spacing is ``sqrt(r**2 - 3**2)``. Only covariances between different slices, or pixels 3 px
apart, enter: their noise is independent (nearly so 3 px apart, beyond the correlation of a
scanning detector), so the estimate holds at any dose. On C. elegans it read 0.0-0.7 px with
every slice, 0.8-1.4 with every second, 2.2-2.4 with every third, at doses 10-1000 with white
and correlated noise; ISBI 2012 and stacks of unrelated images: beyond 8 px; a stack of one
image with noise: 0.0-0.8; an isotropic random field sampled every 1 / 2 / 3 / 4 px along z:
0.96 / 1.94 / 2.8 / 3.9, with or without noise. The slices are alike up to
:data:`MAX_SPACING`: with every second slice of C. elegans the neighbours' fine-tune still
gained 0.12 dB, with every third it lost (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError

__all__ = ["slice_alikeness", "Alikeness", "LATERAL_DISTANCE", "MAX_SPACING"]

#: Lateral shift (px) between the slices compared in :func:`slice_alikeness`, and the shortest
#: within a slice: far enough that the noise of the pixels compared is nearly independent.
LATERAL_DISTANCE = 3

#: The largest apparent slice spacing (px) at which neighbouring slices are alike: they teach
#: each other (a fine-tune) and can be averaged (a restoration).
MAX_SPACING = 1.5

#: Lateral shifts (px) up to which a slice's correlation is read; slices that correlate less
#: than a slice with itself this far apart look farther apart than can be measured.
_FARTHEST = 8


@dataclass(frozen=True)
class Alikeness:
    """The apparent spacing of a stack's slices, in pixels (``inf``: beyond measure); they are
    ``alike`` (they show nearly the same structure) up to :data:`MAX_SPACING`."""

    spacing: float

    @property
    def alike(self) -> bool:
        return self.spacing <= MAX_SPACING

    def describe(self) -> str:
        far = f"{self.spacing:.1f} px" if math.isfinite(self.spacing) else f"more than {_FARTHEST} px"
        how = "within" if self.alike else "beyond"
        return f"its slices look {far} apart, {how} the {MAX_SPACING:g} px up to which neighbouring slices are alike"


def slice_alikeness(stack: Any, *, max_slices: int = 16, crop: int = 512) -> Alikeness:
    """How far apart a stack's slices look, in pixels, and whether they are alike.

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
    shape = tuple(getattr(stack, "shape", ()))
    if len(shape) != 3 or shape[0] < 3:
        raise InputError(f"comparing neighbouring slices needs a stack (Z, Y, X) of at least 3 slices; got shape {shape}")
    z, h, w = stack.shape
    n = min(z, max(3, max_slices))
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
