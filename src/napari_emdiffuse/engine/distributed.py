"""2D restoration of zarr stacks on a dask.distributed cluster.

The same :class:`~.restore.BlockPlan` as a single-machine run, each block a task: a worker
loads the model once (cached per process), reads its block from the shared input store,
restores it and writes its centre straight into the shared output store. The client
commits the store (completion marker, rename) when every task has finished; closing the
generator cancels the tasks and removes the partial store.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .canvas import SamplingOptions
from .events import Progress, drain
from .io.zarr import ZarrWriter, open_zarr_for_block_writes
from .models.model import EMDiffuseModel
from .inference.normalise import NormInfo
from .restore import BlockPlan, restore_block
from .volume import _model_spec, _stage_input, _worker_model, _zarr_location, run_tasks

__all__ = ["run_blocks"]


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

    m = _worker_model(job.model, job.arch, job.device)
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
        return _stage_input(image, where, (1, *image.shape[1:]))
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
    from .models.registry import load_model

    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.work-", dir=out.parent))
    wr = ZarrWriter(out, plan.out_shape, dtype, **writer_kw)
    unc_wr = ZarrWriter(unc_out, plan.out_shape, np.float32, **{**writer_kw, "attrs": {}}) if unc_out else None
    try:
        loc = _zarr_location(image)
        if loc is None:  # workers read a store, not the client's memory
            loc = (_stage(image, tmp / "input.zarr"), "")
        loaded = model if isinstance(model, EMDiffuseModel) else load_model(model, task=task, arch=arch, device="cpu")
        spec, spec_arch, _ = _model_spec(model, loaded, task, arch, tmp / "model")
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
