"""The one dask.distributed runner of the block tasks (2D images, stacks and volumes).

:class:`Cluster` is the :class:`~..inference.blocks.Distribute` that the restoration entry
points take: it connects to a local or remote cluster, stages the input where workers can
read it, submits one :class:`BlockJob` per block of the plan (per lateral block and chunk's
depth of slices, for an input stored in deep chunks: :mod:`~..inference.slabs`), averages a denoised stack along
z on the workers too (:class:`ZFilterJob`, one per column of chunks), reports progress,
commits the output store at the end and cancels on close. Each worker loads the model once (a
per-process cache), runs on its own GPU (a local cluster pins one per worker) and resolves
the sampling options for its own device.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import EMDiffuseError, InputError
from ..events import Progress, drain
from ..io.common import as_numpy
from ..io.fetch import zarr_store
from ..io.sources import open_source, source_of
from ..io.views import cutout
from ..io.zarr import open_zarr_for_block_writes, zarr_major
from ..io.zarrfmt import write_chunks
from ..inference.blocks import (
    BlockPlan, BlockRun, BlockTarget, block_key, pending_jobs, pyramid_note, resume_note, zarr_outputs,
)  # fmt: skip
from ..inference.canvas import SamplingOptions, resolve_options
from ..inference.normalise import NormInfo
from ..inference.restore import Planes, restore_block
from ..inference.slabs import SlabPlanes, chunk_depth, slab_groups
from ..inference.zfilter import WIDTH_KEY, ZFilter, apply_width, chosen_width, lateral_tiles, width_losses
from ..io.ledger import Ledger
from ..io.pyramid import downsample_tiles, level_tiles
from ..inference.volume import reconstruct_block
from ..models.model import EMDiffuseModel
from ..models.registry import DEFAULT_MODELS, load_model

__all__ = [
    "Cluster",
    "BlockJob",
    "run_block_job",
    "worker_model",
    "stage_input",
    "staged",
    "model_spec",
    "connect",
    "scheduler_address",
    "cluster_client",
    "kept_cluster",
    "environment_kept",
    "run_tasks",
    "worker_file_error",
    "ZFilterJob",
    "run_z_filter_job",
    "z_filter_on_workers",
    "PyramidJob",
    "run_pyramid_job",
    "pyramids_on_workers",
]


# Models loaded in this (worker) process, by spec: loading is the expensive part of a task.
# Long-lived remote workers see a new temporary spec per run of an in-memory model, so
# only the most recent few are kept.
_MODELS: dict[tuple[str, str | None, str], EMDiffuseModel] = {}
_MODELS_MAX = 2

# At most this many z filter tasks per pass: each handles every slice of its tiles.
_Z_TASKS = 256


def worker_model(spec: str, arch: str | None, device: str) -> EMDiffuseModel:
    key = (spec, arch, device)
    m = _MODELS.pop(key, None)
    if m is None:
        m = load_model(spec, arch=arch, device=device, cache=False)
    _MODELS[key] = m  # most recently used last
    while len(_MODELS) > _MODELS_MAX:
        del _MODELS[next(iter(_MODELS))]
    return m


def stage_input(vol: Any, where: Path) -> Generator[Progress, None, str]:
    """Copy an in-memory or dask image, stack or volume into a zarr store the workers can
    read, one slice (one chunk) at a time; returns its path. Says so first and yields
    progress per slice (closing the generator stops the copy). Inside a cluster's client
    context a dask input is computed on the cluster."""
    import zarr

    kw: dict[str, Any] = {"zarr_format": 2} if zarr_major() >= 3 else {}
    chunks = (1, *vol.shape[1:]) if vol.ndim == 3 else tuple(vol.shape)
    arr = zarr.open_array(str(where), mode="w-", shape=vol.shape, dtype=np.dtype(vol.dtype), chunks=chunks, **kw)
    n = vol.shape[0] if vol.ndim == 3 else 1
    say = f"copying the input into a zarr store the workers read ({where.parent}, removed at the end)"
    yield Progress("note", 0, 0, message=say)
    if vol.ndim == 3:
        for z in range(n):
            arr[z] = as_numpy(vol[z])
            yield Progress("staging", z + 1, n)
    else:
        arr[...] = as_numpy(vol)
        yield Progress("staging", 1, 1)
    return str(where)


def staged(vol: Any, where: Path, keep: bool) -> Generator[Progress, None, str]:
    """:func:`stage_input`, or with ``keep`` (a resumable run) the copy that an earlier run of
    the same job finished, if there is one (the run's key covers the input)."""
    done = where.with_name(f"{where.name}.staged")
    if keep and done.exists():
        say = f"reading the copy of the input that an earlier run of this job made ({where})"
        yield Progress("note", 0, 0, message=say)
        return str(where)
    shutil.rmtree(where, ignore_errors=True)  # a copy a stop cut short
    path = yield from stage_input(vol, where)
    if keep:
        done.touch()
    return path


def model_spec(
    model: Any, loaded: EMDiffuseModel, task: str, arch: str | None, tmp: Path
) -> tuple[str, str | None, bool]:
    """What workers load: (name or path, arch, whether ``tmp`` was written)."""
    if model is None or (isinstance(model, str) and not model.strip()):
        return DEFAULT_MODELS[task], None, False  # each worker finds its own bundled copy
    if isinstance(model, EMDiffuseModel):
        # An in-memory model (maybe changed since loading) travels as a model directory.
        shutil.rmtree(tmp, ignore_errors=True)  # a resumed run's folder may hold the last run's copy
        loaded.save(tmp)
        return str(tmp), None, True
    path = Path(model)
    if path.exists():
        return str(path.resolve()), arch, False
    return str(model), arch, False  # a registered name: every worker resolves it itself


def gpu_assignment(n_workers: int, device: str, visible: list[str]) -> list[str | None]:
    """The GPU each of ``n_workers`` local workers is pinned to (round robin over the
    ``visible`` ones), or None for all when the run is not on "the" GPU (``cpu``, ``mps``,
    an explicit ``cuda:N``, or no GPU).

    Examples
    --------
    >>> gpu_assignment(3, "auto", ["0", "1"])
    ['0', '1', '0']
    >>> gpu_assignment(2, "cuda:1", ["0", "1"])
    [None, None]
    """
    if device not in ("auto", "cuda") or not visible:
        return [None] * n_workers
    return [visible[i % len(visible)] for i in range(n_workers)]


def _visible_gpus() -> list[str]:
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip()]
    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def _pin_gpu(gpu: str) -> str:
    # Runs in a fresh worker process before CUDA is initialised there: it then sees one GPU.
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    return gpu


