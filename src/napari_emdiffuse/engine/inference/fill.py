"""Fill regions: the constant borders of aligned sections, stitched montages and padded scans.

Registration and montaging tools fill pixels outside the imaged area with one constant
(0 most often, sometimes the dtype's maximum). They are no data, yet a restoration that takes
them for data fails twice: the fill drags the input's low percentile to 0, squeezing the
image into a fraction of the model's range, and the step from content to fill looks like an
edge to every tile that straddles it. On an 8-degree rotated, zero-filled section at dose 50
(`benchmarks/fill.py`) that cost 2.5 dB within 40 px of the border and 0.8 dB overall.

So a restoration finds the fill value once, from the values that fit the normalisation
(:func:`find_fill`), leaves it out of the percentiles, and in every block replaces fill
regions (:func:`fill_mask`) by their nearest valid pixel before the network sees them
(:func:`inpaint_nearest`). The output keeps the fill value there, with zero uncertainty.

NaN pixels of float data (what registration tools such as scikit-image's ``warp`` with
``cval=np.nan`` write outside the imaged area) are no data too, wherever they are: they are
left out of the percentiles, inpainted the same way, and stay NaN in float outputs (0 in
integer ones). Inf is refused: it is a broken value, not a marker.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["FILL_SHARE", "FILL_RUNS", "FILL_EDGE", "find_fill", "fill_mask", "inpaint_nearest", "upscale_mask"]

#: The smallest share of the sampled values at the input's minimum (or maximum) that marks
#: that value as fill. Noise makes exact repeats of an extreme value rare in measured pixels.
FILL_SHARE = 0.01

#: The least share of the fill value's samples followed by another one (a run).
FILL_RUNS = 0.5

#: A fill region holds at least one FILL_EDGE x FILL_EDGE square of the fill value, so lone
#: pixels of measured data at the extreme value (clipped shot noise) stay data.
FILL_EDGE = 5


def find_fill(values: np.ndarray) -> float | None:
    """The fill value among sampled input values (in raster order), or None.

    The minimum or the maximum (whichever is more frequent) when it makes up at least
    :data:`FILL_SHARE` of the values and comes in runs: at least half of its values are
    followed by another. Fill is a region; pixels clipped by noise at the dtype's limit are
    scattered (a dose-10 scan clips 4 % of its pixels at 255, nearly all alone) and stay data.

    Examples
    --------
    >>> v = np.concatenate([np.zeros(50), np.linspace(10, 200, 950)])
    >>> find_fill(v)
    0.0
    >>> find_fill(np.linspace(10, 200, 1000)) is None
    True
    >>> find_fill(np.tile([0.0, 10, 20, 30, 40], 200)) is None  # frequent but scattered
    True
    """
    values = np.asarray(values)
    if values.size < 2:
        return None
    best, share = None, FILL_SHARE
    for cand in (values.min(), values.max()):
        hit = values == cand
        n = int(np.count_nonzero(hit))
        if n / values.size >= share and np.count_nonzero(hit[1:] & hit[:-1]) >= FILL_RUNS * n:
            best, share = float(cand), n / values.size
    return best


def fill_mask(plane: np.ndarray, fill: float | None) -> np.ndarray | None:
    """Pixels of a 2D plane with no data, or None if none: those inside fill regions (see
    :data:`FILL_EDGE`) and, in float data, every NaN pixel (alone too: NaN is never a
    measurement; registration tools write it outside the imaged area).

    Examples
    --------
    >>> p = np.full((12, 12), 7.0); p[:, :6] = 0.0; p[3, 9] = 0.0
    >>> m = fill_mask(p, 0.0)
    >>> int(m.sum()), bool(m[3, 9])
    (72, False)
    >>> p[5, 9] = np.nan
    >>> int(fill_mask(p, None).sum()), int(fill_mask(p, 0.0).sum())
    (1, 73)
    """
    plane = np.asarray(plane)
    nan = np.isnan(plane) if plane.dtype.kind == "f" else None
    nan = nan if nan is not None and nan.any() else None
    hit = plane == fill if fill is not None else None
    if hit is None or not hit.any():
        return nan
    # The opening keeps every pixel covered by a full square of fill; border_value=1 lets a
    # region that runs off the plane (a block's edge) count as one.
    square = np.ones((FILL_EDGE, FILL_EDGE), dtype=bool)
    mask = ndi.binary_dilation(ndi.binary_erosion(hit, square, border_value=1), square) & hit
    if nan is not None:
        mask |= nan
    return mask if mask.any() else None


def inpaint_nearest(plane: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A copy of ``plane`` with every masked pixel set to its nearest unmasked pixel's value.

    The network then sees the content continue past the border instead of a step to the fill.

    Examples
    --------
    >>> p = np.array([[0.0, 0.0, 5.0, 6.0]])
    >>> inpaint_nearest(p, p == 0).tolist()
    [[5.0, 5.0, 5.0, 6.0]]
    """
    idx = ndi.distance_transform_edt(mask, return_distances=False, return_indices=True)
    return np.asarray(plane)[tuple(idx)]


def upscale_mask(mask: np.ndarray, scale: int) -> np.ndarray:
    """A mask (or any per-pixel array) in input pixels as one in output pixels (``scale`` x
    ``scale`` each)."""
    if scale == 1:
        return mask
    return np.repeat(np.repeat(mask, scale, axis=0), scale, axis=1)
