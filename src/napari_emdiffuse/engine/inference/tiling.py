"""Tile plans, blending weights, position-seeded noise and block iteration.

Seamless restoration keeps a whole-image sampling state; at every sampler step the network
runs on overlapping tiles of it and the tile predictions are merged with smooth weights
(:class:`TilePlan`). Noise is a function of the global pixel position, the seed, the sample
and the step (:func:`position_noise`), so the noise does not depend on tile size, batch size,
tile order, block layout of a streamed run, or how many workers ran it, and a result does not
depend on the batch size, the tile order or the workers. The tiles of a block are spread over
its own window, and the networks' GroupNorm layers normalise each tile by its own statistics:
another block size, or a region, moves the tiles and changes a result by a fraction of a grey
level on average (0.4 on a real SEM image; 5 to 13 at a few pixels).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import InputError

__all__ = [
    "round_up",
    "tile_starts",
    "ramp",
    "TilePlan",
    "position_noise",
    "pad_to",
    "block_slices",
    "check_tiling",
]


def round_up(n: int, multiple: int) -> int:
    return int(math.ceil(n / multiple) * multiple)


def check_tiling(tile: int | None, overlap: int | None) -> None:
    """One-line errors for impossible tile options (checked before any work)."""
    if tile is not None and (not isinstance(tile, (int, np.integer)) or tile <= 0):
        raise InputError(f"tile must be a positive number of pixels, got {tile!r}")
    if overlap is not None and (not isinstance(overlap, (int, np.integer)) or overlap < 0):
        raise InputError(f"overlap must be zero or a positive number of pixels, got {overlap!r}")
    if tile is not None and overlap is not None and overlap >= tile:
        raise InputError(f"overlap ({overlap}) must be smaller than the tile ({tile})")


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles covering ``[0, length)`` with at least ``overlap`` overlap.

    The tiles are spread evenly, the first at 0 and the last flush with the end, so every
    border is covered and no tile sticks out.

    Examples
    --------
    >>> tile_starts(1000, 256, 32)
    [0, 186, 372, 558, 744]
    """
    if length <= tile:
        return [0]
    stride = tile - overlap
    n = int(math.ceil((length - tile) / stride)) + 1
    return [int(round(v)) for v in np.linspace(0, length - tile, n)]


def ramp(tile: int, overlap: int, *, start: bool, end: bool) -> np.ndarray:
    """1-D blending weights: a raised-cosine rise over ``overlap`` pixels on inner edges.

    Edges on the image border (``start``/``end`` False) keep full weight. Weights never
    reach zero, so every pixel has a positive total weight.
    """
    w = np.ones(tile, dtype=np.float64)
    if overlap > 0:
        t = (np.arange(overlap) + 0.5) / overlap
        rise = 0.5 - 0.5 * np.cos(np.pi * t)
        if start:
            w[:overlap] = np.minimum(w[:overlap], rise)
        if end:
            w[tile - overlap :] = np.minimum(w[tile - overlap :], rise[::-1])
    return w


