"""Persisted widget settings and the options the widgets hand the engine.

:class:`Settings` keeps each dock's last options in one JSON file; :class:`WidgetOptions`
is the round trip of the options dataclasses through it; the sampling checks are shared by
Restore and Isotropic, which drive the same sampler. No Qt here.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ..engine.errors import EMDiffuseError
from ..engine.io.atomic import atomic_file
from ..engine.inference.canvas import PRESETS as _ENGINE_PRESETS
from ..engine.io.batch import BATCH_FORMATS
from ..engine.io.common import PRECOMPUTED_SUFFIX, is_zarr_name, suffix_of
from ..engine.io.precomputed_write import check_encoding

__all__ = [
    "PRESETS",
    "Settings",
    "WidgetOptions",
    "settings_path",
    "check_preset",
    "check_tiling",
    "check_workers",
    "check_cluster",
    "check_resume",
    "ZARR_FORMAT_ITEMS",
    "FILES_AS",
    "check_files_as",
    "files_kwargs",
    "check_zarr_format_choice",
    "CHUNK_ITEMS",
    "check_chunks_choice",
    "sampling_kwargs",
]

logger = logging.getLogger("napari_emdiffuse.widgets")

PRESETS = tuple(_ENGINE_PRESETS)  # the engine's sampling presets (Restore, Isotropic)


# ----------------------------------------------------------------------------------------------
# settings


def settings_path() -> Path:
    """Where widget settings persist: ``$EMDIFFUSE_HOME/widgets.json`` when set, else the
    user config directory."""
    env = os.environ.get("EMDIFFUSE_HOME")
    if env:
        return Path(env) / "widgets.json"
    from platformdirs import user_config_dir

    return Path(user_config_dir("napari-emdiffuse", appauthor=False)) / "widgets.json"


class Settings:
    """Per-widget option values kept between napari sessions in one JSON file.

    A plain JSON file rather than QSettings so tests isolate it with ``EMDIFFUSE_HOME``
    and users can read it. Unreadable files count as empty: settings are a convenience.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self._path = Path(path) if path is not None else None

    @property
    def path(self) -> Path:
        return self._path or settings_path()

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def load(self, section: str) -> dict[str, Any]:
        """Saved values of one widget (empty if none)."""
        values = self._read().get(section, {})
        return values if isinstance(values, dict) else {}

    def save(self, section: str, values: dict[str, Any]) -> None:
        """Replace one widget's values (atomically, so a crash never leaves half a file)."""
        data = self._read()
        data[section] = values
        path = self.path
        try:
            with atomic_file(path) as tmp:
                tmp.write_text(json.dumps(data, indent=1, default=str))
        except OSError as exc:
            logger.warning("could not save widget settings to %s: %s", path, exc)


_O = TypeVar("_O", bound="WidgetOptions")


class WidgetOptions:
    """Base of the widgets' option dataclasses: the round trip through :class:`Settings`.

    Subclasses are dataclasses of plain values whose defaults fix each field's type.
    """

    def validate(self: _O) -> _O:
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]  # subclasses are dataclasses

    @classmethod
    def from_dict(cls: type[_O], values: dict[str, Any]) -> _O:
        """Options from saved settings: unknown keys and wrongly typed values are dropped (an
        int is taken for a float: JSON writes 1.0 as 1); a combination that does not validate
        gives the defaults, since settings are a convenience."""
        defaults = cls()
        kept = {}
        for f in fields(cls):  # type: ignore[arg-type]
            v = values.get(f.name)
            want = type(getattr(defaults, f.name))
            if v is not None and (type(v) is want or (want is float and type(v) is int)):
                kept[f.name] = want(v)
        try:
            return cls(**kept).validate()
        except EMDiffuseError:
            return defaults


# ----------------------------------------------------------------------------------------------
# sampling options (Restore and Isotropic drive the same sampler)


class _Sampling(Protocol):
    preset: str
    steps: int
    samples: int
    tile: int
    overlap: int
    seed: int
    device: str


def check_preset(preset: str) -> None:
    if preset not in PRESETS:
        raise EMDiffuseError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")


def check_tiling(opts: _Sampling) -> None:
    """Refuse negative counts and an overlap that leaves a tile nothing new."""
    if opts.steps < 0 or opts.samples < 0 or opts.tile < 0 or opts.overlap < -1 or opts.seed < 0:
        raise EMDiffuseError("steps, samples, tile, overlap and seed cannot be negative")
    if opts.tile and opts.overlap >= opts.tile:
        raise EMDiffuseError(f"overlap {opts.overlap} must be smaller than tile {opts.tile}")


