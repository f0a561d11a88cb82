"""Restoring image files: read, restore, write, as the ``emdiffuse`` command and the Restore and
Isotropic widgets' *files…* buttons do it (one file, or many with the model loaded once):
denoising and super-resolution (:func:`restore_file_iter`), isotropic reconstruction of volumes
(:func:`reconstruct_file_iter`), and batches of either (:func:`restore_files_iter`).

What is worth telling on the way (a file's note, the fill value kept, the acquisition blur read
off the image, a result that goes through a temporary store) comes as ``Progress("note", ...)``
events; the command prints them, the widget shows them. A result too large for memory bound for
a TIFF or MRC goes through a hidden zarr store beside the output, written block by block, then
into the file slice by slice (a 2D image: tile by tile), so such an output needs disk, not memory.
"""

from __future__ import annotations

import secrets
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .engine.errors import InputError
from .engine.events import Progress
from .engine.io.common import ZARR_SUFFIX, is_url, suffix_of
from .engine.io.zarrfmt import check_zarr_format

__all__ = [
    "BatchResult", "note", "read_input", "fill_notes", "blur_note", "spill_store", "write_spilled", "remove_spill",
    "restore_file_iter", "reconstruct_file_iter", "restore_files_iter", "restore_files", "ISOTROPIC_TASKS",
    "FileJob", "run_file_job", "write_results",
]

#: The tasks :func:`restore_files_iter` runs through :func:`reconstruct_file_iter` (volumes).
ISOTROPIC_TASKS = ("isotropic-i", "isotropic-a")


def note(text: str) -> Progress:
    """An event that carries a line to tell the user."""
    return Progress("note", 0, 0, message=text)


@dataclass
class BatchResult:
    """What :func:`restore_files_iter` did: the results written (and their uncertainties), and
    the inputs skipped, with why."""

    written: list[str] = field(default_factory=list)
    uncertainty: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    total: int = 0


def read_input(path: str | Path, *, channel: int | None = None, time: int | None = None,
               voxel_size: Sequence[float] | None = None) -> tuple[Any, list[str]]:
    """The image as :func:`~.engine.io.images.read_image` reads it, with ``voxel_size`` (nm; one
    value for both axes of a 2D image) in place of the pixel size it records; and the notes
    to tell (the file's own, a replaced pixel size)."""
    from .engine.io.images import read_image

    data = read_image(path, channel=channel, time=time)
    notes = [f"note: {data.note}"] if data.note else []
    if voxel_size:
        ndim = data.data.ndim
        values = tuple(float(v) for v in (list(voxel_size) * 2 if len(voxel_size) == 1 and ndim == 2 else voxel_size))
        if len(values) != ndim:
            raise InputError(f"--voxel-size gives {len(voxel_size)} value{'s' * (len(voxel_size) > 1)} for '{path}', "
                             f"a {ndim}-D image; give {'z y x' if ndim == 3 else 'y x'} in nm")
        if data.spacing is not None and data.unit == "nm" and tuple(data.spacing) != values:
            old = " x ".join(f"{v:g}" for v in data.spacing)
            notes.append(f"note: --voxel-size replaces the file's {old} nm")
        data.spacing, data.unit, data.source = values, "nm", "--voxel-size"
    return data, notes


def fill_notes(normalisation: dict | None) -> list[str]:
    """What a result kept as no data: a fill value, NaN pixels."""
    notes = []
    fill = (normalisation or {}).get("fill")
    if fill is not None:
        notes.append(f"note: regions of value {fill:g} are taken as fill (no data) and kept as they are")
    if (normalisation or {}).get("nan"):
        notes.append("note: NaN pixels are taken as no data and kept as NaN (0 in integer outputs)")
    return notes


def blur_note(info: dict) -> list[str]:
    """The acquisition blur a super-resolution used, and where it came from."""
    if info.get("blur") is None:
        return []
    source = info.get("blur_source", "given")
    hint = "; give --blur if you know it" if source == "read off the image" else ""
    return [f"acquisition blur {info['blur']:g} px ({source}){hint}"]


