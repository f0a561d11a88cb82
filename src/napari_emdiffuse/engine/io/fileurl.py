"""TIFF and MRC results at a URL (an object store: ``s3://``, ``gs://``, any fsspec protocol
that writes): written to a local file first, then uploaded whole. A neuroglancer precomputed
result (``.precomputed``, a folder) goes the same way: its chunk files first, its ``info``
last, so that no reader finds a volume there before every chunk is.

A TIFF or MRC file is written with seeks back into it (its offsets, its header), which an
object store cannot take in place. So the file is written here, under the system's
temporary folder (``TMPDIR``: it needs the file's size free), then uploaded in one
operation. An object store makes an object visible only when its upload completes (one PUT,
or a multipart upload's completion), so no reader ever finds half a file at the URL, and a
stopped or failed run leaves nothing there; an existing object is replaced at once, as a
local output file is. A file system reached through fsspec (``local://``, a mounted bucket)
gets the upload under a hidden name beside the URL, then renamed.

A result too large for memory goes through a zarr store first (``outputs.spill_store``): by
URL it lies in :func:`staging_dir`, which for a resumable run is the same folder on every
run of the same output, so that the next run on this machine finds the finished blocks.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import InputError
from .atomic import WriteStopped, host_tag, process_running
from .common import MRC_SUFFIXES, PRECOMPUTED_SUFFIX, TIFF_SUFFIXES, is_url, reason, suffix_of

__all__ = ["is_file_url", "check_file_url", "check_bucket", "file_url_exists", "staging_dir", "uploaded",
           "upload_file", "STAGING_PREFIX", "KEPT_PREFIX"]

#: The prefix of the temporary folders a result by URL is written in before its upload.
STAGING_PREFIX = "emdiffuse-upload-"
#: The prefix such a folder takes when its upload failed and it keeps the finished file.
KEPT_PREFIX = "emdiffuse-kept-"


def _name(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def is_file_url(path: object) -> bool:
    """Whether ``path`` is a URL naming a TIFF, MRC or precomputed result (written through a
    local file or folder).

    Examples
    --------
    >>> is_file_url("s3://bucket/clean/a.tif"), is_file_url("s3://bucket/a.zarr"), is_file_url("a.tif")
    (True, False, False)
    >>> is_file_url("gs://bucket/iso.precomputed")
    True
    """
    return is_url(path) and suffix_of(Path(_name(str(path)))) in (*TIFF_SUFFIXES, *MRC_SUFFIXES, PRECOMPUTED_SUFFIX)


def _is_folder(url: str) -> bool:
    return suffix_of(Path(_name(url))) == PRECOMPUTED_SUFFIX


def check_file_url(url: str) -> str:
    """A TIFF or MRC output by URL, before any work: a name of one of those formats, not a web
    server's, the service reachable and its folder not taken by a file; one line otherwise.

    Examples
    --------
    >>> check_file_url("https://host/out.tif")
    Traceback (most recent call last):
    ...
    napari_emdiffuse.engine.errors.InputError: cannot write 'https://host/out.tif': a web server's files are read here, not written; write to an object store (s3://, gs://) or a folder
    """
    url = str(url)
    if url.lower().startswith(("http://", "https://")):
        raise InputError(f"cannot write '{url}': a web server's files are read here, not written; write to an object "
                         "store (s3://, gs://) or a folder")
    if not is_file_url(url):
        ext = suffix_of(Path(_name(url))) or "(none)"
        raise InputError(f"cannot write '{url}': unsupported file type '{ext}'; use .tif/.tiff, .mrc, .zarr or "
                         ".precomputed")
    from .fetch import url_fs

    try:
        fs, path = url_fs(url)
        folder = path.rstrip("/").rsplit("/", 1)[0] if "/" in path.rstrip("/") else ""
        if _is_folder(url) and fs.exists(f"{path.rstrip('/')}/info"):  # chunks of two volumes must not mix
            raise InputError(f"cannot write '{url}': a precomputed volume is there already; remove it first "
                             "or choose another name")
        if not _is_folder(url) and fs.isdir(path):
            raise InputError(f"cannot write '{url}': a folder with that name exists")
        if folder and fs.isfile(folder):
            raise InputError(f"cannot write '{url}': '{folder}' is a file, not a folder")
        check_bucket(fs, path, url)
    except InputError:
        raise
    except ImportError as exc:
        raise InputError(f"cannot write '{url}': {reason(exc)} (pip install napari-emdiffuse[remote])") from exc
    except Exception as exc:  # no such bucket, no credentials, no connection: the service says why
        raise InputError(f"cannot write '{url}': {reason(exc)}") from exc
    return url


def check_bucket(fs: object, path: str, url: str) -> None:
    """An S3 bucket that does not exist, found before the run rather than at its upload, hours
    later (the finished file is kept then, but the user waited for nothing). Asked with
    HeadBucket, which needs the right to list the bucket: write-only credentials may not have
    it, and are then let through (the upload says what is wrong)."""
    head = getattr(fs, "call_s3", None)  # s3fs; other stores are not asked
    if head is None:
        return
    bucket = path.lstrip("/").split("/", 1)[0]
    try:
        head("head_bucket", Bucket=bucket)
    except FileNotFoundError as exc:  # 404: no such bucket (403, not allowed to look, passes)
        raise InputError(f"cannot write '{url}': there is no bucket '{bucket}'") from exc
    except Exception:  # noqa: BLE001 - no right to look, or the service cannot say: the upload tells
        pass


def file_url_exists(url: str) -> bool:
    """Whether a file is at ``url`` (a result uploaded whole: see the module docstring; a
    precomputed volume is there once its ``info`` is)."""
    from .fetch import url_fs

    fs, path = url_fs(url)
    return bool(fs.isfile(f"{path.rstrip('/')}/info" if _is_folder(url) else path))


def staging_dir(url: str, *, resume: bool = False) -> Path:
    """A new local folder for what goes to ``url`` before its upload, named by this machine and
    process; with ``resume``, the same folder for every run of that URL on this machine (made
    if missing). Making a new one removes those that killed processes of this machine left
    (SIGKILL, the out-of-memory killer: no clean-up ran; they may hold gigabytes)."""
    root = Path(tempfile.gettempdir())
    if not resume:
        _remove_orphans(root)
        return Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{host_tag()}-{os.getpid()}-", dir=root))
    digest = hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]
    folder = root / f"{STAGING_PREFIX}{digest}"
    folder.mkdir(exist_ok=True)
    return folder


def _remove_orphans(root: Path) -> None:
    """Remove the staging folders of this machine's processes that no longer run."""
    mine = f"{STAGING_PREFIX}{host_tag()}-"
    for folder in root.glob(f"{glob.escape(mine)}*"):
        pid = folder.name[len(mine):].split("-", 1)[0]
        if pid.isdigit() and not process_running(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def upload_file(local: str | Path, url: str, *, progress: Callable[[int, int], None] | None = None) -> str:
    """Put the finished local file ``local`` at ``url`` in one operation (module docstring);
    ``progress(bytes sent, bytes in all)`` as it goes (where the service reports it; a file
    system's copy once, before its rename): an exception it raises stops the upload, which
    then leaves nothing."""
    from fsspec.callbacks import Callback
    from fsspec.implementations.local import LocalFileSystem

    from .fetch import url_fs

    total = Path(local).stat().st_size

    class _Told(Callback):
        def call(self, *args: object, **kwargs: object) -> None:
            if progress is not None:
                progress(min(int(self.value), total), total)

    fs, path = url_fs(url)
    if Path(local).is_dir():
        return _upload_folder(fs, Path(local), path, url, progress)
    if not isinstance(fs, LocalFileSystem):  # an object appears when its upload completes
        fs.put_file(str(local), path, callback=_Told())
        return url
    hidden = f"{path.rsplit('/', 1)[0]}/.{path.rsplit('/', 1)[-1]}.partial-{secrets.token_hex(4)}"
    try:
        fs.put_file(str(local), hidden)
        if progress is not None:  # told before the rename, so that a stop leaves nothing
            progress(total, total)
        fs.mv(hidden, path)
    finally:
        if fs.exists(hidden):
            fs.rm(hidden)
    return url


def _upload_folder(fs: object, local: Path, path: str, url: str,
                   progress: Callable[[int, int], None] | None) -> str:
    """A precomputed folder's files, ``info`` last (object stores), or the whole folder under a
    hidden name, then renamed (a file system); a stop or a failure removes what was put."""
    from fsspec.implementations.local import LocalFileSystem

    files = sorted((p for p in local.rglob("*") if p.is_file()), key=lambda p: p.relative_to(local) == Path("info"))
    total, sent = sum(p.stat().st_size for p in files), 0
    hidden = f"{path.rsplit('/', 1)[0]}/.{path.rsplit('/', 1)[-1]}.partial-{secrets.token_hex(4)}"
    where = hidden if isinstance(fs, LocalFileSystem) else path.rstrip("/")
    try:
        for p in files:
            fs.put_file(str(p), f"{where}/{p.relative_to(local).as_posix()}")  # type: ignore[attr-defined]
            sent += p.stat().st_size
            if progress is not None:
                progress(sent, total)
        if where == hidden:
            fs.mv(hidden, path, recursive=True)  # type: ignore[attr-defined]
    except BaseException:
        with contextlib.suppress(Exception):  # no connection: without its info, what is there is no volume
            if fs.exists(where):  # type: ignore[attr-defined]
                fs.rm(where, recursive=True)  # type: ignore[attr-defined]
        raise
    return url


@contextlib.contextmanager
def uploaded(url: str, *, progress: Callable[[int, int], None] | None = None) -> Iterator[Path]:
    """A local path to write the file for ``url`` at; uploaded when the block ends without an
    error (``progress`` as in :func:`upload_file`), and removed from here. An upload that fails
    keeps the local file and says where (hours of work are not thrown away for a lost
    connection); one stopped by ``progress`` (:class:`~.atomic.WriteStopped`) does not.

    Examples
    --------
    >>> import numpy as np, tifffile, tempfile
    >>> url = f"local://{tempfile.mkdtemp()}/a.tif"
    >>> with uploaded(url) as local:
    ...     tifffile.imwrite(local, np.zeros((4, 4), np.uint8))
    >>> file_url_exists(url)
    True
    """
    folder = staging_dir(url)
    keep = False
    try:
        local = folder / _name(url)
        yield local
        if not local.exists():  # pragma: no cover - every writer writes its file or raises
            raise InputError(f"cannot write '{url}': nothing was written to upload")
        try:
            upload_file(local, url, progress=progress)
        except WriteStopped:
            raise
        except Exception as exc:  # no connection, no permission: the service says why
            keep = True
            kept = folder.with_name(folder.name.replace(STAGING_PREFIX, KEPT_PREFIX, 1))  # not an orphan to remove
            folder.rename(kept)
            raise InputError(f"cannot upload to '{url}': {reason(exc)}; the result is kept at "
                             f"'{kept / local.name}'") from exc
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