# dask starts its workers with glibc's MALLOC_TRIM_THRESHOLD_ set, which also turns off
# glibc's adaptive mmap threshold: every array of a few MB is then mapped afresh and
# page-faulted in. Block tasks ran 1.7x slower on 2 local workers (115 s against 68 s for
# 4 slices of 1024x1024), the z filter 2-4x. A local cluster lives for one run, so its
# workers keep glibc's defaults (unless the variable is set in the environment).
_LOCAL_WORKER_CONFIG = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}


def connect(workers: int | None, scheduler: str | None, device: str = "cpu") -> tuple[Any, Any]:
    """A client of the cluster at ``scheduler`` (an address or a scheduler file:
    :func:`scheduler_address`), or of a new local cluster of ``workers``
    processes (one thread each, each pinned to its own GPU when the run is on the GPU)."""
    import dask
    from distributed import Client, LocalCluster

    if scheduler is not None:
        address = scheduler_address(scheduler)
        try:
            return Client(address, timeout="20s"), None
        except (OSError, TimeoutError) as exc:
            raise EMDiffuseError(f"cannot connect to the dask scheduler at '{address}': {exc}") from None
    n = int(workers or 1)
    with environment_kept(), dask.config.set(_LOCAL_WORKER_CONFIG):
        cluster = LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            # its HTTP server on a free port of this machine only: with None it still takes
            # 8787, and a second run at once (a CLI batch beside napari) warned on stderr
            dashboard_address="127.0.0.1:0",
            # CRITICAL, not ERROR: at shutdown a worker's last heartbeat can race the closing
            # scheduler and log a harmless "Failed to communicate" traceback; a task's own
            # error still reaches the client, which raises it here
            silence_logs=logging.CRITICAL,
        )
    try:
        client = Client(cluster)
        addresses = sorted(client.scheduler_info()["workers"])
        for addr, gpu in zip(addresses, gpu_assignment(len(addresses), device, _visible_gpus())):
            if gpu is not None:
                client.run(_pin_gpu, gpu, workers=[addr])
        return client, cluster
    except BaseException:
        cluster.close()
        raise


