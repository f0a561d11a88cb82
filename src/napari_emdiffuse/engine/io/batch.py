"""Many files in one run: which images a list of files and folders names, and where each
result goes, checked before any work starts.

A montage's tiles or a series of sections often arrive as one file each; restoring them one
command at a time reloads the model for every file. The CLI plans the whole batch with these
functions, then restores file after file with the model loaded once.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import InputError
from .common import (
    AMIRA_SUFFIXES, CZI_SUFFIXES, DM_SUFFIXES, H5_SUFFIXES, MRC_PACKED_SUFFIXES, MRC_SUFFIXES, PICTURE_SUFFIXES, SER_SUFFIXES, TIFF_SUFFIXES, ZARR_SUFFIX, PRECOMPUTED_SUFFIX, image_files_in,
    reason,
    suffix_of,
    is_url,
)
from .czi import czi_file_of, czi_scenes
from .fetch import url_fs
from .fileurl import check_bucket
from .hdf5 import h5_file_of, h5_images
from .n5 import n5_container_of
from .precomputed import precomputed_of
from .zarr import zarr_store_of

__all__ = ["BatchItem", "BATCH_FORMATS", "is_batch", "expand_inputs", "plan_batch", "images_inside", "check_one_image", "matched_pairs",
           "is_image_folder"]

_FILE_SUFFIXES = TIFF_SUFFIXES + MRC_SUFFIXES + MRC_PACKED_SUFFIXES + DM_SUFFIXES + SER_SUFFIXES + PICTURE_SUFFIXES + H5_SUFFIXES + AMIRA_SUFFIXES + CZI_SUFFIXES

#: Outputs named so are one file or store, never a batch's folder, even where they exist.
_OUTPUT_NAMES = TIFF_SUFFIXES + MRC_SUFFIXES + (ZARR_SUFFIX, PRECOMPUTED_SUFFIX)

BatchItem = tuple[Path, "Path | str", "Path | str | None"]  # input, output, uncertainty output (a URL as str)
#: What every output of a batch may be made (``--to``): a zarr store block by block, or files.
BATCH_FORMATS = (".tif", ".mrc", ".zarr", ".ome.zarr", ".precomputed")


def is_batch(inputs: list[str], output: str | os.PathLike[str] | None = None, *, folder_is_image: bool = False) -> bool:
    """Several inputs, or one folder that is not a zarr store or N5 container, nor inside one
    (``volume.zarr/0``), or, with an ``output`` folder (one that exists, or a name ending in
    ``/``, not named as a file or store: ``.tif``, ``.zarr``, ``.precomputed``, ...), one file (a batch of one, or of the images it holds: the detectors of a Velox
    file, the scenes of a CZI file). ``folder_is_image`` (isotropic reconstruction, where a folder of 2D slices is
    one volume): one folder is a batch only with an output folder.

    Examples
    --------
    >>> is_batch(["a.tif", "b.tif"]), is_batch(["volume.zarr"])
    (True, False)
    """
    if len(inputs) != 1:
        return True
    p = Path(inputs[0]).expanduser()
    # a store named as one (an existing result written again, a name tab-completed with its '/') is an output
    named = output is not None and suffix_of(Path(str(output).rstrip("/" + os.sep))) in _OUTPUT_NAMES
    folder = output is not None and not named and (Path(output).expanduser().is_dir() or str(output).endswith(("/", os.sep)))
    if p.is_dir():
        return not _is_store(p) and (folder or not folder_is_image)
    inside = h5_file_of(p) or czi_file_of(p)  # 'stem.emd/BF': one image named in a file
    return folder and (p.is_file() or bool(inside and inside[1] and inside[0].is_file()))


def _named_images(folder: Path) -> dict[str, Path]:
    """A folder's image files and result stores (``.zarr``, ``.ome.zarr``, ``.precomputed``:
    a batch's outputs) by name without their extension, in natural order."""
    found = {f.stem: f for f in image_files_in(folder)}
    stores = sorted(c for c in folder.iterdir() if c.is_dir() and not c.name.startswith(".")
                    and ".partial" not in c.name and suffix_of(c) in (ZARR_SUFFIX, PRECOMPUTED_SUFFIX))
    for store in stores:
        found.setdefault(re.sub(r"(\.ome)?\.(zarr|precomputed)$", "", store.name, flags=re.IGNORECASE), store)
    return found