def spill_store(out: Path, shape: tuple[int, ...], image: Any, *, uncertainty: bool) -> tuple[Path | None, str | None]:
    """A hidden zarr store beside a TIFF or MRC output whose image or stack would not fit in
    memory (the file is then written from it piece by piece), and the note saying so; (None,
    None) where the result fits."""
    from .engine.inference.checks import check_fits_in_memory, output_dtype

    if suffix_of(out) == ZARR_SUFFIX or len(shape) not in (2, 3):
        return None, None
    try:
        check_fits_in_memory(shape, output_dtype(None, image), uncertainty=uncertainty)
        return None, None
    except InputError as exc:
        told = (f"note: {str(exc).split(';')[0]}; it goes through a temporary .zarr beside '{out.name}', then into "
                f"it{' slice by slice' if len(shape) == 3 else ''}")
        return out.with_name(f".{out.name}.partial-{secrets.token_hex(4)}.zarr"), told


def write_spilled(out: Path, unc: Path | None, spill: Path, spill_unc: Path | None, data: Any, source: str,
                  attrs: dict, origin: Any = None) -> list[str]:
    """Write the finished stores of a spilled run (:func:`spill_store`) into the TIFF / MRC
    outputs, at ``origin`` (:func:`corner_origin`)."""
    from .engine.inference.provenance import provenance
    from .engine.io.zarr import open_zarr_readonly

    info = {k: v for k, v in attrs.items() if k not in ("normalisation", "spacing", "unit", "origin", "emdiffuse_complete")}
    made = provenance(info, attrs.get("normalisation"), source=source)
    spacing, unit = attrs.get("spacing"), data.unit or "nm"
    image = open_zarr_readonly(spill)
    axes = "ZYX"[-image.ndim:]
    std = open_zarr_readonly(spill_unc) if unc is not None and spill_unc is not None and spill_unc.exists() else None
    return write_results(out, image, unc, std, spacing=spacing, unit=unit, axes=axes, made=made, origin=origin)


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
                  made: dict, origin: Any = None) -> list[str]:
    """Write a result and, where there is one and it is asked for, its uncertainty (first: a
    result on disk is then whole with its uncertainty, which ``resume`` relies on), at its
    ``origin`` (zarr outputs record it); what was written."""
    from .engine.io.images import write_image

    wrote = [str(out)]
    if unc is not None and std is not None:
        write_image(unc, std, spacing=spacing, unit=unit, axes=axes, origin=origin,
                    provenance={**made, "what": "uncertainty (std, input units)"})
        wrote.append(f"{unc} (uncertainty)")
    write_image(out, image, spacing=spacing, unit=unit, axes=axes, provenance=made, origin=origin)
    return wrote


def remove_spill(*paths: Path | None) -> None:
    """Remove a spilled run's stores (finished or not)."""
    from .engine.io.atomic import remove_path

    for path in paths:
        if path is not None:
            remove_path(path)


def _loaded(model: Any, task: str, arch: str | None, device: str | None) -> Any:
    """The model to restore with: ``model`` itself when loaded, what a callable returns, else
    loaded by name or path (None: the bundled default for ``task``)."""
    if hasattr(model, "card"):
        return model
    if callable(model):
        return model()
    from .engine.models.device import resolve_device
    from .engine.models.registry import load_model

    return load_model(model, task=task, arch=arch, device=resolve_device(device or "auto"))


def _progress_only(gen: Generator) -> Generator[Progress, None, Any]:
    """Re-yield an engine generator's events; return its result (its last other item)."""
    result = None
    for item in gen:
        if isinstance(item, Progress):
            yield item
        else:
            result = item
    return result


def _place(where: Any) -> Any:
    """An output's place: a URL as a string (a ``.zarr`` store by URL), else a path."""
    from .engine.inference.blocks import output_place

    return output_place(where)


def _zarr_output(out: Any, unc: Any, distributed: Any, resume: bool, zarr_format: int = 2) -> bool:
    """Whether ``out`` is a zarr store; refuses what needs one (a cluster, resuming; any input:
    one that is not zarr is staged for the workers) when it is not, and a non-zarr uncertainty
    beside it."""
    out, unc = Path(str(out)), Path(str(unc)) if unc is not None else None  # names only: a URL's too
    zarr_out = suffix_of(out) == ZARR_SUFFIX
    if distributed and not zarr_out:
        raise InputError("--workers/--scheduler need a .zarr output")
    if resume and not zarr_out:
        raise InputError("--resume continues an unfinished .zarr output; give a .zarr output")
    if check_zarr_format(zarr_format) != 2 and not zarr_out:
        raise InputError(f"--zarr-format {zarr_format} sets the format of a .zarr output; '{out.name}' is not one")
    if zarr_out and unc is not None and suffix_of(unc) != ZARR_SUFFIX:
        raise InputError("with a .zarr output, give the uncertainty output as .zarr too")
    return zarr_out


