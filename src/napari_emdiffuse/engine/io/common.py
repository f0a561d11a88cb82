"""What the readers and writers share: the image type, file-type checks and output paths."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputError

if TYPE_CHECKING:  # heavy imports only for type checkers; loaded lazily at run time
    import dask.array
    import zarr

__all__ = [
    "TIFF_SUFFIXES",
    "MRC_SUFFIXES",
    "MRC_PACKED_SUFFIXES",
    "PICTURE_SUFFIXES",
    "ZARR_SUFFIX",
    "H5_SUFFIXES",
    "DM_SUFFIXES",
    "SER_SUFFIXES",
    "AMIRA_SUFFIXES",
    "CZI_SUFFIXES",
    "N5_SUFFIX",
    "PRECOMPUTED_SUFFIX",
    "is_zarr_name",
    "ImageData",
    "likely_image",
    "reason",
    "suffix_of",
    "file_and_inner",
    "unsupported_type",
    "check_readable",
    "image_files_in",
    "check_output_path",
    "as_numpy",
    "STREAM_2D_MIN_BYTES",
    "streams_lazily",
    "grey_from_samples",
    "is_url",
    "refuse_url",
    "damaged_reason",
]

TIFF_SUFFIXES = (".tif", ".tiff")
#: MRC and the names IMOD and SerialEM give it (tilt series, aligned stacks, reconstructions).
MRC_SUFFIXES = (".mrc", ".mrcs", ".rec", ".st", ".ali", ".map")
#: Read only: MRC compressed with gzip or bzip2 (EMDB distributes its maps as ``.map.gz``).
MRC_PACKED_SUFFIXES = tuple(s + c for s in MRC_SUFFIXES for c in (".gz", ".bz2"))
#: Read only: pictures carry no reliable pixel size, and JPEG loses detail.
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
ZARR_SUFFIX = ".zarr"
#: Written only by that name (a neuroglancer precomputed folder, :mod:`.precomputed_write`);
#: read by its ``info`` file, whatever its name.
PRECOMPUTED_SUFFIX = ".precomputed"
#: Read only (CREMI, ilastik, Fiji's HDF5 plugin): see :mod:`.hdf5`.
H5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".emd", ".hspy", ".ims")  # .emd: Velox and Berkeley EMD; .hspy: HyperSpy; .ims: Imaris
#: Read only: Gatan DigitalMicrograph (TEM cameras, 3View); see :mod:`.dm`.
DM_SUFFIXES = (".dm3", ".dm4")
SER_SUFFIXES = (".ser",)  # TIA series files
AMIRA_SUFFIXES = (".am",)  # Amira / Avizo volumes (read only; see :mod:`.amira`)
CZI_SUFFIXES = (".czi",)  # Zeiss ZEN (read only, through pylibCZIrw; see :mod:`.czi`)
#: Read only: N5 containers (OpenOrganelle, BigStitcher); see :mod:`.n5`.
N5_SUFFIX = ".n5"


@dataclass
class ImageData:
    """Pixels of an image or volume and what is known about their physical size.

    Attributes
    ----------
    data : numpy.ndarray or dask.array.Array or zarr.Array
        The pixels as read. TIFF gives numpy (a read-only memory map for large uncompressed
        files), zarr gives a lazy ``zarr.Array`` whose chunks are read on indexing.
    spacing : tuple of float, optional
        Physical size of a pixel along each axis (same length as ``data.ndim``), in ``unit``.
        Axes without calibration (channels, time, an uncalibrated z) get 1.0. None if the
        file carries no calibration at all.
    unit : str, optional
        ``"nm"`` whenever the file's unit was recognised; otherwise the file's unit string as
        is; None if unknown.
    axes : str, optional
        Axis letters such as ``"YX"`` or ``"ZYX"`` when the file declares them (ImageJ, OME,
        our own metadata), else None.
    path : pathlib.Path, optional
        The file or zarr store read.
    note : str, optional
        What reading left out that a user should know (a microscope's data bar).
    source : str, optional
        Where a TIFF's or picture's pixel size came from (``"ImageJ metadata"``, ``"Thermo Fisher tag"``,
        ``"Hitachi text file"``, ...), to tell a user which record to check when it is wrong.
    origin : tuple of float, optional
        Where the centre of the first pixel lies, per axis, in ``unit`` (napari's
        ``translate``): a zarr store's ``origin`` attribute or OME-NGFF translation, as a
        restored region records its place in the image it was cut from. None: at 0.
    """

    data: np.ndarray | dask.array.Array | zarr.Array
    spacing: tuple[float, ...] | None
    unit: str | None
    axes: str | None
    path: Path | None
    note: str | None = None
    source: str | None = None
    origin: tuple[float, ...] | None = None

    def __repr__(self) -> str:
        # The default repr would print every pixel.
        kind = type(self.data).__module__.split(".")[0] + "." + type(self.data).__name__
        return (
            f"ImageData(data=<{kind} shape={tuple(self.data.shape)} dtype={self.data.dtype}>, "
            f"spacing={self.spacing!r}, unit={self.unit!r}, axes={self.axes!r}, path={self.path!r})"
        )


def reason(exc: BaseException) -> str:
    """A short, one-line reason for an exception raised by a third-party reader."""
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, IsADirectoryError):
        return "it is a folder"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = " ".join(str(exc).split())
    if not text:
        return type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def is_zarr_name(path: Any) -> bool:
    """Whether an output or input is named as a zarr store (``.zarr``, ``.ome.zarr``; a path or
    a store's URL, a trailing ``/`` allowed).

    Examples
    --------
    >>> is_zarr_name("out.zarr"), is_zarr_name("s3://b/out.OME.ZARR/"), is_zarr_name("out.tif"), is_zarr_name("")
    (True, True, False, False)
    """
    return bool(path) and str(path).rstrip("/").lower().endswith(ZARR_SUFFIX)


def suffix_of(path: Path) -> str:
    """The file extension in lower case (``.TIF`` -> ``.tif``); a compressed MRC keeps both
    of its extensions (``emd_1234.map.gz`` -> ``.map.gz``).

    Examples
    --------
    >>> suffix_of(Path("scan.TIF")), suffix_of(Path("emd_1234.map.gz")), suffix_of(Path("x.tar.gz"))
    ('.tif', '.map.gz', '.gz')
    """
    name = path.name.lower()
    packed = next((s for s in MRC_PACKED_SUFFIXES if name.endswith(s) and len(name) > len(s)), None)
    return packed or path.suffix.lower()


def file_and_inner(path: Path, suffixes: tuple[str, ...]) -> tuple[Path, str] | None:
    """Split ``stem.emd/HAADF`` into a file named with one of ``suffixes`` and the image's name
    inside it (``""`` for the file itself); None if no part of the path is named so.

    Examples
    --------
    >>> file_and_inner(Path("/data/stem.emd/HAADF"), (".emd",))
    (PosixPath('/data/stem.emd'), 'HAADF')
    """
    if suffix_of(path) in suffixes:
        return path, ""
    for parent in path.parents:
        if suffix_of(parent) in suffixes and not parent.is_dir():  # a missing file: "not found"
            return parent, path.relative_to(parent).as_posix()
    return None


def likely_image(names: list[str]) -> str:
    """Of the arrays in a file or store, the one to suggest first: the first not named like
    labels (CREMI's ``volumes/labels/...`` beside ``volumes/raw``).

    Examples
    --------
    >>> likely_image(["labels", "raw"]), likely_image(["a", "b"])
    ('raw', 'a')
    """
    return next((n for n in names if "label" not in n.lower()), names[0])


def unsupported_type(path: Path) -> InputError:
    """The error for a file type that cannot be read."""
    if path.is_dir():
        return InputError(f"cannot use '{path}': it is a folder, not an image; give a .tif, .mrc, .dm4, .ser, .h5, .emd, "
                          ".am, .czi, .png, .n5 or .zarr, or a neuroglancer precomputed volume")
    ext = suffix_of(path) or "(none)"
    return InputError(
        f"cannot use '{path}': unsupported file type '{ext}'; use .tif/.tiff, .mrc (or .mrc.gz), .dm3/.dm4, .ser, .h5/.hdf5/.hdf/.emd/.hspy/.ims, "
        ".am, .czi, .png/.jpg/.bmp, .n5, .zarr or a neuroglancer precomputed volume"
    )


def check_readable(path: Path, kind: str) -> None:
    """Refuse, in one line, a missing path or a folder where a ``kind`` file is expected."""
    if not path.exists():
        raise InputError(f"cannot read '{path}': file not found")
    if path.is_dir():
        raise InputError(f"cannot read '{path}': it is a folder, not {kind}")


def image_files_in(folder: Path, *, hdf5: bool = False) -> list[Path]:
    """The TIFF, MRC, DigitalMicrograph, TIA and picture files in a folder (not recursive), and with
    ``hdf5`` its HDF5 and Velox files (a batch's inputs; a volume's slices never are), in
    natural order (``slice_9`` before ``slice_10``), leaving out hidden and partially written
    files."""
    kinds = TIFF_SUFFIXES + MRC_SUFFIXES + MRC_PACKED_SUFFIXES + DM_SUFFIXES + SER_SUFFIXES + PICTURE_SUFFIXES + (H5_SUFFIXES + AMIRA_SUFFIXES + CZI_SUFFIXES if hdf5 else ())
    found = [c for c in folder.iterdir() if c.is_file() and suffix_of(c) in kinds
             and not c.name.startswith(".") and ".partial" not in c.name]
    return sorted(found, key=lambda c: [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", c.name)])


#: Where a stored chunk is decoded: an error raised there means the data is damaged (a chunk
#: cut short, flipped bytes), not a fault of the run.
_DECODERS = ("numcodecs", "imagecodecs", "blosc", "zarr/codecs", "zarr/core/codec", "zstd", "lz4")


def damaged_reason(exc: BaseException, *, source: str | None = None) -> str | None:
    """One line for an error raised while a stored chunk was decoded (zarr, N5, a compressed
    TIFF read lazily: the codec says "decompression error"), found anywhere in the exception's
    chain; None for any other error. Such data is damaged on disk or in transfer, which the user
    fixes, so it is reported as bad input is, not as a crash. ``source`` names where the chunk
    came from (``"'scan.zarr'"``, a layer): the codec's error does not say.

    Examples
    --------
    >>> damaged_reason(ValueError("tile must exceed overlap")) is None
    True
    """
    import traceback

    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        frames = traceback.extract_tb(e.__traceback__) if e.__traceback__ is not None else []
        where = frames[-1].filename.replace("\\", "/") if frames else ""
        if isinstance(e, (RuntimeError, ValueError, OSError)) and any(d in where for d in _DECODERS):
            return (f"a stored chunk of {source or 'the input'} could not be decoded, so the data is damaged "
                    f"({' '.join(str(e).split())})")
        e = e.__cause__ or e.__context__
    return None


def refuse_url(path: str | os.PathLike[str], what: str) -> None:
    """Refuse a URL in one line where ``what`` goes to a local or shared folder only (a model,
    a bioimage.io package): ``Path()`` would fold ``s3://b/x`` into ``s3:/b/x``, a local folder
    named ``s3:``.

    Examples
    --------
    >>> refuse_url("s3://bucket/my-model", "a model")
    Traceback (most recent call last):
    ...
    napari_emdiffuse.engine.errors.InputError: cannot write 's3://bucket/my-model': a model goes to a local or shared folder (then copy it: aws s3 cp, gcloud storage cp, rclone); the results of denoise, super-resolve, isotropic and convert may go to a URL
    """
    if is_url(path):
        raise InputError(f"cannot write '{path}': {what} goes to a local or shared folder (then copy it: aws s3 cp, "
                         "gcloud storage cp, rclone); the results of denoise, super-resolve, isotropic and convert "
                         "may go to a URL")


def check_output_path(path: str | os.PathLike[str]) -> Path:
    """Validate an output path before any work starts.

    Parameters
    ----------
    path : str or path-like
        Where a TIFF (``.tif``, ``.tiff``), MRC (``.mrc`` and the like), zarr (``.zarr``) or
        neuroglancer precomputed (``.precomputed``, a folder) result will go.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    InputError
        Unsupported extension, missing or unwritable output folder, or the path is taken by
        something that cannot be replaced (a folder for a TIFF, a file for a zarr store).
        Making sure the output is not one of the inputs is the caller's job.
    """
    refuse_url(path, "this")
    p = Path(path).expanduser()
    ext = suffix_of(p)
    if ext in PICTURE_SUFFIXES + H5_SUFFIXES + DM_SUFFIXES + SER_SUFFIXES + AMIRA_SUFFIXES + CZI_SUFFIXES + MRC_PACKED_SUFFIXES + (N5_SUFFIX,):
        raise InputError(f"cannot write '{p}': {ext} is read only here; write .tif, .mrc or .zarr (they keep the pixel size)")
    if ext not in TIFF_SUFFIXES + MRC_SUFFIXES + (ZARR_SUFFIX, PRECOMPUTED_SUFFIX):
        ext = ext or "(none)"
        raise InputError(f"cannot write '{p}': unsupported file type '{ext}'; use .tif/.tiff, .mrc, .zarr or "
                         ".precomputed (a neuroglancer precomputed folder)")
    parent = p.parent
    if not parent.is_dir():
        raise InputError(f"output folder '{parent}' does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"output folder '{parent}' is not writable")
    folder = ext in (ZARR_SUFFIX, PRECOMPUTED_SUFFIX)
    if not folder and p.is_dir():
        raise InputError(f"cannot write '{p}': a folder with that name exists")
    if folder and p.exists() and not p.is_dir():
        raise InputError(f"cannot write '{p}': a file with that name exists")
    return p


#: A 2D image not in memory is written piece by piece (TIFF: as tiles) from this size on;
#: smaller ones are loaded and written whole, so readers that take no tiles (ImageJ) open them.
STREAM_2D_MIN_BYTES = 2**31


def streams_lazily(array: Any) -> bool:
    """Whether a writer should take ``array`` piece by piece instead of loading it: a stack
    (3 axes) that is not in memory (zarr, dask, a file read lazily), slice by slice, or such a
    2D image of :data:`STREAM_2D_MIN_BYTES` or more, band by band. Either may not fit in memory.

    Examples
    --------
    >>> streams_lazily(np.zeros((2, 4, 4))), streams_lazily(np.zeros((4, 4)))
    (False, False)
    """
    if isinstance(array, np.ndarray):
        return False
    shape = tuple(getattr(array, "shape", ()))
    if len(shape) == 3:
        return True
    nbytes = int(np.prod(shape, dtype=np.float64)) * np.dtype(getattr(array, "dtype", np.uint8)).itemsize
    return len(shape) == 2 and nbytes >= STREAM_2D_MIN_BYTES


def as_numpy(array: Any) -> np.ndarray:
    """An array-like (numpy, dask, zarr) as numpy; dask arrays are computed."""
    compute = getattr(array, "compute", None)
    if callable(compute) and not isinstance(array, np.ndarray):  # dask
        array = compute()
    return np.asarray(array)


def grey_from_samples(data: np.ndarray, path: Path) -> np.ndarray:
    """Drop a trailing colour axis (grey + alpha, RGB or RGBA) whose colour channels are equal.

    Many consoles and viewers save a grey image as RGB; its first channel is the image. A
    constant alpha is dropped; transparency, or channels that differ (a real colour image), are
    refused with one line, since the models restore greyscale intensities.

    Examples
    --------
    >>> rgb = np.repeat(np.arange(6, dtype=np.uint8).reshape(2, 3, 1), 3, axis=-1)
    >>> grey_from_samples(rgb, Path("grey.tif")).shape
    (2, 3)
    """
    if data.shape[-1] in (2, 4):  # grey or colour with alpha
        alpha = np.asarray(data[..., -1])
        if np.any(alpha != alpha.flat[0]):
            raise InputError(f"cannot use '{path}': it has transparent pixels; save it without an alpha channel")
        data = data[..., :-1]
    first = np.asarray(data[..., 0])
    for channel in range(1, data.shape[-1]):
        if not np.array_equal(first, data[..., channel]):
            raise InputError(
                f"cannot use '{path}': it is a colour image; EM restoration needs greyscale "
                "(convert it, e.g. in Fiji: Image > Type > 8-bit)"
            )
    return np.ascontiguousarray(first)


#: A URL's scheme (``https://``, ``s3://``, ...): a remote location (:mod:`.remote`).
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


def is_url(path: Any) -> bool:
    """Whether ``path`` is a URL that names a remote location (``file://`` is a local path).

    Examples
    --------
    >>> is_url("https://host/vol.zarr/0"), is_url("s3://bucket/v.zarr"), is_url("vol.zarr"), is_url("file:///v.zarr")
    (True, True, False, False)
    """
    return isinstance(path, str) and bool(_SCHEME.match(path)) and not path.lower().startswith("file://")