def check_workers(workers: Any, output: str, scheduler: Any = "") -> None:
    """Local dask workers: 0 (run in napari) or a number of processes, or a running cluster
    (:func:`check_cluster`), writing into an output (a zarr store, or the hidden store a TIFF,
    MRC or precomputed result is written from).

    Examples
    --------
    >>> check_workers(2, "out.zarr")
    >>> check_workers(2, "")
    Traceback (most recent call last):
    ...
    napari_emdiffuse.engine.errors.EMDiffuseError: workers write into an output: give a .zarr, .tif, .mrc or .precomputed path
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise EMDiffuseError(f"workers must be 0 (in napari) or a number of processes, not {workers!r}")
    if workers and not output:
        raise EMDiffuseError("workers write into an output: give a .zarr, .tif, .mrc or .precomputed path")
    if check_cluster(workers, scheduler) and not output:
        raise EMDiffuseError("a cluster writes into an output: give a .zarr, .tif, .mrc or .precomputed path on "
                             "storage its workers reach")


def check_cluster(workers: Any, scheduler: Any) -> str:
    """The running dask cluster to use, by its scheduler's address or the file the scheduler
    wrote (tidied; "" for none), which local workers exclude; a scheduler file that is missing
    or holds no address is refused now, before any work.

    Examples
    --------
    >>> check_cluster(0, " tcp://10.0.0.5:8786 ")
    'tcp://10.0.0.5:8786'
    >>> check_cluster(2, "tcp://10.0.0.5:8786")
    Traceback (most recent call last):
    ...
    napari_emdiffuse.engine.errors.EMDiffuseError: run on local workers or on a running cluster, not both: set workers to 0, or clear the cluster
    """
    if not isinstance(scheduler, str):
        raise EMDiffuseError(f"the cluster is a scheduler's address or file, not {scheduler!r}")
    scheduler = scheduler.strip()
    if scheduler and workers:
        raise EMDiffuseError("run on local workers or on a running cluster, not both: set workers to 0, or clear the "
                             "cluster")
    if scheduler:
        from ..engine.parallel.runner import scheduler_address

        try:
            scheduler_address(scheduler)
        except EMDiffuseError as exc:  # the engine's InputError: the same line
            raise EMDiffuseError(str(exc)) from None
    return scheduler


def check_resume(resume: Any, output: str) -> None:
    """Keeping finished blocks needs an output to keep them beside: a zarr store, or the
    hidden store of a TIFF, MRC or precomputed result too large for memory.

    Examples
    --------
    >>> check_resume(True, "out.zarr")
    >>> check_resume(True, "")
    Traceback (most recent call last):
    ...
    napari_emdiffuse.engine.errors.EMDiffuseError: keeping finished blocks needs a .zarr output to keep them in
    """
    if not isinstance(resume, bool):
        raise EMDiffuseError(f"resume must be True or False, not {resume!r}")
    if resume and not output:
        raise EMDiffuseError("keeping finished blocks needs a .zarr output to keep them in")


def sampling_kwargs(opts: _Sampling) -> dict[str, Any]:
    """The engine's sampling keyword arguments; 0 / -1 become None ("let the engine choose")."""
    return {
        "preset": opts.preset,
        "steps": opts.steps or None,
        "samples": opts.samples or None,
        "tile": opts.tile or None,
        "overlap": None if opts.overlap < 0 else opts.overlap,
        "seed": opts.seed,
        "device": opts.device,
    }


#: The zarr format box's entries, by format.
ZARR_FORMAT_ITEMS = {2: "2", 3: "3 (sharded)"}


#: The *files…* button's result format: each file's own (TIFF or MRC), or one for all
#: (:data:`~..engine.io.batch.BATCH_FORMATS`), by the value an option keeps.
FILES_AS = {"": "each file's format", **{ext: ext for ext in BATCH_FORMATS}}