def scheduler_address(scheduler: str) -> str:
    """The address of a dask scheduler given as one (``tcp://host:8786``) or as the file it wrote
    as it started (``dask scheduler --scheduler-file sched.json``: the way HPC jobs, dask-mpi
    and dask-jobqueue pass it on, the address unknown until the job runs); one line for a file
    that is missing or holds none.

    Examples
    --------
    >>> scheduler_address("tcp://10.0.0.5:8786")
    'tcp://10.0.0.5:8786'
    >>> scheduler_address("/no/such/sched.json")
    Traceback (most recent call last):
    ...
    napari_emdiffuse.engine.errors.InputError: no dask scheduler file '/no/such/sched.json': start the scheduler with --scheduler-file /no/such/sched.json first, or give its address (tcp://host:8786)
    """
    text = str(scheduler).strip()
    if "://" in text or not (text.lower().endswith(".json") or Path(text).is_file()):
        return text  # an address (a bare host:port too, which dask takes as tcp://)
    path = Path(text).expanduser()
    if not path.is_file():
        raise InputError(f"no dask scheduler file '{text}': start the scheduler with --scheduler-file {text} first, "
                         "or give its address (tcp://host:8786)")
    try:
        address = json.loads(path.read_text()).get("address")
    except (OSError, ValueError, AttributeError):
        address = None
    if not isinstance(address, str) or not address:
        raise InputError(f"'{text}' is not a dask scheduler file: it holds no scheduler address")
    return address


@contextlib.contextmanager
def environment_kept() -> Iterator[None]:
    """Put back, on exit, whatever changed in this process's environment.

    A local cluster's nannies set their workers' variables (OMP_NUM_THREADS=1, ...) in this
    process's own environment before spawning them, at the start and again whenever a worker
    is restarted; left there, they would reach every process started later (a training child
    of the widgets would train on one thread). Only keys that changed are touched: other
    threads may be reading the environment.
    """
    saved = dict(os.environ)
    try:
        yield
    finally:
        for key in set(os.environ) - set(saved):
            del os.environ[key]
        for key, value in saved.items():
            if os.environ.get(key) != value:
                os.environ[key] = value


#: The cluster a run keeps for its passes in this thread (:func:`kept_cluster`).
_KEPT = threading.local()


@contextlib.contextmanager
def kept_cluster(workers: int | None, scheduler: str | None, device: str = "cpu") -> Iterator[Any]:
    """One cluster for every pass of a run in this thread (its blocks, then the writing of its
    file from their store): :func:`cluster_client` for the same ``workers`` or ``scheduler``
    inside the block hands out this client instead of starting a local cluster again (about
    3 s). Closed at the end, as :func:`cluster_client` closes its own."""
    with cluster_client(workers, scheduler, device) as client:
        before = getattr(_KEPT, "cluster", None)
        _KEPT.cluster = (workers, scheduler, client)
        try:
            yield client
        finally:
            _KEPT.cluster = before