def is_image_folder(path: str | os.PathLike[str]) -> bool:
    """A folder of image files, not an image stored as a folder (a zarr store, an N5 container,
    a precomputed volume, or a path inside one).

    Examples
    --------
    >>> is_image_folder("/nowhere")
    False
    """
    p = Path(path).expanduser()
    return p.is_dir() and not _is_store(p)


def _is_store(p: Path) -> bool:
    """A zarr store, N5 container or neuroglancer precomputed volume, a path inside one, or a
    zarr store not named ``.zarr``."""
    return (zarr_store_of(p) is not None or n5_container_of(p) is not None or precomputed_of(p) is not None
            or any((p / marker).exists() for marker in (".zarray", ".zgroup", "zarr.json")))


def expand_inputs(inputs: list[str | os.PathLike[str]]) -> list[Path]:
    """The image files named: files as given, folders as their TIFF, MRC, DigitalMicrograph,
    HDF5 / Velox and picture files (:func:`~.common.image_files_in`: natural order, not
    recursive); an HDF5 or Velox file that holds several images (STEM detectors recorded at
    once) as each of them (``stem.emd/HAADF``, ``stem.emd/BF``), a CZI file of several scenes
    as each scene (``session.czi/scene-0``, ...); one image named in such a file as given.

    Raises
    ------
    InputError
        A path is missing, a zarr store (restore those one at a time, block by block), an
        unsupported file, or a folder holds no image.
    """
    files: list[Path] = []
    for name in inputs:
        if is_url(name):
            raise InputError(f"'{name}' is a zarr store by URL: restore it alone (its output streams to disk)")
        p = Path(name).expanduser()
        if _is_store(p):
            raise InputError(f"'{p}' is a zarr store, N5 container or precomputed volume: restore those one at a time (their output "
                             "streams to disk)")
        if p.is_dir():
            found = image_files_in(p, hdf5=True)
            if not found:
                raise InputError(f"folder '{p}' holds no .tif, .mrc, .dm3/.dm4, .ser, .h5/.emd, .am, .czi, .png, .jpg or .bmp image")
            files.extend(found)
        elif not p.exists():
            inside = h5_file_of(p) or czi_file_of(p)  # one image named in a file: 'stem.emd/HAADF'
            if not (inside and inside[1] and inside[0].is_file()):
                raise InputError(f"cannot read '{p}': file not found")
            files.append(p)
        elif suffix_of(p) not in _FILE_SUFFIXES:
            raise InputError(f"cannot use '{p}': unsupported file type '{suffix_of(p) or '(none)'}'; "
                             "use .tif/.tiff, .mrc (or .mrc.gz), .dm3/.dm4, .ser, .h5/.emd, .am, .czi or .png/.jpg/.bmp")
        else:
            files.append(p)
    # an HDF5 or Velox file with several images (STEM detectors recorded at once) gives each,
    # and a CZI file of several scenes each scene
    return [g for f in files for g in [f / name for name in images_inside(f)] or [f]]


def check_one_image(given: str, verb: str = "restore") -> None:
    """Refuse, in one line, a file of several images given alone with an output file: name one,
    or give an output folder to ``verb`` each."""
    names = images_inside(Path(given).expanduser())
    if len(names) > 1:
        shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
        raise InputError(f"'{given}' holds {len(names)} images ({shown}): name one ('{given}/{names[0]}'), "
                         f"or give a folder for -o to {verb} each")


def images_inside(f: Path) -> list[str]:
    """The names of the images in a file that holds several (HDF5, Velox, CZI), else []."""
    if suffix_of(f) in H5_SUFFIXES:
        try:
            return h5_images(f)
        except InputError:  # unreadable here: the file fails on its own when restored
            return []
    if suffix_of(f) in CZI_SUFFIXES:
        try:
            return czi_scenes(f)
        except InputError:  # unreadable here: the file fails on its own when restored
            return []
    return []


