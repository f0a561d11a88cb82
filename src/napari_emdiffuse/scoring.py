"""Scoring restorations against a reference of the same field: how good is it on your data?

Where a user has a reference (a long-dwell scan of the field, a clean image, the measured
slices a reconstruction left out), ``emdiffuse score`` tells how close each image comes to it,
side by side: the input, our restoration, another tool's. The figures are those of
``benchmarks/quality.py`` (:mod:`.engine.core.metrics`), so a user's table reads like ours.

Two scans of one field rarely overlap to the pixel (the slow scan drifts), and every method
then pays for the shift; ``register`` aligns the reference onto the images' grid first
(:func:`~.engine.training.data.registration.register_pair`), as the benchmarks do for the real
SEM pair.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .engine.errors import InputError

__all__ = ["ImageScore", "score_images", "mean_score", "default_data_range", "read_for_scoring"]

#: Largest area scored at once (pixels): beyond it, a region is asked for. The figures take
#: about 150 bytes a pixel (float64 copies, SSIM's windows): 8192² scores in 10 GB.
MAX_SCORED_PIXELS = 2**26


@dataclass
class ImageScore:
    """The figures of one image against the reference (units: the reference's grey levels,
    pixels; ``frc_nm`` where the reference records its pixel size)."""

    name: str
    psnr: float
    ssim: float
    mae: float
    frc_px: float
    frc_nm: float | None
    dark_bias: float
    bright_bias: float
    uncertainty: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"image": self.name, "psnr_db": self.psnr, "ssim": self.ssim, "mae": self.mae,
                "frc_px": self.frc_px, "frc_nm": self.frc_nm, "dark_1pct_bias": self.dark_bias,
                "bright_1pct_bias": self.bright_bias, **{f"uncertainty_{k}": v for k, v in self.uncertainty.items()}}


def mean_score(scores: Sequence[ImageScore], name: str) -> ImageScore:
    """The mean of each figure over several images (a folder's row below its files); the
    calibration figures over the images that have a map.

    Examples
    --------
    >>> a, b = ImageScore("a", 30.0, 0.8, 4.0, 3.0, None, 1.0, -1.0), ImageScore("b", 32.0, 0.9, 2.0, 3.5, None, 3.0, 1.0)
    >>> m = mean_score([a, b], "mean"); (m.psnr, m.mae, m.dark_bias)
    (31.0, 3.0, 2.0)
    """
    def mean(values: list) -> Any:
        kept = [v for v in values if v is not None]
        return float(np.mean(kept)) if kept else None

    with_maps = [s.uncertainty for s in scores if s.uncertainty]
    cal = {k: mean([u[k] for u in with_maps]) for k in with_maps[0]} if with_maps else {}
    return ImageScore(name=name, psnr=mean([s.psnr for s in scores]), ssim=mean([s.ssim for s in scores]),
                      mae=mean([s.mae for s in scores]), frc_px=mean([s.frc_px for s in scores]),
                      frc_nm=mean([s.frc_nm for s in scores]), dark_bias=mean([s.dark_bias for s in scores]),
                      bright_bias=mean([s.bright_bias for s in scores]), uncertainty=cal)


def default_data_range(reference: np.ndarray) -> float:
    """The PSNR's peak for a reference: 255 for 8-bit data (as every table here), else the
    reference's own span (a 16-bit scan rarely fills 0..65535, and a float image has no
    fixed range).

    Examples
    --------
    >>> default_data_range(np.array([[3, 200]], np.uint8)), default_data_range(np.array([[100, 4100]], np.uint16))
    (255.0, 4000.0)
    """
    ref = np.asarray(reference)
    if ref.dtype == np.uint8:
        return 255.0
    span = float(np.max(ref)) - float(np.min(ref))
    if not span > 0:
        raise InputError("the reference is constant: PSNR needs a data range; give one (--data-range)")
    return span


def score_images(
    images: Sequence[np.ndarray],
    reference: np.ndarray,
    *,
    names: Sequence[str] | None = None,
    uncertainties: Sequence[np.ndarray | None] | None = None,
    data_range: float | None = None,
    register: str | None = None,
    pixel_size: float | None = None,
    factor: int | None = None,
) -> list[ImageScore]:
    """Score images of one grid against a reference.

    Parameters
    ----------
    images : sequence of ndarray
        2D images or ZYX stacks, all of one shape: an input and its restorations, say.
    reference : ndarray
        The same field, of the images' shape (or any shape with ``register``).
    names : sequence of str, optional
        A name per image for the table (default ``image 1``, ...).
    uncertainties : sequence of ndarray or None, optional
        A std map per image (None where it has none), scored for calibration
        (:func:`~.engine.core.metrics.uncertainty_calibration`).
    data_range : float, optional
        The PSNR's peak; default :func:`default_data_range` of the reference.
    register : {"translation", "affine"}, optional
        Align the reference onto the images' grid first (2D only), then score the overlap:
        images and maps are cropped alike, never resampled.
    pixel_size : float, optional
        The reference's pixel size: the FRC resolution is also given in its unit.
    factor : int, optional
        The images are isotropic reconstructions (ZYX) with this factor: only the slices they
        generated are scored (those whose index is not a multiple of ``factor``); the measured
        ones are the input's own and would flatter every method alike.

    Returns
    -------
    list of ImageScore
        One per image, in order.

    Raises
    ------
    InputError
        Shapes that differ, images that are not 2D or 3D, non-finite pixels, a pair that does
        not register: one line each. Inputs are never modified.

    Examples
    --------
    >>> clean = np.tile(np.linspace(0, 255, 64), (64, 1))
    >>> noisy = clean + np.random.default_rng(0).normal(0, 10, clean.shape)
    >>> [round(s.psnr) for s in score_images([noisy, clean + 1], clean, data_range=255)]  # 20 log10(255 / 10), (255 / 1)
    [28, 48]
    """
    from .engine.core.metrics import extreme_bias, frc_resolution, mae, psnr, ssim, uncertainty_calibration

    if not images:
        raise InputError("nothing to score: give one image or more")
    names = list(names) if names is not None else [f"image {k + 1}" for k in range(len(images))]
    maps = list(uncertainties) if uncertainties is not None else [None] * len(images)
    if len(names) != len(images) or len(maps) != len(images):
        raise InputError(f"{len(images)} images but {len(names)} names and {len(maps)} uncertainty maps")
    arrays = [_finite(np.asarray(a), n) for a, n in zip(images, names)]
    ref = _finite(np.asarray(reference), "the reference")
    if any(a.ndim == 2 for a in [*arrays, ref]):  # a 2D image as a stack of one slice (a volume format's) is itself
        arrays, ref = [_flat(a) for a in arrays], _flat(ref)
        maps = [None if m is None else _flat(np.asarray(m)) for m in maps]
    shape = arrays[0].shape
    for a, n in zip(arrays, names):
        if a.ndim not in (2, 3):
            raise InputError(f"'{n}' has {a.ndim} axes; score takes 2D images and ZYX stacks")
        if a.shape != shape:
            raise InputError(f"'{n}' is {_dims(a.shape)} but '{names[0]}' is {_dims(shape)}: the images to compare "
                             "share one grid")
    for m, n in zip(maps, names):
        if m is not None and np.shape(m) != shape:
            raise InputError(f"the uncertainty of '{n}' is {_dims(np.shape(m))}, not {_dims(shape)}")
    # the peak of the reference as recorded: registered, it is resampled into float64
    peak = default_data_range(ref) if data_range is None else float(data_range)
    if not (math.isfinite(peak) and peak > 0):
        raise InputError(f"the data range must be a positive number, got {data_range}")
    if factor is not None:
        arrays, maps, ref = _generated(arrays, maps, ref, int(factor))
    if register is not None:
        arrays, maps, ref = _registered(arrays, maps, ref, register)
    elif ref.shape != arrays[0].shape:
        raise InputError(f"the reference is {_dims(ref.shape)} but the images are {_dims(shape)}; crop them alike "
                         "(--region) or align them (--register translation|affine)")
    scores = []
    for a, m, n in zip(arrays, maps, names):
        frc = float(np.median([frc_resolution(x, y) for x, y in zip(a.reshape(-1, *a.shape[-2:]),
                                                                    ref.reshape(-1, *ref.shape[-2:]))]))
        dark, bright = extreme_bias(a, ref)
        scores.append(ImageScore(
            name=n, psnr=psnr(a, ref, data_range=peak), ssim=_ssim(a, ref, peak, ssim), mae=mae(a, ref), frc_px=frc,
            frc_nm=frc * pixel_size if pixel_size else None, dark_bias=dark, bright_bias=bright,
            uncertainty=uncertainty_calibration(a, np.asarray(m, np.float64), ref) if m is not None else {}))
    return scores


def _generated(arrays: list[np.ndarray], maps: list, ref: np.ndarray, factor: int) -> tuple[list, list, np.ndarray]:
    """Only the slices an isotropic reconstruction with ``factor`` generated, of every array."""
    if factor < 2:
        raise InputError(f"factor must be 2 or more (F - 1 new slices between two measured ones), got {factor}")
    if arrays[0].ndim != 3 or ref.shape != arrays[0].shape:
        raise InputError("factor scores the new slices of ZYX volumes of the reference's shape")
    keep = np.arange(arrays[0].shape[0]) % factor != 0
    if not keep.any():
        raise InputError(f"a volume of {arrays[0].shape[0]} slices has no slices generated at factor {factor}")
    return [a[keep] for a in arrays], [None if m is None else np.asarray(m)[keep] for m in maps], ref[keep]


def _ssim(a: np.ndarray, ref: np.ndarray, peak: float, ssim: Any) -> float:
    """SSIM where the image has room for its 7-px window, else NaN (a sliver is still scored)."""
    return ssim(a, ref, data_range=peak) if min(a.shape[-2:]) >= 7 else math.nan


def _registered(arrays: list[np.ndarray], maps: list, ref: np.ndarray, warp: str) -> tuple[list, list, np.ndarray]:
    """The reference aligned onto the first image's grid (the images share it), and every image
    and map cropped to the overlap."""
    from .engine.training.data.registration import register_pair

    if warp not in ("translation", "affine"):
        raise InputError(f"register must be 'translation' or 'affine', got {warp!r}")
    if arrays[0].ndim != 2 or ref.ndim != 2:
        raise InputError("--register aligns 2D images; score a stack's slices one by one, or without it")
    pair = register_pair(arrays[0], ref, warp=warp)
    y0, x0 = pair.origin
    h, w = pair.fixed.shape

    def crop(a: Any) -> Any:
        return None if a is None else np.asarray(a)[y0:y0 + h, x0:x0 + w]

    return [crop(a) for a in arrays], [crop(m) for m in maps], np.asarray(pair.fixed, np.float64)


def _flat(a: np.ndarray) -> np.ndarray:
    return a[0] if a.ndim == 3 and a.shape[0] == 1 else a


def _finite(a: np.ndarray, name: str) -> np.ndarray:
    if a.dtype.kind not in "biuf":
        raise InputError(f"'{name}' holds {a.dtype} values; score takes greyscale images")
    if a.size > MAX_SCORED_PIXELS:
        raise InputError(f"'{name}' has {a.size} pixels: score a part of it (--region)")
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        raise InputError(f"'{name}' has NaN or infinite pixels (no data): score a region without them (--region)")
    return a


def _dims(shape: tuple[int, ...]) -> str:
    return " x ".join(str(int(n)) for n in shape)


def read_for_scoring(path: str | os.PathLike[str], region: Sequence[int] | None, *, channel: int | None = None,
                     time: int | None = None) -> tuple[np.ndarray, Any]:
    """A file's pixels (its ``channel`` / ``time`` where it declares such axes: an image and its
    single-channel reference take one option; only ``region``'s rows Y0:Y1 and columns X0:X1
    read from a lazy store) and its ImageData, for :func:`score_images`."""
    from .engine.io.images import read_image
    from .engine.io.views import check_one_channel

    img = read_image(path)
    axes = img.axes or ""
    if (channel is not None and "C" in axes) or (time is not None and "T" in axes):
        img = read_image(path, channel=channel if "C" in axes else None, time=time if "T" in axes else None)
    data = img.data
    check_one_channel(tuple(data.shape), img.axes, str(path))
    if region is not None:
        y0, y1, x0, x1 = (int(v) for v in region)
        h, w = data.shape[-2:]
        if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
            raise InputError(f"region {y0}:{y1}, {x0}:{x1} is not inside '{path}' ({h} rows, {w} columns)")
        data = data[..., y0:y1, x0:x1]
    if int(np.prod(data.shape)) > MAX_SCORED_PIXELS:  # before any pixel is read
        raise InputError(f"'{path}' has {int(np.prod(data.shape))} pixels: score a part of it (--region)")
    return np.asarray(data), img