@contextlib.contextmanager
def cluster_client(workers: int | None, scheduler: str | None, device: str = "cpu") -> Iterator[Any]:
    """A client (:func:`connect`) for the length of a run; closed at its end, with the local
    cluster it started, and this process's environment as it was before (a worker restarted
    during the run sets its variables here again). Inside :func:`kept_cluster` for the same
    cluster, that one's client (left open)."""
    kept = getattr(_KEPT, "cluster", None)
    if kept is not None and kept[:2] == (workers, scheduler) and kept[2].status == "running":
        yield kept[2]
        return
    with environment_kept():
        client, cluster = connect(workers, scheduler, device)
        try:
            yield client
        finally:
            client.close()
            if cluster is not None:
                cluster.close()


def run_tasks(
    client: Any, fn: Any, jobs: list, *, name: str, stage: str = "block",
    report: Callable[[int, Any], Iterable[Progress]] | None = None,
) -> Generator[Progress, None, list]:
    """Submit one task per job to the cluster of ``client``, yield ``stage`` progress as they
    finish and return their results in the jobs' order. ``report(n, result)``: the events to
    yield as job ``n`` finishes, before its progress (what a batch of files says of each).

    A worker's error is raised here. Closing the generator cancels what has not run. Shared
    by every pass of a :class:`Cluster` run (the blocks, then the z filter's) and by a batch
    of files on workers.
    """
    from distributed import as_completed

    futures: list = []
    try:
        token = secrets.token_hex(4)
        futures = [
            client.submit(fn, job, key=f"emdiffuse-{name}-{token}-{n}", pure=False, retries=0)
            for n, job in enumerate(jobs)
        ]
        index = {f.key: n for n, f in enumerate(futures)}
        ac = as_completed(futures)
        done, total, last = 0, len(futures), time.monotonic()
        yield Progress(stage, 0, total, message=f"{total} tasks submitted")
        while not ac.is_empty():
            batch = ac.next_batch(block=False)
            if not batch:
                time.sleep(0.05)
                if time.monotonic() - last > 1.0:  # a chance to cancel while workers are busy
                    last = time.monotonic()
                    yield Progress(stage, done, total, message="waiting for workers")
                continue
            for fut in batch:
                try:
                    result = fut.result()  # re-raises a worker's error here
                except (FileNotFoundError, PermissionError) as exc:  # a path the worker cannot reach or write
                    raise EMDiffuseError(worker_file_error(exc, remote=getattr(client, "cluster", None) is None)) from None
                done += 1
                if report is not None:
                    yield from report(index[fut.key], result)
            last = time.monotonic()
            yield Progress(stage, done, total)
        return [f.result() for f in futures]
    finally:
        pending = [f for f in futures if not f.done()]
        if pending:
            client.cancel(pending)


def worker_file_error(exc: OSError, *, remote: bool) -> str:
    """One line for a file a worker could not open or write: on a running cluster (``remote``)
    most often a path this machine has and the workers' machines do not.

    Examples
    --------
    >>> worker_file_error(FileNotFoundError(2, "No such file or directory", "/scratch/in.zarr"), remote=True)
    "a worker could not open '/scratch/in.zarr' (No such file or directory): the cluster's workers must reach the input, the output and the model at the paths given here (shared storage)"
    """
    what = f"'{exc.filename}' ({exc.strerror})" if exc.filename else f"a file ({exc})"
    if isinstance(exc, PermissionError):
        hint = ("the cluster's workers (which may run as another user) must be allowed to read the input and the "
                "model and to write beside the output" if remote else "check the output folder's permissions")
        return f"a worker could not use {what}: {hint}"
    hint = ("the cluster's workers must reach the input, the output and the model at the paths given here (shared "
            "storage)" if remote else "was it moved or removed while the run went on?")
    return f"a worker could not open {what}: {hint}"