def plan_batch(files: list[Path], out_dir: str | os.PathLike[str],
               uncertainty_dir: str | os.PathLike[str] | None = None, *, ext: str | None = None) -> list[BatchItem]:
    """Where each input's result goes: ``OUT_DIR/<name>`` in the input's format (a compressed
    MRC uncompressed, ``a.map.gz`` -> ``a.map``; pictures, HDF5 and CZI files as TIFF; one image
    of several in an HDF5 or Velox file, or a scene of a CZI file, as ``<file>_<image>``),
    and its uncertainty as ``<stem>_uncertainty`` beside it or in ``uncertainty_dir``. ``ext``
    (one of :data:`BATCH_FORMATS`) makes every output of that format instead.

    ``out_dir`` may be a folder's URL in an object store (``s3://bucket/clean/``): every
    output is then named by its URL, a zarr store (:mod:`.zarrurl`) unless ``ext`` says
    ``.tif`` or ``.mrc`` (files written locally, then uploaded: :mod:`.fileurl`).

    The folders are made if missing (their parents must exist). Nothing else is written.

    Raises
    ------
    InputError
        An output folder is a file or cannot be made, two inputs would write the same output,
        or an output would replace an input.

    Examples
    --------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> [(i.name, o.name, u) for i, o, u in plan_batch([d / "a.png", d / "b.mrc", d / "c.map.gz"], d / "out")]
    [('a.png', 'a.tif', None), ('b.mrc', 'b.mrc', None), ('c.map.gz', 'c.map', None)]
    """
    if ext is not None and ext not in BATCH_FORMATS:
        raise InputError(f"unknown output format {ext!r}; choose one of {', '.join(BATCH_FORMATS)}")
    if is_url(str(out_dir)) or (uncertainty_dir is not None and is_url(str(uncertainty_dir))):
        ext = _url_format(out_dir, uncertainty_dir, ext)
    out = _folder(out_dir)
    unc = _folder(uncertainty_dir, inside=out) if uncertainty_dir is not None else None
    plan: list[BatchItem] = []
    seen: dict[Path | str, Path] = {}
    sources = {_key(f) for f in files}
    for f in files:
        packed = suffix_of(f) in MRC_PACKED_SUFFIXES
        f_name = f.with_suffix("") if packed else f  # 'a.map.gz' -> 'a.map'
        kind = ext or (f_name.suffix if suffix_of(f_name) in TIFF_SUFFIXES + MRC_SUFFIXES else ".tif")
        inside = h5_file_of(f) or czi_file_of(f)  # one image of several in a file: 'stem.emd/HAADF' -> stem_HAADF
        stem = f"{inside[0].stem}_{inside[1].replace('/', '_')}" if inside and inside[1] else f_name.stem
        target = _child(out, f"{stem}{kind}")
        extra = _child(unc or out, f"{stem}_uncertainty{kind}") if uncertainty_dir is not None else None
        for path in (target, extra):
            if path is None:
                continue
            if _key(path) in sources:
                raise InputError(f"'{path}' would replace an input; choose another output folder")
            if _key(path) in seen:
                raise InputError(f"'{f}' and '{seen[_key(path)]}' would both write '{path}'; rename one")
            seen[_key(path)] = f
        plan.append((f, target, extra))
    for folder in (out, unc):
        if isinstance(folder, Path):  # an object store has no folders to make
            folder.mkdir(exist_ok=True)
    return plan


def _url_format(out_dir: str | os.PathLike[str], uncertainty_dir: str | os.PathLike[str] | None,
                ext: str | None) -> str:
    """The format of a batch's outputs where a folder is a URL: zarr stores unless ``ext``
    names another (the inputs' formats vary; a bucket's results are alike)."""
    if not (is_url(str(out_dir)) and (uncertainty_dir is None or is_url(str(uncertainty_dir)))):
        raise InputError("give the output and the uncertainty folders both as URLs, or both as folders")
    return ext or ZARR_SUFFIX


def _child(folder: Path | str, name: str) -> Path | str:
    """``name`` in an output folder: a path, or in a folder's URL a URL."""
    return f"{folder}/{name}" if isinstance(folder, str) else folder / name


