"""zarr stores and N5 datasets read by URL (``https://``, ``s3://``, ``gs://``, ...), lazily,
where they lie.

Public EM volumes are served as zarr, OME-Zarr and N5 (OpenOrganelle, the IDR, EMPIAR-derived
stores); a region of one can be restored without downloading the volume first:
``emdiffuse denoise https://host/vol.ome.zarr/0 --region ... -o part.tif``. Only the chunks a
block needs are fetched. Reading goes through fsspec, whose backends are optional packages:
``aiohttp`` for ``http(s)://``, ``s3fs`` for ``s3://``, ``gcsfs`` for ``gs://`` (the
``remote`` extra installs them). Cluster workers open the same URL themselves, so they need
the network too. Credentials are what the backend finds (environment, config files).

Only zarr stores and N5 datasets are read by URL: the other formats here are read through
local files. An N5 URL names its dataset (``.../vol.n5/em/fibsem-uint8/s0``): web servers list
no folders to find it in.
"""

from __future__ import annotations

from typing import Any

from ..errors import InputError
from .common import ImageData

__all__ = ["split_url", "read_url", "url_of"]

#: Which package serves each protocol, for the one-line refusal when it is missing.
_BACKENDS = {"http": "aiohttp", "https": "aiohttp", "s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs",
             "az": "adlfs", "abfs": "adlfs"}  # fmt: skip


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
    scheme, rest = url.split("://", 1)
    parts = rest.rstrip("/").split("/")
    for i, part in enumerate(parts):
        if part.lower().endswith((".zarr", ".n5")):
            return f"{scheme}://{'/'.join(parts[: i + 1])}", "/".join(parts[i + 1 :])
    raise InputError(f"cannot read '{url}': only zarr stores and N5 datasets (a name ending in .zarr or .n5) "
                     "are read from a URL")


def read_url(url: str, key: str | None = None) -> ImageData:
    """Open the zarr array at ``url`` (a store, an array inside one such as
    ``https://host/vol.ome.zarr/0``, or a group with ``key``), or the N5 dataset it names,
    lazily, with its calibration."""
    from .n5 import read_n5
    from .zarr import read_zarr

    store, inner = split_url(url)
    full_key = "/".join(k.strip("/") for k in (inner, key or "") if k and k.strip("/"))
    try:
        if store.lower().endswith(".n5"):
            return read_n5(store, full_key)
        return read_zarr(store, full_key or None)
    except (ImportError, ModuleNotFoundError) as exc:
        scheme = url.split("://", 1)[0].lower()
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
