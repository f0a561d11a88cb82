"""Batches of image files: many files (and folders of them) restored into a folder with the
model loaded once, as ``emdiffuse denoise scans/ -o out/`` and the widgets' *files…* buttons do
it, one after another or side by side on a dask cluster (each file one task). Each file is
restored as :mod:`.files` restores one alone.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .engine.errors import InputError
from .engine.events import Progress
from .engine.io.common import PRECOMPUTED_SUFFIX, ZARR_SUFFIX, is_url, suffix_of
from .engine.io.zarrfmt import check_zarr_format
from .files import ISOTROPIC_TASKS, loaded_model, note, progress_only, reconstruct_file_iter, restore_file_iter

__all__ = ["BatchResult", "restore_files_iter", "restore_files", "FileJob", "run_file_job"]


@dataclass
class BatchResult:
    """What :func:`restore_files_iter` did: the results written (and their uncertainties), and
    the inputs skipped, with why."""

    written: list[str] = field(default_factory=list)
    uncertainty: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    total: int = 0


def restore_files_iter(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    task: str,
    model: Any,
    *,
    uncertainty_dir: str | Path | None = None,
    resume: bool = False,
    ext: str | None = None,
    **options: Any,
) -> Generator[Any, None, None]:
    """Restore many files (and folders of them) into ``out_dir``, each as
    :func:`restore_file_iter` would alone, the model loaded once (``model``: a name, a path, a
    loaded model, a callable that loads it, or None for the bundled default). ``task``
    ``isotropic-i`` / ``isotropic-a`` makes each file's volume isotropic as
    :func:`reconstruct_file_iter` does (with its ``factor``, ``default_factor``, ``denoise``;
    ``model`` as a name, path, loaded model or None, the bundled model following each volume's
    factor). ``workers`` (a new local cluster of that many processes, one GPU each) or
    ``scheduler`` (an existing cluster whose workers reach the files) restore the files side by
    side, each file one task, with ``Progress("files", k, n)`` as they finish instead of the
    per-file events. The plan (names, clashes) is
    checked before any work (:func:`~.engine.io.batch.plan_batch`); a file that cannot be read
    is told and skipped. ``ext`` (``.tif``, ``.mrc``, ``.zarr``, ``.ome.zarr``) makes every
    result of that format, else each takes its input's (TIFF or MRC); ``out_dir`` may be a
    folder's URL in an object store, whose results are zarr stores (or, with ``ext``, files
    uploaded whole). ``resume`` leaves out the
    files whose outputs exist (an output appears only when written whole) and continues an
    unfinished zarr output block by block. ``zarr_format`` 3 needs zarr results. Yields
    ``Progress("file", k, n)`` before each file, the files' own events, then a
    :class:`BatchResult`.

    Examples
    --------
    >>> import tempfile, numpy as np, tifffile
    >>> from napari_emdiffuse.engine.events import drain
    >>> d = Path(tempfile.mkdtemp())
    >>> tifffile.imwrite(d / "a.tif", np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    >>> done = drain(restore_files_iter([d / "a.tif"], d / "out", "denoise", "demo-denoise", device="cpu"))
    >>> [Path(p).name for p in done.written], done.skipped
    (['a.tif'], [])
    """
    from .engine.io.batch import expand_inputs, plan_batch
    from .engine.io.stores import is_complete

    zarr_format = check_zarr_format(options.pop("zarr_format", 2))
    workers, scheduler = options.pop("workers", None), options.pop("scheduler", None)
    if workers is not None or scheduler is not None:
        from .engine.parallel.runner import Cluster

        Cluster(workers=workers, scheduler=scheduler)  # refuses what a block run refuses, before any folder
    if zarr_format != 2 and not (ext or "").endswith(ZARR_SUFFIX) and not is_url(str(out_dir)):
        raise InputError(f"--zarr-format {zarr_format} is the format of .zarr results; add --to .zarr (or .ome.zarr) "
                         "for a batch")
    if options.get("chunk_encoding", "raw") != "raw" and ext != PRECOMPUTED_SUFFIX:
        raise InputError(f"{options['chunk_encoding']} chunks are .precomputed outputs'; add --to .precomputed")
    plan = plan_batch(expand_inputs(list(inputs)), out_dir, uncertainty_dir, ext=ext)
    total = len(plan)
    stores = bool(plan) and suffix_of(Path(str(plan[0][1]))) == ZARR_SUFFIX
    if stores:
        options["zarr_format"] = zarr_format
        options["resume"] = resume  # an unfinished store continues block by block
    if resume:  # an output appears when whole (write_results writes the uncertainty first; a store is committed)
        plan = [item for item in plan if not (is_complete(item[1]) if stores else _written(item[1]))]
        yield note(f"resuming: {total - len(plan)} of {total} files were restored by an earlier run; {len(plan)} to do")
    if workers or scheduler:  # each file a task: the workers restore files side by side
        yield (yield from _files_on_workers(plan, out_dir, task, model, workers, scheduler, options))
        return
    loaded: list[Any] = []

    def load() -> Any:
        if not loaded:
            loaded.append(loaded_model(model, task, options.get("arch"), options.get("device")))
        return loaded[0]

    def one(src: Path, out: Path, unc: Path | None) -> Generator[Any, None, None]:
        if task in ISOTROPIC_TASKS:  # the model follows each volume's factor: by name, loaded once per process
            return reconstruct_file_iter(src, out, model, mode=task[-1], uncertainty_out=unc, **options)
        return restore_file_iter(src, out, task, load, uncertainty_out=unc,
                                 **{k: v for k, v in options.items() if k != "arch"})

    done = BatchResult(total=len(plan))
    for k, (src, out, unc) in enumerate(plan):
        yield Progress("file", k, len(plan), message=str(src))
        try:
            wrote = yield from progress_only(one(src, out, unc))
        except (RuntimeError, ValueError, OSError) as exc:  # InputError among them
            why = _why_skipped(exc)
            if why is None:
                raise
            done.skipped.append((str(src), why))
            yield note(f"skipped {src}: {why}")
            continue
        wrote = wrote or []
        done.written.extend(wrote[:1])
        done.uncertainty.extend(w.split(" (")[0] for w in wrote[1:])
        yield note(f"wrote {' and '.join(wrote)}")
    yield Progress("file", len(plan), len(plan))
    yield done


def _written(out: Path | str) -> bool:
    """Whether a TIFF or MRC result is there (it appears only when whole: written atomically,
    or uploaded in one operation by URL)."""
    from .engine.io.fileurl import file_url_exists

    return file_url_exists(out) if is_url(str(out)) else Path(out).exists()


@dataclass(frozen=True)
class FileJob:
    """One file of a batch for a worker (picklable): its input, outputs, task, the model as
    workers load it (a name or path; None: the bundled model for each volume's factor) and
    the options of :func:`restore_file_iter` / :func:`reconstruct_file_iter`."""

    src: str
    out: str
    unc: str | None
    task: str
    model: str | None
    arch: str | None
    options: dict


def run_file_job(job: FileJob) -> tuple[list[str], list[str], str | None]:
    """On a worker: one file of a batch, restored as in one process (the model loads once per
    worker process); returns what was written, the notes, and why the file was skipped (None
    when it was not)."""
    kw = {"uncertainty_out": job.unc, **job.options}
    if job.task in ISOTROPIC_TASKS:
        gen = reconstruct_file_iter(job.src, job.out, job.model, mode=job.task[-1], arch=job.arch, **kw)
    else:
        gen = restore_file_iter(job.src, job.out, job.task, job.model, arch=job.arch, **kw)
    notes: list[str] = []
    wrote: list[str] = []
    try:
        for ev in gen:
            if not isinstance(ev, Progress):
                wrote = ev
            elif ev.stage == "note" and ev.message:
                notes.append(ev.message)
    except (RuntimeError, ValueError, OSError) as exc:  # InputError among them
        why = _why_skipped(exc)
        if why is None:
            raise
        return [], notes, why
    return wrote, notes, None


def _why_skipped(exc: BaseException) -> str | None:
    """Why a file of a batch is skipped (bad input, a damaged chunk: the user's to fix), or
    None for an error that stops the batch."""
    from .engine.io.common import damaged_reason

    return str(exc) if isinstance(exc, InputError) else damaged_reason(exc)


def _files_on_workers(plan: list, out_dir: str | Path, task: str, model: Any, workers: int | None,
                      scheduler: str | None, options: dict) -> Generator[Progress, None, BatchResult]:
    """A batch's files as tasks on a local cluster of ``workers`` processes (one GPU each) or
    the cluster at ``scheduler`` (whose workers must reach the files): ``Progress("files")``
    as they finish, each file's notes, and what was written or skipped."""
    import shutil
    import tempfile

    from .engine.parallel.runner import cluster_client, model_spec, run_tasks

    arch = options.pop("arch", None)
    isotropic = task in ISOTROPIC_TASKS
    done = BatchResult(total=len(plan))
    here = None if is_url(str(out_dir)) else Path(out_dir).expanduser()  # a bucket's: this machine's
    tmp = Path(tempfile.mkdtemp(prefix=".emdiffuse-work-", dir=here))
    try:
        if isotropic and (model is None or (isinstance(model, str) and not model.strip())):
            spec, spec_arch = None, None  # each worker picks the bundled model for each volume's factor
        else:  # loaded here once, on the CPU: a model made for another task is refused before any task
            loaded = loaded_model(model, task, arch, "cpu")
            given = model if isinstance(model, (str, Path)) or model is None else loaded
            spec, spec_arch, _ = model_spec(given, loaded, task, arch, tmp / "model")
        jobs = [FileJob(str(src), str(out), str(unc) if unc is not None else None, task, spec, spec_arch, options)
                for src, out, unc in plan]

        def report(n: int, result: tuple[list[str], list[str], str | None]) -> list[Progress]:
            src, (wrote, notes, why) = plan[n][0], result
            told = [note(f"{Path(src).name}: {text}") for text in notes]
            if why is not None:
                done.skipped.append((str(src), why))
                return [*told, note(f"skipped {src}: {why}")]
            done.written.extend(wrote[:1])
            done.uncertainty.extend(w.split(" (")[0] for w in wrote[1:])
            return [*told, note(f"wrote {' and '.join(wrote)}")]

        where = f"{workers} local workers" if workers else f"the cluster at {scheduler}"
        with cluster_client(workers, scheduler, options.get("device") or "auto") as client:
            yield note(f"{len(plan)} files on {where}, side by side")
            yield from run_tasks(client, run_file_job, jobs, name="files", stage="files", report=report)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return done


def restore_files(inputs: Sequence[str | Path], out_dir: str | Path, task: str, model: Any = None,
                  **options: Any) -> BatchResult:
    """:func:`restore_files_iter` run to its end: the files restored into ``out_dir``, and
    which were skipped and why.

    Examples
    --------
    >>> import napari_emdiffuse as emd
    >>> done = emd.restore_files(["scans/"], "restored/", "denoise", uncertainty_dir="restored/sd")  # doctest: +SKIP
    >>> done.written, done.skipped                                                                    # doctest: +SKIP
    """
    from .engine.events import drain

    return drain(restore_files_iter(inputs, out_dir, task, model, **options))
