"""zarr stores: reading (an array, a group's array, OME-NGFF metadata) and :class:`ZarrWriter`,
which creates an output store atomically for chunk-by-chunk writes.

Distributed block writes
------------------------
:class:`ZarrWriter` creates the output store in ``writer.temp_path``. Other processes (dask
workers, a process pool) can open it by path and write chunk-aligned blocks::

    arr = open_zarr_for_block_writes(writer.temp_path)  # == zarr.open_array(p, mode="r+")
    arr[z0:z1, y0:y1, x0:x1] = block

The main process calls :meth:`ZarrWriter.commit` once every block is written. Blocks that do not
align with the chunks must not be written concurrently (zarr rewrites whole chunks).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputError
from ..events import Progress
from .atomic import fsync_dir, remove_path
from .calibration import check_axes, check_origin, check_spacing, ngff_multiscales, zarr_calibration, zarr_origin
from .common import ZARR_SUFFIX, ImageData, check_output_path, is_url, likely_image, reason, suffix_of
from .fetch import unreachable, zarr_store
from .ledger import LEDGER_DIR, Ledger
from .stores import (  # re-exported: what a store at an output's place is
    BLOCKS_TOTAL, COMPLETE_ATTR, COMPLETE_FILE, RESUME_ATTR, finished_with, find_unfinished, is_complete, is_ome,
    store_exists, unfinished_runs,
)
from .pyramid import downsample_tiles, level_plan, level_tiles, multiscales
from .views import drop_single_axes
from .zarrfmt import check_zarr_format, create_zarr_array, write_chunks

if TYPE_CHECKING:  # heavy imports only for type checkers; loaded lazily at run time
    import zarr

__all__ = [
    "COMPLETE_ATTR",
    "COMPLETE_FILE",
    "zarr_major",
    "zarr_store_of",
    "read_zarr",
    "open_zarr_for_block_writes",
    "ome_levels",
    "group_arrays",
    "ZarrWriter",
    "is_complete",
    "RESUME_ATTR",
    "is_ome",
    "uncertainty_beside",
    "store_exists",
    "unfinished_runs",
    "finished_with",
    "BLOCKS_TOTAL",
]



def _zarr():
    import zarr  # lazy: zarr 3 takes a noticeable time to import

    return zarr


def zarr_major() -> int:
    """The installed zarr's major version (2 or 3)."""
    return int(_zarr().__version__.split(".")[0])


def uncertainty_beside(out: Path | str) -> Path | str:
    """Where an output's uncertainty goes when no path is given: ``<name>_uncertainty`` in the
    output's own format (an OME-Zarr store for an OME-Zarr output, a TIFF for a TIFF, a
    precomputed volume for a precomputed one); beside a URL, a URL.

    Examples
    --------
    >>> uncertainty_beside(Path("iso.zarr")).name, uncertainty_beside(Path("iso.ome.zarr")).name
    ('iso_uncertainty.zarr', 'iso_uncertainty.ome.zarr')
    >>> uncertainty_beside("s3://bucket/iso.ome.zarr")
    's3://bucket/iso_uncertainty.ome.zarr'
    >>> [uncertainty_beside(Path(n)).name for n in ("a.TIF", "b.ome.tif", "c.mrc", "d.precomputed")]
    ['a_uncertainty.tif', 'b_uncertainty.ome.tif', 'c_uncertainty.mrc', 'd_uncertainty.precomputed']
    """
    if isinstance(out, str) and is_url(out):
        base, name = out.rstrip("/").rsplit("/", 1)
        return f"{base}/{uncertainty_beside(Path(name)).name}"
    out = Path(out)
    name = out.name.rstrip("/")
    double = next((s for s in (".ome.zarr", ".ome.tif", ".ome.tiff") if name.lower().endswith(s)), None)
    kind = double or suffix_of(out)
    return out.with_name(f"{name[: len(name) - len(kind)]}_uncertainty{kind}")


def zarr_store_of(path: Path) -> tuple[Path, str] | None:
    """Split ``vol.zarr/0`` into the store and the key inside it; None if not inside a store."""
    for i, candidate in enumerate([path, *path.parents]):
        if suffix_of(candidate) == ZARR_SUFFIX:
            inner = path.relative_to(candidate).as_posix() if i else ""
            return candidate, "" if inner == "." else inner
    return None


