"""HDF5 files (``.h5``, ``.hdf5``, ``.hdf``), read lazily with their voxel size.

Connectomics data often comes as HDF5: the CREMI volumes, ilastik projects' inputs, exports of
Fiji's HDF5 plugin and of many FIB-SEM pipelines. A file holds datasets at paths such as
``volumes/raw``; ``sample_A.hdf/volumes/raw`` names one, as ``volume.zarr/0`` does in a zarr
store. The voxel size is read from the dataset's attributes: ``resolution`` (nm, the CREMI
convention), ``element_size_um`` (µm, Fiji) or ``spacing`` with ``unit``, or, for a
BigDataViewer file, from its XML (:mod:`.bdv`). A Thermo Fisher Velox ``.emd`` file names its
images after their detectors (``scan.emd/HAADF``), with the pixel size it records
(:mod:`.velox`).

:class:`H5Array` reads only what is indexed, opening the file for each read, so that no handle
stays open in a long napari session and the array pickles as a path and a name: cluster
workers read the file themselves (:func:`~.sources.open_source`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .bdv import bdv_dtype, bdv_images, bdv_spacing
from .calibration import to_nm
from .common import H5_SUFFIXES, ImageData, check_readable, file_and_inner, is_url, likely_image, reason
from .fetch import open_file, unreachable
from .hspy import hyperspy_axes, hyperspy_images, is_hyperspy
from .ims import imaris_images, imaris_size, imaris_spacing, is_imaris
from .velox import is_velox, velox_dataset, velox_images, velox_spacing
from .views import AxesPicked, Cropped, FramesFirst, LazyArray, ascending_index, drop_single_axes, single_axes

__all__ = ["H5Array", "h5_file_of", "read_h5", "h5_datasets", "h5_images", "open_h5"]

# What h5py raises on a damaged file, by where the damage lies (object headers, heaps, links).
_DAMAGED = (OSError, RuntimeError, KeyError, ValueError, TypeError, AttributeError)


def _h5py() -> Any:
    try:
        import h5py
    except ImportError:  # pragma: no cover - h5py is a dependency
        raise InputError("reading HDF5 needs h5py: pip install h5py") from None
    return h5py


def open_h5(path: str) -> Any:
    """An HDF5 file opened read-only (an ``h5py.File``; close it). Some cluster file systems
    refuse HDF5's file lock; a reader needs none, so it opens without one there. A URL is read
    through fsspec, a block of it at a time (:func:`~.fetch.open_file`)."""
    h5py = _h5py()
    if is_url(path):
        remote = open_file(path)
        try:
            return _url_file(h5py)(remote)
        except BaseException:
            remote.close()
            raise
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        if "lock" not in str(exc).lower():
            raise
        return h5py.File(path, "r", locking=False)


def _url_file(h5py: Any) -> type:
    """An ``h5py.File`` over a remote file that closes the remote file with it."""

    class UrlFile(h5py.File):
        def __init__(self, remote: Any) -> None:
            super().__init__(remote, "r")
            self._remote = remote

        def close(self) -> None:
            try:
                super().close()
            finally:
                self._remote.close()

    return UrlFile


def h5_file_of(path: Path) -> tuple[Path, str] | None:
    """Split ``sample.h5/volumes/raw`` into the file and the dataset path inside it (``""``
    for the file itself); None if no part of the path is named like an HDF5 file.

    Examples
    --------
    >>> h5_file_of(Path("/data/sample_A.hdf"))
    (PosixPath('/data/sample_A.hdf'), '')
    >>> h5_file_of(Path("/data/a.tif")) is None
    True
    """
    return file_and_inner(path, H5_SUFFIXES)


def h5_datasets(group: Any) -> list[str]:
    """The names of the images in an open file or group, as a path names them: the paths of
    datasets that are numeric, and once single axes are dropped (:func:`~.views.single_axes`)
    two or more dimensions, the last two of at least 8 pixels (not tables such as
    BigDataViewer's ``s00/resolutions``); of a BigDataViewer pyramid, only the full resolution
    (:mod:`.bdv`); of a Velox file, its detectors (:func:`~.velox.velox_images`); of a
    HyperSpy file, its images' titles (:func:`~.hspy.hyperspy_images`)."""
    named = _named(group)
    if named is not None:
        return list(named)
    found: list[str] = []

    def visit(name: str, node: Any) -> None:
        shape = getattr(node, "shape", None)
        dtype = getattr(node, "dtype", None)
        if shape is None or dtype is None or len(shape) < 2 or np.dtype(dtype).kind not in "uifb":
            return
        lead, trail = single_axes(tuple(shape))
        image = shape[lead : len(shape) - trail]
        if len(image) >= 2 and min(image[-2:]) >= 8:
            found.append(name)

    group.visititems(visit)
    return bdv_images(sorted(found))  # a BigDataViewer pyramid: its full resolution only


def h5_images(path: Path) -> list[str]:
    """The image datasets of an HDF5 file when it holds several (what a path must name inside
    it); empty otherwise, or when the file cannot be read (reading it says why)."""
    try:
        with open_h5(str(path)) as f:
            names = h5_datasets(f)
    except _DAMAGED:
        return []
    return names if len(names) > 1 else []


def read_h5(path: Path | str, key: str | None = None) -> ImageData:
    """Read a dataset of an HDF5 file (a path, or a URL: :mod:`.remote`) lazily, with its
    voxel size (nm where known).

    ``key`` (or the part of ``path`` after the file name) names the dataset; without one the
    file's only image dataset is read, and a file with several is refused with their names.
    """
    if not is_url(path):
        check_readable(Path(path), "HDF5")
    try:
        f = open_h5(str(path))
    except OSError as exc:
        if is_url(path) and unreachable(exc):  # no host, no access: not a verdict on the file
            raise InputError(f"cannot read '{path}': {reason(exc)}") from exc
        raise InputError(f"cannot read '{path}': not an HDF5 file ({reason(exc)})") from exc
    try:
        with f:
            name, spacing, unit, frames_last, axes, crop = _resolve(f, path, key)
        array = H5Array(path, name)
        if crop is not None:  # stored padded to whole chunks (Imaris)
            array = Cropped(array, crop)
    except InputError:
        raise
    except _DAMAGED as exc:
        raise InputError(f"cannot read '{path}': the file is damaged ({reason(exc)})") from exc
    if frames_last:  # Velox's (y, x, frames) -> (frames, y, x), or (y, x)
        frames = FramesFirst(array)
        one = frames.shape[0] == 1
        return ImageData(data=AxesPicked(frames, (0,)) if one else frames, spacing=spacing, unit=unit,
                         axes="YX" if one else "TYX", path=None if is_url(path) else Path(path))
    data, spacing, axes = drop_single_axes(array, spacing, axes)
    return ImageData(data=data, spacing=spacing, unit=unit, axes=axes, path=None if is_url(path) else Path(path))


def _resolve(
    f: Any, path: Path | str, key: str | None
) -> tuple[str, tuple[float, ...] | None, str | None, bool, str | None, tuple[int, ...] | None]:
    """(dataset path, spacing, unit, whether it is a Velox image kept frames last, its axes where
    the file says, the size to crop it to where it is stored padded) of the image ``key`` names
    in an open file, or of its only image; refused in one line otherwise."""
    named = _named(f)
    names = list(named) if named is not None else h5_datasets(f)
    key = (key or "").strip("/")
    if key and named is not None:  # a detector's or signal's name, in any case, or the dataset's path
        key = next((n for n in named if n.lower() == key.lower()), key)
    if key:
        node = f.get(named.get(key, key) if named is not None else key)
        if node is None or not hasattr(node, "shape"):
            listed = ", ".join(names) or "none"
            raise InputError(f"cannot read '{path}': no dataset '{key}' in it (image datasets: {listed})")
    elif len(names) == 1:
        key = names[0]
    elif not names:
        raise InputError(f"cannot read '{path}': it holds no image dataset")
    else:
        raise InputError(
            f"cannot read '{path}': it holds several datasets ({', '.join(names)}); "
            f"choose one, e.g. '{path}/{likely_image(names)}'"
        )
    name = named.get(key, key) if named is not None else key
    dset = f[name]
    frames_last = velox_dataset(name) and len(dset.shape) == 3
    axes, crop = None, None
    if frames_last:
        yx, unit = velox_spacing(f, name)
        spacing = yx if (yx is None or dset.shape[2] == 1) else (1.0, *yx)
    elif is_hyperspy(f) and name in (named or {}).values():
        spacing, unit, axes = hyperspy_axes(f, name)
    elif is_imaris(f) and name in (named or {}).values():
        size = imaris_size(f, name)
        spacing, unit = imaris_spacing(f, size)
        axes, crop = "ZYX", (size if size != tuple(dset.shape) else None)
    else:
        spacing, unit = _calibration(dict(dset.attrs), len(dset.shape))
        if spacing is None and not is_url(path):  # a BigDataViewer XML beside the file
            spacing, unit = bdv_spacing(Path(path), f, name)
    if dset.size:
        try:  # one pixel: its chunk is decompressed, so a missing filter is found before any work
            dset[(0,) * len(dset.shape)]
        except OSError as exc:
            hint = "; its compression filter may need: pip install hdf5plugin" if "filter" in str(exc).lower() else ""
            raise InputError(f"cannot read '{path}/{key}': {reason(exc)}{hint}") from exc
    return name, spacing, unit, frames_last, axes, crop


def _named(f: Any) -> dict[str, str] | None:
    """The images of a file whose maker names them (Velox, HyperSpy, Imaris), or None."""
    if is_velox(f):
        return velox_images(f)
    if is_imaris(f):
        return imaris_images(f)
    return hyperspy_images(f) if is_hyperspy(f) else None


def _calibration(attrs: dict, ndim: int) -> tuple[tuple[float, ...] | None, str | None]:
    """Voxel size from the attributes that EM HDF5 files use, in nm where the unit is known."""
    for name, unit in (("resolution", "nm"), ("element_size_um", "µm"), ("spacing", None)):
        values = attrs.get(name)
        if values is None:
            continue
        try:
            values = tuple(float(v) for v in np.atleast_1d(values))
        except (TypeError, ValueError):
            continue
        if len(values) != ndim or not all(np.isfinite(v) and v > 0 for v in values):
            continue
        if unit is None:
            raw = attrs.get("unit")
            unit = raw.decode() if isinstance(raw, bytes) else (str(raw) if raw is not None else None)
        if unit is None:
            return values, None
        return to_nm(values, [unit] * ndim, None)
    return None, None


class H5Array(LazyArray):
    """A dataset of an HDF5 file, read lazily: indexing opens the file, reads only the
    selection (numpy-style basic indexing, negative steps included) and closes it.

    Examples
    --------
    >>> import h5py, tempfile
    >>> p = Path(tempfile.mkdtemp()) / "v.h5"
    >>> with h5py.File(p, "w") as f:
    ...     _ = f.create_dataset("raw", data=np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    >>> a = H5Array(p, "raw")
    >>> a.shape, a.dtype, a[1, ::-1, 0].tolist()
    ((2, 3, 4), dtype('uint8'), [20, 16, 12])
    """

    def __init__(self, path: str | os.PathLike[str], name: str) -> None:
        self.file = str(path) if is_url(path) else str(Path(path).resolve())
        self.name = str(name)
        with open_h5(self.file) as f:
            d = f[self.name]
            self.shape: tuple[int, ...] = tuple(int(s) for s in d.shape)
            self.dtype = bdv_dtype(self.name, np.dtype(d.dtype))  # BigDataViewer's uint16 is stored as int16
            self.chunks: tuple[int, ...] = tuple(d.chunks) if d.chunks else self.shape

    def __getitem__(self, key: Any) -> np.ndarray:
        read, post = ascending_index(key, self.shape)
        if any(isinstance(r, slice) and r.stop <= r.start for r in read):  # HDF5 selects nothing empty
            return np.zeros(tuple(len(range(r.start, r.stop, r.step)) for r in read if isinstance(r, slice)), self.dtype)
        try:
            with open_h5(self.file) as f:
                out = np.asarray(f[self.name][tuple(read)])
        except _DAMAGED as exc:
            raise InputError(f"cannot read '{self.file}/{self.name}': {reason(exc)}") from exc
        out = out.view(self.dtype) if out.dtype != self.dtype else out
        return out[post] if post else out

    def __dask_tokenize__(self) -> tuple:
        # The same file, unchanged, is the same input (dask names its graph after this).
        if is_url(self.file):
            return ("H5Array", self.file, self.name)
        st = os.stat(self.file)
        return ("H5Array", self.file, self.name, st.st_mtime_ns, st.st_size)

    def __repr__(self) -> str:
        return f"H5Array('{self.file}', '{self.name}', shape={self.shape}, dtype={self.dtype})"
