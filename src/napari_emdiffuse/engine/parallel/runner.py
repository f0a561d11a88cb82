"""The one dask.distributed runner of the block tasks (2D stacks and volumes): connect to a
local or remote cluster, submit one task per block, report progress, cancel on close; plus
what workers share: a per-process model cache and the input staged where they can read it.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EMDiffuseError
from ..events import Progress
from ..io.common import as_numpy
from ..io.zarr import zarr_major
from ..models.model import EMDiffuseModel
from ..models.registry import DEFAULT_MODELS, load_model

__all__ = ["worker_model", "zarr_location", "stage_input", "model_spec", "connect", "run_tasks"]


# Models loaded in this (worker) process, by spec: loading is the expensive part of a task.
# Long-lived remote workers see a new temporary spec per run of an in-memory model, so
# only the most recent few are kept.
_MODELS: dict[tuple[str, str | None, str], EMDiffuseModel] = {}
_MODELS_MAX = 2


def worker_model(spec: str, arch: str | None, device: str) -> EMDiffuseModel:
    key = (spec, arch, device)
    m = _MODELS.pop(key, None)
    if m is None:
        m = load_model(spec, arch=arch, device=device, cache=False)
    _MODELS[key] = m  # most recently used last
    while len(_MODELS) > _MODELS_MAX:
        del _MODELS[next(iter(_MODELS))]
    return m


def zarr_location(vol: Any) -> tuple[str, str] | None:
    """(store folder, array path) of a zarr array on the local file system, else None."""
    try:
        import zarr
    except ImportError:  # pragma: no cover - zarr is a dependency
        return None
    if not isinstance(vol, zarr.Array):
        return None
    root = getattr(vol.store, "root", None) or getattr(vol.store, "path", None)
    if root is None or not Path(root).is_dir():
        return None
    return str(Path(root).resolve()), str(getattr(vol, "path", "") or "")


def stage_input(vol: Any, where: Path, chunks: tuple[int, int, int]) -> str:
    """Copy an in-memory or dask volume into a zarr store the workers can read, slice by slice."""
    import zarr

    kw: dict[str, Any] = {"zarr_format": 2} if zarr_major() >= 3 else {}
    arr = zarr.open_array(str(where), mode="w-", shape=vol.shape, dtype=np.dtype(vol.dtype), chunks=chunks, **kw)
    for z in range(vol.shape[0]):
        arr[z] = as_numpy(vol[z])
    return str(where)


def model_spec(
    model: Any, loaded: EMDiffuseModel, task: str, arch: str | None, tmp: Path
) -> tuple[str, str | None, bool]:
    """What workers load: (name or path, arch, whether ``tmp`` was written)."""
    if model is None or (isinstance(model, str) and not model.strip()):
        return DEFAULT_MODELS[task], None, False  # each worker finds its own bundled copy
    if isinstance(model, EMDiffuseModel):
        # An in-memory model (maybe changed since loading) travels as a model directory.
        loaded.save(tmp)
        return str(tmp), None, True
    path = Path(model)
    if path.exists():
        return str(path.resolve()), arch, False
    return str(model), arch, False  # a registered name: every worker resolves it itself


def connect(workers: int | None, scheduler: str | None) -> tuple[Any, Any]:
    from distributed import Client, LocalCluster

    if scheduler is not None:
        try:
            return Client(scheduler, timeout="20s"), None
        except (OSError, TimeoutError) as exc:
            raise EMDiffuseError(f"cannot connect to the dask scheduler at '{scheduler}': {exc}") from None
    cluster = LocalCluster(
        n_workers=int(workers or 1),
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )
    try:
        return Client(cluster), cluster
    except BaseException:
        cluster.close()
        raise


def run_tasks(
    fn: Any, jobs: list, *, workers: int | None, scheduler: str | None, name: str
) -> Generator[Progress, None, None]:
    """Submit one task per job to a dask cluster and yield ``block`` progress as they finish.

    A worker's error is raised here. Closing the generator cancels what has not run,
    closes the client and, for ``workers=N``, the local cluster it started. Shared by the
    isotropic and the 2D (``inference.blocks``) block runs.
    """
    from distributed import as_completed

    client, cluster = connect(workers, scheduler)
    futures: list = []
    try:
        token = secrets.token_hex(4)
        futures = [
            client.submit(fn, job, key=f"emdiffuse-{name}-{token}-{n}", pure=False, retries=0)
            for n, job in enumerate(jobs)
        ]
        ac = as_completed(futures)
        done, total, last = 0, len(futures), time.monotonic()
        yield Progress("block", 0, total, message=f"{total} block tasks submitted")
        while not ac.is_empty():
            batch = ac.next_batch(block=False)
            if not batch:
                time.sleep(0.05)
                if time.monotonic() - last > 1.0:  # a chance to cancel while workers are busy
                    last = time.monotonic()
                    yield Progress("block", done, total, message="waiting for workers")
                continue
            for fut in batch:
                fut.result()  # re-raises a worker's error here
                done += 1
            last = time.monotonic()
            yield Progress("block", done, total)
    finally:
        try:
            pending = [f for f in futures if not f.done()]
            if pending:
                client.cancel(pending)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()


