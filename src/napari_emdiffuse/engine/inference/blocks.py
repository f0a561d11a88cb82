"""Streaming restoration of large images and stacks block by block into a zarr store, on
one machine or on a dask.distributed cluster.

One :class:`BlockPlan` serves both: on a cluster each block is a task; a worker loads the
model once (cached per process), reads its block from the shared input store, restores it
and writes its centre straight into the shared output store. Blocks coincide with the
output's chunks, so no two tasks ever write one chunk. The store is committed (completion
marker, rename) when every block has finished; closing the generator cancels the tasks and
removes the partial store.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..events import Progress, drain
from ..io.zarr import ZarrWriter, open_zarr_for_block_writes
from ..models.model import EMDiffuseModel
from ..models.registry import load_model
from ..parallel.runner import model_spec, run_tasks, stage_input, worker_model, zarr_location
from .canvas import SamplingOptions
from .checks import check_finite, owned_array
from .normalise import NormInfo, from_model, std_from_model, to_dtype
from .restore import Planes, fit_norm, prepare, restore_plane, run_info, scaled_spacing
from .tiling import block_slices

__all__ = ["BlockPlan", "restore_block", "restore_to_zarr_iter", "restore_to_zarr", "run_blocks"]


@dataclass(frozen=True)
class _Job:
    """Everything a worker needs for one block (picklable)."""

    model: str
    arch: str | None
    device: str
    src: str
    src_key: str
    dst: str
    unc: str | None
    plan: BlockPlan
    block: tuple[int, int, int]
    norm: NormInfo
    opts: SamplingOptions
    dtype: str


def _run(job: _Job) -> tuple[int, int, int]:
    import zarr

    m = worker_model(job.model, job.arch, job.device)
    src = zarr.open_array(job.src, path=job.src_key, mode="r") if job.src_key else zarr.open_array(job.src, mode="r")
    drain(
        restore_block(
            m, src, job.plan, job.block, norm=job.norm, opts=job.opts, device=m.device, dtype=np.dtype(job.dtype),
            dst=open_zarr_for_block_writes(job.dst), unc=open_zarr_for_block_writes(job.unc) if job.unc else None,
        )
    )
    return job.block


def _stage(image: Any, where: Path) -> str:
    if image.ndim == 3:
        return stage_input(image, where, (1, *image.shape[1:]))
    import zarr

    arr = zarr.open_array(str(where), mode="w-", shape=image.shape, dtype=np.dtype(image.dtype), chunks=image.shape, zarr_format=2)
    arr[...] = np.asarray(image.compute() if hasattr(image, "compute") else image)
    return str(where)


def run_blocks(
    image: Any,
    plan: BlockPlan,
    model: "str | Path | EMDiffuseModel",
    *,
    task: str,
    arch: str | None,
    device: str,
    out: Path,
    unc_out: Path | None,
    writer_kw: dict,
    norm: NormInfo,
    opts: SamplingOptions,
    dtype: np.dtype,
    workers: int | None,
    scheduler: str | None,
) -> Generator[Progress, None, None]:
    """Run every block of ``plan`` on the cluster; commit ``out`` (and ``unc_out``) at the end."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.work-", dir=out.parent))
    wr = ZarrWriter(out, plan.out_shape, dtype, **writer_kw)
    unc_wr = ZarrWriter(unc_out, plan.out_shape, np.float32, **{**writer_kw, "attrs": {}}) if unc_out else None
    try:
        loc = zarr_location(image)
        if loc is None:  # workers read a store, not the client's memory
            loc = (_stage(image, tmp / "input.zarr"), "")
        loaded = model if isinstance(model, EMDiffuseModel) else load_model(model, task=task, arch=arch, device="cpu")
        spec, spec_arch, _ = model_spec(model, loaded, task, arch, tmp / "model")
        jobs = [
            _Job(spec, spec_arch, device, loc[0], loc[1], str(wr.temp_path),
                 str(unc_wr.temp_path) if unc_wr else None, plan, job, norm, opts, dtype.str)
            for job in plan.jobs()
        ]
        yield from run_tasks(_run, jobs, workers=workers, scheduler=scheduler, name="restore")
        if unc_wr is not None:
            unc_wr.commit()
        wr.commit()
    finally:
        if unc_wr is not None:
            unc_wr.abort()  # no-op after commit
        wr.abort()
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass(frozen=True)
class BlockPlan:
    """How a (stack of) image(s) is cut into blocks for streaming: the same plan on one
    machine or on a cluster, so the result does not depend on where blocks ran."""

    nz: int
    height: int
    width: int
    scale: int
    is_stack: bool
    ys: tuple
    xs: tuple
    block: int

    @classmethod
    def make(cls, shape: tuple[int, ...], scale: int, block: int, opts: SamplingOptions) -> "BlockPlan":
        is_stack = len(shape) == 3
        nz, h, w = shape if is_stack else (1, *shape)
        halo = max(opts.tile // (2 * scale), opts.overlap)
        block = max(int(block), opts.tile)
        ys, xs = tuple(block_slices(h, block, halo)), tuple(block_slices(w, block, halo))
        return cls(nz, h, w, scale, is_stack, ys, xs, block)

    @property
    def out_shape(self) -> tuple[int, ...]:
        s = self.scale
        return (self.nz, self.height * s, self.width * s) if self.is_stack else (self.height * s, self.width * s)

    @property
    def chunks(self) -> tuple[int, ...]:
        # One chunk per block (output pixels): parallel writers never share a chunk.
        s = self.scale
        yx = (min(self.block, self.height) * s, min(self.block, self.width) * s)
        return (1, *yx) if self.is_stack else yx

    def jobs(self) -> list[tuple[int, int, int]]:
        return [(z, iy, ix) for z in range(self.nz) for iy in range(len(self.ys)) for ix in range(len(self.xs))]


def restore_block(
    m: EMDiffuseModel,
    stack: Any,
    plan: BlockPlan,
    job: tuple[int, int, int],
    *,
    norm: NormInfo,
    opts: SamplingOptions,
    device: torch.device,
    dtype: np.dtype,
    dst: Any,
    unc: Any = None,
) -> Generator[Progress, None, None]:
    """Read one block with its halo, restore it, write its centre into ``dst`` (and ``unc``)."""
    z, iy, ix = job
    (ry, wy, cy), (rx, wx, cx) = plan.ys[iy], plan.xs[ix]
    s = plan.scale
    planes = stack if isinstance(stack, Planes) else Planes(stack)
    plane = owned_array(planes[z, ry, rx]).astype(np.float64)
    check_finite(plane, f"block z={z} y={wy.start} x={wx.start}")
    mu, sd = yield from restore_plane(m, plane, norm, opts, device=device, z=z, origin=(ry.start, rx.start))
    crop = (slice(cy.start * s, cy.stop * s), slice(cx.start * s, cx.stop * s))
    idx = ((z,) if plan.is_stack else ()) + (slice(wy.start * s, wy.stop * s), slice(wx.start * s, wx.stop * s))
    dst[idx] = to_dtype(from_model(mu[crop], norm), dtype)
    if unc is not None and sd is not None:
        unc[idx] = std_from_model(sd[crop], norm)


def restore_to_zarr_iter(
    image: Any,
    out: str | Path,
    task: str = "denoise",
    model: "str | Path | EMDiffuseModel | None" = None,
    *,
    uncertainty_out: str | Path | None = None,
    block: int = 2048,
    arch: str | None = None,
    preset: str = "fast",
    device: str = "auto",
    dtype: Any = None,
    spacing: tuple[float, ...] | None = None,
    overwrite: bool = True,
    workers: int | None = None,
    scheduler: str | None = None,
    **kw: Any,
) -> Generator["Progress | Path", None, None]:
    """Stream a large image block by block into a zarr store; yields progress, then the path.

    Each block is read with a halo of half a tile, restored with per-step merging, cropped
    and written; noise is seeded by global position, so the block layout, not the machine,
    fixes the result. The store appears at ``out`` only when complete (temp dir, then
    rename, completion marker last). With ``workers=N`` (a local dask cluster) or
    ``scheduler="tcp://..."`` the blocks run on dask.distributed workers, each loading the
    model once and writing into the shared store; the result is identical.
    """
    image, dev, m, opts = prepare(image, task, model, arch, device, preset, kw)
    out_dtype = np.dtype(dtype) if dtype is not None else np.dtype(image.dtype)
    s = m.card.scale if task == "super-resolve" else 1
    plan = BlockPlan.make(tuple(image.shape), s, block, opts)
    norm = fit_norm(m, image)
    new_spacing = scaled_spacing(spacing, image.ndim, s)
    want_std = uncertainty_out is not None and (opts.samples > 1 or bool(getattr(m.unet, "aleatoric", False)))
    attrs = {"normalisation": norm.as_dict(), **run_info(m, opts, dev)}
    writer_kw = dict(chunks=plan.chunks, spacing=new_spacing, overwrite=overwrite)
    if workers or scheduler:
        yield from run_blocks(
            image, plan, model if model is not None else m, task=task, arch=arch, device=str(device),
            out=Path(out), unc_out=Path(uncertainty_out) if want_std else None, writer_kw={**writer_kw, "attrs": attrs},
            norm=norm, opts=opts, dtype=out_dtype, workers=workers, scheduler=scheduler,
        )
        yield Path(out)
        return
    stack = Planes(image)
    jobs = plan.jobs()
    with ZarrWriter(out, plan.out_shape, out_dtype, attrs=attrs, **writer_kw) as wr:
        unc_wr = ZarrWriter(uncertainty_out, plan.out_shape, np.float32, **writer_kw) if want_std else None
        try:
            for done, job in enumerate(jobs, 1):
                yield from restore_block(
                    m, stack, plan, job, norm=norm, opts=opts, device=dev, dtype=out_dtype,
                    dst=wr.array, unc=unc_wr.array if unc_wr is not None else None,
                )
                yield Progress("block", done, len(jobs))
            if unc_wr is not None:
                unc_wr.commit()
        except BaseException:
            if unc_wr is not None:
                unc_wr.abort()
            raise
    yield Path(out)


def restore_to_zarr(image: Any, out: str | Path, task: str = "denoise", model=None, **options: Any) -> Path:
    """Run :func:`restore_to_zarr_iter` to the end and return the output path."""
    return drain(restore_to_zarr_iter(image, out, task, model, **options))