def read_zarr(store: Path | str, key: str | None) -> ImageData:
    """Open an array of a zarr store lazily, with its calibration; ``store`` is a local folder,
    or a URL (:mod:`.remote`)."""
    zarr = _zarr()
    local = isinstance(store, Path)
    if local and not store.exists():
        raise InputError(f"cannot read '{store}': file not found")
    if local and not store.is_dir():
        raise InputError(f"cannot read '{store}': not a zarr folder")
    try:
        node = zarr.open(zarr_store(store), mode="r")
    except ImportError:  # a URL whose fsspec backend is not installed: the caller names it
        raise
    except Exception as exc:
        if not local and unreachable(exc):  # no host, no access: not a verdict on the store
            raise InputError(f"cannot read '{store}': {reason(exc)}") from exc
        raise InputError(
            f"cannot read '{store}': not a zarr array or group ({reason(exc)})"
        ) from exc

    parent = None
    name = ""
    if key:
        if not isinstance(node, zarr.Group):
            raise InputError(
                f"cannot read '{store}': it is a single array, so key '{key}' does not apply"
            )
        try:
            child = node[key]
        except Exception as exc:  # KeyError, or zarr's own errors for odd keys
            raise InputError(
                f"cannot read '{store}': no array '{key}' in it (arrays: {_list_arrays(node)})"
            ) from exc
        # The group holding the array carries the OME-NGFF metadata.
        parent_key, _, name = key.rpartition("/")
        parent = node[parent_key] if parent_key else node
        node = child
    if isinstance(node, zarr.Group):
        parent = node
        name = _default_array(node, store, key)
        node = node[name]

    spacing, unit, axes = zarr_calibration(node, parent, name)
    origin = zarr_origin(node, parent, name, axes)
    _, origin, _ = drop_single_axes(node, origin, axes)  # as the spacing's
    data, spacing, axes = drop_single_axes(node, spacing, axes)  # an OME-Zarr's single T and C
    return ImageData(data=data, spacing=spacing, unit=unit, axes=axes, path=store if local else None, origin=origin)


def _list_arrays(group: Any) -> str:
    names = sorted(group.array_keys())
    return ", ".join(names) if names else "none"


def _default_array(group: Any, store: Path, key: str | None) -> str:
    names = sorted(group.array_keys())
    if "0" in names:
        return "0"
    if len(names) == 1:
        return names[0]
    where = f"'{store}'" + (f" group '{key}'" if key else "")
    if not names:
        raise InputError(f"cannot read {where}: it contains no arrays")
    inside = "/".join(k for k in (str(store), key) if k)
    raise InputError(
        f"cannot read {where}: it holds several arrays ({', '.join(names)}); "
        f"choose one, e.g. '{inside}/{likely_image(names)}'"
    )


def group_arrays(store: str | os.PathLike[str]) -> list[str]:
    """The arrays at the top of a zarr group that has no default one (no ``"0"``, not just
    one): what a path must name inside it; empty otherwise (an array, a store with a default,
    or not a zarr group)."""
    try:
        group = _zarr().open_group(zarr_store(store), mode="r")
        names = sorted(group.array_keys())
    except Exception:  # noqa: BLE001 - an array, or not a store at all
        return []
    return names if len(names) > 1 and "0" not in names else []


def open_zarr_for_block_writes(temp_path: str | os.PathLike[str]) -> zarr.Array:
    """Open a :class:`ZarrWriter`'s temporary store for writing blocks from another process.

    Equivalent to ``zarr.open_array(temp_path, mode="r+")``; a URL (:mod:`.zarrurl`) through
    a writable fsspec store.
    """
    if is_url(str(temp_path)):
        from .fetch import writable_store

        return _zarr().open_array(writable_store(str(temp_path)), mode="r+")
    return _zarr().open_array(str(temp_path), mode="r+")


def ome_levels(path: str | os.PathLike[str]) -> list[str]:
    """The array paths of an OME-Zarr store's first multiscale image, full resolution first
    (NGFF 0.4 in zarr format 2, or 0.5 in format 3); empty for anything else."""
    try:
        group = _zarr().open_group(zarr_store(path), mode="r")
        datasets = ngff_multiscales(dict(group.attrs))[0]["datasets"]
        return [str(d["path"]) for d in datasets if str(d["path"]) in group]
    except Exception:  # noqa: BLE001 - not a store, not a group, no or malformed metadata
        return []


