"""Writing results: a restoration's image and uncertainty into TIFF, MRC, zarr or neuroglancer
precomputed outputs (:func:`write_results`), in a thread with progress events when it goes piece
by piece or by URL (:func:`writing`), and through a hidden zarr store beside the output when the
result would not fit in memory or dask workers make it (:func:`spill_store`,
:func:`write_spilled`). :mod:`.files` and the command line's ``convert`` write through here.
"""

from __future__ import annotations

import secrets
from collections.abc import Generator
from pathlib import Path
from typing import Any

from .engine.errors import InputError
from .engine.events import Progress
from .engine.io.common import ZARR_SUFFIX, suffix_of

__all__ = [
    "check_chunks", "corner_origin", "keep_spill", "precomputed_on_cluster", "remove_spill", "spill_store",
    "spill_uncertainty", "spilled_writing", "write_results", "write_spilled", "writing",
]


def spill_store(out: Path | str, shape: tuple[int, ...], image: Any, *, uncertainty: bool,
                resume: bool = False, workers: bool = False) -> tuple[Path | None, str | None]:
    """A hidden zarr store beside a TIFF, MRC or precomputed output whose image or stack would
    not fit in memory, or that dask workers write (``workers``: they write zarr stores), from
    which the file is then written piece by piece; and the note saying so; (None, None) where
    the result fits and no workers run. With ``resume`` its name is the output's own
    (``.<name>.resumable.zarr``), so that the next run of the same job finds it: a stopped
    run keeps it, unfinished or finished (:func:`keep_spill`). An output by URL has it in a
    local folder (:func:`~.engine.io.fileurl.staging_dir`: with ``resume``, the same one for
    every run of that URL on this machine)."""
    from .engine.inference.checks import check_fits_in_memory, output_dtype
    from .engine.io.atomic import partial_beside, remove_orphans_beside
    from .engine.io.common import is_url
    from .engine.io.fileurl import staging_dir

    name = str(out).rstrip("/").rsplit("/", 1)[-1] if is_url(str(out)) else Path(out).name
    if suffix_of(Path(name)) == ZARR_SUFFIX or len(shape) not in (2, 3):
        return None, None
    if workers:
        why = "the workers write zarr stores"
    else:
        try:
            check_fits_in_memory(shape, output_dtype(None, image), uncertainty=uncertainty)
            return None, None
        except InputError as exc:
            why = str(exc).split(";")[0]
    folder = staging_dir(str(out), resume=resume) if is_url(str(out)) else Path(out).parent
    where = f"in '{folder}' (a URL's file is written here, then uploaded)" if is_url(str(out)) else f"beside '{name}'"
    if workers and _on_workers(out):
        told = f"note: {why}; it goes through a temporary .zarr {where}, from which they then write it, scale by scale"
    else:
        told = (f"note: {why}; it goes through a temporary .zarr {where}, then into "
                f"{'it' if not is_url(str(out)) else 'the file'}{' slice by slice' if len(shape) == 3 else ''}")
    if resume:
        return folder / f".{name}.resumable.zarr", told + " (kept if the run stops: --resume continues it)"
    if is_url(str(out)):  # its staging folder goes whole
        return folder / f".{name}.partial-{secrets.token_hex(4)}.zarr", told
    remove_orphans_beside(Path(out))  # a killed run's store of this output (and its file's partial)
    return partial_beside(Path(out), ZARR_SUFFIX), told


def write_spilled(out: Path, unc: Path | None, spill: Path, spill_unc: Path | None, data: Any, source: str,
                  attrs: dict, origin: Any = None, progress: Any = None, **encoding: Any) -> list[str]:
    """Write the finished stores of a spilled run (:func:`spill_store`) into the TIFF / MRC /
    precomputed outputs, at ``origin`` (:func:`corner_origin`); ``encoding``: the image's
    chunks (:func:`write_results`)."""
    image, std, meta = _spilled(unc, spill, spill_unc, data, source, attrs)
    return write_results(out, image, unc, std, origin=origin, progress=progress, **meta, **encoding)


def _spilled(unc: Path | None, spill: Path, spill_unc: Path | None, data: Any, source: str,
             attrs: dict) -> tuple[Any, Any, dict]:
    """A spilled run's image and uncertainty (None where none is asked for or written), read
    lazily from their stores, and what :func:`write_results` writes with them."""
    from .engine.inference.provenance import provenance
    from .engine.io.zarr import open_zarr_readonly

    info = {k: v for k, v in attrs.items() if k not in ("normalisation", "spacing", "unit", "origin", "emdiffuse_complete")}
    made = provenance(info, attrs.get("normalisation"), source=source)
    image = open_zarr_readonly(spill)
    std = open_zarr_readonly(spill_unc) if unc is not None and spill_unc is not None and spill_unc.exists() else None
    return image, std, {"spacing": attrs.get("spacing"), "unit": data.unit or "nm", "axes": "ZYX"[-image.ndim:],
                        "made": made}


