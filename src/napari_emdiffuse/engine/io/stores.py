"""What lies at an output store's place, in a folder or at a URL (an object store): a store
that a run finished (:func:`is_complete`, :func:`finished_with`), or the unfinished stores
that resumable runs left beside it (:func:`unfinished_runs`, :func:`find_unfinished`).

A run writes its store under ``<name>.partial-<token>`` beside the output (a folder; a
prefix beside a URL: :mod:`.zarrurl`) and moves or copies it into place when it is whole, with
a completion marker file and attribute. A resumable run's unfinished store carries the run's
key (:data:`RESUME_ATTR`) and a ledger of its finished parts (:mod:`.ledger`), so that the
next run of the same key finds it and continues.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .common import ZARR_SUFFIX, is_url
from .fetch import url_fs, zarr_store
from .ledger import LEDGER_DIR, Ledger
from .zarrfmt import write_chunks, zarr_format_of

__all__ = [
    "COMPLETE_ATTR", "COMPLETE_FILE", "RESUME_ATTR", "BLOCKS_TOTAL", "is_ome", "store_exists", "is_complete",
    "finished_with", "unfinished_runs", "find_unfinished", "partials_beside",
]  # fmt: skip

COMPLETE_ATTR = "emdiffuse_complete"
COMPLETE_FILE = ".emdiffuse_complete"
#: Attribute of a resumable run's store: the key of the run that writes (or wrote) it.
RESUME_ATTR = "emdiffuse_resume_key"
#: The ledger key under which a resumable run records how many blocks its plan has.
BLOCKS_TOTAL = "blocks-total"


def _zarr():
    import zarr  # lazy: zarr 3 takes a noticeable time to import

    return zarr


def is_ome(path: str | os.PathLike[str]) -> bool:
    """Whether an output is to be an OME-Zarr store (a name ending in ``.ome.zarr``): the
    image at ``"0"`` and its pyramid below it (:mod:`.pyramid`).

    Examples
    --------
    >>> is_ome("s3://bucket/vol.ome.zarr"), is_ome(Path("vol.zarr"))
    (True, False)
    """
    return Path(str(path).rstrip("/")).name.lower().endswith(".ome" + ZARR_SUFFIX)


def _remote(path: Any) -> bool:
    return isinstance(path, str) and is_url(path)


def _inside(store: Any, name: str) -> Any:
    """``name`` inside a store: a path, or for a store at a URL a URL."""
    return f"{str(store).rstrip('/')}/{name}" if _remote(store) else Path(store) / name


def _image(store: Any) -> Any:
    """The full-resolution array of a store (an OME-Zarr store's ``"0"``)."""
    return _inside(store, "0") if is_ome(store) else store


def store_exists(where: Path | str) -> bool:
    """Whether a store (a folder, or a store's URL) is there. At a URL that is its root
    metadata document: the chunks that a run writes there before its commit are no store yet
    (:mod:`.zarrurl`)."""
    if _remote(where):
        fs, path = url_fs(str(where).rstrip("/"))
        return any(fs.exists(f"{path}/{doc}") for doc in ("zarr.json", ".zgroup", ".zarray"))
    return Path(where).exists()


def is_complete(path: str | os.PathLike[str]) -> bool:
    """True only for a zarr store that a writer's ``commit`` marked complete (a folder, or a
    store's URL)."""
    if _remote(path):
        fs, where = url_fs(str(_inside(_image(path), COMPLETE_FILE)))
        try:
            if not fs.exists(where):
                return False
        except Exception:  # noqa: BLE001 - unreachable: no verdict, and so not complete
            return False
    else:
        p = Path(path).expanduser()
        if not p.is_dir() or not Path(_image(p)).joinpath(COMPLETE_FILE).is_file():
            return False
        path = p
    try:
        node = _zarr().open(zarr_store(str(path).rstrip("/")), mode="r")
        return bool(node.attrs.get(COMPLETE_ATTR, False))
    except Exception:  # noqa: BLE001 - unreadable: not complete
        return False


def finished_with(path: str | os.PathLike[str] | None, key: str) -> bool:
    """Whether ``path`` is a complete store that a resumable run of ``key`` wrote."""
    if path is None or not is_complete(path):
        return False
    try:
        where = _image(path if _remote(path) else Path(path).expanduser())
        return _zarr().open_array(zarr_store(str(where)), mode="r").attrs.get(RESUME_ATTR) == key
    except Exception:  # noqa: BLE001 - unreadable: not ours to skip
        return False


def partials_beside(path: Any) -> list[Any]:
    """The unfinished stores (``<name>.partial-*``) beside output ``path``, of runs going on or
    stopped, resumable or not: folders, or the URLs of prefixes beside a URL."""
    if not _remote(path):
        p = Path(path).expanduser()
        return sorted(p.parent.glob(f"{glob.escape(p.name)}.partial-*"))  # a name may hold [ or *
    url = str(path).rstrip("/")
    fs, where = url_fs(url)
    fs.invalidate_cache(where.rsplit("/", 1)[0])  # another process may have begun one
    scheme = url[: url.index("://") + 3]
    return sorted(f if "://" in f else scheme + f for f in fs.glob(f"{glob.escape(where)}.partial-*"))


def unfinished_runs(path: str | os.PathLike[str]) -> list[tuple[Any, int, int | None]]:
    """The unfinished resumable stores beside output ``path`` (a run going on, or one that
    stopped or crashed): (store, blocks done, blocks in its plan or None); beside a URL, the
    stores as URLs.

    Examples
    --------
    >>> import tempfile
    >>> unfinished_runs(Path(tempfile.mkdtemp()) / "out.zarr")
    []
    """
    found = []
    for cand in partials_beside(path):
        ledger = Ledger(str(_inside(cand, LEDGER_DIR)))
        keys = ledger.keys()
        if not keys and (_remote(cand) or not (cand / LEDGER_DIR).is_dir()):
            continue  # not resumable: removed when its run ends (a ledger by URL is never empty)
        done = sum(1 for k in keys if k.startswith("block-"))
        total = ledger.read(BLOCKS_TOTAL)
        found.append((cand, done, int(total) if total else None))
    return found


def find_unfinished(
    path: Any, key: str, shape: tuple[int, ...], dtype: np.dtype, chunks: Sequence[int] | None, fmt: int = 2
) -> Any:
    """The unfinished store of run ``key`` beside ``path`` with this shape, dtype, chunks and
    zarr format (the one with the most finished parts, when a run stopped more than once):
    a folder, or a URL beside a URL; None if there is none."""
    found: list[tuple[int, str, Any]] = []
    for cand in partials_beside(path):
        try:
            arr = _zarr().open_array(zarr_store(str(_inside(cand, "0") if is_ome(path) else cand)), mode="r")
            attrs = dict(arr.attrs)
        except Exception:  # noqa: BLE001 - a store another crash left unreadable is no candidate
            continue
        if attrs.get(RESUME_ATTR) != key or attrs.get(COMPLETE_ATTR) is not False:
            continue
        if tuple(arr.shape) != shape or np.dtype(arr.dtype) != dtype or zarr_format_of(arr) != fmt:
            continue
        unit = tuple(int(c) for c in chunks) if chunks is not None else None
        if unit is not None and fmt == 3:
            unit = tuple(min(c, n) for c, n in zip(unit, shape))  # as create_zarr_array clamps it
        if unit is not None and write_chunks(arr) != unit:
            continue
        found.append((len(Ledger(str(_inside(cand, LEDGER_DIR))).keys()), str(cand), cand))
    return max(found)[2] if found else None
