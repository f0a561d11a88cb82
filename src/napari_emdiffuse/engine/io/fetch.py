"""Bytes from a local file or a URL: what the formats read by URL (N5, neuroglancer
precomputed, zarr) fetch their blocks, shards and metadata with.

A place is a :class:`~pathlib.Path` (local) or a URL string (``https://``, ``s3://``, ``gs://``
through fsspec). Reads by URL ask for byte ranges. A web server that does not answer ranges
(Python's ``http.server``, some static hosts) sends the whole file instead; the wanted bytes are
then cut from it, so a shard's index or a chunk inside it is still read right (only slower).

Over ``http(s)://`` a request that fails for a passing reason (a dropped connection, a timeout,
status 408, 429 or 5xx) is asked again, up to :data:`RETRIES` times, waiting longer each time: a
run of hours reading thousands of chunks meets such failures, and one of them would otherwise
stop it. (``s3fs`` and ``gcsfs`` retry by themselves.)
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import io
import os
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Union

__all__ = ["REQUESTS_AT_ONCE", "RETRIES", "RETRY_WAIT", "WHOLE_FILE_BYTES", "Where", "answers_ranges", "join", "open_file", "parent", "read_bytes",
           "url_fs", "writable_store",
           "read_many", "read_range", "remote_size", "unreachable", "zarr_store"]

#: A place in a container: a local file or folder, or a URL (a string).
Where = Union[Path, str]


def join(root: Where, *parts: str) -> Where:
    """``root`` and ``parts`` joined: a path for a folder, a URL for a URL.

    Examples
    --------
    >>> join("https://host/vol.n5/", "em", "s0/")
    'https://host/vol.n5/em/s0'
    >>> join(Path("/data/vol"), "info").as_posix()
    '/data/vol/info'
    """
    if isinstance(root, Path):
        return root.joinpath(*parts)
    return "/".join([root.rstrip("/"), *(p.strip("/") for p in parts if p and p.strip("/"))])


def parent(where: Where) -> Where:
    """The folder holding ``where``.

    Examples
    --------
    >>> parent("https://host/vol/8_8_40/")
    'https://host/vol'
    """
    return where.parent if isinstance(where, Path) else where.rstrip("/").rsplit("/", 1)[0]


def read_bytes(where: Where) -> bytes:
    """The whole file; FileNotFoundError where there is none."""
    if isinstance(where, Path):
        return where.read_bytes()
    fs, path = _fs(where)
    with _as_os_error():
        return fs.cat_file(path)


def read_range(where: Where, start: int, size: int) -> bytes:
    """``size`` bytes of the file from ``start`` (fewer where it ends first);
    FileNotFoundError where there is no file."""
    if size <= 0:
        return b""
    if isinstance(where, Path):
        with open(where, "rb") as fh:
            fh.seek(start)
            return fh.read(size)
    fs, path = _fs(where)
    with _as_os_error():
        got = fs.cat_file(path, start=start, end=start + size)
    # A range answered holds at most `size` bytes; more is the whole file: cut the range out.
    return got[start : start + size] if len(got) > size else got


#: Requests in flight at once: enough to hide the round trips, few enough for a small server.
REQUESTS_AT_ONCE = 32

#: Times an ``http(s)://`` request that failed for a passing reason is asked again, and the
#: seconds waited before the first retry (doubled for each next one).
RETRIES = 4
RETRY_WAIT = 0.5

#: The largest file read whole from a server that does not answer byte ranges (:func:`open_file`).
WHOLE_FILE_BYTES = 2 << 30

#: URLs whose server answered a byte range with the whole file.
_WHOLE: set[str] = set()

#: HTTP statuses that say "try again later" rather than "no".
_PASSING = (408, 429, 500, 502, 503, 504)


def read_many(wheres: Sequence[Where], spans: Sequence[tuple[int, int]] | None = None) -> list[bytes | None]:
    """Each file's bytes, or with ``spans`` each ``(start, size)`` range of it; None where
    there is no such file. URLs are fetched concurrently: a block of a volume in 64³ chunks
    is hundreds of requests, and one at a time each waits a round trip (measured: 5.5 s
    against 0.35 s for 256 chunks at 20 ms each, ``benchmarks/remote_reads.py``)."""
    out: list[bytes | None] = [None] * len(wheres)
    groups: dict[int, tuple[Any, list[int], list[str]]] = {}
    for i, where in enumerate(wheres):
        start, size = spans[i] if spans is not None else (0, -1)
        if isinstance(where, Path):
            try:
                out[i] = read_range(where, start, size) if spans is not None else where.read_bytes()
            except FileNotFoundError:
                pass
            continue
        fs, path = _fs(where)
        groups.setdefault(id(fs), (fs, [], []))[1].append(i)
        groups[id(fs)][2].append(path)
    for fs, index, paths in groups.values():
        starts = [spans[i][0] for i in index] if spans is not None else None
        ends = [spans[i][0] + spans[i][1] for i in index] if spans is not None else None
        with _as_os_error():
            got = fs.cat_ranges(paths, starts, ends, on_error="return", batch_size=REQUESTS_AT_ONCE)
        for i, value in zip(index, got):
            if isinstance(value, FileNotFoundError):
                continue
            if isinstance(value, BaseException):
                with _as_os_error():
                    raise value
            if spans is not None and len(value) > spans[i][1]:  # the whole file, not the range
                value = value[spans[i][0] : spans[i][0] + spans[i][1]]
            out[i] = value
    return out


def remote_size(url: str) -> int | None:
    """The size in bytes of the file at ``url`` as its server says (None where it does not);
    FileNotFoundError where there is none."""
    fs, path = _fs(url)
    try:
        with _as_os_error():
            size = fs.info(path).get("size")
    except FileNotFoundError:
        _reachable(url)  # fsspec says "not found" for a server it could not reach too
        raise
    return int(size) if size is not None else None


def _reachable(url: str) -> None:
    """Nothing where the server of an ``http(s)://`` URL answers (with any status); an
    OSError naming why where it cannot be reached (no such host, connection refused)."""
    if not url.lower().startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=30).close()
    except urllib.error.HTTPError:
        return  # it answered
    except urllib.error.URLError as exc:
        host = url.split("://", 1)[1].split("/", 1)[0]
        raise OSError(f"cannot reach {host} ({getattr(exc, 'reason', exc)})") from None


def answers_ranges(url: str) -> bool:
    """Whether the server of ``url`` answers a byte range with that range (object stores do;
    some web servers send the whole file). Asked with the first byte only: the answer's body
    is not read, so a server that would send gigabytes sends nothing."""
    if not url.lower().startswith(("http://", "https://")):
        return True
    if url in _WHOLE:
        return False
    import urllib.request

    request = urllib.request.Request(url, headers={"Range": "bytes=0-0"})
    with _as_os_error(), urllib.request.urlopen(request, timeout=30) as answer:
        ranged = answer.status == 206
    if not ranged:
        _WHOLE.add(url)
    return ranged


def open_file(url: str, block: int = 1 << 20, *, keep: bool = False) -> Any:
    """A file by URL opened for random reads (``read``, ``seek``), fetched ``block`` bytes at a
    time and kept: what an HDF5 library reads a remote file through. Close it. ``keep``: every
    block fetched stays (in a sparse temporary file, not in memory), and the blocks one read
    lacks are fetched in one request a run, so walking a file's scattered tags twice costs
    one fetch; else the last 32 blocks stay. From a server
    that answers byte ranges with the whole file, the file is fetched once and read in memory
    (each block would fetch it whole again), up to :data:`WHOLE_FILE_BYTES`."""
    fs, path = _fs(url)
    read_range(url, 0, 8)  # FileNotFoundError where there is none; tells whether ranges are answered
    if url in _WHOLE:
        size = (fs.info(path) or {}).get("size") or 0
        if size > WHOLE_FILE_BYTES:
            raise OSError(f"the server sends the whole file ({size / 1e9:.1f} GB) for each part asked; download it "
                          "first, or serve it with byte ranges")
        return io.BytesIO(read_bytes(url))
    with _as_os_error():
        return fs.open(path, "rb", block_size=block, cache_type="mmap" if keep else "blockcache")


def unreachable(exc: BaseException) -> bool:
    """Whether a read by URL failed before reaching the file: no connection, a timeout, or a
    refusal by status (403, 5xx), as opposed to bytes that are not of the format."""
    chain: BaseException | None = exc
    while chain is not None:
        if isinstance(chain, (ConnectionError, TimeoutError, asyncio.TimeoutError, PermissionError)):
            return True
        name = type(chain).__name__
        if name.startswith(("ClientConnector", "ClientResponse", "ServerDisconnected", "FSTimeout")) or \
                "Connect call failed" in str(chain):  # fmt: skip
            return True
        chain = chain.__cause__ or chain.__context__
    return False


def zarr_store(where: str | os.PathLike[str]) -> Any:
    """What zarr opens a store through, for reading: for ``http(s)://``, a read-only fsspec
    store whose range reads survive a server that answers them with the whole file (a sharded
    zarr v3 store reads its shard indexes and chunks by range); under a URL writer's hidden
    prefix, its split store read-only (:mod:`.splitstore`); any other place as its string."""
    url = str(where)
    if _split(url):
        return writable_store(url).with_read_only(True)
    if not url.lower().startswith(("http://", "https://")):
        return url
    from zarr.storage import FsspecStore

    fs = _ranged_http()(asynchronous=True)
    _OPEN_ASYNC.append(weakref.ref(fs))
    return FsspecStore(fs=fs, path=url, read_only=True)


def _options(url: str) -> dict[str, Any]:
    # Outputs by URL (:mod:`.zarrurl`). fsspec's local file system (``local://``, a mounted bucket) makes no folders by itself;
    # object stores have none to make
    return {"auto_mkdir": True} if url.lower().startswith(("local://", "file://")) else {}


def url_fs(url: str) -> tuple[Any, str]:
    """The fsspec file system of ``url`` and the path in it."""
    import fsspec

    return fsspec.core.url_to_fs(url, **_options(url))


def writable_store(url: str) -> Any:
    """What zarr writes a store at ``url`` through: an fsspec store; under a URL writer's
    hidden prefix, one that puts the chunks at the final URL (:mod:`.splitstore`)."""
    from zarr.storage import FsspecStore

    here = FsspecStore.from_url(url, storage_options=_options(url), read_only=False)
    final = _split(url)
    if final is None:
        return here
    from .splitstore import SplitStore

    return SplitStore(here, FsspecStore.from_url(final, storage_options=_options(final), read_only=False))


def _split(url: str) -> str | None:
    """Where the chunks of a store under a URL writer's hidden prefix live (None elsewhere)."""
    if "://" not in url or ".partial-" not in url:  # spares the import for every other place
        return None
    from .splitstore import chunks_place

    return chunks_place(url)


