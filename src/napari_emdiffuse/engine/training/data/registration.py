"""Registration of training pairs: degraded input onto its clean / high-resolution reference.

EMDiffuse learns pixel to pixel, so a pair recorded twice (short and long dwell time, low and
high magnification) must be aligned to a fraction of a pixel first. :func:`register_pair`
finds the global translation by phase correlation (subpixel), optionally measures how far
tiles deviate from it, and crops both images to their common overlap. With ``warp="affine"``
it also fits an affine field to the tiles' own shifts: two scans of one field of view at
different dwell times differ by more than a translation (the slow scan drifts, the
magnification differs by a few 0.01 %), and on a 768-px SEM pair the reference then lies
0.1-0.4 px off the input in one corner and not in another. A network trained on such a pair
learns to blur by that much; the field removes it.

Two choices matter for training:

* The degraded image (``moving``) is never interpolated: the integer part of the shift is
  applied by cropping, the fractional part by resampling the *reference* (``fixed``) with a
  cubic spline. Interpolating a noisy image would smooth its noise, and the network would
  learn on noise it never sees at inference.
* Super-resolution pairs (``scale > 1``): ``moving`` is the low-resolution image. The shift is
  measured after area-downsampling the high-resolution image to the low-resolution grid
  (upsampling the low-resolution image instead would make the correlation fit interpolation
  artefacts), then scaled back; the high-resolution output covers exactly ``scale`` times
  the low-resolution output.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from ...errors import InputError

__all__ = ["RegisteredPair", "register_pair"]

_COARSE_MAX = 1024  # edge above which the integer search runs on a block-mean copy
# Matches are judged by the correlation of band-passed images (difference of Gaussians,
# 1.5 and 10 px): the fine sigma keeps noise from hiding a match, removing the coarse
# scale keeps shading gradients from faking one between unrelated fields of view.
_BAND = (1.5, 10.0)


@dataclass(frozen=True)
class RegisteredPair:
    """An aligned pair cropped to the common field of view.

    Attributes
    ----------
    moving : numpy.ndarray
        The moving (degraded / low-resolution) image, cropped, never interpolated; its dtype
        is kept.
    fixed : numpy.ndarray
        The reference, resampled onto ``moving``'s grid (float64), ``scale`` times larger.
    shift : tuple of float
        ``(dy, dx)`` in ``moving`` pixels such that ``moving(p - shift)`` matches
        ``fixed(p)`` (the convention of :func:`skimage.registration.phase_cross_correlation`).
    residual_shift : float
        With ``refine_tiles``: the largest distance (pixels) between a tile's own shift and the
        global one, a measure of non-rigid distortion; 0.0 otherwise.
    correlation : float
        Pearson correlation of the band-passed, aligned images (1 = identical structure).
    scale : int
        Size ratio ``fixed / moving``.
    warp : str
        ``"translation"`` or ``"affine"``: the model ``fixed`` was resampled with (an affine
        request falls back to the translation where fewer than six tiles carry structure).
    max_correction : float
        With the affine warp: the largest distance (``moving`` pixels) between the affine field
        and the global shift over the image; 0.0 otherwise.
    origin : tuple of int
        Row and column of ``moving``'s first pixel in the image given: the crop kept.
    """

    moving: np.ndarray
    fixed: np.ndarray
    shift: tuple[float, float]
    residual_shift: float = 0.0
    correlation: float = 1.0
    scale: int = 1
    warp: str = "translation"
    max_correction: float = 0.0
    origin: tuple[int, int] = (0, 0)


def _as_plane(image, name: str) -> np.ndarray:
    a = np.asarray(image.compute() if hasattr(image, "compute") else image)
    a = np.squeeze(a) if a.ndim > 2 else a
    if a.ndim != 2:
        raise InputError(f"{name} must be a 2D image to register, got shape {tuple(a.shape)}")
    if a.dtype.kind not in "uif":
        raise InputError(f"{name} has unsupported dtype {a.dtype} for registration")
    if min(a.shape) < 16:
        raise InputError(f"{name} is too small to register ({a.shape[0]}x{a.shape[1]} pixels)")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise InputError(f"{name} contains NaN/Inf pixels; replace them before registering")
    return a


def _block_mean(a: np.ndarray, k: int) -> np.ndarray:
    if k == 1:
        return a.astype(np.float64)
    h, w = (a.shape[0] // k) * k, (a.shape[1] // k) * k
    return a[:h, :w].astype(np.float64).reshape(h // k, k, w // k, k).mean(axis=(1, 3))


def _overlap(shape_m, shape_f, shift) -> tuple[slice, slice, slice, slice] | None:
    """Integer overlap: moving rows/cols q with q + shift inside fixed."""
    out = []
    for n_m, n_f, s in zip(shape_m, shape_f, shift):
        lo, hi = max(0, -s), min(n_m, n_f - s)
        if hi <= lo:
            return None
        out.append((slice(lo, hi), slice(lo + s, hi + s)))
    (my, fy), (mx, fx) = out
    return my, mx, fy, fx


def _bandpass(a: np.ndarray) -> np.ndarray:
    return ndi.gaussian_filter(a, _BAND[0]) - ndi.gaussian_filter(a, _BAND[1])


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else 0.0


def _phase_shift(ref: np.ndarray, mov: np.ndarray, upsample: int = 1) -> np.ndarray:
    from skimage.registration import phase_cross_correlation

    # Phase normalisation finds the integer peak robustly but locks subpixel estimates
    # towards whole pixels (~0.1 px bias); the plain cross-correlation peak is unbiased.
    norm = "phase" if upsample == 1 else None
    shift, _, _ = phase_cross_correlation(ref, mov, upsample_factor=upsample, normalization=norm)
    return np.asarray(shift, dtype=np.float64)


def _integer_shift(mov: np.ndarray, fix: np.ndarray, min_overlap: float) -> tuple[tuple[int, int], float]:
    """Best integer shift of two images of any shapes: phase correlation on a common padded
    canvas, then the wrap-around ambiguity resolved by the correlation of the overlaps."""
    H, W = max(mov.shape[0], fix.shape[0]), max(mov.shape[1], fix.shape[1])

    def prep(a: np.ndarray) -> np.ndarray:
        # Mean-free and tapered so the canvas border does not dominate the correlation.
        a = a - a.mean()
        win = np.outer(np.hanning(a.shape[0] + 2)[1:-1], np.hanning(a.shape[1] + 2)[1:-1])
        out = np.zeros((H, W))
        out[: a.shape[0], : a.shape[1]] = a * np.sqrt(win)
        return out

    d = _phase_shift(prep(fix), prep(mov)).round().astype(int)
    sm, sf = _bandpass(mov), _bandpass(fix)
    need = min_overlap * min(mov.size, fix.size)
    best, best_r = None, -np.inf
    for dy in {d[0], d[0] - H, d[0] + H}:
        for dx in {d[1], d[1] - W, d[1] + W}:
            ov = _overlap(mov.shape, fix.shape, (dy, dx))
            if ov is None:
                continue
            my, mx, fy, fx = ov
            if (my.stop - my.start) * (mx.stop - mx.start) < need:
                continue
            r = _pearson(sm[my, mx], sf[fy, fx])
            if r > best_r:
                best, best_r = (int(dy), int(dx)), r
    if best is None:
        # Every candidate leaves too little overlap: say so with the phase-correlation peak.
        ov = _overlap(mov.shape, fix.shape, tuple(int(v) for v in d))
        area = 0 if ov is None else (ov[0].stop - ov[0].start) * (ov[1].stop - ov[1].start)
        raise InputError(
            f"the images overlap by only {area / min(mov.size, fix.size):.0%} of the smaller one "
            f"(need {min_overlap:.0%}); are they the same field of view?"
        )
    return best, best_r


def _tile_shifts(mov: np.ndarray, fix: np.ndarray, n: int, min_correlation: float) -> tuple[np.ndarray, np.ndarray]:
    """Subpixel shifts of an n x n grid of tiles of two integer-aligned crops, and the tiles'
    centres (row, column in the crops' pixels)."""
    ys = np.linspace(0, mov.shape[0], n + 1).astype(int)
    xs = np.linspace(0, mov.shape[1], n + 1).astype(int)
    found, centres = [], []
    for i in range(n):
        for j in range(n):
            a = mov[ys[i] : ys[i + 1], xs[j] : xs[j + 1]]
            b = fix[ys[i] : ys[i + 1], xs[j] : xs[j + 1]]
            if min(a.shape) < 16 or a.std() == 0 or b.std() == 0:
                continue
            t = _phase_shift(b, a, upsample=50)
            if np.abs(t).max() > min(a.shape) / 4:
                continue  # a spurious peak, not a local displacement
            ti = np.round(t).astype(int)
            ov = _overlap(a.shape, b.shape, tuple(ti))
            if ov is None:
                continue
            my, mx, fy, fx = ov
            r = _pearson(_bandpass(a)[my, mx], _bandpass(b)[fy, fx])
            if r >= min_correlation:
                found.append(t)
                centres.append(((ys[i] + ys[i + 1] - 1) / 2, (xs[j] + xs[j + 1] - 1) / 2))
    return np.array(found).reshape(-1, 2), np.array(centres, dtype=np.float64).reshape(-1, 2)


def _affine_fit(centres: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Rows (dy, dx) of ``[c, per row, per column]``: a robust least-squares fit of the tile
    shifts (iteratively reweighted, so a tile fooled by a repetitive pattern does not tilt it)."""
    design = np.c_[np.ones(len(centres)), centres]
    coef = np.zeros((2, 3))
    for k in range(2):
        w = np.ones(len(centres))
        for _ in range(6):
            coef[k], *_ = np.linalg.lstsq(design * w[:, None], shifts[:, k] * w, rcond=None)
            r = np.abs(shifts[:, k] - design @ coef[k])
            s = 1.4826 * np.median(r) + 1e-3
            w = np.sqrt(np.minimum(1.0, 1.5 * s / np.maximum(r, 1e-9)))
    return coef


def _warp_plane(fix: np.ndarray, crop: tuple[slice, slice], coef: np.ndarray) -> np.ndarray:
    """``fix`` sampled at moving pixel p + the affine shift at p, over moving's ``crop``."""
    p, q = np.mgrid[crop[0], crop[1]].astype(np.float64)
    dy = coef[0, 0] + coef[0, 1] * p + coef[0, 2] * q
    dx = coef[1, 0] + coef[1, 1] * p + coef[1, 2] * q
    return ndi.map_coordinates(fix, [p + dy, q + dx], order=3, mode="nearest")


def _refine_affine(
    mov: np.ndarray, fix: np.ndarray, crop: tuple[slice, slice], shift: np.ndarray, grid: int, min_correlation: float
) -> np.ndarray | None:
    """The affine field (moving pixels) from tile shifts, measured again on the reference
    warped by the current estimate until they vanish: a tile's estimate is unbiased only near
    zero (its edges, aligned in both tiles, pull it toward no shift by ~20 %)."""
    coef = np.array([[shift[0], 0.0, 0.0], [shift[1], 0.0, 0.0]])
    offset = (crop[0].start, crop[1].start)
    for _ in range(5):
        local, centres = _tile_shifts(mov[crop], _warp_plane(fix, crop, coef), grid, min_correlation)
        if len(local) < 6:
            return None
        step = _affine_fit(centres + offset, local)
        coef = coef + step
        if np.abs(step[:, 0]).max() < 0.01 and np.abs(step[:, 1:]).max() * max(mov.shape) < 0.01:
            break
    # A slope the tiles' scatter cannot tell from zero is dropped (the field keeps its value at
    # the tiles' centre): on a small, very noisy pair 3x3 tiles otherwise fit 0.3 px of noise.
    at = centres + offset
    centre = at.mean(axis=0)
    resid = local - np.c_[np.ones(len(at)), at] @ step.T
    for k in range(2):
        sigma = 1.4826 * np.median(np.abs(resid[:, k])) + 0.02  # 0.02 px: the estimates' resolution
        for j in range(2):
            se = sigma / np.sqrt(((at[:, j] - centre[j]) ** 2).sum())
            if abs(coef[k, 1 + j]) < 2 * se:
                coef[k, 0] += coef[k, 1 + j] * centre[j]
                coef[k, 1 + j] = 0.0
    return coef


def register_pair(
    moving,
    fixed,
    *,
    refine_tiles: int | None = None,
    max_shift: float | None = None,
    scale: int = 1,
    min_overlap: float = 0.5,
    min_correlation: float = 0.3,
    warp: str = "translation",
) -> RegisteredPair:
    """Align ``moving`` onto ``fixed`` by a translation (or an affine field) and crop both to
    their overlap.

    Parameters
    ----------
    moving : array-like
        2D degraded image (noisy, or low-resolution when ``scale > 1``). Never interpolated.
    fixed : array-like
        2D reference (clean / high-resolution) of the same field of view; any shape.
    refine_tiles : int, optional
        Split the overlap into ``refine_tiles x refine_tiles`` tiles and measure each tile's
        shift after the global alignment; ``residual_shift`` reports the largest deviation
        from the global shift (featureless tiles are skipped). Large values mean the pair is
        distorted, not just translated, and will train a blurry model.
    max_shift : float, optional
        Refuse pairs shifted by more than this many pixels (along either axis).
    scale : int, optional
        ``fixed`` is ``scale`` times larger than ``moving`` (super-resolution pairs).
    min_overlap : float, optional
        Smallest overlap accepted, as a fraction of the smaller image's area.
    min_correlation : float, optional
        Smallest correlation of the aligned images (band-passed to structures of ~2-10
        pixels) accepted; below it the images are taken to show different things.
    warp : {"translation", "affine"}, optional
        ``"affine"``: measure each tile's shift after the global alignment (``refine_tiles``
        per side; default one tile per 64-96 pixels, 3 to 8) and resample ``fixed`` along the
        affine field fitted to them: the drift and the magnification difference of two scans.
        Falls back to the translation where fewer than six tiles carry structure.

    Returns
    -------
    RegisteredPair

    Raises
    ------
    InputError
        When the overlap is smaller than ``min_overlap`` of the smaller image, when the
        images do not correlate (unrelated or too different to register), or when the
        shift exceeds ``max_shift``.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy import ndimage as ndi
    >>> rng = np.random.default_rng(0)
    >>> img = ndi.gaussian_filter(rng.random((128, 128)), 2)
    >>> moved = ndi.shift(img, (-3.5, 2.0), order=3)
    >>> pair = register_pair(moved[8:-8, 8:-8], img[8:-8, 8:-8])
    >>> [round(float(v), 1) for v in pair.shift]
    [3.5, -2.0]
    """
    scale = int(scale)
    if scale < 1:
        raise InputError(f"scale must be a positive integer, got {scale}")
    if warp not in ("translation", "affine"):
        raise InputError(f"warp must be 'translation' or 'affine', got {warp!r}")
    mov_raw = _as_plane(moving, "moving image")
    fix_raw = _as_plane(fixed, "fixed image")
    mov = mov_raw.astype(np.float64)
    fix = _block_mean(fix_raw, scale)  # on moving's grid
    if min(fix.shape) < 16:
        raise InputError(f"fixed image is too small for scale {scale}")
    for a, name in ((mov, "moving image"), (fix, "fixed image")):
        if a.std() == 0:
            raise InputError(f"{name} is constant; there is nothing to register")

    # 1. Integer shift, on block means when large (the fine step below recovers the rest).
    k = max(1, int(np.ceil(max(*mov.shape, *fix.shape) / _COARSE_MAX)))
    (cy, cx), _ = _integer_shift(_block_mean(mov, k), _block_mean(fix, k), min_overlap)
    shift = np.array([cy * k, cx * k], dtype=np.float64)

    # 2. Subpixel: cross-correlate the overlaps (same shape now), resample the reference by
    # the estimate and measure again. Content entering at the crop edges biases a single
    # estimate by ~0.1 px; the residual of an almost aligned pair is nearly unbiased.
    for _ in range(4):
        n = np.round(shift).astype(int)
        ov = _overlap(mov.shape, fix.shape, tuple(n))
        if ov is None:
            raise InputError("the images do not overlap after alignment; are they the same field of view?")
        my, mx, fy, fx = ov
        delta = _phase_shift(_resample(fix, (fy, fx), shift - n), mov[my, mx], upsample=100)
        shift = shift + delta
        if np.abs(delta).max() < 0.01:
            break

    residual, coef = 0.0, None
    if refine_tiles is not None and refine_tiles < 1:
        raise InputError(f"refine_tiles must be a positive number of tiles per side, got {refine_tiles}")
    if refine_tiles or warp == "affine":
        base = np.round(shift).astype(int)
        my, mx, fy, fx = _overlap(mov.shape, fix.shape, tuple(base))
        side = min(my.stop - my.start, mx.stop - mx.start)
        # tiles of 80 px and more, at least 32
        grid = int(refine_tiles) if refine_tiles else min(int(np.clip(side // 80, 3, 8)), side // 32)
        tiles, centres = _tile_shifts(mov[my, mx], fix[fy, fx], grid, min_correlation)
        if warp == "affine" and len(tiles) >= 6:
            coef = _refine_affine(mov, fix, (my, mx), shift, grid, min_correlation)
        if coef is not None:
            # what the affine field leaves: tiles measured on the warped reference
            local, _ = _tile_shifts(mov[my, mx], _warp_plane(fix, (my, mx), coef), grid, min_correlation)
            residual = float(np.max(np.hypot(*local.T))) if len(local) else 0.0
        elif len(tiles):
            # The whole-overlap estimate stays the shift (more pixels, less noise than any
            # tile); the tiles tell how far the pair is from a pure translation.
            residual = float(np.max(np.hypot(*(tiles - (shift - base)).T)))

    if max_shift is not None and np.abs(shift).max() > max_shift:
        raise InputError(
            f"the images are shifted by ({shift[0]:.1f}, {shift[1]:.1f}) px, more than max_shift={max_shift:g}"
        )

    # 3. Check the overlap and the match at the final shift.
    n = np.round(shift).astype(int)
    ov = _overlap(mov.shape, fix.shape, tuple(n))
    area = 0 if ov is None else (ov[0].stop - ov[0].start) * (ov[1].stop - ov[1].start)
    if area < min_overlap * min(mov.size, fix.size):
        raise InputError(
            f"the images overlap by only {area / min(mov.size, fix.size):.0%} of the smaller one "
            f"(need {min_overlap:.0%}); are they the same field of view?"
        )
    my, mx, fy, fx = ov
    corr = _pearson(_bandpass(mov)[my, mx], _bandpass(fix)[fy, fx])
    if corr < min_correlation:
        raise InputError(
            f"the images do not match (correlation {corr:.2f} after alignment, need {min_correlation:g}); "
            "are they the same field of view?"
        )

    # 4. Crop moving to whole pixels; resample fixed by the fractional shift (in its own pixels)
    # or along the affine field.
    if coef is not None:
        my, mx, fixed_out, correction = _affine_resample(fix_raw, (my, mx), coef, scale, shift)
    else:
        frac = (shift - n) * scale
        my, mx = _shrink(my, mx, fy, fx, n, fix.shape, frac)
        hr = (slice((my.start + n[0]) * scale, (my.stop + n[0]) * scale),
              slice((mx.start + n[1]) * scale, (mx.stop + n[1]) * scale))
        fixed_out, correction = _resample(fix_raw, hr, frac), 0.0
    return RegisteredPair(
        moving=mov_raw[my, mx].copy(),
        fixed=fixed_out,
        shift=(round(float(shift[0]), 3), round(float(shift[1]), 3)),
        residual_shift=residual,
        correlation=corr,
        scale=scale,
        warp="translation" if coef is None else "affine",
        max_correction=correction,
        origin=(my.start, mx.start),
    )


def _affine_resample(
    fix_raw: np.ndarray, crop: tuple[slice, slice], coef: np.ndarray, scale: int, shift: np.ndarray
) -> tuple[slice, slice, np.ndarray, float]:
    """``fixed`` resampled along the affine field ``coef`` (moving pixels) over the moving
    crop, less border rows / columns whose samples would fall outside ``fixed``; the crop kept
    and the field's largest departure from ``shift``."""
    my, mx = crop

    def coords(rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        # output pixel P of fixed's grid <-> moving coordinate p = (P + 0.5) / scale - 0.5
        P = np.arange(rows.start * scale, rows.stop * scale, dtype=np.float64)
        Q = np.arange(cols.start * scale, cols.stop * scale, dtype=np.float64)
        p, q = np.meshgrid((P + 0.5) / scale - 0.5, (Q + 0.5) / scale - 0.5, indexing="ij")
        dy = coef[0, 0] + coef[0, 1] * p + coef[0, 2] * q
        dx = coef[1, 0] + coef[1, 1] * p + coef[1, 2] * q
        return P[:, None] + scale * dy, Q[None, :] + scale * dx

    rows, cols = [my.start, my.stop], [mx.start, mx.stop]
    for _ in range(8):  # trim whole moving rows / columns until every sample lies inside
        y, x = coords(slice(*rows), slice(*cols))
        bad = (y < 0) | (y > fix_raw.shape[0] - 1) | (x < 0) | (x > fix_raw.shape[1] - 1)
        if not bad.any():
            break
        edges = [bad[:scale].any(), bad[-scale:].any(), bad[:, :scale].any(), bad[:, -scale:].any()]
        rows[0] += edges[0]
        rows[1] -= edges[1]
        cols[0] += edges[2]
        cols[1] -= edges[3]
        if rows[1] - rows[0] < 16 or cols[1] - cols[0] < 16:
            raise InputError("the images do not overlap after alignment; are they the same field of view?")
    my, mx = slice(*rows), slice(*cols)
    y, x = coords(my, mx)
    fixed_out = ndi.map_coordinates(fix_raw.astype(np.float64), [y, x], order=3, mode="nearest")
    corners = np.array([[my.start, mx.start], [my.start, mx.stop - 1], [my.stop - 1, mx.start],
                        [my.stop - 1, mx.stop - 1]], dtype=np.float64)
    field = np.c_[np.ones(4), corners] @ coef.T
    return my, mx, fixed_out, round(float(np.max(np.hypot(*(field - shift).T))), 3)


def _shrink(my: slice, mx: slice, fy: slice, fx: slice, n, fshape, frac) -> tuple[slice, slice]:
    """Drop moving rows/cols whose resampled reference would need pixels outside ``fixed``."""
    out = []
    for s, f, size, fr in ((my, fy, fshape[0], frac[0]), (mx, fx, fshape[1], frac[1])):
        lo, hi = s.start, s.stop
        if fr < 0 and f.start == 0:
            lo += 1
        if fr > 0 and f.stop == size:
            hi -= 1
        out.append(slice(lo, hi))
    return out[0], out[1]


def _resample(image: np.ndarray, region: tuple[slice, slice], frac: np.ndarray) -> np.ndarray:
    """``image`` sampled at ``region`` + ``frac`` (cubic spline), float64."""
    if not np.any(np.abs(frac) > 1e-6):
        return image[region].astype(np.float64)
    pad = 4
    ys, xs = region
    y0, x0 = max(ys.start - pad, 0), max(xs.start - pad, 0)
    y1, x1 = min(ys.stop + pad, image.shape[0]), min(xs.stop + pad, image.shape[1])
    crop = image[y0:y1, x0:x1].astype(np.float64)
    moved = ndi.shift(crop, -frac, order=3, mode="nearest")  # moved(p) = crop(p + frac)
    return moved[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