@dataclass(frozen=True)
class BlockJob:
    """Everything a worker needs for one task (picklable): one block, or the blocks of one
    lateral window over a chunk's depth of slices, which read their input as one slab."""

    kind: str  # "restore" (2D planes) or "isotropic" (a gap of a volume)
    model: str
    arch: str | None
    device: str
    src: str
    src_key: str
    dst: str
    unc: str | None
    plan: BlockPlan
    blocks: tuple[tuple[int, int, int], ...]
    norm: NormInfo
    request: dict  # the user's sampling choices, resolved on the worker for its device
    tile: int  # the plan's tile and overlap: fixed on the client, they shape the blocks
    overlap: int
    dtype: str
    measured_unc: str | None = None  # zarr store: uncertainty of the measured slices
    ledger: Ledger = Ledger()  # a resumable run's: the block is marked once written
    src_axes: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())  # indices taken on the input's first axes (T, C), last (C)
    offset: tuple[int, int] = (0, 0)  # where the input lies in a larger image (a region's context): the noise's place


def worker_options(m: EMDiffuseModel, job: BlockJob) -> SamplingOptions:
    """Options for the worker's own device (batch, precision), with the plan's tiling."""
    return resolve_options(m, m.device, **{**job.request, "tile": job.tile, "overlap": job.overlap})


def run_block_job(job: BlockJob) -> tuple[tuple[int, int, int], ...]:
    """Run one task in a worker: read its input, restore its blocks, write them into the
    shared store (each marked in a resumable run's ledger as it is written)."""
    m = worker_model(job.model, job.arch, job.device)
    src = open_source(job.src, job.src_key, *job.src_axes)
    planes = SlabPlanes(src) if job.kind == "isotropic" else Planes(src)  # a slab read once for all its blocks
    run = reconstruct_block if job.kind == "isotropic" else restore_block
    unc = open_zarr_for_block_writes(job.unc) if job.unc else None
    measured = open_source(job.measured_unc) if job.measured_unc else None
    target = BlockTarget(
        job.norm, worker_options(m, job), m.device, np.dtype(job.dtype), open_zarr_for_block_writes(job.dst), unc,
        measured, offset=job.offset,
    )  # fmt: skip
    for block in job.blocks:
        drain(run(m, planes, job.plan, block, target))
        job.ledger.mark(block_key(job.plan, block))
    return job.blocks


@dataclass(frozen=True)
class ZFilterJob:
    """One tile column of a restored stack, averaged along z by a worker (picklable): with
    ``width`` None it scores ``widths`` (:func:`~..inference.zfilter.width_losses`), else it
    filters the tile in place (:func:`~..inference.zfilter.apply_width`)."""

    src: str
    src_key: str
    dst: str
    unc: str | None
    tiles: tuple
    fill: float | None
    widths: tuple[float, ...] = ()
    width: float | None = None
    ledger: Ledger = Ledger()  # a resumable run's: tiles filtered already are skipped
    src_axes: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())  # as BlockJob's
    region: tuple[int, int, int, int] | None = None  # the input's rows and columns the output holds


def run_z_filter_job(job: ZFilterJob) -> np.ndarray | None:
    """Score or filter one task's tiles in the shared stores; tiles are whole chunk columns,
    so no two tasks write one chunk."""
    src = open_source(job.src, job.src_key, *job.src_axes)
    src = cutout(src, region=job.region) if job.region is not None else src
    dst = open_zarr_for_block_writes(job.dst)
    tiles = list(job.tiles)
    if job.width is None:
        return drain(width_losses(dst, src, job.widths, fill=job.fill, tiles=tiles))
    unc = open_zarr_for_block_writes(job.unc) if job.unc else None
    drain(apply_width(dst, unc, src, job.width, fill=job.fill, tiles=tiles, ledger=job.ledger))
    return None