def spilled_writing(out: Path | str, unc: Path | str | None, spill: Path, spill_unc: Path | None, data: Any,
                    source: str, attrs: dict, *, origin: Any = None, workers: int | None = None,
                    scheduler: str | None = None, **encoding: Any) -> Generator[Progress, None, list[str]]:
    """Write a spilled run's stores into its outputs (:func:`write_spilled`) with progress
    events (:func:`writing`); what was written. When ``workers`` / ``scheduler`` made them, a
    ``.precomputed`` output on a path (not a URL) is written by the cluster's workers
    (:func:`~.engine.parallel.precomputed.precomputed_on_workers`: each scale's blocks side
    by side, where the store lies), a TIFF or MRC here, in one process."""
    if not (workers or scheduler) or not any(_on_workers(o) for o in (out, unc)):
        return (yield from writing(lambda told: write_spilled(out, unc, spill, spill_unc, data, source, attrs,
                                                              origin=origin, progress=told, **encoding),
                                   out, unc, pieces=True))
    from .engine.io.images import write_image
    from .engine.parallel.runner import cluster_client

    image, std, meta = _spilled(unc, spill, spill_unc, data, source, attrs)
    parts = [] if unc is None or std is None else [(unc, std, _uncertainty_made(meta["made"]), {})]
    parts.append((out, image, meta["made"], encoding))
    where = {"spacing": meta["spacing"], "unit": meta["unit"], "origin": origin}
    with cluster_client(workers, scheduler) as client:
        for path, array, made, chunks in parts:
            if _on_workers(path):
                yield from precomputed_on_cluster(client, path, array, made=made, **where, **chunks)
            else:
                yield from writing(lambda told, path=path, array=array, made=made, chunks=chunks: write_image(
                    path, array, axes=meta["axes"], provenance=made, **where, **chunks,
                    progress=None if told is None else (lambda *step: told(path, *step))), path, pieces=True)
    return [str(out)] + ([f"{unc} (uncertainty)"] if len(parts) == 2 else [])


def precomputed_on_cluster(
    client: Any, out: Path | str, array: Any, *, spacing: Any, unit: str, origin: Any, made: dict,
    chunk_encoding: str = "raw", jpeg_quality: int = 90,
) -> Generator[Progress, None, Path]:
    """Write ``array``, a stored image the workers of ``client`` open in place (a zarr, N5,
    HDF5, precomputed or CZI one, a TIFF read page by page, a large file mapped in memory:
    :func:`~.engine.io.sources.source_of`), as the precomputed folder ``out`` on those workers
    (:func:`~.engine.parallel.precomputed.precomputed_on_workers`), with what
    :func:`~.engine.io.images.write_image` writes with it; one line for an image that is not
    stored so."""
    from .engine.io.precomputed_write import precomputed_layout
    from .engine.io.sources import source_of
    from .engine.parallel.precomputed import precomputed_on_workers

    where = source_of(array)
    if where is None:
        raise InputError(f"cannot write '{Path(out).name}' on the workers: they read a zarr, N5, HDF5, precomputed or "
                         "CZI image, a TIFF read page by page or a large file mapped in memory, in place, and this "
                         "one is not stored so; write it in one process")
    layout = precomputed_layout(out, tuple(array.shape), array.dtype, spacing=spacing, unit=unit, origin=origin,
                                encoding=chunk_encoding, jpeg_quality=jpeg_quality)
    return (yield from precomputed_on_workers(client, where, out, layout, provenance=made))


def _on_workers(path: Path | str | None) -> bool:
    """Whether the workers write this output themselves: a .precomputed folder on a path."""
    from .engine.io.common import PRECOMPUTED_SUFFIX, is_url

    return path is not None and not is_url(str(path)) and suffix_of(Path(path)) == PRECOMPUTED_SUFFIX


def _uncertainty_made(made: dict) -> dict:
    """The provenance of a result's uncertainty: the result's, saying what it holds."""
    return {**made, "what": "uncertainty (std, input units)"}


def corner_origin(data: Any, region: Any) -> tuple[float, ...] | None:
    """Where a TIFF or MRC result of input ``data`` (:class:`ImageData`) lies, as ImageJ counts
    it (from pixel corners, so a finer grid starts where its input does): the input's origin
    moved to the ``region``'s first row and column."""
    from .engine.inference.checks import check_region
    from .engine.io.spacing import output_origin

    shape = tuple(data.data.shape)
    start = (0, 0)
    if region is not None:
        ys, xs = check_region(region, shape)
        start = (ys.start, xs.start)
    return output_origin(data.origin, data.spacing, len(shape), start=start)


