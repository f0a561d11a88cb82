"""Intensity normalisation to the model's [-1, 1] and back, and the model-range condition.

The rule comes from the model card. ``percentile`` (the default of our models) maps the
low/high percentiles of the whole input to -1/+1 and works for any dtype; ``range`` maps
fixed values (the published models: 0..255). The values used are recorded so that the
output maps back to the input's scale and dtype. A restoration also finds the input's fill
value (the constant border of aligned sections, see :mod:`.fill`) and leaves it out.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from ..models.cards import Normalisation
from .fill import find_fill

__all__ = ["NormInfo", "fit_normalisation", "to_model", "from_model", "to_dtype", "sample_values", "std_from_model", "make_condition"]

_MAX_SAMPLE = 4_000_000


@dataclass(frozen=True)
class NormInfo:
    """Input values that map to -1 and +1, the fill value (no data) if the input has one, and
    whether the sampled values hold NaN (no data too, see :mod:`.fill`)."""

    mode: str
    lo: float
    hi: float
    fill: float | None = None
    nan: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


#: A stored input of more chunks than this is sampled in this many of its chunks (below).
_MAX_CHUNKS = 64


def sample_values(image, max_values: int = _MAX_SAMPLE) -> np.ndarray:
    """A subsample of an array-like (numpy, dask, zarr, a lazily read file) without loading it
    whole: every value of a small one; a strided subsample; or, for a stored array of more
    than :data:`_MAX_CHUNKS` chunks, a strided subsample of that many of its chunks, evenly
    spread over it. A stride shorter than a chunk reads every chunk: a terabyte volume
    or a store read over the network would be read in full (or a large share of it) for its
    percentiles, where a few dozen chunks hold them as well.

    Examples
    --------
    >>> import dask.array as da
    >>> big = da.arange(4096 * 4096, dtype="f4").reshape(4096, 4096).rechunk(256)  # 256 chunks
    >>> v = sample_values(big, max_values=65536)
    >>> bool(v.size <= 65536 and 0 <= v.min() and v.max() < 4096 * 4096)
    True
    """
    shape = image.shape
    n = int(np.prod(shape))
    if n <= max_values:
        return np.asarray(image[...], dtype=np.float64).ravel()
    chunks = _read_chunks(image)
    if chunks is not None:
        grid = [-(-s // c) for s, c in zip(shape, chunks)]
        if int(np.prod(grid)) > _MAX_CHUNKS:
            return _sample_chunks(image, shape, chunks, grid, max_values)
    stride = int(np.ceil((n / max_values) ** (1.0 / len(shape))))
    sub = image[tuple(slice(None, None, stride) for _ in shape)]
    sub = sub.compute() if hasattr(sub, "compute") else sub
    return np.asarray(sub, dtype=np.float64).ravel()


def in_many_chunks(image) -> bool:
    """Whether ``image`` is stored in more than :data:`_MAX_CHUNKS` chunks: what
    :func:`sample_values` samples chunk by chunk instead of strided across it.

    Examples
    --------
    >>> import zarr
    >>> in_many_chunks(zarr.zeros((64, 1024, 1024), chunks=(64, 64, 64))), in_many_chunks(np.zeros((64, 1024, 1024)))
    (True, False)
    """
    chunks = _read_chunks(image)
    return chunks is not None and int(np.prod([-(-s // c) for s, c in zip(image.shape, chunks)])) > _MAX_CHUNKS


def _read_chunks(image) -> tuple[int, ...] | None:
    """The shape of the pieces a stored array is read in (dask's chunks; zarr's, N5's, HDF5's
    chunks); None for numpy and anything without them."""
    if isinstance(image, np.ndarray):
        return None
    size = getattr(image, "chunksize", None)  # dask
    chunks = size if size is not None else getattr(image, "chunks", None)
    if not isinstance(chunks, tuple) or len(chunks) != len(image.shape):
        return None
    if not all(isinstance(c, (int, np.integer)) and c > 0 for c in chunks):
        return None
    return tuple(int(c) for c in chunks)


def _spread_cells(grid: list[int], count: int) -> list[tuple[int, ...]]:
    """``count`` distinct cells of ``grid`` spread evenly over it, the same each time: a Halton
    sequence (bases 2, 3, 5, ...), whose points fill every part of the field before any twice.
    A regular lattice would take the same columns in every row (a drift across the field
    would then bias the percentiles).

    Examples
    --------
    >>> sorted(_spread_cells([2, 2], 4))
    [(0, 0), (0, 1), (1, 0), (1, 1)]
    >>> cells = _spread_cells([4, 4], 8)  # every row and every column of chunks twice
    >>> sorted(c[0] for c in cells), sorted(c[1] for c in cells)
    ([0, 0, 1, 1, 2, 2, 3, 3], [0, 0, 1, 1, 2, 2, 3, 3])
    """
    bases = [2, 3, 5, 7, 11, 13][: len(grid)]
    found: dict[tuple[int, ...], None] = {}
    k = 1
    while len(found) < count and k < 64 * count:
        cell = []
        for b, n in zip(bases, grid):
            f, x, i = 1.0, 0.0, k
            while i:
                f /= b
                x += f * (i % b)
                i //= b
            cell.append(min(int(x * n), n - 1))
        found.setdefault(tuple(cell), None)
        k += 1
    return list(found)


def _sample_chunks(image, shape, chunks, grid, max_values: int) -> np.ndarray:
    picks = _spread_cells(grid, _MAX_CHUNKS)
    per_chunk = max(1, max_values // _MAX_CHUNKS)
    stride = max(1, int(np.ceil((int(np.prod(chunks)) / per_chunk) ** (1.0 / len(shape)))))

    def read(at: tuple[int, ...]) -> np.ndarray:
        window = tuple(slice(i * c, min((i + 1) * c, s), stride) for i, c, s in zip(at, chunks, shape))
        sub = image[window]
        sub = sub.compute() if hasattr(sub, "compute") else sub
        return np.asarray(sub, dtype=np.float64).ravel()

    # Several at once: by URL each chunk is a round trip (64 of 20-100 ms one after another).
    with ThreadPoolExecutor(max_workers=8) as pool:
        return np.concatenate(list(pool.map(read, picks)))


def fit_normalisation(values: np.ndarray, rule: Normalisation, *, adapt_range: bool = False) -> NormInfo:
    """Fit the rule to sampled input values (finite values only).

    With ``adapt_range`` (restoring), a ``range`` rule whose fixed values do not hold the
    input maps the input's own range instead, with a warning, and a fill value
    (:func:`~.fill.find_fill`) is recorded and left out of the fit; training keeps the rule
    as is.
    """
    if rule.mode == "range" and not adapt_range:
        return NormInfo("range", float(rule.vmin), float(rule.vmax))
    fill = find_fill(values) if adapt_range else None
    if fill is not None:
        rest = values[values != fill]
        if rest.size == 0:  # all fill: a constant image, restored as itself
            return replace(_fit(values, rule), fill=fill)
        return replace(_fit(rest, rule), fill=fill)
    return _fit(values, rule)


def _fit(values: np.ndarray, rule: Normalisation) -> NormInfo:
    if rule.mode == "range":
        lo, hi = float(values.min()), float(values.max())
        span = rule.vmax - rule.vmin
        if lo >= rule.vmin - 1e-3 * span and hi <= rule.vmax + 1e-3 * span:
            return NormInfo("range", float(rule.vmin), float(rule.vmax))
        # A model made for fixed values (8-bit 0..255) given e.g. 16-bit data: its fixed
        # range would map the image to far beyond [-1, 1] and the output would be clipped
        # to black/white. Map the input's own range instead, and say so.
        import warnings

        warnings.warn(
            f"the model expects values {rule.vmin:g}..{rule.vmax:g} but the input spans {lo:g}..{hi:g}; "
            "its own range is mapped to the model's (recorded as normalisation mode 'input-range')",
            UserWarning,
            stacklevel=3,
        )
        return NormInfo("input-range", lo, hi if hi > lo else lo + 1.0)
    lo, hi = np.percentile(values, [rule.low, rule.high])
    lo, hi = float(lo), float(hi)
    if not hi > lo:
        # Constant (or nearly constant) image: any non-zero span keeps it finite and
        # maps the constant to -1 and back exactly.
        lo, hi = float(values.min()), float(values.max())
        if not hi > lo:
            # Beyond 2**53 adding 1 is lost to rounding (hi == lo, a zero span): widen in
            # proportion to the value there.
            hi = lo + 1.0 if lo + 1.0 > lo else lo + abs(lo) * 2.0**-20
    return NormInfo("percentile", lo, hi)


def to_model(x: np.ndarray, info: NormInfo) -> np.ndarray:
    """Input values -> model range (float32). Not clipped: out-of-range values are the
    network's to handle, as in training."""
    return ((np.asarray(x, dtype=np.float64) - info.lo) * (2.0 / (info.hi - info.lo)) - 1.0).astype(np.float32)


