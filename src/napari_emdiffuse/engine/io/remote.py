"""zarr stores, N5 datasets, neuroglancer precomputed volumes and HDF5 files read by URL
(``https://``, ``s3://``, ``gs://``, ...), lazily, where they lie.

Public EM volumes are served as zarr, OME-Zarr and N5 (OpenOrganelle, the IDR, EMPIAR-derived
stores) and as neuroglancer precomputed (H01, MICrONS, FAFB and most connectomics releases);
a region of one can be restored without downloading the volume first:
``emdiffuse denoise https://host/vol.ome.zarr/0 --region ... -o part.tif``. Only the chunks a
block needs are fetched. Reading goes through fsspec, whose backends are optional packages:
``aiohttp`` for ``http(s)://``, ``s3fs`` for ``s3://``, ``gcsfs`` for ``gs://`` (the
``remote`` extra installs them). Cluster workers open the same URL themselves, so they need
the network too. Credentials are what the backend finds (environment, config files).

A URL may carry neuroglancer's data-source prefix, as its layer panel shows it
(``precomputed://gs://...``, ``zarr://``, ``zarr2://``, ``zarr3://``, ``n5://``). Without one,
a name with a part ending in ``.zarr`` or ``.n5`` is a zarr store or an N5 container, one ending
like an HDF5 file (``.h5``, ``.hdf5``, ``.hdf``, ``.emd``, ...) such a file, its dataset after it
(``https://cremi.org/static/data/sample_A_20160501.hdf/volumes/raw``: HDF5's own reads, a block
of 1 MiB of the file at a time), and any other URL is a precomputed volume or one of its scales
(found by its ``info`` file). A single file of another format by URL (a TIFF, an MRC or EMDB
``.map.gz``, a DigitalMicrograph file, a picture: EMPIAR's and EMDB's files over HTTPS) is
fetched whole into a cache (:func:`download`), once, and read from there. An N5 URL names its dataset
(``.../vol.n5/em/fibsem-uint8/s0``): web servers list no folders to find it in.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

from ..errors import InputError
from .atomic import partial_beside, remove_orphans_beside
from .common import (
    AMIRA_SUFFIXES, CZI_SUFFIXES, DM_SUFFIXES, H5_SUFFIXES, MRC_PACKED_SUFFIXES, MRC_SUFFIXES, PICTURE_SUFFIXES,
    SER_SUFFIXES, TIFF_SUFFIXES, ImageData,
)

__all__ = ["cache_dir", "download", "h5_url", "is_single_file", "source_prefix", "split_url", "read_url", "url_file_name",
           "url_of"]

#: Which package serves each protocol, for the one-line refusal when it is missing.
_BACKENDS = {"http": "aiohttp", "https": "aiohttp", "s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs",
             "az": "adlfs", "abfs": "adlfs"}  # fmt: skip


#: neuroglancer's data-source prefixes and the format each names.
_PREFIXES = {"precomputed": "precomputed", "zarr": "zarr", "zarr2": "zarr", "zarr3": "zarr", "n5": "n5"}


def source_prefix(url: str) -> tuple[str, str | None]:
    """``url`` without neuroglancer's data-source prefix, and the format the prefix names
    (``"precomputed"``, ``"zarr"`` or ``"n5"``; None without one).

    Examples
    --------
    >>> source_prefix("precomputed://gs://h01-release/data/20210601/4nm_raw")
    ('gs://h01-release/data/20210601/4nm_raw', 'precomputed')
    >>> source_prefix("https://host/vol.zarr")
    ('https://host/vol.zarr', None)
    """
    head, sep, rest = url.partition("://")
    if sep and head.lower() in _PREFIXES and "://" in rest:
        return rest, _PREFIXES[head.lower()]
    return url, None


#: Formats of one file each, fetched whole by URL (:func:`download`) and read as local files.
_SINGLE = (*TIFF_SUFFIXES, *MRC_SUFFIXES, *MRC_PACKED_SUFFIXES, *PICTURE_SUFFIXES, *DM_SUFFIXES, *SER_SUFFIXES,
           *AMIRA_SUFFIXES, *CZI_SUFFIXES)  # fmt: skip


def is_single_file(url: str) -> bool:
    """Whether ``url`` names one file of a format read whole (TIFF, MRC, ...).

    Examples
    --------
    >>> is_single_file("https://ftp.ebi.ac.uk/pub/databases/emdb/structures/EMD-1234/map/emd_1234.map.gz")
    True
    >>> is_single_file("https://zenodo.org/records/1/files/stack.tif?download=1"), is_single_file("gs://bucket/volume")
    (True, False)
    """
    return url_file_name(url).lower().endswith(_SINGLE)


def url_file_name(url: str) -> str:
    """The last part of a URL's path, without its query (``?download=1``) or fragment."""
    return url.split("#", 1)[0].split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]


def cache_dir() -> Path:
    """Where files fetched by URL are kept: ``$EMDIFFUSE_HOME/downloads``, else the user's
    cache folder."""
    env = os.environ.get("EMDIFFUSE_HOME")
    if env:
        return Path(env) / "downloads"
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("napari-emdiffuse", appauthor=False)) / "downloads"


