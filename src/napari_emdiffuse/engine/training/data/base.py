"""What every kind of training data shares: the batch, the crop helpers, the base class and
mixtures of data sets."""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi

from ...errors import InputError
from ...inference.normalise import NormInfo, fit_normalisation, sample_values
from ...models.cards import Normalisation

__all__ = [
    "Batch",
    "Item",
    "TrainingData",
    "MixedData",
    "check_image",
    "validation_band",
    "fitted_band",
    "floor_to",
    "augment",
    "blur",
    "fit_rule",
    "spread",
    "collate",
    "band_crops",
    "stack_planes",
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


#: One crop: condition (C, H, W), target (T, H, W), slice index or -1.
Item = tuple[np.ndarray, np.ndarray, int | float]


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


def validation_band(height: int, val_fraction: float, crop: int, multiple: int, *, minimum: int = 0) -> int:
    """Rows at the bottom of an image kept for validation (0 when ``val_fraction`` is 0).

    At least ``val_fraction`` of the height and ``minimum`` rows, rounded up to the network's
    size multiple; at least one crop when the image holds two, else 16 rows (enough for
    SSIM's window) unless the crop is smaller.

    A whole crop because validation must judge the network on inputs of the size it trains
    and infers on: on thinner crops its GroupNorm sees other statistics and its borders weigh
    more. Fine-tuning on a 256-row image, two 32x64 validation crops ranked the base above every
    checkpoint, which scored 0.17-0.21 dB above the base on the other half of the image.

    Examples
    --------
    >>> validation_band(256, 0.1, 64, 8), validation_band(1024, 0.1, 64, 8), validation_band(100, 0.1, 64, 8)
    (64, 104, 16)
    """
    if val_fraction <= 0:
        return 0
    floor = crop if height >= 2 * crop else min(crop, 16)
    band = max(math.ceil(val_fraction * height), floor, minimum)
    return int(math.ceil(band / multiple) * multiple)


def fitted_band(what: str, height: int, width: int, *, val_fraction: float, patch: int, multiple: int) -> int:
    """:func:`validation_band` of an image, refused in one line when the image cannot hold
    a training patch above it."""
    band = validation_band(height, val_fraction, patch, multiple)
    if height - band < patch or width < patch:
        extra = f" plus a {band}-row validation band" if band else ""
        raise InputError(
            f"{what} is {height}x{width} px: too small for {patch}-px training patches{extra}; "
            "use a smaller patch or val_fraction"
        )
    return band


def floor_to(n: int, multiple: int) -> int:
    """``n`` rounded down to a multiple of ``multiple``."""
    return (n // multiple) * multiple


def augment(arrays: list[np.ndarray], rng: np.random.Generator, *, rotate: bool) -> list[np.ndarray]:
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


def blur(cond: np.ndarray, sigma_max: float, rng: np.random.Generator) -> np.ndarray:
    """Input-blur augmentation: half of the crops get a Gaussian blur of random width."""
    if sigma_max <= 0:
        return cond
    apply, sigma = bool(rng.integers(2)), float(rng.uniform(0.0, sigma_max))
    if not apply or sigma < 0.05:
        return cond
    return np.stack([ndi.gaussian_filter(c, sigma, mode="reflect") for c in cond])


def fit_rule(image: np.ndarray, rule: Normalisation) -> NormInfo:
    """The normalisation ``rule`` fitted on (a subsample of) the whole image, as at inference."""
    return fit_normalisation(sample_values(image), rule)


def spread(n_total: int, n_avail: Sequence[int]) -> list[int]:
    """Share ``n_total`` picks over sources round robin (at most what each has)."""
    take = [0] * len(n_avail)
    left = n_total
    while left > 0 and any(t < a for t, a in zip(take, n_avail)):
        for i, a in enumerate(n_avail):
            if left and take[i] < a:
                take[i] += 1
                left -= 1
    return take


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
    def sample_one(self, rng: np.random.Generator) -> Item: ...

    @abstractmethod
    def validation_items(self, limit: int) -> list[Item]: ...

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """What the data are, for the model card."""

    def sample(self, rng: np.random.Generator, batch: int) -> Batch:
        """A batch of ``batch`` random training crops."""
        return collate([self.sample_one(rng) for _ in range(batch)])

    def without_input_noise(self) -> "TrainingData":
        """The same crops with no simulated noise on super-resolution inputs (what a blur
        estimator learns from: noise reads as detail)."""
        return self

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
        return collate([(c[..., :h, :w], t[..., :h, :w], s) for c, t, s in items])


def collate(items: list[Item]) -> Batch:
    """Stack crops into a :class:`Batch` (float32; a slice index only when every crop has one:
    an int, or for gap-depth predictors the float depth of the slice in its gap)."""
    cond = torch.from_numpy(np.stack([np.ascontiguousarray(c) for c, _, _ in items]).astype(np.float32))
    target = torch.from_numpy(np.stack([np.ascontiguousarray(t) for _, t, _ in items]).astype(np.float32))
    si = [s for _, _, s in items]
    kind = torch.long if all(isinstance(v, (int, np.integer)) for v in si) else torch.float32
    slice_index = torch.tensor(si, dtype=kind) if min(si) >= 0 else None
    return Batch(cond, target, slice_index)


def band_crops(c: np.ndarray, t: np.ndarray, band: int, patch: int, multiple: int) -> list[Item]:
    """Non-overlapping crops of the validation band, spread across the width."""
    if band == 0:
        return []
    h, w = c.shape[-2:]
    ch, cw = min(patch, floor_to(band, multiple)), min(patch, floor_to(w, multiple))
    if ch < 8 or cw < 8:
        return []
    n = w // cw
    xs = np.linspace(0, w - cw, n).round().astype(int) if n > 1 else [0]
    y = h - band
    return [(c[:, y : y + ch, x : x + cw], t[:, y : y + ch, x : x + cw], -1) for x in xs]


def stack_planes(image: np.ndarray) -> list[np.ndarray]:
    """The 2D planes of an image (itself) or a stack (its slices)."""
    return [image] if image.ndim == 2 else list(image)


class MixedData(TrainingData):
    """Several data sets; each crop comes from one of them in proportion to its training area
    (or to ``shares``).

    Parts whose crop shapes differ (an isotropic model's z planes and its lateral planes) are
    drawn per batch instead of per crop, so that every batch stacks; ``patch`` is then the
    first part's. Validation crops are cut to their common shape.

    Examples
    --------
    >>> from napari_emdiffuse.engine.training.data.pairs import sr_data
    >>> rng = np.random.default_rng(0)
    >>> img = rng.random((96, 96))
    >>> a = sr_data([img], scale=2, rule=Normalisation(), patch=32)
    >>> b = sr_data([img.T], scale=2, rule=Normalisation(), patch=32)
    >>> MixedData([a, b]).sample(rng, 4).cond.shape
    torch.Size([4, 1, 32, 32])
    >>> c = sr_data([img], scale=2, rule=Normalisation(), patch=16)
    >>> sorted({tuple(MixedData([a, c], shares=[1, 1]).sample(rng, 2).cond.shape[-2:]) for _ in range(20)})
    [(16, 16), (32, 32)]
    """

    def __init__(self, parts: Sequence[TrainingData], *, shares: Sequence[float] | None = None) -> None:
        if not parts:
            raise InputError("no training data given")
        self.parts = list(parts)
        self.patch = self.parts[0].patch
        self.per_batch = len({p.patch for p in parts}) > 1
        w = np.array([p.train_area for p in self.parts] if shares is None else shares, float)
        if len(w) != len(self.parts) or not np.all(np.isfinite(w)) or w.min() < 0 or w.sum() <= 0:
            raise InputError(f"mixture shares {list(w)} must be one non-negative number per data set, not all 0")
        self._p = w / w.sum()
        self.shares = None if shares is None else [round(float(v), 4) for v in self._p]

    def _pick(self, rng: np.random.Generator) -> int:
        return int(rng.choice(len(self.parts), p=self._p)) if len(self.parts) > 1 else 0

    def without_input_noise(self) -> "MixedData":
        parts = [p.without_input_noise() for p in self.parts]
        if all(a is b for a, b in zip(parts, self.parts)):
            return self
        clean = copy.copy(self)
        clean.parts = parts
        return clean

    def sample(self, rng: np.random.Generator, batch: int) -> Batch:
        if self.per_batch:
            return self.parts[self._pick(rng)].sample(rng, batch)
        return super().sample(rng, batch)

    @property
    def train_area(self) -> int:
        return int(sum(p.train_area for p in self.parts))

    def sample_one(self, rng: np.random.Generator) -> Item:
        return self.parts[self._pick(rng)].sample_one(rng)

    def validation_items(self, limit: int) -> list[Item]:
        avail = [p.validation_items(limit) for p in self.parts]
        take = spread(limit, [len(v) for v in avail])
        return [it for v, k in zip(avail, take) for it in v[:k]]

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": "mixture", "parts": [p.describe() for p in self.parts]}
        if self.shares is not None:
            out["shares"] = self.shares
        return out
