"""Denoising pairs simulated from clean images: Poisson-Gaussian noise at a range of doses."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ...errors import InputError
from ...inference.normalise import to_model
from ...models.cards import Normalisation
from .base import Item, TrainingData, augment, band_crops, blur, fit_rule, spread, stack_planes, fitted_band

__all__ = ["SimulatedNoiseData", "simulate_noise"]


def simulate_noise(
    clean: np.ndarray,
    dose: float,
    *,
    read_noise: float = 1.0,
    rng: np.random.Generator,
    lo: float | None = None,
    hi: float | None = None,
    correlation: float = 0.0,
) -> np.ndarray:
    """Poisson-Gaussian (shot + read) noise on a clean image, as a low-dose recording.

    The noise model: intensities are mapped to [0, 1] (``lo`` -> 0, ``hi`` -> 1; default the
    image's own minimum and maximum), the expected number of detected electrons per pixel is
    ``photons = dose * intensity``, the recorded count is ``Poisson(photons)`` plus Gaussian
    read noise of standard deviation ``read_noise`` (in counts), and the count is rescaled by
    ``1 / dose`` back to the input's units. The noise standard deviation is therefore about
    ``sqrt(intensity / dose)`` of the intensity range: smaller doses are noisier. Integer
    inputs are rounded and clipped to their dtype's range, as a detector would record them.

    Parameters
    ----------
    clean : numpy.ndarray
        The clean image (any real dtype).
    dose : float
        Expected count at the brightest intensity (``hi``).
    read_noise : float, optional
        Standard deviation of the additive Gaussian noise, in counts.
    rng : numpy.random.Generator
        Source of the noise (keyword-only, so results are reproducible).
    lo, hi : float, optional
        Intensities that map to 0 and 1.
    correlation : float, optional
        Weight ``a`` of the separable ``[a, 1, a]`` kernel that blurs the noise (not the
        image), normalised so the noise variance is kept: neighbouring pixels' noise then
        correlates by ``2a / (1 + 2a^2)``, as in scanning detectors whose signal decays
        slower than the dwell time (0.4-0.5 between neighbours in a 4 us SEM recording).

    Returns
    -------
    numpy.ndarray
        The noisy image, float64 (values of the integer dtype when the input is integer).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> clean = np.full((64, 64), 128, np.uint8)
    >>> noisy = simulate_noise(clean, 20.0, rng=rng, lo=0, hi=255)
    >>> bool(abs(noisy.mean() - 128) < 3 and noisy.std() > 10)
    True
    """
    if not dose > 0:
        raise InputError(f"dose must be positive, got {dose}")
    c = np.asarray(clean, dtype=np.float64)
    lo = float(c.min()) if lo is None else float(lo)
    hi = float(c.max()) if hi is None else float(hi)
    span = hi - lo if hi > lo else 1.0
    photons = dose * np.clip((c - lo) / span, 0.0, None)
    counts = rng.poisson(photons).astype(np.float64)
    if read_noise > 0:
        counts += rng.normal(0.0, read_noise, size=c.shape)
    if correlation > 0:
        from scipy.ndimage import correlate1d

        kernel = np.array([correlation, 1.0, correlation]) / np.sqrt(1 + 2 * correlation**2)
        noise = counts - photons
        for axis in (-2, -1):
            noise = correlate1d(noise, kernel, axis=axis, mode="reflect")
        counts = photons + noise
    noisy = lo + counts / dose * span
    dtype = np.asarray(clean).dtype
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        noisy = np.clip(np.rint(noisy), info.min, info.max)
    return noisy


class SimulatedNoiseData(TrainingData):
    """Denoising pairs simulated from clean images with Poisson-Gaussian noise.

    Every crop gets a dose drawn from ``doses`` and fresh noise (:func:`simulate_noise`), so
    the network never sees the same noise twice. For each image and dose the normalisation
    is fitted once on a whole simulated noisy image, because at inference it is fitted on the
    noisy input (noise widens the percentiles); crop and target share it.

    ``invert`` is the share of crops drawn from contrast-inverted copies of the images
    (``lo + hi - image``), their noise simulated after inverting: raw backscatter SEM shows
    membranes bright, and its shot noise grows with the brightness as in any recording. A
    model that only saw dark membranes fell below a Gaussian filter on such images.

    Examples
    --------
    >>> img = (np.random.default_rng(0).random((96, 96)) * 255).astype(np.uint8)
    >>> data = SimulatedNoiseData([img], doses=[10, 100], rule=Normalisation(), patch=32)
    >>> data.sample(np.random.default_rng(1), 3).target.shape
    torch.Size([3, 1, 32, 32])
    """

    def __init__(
        self,
        clean: Sequence[np.ndarray],
        *,
        doses: Sequence[float],
        rule: Normalisation,
        patch: int,
        read_noise: float = 1.0,
        correlation: float = 0.0,
        invert: float = 0.0,
        zoom: float = 1.0,
        val_fraction: float = 0.1,
        multiple: int = 1,
        input_blur: float = 0.0,
        names: Sequence[str] | None = None,
        seed: int = 0,
    ) -> None:
        if not doses or any(not d > 0 for d in doses):
            raise InputError(f"doses must be positive numbers, got {list(doses)}")
        if not 0 <= invert < 1:
            raise InputError(f"invert is a share of crops in [0, 1), got {invert}")
        if not 1 <= zoom <= 4:
            raise InputError(f"zoom is a largest rescaling factor in [1, 4], got {zoom}")
        self.invert, self.zoom = float(invert), float(zoom)
        self.doses = [float(d) for d in doses]
        self.read_noise, self.input_blur, self.multiple = float(read_noise), float(input_blur), multiple
        self.correlation = float(correlation)
        self.patch = (patch, patch)
        base = list(names or [f"image {i}" for i in range(len(clean))])
        self.images, self.names, self.ranges, self.norms, self.bands = [], [], [], [], []
        rng = np.random.default_rng([seed, 7919])  # fixed: normalisation must not depend on the run
        for img, name in zip(clean, base):
            planes = stack_planes(np.asarray(img))
            for z, plane in enumerate(planes):
                h, w = plane.shape
                label = name if len(planes) == 1 else f"{name}[{z}]"
                band = fitted_band(label, h, w, val_fraction=val_fraction, patch=patch, multiple=multiple)
                lo, hi = float(plane.min()), float(plane.max())
                self.images.append(plane)
                self.names.append(label)
                self.ranges.append((lo, hi))
                self.bands.append(band)
                sim = [simulate_noise(plane, d, read_noise=self.read_noise, rng=rng, lo=lo, hi=hi) for d in self.doses]
                self.norms.append([fit_rule(n, rule) for n in sim])
        areas = [(im.shape[0] - b - patch + 1) * (im.shape[1] - patch + 1) for im, b in zip(self.images, self.bands)]
        self._n_measured = len(self.images)
        if self.invert:  # after the originals, whose normalisation stays as without inverting
            for i in range(self._n_measured):
                lo, hi = self.ranges[i]
                twin = (lo + hi - self.images[i].astype(np.float64)).astype(self.images[i].dtype)
                sim = [simulate_noise(twin, d, read_noise=self.read_noise, rng=rng, lo=lo, hi=hi) for d in self.doses]
                self.images.append(twin)
                self.names.append(f"{self.names[i]} (inverted)")
                self.ranges.append((lo, hi))
                self.bands.append(self.bands[i])
                self.norms.append([fit_rule(n, rule) for n in sim])
            total = float(sum(areas))
            areas = [a * (1 - self.invert) / total for a in areas] + [a * self.invert / total for a in areas]
        self._areas = np.array(areas, float)
        self.seed = seed

    @property
    def train_area(self) -> int:
        pairs = zip(self.images[: self._n_measured], self.bands)
        return int(sum((im.shape[0] - b) * im.shape[1] for im, b in pairs))

    def _pair(self, i: int, k: int, crop: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.ranges[i]
        # Half the crops get white noise, half noise correlated up to ``correlation``.
        a = float(rng.uniform(0, self.correlation)) if self.correlation and rng.random() < 0.5 else 0.0
        noisy = simulate_noise(crop, self.doses[k], read_noise=self.read_noise, rng=rng, lo=lo, hi=hi, correlation=a)
        info = self.norms[i][k]
        return to_model(noisy, info)[None], to_model(crop, info)[None]

    def sample_one(self, rng: np.random.Generator) -> Item:
        i = int(rng.choice(len(self.images), p=self._areas / self._areas.sum())) if len(self.images) > 1 else 0
        k = int(rng.integers(len(self.doses)))
        img, p = self.images[i], self.patch[0]
        q = self._region(rng, img.shape[0] - self.bands[i], img.shape[1])
        y = int(rng.integers(img.shape[0] - self.bands[i] - q + 1))
        x = int(rng.integers(img.shape[1] - q + 1))
        crop = img[y : y + q, x : x + q]
        (crop,) = augment([crop if q == p else resized(crop, p, self.ranges[i])], rng, rotate=True)
        cond, target = self._pair(i, k, np.ascontiguousarray(crop), rng)
        return blur(cond, self.input_blur, rng), target, -1

    def _region(self, rng: np.random.Generator, h: int, w: int) -> int:
        """Edge of the region a crop is cut from: the patch, or with ``zoom`` (half of the
        crops) the patch divided by a log-uniform factor, within the image."""
        p = self.patch[0]
        if self.zoom <= 1 or rng.random() < 0.5:
            return p
        factor = float(np.exp(rng.uniform(-np.log(self.zoom), np.log(self.zoom))))
        return int(np.clip(round(p / factor), 4, min(h, w)))

    def validation_items(self, limit: int) -> list[Item]:
        rng = np.random.default_rng([self.seed, 104729])  # the same noise at every validation
        per_image = []
        for i, (img, band) in enumerate(zip(self.images, self.bands)):
            crops = band_crops(img[None], img[None], band, self.patch[0], self.multiple)
            per_image.append([(i, c[0]) for c, _, _ in crops])
        take = spread(limit, [len(v) for v in per_image])
        items, n = [], 0
        for v, k in zip(per_image, take):
            for i, crop in v[:k]:
                cond, target = self._pair(i, n % len(self.doses), crop, rng)
                items.append((cond, target, -1))
                n += 1
        return items

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "simulated Poisson-Gaussian noise",
            "images": self.names,
            "doses": self.doses,
            "read_noise": self.read_noise,
            "correlation": self.correlation,
            **({"invert_contrast": self.invert} if self.invert else {}),
            **({"zoom": self.zoom} if self.zoom > 1 else {}),
        }


def resized(crop: np.ndarray, size: int, limits: tuple[float, float]) -> np.ndarray:
    """A square ``crop`` resized to ``size`` (bicubic, antialiased when it shrinks), within
    ``limits`` and in its own dtype (integers rounded), as a recording at that pixel size.

    Examples
    --------
    >>> crop = np.arange(64, dtype=np.uint8).reshape(8, 8)
    >>> out = resized(crop, 4, (0, 63))
    >>> out.shape, out.dtype, int(out.min()) >= 0
    ((4, 4), dtype('uint8'), True)
    """
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(crop, dtype=np.float32))[None, None]
    out = F.interpolate(t, size=(size, size), mode="bicubic", align_corners=False, antialias=size < crop.shape[0])
    out = np.clip(out[0, 0].numpy().astype(np.float64), *limits)
    return np.rint(out).astype(crop.dtype) if crop.dtype.kind in "ui" else out.astype(crop.dtype)