def z_filter_on_workers(
    client: Any, plan: ZFilter, base: ZFilterJob, shape: tuple[int, ...], chunks: tuple[int, ...]
) -> Generator[Progress, None, float]:
    """Average a finished stack along z on the workers: each scores its tiles, the client
    adds the scores and picks the width, then each filters its tiles. Returns the width. A
    resumable run (``base.ledger``) keeps the width and skips the tiles an earlier run
    filtered."""
    yield Progress("note", 0, 0, message=plan.note)
    tiles = lateral_tiles(shape, chunks)
    groups = [tuple(tiles[i::_Z_TASKS]) for i in range(min(_Z_TASKS, len(tiles)))]
    width = chosen_width(base.ledger)
    if width is None:
        width = plan.widths[0]
        if len(plan.widths) > 1:
            jobs = [replace(base, tiles=g, widths=plan.widths) for g in groups]
            stage = "z filter: choosing its width"
            losses = yield from run_tasks(client, run_z_filter_job, jobs, name="zscore", stage=stage)
            width = plan.widths[int(np.argmin(np.sum(losses, axis=0)))]
        base.ledger.write(WIDTH_KEY, repr(float(width)))
    jobs = [replace(base, tiles=g, width=width) for g in groups]
    yield from run_tasks(client, run_z_filter_job, jobs, name="zfilter", stage="z filter")
    return width


@dataclass(frozen=True)
class PyramidJob:
    """Columns of chunks of one pyramid level, each the 2x2 (2x2x2 with ``zdown``) mean of
    the level above (picklable)."""

    src: str
    dst: str
    tiles: tuple
    zdown: bool = False


def run_pyramid_job(job: PyramidJob) -> None:
    """Write one task's columns of a pyramid level in a worker."""
    import zarr

    src, dst = zarr.open_array(zarr_store(job.src), mode="r"), open_zarr_for_block_writes(job.dst)
    drain(downsample_tiles(src, dst, list(job.tiles), zdown=job.zdown))


def pyramids_on_workers(client: Any, writers: tuple) -> Generator[Progress, None, None]:
    """Write the pyramid of each OME-Zarr output among ``writers`` on the workers, level by
    level (a level reads the one above it), columns of chunks spread over the tasks."""
    import zarr

    for w in (yield from pyramid_note(writers)):
        for above, path, zdown in w.pyramid_levels():
            level = zarr.open_array(zarr_store(str(path)), mode="r")
            tiles = level_tiles(level.shape, write_chunks(level))  # shards: never shared
            groups = [tuple(tiles[i::_Z_TASKS]) for i in range(min(_Z_TASKS, len(tiles)))]
            jobs = [PyramidJob(str(above), str(path), g, zdown) for g in groups]
            yield from run_tasks(client, run_pyramid_job, jobs, name="pyramid", stage="pyramid")
        w.pyramid_built = True


