"""Tile plans, blending weights, position-seeded noise and block iteration.

Seamless restoration keeps a whole-image sampling state; at every sampler step the network
runs on overlapping tiles of it and the tile predictions are merged with smooth weights
(:class:`TilePlan`). Noise is a function of the global pixel position, the seed, the sample
and the step (:func:`position_noise`), so the noise does not depend on tile size, batch size,
tile order, block layout of a streamed run, or how many workers ran it.

The tiles themselves are those of the whole image (:class:`TileGrid`): a block, or a region,
runs the whole image's tiles that reach its pixels, each seeing exactly the pixels it sees in a
whole-image run. The networks' GroupNorm layers normalise a tile by its own statistics, so
tiles spread over each block's own window (as before) made a result depend on the block size,
and with it on the GPU's memory (0.4 grey levels on average on a real SEM image, 5 to 13 at a
few pixels). A one-pass predictor now gives the same pixels whatever the block size, region or
worker count; a multi-step sampler sees half a tile of context around its block, as before.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError

__all__ = [
    "round_up",
    "tile_starts",
    "ramp",
    "TilePlan",
    "TileGrid",
    "position_noise",
    "pad_to",
    "pad_mode",
    "cut_canvas",
    "block_slices",
    "tile_halo",
    "context_margin",
    "CONTEXT",
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
    """Tiles over a canvas of ``height`` x ``width`` and their blending weights.

    By default the tiles are spread evenly over the canvas (:func:`tile_starts`). A window
    of a larger canvas (:meth:`TileGrid.window`) gives its tiles' starts (``ys``, ``xs``,
    relative to the window), where the window lies (``origin``) and the whole canvas's size
    (``whole``): a tile's edge blends only where it is not the whole canvas's border.
    """

    height: int
    width: int
    tile_h: int
    tile_w: int
    overlap: int
    ys: list[int] = None  # type: ignore[assignment]
    xs: list[int] = None  # type: ignore[assignment]
    origin: tuple[int, int] = (0, 0)
    whole: tuple[int, int] = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.tile_h > self.height or self.tile_w > self.width:
            raise ValueError("the canvas must be at least one tile large")
        if self.ys is None:
            self.ys = tile_starts(self.height, self.tile_h, self.overlap)
        if self.xs is None:
            self.xs = tile_starts(self.width, self.tile_w, self.overlap)
        if self.whole is None:
            self.whole = (self.height, self.width)

    @property
    def tiles(self) -> list[tuple[int, int]]:
        return [(y, x) for y in self.ys for x in self.xs]

    def __len__(self) -> int:
        return len(self.ys) * len(self.xs)

    def weight(self, y: int, x: int) -> np.ndarray:
        ov_y = min(self.overlap, self.tile_h // 2)
        ov_x = min(self.overlap, self.tile_w // 2)
        gy, gx = y + self.origin[0], x + self.origin[1]
        wy = ramp(self.tile_h, ov_y, start=gy > 0, end=gy + self.tile_h < self.whole[0])
        wx = ramp(self.tile_w, ov_x, start=gx > 0, end=gx + self.tile_w < self.whole[1])
        return np.outer(wy, wx)

    def weights(self, device: torch.device | str = "cpu") -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per-tile weights and the total weight of every canvas pixel (float32 tensors)."""
        per_tile, total = [], torch.zeros(self.height, self.width, dtype=torch.float64)
        for y, x in self.tiles:
            w = torch.from_numpy(self.weight(y, x))
            total[y : y + self.tile_h, x : x + self.tile_w] += w
            per_tile.append(w.float().to(device))
        return per_tile, total.float().to(device)


@dataclass(frozen=True)
class TileGrid:
    """The tiles of a whole canvas (``height`` x ``width``), from which every block of it
    takes the tiles it needs.

    Examples
    --------
    >>> grid = TileGrid(1000, 1000, 256, 256, 32)
    >>> plan = grid.window(slice(400, 600), slice(0, 100), margin=0)
    >>> plan.origin, (plan.height, plan.width), plan.ys, plan.xs
    ((186, 0), (628, 256), [0, 186, 372], [0])
    """

    height: int
    width: int
    tile_h: int
    tile_w: int
    overlap: int

    def starts(self) -> tuple[list[int], list[int]]:
        return tile_starts(self.height, self.tile_h, self.overlap), tile_starts(self.width, self.tile_w, self.overlap)

    def window(self, rows: slice, cols: slice, *, margin: int) -> TilePlan:
        """The plan of the tiles that reach ``rows`` x ``cols`` (canvas pixels) widened by
        ``margin`` on every side: its canvas is the smallest window holding them whole."""
        ys, xs = self.starts()
        ys = _reaching(ys, self.tile_h, rows.start - margin, rows.stop + margin)
        xs = _reaching(xs, self.tile_w, cols.start - margin, cols.stop + margin)
        y0, x0 = ys[0], xs[0]
        return TilePlan(
            ys[-1] + self.tile_h - y0, xs[-1] + self.tile_w - x0, self.tile_h, self.tile_w, self.overlap,
            ys=[y - y0 for y in ys], xs=[x - x0 for x in xs], origin=(y0, x0), whole=(self.height, self.width),
        )  # fmt: skip


