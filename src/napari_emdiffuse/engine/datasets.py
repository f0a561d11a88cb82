"""Training pairs for EMDiffuse / vEMDiffuse, as tensors in the model's range.

Every data set here hands out random crops ``(condition, target[, slice index])`` drawn with
a caller-owned :class:`numpy.random.Generator`, so a training run is reproducible from its
seed and resumable from the generator's state. Each keeps a band at the bottom of every
image (volumes: of every slice, i.e. the largest y) for validation; training crops never
touch it.

The preparation matches inference exactly (see :mod:`.restore`): intensities are mapped to
[-1, 1] by the model card's rule fitted on the *degraded* image (the whole image or volume),
the same values are applied to the target; super-resolution conditions are the bicubic
upsampling of the normalised low-resolution image (:func:`.restore.make_condition`).

Kinds of data:

* :func:`pair_data`: registered degraded/clean pairs (real low/high-dose images, or
  low/high-resolution pairs when ``scale > 1``).
* :func:`sr_data`: super-resolution pairs made by area-downsampling clean images.
* :class:`SimulatedNoiseData`: Poisson-Gaussian noise simulated on clean images at a range
  of doses (see :func:`simulate_noise`), fresh noise for every crop.
* :class:`IsotropicData`: vEMDiffuse: from a volume, two planes ``factor`` apart as the
  condition and a plane between them as the target (``-i``: planes of an isotropic volume
  perpendicular to z; ``-a``: planes of an anisotropic volume perpendicular to y, so a
  lateral axis plays the role of z).
* :class:`MixedData`: several of these, each crop drawn from one of them in proportion to
  its training area.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi

from .models.cards import Normalisation
from .errors import InputError
from .normalise import NormInfo, fit_normalisation, to_model

__all__ = [
    "Batch",
    "TrainingData",
    "PairData",
    "SimulatedNoiseData",
    "IsotropicData",
    "MixedData",
    "pair_data",
    "sr_data",
    "check_image",
    "downsample_area",
    "simulate_noise",
    "validation_band",
]


@dataclass
class Batch:
    """A batch of training or validation crops in model range.

    Attributes
    ----------
    cond : torch.Tensor
        ``(B, C, H, W)`` condition (C = 1 for 2D tasks, 2 for isotropic: lower plane first).
    target : torch.Tensor
        ``(B, T, H, W)`` target (T = 1, or factor - 1 planes for isotropic regression).
    slice_index : torch.Tensor or None
        ``(B,)`` index ``j - 1`` of the generated plane at offset ``j`` (isotropic diffusion).
    """

    cond: torch.Tensor
    target: torch.Tensor
    slice_index: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.cond.shape[0]

    def to(self, device: torch.device | str) -> "Batch":
        si = None if self.slice_index is None else self.slice_index.to(device)
        return Batch(self.cond.to(device), self.target.to(device), si)


_Item = tuple[np.ndarray, np.ndarray, int]  # cond (C,H,W), target (T,H,W), slice index or -1


# --------------------------------------------------------------------------- helpers

def check_image(image: Any, name: str, *, ndim: Sequence[int] = (2, 3)) -> np.ndarray:
    """Validate one training image and return it as a numpy array.

    Raises :class:`InputError` (one line) for non-numeric or complex data, the wrong number
    of dimensions, NaN/Inf values and constant images.

    Examples
    --------
    >>> check_image(np.zeros((4, 4)), "input")
    Traceback (most recent call last):
    ...
    napari_emdiffuse.engine.errors.InputError: input is constant (every pixel 0); there is nothing to learn from it
    """
    a = np.asarray(image.compute() if hasattr(image, "compute") else image)
    if a.dtype.kind not in "buif":
        raise InputError(f"{name} has unsupported dtype {a.dtype}; pass a real-valued image")
    while a.ndim > max(ndim) and a.shape[0] == 1:
        a = a[0]
    if a.ndim not in ndim:
        want = " or ".join(f"{d}D" for d in ndim)
        raise InputError(f"{name} has shape {tuple(a.shape)}; pass a {want} image")
    if a.size == 0:
        raise InputError(f"{name} is empty (shape {tuple(a.shape)})")
    if a.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(a)))
        if bad:
            raise InputError(f"{name} contains {bad} NaN/Inf pixels; replace them before training")
    lo, hi = a.min(), a.max()
    if lo == hi:
        raise InputError(f"{name} is constant (every pixel {lo:g}); there is nothing to learn from it")
    return a


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


def simulate_noise(
    clean: np.ndarray,
    dose: float,
    *,
    read_noise: float = 1.0,
    rng: np.random.Generator,
    lo: float | None = None,
    hi: float | None = None,
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
    noisy = lo + counts / dose * span
    dtype = np.asarray(clean).dtype
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        noisy = np.clip(np.rint(noisy), info.min, info.max)
    return noisy


def validation_band(height: int, val_fraction: float, crop: int, multiple: int, *, minimum: int = 0) -> int:
    """Rows at the bottom of an image kept for validation (0 when ``val_fraction`` is 0).

    At least ``val_fraction`` of the height, at least 16 rows (enough for SSIM's window)
    unless the crop is smaller, and ``minimum`` rows, rounded up to the network's size
    multiple.
    """
    if val_fraction <= 0:
        return 0
    band = max(math.ceil(val_fraction * height), min(crop, 16), minimum)
    return int(math.ceil(band / multiple) * multiple)


def _floor(n: int, multiple: int) -> int:
    return (n // multiple) * multiple


def _augment(arrays: list[np.ndarray], rng: np.random.Generator, *, rotate: bool) -> list[np.ndarray]:
    """The same random flip / 90-degree rotation of the last two axes of every array."""
    k = int(rng.integers(4)) if rotate else 0
    flip_y, flip_x = bool(rng.integers(2)), bool(rng.integers(2))
    out = []
    for a in arrays:
        if k:
            a = np.rot90(a, k, axes=(-2, -1))
        if flip_y:
            a = a[..., ::-1, :]
        if flip_x:
            a = a[..., ::-1]
        out.append(a)
    return out


def _blur(cond: np.ndarray, sigma_max: float, rng: np.random.Generator) -> np.ndarray:
    """Input-blur augmentation: half of the crops get a Gaussian blur of random width."""
    if sigma_max <= 0:
        return cond
    apply, sigma = bool(rng.integers(2)), float(rng.uniform(0.0, sigma_max))
    if not apply or sigma < 0.05:
        return cond
    return np.stack([ndi.gaussian_filter(c, sigma, mode="reflect") for c in cond])


def _fit(image: np.ndarray, rule: Normalisation) -> NormInfo:
    from .normalise import sample_values

    return fit_normalisation(sample_values(image), rule)


def _spread(n_total: int, n_avail: Sequence[int]) -> list[int]:
    """Share ``n_total`` picks over sources round robin (at most what each has)."""
    take = [0] * len(n_avail)
    left = n_total
    while left > 0 and any(t < a for t, a in zip(take, n_avail)):
        for i, a in enumerate(n_avail):
            if left and take[i] < a:
                take[i] += 1
                left -= 1
    return take


# --------------------------------------------------------------------------- base class

class TrainingData(ABC):
    """A source of training crops and fixed held-out validation crops.

    Subclasses implement :meth:`sample_one` (one random crop) and :meth:`validation_items`
    (fixed crops from the held-out band). ``patch`` is the crop shape ``(H, W)``.
    """

    patch: tuple[int, int]

    @property
    @abstractmethod
    def train_area(self) -> int:
        """Pixels crops can be drawn from (weights of :class:`MixedData`)."""

    @abstractmethod
    def sample_one(self, rng: np.random.Generator) -> _Item: ...

    @abstractmethod
    def validation_items(self, limit: int) -> list[_Item]: ...

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """What the data are, for the model card."""

    def sample(self, rng: np.random.Generator, batch: int) -> Batch:
        """A batch of ``batch`` random training crops."""
        return _collate([self.sample_one(rng) for _ in range(batch)])

    def validation(self, limit: int = 8) -> Batch | None:
        """Up to ``limit`` fixed validation crops (the same at every call), or None.

        Crops of different images can differ in size (bands follow image heights); they are
        cut to the smallest common shape so that they batch.
        """
        items = self.validation_items(limit)
        if not items:
            return None
        h = min(c.shape[-2] for c, _, _ in items)
        w = min(c.shape[-1] for c, _, _ in items)
        return _collate([(c[..., :h, :w], t[..., :h, :w], s) for c, t, s in items])


def _collate(items: list[_Item]) -> Batch:
    cond = torch.from_numpy(np.stack([np.ascontiguousarray(c) for c, _, _ in items]).astype(np.float32))
    target = torch.from_numpy(np.stack([np.ascontiguousarray(t) for _, t, _ in items]).astype(np.float32))
    si = [s for _, _, s in items]
    slice_index = torch.tensor(si, dtype=torch.long) if min(si) >= 0 else None
    return Batch(cond, target, slice_index)


# --------------------------------------------------------------------------- 2D pairs

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
    names : list of str
        Names for error messages and the model card.
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
        names: Sequence[str] | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        self.names = list(names or [f"image {i}" for i in range(len(conds))])
        self.conds, self.targets, self.bands = [], [], []
        self.patch = (patch, patch)
        self.multiple, self.input_blur = multiple, float(input_blur)
        for c, t, name in zip(conds, targets, self.names):
            if c.shape[-2:] != t.shape[-2:]:
                raise InputError(f"{name}: condition {c.shape[-2:]} and target {t.shape[-2:]} differ in size")
            h, w = c.shape[-2:]
            band = validation_band(h, val_fraction, patch, multiple)
            if h - band < patch or w < patch:
                extra = f" plus a {band}-row validation band" if band else ""
                raise InputError(
                    f"{name} is {h}x{w} px: too small for {patch}-px training patches{extra}; "
                    "use a smaller patch or val_fraction"
                )
            self.conds.append(np.asarray(c, np.float32))
            self.targets.append(np.asarray(t, np.float32))
            self.bands.append(band)
        self._areas = np.array(
            [(c.shape[-2] - b - patch + 1) * (c.shape[-1] - patch + 1) for c, b in zip(self.conds, self.bands)], float
        )
        self.info = info or {}

    @property
    def train_area(self) -> int:
        return int(sum((c.shape[-2] - b) * c.shape[-1] for c, b in zip(self.conds, self.bands)))

    def _pick(self, rng: np.random.Generator) -> int:
        return int(rng.choice(len(self.conds), p=self._areas / self._areas.sum())) if len(self.conds) > 1 else 0

    def sample_one(self, rng: np.random.Generator) -> _Item:
        i = self._pick(rng)
        c, t = self.conds[i], self.targets[i]
        p = self.patch[0]
        y = int(rng.integers(c.shape[-2] - self.bands[i] - p + 1))
        x = int(rng.integers(c.shape[-1] - p + 1))
        cc, tt = _augment([c[:, y : y + p, x : x + p], t[:, y : y + p, x : x + p]], rng, rotate=True)
        return _blur(cc, self.input_blur, rng), tt, -1

    def validation_items(self, limit: int) -> list[_Item]:
        crops = []
        for c, t, band in zip(self.conds, self.targets, self.bands):
            crops.append(_band_crops(c, t, band, self.patch[0], self.multiple))
        take = _spread(limit, [len(v) for v in crops])
        return [it for v, k in zip(crops, take) for it in v[:k]]

    def describe(self) -> dict[str, Any]:
        return {**self.info, "images": self.names}


def _band_crops(c: np.ndarray, t: np.ndarray, band: int, patch: int, multiple: int) -> list[_Item]:
    """Non-overlapping crops of the validation band, spread across the width."""
    if band == 0:
        return []
    h, w = c.shape[-2:]
    ch, cw = min(patch, _floor(band, multiple)), min(patch, _floor(w, multiple))
    if ch < 8 or cw < 8:
        return []
    n = w // cw
    xs = np.linspace(0, w - cw, n).round().astype(int) if n > 1 else [0]
    y = h - band
    return [(c[:, y : y + ch, x : x + cw], t[:, y : y + ch, x : x + cw], -1) for x in xs]


def _stack_planes(image: np.ndarray) -> list[np.ndarray]:
    return [image] if image.ndim == 2 else list(image)


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
    names: Sequence[str] | None = None,
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
    from .restore import make_condition

    names = list(names or [f"pair {i}" for i in range(len(inputs))])
    conds, tgts, all_names = [], [], []
    for inp, tgt, name in zip(inputs, targets, names):
        info = _fit(inp, rule)
        planes_in, planes_t = _stack_planes(inp), _stack_planes(tgt)
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
    return PairData(
        conds, tgts, patch=patch, val_fraction=val_fraction, multiple=multiple, input_blur=input_blur,
        names=all_names, info={"kind": "pairs", "scale": scale},
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
) -> PairData:
    """Super-resolution pairs made from clean images by area (block-mean) downsampling.

    The low-resolution image is the input (normalisation fitted on it); the clean image,
    cropped to a multiple of ``scale``, is the target.

    Examples
    --------
    >>> img = np.random.default_rng(0).random((128, 128))
    >>> data = sr_data([img], scale=2, rule=Normalisation(), patch=32)
    >>> b = data.sample(np.random.default_rng(1), 1)
    >>> b.cond.shape == b.target.shape
    True
    """
    names = list(names or [f"image {i}" for i in range(len(clean))])
    lows, highs = [], []
    for img in clean:
        h, w = (img.shape[-2] // scale) * scale, (img.shape[-1] // scale) * scale
        high = np.asarray(img[..., :h, :w], dtype=np.float64)
        lows.append(downsample_area(high, scale))
        highs.append(high)
    data = pair_data(
        lows, highs, rule=rule, patch=patch, scale=scale, val_fraction=val_fraction, multiple=multiple,
        input_blur=input_blur, names=names,
    )
    data.info = {"kind": "area-downsampled", "scale": scale}
    return data


# --------------------------------------------------------------------------- simulated noise

class SimulatedNoiseData(TrainingData):
    """Denoising pairs simulated from clean images with Poisson-Gaussian noise.

    Every crop gets a dose drawn from ``doses`` and fresh noise (:func:`simulate_noise`), so
    the network never sees the same noise twice. For each image and dose the normalisation
    is fitted once on a whole simulated noisy image, because at inference it is fitted on the
    noisy input (noise widens the percentiles); crop and target share it.

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
        val_fraction: float = 0.1,
        multiple: int = 1,
        input_blur: float = 0.0,
        names: Sequence[str] | None = None,
        seed: int = 0,
    ) -> None:
        if not doses or any(not d > 0 for d in doses):
            raise InputError(f"doses must be positive numbers, got {list(doses)}")
        self.doses = [float(d) for d in doses]
        self.read_noise, self.input_blur, self.multiple = float(read_noise), float(input_blur), multiple
        self.patch = (patch, patch)
        base = list(names or [f"image {i}" for i in range(len(clean))])
        self.images, self.names, self.ranges, self.norms, self.bands = [], [], [], [], []
        rng = np.random.default_rng([seed, 7919])  # fixed: normalisation must not depend on the run
        for img, name in zip(clean, base):
            planes = _stack_planes(np.asarray(img))
            for z, plane in enumerate(planes):
                h, w = plane.shape
                band = validation_band(h, val_fraction, patch, multiple)
                label = name if len(planes) == 1 else f"{name}[{z}]"
                if h - band < patch or w < patch:
                    extra = f" plus a {band}-row validation band" if band else ""
                    raise InputError(
                        f"{label} is {h}x{w} px: too small for {patch}-px training patches{extra}; "
                        "use a smaller patch or val_fraction"
                    )
                lo, hi = float(plane.min()), float(plane.max())
                self.images.append(plane)
                self.names.append(label)
                self.ranges.append((lo, hi))
                self.bands.append(band)
                sim = [simulate_noise(plane, d, read_noise=self.read_noise, rng=rng, lo=lo, hi=hi) for d in self.doses]
                self.norms.append([_fit(n, rule) for n in sim])
        self._areas = np.array(
            [(im.shape[0] - b - patch + 1) * (im.shape[1] - patch + 1) for im, b in zip(self.images, self.bands)], float
        )
        self.seed = seed

    @property
    def train_area(self) -> int:
        return int(sum((im.shape[0] - b) * im.shape[1] for im, b in zip(self.images, self.bands)))

    def _pair(self, i: int, k: int, crop: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.ranges[i]
        noisy = simulate_noise(crop, self.doses[k], read_noise=self.read_noise, rng=rng, lo=lo, hi=hi)
        info = self.norms[i][k]
        return to_model(noisy, info)[None], to_model(crop, info)[None]

    def sample_one(self, rng: np.random.Generator) -> _Item:
        i = int(rng.choice(len(self.images), p=self._areas / self._areas.sum())) if len(self.images) > 1 else 0
        k = int(rng.integers(len(self.doses)))
        img, p = self.images[i], self.patch[0]
        y = int(rng.integers(img.shape[0] - self.bands[i] - p + 1))
        x = int(rng.integers(img.shape[1] - p + 1))
        (crop,) = _augment([img[y : y + p, x : x + p]], rng, rotate=True)
        cond, target = self._pair(i, k, np.ascontiguousarray(crop), rng)
        return _blur(cond, self.input_blur, rng), target, -1

    def validation_items(self, limit: int) -> list[_Item]:
        rng = np.random.default_rng([self.seed, 104729])  # the same noise at every validation
        per_image = []
        for i, (img, band) in enumerate(zip(self.images, self.bands)):
            crops = _band_crops(img[None], img[None], band, self.patch[0], self.multiple)
            per_image.append([(i, c[0]) for c, _, _ in crops])
        take = _spread(limit, [len(v) for v in per_image])
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
        }


