"""The one block plan: how an image, a stack or a volume is cut into blocks.

Every restoration runs block by block, in memory or into a zarr store, on one machine or on
a dask cluster. A block runs the whole image's tiles that reach it (:class:`~.tiling.TileGrid`),
reading the input they cover, and only its centre is written; so neither the machine nor the
block size fixes the result (a one-pass model gives the same pixels with any blocks; a
sampler of several steps sees half a tile of context around a block). Blocks coincide with
the output's chunks, so no two tasks ever write one chunk. When a block does not fit the GPU,
the whole plan is made again with blocks half the size (:func:`shrinking_blocks`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import EMDiffuseError
from ..events import Progress
from ..io.common import is_url
from ..io.ledger import Ledger
from ..io.sources import source_of
from ..io.zarr import BLOCKS_TOTAL, ZarrWriter, finished_with, unfinished_runs
from .canvas import SamplingOptions
from .normalise import NormInfo
from .tiling import block_slices, tile_halo

__all__ = [
    "BlockPlan", "BlockTarget", "BlockRun", "Distribute", "shrinking_blocks", "zarr_outputs", "DEFAULT_BLOCK",
    "run_key", "input_identity", "block_key", "pending_jobs", "resume_note", "build_pyramids", "pyramid_note",
    "already_done",
]  # fmt: skip

#: Lateral block edge (input pixels) of the block tasks; also the output's chunk edge.
DEFAULT_BLOCK = 2048


@dataclass(frozen=True)
class BlockPlan:
    """Blocks of a 2D image (``is_stack`` False), a stack restored plane by plane, or a
    volume made isotropic (``factor`` > 1: a task is a block of the gap between slices z
    and z+1).

    ``ys`` and ``xs`` hold one (read, write, crop) triple of slices per block row and
    column, in input pixels; ``scale`` is the lateral up-sampling (super-resolution).
    ``written``: the rows and columns (y0, y1, x0, x1) the output holds, a region of the
    image, or None for all of it. A block reads every tile of the whole image's
    :class:`~.tiling.TileGrid` that reaches it (:func:`~.tiling.tile_halo`; ``multistep``:
    for a sampler whose tiles also see their neighbours' earlier outputs).

    Examples
    --------
    >>> from napari_emdiffuse.engine.inference.canvas import SamplingOptions
    >>> opts = SamplingOptions(preset="fast", sampler="ddim", steps=1, samples=1, eta=0.0,
    ...                        tile=64, overlap=16, batch=2, seed=0, precision="fp32")
    >>> plan = BlockPlan.make((5, 300, 200), block=128, opts=opts, factor=3)
    >>> plan.out_shape, plan.chunks, len(plan.jobs())
    ((13, 300, 200), (1, 128, 128), 24)
    >>> BlockPlan.make((300, 200), block=128, opts=opts, region=(slice(10, 50), slice(0, 200))).out_shape
    (40, 200)
    """

    nz: int
    height: int
    width: int
    scale: int
    factor: int
    is_stack: bool
    ys: tuple
    xs: tuple
    block: int
    written: tuple[int, int, int, int] | None = None

    @classmethod
    def make(
        cls,
        shape: tuple[int, ...],
        *,
        block: int,
        opts: SamplingOptions,
        scale: int = 1,
        factor: int = 1,
        region: tuple[slice, slice] | None = None,
        multistep: bool = True,
    ) -> "BlockPlan":
        is_stack = len(shape) == 3
        nz, h, w = shape if is_stack else (1, *shape)
        halo = tile_halo(opts.tile, opts.overlap, scale, multistep=multistep)
        block = max(int(block), opts.tile)
        rows, cols = region if region is not None else (slice(0, h), slice(0, w))
        ys = tuple(block_slices(h, block, halo, rows.start, rows.stop))
        xs = tuple(block_slices(w, block, halo, cols.start, cols.stop))
        written = None if region is None else (rows.start, rows.stop, cols.start, cols.stop)
        return cls(nz, h, w, scale, factor, is_stack, ys, xs, block, written)

    @property
    def bounds(self) -> tuple[int, int, int, int]:
        """(y0, y1, x0, x1): the input rows and columns whose result the output holds."""
        return self.written or (0, self.height, 0, self.width)

    @property
    def out_shape(self) -> tuple[int, ...]:
        s = self.scale
        y0, y1, x0, x1 = self.bounds
        h, w = y1 - y0, x1 - x0
        if self.factor > 1:
            return ((self.nz - 1) * self.factor + 1, h, w)
        return (self.nz, h * s, w * s) if self.is_stack else (h * s, w * s)

    @property
    def chunks(self) -> tuple[int, ...]:
        # One chunk per block (output pixels): parallel writers never share a chunk.
        s = self.scale
        y0, y1, x0, x1 = self.bounds
        yx = (min(self.block, y1 - y0) * s, min(self.block, x1 - x0) * s)
        return (1, *yx) if self.is_stack else yx

    def jobs(self) -> list[tuple[int, int, int]]:
        """(z, block row, block column) of every task; z runs over gaps for a volume."""
        nz = self.nz - 1 if self.factor > 1 else self.nz
        return [(z, iy, ix) for z in range(nz) for iy in range(len(self.ys)) for ix in range(len(self.xs))]


@dataclass(frozen=True)
class BlockTarget:
    """What a block task needs besides its input: the normalisation, the resolved options,
    the device, and the output arrays (numpy or zarr) with their dtype."""

    norm: NormInfo
    opts: SamplingOptions
    device: torch.device
    dtype: np.dtype
    dst: Any
    unc: Any = None
    measured_unc: Any = None  # isotropic: uncertainty of the measured slices (a denoiser's)
    offset: tuple[int, int] = (0, 0)  # where the image read lies in the whole one (a region): seeds the noise there


@dataclass(frozen=True)
class BlockRun:
    """A whole run handed to a :data:`Distribute`: the input, its plan, the model as the user
    named it, the user's sampling choices as given (``request``: workers resolve them for
    their own device) and where the zarr output (and uncertainty) go."""

    image: Any
    plan: BlockPlan
    model: Any
    task: str
    arch: str | None
    device: str
    out: Path | str  # a URL for a store by URL (:mod:`~..io.zarrurl`)
    unc_out: Path | str | None
    writer_kw: dict
    norm: NormInfo
    request: dict
    opts: SamplingOptions
    dtype: np.dtype
    measured_unc: Path | None = None  # isotropic: a zarr store of the measured slices' uncertainty
    z_filter: Any = None  # a ZFilter: average the restored stack along z before committing it
    resume_key: str | None = None  # resumable (run_key): finished blocks survive a crash or a stop
    region: tuple[int, int, int, int] | None = None  # the plan's written rows and columns, for the z filter
    offset: tuple[int, int] = (0, 0)  # where the image lies in a larger one (a region's context): the noise's place


#: Runs every task of a :class:`BlockRun` elsewhere (a dask cluster,
#: :class:`~..parallel.runner.Cluster`), yielding progress, and commits its output stores.
Distribute = Callable[[BlockRun], Generator[Progress, None, None]]


def shrinking_blocks(
    run: Callable[[int], Generator[Progress, None, Any]], block: int, minimum: int
) -> Generator[Progress, None, Any]:
    """Run ``run(block)``; when the GPU runs out of memory, run it again with blocks half
    the size, down to ``minimum`` (one tile). Whatever the first try wrote is overwritten.

    The sampler keeps the whole block's state on the device (samples x H x W plus the
    solver's copies); a smaller block is the only thing that makes it fit.
    """
    while True:
        try:
            return (yield from run(block))
        except torch.cuda.OutOfMemoryError:
            if block // 2 < minimum:
                raise EMDiffuseError(
                    f"out of GPU memory even with {block}-px blocks; use a smaller tile or batch, or device='cpu'"
                ) from None
            torch.cuda.empty_cache()
            block //= 2
            yield Progress("block", 0, 1, message=f"out of GPU memory: starting again with {block}-px blocks")


def run_key(**parts: Any) -> str:
    """The key of a resumable run: a digest of everything that fixes its pixels (input, model
    weights, options, plan). Two runs with the same key write the same store.

    Examples
    --------
    >>> run_key(a=1, b="x") == run_key(b="x", a=1) != run_key(a=2, b="x")
    True
    """
    text = json.dumps(parts, sort_keys=True, default=repr)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def input_identity(image: Any) -> dict:
    """What tells one input from another in :func:`run_key`: shape and dtype, and where a
    zarr array or an HDF5 or N5 dataset lives (also under a dask array that only wraps it), a
    dask array's name, or a digest of a numpy array's pixels (every k-th,
    at most 4 M of them). The key also holds the input's normalisation (its percentiles)."""
    ident: dict[str, Any] = {"shape": list(image.shape), "dtype": str(np.dtype(image.dtype))}
    if isinstance(image, np.ndarray):
        flat = image.reshape(-1)
        sample = np.ascontiguousarray(flat[:: max(1, flat.size // (1 << 22))])
        ident["pixels"] = hashlib.blake2b(sample.tobytes(), digest_size=16).hexdigest()
    elif hasattr(image, "store") and not hasattr(image, "dask"):  # a zarr array (dask's .store is a method)
        ident["zarr"] = [str(image.store), str(getattr(image, "path", ""))]
    elif (where := source_of(image)) is not None:  # an HDF5 or N5 dataset, or a dask array wrapping one
        ident["file"] = list(where)
    elif hasattr(image, "dask"):
        ident["dask"] = str(image.name)
    return ident


def block_key(plan: BlockPlan, job: tuple[int, int, int]) -> str:
    """The ledger key of one block task (the block edge included: after a plan was made again
    with smaller blocks, the bigger ones' marks do not count)."""
    return f"block-{plan.block}-{job[0]}-{job[1]}-{job[2]}"


def pending_jobs(plan: BlockPlan, ledger: Ledger) -> list[tuple[int, int, int]]:
    """The plan's block tasks that ``ledger`` does not list as finished.

    A tile column that the z filter had begun but not finished (a stack averaged along z in
    place: :func:`~.zfilter.apply_width`) holds a mix of filtered and unfiltered slices; its
    blocks are restored again, so that it is filtered once, from the restoration.
    """
    jobs = plan.jobs()
    if not ledger.enabled:
        return jobs
    s = plan.scale
    marked = ledger.keys()  # one listing, not a request per block (a ledger in an object store)
    for key in [k for k in marked if k.startswith("z-") and k.endswith("-start")]:
        if key[: -len("-start")] not in marked:
            y0, y1, x0, x1 = (int(v) for v in key.split("-")[1:5])
            for job in jobs:
                wy, wx = plan.ys[job[1]][1], plan.xs[job[2]][1]
                if wy.start * s < y1 and y0 < wy.stop * s and wx.start * s < x1 and x0 < wx.stop * s:
                    ledger.forget(block_key(plan, job))
                    marked.discard(block_key(plan, job))
        ledger.forget(key)
    return [job for job in jobs if block_key(plan, job) not in marked]


def already_done(out: Path | str, unc_out: Path | str | None, key: str | None) -> Generator[Progress, None, bool]:
    """Whether a resumable run finished already (its output, and uncertainty when asked,
    complete with this run's key); says so. A job script run again then has nothing to do."""
    if key is None or not finished_with(out, key) or (unc_out is not None and not finished_with(unc_out, key)):
        return False
    yield Progress("note", 0, 0, message=f"'{out}' is complete from an earlier run of the same input, model and "
                                         "options: nothing to do")  # fmt: skip
    return True


def resume_note(wr: ZarrWriter, plan: BlockPlan) -> Generator[Progress, None, None]:
    """Say where a resumable run keeps its finished blocks, or how many an earlier run left."""
    if wr.resume_key is None:
        return
    wr.ledger.write(BLOCKS_TOTAL, str(len(plan.jobs())))  # for `emdiffuse info`
    if wr.resumed:
        total = len(plan.jobs())
        done = total - len(pending_jobs(plan, wr.ledger))
        say = f"resuming the unfinished run in '{wr.temp_path}': {done} of {total} blocks are done"
    else:
        say = f"resumable: if this run stops, its finished blocks stay in '{wr.temp_path}' for the next run"
    yield Progress("note", 0, 0, message=say)
    for other, done, _ in unfinished_runs(wr.path):  # of another input, model, options or plan
        if _same_place(other, wr.temp_path):
            continue
        yield Progress("note", 0, 0, message=(
            f"'{other}' holds an unfinished run with other input, model or options ({done} blocks): "
            "not this run's; delete it if that run is not to be continued"))


def _same_place(a: Path | str, b: Path | str) -> bool:
    """Whether two stores are one (URLs as given, folders resolved)."""
    if isinstance(a, str) or isinstance(b, str):
        return str(a).rstrip("/") == str(b).rstrip("/")
    return a.resolve() == b.resolve()


def pyramid_note(writers: tuple[ZarrWriter | None, ...]) -> Generator[Progress, None, list[ZarrWriter]]:
    """Say which OME-Zarr outputs get a pyramid now (those large enough); returns them."""
    ome = [w for w in writers if w is not None and w.has_pyramid]
    if ome:
        names = " and ".join(f"'{Path(str(w.path)).name}'" for w in ome)  # a URL's name too
        yield Progress("note", 0, 0, message=f"adding the multiscale pyramid of {names} (OME-Zarr, 2x2 means)")
    return ome


def build_pyramids(*writers: ZarrWriter | None) -> Generator[Progress, None, None]:
    """Write the pyramid of each OME-Zarr output among ``writers`` in this process, after
    every block (and the z filter): each level is read from the one above it."""
    for w in (yield from pyramid_note(writers)):
        yield from w.build_pyramid()


def output_place(where: Any) -> Path | str | None:
    """An output store's place: a URL as given (:mod:`~..io.zarrurl`), else a path."""
    if where is None:
        return None
    return str(where).rstrip("/") if is_url(str(where)) else Path(where)


def _writer(where: Path | str) -> Any:
    if isinstance(where, str) and is_url(where):
        from ..io.zarrurl import UrlZarrWriter

        return UrlZarrWriter
    return ZarrWriter


@contextlib.contextmanager
def zarr_outputs(
    out: Path, unc_out: Path | None, shape: tuple[int, ...], dtype: np.dtype, *, resume_key: str | None = None,
    **writer_kw: Any,
) -> Iterator[tuple[ZarrWriter, ZarrWriter | None]]:  # fmt: skip
    """The output store and, when asked, the uncertainty store (float32, same chunks).

    Both are committed when the block ends normally and both are removed when it raises or
    its generator is closed: a cancelled run never leaves a store that looks whole. With
    ``resume_key`` (:func:`run_key`) they are resumable: an earlier run's unfinished stores
    of the same key are opened again, with the ledger of their finished blocks, and a failed
    or stopped run keeps its stores (still unfinished, beside the output) for the next one.
    The output writer's ``ledger`` lists the finished blocks.
    """
    wr = _writer(out)(out, shape, dtype, resume_key=resume_key, **writer_kw)
    unc = None
    try:
        if unc_out is not None:
            attrs = {**writer_kw.get("attrs", {}), "what": "uncertainty (std, input units)"}
            unc = _writer(unc_out)(unc_out, shape, np.float32, resume_key=resume_key, **{**writer_kw, "attrs": attrs})
        if wr.resumed and unc is not None and not unc.resumed:
            # The output's ledger lists blocks whose uncertainty is not in this new store.
            for key in wr.ledger.keys():
                wr.ledger.forget(key)
        yield wr, unc
        if unc is not None:
            unc.commit()
        wr.commit()
    finally:
        if unc is not None:
            unc.abort()  # no-op after commit
        wr.abort()
