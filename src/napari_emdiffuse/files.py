"""Restoring image files: read, restore, write, as the ``emdiffuse`` command, the Restore and
Isotropic docks' file outputs and their *files…* buttons do it for each file: denoising and
super-resolution (:func:`restore_file_iter`), isotropic reconstruction of volumes
(:func:`reconstruct_file_iter`); batches of either are :mod:`.batches`', the writing itself
:mod:`.outputs`'.

What is worth telling on the way (a file's note, the fill value kept, the acquisition blur read
off the image, a result that goes through a temporary store) comes as ``Progress("note", ...)``
events; the command prints them, the widget shows them. A result too large for memory bound for
a TIFF or MRC goes through a hidden zarr store beside the output, written block by block, then
into the file slice by slice (a 2D image: tile by tile), so such an output needs disk, not memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

from .engine.errors import InputError
from .engine.events import Progress
from .engine.io.common import ZARR_SUFFIX, ImageData, streams_lazily, suffix_of
from .engine.io.zarrfmt import check_zarr_format
from .outputs import (
    check_chunks, corner_origin, keep_spill, remove_spill, spill_store, spill_uncertainty, spilled_writing, write_results,
    writing,
)

__all__ = [
    "note", "read_input", "fill_notes", "blur_note", "restore_file_iter", "reconstruct_file_iter", "input_name",
    "ISOTROPIC_TASKS", "loaded_model", "progress_only", "upload_notes",
]

#: The tasks a batch (:mod:`.batches`) runs through :func:`reconstruct_file_iter` (volumes).
ISOTROPIC_TASKS = ("isotropic-i", "isotropic-a")


def note(text: str) -> Progress:
    """An event that carries a line to tell the user."""
    return Progress("note", 0, 0, message=text)


def read_input(path: str | Path | ImageData, *, channel: int | None = None, time: int | None = None,
               voxel_size: Sequence[float] | None = None) -> tuple[ImageData, list[str]]:
    """The image as :func:`~.engine.io.images.read_image` reads it, with ``voxel_size`` (nm; one
    value for both axes of a 2D image) in place of the pixel size it records; and the notes
    to tell (the file's own, a replaced pixel size). An :class:`ImageData` already in hand (a
    napari layer's pixels and size) is taken as it is."""
    from .engine.io.images import read_image

    if isinstance(path, ImageData):
        if channel is not None or time is not None or voxel_size:
            raise InputError("channel, time and voxel_size apply to files; pick them before handing the pixels over")
        return path, []
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


def input_name(src: str | Path | ImageData) -> str:
    """How messages and provenance name an input: its path, or, for pixels handed over in
    memory, the file they came from (an :class:`ImageData`'s ``path``) or "the image"."""
    if isinstance(src, ImageData):
        return str(src.path) if src.path is not None else "the image"
    return str(src)


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


def upload_notes(*outputs: tuple[Any, Any]) -> list[Progress]:
    """What each TIFF or MRC result by URL among ``outputs`` ((where, array) pairs) goes through
    before it is at its URL (written here, then uploaded: :mod:`~.engine.io.fileurl`), said
    before the writing starts (the upload then reports itself: :func:`writing`)."""
    import tempfile

    from .engine.io.fileurl import is_file_url

    told = []
    for where, array in outputs:
        if where is None or array is None or not is_file_url(str(where)):
            continue
        n = array.nbytes
        size = f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{max(n / 2**20, 0.1):.1f} MiB"
        told.append(note(f"note: '{where}' is written in '{tempfile.gettempdir()}' first (about {size}), then "
                         "uploaded whole"))
    return told


def loaded_model(model: Any, task: str, arch: str | None, device: str | None) -> Any:
    """The model to restore with: ``model`` itself when loaded, what a callable returns, else
    loaded by name or path (None: the bundled default for ``task``)."""
    if hasattr(model, "card"):
        return model
    if callable(model):
        return model()
    from .engine.models.device import resolve_device
    from .engine.models.registry import load_model

    return load_model(model, task=task, arch=arch, device=resolve_device(device or "auto"))


def progress_only(gen: Generator) -> Generator[Progress, None, Any]:
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


def _one_cluster(workers: int | None, scheduler: str | None, device: str | None) -> Any:
    """The cluster a run's passes share (its blocks, then the file it writes from their store:
    :func:`~.engine.parallel.runner.kept_cluster`), started once; nothing without one."""
    if not (workers or scheduler):
        return contextlib.nullcontext()
    from .engine.parallel.runner import kept_cluster

    return kept_cluster(workers, scheduler, device or "auto")


def _zarr_output(out: Any, unc: Any, distributed: Any, resume: bool, zarr_format: int = 2) -> bool:
    """Whether ``out`` is a zarr store; refuses what needs one when it is not (zarr format 3;
    a remote cluster's result by URL, which goes through a store here that its workers cannot
    reach), and a non-zarr uncertainty beside a store. A local cluster (``--workers``) writes
    a TIFF, MRC or precomputed output through a hidden store beside it (:func:`spill_store`),
    as does a result too large for memory, which ``resume`` keeps. A file by URL is checked
    here, before any work (:mod:`~.engine.io.fileurl`; a store by URL is checked as it is
    opened)."""
    from .engine.io.common import is_url
    from .engine.io.fileurl import check_file_url

    for given in (out, unc):
        if given is not None and is_url(str(given)) and suffix_of(Path(str(given))) != ZARR_SUFFIX:
            check_file_url(str(given))
    given_out = out
    out, unc = Path(str(out)), Path(str(unc)) if unc is not None else None  # names only: a URL's too
    zarr_out = suffix_of(out) == ZARR_SUFFIX
    if distributed == "scheduler" and not zarr_out and is_url(str(given_out)):
        raise InputError(f"a remote cluster (--scheduler) writes a result by URL as a .zarr store; write {out.stem}.zarr "
                         f"there, then 'emdiffuse convert {out.stem}.zarr -o {out.name}'")
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
    src: str | Path | ImageData,
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
    chunk_encoding: str = "raw",
    jpeg_quality: int = 90,
    **sampling: Any,
) -> Generator[Any, None, None]:
    """Denoise or super-resolve the image file ``src`` into ``out`` (``.tif``, ``.mrc``,
    ``.zarr`` or ``.precomputed``; with ``uncertainty_out`` its uncertainty too), with its pixel
    size and how it was made. Yields progress and note events, then the list of what was
    written. ``src`` may be an :class:`~.engine.io.common.ImageData` instead of a file: pixels
    already in hand with their size and place (a napari layer, as the Restore dock does).

    ``model``: a loaded model, a callable that loads it, a name or path, or None (the bundled
    default), loaded once the input has been read and checked (a bad input is refused before
    any model loads). ``workers`` / ``scheduler`` hand the cluster ``model_ref`` (its name or
    path) and ``arch``; they write a ``.zarr`` output, or the hidden store beside a TIFF, MRC or
    precomputed one, which is then written from it (:func:`spill_store`; a precomputed
    folder by the workers too: :func:`~.outputs.spilled_writing`). ``resume`` continues
    an unfinished ``.zarr`` output, ``zarr_format`` (2 or 3) is its format; ``chunk_encoding``
    (``raw`` or ``jpeg``) and ``jpeg_quality`` a ``.precomputed`` output's chunks.
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
    name = input_name(src)
    data, notes = read_input(src, channel=channel, time=time, voxel_size=voxel_size)
    for text in notes:
        yield note(text)
    check_one_channel(tuple(data.data.shape), data.axes, name)
    validate_image(data.data)
    zarr_out = _zarr_output(out, unc, "scheduler" if scheduler else workers, resume, zarr_format)
    chunks = check_chunks(out, data.data, chunk_encoding, jpeg_quality)
    distributed = bool(workers or scheduler)
    model = loaded_model(model, task, arch, sampling.get("device"))
    if (fine := pixel_size_note(model.card, data.spacing, data.unit)) is not None:
        yield note(f"note: {fine}")
    if zarr_out:
        # Workers load the model themselves: hand them its name or path, not this process's copy.
        yield from progress_only(restore_to_zarr_iter(
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
    spill, told = spill_store(out, (*data.data.shape[:-2], hw[0] * s, hw[1] * s), data.data, uncertainty=unc is not None,
                              resume=resume, workers=distributed)  # fmt: skip
    if spill is not None:  # too large for memory, or written by workers: through a store beside the output
        yield note(told)
        spill_unc = spill_uncertainty(spill) if unc else None
        finished = False
        cluster = contextlib.ExitStack()
        try:
            cluster.enter_context(_one_cluster(workers, scheduler, sampling.get("device")))
            yield from progress_only(restore_to_zarr_iter(
                data.data, spill, task, model_ref if distributed else model, uncertainty_out=spill_unc,
                spacing=data.spacing, resume=resume, overwrite=True, workers=workers, scheduler=scheduler,
                arch=arch if distributed else None, **sampling,
            ))
            attrs = dict(open_zarr_readonly(spill).attrs)
            for text in fill_notes(attrs.get("normalisation")):
                yield note(text)
            written_unc = spill_unc is not None and spill_unc.exists()
            yield from upload_notes((out, open_zarr_readonly(spill)),
                                    (unc, open_zarr_readonly(spill_unc) if written_unc else None))
            origin = corner_origin(data, sampling.get("region"))
            wrote = yield from spilled_writing(out, unc, spill, spill_unc, data, name, attrs, origin=origin,
                                               workers=workers, scheduler=scheduler, **chunks)
            finished = True
            yield wrote
        finally:
            cluster.close()
            if not keep_spill(resume, finished):
                remove_spill(spill, spill_unc)
        return
    if resume:
        yield note("note: the result fits in memory and is written when complete: --resume keeps nothing of it")
    result = yield from progress_only(restore_iter(data.data, task, model, spacing=data.spacing, origin=data.origin,
                                                    uncertainty=unc is not None, **sampling))
    if result is None:  # pragma: no cover - the generator always ends with a result
        raise RuntimeError("restoration ended without a result")
    for text in fill_notes(result.normalisation) + blur_note(result.info):
        yield note(text)
    axes = data.axes if data.axes and len(data.axes) == result.mean.ndim else None
    made = provenance(result.info, result.normalisation, source=name)
    if unc is not None and result.uncertainty is None:
        yield note("note: one sample gives no uncertainty; use --samples 2 or more")
    yield from upload_notes((out, result.mean), (unc, result.uncertainty))
    origin = corner_origin(data, sampling.get("region"))
    yield (yield from writing(lambda told: write_results(
        out, result.mean, unc, result.uncertainty, spacing=result.spacing, unit=data.unit or "nm", axes=axes, made=made,
        origin=origin, progress=told, **chunks), out, unc, pieces=streams_lazily(result.mean)))


def reconstruct_file_iter(
    src: str | Path | ImageData,
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
    chunk_encoding: str = "raw",
    jpeg_quality: int = 90,
    **sampling: Any,
) -> Generator[Any, None, None]:
    """Make the anisotropic volume in file ``src`` isotropic into ``out`` (``.tif``, ``.mrc``,
    ``.zarr`` or ``.precomputed``; with ``uncertainty_out`` its uncertainty too), with its voxel
    size and how it was made. Yields progress and note events, then the list of what was
    written. ``src`` may be an :class:`~.engine.io.common.ImageData` (a napari layer's voxels,
    as the Isotropic dock hands them over).

    ``factor``: how many times finer z becomes; None takes it from the file's voxel size, or
    ``default_factor`` for a file that records none (a batch of calibrated and uncalibrated
    volumes). ``model``: a name, a path, a loaded model or None (the bundled model for the
    factor; models load once per process). A result too large for memory bound for a TIFF or
    MRC goes through a hidden store beside it (:func:`spill_store`), and so does a result of
    ``workers`` / ``scheduler`` bound for one (a ``.precomputed`` folder is then written by
    the workers: :func:`~.outputs.spilled_writing`). ``zarr_format`` 3 needs a ``.zarr`` output;
    ``chunk_encoding`` / ``jpeg_quality`` set a ``.precomputed`` output's chunks; the rest are
    the options of :func:`~napari_emdiffuse.api.reconstruct_isotropic`.

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
    name = input_name(src)
    data, notes = read_input(src, channel=channel, time=time, voxel_size=voxel_size)
    for text in notes:
        yield note(text)
    check_one_channel(tuple(data.data.shape), data.axes, name)
    if data.data.ndim != 3:
        more = ("; several channels or time points? read one with --channel/--time" if data.data.ndim > 3 else
                "; a folder of 2D slices is one volume when the output is a file")
        raise InputError(f"isotropic reconstruction needs a 3D (ZYX) volume; '{name}' has {data.data.ndim} dimensions{more}")
    if factor is None and data.spacing is None:
        if default_factor is None:
            raise InputError(f"'{name}' does not say its voxel size; give the z / xy spacing ratio with --factor F")
        factor = default_factor
        yield note(f"note: '{Path(name).name}' does not say its voxel size; factor {factor} as given")
    f = int(factor) if factor is not None else factor_from_spacing(data.spacing)
    zarr_out = _zarr_output(out, unc, "scheduler" if scheduler else workers, resume, zarr_format)
    chunks = check_chunks(out, data.data, chunk_encoding, jpeg_quality)
    store, store_unc = (out, unc) if zarr_out else (None, None)
    if not zarr_out:  # a volume too large for memory, or written by workers: through a store beside the output
        z, y, x = data.data.shape
        if sampling.get("region") is not None:  # in memory, the region's size
            ys, xs = check_region(sampling["region"], (y, x))
            y, x = ys.stop - ys.start, xs.stop - xs.start
        store, told = spill_store(out, ((z - 1) * f + 1, y, x), data.data, uncertainty=unc is not None, resume=resume,
                                  workers=bool(workers or scheduler))
        if store is not None:
            yield note(told)
            store_unc = spill_uncertainty(store) if unc else None
        elif resume:
            yield note("note: the result fits in memory and is written when complete: --resume keeps nothing of it")
    spilled = store is not None and not zarr_out
    finished = False
    cluster = contextlib.ExitStack()
    try:
        if spilled:  # the workers' passes and the folder they write from their store: one cluster
            cluster.enter_context(_one_cluster(workers, scheduler, sampling.get("device")))
        z = data.data.shape[0]
        told = note(f"factor {f}{'' if factor is not None else ' (from the voxel size)'}: {z} slices become {(z - 1) * f + 1}")
        result = yield from progress_only(_told_first(told, reconstruct_isotropic_iter(
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
            from .engine.io.zarr import open_zarr_readonly

            written_unc = store_unc is not None and Path(store_unc).exists()
            yield from upload_notes((out, open_zarr_readonly(store)),
                                    (unc, open_zarr_readonly(store_unc) if written_unc else None))
            attrs = {**result.info, "spacing": result.spacing}
            wrote = yield from spilled_writing(out, unc, store, store_unc, data, name, attrs, origin=result.origin,
                                               workers=workers, scheduler=scheduler, **chunks)
            finished = True
            yield wrote
            return
    finally:
        cluster.close()
        if spilled and not keep_spill(resume, finished):
            remove_spill(store, store_unc)
    if zarr_out:
        wrote = unc is not None and (result.uncertainty_path is not None if isinstance(unc, str) else unc.exists())
        yield [str(out)] + ([f"{unc} (uncertainty)"] if wrote else [])
        return
    made = provenance(result.info, result.info.get("normalisation"), source=name)
    yield from upload_notes((out, result.volume), (unc, result.uncertainty))
    yield (yield from writing(lambda told: write_results(
        out, result.volume, unc, result.uncertainty, spacing=result.spacing, unit=data.unit or "nm", axes="ZYX",
        made=made, origin=result.origin, progress=told, **chunks), out, unc, pieces=streams_lazily(result.volume)))