def check_files_as(value: Any) -> str:
    """A result format of the *files…* button (a key of :data:`FILES_AS`).

    Examples
    --------
    >>> check_files_as(".ome.zarr")
    '.ome.zarr'
    >>> check_files_as(".png")
    Traceback (most recent call last):
    ...
    napari_emdiffuse.engine.errors.EMDiffuseError: files as '.png'? choose one of each file's format, .tif, .mrc, .zarr, .ome.zarr, .precomputed
    """
    if value not in FILES_AS:
        raise EMDiffuseError(f"files as {value!r}? choose one of {', '.join(FILES_AS.values())}")
    return value


def files_kwargs(files_as: str, zarr_format: int, chunks: str = "raw") -> dict[str, Any]:
    """What the *files…* button passes on about its results' format: ``ext`` and, for zarr
    results, the zarr format, for precomputed ones their chunks (:func:`check_chunks_choice`;
    a batch of files takes neither).

    Examples
    --------
    >>> files_kwargs("", 3), files_kwargs(".zarr", 3)
    ({'ext': None}, {'ext': '.zarr', 'zarr_format': 3})
    >>> files_kwargs(".precomputed", 2, "jpeg 80")
    {'ext': '.precomputed', 'chunk_encoding': 'jpeg', 'jpeg_quality': 80}
    """
    ext = check_files_as(files_as) or None
    if ext == PRECOMPUTED_SUFFIX:
        encoding, quality = check_chunks_choice(chunks, f"results{ext}")
        return {"ext": ext, "chunk_encoding": encoding, "jpeg_quality": quality}
    return {"ext": ext, **({"zarr_format": zarr_format} if ext is not None and ext.endswith(".zarr") else {})}


#: The precomputed chunks box's entries; it is editable: ``jpeg Q`` takes a quality of 1-100.
CHUNK_ITEMS = ("raw", "jpeg 95", "jpeg 90", "jpeg 80")


def check_chunks_choice(text: Any, output: str) -> tuple[str, int]:
    """The chunks of a ``.precomputed`` output from the box: ``raw``, or ``jpeg`` with a
    quality (90 unless given: ``jpeg 85``); JPEG needs a ``.precomputed`` ``output``. The
    encoding and the quality, or one line.

    Examples
    --------
    >>> check_chunks_choice(" JPEG 85 ", "vol.precomputed"), check_chunks_choice("raw", "")
    (('jpeg', 85), ('raw', 90))
    >>> check_chunks_choice("jpeg", "out.tif")
    Traceback (most recent call last):
    ...
    napari_emdiffuse.engine.errors.EMDiffuseError: jpeg chunks are a .precomputed output's; give one, or choose raw
    >>> check_chunks_choice("jpeg best", "vol.precomputed")
    Traceback (most recent call last):
    ...
    napari_emdiffuse.engine.errors.EMDiffuseError: precomputed chunks must be raw, jpeg or jpeg Q (a quality of 1-100), not 'jpeg best'
    """
    words = str(text).strip().lower().split() or ["raw"]
    if len(words) > 2 or (len(words) == 2 and (words[0] != "jpeg" or not words[1].isdigit())):
        raise EMDiffuseError(f"precomputed chunks must be raw, jpeg or jpeg Q (a quality of 1-100), not {text!r}")
    try:
        encoding = check_encoding(words[0], int(words[1]) if len(words) == 2 else 90)
    except EMDiffuseError as exc:  # the engine's InputError: the same line
        raise EMDiffuseError(str(exc)) from None
    if encoding[0] != "raw" and suffix_of(Path(str(output).strip().rstrip("/") or "_")) != PRECOMPUTED_SUFFIX:
        raise EMDiffuseError(f"{encoding[0]} chunks are a .precomputed output's; give one, or choose raw")
    return encoding


def check_zarr_format_choice(zarr_format: Any, output: str) -> None:
    """A zarr format of 2 or 3; 3 is the format of a ``.zarr`` output, so it needs one.

    Examples
    --------
    >>> check_zarr_format_choice(3, "out.zarr")
    >>> check_zarr_format_choice(3, "")
    Traceback (most recent call last):
    ...
    napari_emdiffuse.engine.errors.EMDiffuseError: zarr format 3 is the format of a .zarr output; give one, or choose 2
    """
    if zarr_format not in ZARR_FORMAT_ITEMS or isinstance(zarr_format, bool):
        raise EMDiffuseError(f"zarr format must be 2 or 3, not {zarr_format!r}")
    if zarr_format != 2 and not is_zarr_name(output):
        raise EMDiffuseError(f"zarr format {zarr_format} is the format of a .zarr output; give one, or choose 2")