def open_zarr_readonly(path: str | os.PathLike[str]) -> zarr.Array:
    """Open a finished store (as :meth:`ZarrWriter.commit` leaves it) for reading: its
    full-resolution array (an OME-Zarr store's ``"0"``)."""
    where = str(path)
    if is_ome(path):
        where = f"{where.rstrip('/')}/0" if is_url(where) else str(Path(path) / "0")
    return _zarr().open_array(zarr_store(where), mode="r")


class ZarrWriter:
    """Create a zarr array for chunk-by-chunk output, atomically.

    The array lives in ``<name>.partial-<random>`` beside ``path`` until :meth:`commit` marks
    it complete and renames it into place. Used as a context manager it commits when the block
    ends normally and aborts (removes the temporary store) on any exception, including
    ``KeyboardInterrupt`` and ``GeneratorExit`` from a closed generator.

    The store is zarr format 2 (readable by zarr 2 and 3, and by ``dask.array.from_zarr``),
    or format 3 with each chunk of ``chunks`` stored as a shard of smaller chunks
    (``zarr_format=3``; :mod:`.zarrfmt`). Spacing, unit and axes are stored as attributes
    ``"spacing"``, ``"unit"``, ``"axes"``.

    The store is an OME-Zarr store when the name ends in ``.ome.zarr``: the array is its
    ``"0"``, and :meth:`commit` adds the pyramid (:meth:`build_pyramid`, unless built
    already: ``pyramid_built``) and the OME-NGFF metadata (0.4 in format 2, 0.5 in format 3).

    Parameters
    ----------
    path : str or path-like
        Final ``.zarr`` path.
    shape : tuple of int
        Array shape.
    dtype : numpy dtype-like
        Array dtype.
    chunks : tuple of int, optional
        The unit that parallel writers must not share: the chunk shape in format 2, the shard
        shape in format 3. Default lets zarr choose (format 3: the whole array, one shard).
    spacing : tuple of float, optional
        Pixel size per axis in ``unit``.
    unit : str
        Unit of ``spacing``.
    axes : str, optional
        Axis letters such as ``"ZYX"``.
    attrs : dict, optional
        Extra JSON-serialisable attributes.
    overwrite : bool
        Replace an existing ``path`` at commit time. If False and ``path`` exists, InputError
        is raised here, before any work.
    resume_key : str, optional
        Make the store resumable: the key of the run (the same key for the same input, model,
        options and plan). An unfinished store beside ``path`` left by a run of the same key,
        shape, dtype and chunks is opened again instead of a new one (``resumed`` True), and
        :meth:`abort` keeps the store, with its :attr:`ledger`, for the next such run.
    zarr_format : {2, 3}
        The store's zarr format.
    origin : tuple of float, optional
        Where the first pixel's centre lies, in ``unit`` (a restored region's place in the
        image it came from): the ``origin`` attribute, and an OME-Zarr's translations.

    Attributes
    ----------
    array : zarr.Array
        The array to write into. After commit it is re-opened read-only at the final path;
        after abort it is None.
    path : pathlib.Path
        Final path.
    resumed : bool
        The store is an earlier run's, opened again (``resume_key``).

    Notes
    -----
    Other processes can open :attr:`temp_path` with :func:`open_zarr_for_block_writes` (or
    ``zarr.open_array(temp_path, mode="r+")``) and write chunk-aligned blocks.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        shape: Sequence[int],
        dtype: Any,
        *,
        chunks: Sequence[int] | None = None,
        spacing: Sequence[float] | None = None,
        unit: str = "nm",
        axes: str | None = None,
        attrs: dict[str, Any] | None = None,
        overwrite: bool = False,
        resume_key: str | None = None,
        zarr_format: int = 2,
        origin: Sequence[float] | None = None,
    ) -> None:
        self.path = check_output_path(path)
        self.zarr_format = check_zarr_format(zarr_format)
        if suffix_of(self.path) != ZARR_SUFFIX:
            raise InputError(f"cannot write '{self.path}' as zarr: the name must end in .zarr")
        if self.path.exists() and not overwrite:
            raise InputError(f"cannot write '{self.path}': it already exists")
        self.overwrite = overwrite
        shape = tuple(int(n) for n in shape)
        meta, axes = self._describe(shape, spacing, unit, axes, attrs, origin, resume_key)
        self._state = "open"
        if resume_key is not None:
            found = find_unfinished(self.path, resume_key, shape, np.dtype(dtype), chunks, self.zarr_format)
            if found is not None:
                self._temp, self.resumed = found, True
                self.array = _zarr().open_array(str(self.array_path), mode="r+")
                return
        self._temp = self.path.with_name(f"{self.path.name}.partial-{secrets.token_hex(4)}")
        try:
            if self.ome:
                fmt = {"zarr_format": self.zarr_format} if zarr_major() >= 3 else {}
                _zarr().open_group(str(self._temp), mode="w-", **fmt)
            self.array = create_zarr_array(self.array_path, shape, dtype, chunks=chunks, zarr_format=self.zarr_format,
                                           axes=axes)  # fmt: skip
            self.array.attrs.update(meta)
        except BaseException as exc:
            remove_path(self._temp)
            self._state = "aborted"
            if isinstance(exc, OSError):
                raise InputError(f"cannot write '{self.path}': {reason(exc)}") from exc
            raise

    def _describe(
        self, shape: tuple[int, ...], spacing: Any, unit: str, axes: str | None, attrs: dict[str, Any] | None,
        origin: Any, resume_key: str | None,
    ) -> tuple[dict[str, Any], str | None]:
        """The array's attributes (checked; JSON) and its axes; sets what commit needs."""
        spacing = check_spacing(spacing, len(shape), self.path)
        origin = check_origin(origin, len(shape), self.path)
        if axes is not None:
            axes = check_axes(axes, len(shape), self.path)
        meta: dict[str, Any] = dict(attrs or {})
        if spacing is not None:
            meta["spacing"] = list(spacing)
            meta["unit"] = unit
        if origin is not None:
            meta["origin"] = list(origin)
            meta.setdefault("unit", unit)
        if axes is not None:
            meta["axes"] = axes
        meta[COMPLETE_ATTR] = False
        if resume_key is not None:
            meta[RESUME_ATTR] = resume_key
        self.resume_key = resume_key
        self.resumed = False
        self.ome = is_ome(self.path)
        self.pyramid_built = False
        self._ngff = (spacing, unit if spacing is not None else None, axes)
        self._origin = origin
        try:
            json.dumps(meta)
        except (TypeError, ValueError) as exc:
            raise InputError(f"cannot write '{self.path}': attributes are not JSON ({reason(exc)})") from exc
        return meta, axes

    def _join(self, name: str) -> Any:
        """An array inside the temporary store (a path; a URL in :mod:`.zarrurl`)."""
        return self._temp / name

    @property
    def temp_path(self) -> Path:
        """Where the array lives until :meth:`commit`."""
        return self._temp

    @property
    def array_path(self) -> Path:
        """Where the full-resolution array lives until :meth:`commit` (what workers open)."""
        return self._join("0") if self.ome else self._temp

    @property
    def has_pyramid(self) -> bool:
        """An OME-Zarr store large enough for levels below full resolution."""
        return self.ome and bool(level_plan(tuple(self.array.shape), self._ngff[0]))

    def pyramid_levels(self) -> list[tuple[Path, Path, bool]]:
        """The (level above, level, z halved) of an OME-Zarr store's pyramid, each level
        created empty (again, after a resumed run); [] for a plain store."""
        if not self.ome:
            return []
        found, above = [], self.array_path
        for k, level in enumerate(level_plan(tuple(self.array.shape), self._ngff[0]), 1):
            chunks = tuple(min(c, n) for c, n in zip(write_chunks(self.array), level.shape))
            path = self._join(str(k))
            create_zarr_array(path, level.shape, self.array.dtype, chunks=chunks, zarr_format=self.zarr_format,
                              axes=self._ngff[2], overwrite=True)  # fmt: skip
            found.append((above, path, level.zdown))
            above = path
        return found

    def build_pyramid(self) -> Generator[Progress, None, None]:
        """Write an OME-Zarr store's pyramid in this process, level by level (yields
        progress); nothing for a plain store."""
        for above, path, zdown in self.pyramid_levels():
            src, dst = _zarr().open_array(zarr_store(str(above)), mode="r"), open_zarr_for_block_writes(path)
            yield from downsample_tiles(src, dst, level_tiles(dst.shape, write_chunks(dst)), zdown=zdown)
        self.pyramid_built = True

    def _ome_metadata(self) -> dict[str, Any]:
        """The group's OME-NGFF attributes, complete (its pyramid levels are made)."""
        levels = level_plan(tuple(self.array.shape), self._ngff[0])
        meta = multiscales(levels, self.array.ndim, *self._ngff, Path(str(self.path)).name,
                           version="0.5" if self.zarr_format == 3 else "0.4", origin=self._origin)
        return {**meta, COMPLETE_ATTR: True}

    def _finish(self) -> None:
        """Complete the store in place: its ledger gone (the key stays: the same run again has
        nothing to do), an OME-Zarr store's pyramid and metadata, a resumed store's place, the
        complete attribute (the marker file and the move are the caller's)."""
        if self.resume_key is not None:
            self._drop(self._join(LEDGER_DIR))
        if self.ome:
            if not self.pyramid_built:
                for _ in self.build_pyramid():
                    pass
            self._group().attrs.update(self._ome_metadata())
        if self.resumed:  # begun by an earlier run, which may have been told another place
            if self._origin is not None:
                self.array.attrs["origin"] = list(self._origin)
            elif "origin" in self.array.attrs:
                del self.array.attrs["origin"]
        self.array.attrs[COMPLETE_ATTR] = True

    def _group(self) -> Any:
        """The temporary store's root group, writable."""
        return _zarr().open_group(str(self._temp), mode="r+")

    def _drop(self, where: Any) -> None:
        """Remove a part of the temporary store (a folder; an object store's prefix in :mod:`.zarrurl`)."""
        remove_path(where)

    @property
    def ledger(self) -> Ledger:
        """The finished parts of a resumable run (an inert ledger for a store that is not)."""
        return Ledger(str(self._temp / LEDGER_DIR) if self.resume_key is not None else None)

    def commit(self) -> Path:
        """Mark the store complete and move it to :attr:`path`.

        An existing output is replaced (when ``overwrite=True``) only after the new store is
        complete: it is first renamed aside, then deleted once the new one is in place.

        Returns
        -------
        pathlib.Path
            The final path.
        """
        if self._state == "committed":
            return self.path
        if self._state != "open":
            raise RuntimeError(f"ZarrWriter for '{self.path}' was aborted; nothing to commit")
        try:
            self._finish()
            marker = self.array_path / COMPLETE_FILE  # OME-Zarr: inside "0", as zarr lists the root
            with open(marker, "w") as fh:
                fh.write("complete\n")
                fh.flush()
                os.fsync(fh.fileno())
            fsync_dir(self._temp)
        except OSError as exc:
            raise InputError(f"cannot finish '{self.path}': {reason(exc)}") from exc

        backup: Path | None = None
        try:
            if self.path.exists() or self.path.is_symlink():
                if not self.overwrite:
                    # Someone created it while we worked; do not destroy hours of output.
                    raise InputError(
                        f"cannot write '{self.path}': it appeared while writing; "
                        f"the finished result is kept in '{self._temp}'"
                    )
                backup = self.path.with_name(f".{self.path.name}.old-{secrets.token_hex(4)}")
                os.replace(self.path, backup)
            try:
                os.replace(self._temp, self.path)
            except BaseException:
                if backup is not None:
                    os.replace(backup, self.path)  # put the old output back
                raise
        except OSError as exc:
            raise InputError(
                f"cannot move finished output to '{self.path}': {reason(exc)}; "
                f"it is kept in '{self._temp}'"
            ) from exc
        fsync_dir(self.path.parent)
        if backup is not None:
            remove_path(backup)
        self._state = "committed"
        # Writes through the old handle would re-create the temp folder; hand out a read-only one.
        self.array = open_zarr_readonly(self.path)
        return self.path

    def abort(self) -> None:
        """Remove the temporary store (keep it, for a later run to resume, when resumable).
        Does nothing after :meth:`commit` or a previous abort."""
        if self._state != "open":
            return
        self._state = "aborted"
        self.array = None  # type: ignore[assignment]
        if self.resume_key is None:
            remove_path(self._temp)

    @property
    def kept(self) -> bool:
        """An aborted resumable store left in place for the next run."""
        return self._state == "aborted" and self.resume_key is not None and self._temp.exists()

    def __enter__(self) -> ZarrWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if exc_type is None:
            self.commit()
        else:
            self.abort()
        return False

    def __repr__(self) -> str:
        return f"ZarrWriter({str(self.path)!r}, state={self._state!r})"