# --------------------------------------------------------------------------- volumes

class IsotropicData(TrainingData):
    """vEMDiffuse training crops from volumes.

    For a factor ``f``, the condition is two planes ``f`` apart stacked as two channels
    (the lower index first) and the target is the plane at offset ``j`` (1 <= j < f) between
    them, with ``slice_index = j - 1``; for ``kind="regression"`` the target is all ``f - 1``
    planes between them and there is no slice index.

    ``mode="i"`` (vEMDiffuse-i): planes perpendicular to z of an isotropic volume; crops are
    ``patch`` x ``patch``; the validation band is the bottom rows (largest y) of every plane.
    ``mode="a"`` (vEMDiffuse-a): an anisotropic volume teaches itself from its lateral
    resolution: planes perpendicular to y (each a ``(Z, X)`` image) at ``y0`` and ``y0 + f``
    are the condition. Crops are ``h`` x ``patch`` with ``h`` the largest multiple of the
    network's size multiple that fits both ``patch`` and Z, so volumes with few slices work;
    the validation planes are the largest y.

    Augmentation: flips of both in-plane axes, 90-degree rotations (mode ``i``), and reversal
    of the plane order (the condition planes swap and ``j`` becomes ``f - j``).

    Examples
    --------
    >>> vol = np.random.default_rng(0).random((12, 64, 64))
    >>> data = IsotropicData([vol], factor=3, mode="a", rule=Normalisation(), patch=32, multiple=2)
    >>> b = data.sample(np.random.default_rng(0), 2)
    >>> b.cond.shape, b.target.shape, b.slice_index.shape
    (torch.Size([2, 2, 12, 32]), torch.Size([2, 1, 12, 32]), torch.Size([2]))
    """

    def __init__(
        self,
        volumes: Sequence[np.ndarray],
        *,
        factor: int,
        mode: str = "i",
        rule: Normalisation,
        patch: int,
        val_fraction: float = 0.1,
        multiple: int = 1,
        kind: str = "diffusion",
        names: Sequence[str] | None = None,
    ) -> None:
        if mode not in ("i", "a"):
            raise InputError(f"isotropic mode must be 'i' or 'a', got {mode!r}")
        if factor < 2:
            raise InputError(f"factor must be at least 2, got {factor}")
        self.factor, self.mode, self.kind, self.multiple = int(factor), mode, kind, multiple
        self.names = list(names or [f"volume {i}" for i in range(len(volumes))])
        self.volumes, self.bands = [], []
        heights = []
        f = self.factor
        for vol, name in zip(volumes, self.names):
            vol = np.asarray(vol)
            if vol.ndim != 3:
                raise InputError(f"{name} has shape {tuple(vol.shape)}; isotropic training needs a 3D (ZYX) volume")
            z, y, x = vol.shape
            if mode == "i":
                if z < f + 1:
                    raise InputError(
                        f"{name} has {z} slices: isotropic-i with factor {f} needs at least {f + 1}"
                    )
                band = validation_band(y, val_fraction, patch, multiple)
                if y - band < patch or x < patch:
                    extra = f" plus a {band}-row validation band" if band else ""
                    raise InputError(
                        f"{name} planes are {y}x{x} px: too small for {patch}-px patches{extra}; "
                        "use a smaller patch or val_fraction"
                    )
                heights.append(patch)
            else:
                h = _floor(min(patch, z), multiple)
                if h < max(8, 2 * multiple):
                    raise InputError(
                        f"{name} has {z} slices: isotropic-a needs at least {max(8, 2 * multiple)} "
                        "(its (Z, X) planes are the training images)"
                    )
                band = 0
                if val_fraction > 0:
                    band = max(math.ceil(val_fraction * y), f + 1)
                if y - band < f + 1:
                    raise InputError(
                        f"{name} is {y} px along y: isotropic-a with factor {f} needs at least "
                        f"{f + 1 + band} (training planes plus {band} held out for validation)"
                    )
                if x < patch:
                    raise InputError(f"{name} is {x} px wide: too small for {patch}-px patches")
                heights.append(h)
            self.volumes.append(vol)
            self.bands.append(band)
        self.patch = (min(heights), patch)
        self.norms = [_fit(v, rule) for v in self.volumes]
        self._areas = np.array([self._positions(i) for i in range(len(self.volumes))], float)

    def _positions(self, i: int) -> int:
        z, y, x = self.volumes[i].shape
        f, (ph, pw), band = self.factor, self.patch, self.bands[i]
        if self.mode == "i":
            return (z - f) * (y - band - ph + 1) * (x - pw + 1)
        return (y - band - f) * (z - ph + 1) * (x - pw + 1)

    @property
    def train_area(self) -> int:
        return int(self._areas.sum())

    def _item(self, i: int, a: int, off0: int, off1: int, j: int, shape: tuple[int, int] | None = None) -> _Item:
        """Planes ``a`` and ``a + f`` (and between) of volume ``i``, crop at (off0, off1)."""
        vol, info, f = self.volumes[i], self.norms[i], self.factor
        ph, pw = shape or self.patch
        if self.mode == "i":
            planes = vol[a : a + f + 1, off0 : off0 + ph, off1 : off1 + pw]
        else:
            planes = np.moveaxis(vol[off0 : off0 + ph, a : a + f + 1, off1 : off1 + pw], 1, 0)
        planes = to_model(planes, info)
        cond = planes[[0, f]]
        if self.kind == "regression":
            return cond, planes[1:f], -1
        return cond, planes[j : j + 1], j - 1

    def sample_one(self, rng: np.random.Generator) -> _Item:
        i = int(rng.choice(len(self.volumes), p=self._areas / self._areas.sum())) if len(self.volumes) > 1 else 0
        z, y, x = self.volumes[i].shape
        f, (ph, pw), band = self.factor, self.patch, self.bands[i]
        if self.mode == "i":
            a = int(rng.integers(z - f))
            off0 = int(rng.integers(y - band - ph + 1))
        else:
            a = int(rng.integers(y - band - f))
            off0 = int(rng.integers(z - ph + 1))
        off1 = int(rng.integers(x - pw + 1))
        j = int(rng.integers(1, f))
        cond, target, si = self._item(i, a, off0, off1, j)
        cond, target = _augment([cond, target], rng, rotate=self.mode == "i")
        if rng.integers(2):  # reverse the plane order: the volume seen upside down
            cond = cond[::-1]
            if self.kind == "regression":
                target = target[::-1]
            else:
                si = f - j - 1
        return cond, target, si

    def validation_items(self, limit: int) -> list[_Item]:
        per_volume = []
        f, (ph, pw) = self.factor, self.patch
        for i, vol in enumerate(self.volumes):
            z, y, x = vol.shape
            band = self.bands[i]
            if band == 0:
                per_volume.append([])
                continue
            xs = np.linspace(0, x - pw, max(1, x // pw)).round().astype(int)
            items = []
            if self.mode == "i":
                vh = min(ph, _floor(band, self.multiple))
                if vh < 8:
                    per_volume.append([])
                    continue
                zs = np.linspace(0, z - f - 1, max(1, len(xs))).round().astype(int)
                for n, (x0, a) in enumerate(zip(xs, zs)):
                    items.append(self._item(i, int(a), y - band, int(x0), 1 + n % (f - 1), (vh, pw)))
            else:
                ys = np.linspace(y - band, y - f - 1, max(1, len(xs))).round().astype(int)
                for n, (x0, a) in enumerate(zip(xs, ys)):
                    items.append(self._item(i, int(a), 0, int(x0), 1 + n % (f - 1)))
            per_volume.append(items)
        take = _spread(limit, [len(v) for v in per_volume])
        return [it for v, k in zip(per_volume, take) for it in v[:k]]

    def describe(self) -> dict[str, Any]:
        return {
            "kind": f"isotropic-{self.mode}",
            "volumes": self.names,
            "shapes": [list(v.shape) for v in self.volumes],
            "factor": self.factor,
        }


# --------------------------------------------------------------------------- mixtures

class MixedData(TrainingData):
    """Several data sets; each crop comes from one of them in proportion to its training area.

    All parts must share the crop shape.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> img = rng.random((96, 96))
    >>> a = sr_data([img], scale=2, rule=Normalisation(), patch=32)
    >>> b = sr_data([img.T], scale=2, rule=Normalisation(), patch=32)
    >>> MixedData([a, b]).sample(rng, 4).cond.shape
    torch.Size([4, 1, 32, 32])
    """

    def __init__(self, parts: Sequence[TrainingData]) -> None:
        if not parts:
            raise InputError("no training data given")
        shapes = {p.patch for p in parts}
        if len(shapes) > 1:
            raise InputError(f"training data sets have different crop shapes {sorted(shapes)}")
        self.parts = list(parts)
        self.patch = self.parts[0].patch
        w = np.array([p.train_area for p in self.parts], float)
        self._p = w / w.sum()

    @property
    def train_area(self) -> int:
        return int(sum(p.train_area for p in self.parts))

    def sample_one(self, rng: np.random.Generator) -> _Item:
        k = int(rng.choice(len(self.parts), p=self._p)) if len(self.parts) > 1 else 0
        return self.parts[k].sample_one(rng)

    def validation_items(self, limit: int) -> list[_Item]:
        avail = [p.validation_items(limit) for p in self.parts]
        take = _spread(limit, [len(v) for v in avail])
        return [it for v, k in zip(avail, take) for it in v[:k]]

    def describe(self) -> dict[str, Any]:
        return {"kind": "mixture", "parts": [p.describe() for p in self.parts]}
