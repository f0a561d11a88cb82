"""Registered degraded/clean pairs (recorded, or made by downsampling clean images)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ...core.networks.blur import area_blur
from ...errors import InputError
from ...inference.normalise import fit_normalisation, make_condition, sample_values, to_model
from ...models.cards import Normalisation
from .base import Item, TrainingData, augment, band_crops, blur, fit_rule, spread, stack_planes, fitted_band

__all__ = ["PairData", "pair_data", "noise_model", "sr_data", "downsample_area", "downsample_gaussian",
           "GAUSSIAN_SIGMAS", "DECIMATE_SIGMAS", "BLUR_SIGMAS", "DOWNSAMPLING"]

#: Ways :func:`sr_data` halves a clean image into a training pair.
DOWNSAMPLING = ("area", "gaussian", "decimate")

#: Blur widths (high-resolution pixels) of the point-sampled pairs: "gaussian" samples the
#: blurred image at the block centres (a scan with a probe of that width), "decimate" at the
#: blocks' first pixels (``image[::s, ::s]`` after the blur; 0: no blur, aliased).
GAUSSIAN_SIGMAS = (0.5, 1.0)
DECIMATE_SIGMAS = (0.0, 0.5, 1.0)
#: Probe widths of the "gaussian" pairs of a blur-conditioned model, which learns every width
#: it may be told (no blur: a sharp point sample, up to a probe wider than a new pixel).
BLUR_SIGMAS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6)


def downsample_area(image: np.ndarray, scale: int) -> np.ndarray:
    """Area (block-mean) downsampling of the last two axes by an integer factor.

    Edges that are not a multiple of ``scale`` are cropped first.

    Examples
    --------
    >>> downsample_area(np.arange(16.0).reshape(4, 4), 2)
    array([[ 2.5,  4.5],
           [10.5, 12.5]])
    """
    a = np.asarray(image, dtype=np.float64)
    h, w = (a.shape[-2] // scale) * scale, (a.shape[-1] // scale) * scale
    a = a[..., :h, :w]
    return a.reshape(*a.shape[:-2], h // scale, scale, w // scale, scale).mean(axis=(-3, -1))


class PairData(TrainingData):
    """Registered 2D pairs already in model range, on the same pixel grid.

    Parameters
    ----------
    conds, targets : list of numpy.ndarray
        ``(C, H, W)`` conditions and ``(T, H, W)`` targets, model range, same H and W per pair.
    patch : int
        Crop edge (a multiple of ``multiple``).
    val_fraction : float
        Fraction of every image's height kept at the bottom for validation.
    multiple : int
        The network's size multiple.
    input_blur : float
        Largest sigma (pixels) of the random input-blur augmentation; 0 disables it.
    resample_noise : float
        Denoising pairs: the fraction of crops whose noise is replaced by the pair's own noise
        from another place (see :func:`noise_model`). A single recorded pair holds one noise
        realisation per pixel, which a short fine-tune learns by heart; drawing it afresh
        keeps the clean content and the noise statistics of the pair, correlations included.
    noise_gain : (float, float)
        Denoising pairs: the range of factors on the pair's noise (input minus target),
        drawn per crop from a log-spaced grid. Noise variance goes with 1 / dwell time, so a
        factor g mimics a recording at 1 / g² of the pair's dwell with the same detector
        (same spatial correlations), and a model learns more than one noise level from one
        pair. Each factor gets the normalisation fitted on the whole input at that factor,
        as inference would fit it on such an input. ``(1, 1)`` keeps the pair as recorded.
    rule : Normalisation, optional
        The model's normalisation, refitted for each noise gain (default: percentiles).
    names : list of str
        Names for error messages and the model card.
    scale : int
        Super-resolution: how many times the conditions were upsampled (the low-resolution
        grid ``input_noise`` is drawn on).
    input_noise : float
        Super-resolution: half of the crops get white noise on the low-resolution grid, of a
        std drawn uniformly up to this (model range, where the image spans about 2), upsampled
        as the condition was. Real scans are noisy; a network that saw only clean inputs
        sharpens their noise. The target stays clean.
    """

    def __init__(
        self,
        conds: Sequence[np.ndarray],
        targets: Sequence[np.ndarray],
        *,
        patch: int,
        val_fraction: float = 0.1,
        multiple: int = 1,
        input_blur: float = 0.0,
        resample_noise: float = 0.0,
        noise_gain: tuple[float, float] = (1.0, 1.0),
        rule: Normalisation | None = None,
        names: Sequence[str] | None = None,
        info: dict[str, Any] | None = None,
        levels: Sequence[float] | None = None,
        scale: int = 1,
        input_noise: float = 0.0,
    ) -> None:
        self.names = list(names or [f"image {i}" for i in range(len(conds))])
        if input_noise and (scale < 2 or patch % scale):
            raise InputError("input_noise is for super-resolution pairs, whose patch is a multiple of the scale")
        self.scale, self.input_noise = int(scale), float(input_noise)
        if levels is not None and len(levels) != len(conds):
            raise InputError(f"{len(levels)} levels for {len(conds)} pairs")
        # per pair: the level a level-conditioned predictor is told (its acquisition blur)
        self.levels = None if levels is None else [float(v) for v in levels]
        self.conds, self.targets, self.bands = [], [], []
        self.patch = (patch, patch)
        self.multiple, self.input_blur = multiple, float(input_blur)
        for c, t, name in zip(conds, targets, self.names):
            if c.shape[-2:] != t.shape[-2:]:
                raise InputError(f"{name}: condition {c.shape[-2:]} and target {t.shape[-2:]} differ in size")
            h, w = c.shape[-2:]
            band = fitted_band(name, h, w, val_fraction=val_fraction, patch=patch, multiple=multiple)
            self.conds.append(np.asarray(c, np.float32))
            self.targets.append(np.asarray(t, np.float32))
            self.bands.append(band)
        self._areas = np.array(
            [(c.shape[-2] - b - patch + 1) * (c.shape[-1] - patch + 1) for c, b in zip(self.conds, self.bands)], float
        )
        self.info = info or {}
        self.resample_noise = float(resample_noise)
        self._noise: list[tuple[np.ndarray, float, float] | None] = []
        if self.resample_noise > 0:
            for c, t, band in zip(self.conds, self.targets, self.bands):
                same_grid = c.shape == t.shape and c.shape[0] == 1
                self._noise.append(noise_model(c[0, : c.shape[1] - band], t[0, : t.shape[1] - band]) if same_grid else None)
        lo, hi = (float(g) for g in noise_gain)
        if not 0 < lo <= hi:
            raise InputError(f"noise_gain must be two factors 0 < low <= high, got {noise_gain}")
        self.noise_gain = (lo, hi)
        # per pair: (gain, scale, offset) that renormalise a crop whose noise is scaled by gain
        self._gains: list[list[tuple[float, float, float]]] = []
        if hi > lo:
            grid = np.geomspace(lo, hi, 9)
            for c, t in zip(self.conds, self.targets):
                if c.shape != t.shape or c.shape[0] != 1:
                    self._gains.append([])
                    continue
                fits = []
                for g in grid:
                    if rule is not None and rule.mode == "range":
                        fits.append((float(g), 1.0, 0.0))  # fixed values: nothing to refit
                        continue
                    # percentiles are affine-equivariant: fitting in model range is fitting raw
                    info = fit_normalisation(sample_values(t[0] + g * (c[0] - t[0])), rule or Normalisation())
                    a = 2.0 / (info.hi - info.lo)
                    fits.append((float(g), a, -info.lo * a - 1.0))
                self._gains.append(fits)

    @property
    def train_area(self) -> int:
        return int(sum((c.shape[-2] - b) * c.shape[-1] for c, b in zip(self.conds, self.bands)))

    def _pick(self, rng: np.random.Generator) -> int:
        return int(rng.choice(len(self.conds), p=self._areas / self._areas.sum())) if len(self.conds) > 1 else 0

    def sample_one(self, rng: np.random.Generator) -> Item:
        i = self._pick(rng)
        c, t = self.conds[i], self.targets[i]
        p = self.patch[0]
        y = int(rng.integers(c.shape[-2] - self.bands[i] - p + 1))
        x = int(rng.integers(c.shape[-1] - p + 1))
        cc, tt = c[:, y : y + p, x : x + p], t[:, y : y + p, x : x + p]
        if self._noise and self._noise[i] is not None and rng.random() < self.resample_noise:
            unit, a, b = self._noise[i]
            # Unflipped, unrotated: scan-direction correlations keep their orientation.
            y2 = int(rng.integers(unit.shape[0] - p + 1))
            x2 = int(rng.integers(unit.shape[1] - p + 1))
            cc = (tt + np.sqrt(np.maximum(a * tt + b, 1e-8)) * unit[None, y2 : y2 + p, x2 : x2 + p]).astype(np.float32)
        if self._gains and self._gains[i]:
            g, a, b = self._gains[i][int(rng.integers(len(self._gains[i])))]
            cc, tt = (a * (tt + g * (cc - tt)) + b).astype(np.float32), (a * tt + b).astype(np.float32)
        if self.input_noise > 0 and rng.random() < 0.5:
            cc = cc + self._upsampled_noise(rng, cc.shape[0], y, x) * rng.uniform(0, self.input_noise)
        cc, tt = augment([cc, tt], rng, rotate=True)
        return blur(cc, self.input_blur, rng), tt, (-1 if self.levels is None else self.levels[i])

    def _upsampled_noise(self, rng: np.random.Generator, channels: int, y: int, x: int) -> np.ndarray:
        """Unit white noise on the low-resolution grid, upsampled (bicubic) as the conditions
        were, for the crop at (y, x): one low-resolution pixel of margin around it, and the
        crop's phase in the grid kept."""
        s, p = self.scale, self.patch[0]
        n = torch.from_numpy(rng.standard_normal((1, channels, p // s + 3, p // s + 3)).astype(np.float32))
        up = torch.nn.functional.interpolate(n, scale_factor=s, mode="bicubic", align_corners=False)[0].numpy()
        oy, ox = s + y % s, s + x % s
        return up[:, oy : oy + p, ox : ox + p]

    def without_input_noise(self) -> "PairData":
        if self.input_noise == 0:
            return self
        clean = copy.copy(self)
        clean.input_noise = 0.0
        return clean

    def validation_items(self, limit: int) -> list[Item]:
        crops = []
        for i, (c, t, band) in enumerate(zip(self.conds, self.targets, self.bands)):
            found = band_crops(c, t, band, self.patch[0], self.multiple)
            crops.append(found if self.levels is None else [(a, b, self.levels[i]) for a, b, _ in found])
        take = spread(limit, [len(v) for v in crops])
        return [it for v, k in zip(crops, take) for it in v[:k]]

    def describe(self) -> dict[str, Any]:
        extra = {"noise_gain": list(self.noise_gain)} if self.noise_gain[1] > self.noise_gain[0] else {}
        if self.input_noise > 0:
            extra["input_noise"] = self.input_noise
        return {**self.info, "images": self.names, **extra}


def noise_model(noisy: np.ndarray, clean: np.ndarray, *, bins: int = 16) -> tuple[np.ndarray, float, float]:
    """The noise of a registered pair as unit-variance noise and a signal-dependent variance.

    The residual ``noisy - clean`` is modelled as ``sqrt(a * clean + b) * unit`` (Poisson-Gaussian:
    the variance grows linearly with the signal). ``a`` and ``b`` are a least-squares line through
    the residual's mean square in ``bins`` quantile bins of the clean signal; ``unit`` keeps the
    residual's spatial correlations.

    Returns
    -------
    unit : numpy.ndarray
        ``noisy - clean`` divided by its modelled standard deviation, float32.
    a, b : float
        The variance line (``a >= 0``; ``b`` at least 1 % of the mean variance).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> clean = rng.uniform(0.2, 1.0, (256, 256))
    >>> noisy = clean + np.sqrt(0.04 * clean) * rng.standard_normal(clean.shape)
    >>> unit, a, b = noise_model(noisy, clean)
    >>> round(a, 2), round(float(unit.std()), 1)
    (0.04, 1.0)
    """
    c = np.asarray(clean, np.float64)
    r2 = (np.asarray(noisy, np.float64) - c) ** 2
    edges = np.quantile(c, np.linspace(0, 1, bins + 1))
    idx = np.clip(np.searchsorted(edges, c.ravel(), side="right") - 1, 0, bins - 1)
    counts = np.bincount(idx, minlength=bins)
    keep = counts > 0
    x = np.bincount(idx, c.ravel(), bins)[keep] / counts[keep]
    y = np.bincount(idx, r2.ravel(), bins)[keep] / counts[keep]
    a, b = np.polyfit(x, y, 1, w=np.sqrt(counts[keep])) if keep.sum() > 1 else (0.0, float(y.mean()))
    a = max(float(a), 0.0)
    if a == 0.0:
        b = float(r2.mean())
    b = max(float(b), 0.01 * float(r2.mean()) + 1e-12 - a * float(c.min()))
    var = np.maximum(a * c + b, 1e-12)
    return ((np.asarray(noisy, np.float64) - c) / np.sqrt(var)).astype(np.float32), a, b


def downsample_gaussian(image: np.ndarray, scale: int, sigma: float, *, centred: bool = True) -> np.ndarray:
    """Gaussian blur (``sigma`` high-resolution pixels; 0: none), then one sample per
    ``scale`` x ``scale`` block of the last two axes.

    A point-sampled scan: unlike :func:`downsample_area`, nothing averages away the detail
    above the new Nyquist limit. ``centred`` samples at the block centres, where a scan of
    the same field with ``scale``-times larger pixels puts its beam (cubic-spline
    interpolation between pixels); else at each block's first pixel, as
    ``image[..., ::scale, ::scale]`` does (half a pixel of the new grid off the area mean's).
    Edges that are not a multiple of ``scale`` are cropped.

    Examples
    --------
    >>> downsample_gaussian(np.arange(16.0).reshape(4, 4), 2, 0.0, centred=False)
    array([[ 0.,  2.],
           [ 8., 10.]])
    >>> ramp = np.add.outer(np.arange(16.0), np.zeros(16))  # row y has the value y
    >>> downsample_gaussian(ramp, 2, 0.0)[2:6, 0].round(3)  # block centres, away from the edges
    array([ 4.5,  6.5,  8.5, 10.5])
    """
    from scipy.ndimage import gaussian_filter, shift

    a = np.asarray(image, dtype=np.float64)
    h, w = (a.shape[-2] // scale) * scale, (a.shape[-1] // scale) * scale
    a = a[..., :h, :w]
    lead = [0] * (a.ndim - 2)
    if sigma > 0:
        a = gaussian_filter(a, sigma=lead + [sigma, sigma], mode="reflect")
    if centred:
        a = shift(a, lead + [-(scale - 1) / 2] * 2, order=3, mode="reflect")
    return np.ascontiguousarray(a[..., ::scale, ::scale])


def pair_data(
    inputs: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    *,
    rule: Normalisation,
    patch: int,
    scale: int = 1,
    val_fraction: float = 0.1,
    multiple: int = 1,
    input_blur: float = 0.0,
    resample_noise: float = 0.0,
    noise_gain: tuple[float, float] = (1.0, 1.0),
    names: Sequence[str] | None = None,
    levels: Sequence[float] | None = None,
    input_noise: float = 0.0,
) -> PairData:
    """Training data from registered (degraded, clean) pairs.

    Each input (2D, or a stack of 2D slices) is normalised with ``rule`` fitted on the whole
    input; its target gets the same mapping. With ``scale > 1`` the inputs are low-resolution:
    the condition is the bicubic upsampling of the normalised input, as at inference, and the
    target must be ``scale`` times larger.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> clean = rng.random((96, 96))
    >>> data = pair_data([clean + 0.1 * rng.random((96, 96))], [clean], rule=Normalisation(), patch=32)
    >>> data.sample(rng, 2).cond.shape
    torch.Size([2, 1, 32, 32])
    """
    names = list(names or [f"pair {i}" for i in range(len(inputs))])
    conds, tgts, all_names, all_levels = [], [], [], []
    for n, (inp, tgt, name) in enumerate(zip(inputs, targets, names)):
        info = fit_rule(inp, rule)
        planes_in, planes_t = stack_planes(inp), stack_planes(tgt)
        if len(planes_in) != len(planes_t):
            raise InputError(f"{name}: input has {len(planes_in)} slices, target {len(planes_t)}")
        for z, (pi, pt) in enumerate(zip(planes_in, planes_t)):
            h, w = pi.shape
            if pt.shape != (h * scale, w * scale):
                raise InputError(
                    f"{name}: target is {pt.shape[0]}x{pt.shape[1]} px, expected {h * scale}x{w * scale} "
                    f"({'scale ' + str(scale) + ' times ' if scale > 1 else ''}the input); register the pair first"
                )
            cond = make_condition(np.asarray(pi, np.float64), info, scale, torch.device("cpu"))[0].numpy()
            conds.append(cond)
            tgts.append(to_model(pt, info)[None])
            all_names.append(name if len(planes_in) == 1 else f"{name}[{z}]")
            all_levels.append(-1.0 if levels is None else float(levels[n]))
    return PairData(
        conds, tgts, patch=patch, val_fraction=val_fraction, multiple=multiple, input_blur=input_blur,
        levels=None if levels is None else all_levels,
        resample_noise=resample_noise if scale == 1 else 0.0, noise_gain=noise_gain if scale == 1 else (1.0, 1.0),
        rule=rule, names=all_names, info={"kind": "pairs", "scale": scale}, scale=scale, input_noise=input_noise,
    )


def sr_data(
    clean: Sequence[np.ndarray],
    *,
    scale: int,
    rule: Normalisation,
    patch: int,
    val_fraction: float = 0.1,
    multiple: int = 1,
    input_blur: float = 0.0,
    names: Sequence[str] | None = None,
    downsampling: Sequence[str] = ("area",),
    levels: bool = False,
    input_noise: float = 0.0,
) -> PairData:
    """Super-resolution pairs made from clean images by downsampling.

    The low-resolution image is the input (normalisation fitted on it); the clean image,
    cropped to a multiple of ``scale``, is the target. ``downsampling`` names the ways, one
    pair each: ``"area"`` (block mean, :func:`downsample_area`: a detector that integrates
    over the pixel), ``"gaussian"`` (:func:`downsample_gaussian` sampled at the block centres
    at each of :data:`GAUSSIAN_SIGMAS`: a point-sampled scan) and ``"decimate"`` (sampled at
    the blocks' first pixels, at each of :data:`DECIMATE_SIGMAS`: ``image[::s, ::s]`` among
    them, half a new pixel off the others' grid).

    ``levels=True`` (a blur-conditioned model, :mod:`~...core.networks.blur`): each pair
    carries its acquisition blur (an area mean counts as :func:`area_blur`) and the
    ``"gaussian"`` pairs cover :data:`BLUR_SIGMAS`. ``input_noise``: see :class:`PairData`.

    Examples
    --------
    >>> img = np.random.default_rng(0).random((128, 128))
    >>> data = sr_data([img], scale=2, rule=Normalisation(), patch=32)
    >>> b = data.sample(np.random.default_rng(1), 1)
    >>> b.cond.shape == b.target.shape
    True
    """
    if not downsampling or set(downsampling) - set(DOWNSAMPLING):
        raise InputError(f"downsampling must name some of {', '.join(DOWNSAMPLING)}, got {list(downsampling)}")
    names = list(names or [f"image {i}" for i in range(len(clean))])
    lows, highs, labels, blurs = [], [], [], []
    for img, name in zip(clean, names):
        h, w = (img.shape[-2] // scale) * scale, (img.shape[-1] // scale) * scale
        high = np.asarray(img[..., :h, :w], dtype=np.float64)
        ways = [("area", None)] if "area" in downsampling else []
        ways += [("gaussian", s) for s in (BLUR_SIGMAS if levels else GAUSSIAN_SIGMAS)] if "gaussian" in downsampling else []
        ways += [("decimate", s) for s in DECIMATE_SIGMAS] if "decimate" in downsampling else []
        for way, sigma in ways:
            lows.append(downsample_area(high, scale) if sigma is None
                        else downsample_gaussian(high, scale, sigma, centred=way == "gaussian"))
            highs.append(high)
            blurs.append(area_blur(scale) if sigma is None else sigma)
            labels.append(name if len(ways) == 1 else f"{name} ({way}{'' if sigma is None else f' {sigma:g}'})")
    data = pair_data(
        lows, highs, rule=rule, patch=patch, scale=scale, val_fraction=val_fraction, multiple=multiple,
        input_blur=input_blur, names=labels, levels=blurs if levels else None, input_noise=input_noise,
    )
    kinds = {"area": "area-downsampled", "gaussian": "gaussian-sampled", "decimate": "decimated"}
    data.info = {"kind": "+".join(kinds[k] for k in dict.fromkeys(downsampling)), "scale": scale}
    return data