def _reaching(starts: list[int], tile: int, lo: int, hi: int) -> list[int]:
    return [t for t in starts if t < hi and t + tile > lo]


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


def pad_to(image: np.ndarray, height: int, width: int, *, mode: str | None = None) -> np.ndarray:
    """Pad the last two axes at the bottom/right to at least (height, width).

    Mirror padding keeps texture statistics (the network has never seen flat borders);
    images too small to mirror are edge-padded (``mode``: the one :func:`pad_mode` chose for
    the whole image, when ``image`` is a part of it).
    """
    ph, pw = max(0, height - image.shape[-2]), max(0, width - image.shape[-1])
    if ph == 0 and pw == 0:
        return image
    pad = [(0, 0)] * (image.ndim - 2) + [(0, ph), (0, pw)]
    return np.pad(image, pad, mode=mode or pad_mode(image.shape[-2:], (height, width)))


def pad_mode(shape: tuple[int, ...], canvas: tuple[int, int]) -> str:
    """How :func:`pad_to` pads an image of ``shape`` (last two axes) up to ``canvas``."""
    ph, pw = canvas[0] - shape[-2], canvas[1] - shape[-1]
    return "reflect" if ph < shape[-2] and pw < shape[-1] else "edge"


def block_slices(
    length: int, block: int, halo: int, start: int = 0, stop: int | None = None
) -> Iterator[tuple[slice, slice, slice]]:
    """Blocks over ``[start, stop)`` of an axis of ``length`` pixels: (read range with halo,
    write range, crop of the read block).

    Examples
    --------
    >>> [tuple((s.start, s.stop) for s in b) for b in block_slices(100, 60, 8)]
    [((0, 68), (0, 60), (0, 60)), ((52, 100), (60, 100), (8, 48))]
    """
    stop = length if stop is None else stop
    for w0 in range(start, stop, block):
        w1 = min(w0 + block, stop)
        r0, r1 = max(0, w0 - halo), min(length, w1 + halo)
        yield slice(r0, r1), slice(w0, w1), slice(w0 - r0, w1 - r0)


#: Canvas pixels of context beyond the written ones that every tile plan holds exactly: the
#: uncertainty's structure term (a Laplacian of a Gaussian of sigma 1) reaches 5 pixels.
CONTEXT = 6


def context_margin(tile: int, overlap: int, *, multistep: bool) -> int:
    """Canvas pixels around a block whose tiles run with it: a one-pass network needs only
    :data:`CONTEXT`; a multi-step sampler, whose tiles see its own state, half a tile more."""
    return max(tile // 2, overlap, CONTEXT) if multistep else CONTEXT


def tile_halo(tile: int, overlap: int, scale: int = 1, *, multistep: bool = True) -> int:
    """Input pixels to read around a block: every tile of the grid that reaches its
    :func:`context_margin` lies inside them (bicubic up-sampling reads 2 pixels more).

    Examples
    --------
    >>> tile_halo(64, 16), tile_halo(64, 16, multistep=False), tile_halo(64, 16, 2)
    (96, 70, 50)
    """
    reach = tile + context_margin(tile, overlap, multistep=multistep)
    return -(-reach // scale) + (2 if scale > 1 else 0)


def cut_canvas(cond: np.ndarray, at: tuple[int, int], plan: TilePlan, image: tuple[int, int]) -> np.ndarray:
    """The canvas of ``plan`` (..., height, width) cut from ``cond``, the part of the whole
    image's condition that starts at canvas pixel ``at``. Past the image's end (``image``:
    its size in canvas pixels) it is padded as the whole image's canvas is.
    """
    h, w = cond.shape[-2:]
    (y0, x0), (oy, ox) = at, plan.origin
    need_h, need_w = oy + plan.height - y0, ox + plan.width - x0
    short_y, short_x = need_h > h and y0 + h < image[0], need_w > w and x0 + w < image[1]
    if oy < y0 or ox < x0 or short_y or short_x:
        raise ValueError(f"the read at {at} ({h}x{w}) does not hold the tiles at {plan.origin}")
    if need_h > h or need_w > w:
        cond = pad_to(cond, max(need_h, h), max(need_w, w), mode=pad_mode(image, plan.whole))
    return cond[..., oy - y0 : oy - y0 + plan.height, ox - x0 : ox - x0 + plan.width]