def _told_first(event: Progress, gen: Generator) -> Generator[Any, None, Any]:
    """``gen``'s items, ``event`` before the first: said once the engine has accepted the job
    (a refused one is told in its one line alone)."""
    first = True
    for item in gen:
        if first:
            first = False
            yield event
        yield item


def restore_file_iter(
    src: str | Path,
    out: str | Path,
    task: str,
    model: Any,
    *,
    uncertainty_out: str | Path | None = None,
    channel: int | None = None,
    time: int | None = None,
    voxel_size: Sequence[float] | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    model_ref: str | None = None,
    arch: str | None = None,
    resume: bool = False,
    zarr_format: int = 2,
    **sampling: Any,
) -> Generator[Any, None, None]:
    """Denoise or super-resolve the image file ``src`` into ``out`` (``.tif``, ``.mrc`` or
    ``.zarr``; with ``uncertainty_out`` its uncertainty too), with its pixel size and how it
    was made. Yields progress and note events, then the list of what was written.

    ``model``: a loaded model, a callable that loads it, a name or path, or None (the bundled
    default), loaded once the input has been read and checked (a bad input is refused before
    any model loads). ``workers`` / ``scheduler``
    (a ``.zarr`` output only) hand the cluster ``model_ref`` (its name or path) and ``arch``;
    ``resume`` continues an unfinished ``.zarr`` output, ``zarr_format`` (2 or 3) is its format.
    The rest are the sampling options of :func:`~napari_emdiffuse.api.restore`.

    Raises
    ------
    InputError
        An unreadable or unsuitable input, or options that do not fit the output; nothing is
        written then.
    """
    from .api import restore_iter, restore_to_zarr_iter
    from .engine.inference.checks import check_region, pixel_size_note, validate_image
    from .engine.inference.provenance import provenance
    from .engine.io.views import check_one_channel
    from .engine.io.zarr import open_zarr_readonly

    out, unc = _place(out), _place(uncertainty_out)
    data, notes = read_input(src, channel=channel, time=time, voxel_size=voxel_size)
    for text in notes:
        yield note(text)
    check_one_channel(tuple(data.data.shape), data.axes, str(src))
    validate_image(data.data)
    zarr_out = _zarr_output(out, unc, workers or scheduler, resume, zarr_format)
    distributed = bool(workers or scheduler)
    model = _loaded(model, task, arch, sampling.get("device"))
    if (fine := pixel_size_note(model.card, data.spacing, data.unit)) is not None:
        yield note(f"note: {fine}")
    if zarr_out:
        # Workers load the model themselves: hand them its name or path, not this process's copy.
        yield from _progress_only(restore_to_zarr_iter(
            data.data, out, task, model_ref if distributed else model, uncertainty_out=unc, spacing=data.spacing,
            origin=data.origin, workers=workers, scheduler=scheduler, arch=arch if distributed else None, resume=resume,
            zarr_format=zarr_format, **sampling,
        ))
        attrs = dict(open_zarr_readonly(out).attrs)
        for text in fill_notes(attrs.get("normalisation")) + blur_note(attrs):
            yield note(text)
        yield [str(out)]
        return
    s = model.card.scale if task == "super-resolve" else 1
    if sampling.get("region") is not None:  # in memory (a zarr output refused it above)
        ys, xs = check_region(sampling["region"], tuple(data.data.shape))
        hw = (ys.stop - ys.start, xs.stop - xs.start)
    else:
        hw = tuple(data.data.shape[-2:])
    spill, told = spill_store(out, (*data.data.shape[:-2], hw[0] * s, hw[1] * s), data.data, uncertainty=unc is not None)
    if spill is not None:  # too large for memory: through a store beside the output
        yield note(told)
        spill_unc = spill.with_name(spill.name.replace(".partial-", ".uncertainty.partial-")) if unc else None
        try:
            yield from _progress_only(restore_to_zarr_iter(data.data, spill, task, model, uncertainty_out=spill_unc,
                                                           spacing=data.spacing, **sampling))
            attrs = dict(open_zarr_readonly(spill).attrs)
            for text in fill_notes(attrs.get("normalisation")):
                yield note(text)
            yield write_spilled(out, unc, spill, spill_unc, data, str(src), attrs,
                                origin=corner_origin(data, sampling.get("region")))
        finally:
            remove_spill(spill, spill_unc)
        return
    result = yield from _progress_only(restore_iter(data.data, task, model, spacing=data.spacing, origin=data.origin,
                                                    uncertainty=unc is not None, **sampling))
    if result is None:  # pragma: no cover - the generator always ends with a result
        raise RuntimeError("restoration ended without a result")
    for text in fill_notes(result.normalisation) + blur_note(result.info):
        yield note(text)
    axes = data.axes if data.axes and len(data.axes) == result.mean.ndim else None
    made = provenance(result.info, result.normalisation, source=str(src))
    if unc is not None and result.uncertainty is None:
        yield note("note: one sample gives no uncertainty; use --samples 2 or more")
    yield write_results(out, result.mean, unc, result.uncertainty, spacing=result.spacing, unit=data.unit or "nm",
                        axes=axes, made=made, origin=corner_origin(data, sampling.get("region")))