#: The asynchronous HTTP file systems made for zarr: their connections are closed at exit
#: (fsspec leaves that to whoever made them, and aiohttp would say so on stderr).
_OPEN_ASYNC: list[weakref.ref] = []


@atexit.register
def _close_async() -> None:
    if not _OPEN_ASYNC:  # none made: nothing to import at exit (imports then can fail)
        return
    from fsspec.implementations.http import HTTPFileSystem

    for ref in _OPEN_ASYNC:
        fs = ref()
        session = getattr(fs, "_session", None) if fs is not None else None
        if session is not None and not session.closed:
            HTTPFileSystem.close_session(None, session)


@contextlib.contextmanager
def _as_os_error() -> Iterator[None]:
    """A network read's failure as an OSError (a status such as 403 comes from the backend as
    its own error): FileNotFoundError (404) and a missing backend (ImportError) pass as they are."""
    try:
        yield
    except (OSError, ImportError):
        raise
    except Exception as exc:  # noqa: BLE001 - each backend raises its own
        raise OSError(str(exc) or type(exc).__name__) from exc


def _fs(url: str) -> tuple[Any, str]:
    import fsspec

    if url.lower().startswith(("http://", "https://")):
        return _ranged_http()(), url
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path


_RANGED: list[type] = []


def _ranged_http() -> type:
    """fsspec's HTTP file system, but a range request the server answers with the whole file
    (status 200, not 206) returns the range. Made on first use: it needs aiohttp."""
    if _RANGED:
        return _RANGED[0]
    import aiohttp
    from fsspec.implementations.http import HTTPFileSystem

    class RangedHTTPFileSystem(HTTPFileSystem):
        async def _cat_file(self, url: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
            for attempt in range(RETRIES + 1):
                try:
                    out = await super()._cat_file(url, start=start, end=end, **kwargs)
                    break
                except FileNotFoundError:  # 404: no such chunk, not a failure
                    raise
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    status = getattr(exc, "status", None)
                    if attempt == RETRIES or (isinstance(exc, aiohttp.ClientResponseError) and status not in _PASSING):
                        raise
                    await asyncio.sleep(RETRY_WAIT * 2**attempt)
            if start is None and end is None:
                return out
            if start is not None and start < 0 and end is None:  # the last -start bytes
                if len(out) > -start:
                    _WHOLE.add(url)
                    return out[start:]
                return out
            lo = start or 0
            if end is not None:
                if 0 <= lo <= end and len(out) > end - lo:
                    _WHOLE.add(url)
                    return out[lo:end]
                return out
            # From `start` to the end: a whole answer is exactly the file's size.
            size = (await self._info(url)).get("size")
            return out[lo:] if lo and size is not None and len(out) == size else out

    RangedHTTPFileSystem.__name__ = "RangedHTTPFileSystem"
    _RANGED.append(RangedHTTPFileSystem)
    return RangedHTTPFileSystem

