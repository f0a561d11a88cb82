"""vEMDiffuse training crops from volumes: two planes as the condition, one between them as
the target."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ...errors import InputError
from ...inference.normalise import to_model
from ...models.cards import Normalisation
from .base import Item, TrainingData, augment, fit_rule, floor_to, spread, fitted_band
from .noise import simulate_noise

__all__ = ["IsotropicData"]


class IsotropicData(TrainingData):
    """vEMDiffuse training crops from volumes.

    For a factor ``f``, the condition is two planes ``f`` apart stacked as two channels
    (the lower index first) and the target is the plane at offset ``j`` (1 <= j < f) between
    them, with ``slice_index = j - 1``; for ``kind="regression"`` the target is all ``f - 1``
    planes between them and there is no slice index. ``gap_depth=True`` (a predictor that
    serves every factor): each crop draws its factor from ``factor`` to ``max_factor``, the
    target is the one plane at offset ``j`` and the slice index is its depth ``j / f`` (float).

    ``mode="i"`` (vEMDiffuse-i): planes perpendicular to z of an isotropic volume; crops are
    ``patch`` x ``patch``; the validation band is the bottom rows (largest y) of every plane.
    ``mode="a"`` (vEMDiffuse-a): an anisotropic volume teaches itself from its lateral
    resolution: planes perpendicular to y (each a ``(Z, X)`` image) at ``y0`` and ``y0 + f``
    are the condition. Crops are ``h`` x ``patch`` with ``h`` the largest multiple of the
    network's size multiple that fits both ``patch`` and Z; a stack shorter than the
    network's smallest input (8 rows, or twice its size multiple) is mirrored along Z, so
    stacks of a few slices work; the validation planes are the largest y.

    Augmentation: flips of both in-plane axes, 90-degree rotations (mode ``i``), and reversal
    of the plane order (the condition planes swap and ``j`` becomes ``f - j``).

    ``condition_noise`` (a share of the training crops): the two condition planes get
    Poisson-Gaussian noise at one of ``doses`` (:func:`~.noise.simulate_noise`; half of those
    crops with noise correlated up to ``correlation``) while the target stays as measured, so
    the model learns to make clean slices from noisy neighbours instead of carrying their noise
    into the new slices. Such crops are normalised as the noisy volume would be at inference.
    Validation crops are never noised.

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
        gap_depth: bool = False,
        max_factor: int | None = None,
        condition_noise: float = 0.0,
        doses: Sequence[float] = (),
        read_noise: float = 1.0,
        correlation: float = 0.0,
        seed: int = 0,
    ) -> None:
        if mode not in ("i", "a"):
            raise InputError(f"isotropic mode must be 'i' or 'a', got {mode!r}")
        if factor < 2:
            raise InputError(f"factor must be at least 2, got {factor}")
        if max_factor is not None and (not gap_depth or max_factor < factor):
            raise InputError(f"max_factor ({max_factor}) needs a gap-depth predictor and at least factor ({factor})")
        self.min_factor, self.gap_depth = int(factor), bool(gap_depth)
        # The largest gap sets every size check and position range.
        factor = int(max_factor or factor)
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
                band = fitted_band(f"{name} planes", y, x, val_fraction=val_fraction, patch=patch, multiple=multiple)
                heights.append(patch)
            else:
                if z < 2:
                    raise InputError(f"{name} has {z} slice: isotropic-a needs at least 2 (its (Z, X) planes are the training images)")
                # A short stack's (Z, X) planes are mirrored along Z up to the smallest
                # height the network takes: stacks of a few slices still teach themselves.
                h = max(floor_to(min(patch, z), multiple), max(8, 2 * multiple))
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
        self.norms = [fit_rule(v, rule) for v in self.volumes]
        if not 0 <= condition_noise <= 1:
            raise InputError(f"condition_noise is a share of the crops (0 to 1), got {condition_noise}")
        if condition_noise > 0 and (not doses or any(not d > 0 for d in doses)):
            raise InputError(f"condition noise needs positive doses, got {list(doses)}")
        self.condition_noise, self.doses = float(condition_noise), [float(d) for d in doses]
        self.read_noise, self.correlation = float(read_noise), float(correlation)
        # The intensity range the noise model maps to [0, 1], and the normalisation a noisy
        # copy of each volume gets at each dose (fixed: it must not depend on the run).
        self.ranges = [(float(v.min()), float(v.max())) for v in self.volumes]
        self.noisy_norms: list[list] = [[] for _ in self.volumes]
        if self.condition_noise > 0:
            sim_rng = np.random.default_rng([seed, 7907])
            for i, vol in enumerate(self.volumes):
                lo, hi = self.ranges[i]
                self.noisy_norms[i] = [
                    fit_rule(simulate_noise(vol, d, read_noise=self.read_noise, rng=sim_rng, lo=lo, hi=hi), rule)
                    for d in self.doses
                ]
        self._areas = np.array([self._positions(i) for i in range(len(self.volumes))], float)

    def _positions(self, i: int) -> int:
        z, y, x = self.volumes[i].shape
        f, (ph, pw), band = self.factor, self.patch, self.bands[i]
        if self.mode == "i":
            return (z - f) * (y - band - ph + 1) * (x - pw + 1)
        return (y - band - f) * max(1, z - ph + 1) * (x - pw + 1)

    @property
    def train_area(self) -> int:
        return int(self._areas.sum())

    def _item(
        self, i: int, a: int, off0: int, off1: int, j: int, shape: tuple[int, int] | None = None, f: int | None = None,
        noise: tuple[int, np.random.Generator] | None = None,
    ) -> Item:
        """Planes ``a`` and ``a + f`` (and between) of volume ``i``, crop at (off0, off1);
        ``noise`` = (dose index, rng) noises the condition planes."""
        vol, info, f = self.volumes[i], self.norms[i], f or self.factor
        ph, pw = shape or self.patch
        if self.mode == "i":
            planes = vol[a : a + f + 1, off0 : off0 + ph, off1 : off1 + pw]
        else:
            planes = np.moveaxis(vol[off0 : off0 + ph, a : a + f + 1, off1 : off1 + pw], 1, 0)
            if planes.shape[1] < ph:  # a short stack: mirrored along Z
                planes = np.pad(planes, ((0, 0), (0, ph - planes.shape[1]), (0, 0)), mode="symmetric")
        if noise is not None:
            k, rng = noise
            lo, hi = self.ranges[i]
            corr = float(rng.uniform(0, self.correlation)) if self.correlation and rng.random() < 0.5 else 0.0
            # simulated in the volume's dtype, so integer data are rounded as a detector records them
            noisy = simulate_noise(planes[[0, f]], self.doses[k], read_noise=self.read_noise, rng=rng,
                                   lo=lo, hi=hi, correlation=corr)
            planes = planes.astype(np.float64)  # a copy: the volume itself stays as read
            planes[[0, f]] = noisy
            info = self.noisy_norms[i][k]
        planes = to_model(planes, info)
        cond = planes[[0, f]]
        if self.gap_depth:
            return cond, planes[j : j + 1], j / f
        if self.kind == "regression":
            return cond, planes[1:f], -1
        return cond, planes[j : j + 1], j - 1

    def sample_one(self, rng: np.random.Generator) -> Item:
        i = int(rng.choice(len(self.volumes), p=self._areas / self._areas.sum())) if len(self.volumes) > 1 else 0
        z, y, x = self.volumes[i].shape
        f, (ph, pw), band = self.factor, self.patch, self.bands[i]
        if self.gap_depth:
            f = int(rng.integers(self.min_factor, self.factor + 1))
        if self.mode == "i":
            a = int(rng.integers(z - f))
            off0 = int(rng.integers(y - band - ph + 1))
        else:
            a = int(rng.integers(y - band - f))
            off0 = int(rng.integers(max(1, z - ph + 1)))
        off1 = int(rng.integers(x - pw + 1))
        j = int(rng.integers(1, f))
        noise = None
        if self.condition_noise > 0 and rng.random() < self.condition_noise:
            noise = (int(rng.integers(len(self.doses))), rng)
        cond, target, si = self._item(i, a, off0, off1, j, f=f, noise=noise)
        cond, target = augment([cond, target], rng, rotate=self.mode == "i")
        if rng.integers(2):  # reverse the plane order: the volume seen upside down
            cond = cond[::-1]
            if self.gap_depth:
                si = (f - j) / f
            elif self.kind == "regression":
                target = target[::-1]
            else:
                si = f - j - 1
        return cond, target, si

    def validation_items(self, limit: int) -> list[Item]:
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
                vh = min(ph, floor_to(band, self.multiple))
                if vh < 8:
                    per_volume.append([])
                    continue
                zs = np.linspace(0, z - f - 1, max(1, len(xs))).round().astype(int)
                for n, (x0, a) in enumerate(zip(xs, zs)):
                    g = self._val_factor(n)
                    items.append(self._item(i, int(a), y - band, int(x0), 1 + n % (g - 1), (vh, pw), f=g))
            else:
                ys = np.linspace(y - band, y - f - 1, max(1, len(xs))).round().astype(int)
                for n, (x0, a) in enumerate(zip(xs, ys)):
                    g = self._val_factor(n)
                    items.append(self._item(i, int(a), 0, int(x0), 1 + n % (g - 1), f=g))
            per_volume.append(items)
        take = spread(limit, [len(v) for v in per_volume])
        return [it for v, k in zip(per_volume, take) for it in v[:k]]

    def _val_factor(self, n: int) -> int:
        """The gap of the n-th validation crop: every factor of the range in turn."""
        return self.min_factor + n % (self.factor - self.min_factor + 1) if self.gap_depth else self.factor

    def describe(self) -> dict[str, Any]:
        return {
            "kind": f"isotropic-{self.mode}",
            "volumes": self.names,
            "shapes": [list(v.shape) for v in self.volumes],
            "factor": [self.min_factor, self.factor] if self.min_factor != self.factor else self.factor,
            **({"condition_noise": self.condition_noise, "doses": self.doses} if self.condition_noise else {}),
        }
