"""``emdiffuse info``: how each input will be read (shape, pixel type, axes, pixel size and
where it came from, notes, a volume's isotropic factor, levels, whether its slices look alike),
as a line or a JSON record."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["describe", "info_command", "info_names"]


def info_command(args: argparse.Namespace) -> int:
    """Print how each input is read (a line, or ``--json`` records), and the unfinished
    resumable runs of a zarr output; exit status 2 when an input could not be read."""
    import json

    from .engine.errors import InputError
    from .cli_progress import PROG
    from .engine.io.common import is_url, is_zarr_name
    from .engine.io.stores import partials_beside, store_exists, unfinished_runs

    failed = 0
    for name in [n for given in args.input for n in info_names(given)]:  # a file's datasets, each
        try:
            runs = unfinished_runs(name if is_url(name) else Path(name)) if is_zarr_name(name) else []
        except Exception:  # noqa: BLE001 - a URL not listed (no access): describe() says why
            runs = []
        if not args.json:
            for store, done, total in runs:  # a zarr output whose run goes on, or stopped
                print(f"{name}: unfinished resumable run in '{store}': {done} of {total or '?'} blocks done "
                      "(the same command with --resume continues it)")
        if runs and not store_exists(name if is_url(name) else Path(name)):
            if args.json:
                print(json.dumps({"path": name, "unfinished_runs": [[str(s), d, t] for s, d, t in runs]}))
            continue
        try:
            try:
                others = partials_beside(name) if is_url(name) and is_zarr_name(name) and not store_exists(name) else []
            except Exception:  # noqa: BLE001 - not listed (no such bucket, no access): describe() says why
                others = []
            if others:  # chunks at the URL (a run writes them there), no metadata yet
                raise InputError(f"'{name}' is no zarr store yet: a run writing it goes on, or one stopped that cannot "
                                 f"resume (its record: '{others[0]}'; delete both if none runs)")
            record, line = describe(name, channel=args.channel, time=args.time)
        except InputError as exc:
            print(json.dumps({"path": name, "error": str(exc)}) if args.json else f"{PROG}: {exc}",
                  file=sys.stdout if args.json else sys.stderr)
            failed += 1
            continue
        if runs:
            record["unfinished_runs"] = [[str(s), d, t] for s, d, t in runs]
        print(json.dumps(record) if args.json else line)
    if failed:
        raise InputError(f"{failed} of {len(args.input)} inputs could not be read (reasons above)")
    return 0


def info_names(given: str) -> list[str]:
    """What ``info`` describes for one argument: its images (:func:`image_names`), or, for a
    folder that cannot be one volume (a session of HDF5 / Velox files, or one image), each
    file in it as a batch would take it."""
    from .engine.io.batch import expand_inputs, is_batch
    from .engine.io.common import image_files_in
    from .engine.io.images import image_names

    p = Path(given).expanduser()
    if p.is_dir() and is_batch([given]):
        slices, every = image_files_in(p), image_files_in(p, hdf5=True)
        if every and (len(slices) < 2 or len(every) > len(slices)):
            return [str(f) for f in expand_inputs([given])]
    return image_names(given)


def describe(name: str, *, channel: int | None = None, time: int | None = None) -> tuple[dict, str]:
    """How ``name`` is read (its ``channel`` / ``time`` picked), as a record (``info --json``)
    and as a line."""
    import numpy as np

    from .engine.core.alikeness import slice_alikeness
    from .engine.errors import InputError
    from .engine.io.images import read_image
    from .engine.io.spacing import factor_from_spacing
    from .engine.io.n5 import n5_levels
    from .engine.io.precomputed import PrecomputedArray, precomputed_scales
    from .engine.io.views import LazyArray
    from .engine.io.common import is_url
    from .engine.io.remote import split_url
    from .engine.io.zarr import is_ome, ome_levels

    img = read_image(name, channel=channel, time=time)
    data = img.data
    # .name, not str(): a big-endian MRC is '>f4' to numpy, float32 to a user (restoration converts it)
    record: dict[str, Any] = {"path": name, "shape": list(data.shape), "dtype": data.dtype.name, "axes": img.axes,
                              "spacing": list(img.spacing) if img.spacing is not None else None, "unit": img.unit,
                              "note": img.note}  # fmt: skip
    size = ("no pixel size" if img.spacing is None
            else " x ".join(f"{v:g}" for v in img.spacing) + f" {img.unit or '(unit unknown)'}")
    record["source"] = img.source if img.spacing is not None else None
    if record["source"]:
        size += f" ({img.source})"
    line = f"{name}: {' x '.join(str(n) for n in data.shape)} {data.dtype.name}, axes {img.axes or 'not declared'}, {size}"
    record["origin"] = list(img.origin) if img.origin is not None else None
    if img.origin is not None:  # where it lies: a region in the image it was cut from, a volume in its space
        line += f"; first pixel at {' x '.join(f'{v:g}' for v in img.origin)} {img.unit or ''}".rstrip()
    if img.note:
        line += f"; {img.note}"
    if img.axes and len(img.axes) == data.ndim and "C" in img.axes and data.shape[img.axes.index("C")] > 1:
        record["channels"] = data.shape[img.axes.index("C")]
        line += f"; {record['channels']} channels: restore one with --channel C"
    if data.ndim == 3 and (img.axes or "").startswith("T"):  # frames of a series, not sections
        line += "; a time series (frames, not sections)"
    elif data.ndim == 3 and data.shape[0] == 1:  # one image stored as a volume (precomputed, zarr)
        line += "; one slice: restored as a 2D image"
    elif data.ndim == 3 and img.spacing is not None:
        try:
            record["isotropic_factor"] = factor_from_spacing(img.spacing)
            line += f"; isotropic factor {record['isotropic_factor']}"
        except InputError as exc:
            record["isotropic_factor"] = None
            line += f"; no isotropic factor: {exc}"
    store = img.path if img.path is not None and img.path.is_dir() else (split_url(name)[0] if is_url(name) and is_ome(name) else None)
    if is_ome(name) and store is not None:
        record["ome_levels"] = len(ome_levels(store)) or 1
        line += f"; OME-Zarr, {record['ome_levels']} level{'s' * (record['ome_levels'] != 1)}"
    inner = getattr(data, "array", data)  # a view (single axes dropped) wraps the array it reads
    if getattr(getattr(inner, "metadata", None), "zarr_format", None) == 3:  # zarr v3: say how it is stored
        record["zarr_format"] = 3
        shards = getattr(inner, "shards", None)
        record["shards"] = list(shards) if shards else None
        line += "; zarr v3" + (f", shards of {' x '.join(map(str, shards))} in chunks of "
                               f"{' x '.join(map(str, inner.chunks))}" if shards else "")  # fmt: skip
    name_key = getattr(inner, "name", None)  # an N5 dataset's path in its container
    if isinstance(data, LazyArray) and isinstance(name_key, str) and Path(name_key).name == "s0":
        levels = n5_levels(Path(getattr(inner, "root", "")) / name_key)
        if levels > 1:
            record["levels"] = levels
            line += f"; {levels} levels (s0 read)"
    if isinstance(data, PrecomputedArray) and len(scales := precomputed_scales(data.location)) > 1:
        record["levels"] = len(scales)
        line += f"; {len(scales)} scales ({data.name} read)"
    if isinstance(data, PrecomputedArray):  # how its chunks are stored: jpeg is lossy
        record["encoding"] = data.encoding
        line += f"; {data.encoding} chunks" + (", sharded" if data.shards is not None else "")
    if data.ndim == 3 and data.shape[0] >= 3:
        try:  # whether denoising averages it along z (a central crop is read)
            found = slice_alikeness(data)
            record["slices_alike"] = bool(found.alike)
            line += f"; {found.describe()}"
        except InputError:  # slices too small to compare
            pass
    record["bytes"] = int(np.prod(data.shape, dtype=np.float64)) * np.dtype(data.dtype).itemsize
    if record["bytes"] >= 1 << 30:  # what a whole run reads and writes: say so, and the way round it
        size = next(f"{record['bytes'] / 10**e:.1f} {u}" for e, u in ((15, "PB"), (12, "TB"), (9, "GB"))
                    if record["bytes"] >= 10**e)  # fmt: skip
        line += f"; {size} of pixels: restore a part with --region, or the whole into a .zarr output"
    return record, line
