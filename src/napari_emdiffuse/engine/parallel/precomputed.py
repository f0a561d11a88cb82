"""Neuroglancer precomputed outputs written by the dask workers themselves.

A cluster run into ``NAME.precomputed`` fills a zarr store first (the workers write zarr). The
folder is then written from it here by the workers too, scale by scale: every block of a scale
is an independent task (its chunk files, or its shard's file; :mod:`~..io.precomputed_write`),
and a level's tasks read the scale above it, which is whole by then. So a terabyte is read and
written where the workers are, side by side, not through the one process that submitted the
run. ``emdiffuse convert --workers`` does the same from any stored input the workers open in
place (:func:`~..io.sources.source_of`). The output must be on storage the workers reach, as
the input is.

The folder is built under its hidden name and renamed when whole (closing the generator
cancels what has not run and removes it), as in one process.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..events import Progress
from ..io.atomic import remove_path
from ..io.precomputed_write import PrecomputedLayout, finish_precomputed, start_precomputed, write_precomputed_block
from ..io.sources import open_source
from .runner import run_tasks

__all__ = ["PrecomputedJob", "precomputed_on_workers", "run_precomputed_job"]

#: At most this many tasks per scale: each writes every n-th of its blocks.
_TASKS = 1024


@dataclass(frozen=True)
class PrecomputedJob:
    """Blocks of one scale of a precomputed folder for one worker to write (picklable)."""

    folder: str  # the hidden folder being built
    layout: PrecomputedLayout
    scale: int
    blocks: tuple[tuple[slice, slice, slice], ...]
    source: tuple  # the full-resolution pixels, where the workers open them (source_of's form)


def run_precomputed_job(job: PrecomputedJob) -> int:
    """Write a task's blocks in a worker; how many."""
    source = open_source(*job.source) if job.scale == 0 else None  # a level reads the folder itself
    for block in job.blocks:
        write_precomputed_block(Path(job.folder), job.layout, job.scale, block, source)
    return len(job.blocks)


def precomputed_on_workers(
    client: Any, source: tuple, out: str | Path, layout: PrecomputedLayout, *, provenance: dict | None = None,
) -> Generator[Progress, None, Path]:
    """Write the stored image at ``source`` (a 2D image or ZYX volume where the workers open it:
    :func:`~..io.sources.source_of`) as the precomputed folder ``out`` of ``layout``
    (:func:`~..io.precomputed_write.precomputed_layout`) on the workers of ``client``, with
    ``Progress("writing", tasks, total)`` per scale (the folder as the message); the folder."""
    tmp = start_precomputed(out, layout, provenance)
    try:
        for k in range(len(layout.scales)):
            blocks = layout.blocks(k)
            n = min(_TASKS, len(blocks))
            jobs = [PrecomputedJob(str(tmp), layout, k, tuple(blocks[i::n]), tuple(source)) for i in range(n)]
            for ev in run_tasks(client, run_precomputed_job, jobs, name="precomputed", stage="writing"):
                yield Progress(ev.stage, ev.done, ev.total, message=f"{out} (scale {k + 1} of {len(layout.scales)})")
        return finish_precomputed(tmp, out)
    except BaseException:
        _remove_when_idle(tmp)
        raise


def _remove_when_idle(tmp: Path) -> None:
    """Remove the hidden folder; a task already running when the write was cancelled may still
    add a file to it for a moment, so try again briefly."""
    for _ in range(20):
        remove_path(tmp)
        if not tmp.exists():
            return
        time.sleep(0.25)