def matched_pairs(inputs: list[str], targets: list[str]) -> tuple[list[str], list[str]]:
    """Registered pairs given one by one (a file, or a store: zarr, N5, precomputed), or as two
    folders whose images share their names (``noisy/a.tif`` with ``clean/a.tif``; the formats
    may differ: ``clean/a.mrc``), the folder's pairs in natural order.

    Raises
    ------
    InputError
        The counts differ, a folder is paired with a file, or an image has no partner.

    Examples
    --------
    >>> matched_pairs(["a.tif"], ["A.tif"])
    (['a.tif'], ['A.tif'])
    """
    if len(inputs) != len(targets):
        raise InputError(f"{len(inputs)} inputs and {len(targets)} targets: give one target for each input")
    xs: list[str] = []
    ys: list[str] = []
    for given_x, given_y in zip(inputs, targets):
        px, py = Path(given_x).expanduser(), Path(given_y).expanduser()
        folders = [is_image_folder(p) for p in (px, py)]
        if folders[0] != folders[1]:
            raise InputError(f"'{given_x}' and '{given_y}': pair a folder with a folder, a file with a file")
        if not folders[0]:
            xs.append(given_x)
            ys.append(given_y)
            continue
        found_x, found_y = (_named_images(d) for d in (px, py))
        lonely = sorted(set(found_x) ^ set(found_y))
        if lonely or not found_x:
            what = f"no partner for {', '.join(lonely[:4])}{', ...' if len(lonely) > 4 else ''}" if lonely else "no images"
            raise InputError(f"folders '{given_x}' and '{given_y}': {what}; their images pair by name")
        xs.extend(str(f) for f in found_x.values())
        ys.extend(str(found_y[stem]) for stem in found_x)
    return xs, ys


def _folder(path: str | os.PathLike[str], inside: Path | str | None = None) -> Path | str:
    """An output folder that exists and is writable, or can be made in one step (or two, when
    it lies in ``inside``, the output folder about to be made); a folder's URL as given."""
    if is_url(str(path)):
        url = str(path).rstrip("/")
        if url.lower().startswith(("http://", "https://")):
            raise InputError(f"cannot write into '{path}': a web server's files are read here, not written; write to "
                             "an object store (s3://, gs://) or a folder")
        if suffix_of(Path(url)) in _FILE_SUFFIXES + (ZARR_SUFFIX, PRECOMPUTED_SUFFIX):
            raise InputError(f"with several inputs the output is a folder; '{path}' is named like a file")
        try:  # the service once, before any file: not a skip line per file for a missing backend or bucket
            fs, where = url_fs(url)
            fs.exists(where)
            check_bucket(fs, where, url)
        except InputError:
            raise
        except ImportError as exc:
            raise InputError(f"cannot write into '{url}': {reason(exc)} (pip install napari-emdiffuse[remote])") from exc
        except Exception as exc:  # no connection, no credentials, an unknown protocol: the service says why
            raise InputError(f"cannot write into '{url}': {reason(exc)}") from exc
        return url
    assert not isinstance(inside, str)  # a folder's URL has a URL inside it (_url_format)
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise InputError(f"with several inputs the output is a folder; '{p}' is a file")
    if suffix_of(p) in _FILE_SUFFIXES + (ZARR_SUFFIX, PRECOMPUTED_SUFFIX):  # a store written before, too
        raise InputError(f"with several inputs the output is a folder; '{p}' is named like a file")
    pending = inside is not None and not inside.exists() and _key(p.parent) == _key(inside)
    if not p.parent.is_dir() and not pending:
        raise InputError(f"output folder '{p.parent}' does not exist")
    where = p if p.is_dir() else (inside.parent if pending else p.parent)
    if not os.access(where, os.W_OK | os.X_OK):
        raise InputError(f"output folder '{where}' is not writable")
    return p


def _key(path: Path | str) -> Path | str:
    # the same file under two spellings (relative, '..', a link) is one file; a URL is as given
    if isinstance(path, str):
        return path
    try:
        return path.resolve()
    except OSError:
        return path.absolute()