@dataclass
class TilePlan:
    """Tiles over a canvas of ``height`` x ``width`` and their blending weights."""

    height: int
    width: int
    tile_h: int
    tile_w: int
    overlap: int
    ys: list[int] = field(init=False)
    xs: list[int] = field(init=False)

    def __post_init__(self) -> None:
        if self.tile_h > self.height or self.tile_w > self.width:
            raise ValueError("the canvas must be at least one tile large")
        self.ys = tile_starts(self.height, self.tile_h, self.overlap)
        self.xs = tile_starts(self.width, self.tile_w, self.overlap)

    @property
    def tiles(self) -> list[tuple[int, int]]:
        return [(y, x) for y in self.ys for x in self.xs]

    def __len__(self) -> int:
        return len(self.ys) * len(self.xs)

    def weight(self, y: int, x: int) -> np.ndarray:
        ov_y = min(self.overlap, self.tile_h // 2)
        ov_x = min(self.overlap, self.tile_w // 2)
        wy = ramp(self.tile_h, ov_y, start=y > 0, end=y + self.tile_h < self.height)
        wx = ramp(self.tile_w, ov_x, start=x > 0, end=x + self.tile_w < self.width)
        return np.outer(wy, wx)

    def weights(self, device: torch.device | str = "cpu") -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per-tile weights and the total weight of every canvas pixel (float32 tensors)."""
        per_tile, total = [], torch.zeros(self.height, self.width, dtype=torch.float64)
        for y, x in self.tiles:
            w = torch.from_numpy(self.weight(y, x))
            total[y : y + self.tile_h, x : x + self.tile_w] += w
            per_tile.append(w.float().to(device))
        return per_tile, total.float().to(device)


_MASK = 0xFFFFFFFF
# Odd multipliers below 2**31: a 32-bit value times one stays inside int64 on every device.
_M1, _M2 = 0x7FEB352D, 0x5BD1E995


def _stream_key(*parts: int) -> tuple[int, int]:
    """Two 32-bit keys from (seed, slice, sample, step, ...): hashed once per call, on the CPU."""
    digest = hashlib.blake2b(np.asarray(parts, dtype=np.int64).tobytes(), digest_size=8).digest()
    v = int.from_bytes(digest, "little")
    return v & _MASK, v >> 32


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finaliser (xor-shift-multiply) on int64 tensors holding uint32 values."""
    x = x ^ (x >> 16)
    x = (x * _M1) & _MASK
    x = x ^ (x >> 15)
    x = (x * _M2) & _MASK
    return x ^ (x >> 16)


def position_noise(
    height: int,
    width: int,
    *,
    seed: int,
    origin: tuple[int, int] = (0, 0),
    stream: tuple[int, ...] = (),
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Standard normal noise of shape (height, width) that depends only on position.

    A counter-based generator: the value at global pixel ``(origin[0] + i, origin[1] + j)``
    is a hash of that position and of a key made from ``(seed, *stream)``, turned into a
    normal deviate by the Box-Muller transform. It is computed on ``device`` with no
    generator state, so any crop of the global field is reproduced exactly whatever the
    tiles, blocks, batch or worker, and a GPU never waits for noise from the CPU.
    ``stream`` separates slices, samples and sampler steps.

    Examples
    --------
    >>> a = position_noise(100, 100, seed=1)
    >>> b = position_noise(30, 40, seed=1, origin=(50, 20))
    >>> bool(torch.equal(a[50:80, 20:60], b))
    True
    """
    k1, k2 = _stream_key(seed, *stream)
    y0, x0 = origin
    ys = torch.arange(y0, y0 + height, device=device, dtype=torch.int64)[:, None] & _MASK
    xs = torch.arange(x0, x0 + width, device=device, dtype=torch.int64)[None, :] & _MASK
    h = _mix(_mix(ys ^ k1) ^ xs)
    a = _mix(h ^ k2)
    b = _mix(a ^ 0x9E3779B9)
    # 24-bit uniforms in (0, 1): exact in float32, never 0 (log) and never 1.
    u1 = ((a >> 8).to(torch.float32) + 0.5) / 16777216.0
    u2 = ((b >> 8).to(torch.float32) + 0.5) / 16777216.0
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)


def pad_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pad the last two axes at the bottom/right to at least (height, width).

    Mirror padding keeps texture statistics (the network has never seen flat borders);
    images too small to mirror are edge-padded.
    """
    ph, pw = max(0, height - image.shape[-2]), max(0, width - image.shape[-1])
    if ph == 0 and pw == 0:
        return image
    pad = [(0, 0)] * (image.ndim - 2) + [(0, ph), (0, pw)]
    if ph < image.shape[-2] and pw < image.shape[-1]:
        return np.pad(image, pad, mode="reflect")
    return np.pad(image, pad, mode="edge")


def block_slices(length: int, block: int, halo: int) -> Iterator[tuple[slice, slice, slice]]:
    """Blocks along one axis: (read range with halo, write range, crop of the read block)."""
    for start in range(0, length, block):
        stop = min(start + block, length)
        r0, r1 = max(0, start - halo), min(length, stop + halo)
        yield slice(r0, r1), slice(start, stop), slice(start - r0, start - r0 + (stop - start))