@dataclass(frozen=True)
class Cluster:
    """Where block tasks run: a new local cluster of ``workers`` processes, or an existing
    one at ``scheduler`` (``tcp://host:port``, or the file its scheduler wrote:
    :func:`scheduler_address`; the input, the output and the model must then be on storage
    its workers reach). Pass it as ``distribute=`` to the restoration
    entry points; the result is the same as in one process.

    Examples
    --------
    >>> Cluster(workers=2)
    Cluster(workers=2, scheduler=None)
    >>> Cluster(workers=2, scheduler="tcp://h:8786")
    Traceback (most recent call last):
    ...
    napari_emdiffuse.engine.errors.InputError: pass either workers= (a local cluster) or scheduler= (an existing one), not both
    """

    workers: int | None = None
    scheduler: str | None = None

    def __post_init__(self) -> None:
        workers, scheduler = self.workers, self.scheduler
        if workers is not None and scheduler is not None:
            raise InputError("pass either workers= (a local cluster) or scheduler= (an existing one), not both")
        if workers is not None and (
            isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1
        ):
            raise InputError(f"workers must be a positive whole number, got {workers!r}")
        if scheduler is not None and (not isinstance(scheduler, str) or not scheduler.strip()):
            raise InputError(f"scheduler must be an address such as 'tcp://host:8786', got {scheduler!r}")
        if scheduler is not None:
            scheduler_address(scheduler)  # a scheduler file that is missing or holds no address: before any work
        if workers is None and scheduler is None:
            raise InputError("a cluster needs workers= (a local cluster) or scheduler= (an existing one)")

    def __call__(self, run: BlockRun) -> Generator[Progress, None, None]:
        """Run every block of ``run.plan``; commit its output stores when all have finished."""
        out, plan, writer_kw, key = run.out, run.plan, run.writer_kw, run.resume_key
        if isinstance(out, str):  # a store by URL: the work folder (a staged input, a model) is this machine's
            if self.scheduler is not None and (source_of(run.image) is None or isinstance(run.model, EMDiffuseModel)):
                raise InputError(f"cannot write '{out}' from the cluster at {self.scheduler}: its workers read the "
                                 "input and the model where they are; give a stored input and a model name or path")
            tmp = Path(tempfile.mkdtemp(prefix=".emdiffuse-work-")) if key is None else \
                Path(tempfile.gettempdir()) / f".emdiffuse-work-{key[:16]}-resumable"
            tmp.mkdir(exist_ok=True)
        elif key is None:
            tmp = Path(tempfile.mkdtemp(prefix=f".{out.name.lstrip('.')}.work-", dir=out.parent))
        else:  # a resumable run's copy of the input is kept for the next run of the same job
            tmp = out.parent / f".{out.name.lstrip('.')}.work-{key[:16]}-resumable"
            tmp.mkdir(exist_ok=True)
        finished = False
        try:
            with zarr_outputs(out, run.unc_out, plan.out_shape, run.dtype, resume_key=run.resume_key, **writer_kw) \
                    as (wr, unc_wr), cluster_client(self.workers, self.scheduler, run.device) as client:  # fmt: skip
                yield from resume_note(wr, plan)
                copy = tmp / "input.zarr"
                loc = source_of(run.image) or ((yield from staged(run.image, copy, key is not None)), "", (), ())
                model = run.model
                loaded = model if isinstance(model, EMDiffuseModel) else load_model(model, task=run.task, arch=run.arch, device="cpu")
                spec, spec_arch, _ = model_spec(model, loaded, run.task, run.arch, tmp / "model")
                kind = "isotropic" if plan.factor > 1 else "restore"
                jobs = [
                    BlockJob(
                        kind, spec, spec_arch, run.device, loc[0], loc[1], str(wr.array_path),
                        str(unc_wr.array_path) if unc_wr is not None else None, plan, blocks, run.norm, run.request,
                        run.opts.tile, run.opts.overlap, run.dtype.str,
                        str(run.measured_unc) if run.measured_unc is not None else None, wr.ledger, loc[2:],
                        run.offset,
                    )  # fmt: skip
                    for blocks in slab_groups(pending_jobs(plan, wr.ledger), chunk_depth(run.image))
                ]
                yield from run_tasks(client, run_block_job, jobs, name=kind)
                if run.z_filter is not None:  # after every block: it reads across the workers' slices
                    base = ZFilterJob(
                        loc[0], loc[1], str(wr.array_path), str(unc_wr.array_path) if unc_wr is not None else None,
                        (), run.norm.fill, ledger=wr.ledger, src_axes=loc[2:], region=run.region,
                    )  # fmt: skip
                    wr.array.attrs["z_filter"] = yield from z_filter_on_workers(
                        client, run.z_filter, base, plan.out_shape, plan.chunks
                    )
                yield from pyramids_on_workers(client, (wr, unc_wr))
            finished = True
        finally:
            if finished or key is None:
                shutil.rmtree(tmp, ignore_errors=True)