def from_model(y: np.ndarray, info: NormInfo) -> np.ndarray:
    """Model range -> input values (float64)."""
    return (np.asarray(y, dtype=np.float64) + 1.0) * (0.5 * (info.hi - info.lo)) + info.lo


def to_dtype(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Round and clip to an integer dtype's range (NaN, no data, becomes 0); floats are cast."""
    dtype = np.dtype(dtype)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        x = np.asarray(x)
        if x.dtype.kind == "f" and np.isnan(x).any():
            x = np.where(np.isnan(x), 0.0, x)
        return np.clip(np.rint(x), info.min, info.max).astype(dtype)
    return np.asarray(x).astype(dtype)


def std_from_model(sd: np.ndarray, info: NormInfo) -> np.ndarray:
    """A model-range standard deviation in input units, as float32.

    Scaled in float64 and clipped to float32's range, so inputs near float32's limit give a
    large finite uncertainty rather than inf or NaN.
    """
    out = np.asarray(sd, dtype=np.float64) * (0.5 * (info.hi - info.lo))
    return np.clip(out, 0.0, np.finfo(np.float32).max).astype(np.float32)


def make_condition(plane: np.ndarray, norm: NormInfo, scale: int, device: torch.device) -> torch.Tensor:
    """Model-range condition (1, 1, H*s, W*s) of a plane in input units.

    Super-resolution upsamples the normalised plane (bicubic) before the network, as the
    published EMDiffuse-r does; training must prepare its inputs the same way.
    """
    cond = torch.from_numpy(to_model(plane, norm))[None, None].to(device)
    if scale > 1:
        cond = F.interpolate(cond, scale_factor=scale, mode="bicubic", align_corners=False)
    return cond


#: Edge (input pixels) of the central crop the acquisition blur is read from.
BLUR_CROP = 256


def read_blur(estimator: torch.nn.Module, plane: np.ndarray, norm: NormInfo, scale: int, device: torch.device) -> float:
    """The acquisition blur a blur-conditioned model's estimator reads off a 2D plane (input
    units): its central :data:`BLUR_CROP`-pixel crop, normalised with ``norm`` and upsampled
    as the network sees it. Non-finite pixels take the crop's median.
    """
    h, w = plane.shape[-2:]
    y0, x0 = max(0, (h - BLUR_CROP) // 2), max(0, (w - BLUR_CROP) // 2)
    crop = np.array(plane[y0 : y0 + BLUR_CROP, x0 : x0 + BLUR_CROP], dtype=np.float64)
    finite = np.isfinite(crop)
    if not finite.all():
        crop[~finite] = np.median(crop[finite]) if finite.any() else 0.0
    return float(estimator.read(make_condition(crop, norm, scale, device))[0])
