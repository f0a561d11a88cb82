"""Read and write images and volumes (TIFF, MRC, zarr and neuroglancer precomputed; HDF5, DigitalMicrograph and
PNG/JPEG/BMP pictures read only) together with their pixel spacing.

Reading returns an :class:`~.common.ImageData`: the pixels (numpy for TIFF, a lazy
``zarr.Array`` for zarr) plus spacing, unit and axes when the file says so. Spacing is
converted to nanometres whenever the unit is recognisable.

Writing is atomic: output first goes to a hidden or ``.partial-`` sibling of the final path
and is renamed into place only when complete, so a crash, a cancelled job or a full disk never
leaves a half-written file under the name the user asked for.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import InputError
from .amira import read_amira
from .calibration import check_axes
from .common import (
    AMIRA_SUFFIXES, CZI_SUFFIXES, DM_SUFFIXES, H5_SUFFIXES, MRC_PACKED_SUFFIXES, MRC_SUFFIXES, N5_SUFFIX, PICTURE_SUFFIXES, SER_SUFFIXES, TIFF_SUFFIXES,
    PRECOMPUTED_SUFFIX, ZARR_SUFFIX, ImageData, check_output_path, suffix_of,
    unsupported_type,
    is_url,
    reason,
)
from .czi import czi_file_of, czi_scenes, read_czi
from .dm import read_dm
from .fileurl import is_file_url
from .precomputed import precomputed_of, read_precomputed
from .ser import read_ser
from .hdf5 import h5_file_of, h5_images, read_h5
from .mrc import read_mrc, write_mrc
from .n5 import n5_container_of, n5_images, read_n5
from .pictures import read_picture
from .slices import read_slices
from .tiff import read_tiff, read_tiff_url, write_tiff
from .views import pick_axes
from .zarr import ZarrWriter, group_arrays, is_ome, read_zarr, zarr_store_of
from .zarrfmt import check_zarr_format
from .remote import download, is_single_file, read_url, url_file_name
from .mrcurl import read_mrc_url
from .rawurl import large_and_ranged
from .fetch import remote_size

__all__ = ["read_image", "read_calibration", "write_image", "image_names"]


def read_image(
    path: str | os.PathLike[str], *, key: str | None = None, channel: int | None = None, time: int | None = None
) -> ImageData:
    """Read a TIFF, MRC, DigitalMicrograph, HDF5 or picture file, or a zarr store.

    Parameters
    ----------
    path : str or path-like
        A ``.tif``/``.tiff`` file, an MRC file (``.mrc``, ``.mrcs``, ``.rec``, ``.st``,
        ``.ali``, ``.map``; voxel size in nm), a Gatan DigitalMicrograph file (``.dm3``,
        ``.dm4``: its largest greyscale image; pixel size in nm), a ``.png``/``.jpg``/``.jpeg``/``.bmp``
        picture (2D greyscale, no pixel size), a ``.zarr`` folder, or a path inside a store
        such as ``"volume.zarr/0"``, an N5 container (``.n5``) or a dataset in one such as
        ``"jrc_mus-liver.n5/em/fibsem-uint8/s0"``, an HDF5 file (``.h5``, ``.hdf5``, ``.hdf``, a Velox ``.emd``) or a dataset
        in one such as ``"sample_A.hdf/volumes/raw"`` or ``"stem.emd/HAADF"``, or a folder of 2D slices (one file
        each, natural order), read as a lazy ZYX volume without voxel size; or the URL of a
        zarr store or an array in one (``https://``, ``s3://``, ``gs://``: :mod:`.remote`).
    key : str, optional
        For a zarr group: the array to read. Default: the array named ``"0"`` or the only array.
        For an HDF5 file or an N5 container: the dataset. Default: the only image dataset (for
        N5, or the finest level of the only multiscale group).
    channel, time : int, optional
        For an image whose axes are declared (ImageJ hyperstacks, OME-TIFF, OME-Zarr): the
        channel (``C``) or time point (``T``) to read, from 0 (:func:`~.views.pick_axes`).
        Default: the only one; an image with several is read with them, and refused by the
        restorations.

    Returns
    -------
    ImageData
        TIFF pixels as numpy (axes of size 1 in front of the last three are dropped), MRC
        and DigitalMicrograph as numpy (a read-only memory map for files of 1 GiB or more), zarr pixels as a lazy
        ``zarr.Array``, HDF5 as a lazy :class:`~.hdf5.H5Array`, N5 as a lazy
        :class:`~.n5.N5Array`. A single T and C in front of
        ZYX (OME-Zarr) are dropped, lazily.

    Raises
    ------
    InputError
        The path is missing, unreadable, corrupt, of an unsupported type, or not an array.
    """
    if is_url(path) and is_single_file(str(path)):  # a TIFF, MRC, ... by URL
        try:
            size = remote_size(str(path))
        except OSError:
            size = None  # the fetch says why
        # a large MRC or TIFF volume: read a band of rows at a time; else fetched once, read here
        img = _by_range(str(path), size)
        if img is None:
            try:
                local, fetched = download(str(path), size)
            except (OSError, ImportError) as exc:
                raise InputError(f"cannot read '{path}': {reason(exc)}") from exc
            img = _read(local, key)
            img.note = "; ".join(n for n in (img.note, f"{fetched} {local}") if n)
    else:
        img = read_url(path, key) if is_url(path) else _read(Path(path).expanduser(), key)
    if channel is not None or time is not None:
        if img.origin is not None:  # the kept axes' (picking is lazy: nothing is read twice)
            img.origin = pick_axes(img.data, img.origin, img.axes, channel=channel, time=time, name=str(path))[1]
        img.data, img.spacing, img.axes = pick_axes(
            img.data, img.spacing, img.axes, channel=channel, time=time, name=str(path)
        )
    return img


def _by_range(url: str, size: int | None) -> ImageData | None:
    """A large MRC or TIFF file by URL (of ``size`` bytes) whose pixels lie uncompressed,
    read by byte range (:mod:`.rawurl`); None for a file to fetch whole."""
    name = url_file_name(url).lower()
    if not name.endswith((*MRC_SUFFIXES, *TIFF_SUFFIXES)) or not large_and_ranged(url, size):
        return None
    return read_mrc_url(url) if name.endswith(MRC_SUFFIXES) else read_tiff_url(url)


def read_calibration(path: str | os.PathLike[str]) -> ImageData:
    """What :func:`read_image` reads about ``path`` but its pixels: shape, dtype, spacing,
    unit, axes and note. A TIFF's pixels are not read (``data`` is a stand-in of zeros that
    holds no memory); the other formats are read lazily anyway.

    Examples
    --------
    >>> import tempfile, tifffile, numpy as np
    >>> p = Path(tempfile.mkdtemp()) / "stack.tif"
    >>> tifffile.imwrite(p, np.ones((3, 4, 5), np.uint8), imagej=True, resolution=(0.2, 0.2),
    ...                  metadata={"unit": "nm", "spacing": 30.0, "axes": "ZYX"})
    >>> img = read_calibration(p)
    >>> img.data.shape, img.spacing, img.unit, int(img.data.max())
    ((3, 4, 5), (30.0, 5.0, 5.0), 'nm', 0)
    """
    p = Path(path).expanduser()
    return read_tiff(p, pixels=False) if suffix_of(p) in TIFF_SUFFIXES else _read(p, None)


def _read(p: Path, key: str | None) -> ImageData:
    if suffix_of(p) in TIFF_SUFFIXES:
        return read_tiff(p)
    if suffix_of(p) in MRC_SUFFIXES + MRC_PACKED_SUFFIXES:
        return read_mrc(p)
    if suffix_of(p) in DM_SUFFIXES:
        return read_dm(p)
    if suffix_of(p) in SER_SUFFIXES:
        return read_ser(p)
    if suffix_of(p) in AMIRA_SUFFIXES:
        return read_amira(p)
    czi = czi_file_of(p)
    if czi is not None:
        return read_czi(czi[0], key or czi[1] or None)
    if suffix_of(p) in PICTURE_SUFFIXES:
        return read_picture(p)
    h5 = h5_file_of(p)
    if h5 is not None:
        inner = "/".join(k.strip("/") for k in (h5[1], key or "") if k and k.strip("/"))
        return read_h5(h5[0], inner or None)
    n5 = n5_container_of(p)
    if n5 is not None:
        inner = "/".join(k.strip("/") for k in (n5[1], key or "") if k and k.strip("/"))
        return read_n5(n5[0], inner or None)
    volume = precomputed_of(p) if suffix_of(p) != ZARR_SUFFIX else None
    if volume is not None:  # a neuroglancer precomputed volume, or one of its scales
        return read_precomputed(volume[0], key or volume[1])
    if p.is_dir() and suffix_of(p) != ZARR_SUFFIX and zarr_store_of(p) is None:
        if any((p / marker).exists() for marker in (".zarray", ".zgroup", "zarr.json")):
            return read_zarr(p, key)  # a zarr store whose name lacks .zarr
        return read_slices(p, read_image)
    inside = zarr_store_of(p)
    if inside is not None:
        store, inner = inside
        full_key = "/".join(k.strip("/") for k in (inner, key or "") if k and k.strip("/"))
        return read_zarr(store, full_key or None)
    raise unsupported_type(p)


def image_names(path: str | os.PathLike[str]) -> list[str]:
    """The images ``path`` names, for listing them (``emdiffuse info``): ``[path]``, or, for an
    HDF5 file, an N5 container, a zarr group or a CZI file that holds several and no default one, each as ``path/name``
    (the way to name one for :func:`read_image`).

    Examples
    --------
    >>> image_names("scan.tif")
    ['scan.tif']
    """
    p = Path(path).expanduser()
    if suffix_of(p) in H5_SUFFIXES and p.is_file():
        inner = h5_images(p)
    elif suffix_of(p) == ZARR_SUFFIX and p.is_dir() and not is_ome(p):
        inner = group_arrays(p)
    elif suffix_of(p) == N5_SUFFIX:
        inner = n5_images(p)
    elif suffix_of(p) in CZI_SUFFIXES and p.is_file():
        inner = czi_scenes(p)
    else:
        inner = []
    return [f"{path}/{name}" for name in inner] or [str(path)]


def write_image(
    path: str | os.PathLike[str],
    array: Any,
    *,
    spacing: tuple[float, ...] | None = None,
    unit: str = "nm",
    axes: str | None = None,
    overwrite: bool = True,
    provenance: dict[str, Any] | None = None,
    zarr_format: int = 2,
    origin: tuple[float, ...] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    chunk_encoding: str = "raw",
    jpeg_quality: int = 90,
) -> Path | str:
    """Write an image or volume as TIFF, MRC, zarr or neuroglancer precomputed, chosen by the
    extension, atomically.

    Parameters
    ----------
    path : str or path-like
        ``.tif``, ``.tiff``, ``.zarr`` (``.ome.zarr``: OME-Zarr with its multiscale pyramid),
        ``.precomputed`` (a neuroglancer precomputed folder with its scales, 2D or 3D:
        :func:`~.precomputed_write.write_precomputed`) or an MRC name (``.mrc``, ``.rec``,
        ...; 2D or 3D only, uint8 stored as uint16). A
        ``.zarr`` store may be an object store's URL (:mod:`.zarrurl`: it must not exist), and
        so may a TIFF or MRC file (:mod:`.fileurl`: written here, then uploaded whole).
    array : numpy.ndarray or dask.array.Array or array-like
        Pixels. A lazy stack (zarr, dask, a file read lazily) is written slice by slice to TIFF
        and MRC and block by block to zarr; a lazy 2D image of 2 GiB or more goes to TIFF and MRC
        band by band.
    spacing : tuple of float, optional
        Pixel size per axis in ``unit``.
    unit : str
        Unit of ``spacing``.
    axes : str, optional
        Axis letters such as ``"ZYX"``.
    overwrite : bool
        Replace an existing output. If False and the path exists, raise InputError.
    provenance : dict, optional
        How the image was made; TIFF: see :func:`~.tiff.write_tiff`, zarr: the
        ``provenance`` attribute.
    zarr_format : {2, 3}
        A ``.zarr`` output's format (:mod:`.zarrfmt`): 3 stores each slice (or each chunk of
        a lazy input) as one shard of 512-px chunks; other outputs refuse 3.
    origin : tuple of float, optional
        Where the first pixel's centre lies per axis, in ``unit`` (a region's place in the
        image it was cut from): a ``.zarr`` output records it (``origin``, and OME-NGFF
        translations), which napari reads as the layer's ``translate``; a calibrated ImageJ
        TIFF as its ``xorigin`` / ``yorigin`` / ``zorigin`` (:func:`~.tiff.write_tiff`); MRC
        as its grid start where that is whole pixels (:func:`~.mrc.write_mrc`).
    progress : callable, optional
        Called with ``("writing", done, in all)`` while a lazy array is written piece by piece
        (a TIFF's or MRC's slices or bands, :func:`~.tiff.write_tiff`; a zarr store's rows of
        its first axis, then ``("pyramid", ...)`` for an OME-Zarr store's levels), and for a
        TIFF or MRC by URL with ``("upload", bytes uploaded, bytes in all)`` while it is
        uploaded (:func:`~.fileurl.upload_file`). An exception it raises stops the write or
        the upload, and nothing is left.
    chunk_encoding, jpeg_quality
        A ``.precomputed`` output's chunks: ``raw`` or ``jpeg`` of that quality (8-bit pixels;
        :func:`~.precomputed_write.write_precomputed`); other outputs refuse ``jpeg``.

    Returns
    -------
    pathlib.Path or str
        The final path (a URL as given).
    """
    from .precomputed_write import check_encoding

    encoded = check_encoding(chunk_encoding, jpeg_quality, path)
    if is_file_url(str(path)):  # a TIFF or MRC by URL: written here, then uploaded whole
        from .fileurl import check_file_url, file_url_exists, uploaded

        url = check_file_url(str(path))
        if check_zarr_format(zarr_format) != 2:
            raise InputError(f"zarr format {zarr_format} is the format of a .zarr output; '{url}' is not one")
        if not overwrite and file_url_exists(url):
            raise InputError(f"cannot write '{url}': it already exists")
        sent = None if progress is None else (lambda done, total: progress("upload", done, total))
        with uploaded(url, progress=sent) as local:
            write_image(local, array, spacing=spacing, unit=unit, axes=axes, provenance=provenance, origin=origin,
                        progress=progress, chunk_encoding=encoded[0], jpeg_quality=encoded[1])
        return url
    writer: Any = ZarrWriter
    if is_url(str(path)) and str(path).rstrip("/").lower().endswith(ZARR_SUFFIX):  # a store by URL
        from .zarrurl import UrlZarrWriter, check_output_url

        p: Any = check_output_url(str(path))
        writer = UrlZarrWriter
    else:
        p = check_output_path(path)
        if not overwrite and (p.exists() or p.is_symlink()):
            raise InputError(f"cannot write '{p}': it already exists")
    if check_zarr_format(zarr_format) != 2 and suffix_of(Path(str(p))) != ZARR_SUFFIX:
        raise InputError(f"zarr format {zarr_format} is the format of a .zarr output; '{Path(str(p)).name}' is not one")
    written = None if progress is None else (lambda done, total: progress("writing", done, total))
    if isinstance(p, Path) and suffix_of(p) in TIFF_SUFFIXES:
        return write_tiff(p, array, spacing=spacing, unit=unit, axes=axes, provenance=provenance, origin=origin,
                          progress=written)
    if isinstance(p, Path) and suffix_of(p) == PRECOMPUTED_SUFFIX:
        from .precomputed_write import write_precomputed

        return write_precomputed(p, array, spacing=spacing, unit=unit, origin=origin, provenance=provenance,
                                 progress=written, encoding=encoded[0], jpeg_quality=encoded[1])
    if isinstance(p, Path) and suffix_of(p) in MRC_SUFFIXES:
        return write_mrc(p, array, spacing=spacing, unit=unit, axes=axes, provenance=provenance, origin=origin,
                         progress=written)
    attrs = {"provenance": json.loads(json.dumps(provenance, default=str))} if provenance else None
    # Same default axes as TIFF, so both formats read back alike.
    axes = check_axes(axes, len(array.shape), p) if hasattr(array, "shape") else axes

    import dask.array as da

    if isinstance(array, da.Array):
        lazy = array
    elif isinstance(array, np.ndarray):
        lazy = None
    elif hasattr(array, "shape") and hasattr(array, "dtype") and hasattr(array, "__getitem__"):
        # e.g. a zarr.Array: copy chunk by chunk rather than loading it whole.
        lazy = da.from_array(array, chunks=getattr(array, "chunks", "auto"))
    else:
        array = np.asarray(array)
        lazy = None

    if lazy is not None:
        # One dask block per zarr chunk, so parallel writes never share a chunk.
        chunks = tuple(max(c) if c else 1 for c in lazy.chunks)
        lazy = lazy.rechunk(chunks)
        with writer(
            p, lazy.shape, lazy.dtype, chunks=chunks, spacing=spacing, unit=unit, axes=axes,
            overwrite=overwrite, attrs=attrs, zarr_format=zarr_format, origin=origin,
        ) as writer:
            _store_in_slabs(lazy, writer.array, written)
            for ev in writer.build_pyramid():  # an OME-Zarr output's levels below full resolution
                if progress is not None:
                    progress(ev.stage, ev.done, ev.total)
    else:
        # format 3: a shard per slice (zarr's own chunks otherwise)
        per_slice = (*(1,) * (array.ndim - 2), *array.shape[-2:]) if zarr_format == 3 and array.ndim >= 2 else None
        with writer(
            p, array.shape, array.dtype, chunks=per_slice, spacing=spacing, unit=unit, axes=axes, overwrite=overwrite,
            attrs=attrs, zarr_format=zarr_format, origin=origin,
        ) as writer:
            writer.array[...] = array
            for _ in writer.build_pyramid():
                pass
    return p


def _store_in_slabs(lazy: Any, target: Any, written: Callable[[int, int], None] | None) -> None:
    """Store a dask array in slabs of its first axis, each of 16 chunks or more (so that the
    threads still write several at once), with ``written(rows done, rows)`` before each slab
    and at the end: a bar for a long copy, and a stop between two slabs."""
    import dask.array as da

    rows, n = lazy.chunks[0][0] if lazy.chunks[0] else 1, int(lazy.shape[0])
    per_row = max(1, int(np.prod([len(c) for c in lazy.chunks[1:]])))
    step = rows * -(-16 // per_row)
    for start in range(0, n, step):
        if written is not None:
            written(start, n)
        stop = min(start + step, n)
        da.store(lazy[start:stop], target, regions=(slice(start, stop),), lock=False)
    if written is not None:
        written(n, n)