def write_results(out: Path, image: Any, unc: Path | None, std: Any, *, spacing: Any, unit: str, axes: str | None,
                  made: dict, origin: Any = None, progress: Any = None, chunk_encoding: str = "raw",
                  jpeg_quality: int = 90) -> list[str]:
    """Write a result and, where there is one and it is asked for, its uncertainty (first: a
    result on disk is then whole with its uncertainty, which ``resume`` relies on), at its
    ``origin`` (zarr outputs record it); what was written. ``progress(where, stage, done,
    total)`` while a lazy result is written piece by piece and while a file by URL is
    uploaded (:func:`~.engine.io.images.write_image`; :func:`writing`). ``chunk_encoding`` /
    ``jpeg_quality``: a precomputed image's chunks (its float uncertainty stays raw)."""
    from .engine.io.images import write_image

    def told(where: Any) -> Any:
        return None if progress is None else (lambda stage, done, total: progress(where, stage, done, total))

    wrote = [str(out)]
    if unc is not None and std is not None:
        write_image(unc, std, spacing=spacing, unit=unit, axes=axes, origin=origin, provenance=_uncertainty_made(made),
                    progress=told(unc))
        wrote.append(f"{unc} (uncertainty)")
    write_image(out, image, spacing=spacing, unit=unit, axes=axes, provenance=made, origin=origin, progress=told(out),
                chunk_encoding=chunk_encoding, jpeg_quality=jpeg_quality)
    return wrote


def writing(write: Any, *outs: Any, pieces: bool = False) -> Generator[Progress, None, Any]:
    """Run ``write(progress)`` (:func:`write_results` and the like) and return what it returns;
    where the result goes to a file piece by piece (``pieces``: a result too large for memory,
    read from its store) or one of ``outs`` is a TIFF or MRC by URL, in a thread, with
    ``Progress("writing", slices, total)`` as it is written and ``Progress("upload", sent,
    total)`` (bytes) as it is uploaded, the file as the message. The thread waits at each
    report until the event has been taken, so closing the generator stops the write or the
    upload right there, and nothing is left of that file (:class:`~.engine.io.atomic.WriteStopped`)."""
    import queue
    import threading

    from .engine.io.atomic import WriteStopped
    from .engine.io.fileurl import is_file_url

    if not pieces and not any(o is not None and is_file_url(str(o)) for o in outs):
        return write(None)
    events: queue.SimpleQueue = queue.SimpleQueue()
    taken: queue.SimpleQueue = queue.SimpleQueue()
    stop = threading.Event()
    box: dict[str, Any] = {}

    def progress(where: Any, stage: str, done: int, total: int) -> None:
        events.put(Progress(stage, done, total, message=str(where)))
        taken.get()
        if stop.is_set():
            raise WriteStopped(f"{'upload to' if stage == 'upload' else 'writing'} '{where}' stopped")

    def run() -> None:
        try:
            box["wrote"] = write(progress)
        except BaseException as exc:  # noqa: BLE001 - handed to the generator, raised there
            box["error"] = exc
        finally:
            events.put(None)

    worker = threading.Thread(target=run, name="emdiffuse-write", daemon=True)
    worker.start()
    try:
        while (ev := events.get()) is not None:
            try:
                yield ev
            except BaseException:
                stop.set()
                raise
            finally:
                taken.put(True)
    finally:
        stop.set()
        taken.put(True)  # a report still waiting (the generator closed between two) goes on, and stops
        worker.join()
    if "error" in box:
        raise box["error"]
    return box["wrote"]


def spill_uncertainty(spill: Path) -> Path:
    """The temporary store of a spilled run's uncertainty, beside its image's."""
    stem = spill.name[: -len(ZARR_SUFFIX)]
    return spill.with_name(f"{stem}.uncertainty{ZARR_SUFFIX}")


def keep_spill(resume: bool, finished: bool) -> bool:
    """Whether a spilled run's stores stay: a resumable run that did not finish writing its
    file keeps them for the next run (its blocks, or the whole store to write the file from)."""
    return resume and not finished


def remove_spill(*paths: Path | None) -> None:
    """Remove a spilled run's stores (finished or not), and the local folder of an output by
    URL that held them (:func:`spill_store`)."""
    from .engine.io.atomic import remove_path
    from .engine.io.fileurl import STAGING_PREFIX

    for path in paths:
        if path is not None:
            remove_path(path)
            if path.parent.name.startswith(STAGING_PREFIX):
                try:
                    path.parent.rmdir()
                except OSError:  # the uncertainty's store is still there: removed with it
                    pass


def check_chunks(out: Any, image: Any, chunk_encoding: str, jpeg_quality: int) -> dict[str, Any]:
    """A precomputed output's chunk encoding, checked before any work: JPEG needs a
    ``.precomputed`` output and 8-bit results; the keywords of :func:`write_results`."""
    from .engine.inference.checks import output_dtype
    from .engine.io.precomputed_write import check_encoding

    kind, quality = check_encoding(chunk_encoding, jpeg_quality, out)
    if kind == "jpeg" and (dtype := output_dtype(None, image)) != "uint8":
        raise InputError(f"jpeg chunks hold 8-bit pixels; the result of '{Path(str(out)).name}' would be {dtype}: "
                         "write raw chunks")
    return {"chunk_encoding": kind, "jpeg_quality": quality}