def reconstruct_file_iter(
    src: str | Path,
    out: str | Path,
    model: Any = None,
    *,
    factor: int | None = None,
    default_factor: int | None = None,
    mode: str = "i",
    uncertainty_out: str | Path | None = None,
    channel: int | None = None,
    time: int | None = None,
    voxel_size: Sequence[float] | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    denoise: Any = None,
    resume: bool = False,
    zarr_format: int = 2,
    **sampling: Any,
) -> Generator[Any, None, None]:
    """Make the anisotropic volume in file ``src`` isotropic into ``out`` (``.tif``, ``.mrc`` or
    ``.zarr``; with ``uncertainty_out`` its uncertainty too), with its voxel size and how it was
    made. Yields progress and note events, then the list of what was written.

    ``factor``: how many times finer z becomes; None takes it from the file's voxel size, or
    ``default_factor`` for a file that records none (a batch of calibrated and uncalibrated
    volumes). ``model``: a name, a path, a loaded model or None (the bundled model for the
    factor; models load once per process). A result too large for memory bound for a TIFF or
    MRC goes through a hidden store beside it (:func:`spill_store`). ``workers`` /
    ``scheduler`` / ``resume`` / ``zarr_format`` 3 need a ``.zarr`` output; the rest are the options of
    :func:`~napari_emdiffuse.api.reconstruct_isotropic`.

    Raises
    ------
    InputError
        Not a single-channel 3D volume, no factor and no voxel size, or options that do not
        fit the output; nothing is written then.
    """
    from .api import reconstruct_isotropic_iter
    from .engine.inference.checks import check_region
    from .engine.inference.provenance import provenance
    from .engine.io.spacing import factor_from_spacing
    from .engine.io.views import check_one_channel

    out, unc = _place(out), _place(uncertainty_out)
    data, notes = read_input(src, channel=channel, time=time, voxel_size=voxel_size)
    for text in notes:
        yield note(text)
    check_one_channel(tuple(data.data.shape), data.axes, str(src))
    if data.data.ndim != 3:
        more = ("; several channels or time points? read one with --channel/--time" if data.data.ndim > 3 else
                "; a folder of 2D slices is one volume when the output is a file")
        raise InputError(f"isotropic reconstruction needs a 3D (ZYX) volume; '{src}' has {data.data.ndim} dimensions{more}")
    if factor is None and data.spacing is None:
        if default_factor is None:
            raise InputError(f"'{src}' does not say its voxel size; give the z / xy spacing ratio with --factor F")
        factor = default_factor
        yield note(f"note: '{Path(src).name}' does not say its voxel size; factor {factor} as given")
    f = int(factor) if factor is not None else factor_from_spacing(data.spacing)
    zarr_out = _zarr_output(out, unc, workers or scheduler, resume, zarr_format)
    store, store_unc = (out, unc) if zarr_out else (None, None)
    if not zarr_out:  # a volume too large for memory: through a store beside the output
        z, y, x = data.data.shape
        if sampling.get("region") is not None:  # in memory, the region's size
            ys, xs = check_region(sampling["region"], (y, x))
            y, x = ys.stop - ys.start, xs.stop - xs.start
        store, told = spill_store(out, ((z - 1) * f + 1, y, x), data.data, uncertainty=unc is not None)
        if store is not None:
            yield note(told)
            store_unc = store.with_name(store.name.replace(".partial-", ".uncertainty.partial-")) if unc else None
    spilled = store is not None and not zarr_out
    try:
        z = data.data.shape[0]
        told = note(f"factor {f}{'' if factor is not None else ' (from the voxel size)'}: {z} slices become {(z - 1) * f + 1}")
        result = yield from _progress_only(_told_first(told, reconstruct_isotropic_iter(
            data.data, f, model, mode=mode, spacing=data.spacing, origin=data.origin, out=store,
            uncertainty=str(store_unc) if store is not None and store_unc is not None else unc is not None,
            workers=workers, scheduler=scheduler, denoise=denoise, resume=resume,
            zarr_format=zarr_format if zarr_out else 2, **sampling,
        )))
        if result is None:  # pragma: no cover - the generator always ends with a result
            raise RuntimeError("reconstruction ended without a result")
        for text in fill_notes(result.info.get("normalisation")):
            yield note(text)
        if spilled:
            yield write_spilled(out, unc, store, store_unc, data, str(src), {**result.info, "spacing": result.spacing},
                                origin=result.origin)
            return
    finally:
        if spilled:
            remove_spill(store, store_unc)
    if zarr_out:
        wrote = unc is not None and (result.uncertainty_path is not None if isinstance(unc, str) else unc.exists())
        yield [str(out)] + ([f"{unc} (uncertainty)"] if wrote else [])
        return
    made = provenance(result.info, result.info.get("normalisation"), source=str(src))
    yield write_results(out, result.volume, unc, result.uncertainty, spacing=result.spacing, unit=data.unit or "nm",
                        axes="ZYX", made=made, origin=result.origin)


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
    folder's URL in an object store, whose results are zarr stores. ``resume`` leaves out the
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
    from .engine.io.stores import is_complete, store_exists

    zarr_format = check_zarr_format(options.pop("zarr_format", 2))
    workers, scheduler = options.pop("workers", None), options.pop("scheduler", None)
    if workers is not None or scheduler is not None:
        from .engine.parallel.runner import Cluster

        Cluster(workers=workers, scheduler=scheduler)  # refuses what a block run refuses, before any folder
    if zarr_format != 2 and not (ext or "").endswith(ZARR_SUFFIX) and not is_url(str(out_dir)):
        raise InputError(f"--zarr-format {zarr_format} is the format of .zarr results; add --to .zarr (or .ome.zarr) "
                         "for a batch")
    plan = plan_batch(expand_inputs(list(inputs)), out_dir, uncertainty_dir, ext=ext)
    total = len(plan)
    stores = bool(plan) and suffix_of(Path(str(plan[0][1]))) == ZARR_SUFFIX
    if stores:
        options["zarr_format"] = zarr_format
        options["resume"] = resume  # an unfinished store continues block by block
    if resume:  # an output appears when whole (write_results writes the uncertainty first; a store is committed)
        plan = [item for item in plan if not (is_complete(item[1]) if stores else store_exists(item[1]))]
        yield note(f"resuming: {total - len(plan)} of {total} files were restored by an earlier run; {len(plan)} to do")
    if workers or scheduler:  # each file a task: the workers restore files side by side
        yield (yield from _files_on_workers(plan, out_dir, task, model, workers, scheduler, options))
        return
    loaded: list[Any] = []

    def load() -> Any:
        if not loaded:
            loaded.append(_loaded(model, task, options.get("arch"), options.get("device")))
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
            wrote = yield from _progress_only(one(src, out, unc))
        except InputError as exc:
            done.skipped.append((str(src), str(exc)))
            yield note(f"skipped {src}: {exc}")
            continue
        wrote = wrote or []
        done.written.extend(wrote[:1])
        done.uncertainty.extend(w.split(" (")[0] for w in wrote[1:])
        yield note(f"wrote {' and '.join(wrote)}")
    yield Progress("file", len(plan), len(plan))
    yield done


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
    except InputError as exc:
        return [], notes, str(exc)
    return wrote, notes, None


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
            loaded = _loaded(model, task, arch, "cpu")
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