def download(url: str, size: int | None = None) -> tuple[Path, str]:
    """The file at ``url`` in :func:`cache_dir` (fetched there first unless a copy of the same
    size is kept), and what was done (``"fetched 12.3 MB to"`` or ``"read the copy kept at"``).
    Written under a temporary name and renamed, so an interrupted fetch leaves no file that
    looks whole. ``size``: the file's, where the caller asked the server already."""
    from .fetch import open_file, remote_size

    name = url_file_name(url)
    local = cache_dir() / f"{hashlib.sha1(url.encode()).hexdigest()[:16]}-{name}"
    size = remote_size(url) if size is None else size
    if local.is_file() and (size is None or local.stat().st_size == size):
        return local, "read the copy kept at"
    local.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans_beside(local)  # a killed run's half-fetched copy
    partial = partial_beside(local)
    try:
        with open_file(url, block=8 << 20) as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst, 8 << 20)
        os.replace(partial, local)
    finally:
        partial.unlink(missing_ok=True)
    return local, f"fetched {local.stat().st_size / 1e6:.1f} MB to"


def h5_url(url: str) -> tuple[str, str] | None:
    """The URL of the HDF5 file ``url`` names (up to the part named like one) and the dataset
    path after it; None where no part is.

    Examples
    --------
    >>> h5_url("https://cremi.org/static/data/sample_A_20160501.hdf/volumes/raw")
    ('https://cremi.org/static/data/sample_A_20160501.hdf', 'volumes/raw')
    >>> h5_url("https://host/vol.zarr/0") is None
    True
    """
    scheme, rest = url.split("://", 1)
    parts = rest.rstrip("/").split("/")
    for i, part in enumerate(parts[1:], 1):  # the first part is the host or bucket
        if part.lower().endswith(H5_SUFFIXES):
            return f"{scheme}://{'/'.join(parts[: i + 1])}", "/".join(parts[i + 1 :])
    return None


def split_url(url: str) -> tuple[str, str]:
    """The store's or container's URL (up to the part ending in ``.zarr`` or ``.n5``) and the
    key inside it.

    Examples
    --------
    >>> split_url("https://host/data/vol.ome.zarr/0")
    ('https://host/data/vol.ome.zarr', '0')
    >>> split_url("s3://bucket/vol.zarr")
    ('s3://bucket/vol.zarr', '')
    >>> split_url("https://host/jrc_mus-liver.n5/em/fibsem-uint8/s0")
    ('https://host/jrc_mus-liver.n5', 'em/fibsem-uint8/s0')
    """
    url = source_prefix(url)[0]
    scheme, rest = url.split("://", 1)
    parts = rest.rstrip("/").split("/")
    for i, part in enumerate(parts):
        if part.lower().endswith((".zarr", ".n5")):
            return f"{scheme}://{'/'.join(parts[: i + 1])}", "/".join(parts[i + 1 :])
    raise InputError(f"cannot read '{url}': only zarr stores and N5 datasets (a name ending in .zarr or .n5) "
                     "and neuroglancer precomputed volumes are read from a URL")


def read_url(url: str, key: str | None = None) -> ImageData:
    """Open the zarr array at ``url`` (a store, an array inside one such as
    ``https://host/vol.ome.zarr/0``, or a group with ``key``), the N5 dataset it names, or the
    precomputed volume or scale it names (``key``: a scale), lazily, with its calibration."""
    from .hdf5 import read_h5
    from .n5 import read_n5
    from .precomputed import precomputed_url, read_precomputed
    from .zarr import read_zarr

    bare, kind = source_prefix(url)
    named = any(p.lower().endswith((".zarr", ".n5")) for p in bare.split("://", 1)[1].split("/"))
    h5 = h5_url(bare)
    try:
        if h5 is not None and kind is None:
            return read_h5(h5[0], "/".join(k.strip("/") for k in (h5[1], key or "") if k and k.strip("/")) or None)
        if kind == "precomputed" or (kind is None and not named):
            found = precomputed_url(bare)
            if found is None:
                raise InputError(f"cannot read '{url}': no neuroglancer precomputed 'info' there, and only zarr stores, "
                                 "N5 datasets (a name ending in .zarr or .n5) and precomputed volumes are read from a URL")
            return read_precomputed(found[0], key or found[1])
        if not named:  # zarr:// or n5:// before a name without the suffix: the URL is the store or dataset
            store, inner = bare.rstrip("/"), ""
        else:
            store, inner = split_url(bare)
        full_key = "/".join(k.strip("/") for k in (inner, key or "") if k and k.strip("/"))
        if kind == "n5" or (kind is None and store.lower().endswith(".n5")):
            return read_n5(store, full_key)
        return read_zarr(store, full_key or None)
    except (ImportError, ModuleNotFoundError) as exc:
        scheme = bare.split("://", 1)[0].lower()
        need = _BACKENDS.get(scheme, f"an fsspec backend for {scheme}://")
        raise InputError(f"cannot read '{url}': reading {scheme}:// needs {need} (pip install "
                         f"\"napari-emdiffuse[remote]\"); {exc}") from None  # fmt: skip


def url_of(store: Any) -> str | None:
    """The URL of a zarr store read over the network (an fsspec store whose file system is
    not the local one), for workers to open it again; None for any other store."""
    fs = getattr(store, "fs", None)
    path = getattr(store, "path", None)
    if fs is None or path is None:
        return None
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    if "file" in protocols or "local" in protocols:
        return None
    return str(fs.unstrip_protocol(str(path)))
