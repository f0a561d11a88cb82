"""zarr outputs at a URL (an object store: ``s3://``, ``gs://``, any fsspec protocol): seen
at their URL only once complete, although object stores have no rename, and never copied.

:class:`UrlZarrWriter` writes the store's chunks (or shards) straight to their keys at the URL,
and its metadata documents under a hidden sibling prefix, ``<url>.partial-<token>``
(:mod:`.splitstore`): the blocks (from this process or from cluster workers, which open the
prefix by URL), the z filter and the pyramid all go there. Without metadata, no zarr reader
sees an array at the URL. :meth:`UrlZarrWriter.commit` then copies the few metadata documents
to the URL within the store's service, every array's before the group that lists it, and a
completion marker last; then it removes the prefix. A terabyte volume commits in as many
requests as a small one. A cancelled or failed run removes its chunks and its prefix. A
store that exists at the URL is refused before any work: it cannot be swapped for the new
one in place; nor is a run begun over chunks that another run left there, nor one begun at the
same moment as another (each claims the URL with an object created only where none is:
:data:`CLAIM_FILE`).

A resumable run (``resume_key``) keeps its chunks and its prefix when it fails or is
stopped, with its ledger of finished blocks inside the prefix (one small object per block:
:mod:`.ledger`), and the next run of the same key, on any machine that reaches the store,
finds the prefix and continues: a cluster job that ran out of time writes on where it
stopped.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import InputError
from .common import ZARR_SUFFIX, check_output_path, is_url, is_zarr_name, reason
from .fetch import url_fs, writable_store
from .fileurl import check_bucket, check_file_url
from .ledger import LEDGER_DIR, Ledger
from .stores import COMPLETE_FILE, find_unfinished, is_complete, partials_beside, store_exists
from .zarr import ZarrWriter, open_zarr_readonly
from .zarrfmt import check_zarr_format, create_zarr_array

__all__ = ["UrlZarrWriter", "check_output_place", "check_output_url", "CLAIM_FILE"]

#: The object at a URL that names the run writing its chunks (:meth:`UrlZarrWriter._claim`);
#: zarr readers ignore it, and the commit removes it.
CLAIM_FILE = ".emdiffuse_run"


def check_output_place(path: str | os.PathLike[str], *, resume: bool = False) -> Path | str:
    """Any output, before any work: a local path (:func:`~.common.check_output_path`: a TIFF,
    MRC, zarr or precomputed name in a writable folder), a zarr store by URL
    (:func:`check_output_url`, ``resume`` as there) or a file by URL
    (:func:`~.fileurl.check_file_url`); one line otherwise.

    Examples
    --------
    >>> check_output_place("scan.png")
    Traceback (most recent call last):
    ...
    napari_emdiffuse.engine.errors.InputError: cannot write 'scan.png': .png is read only here; write .tif, .mrc or .zarr (they keep the pixel size)
    """
    text = str(path).strip()
    if not is_url(text):
        return check_output_path(text)
    if is_zarr_name(text):
        return check_output_url(text, resume=resume)
    return check_file_url(text)


def check_output_url(url: str, *, resume: bool = False) -> str:
    """A ``.zarr`` output by URL, before any work: a name ending in ``.zarr``, nothing there
    yet (with ``resume``, or a finished store, which the run's key may show to be this run's
    own, or the chunks that an unfinished run of it left), the service reachable; one line
    otherwise.

    Examples
    --------
    >>> check_output_url("s3://bucket/out.tif")
    Traceback (most recent call last):
    ...
    napari_emdiffuse.engine.errors.InputError: cannot write 's3://bucket/out.tif': a zarr store goes here; name it .zarr (or .ome.zarr)
    """
    url = str(url).rstrip("/")
    if not url.lower().endswith(ZARR_SUFFIX):
        raise InputError(f"cannot write '{url}': a zarr store goes here; name it .zarr (or .ome.zarr)")
    if url.lower().startswith(("http://", "https://")):
        raise InputError(f"cannot write '{url}': a web server's files are read here, not written; write to an object "
                         "store (s3://, gs://) or a folder")
    try:
        fs, path = url_fs(url)
        check_bucket(fs, path, url)
        there = fs.exists(path)
        whole = there and store_exists(url)
    except InputError:
        raise
    except ImportError as exc:
        raise InputError(f"cannot write '{url}': {reason(exc)} (pip install napari-emdiffuse[remote])") from exc
    except Exception as exc:  # no such bucket, no credentials, no connection: the service says why
        raise InputError(f"cannot write '{url}': {reason(exc)}") from exc
    if there and not (resume and (not whole or is_complete(url))):  # a run's key tells apart what is there, later
        _refuse_existing(url, whole)
    return url


def _refuse_existing(url: str, whole: bool) -> None:
    if whole:
        raise InputError(f"cannot write '{url}': it exists, and an object store cannot swap a finished store for it "
                         "in place; remove it first, or choose another name")
    others = partials_beside(url)
    if others:  # the chunks at the URL (or the claim before them) are that run's
        raise _another_run(url, others[0])
    raise InputError(f"cannot write '{url}': it holds objects but no zarr store (so does the output of a run that "
                     "goes on or stopped: its chunks, with its record in a hidden '.partial-' prefix beside it); "
                     "continue a stopped run with its own command and --resume, or remove them, or choose another name")


def _another_run(url: str, record: str) -> InputError:
    return InputError(f"cannot write '{url}': '{record}' beside it is the record of another run into it, going on or "
                      "stopped (with --resume the same command continues a stopped one); delete it if no such run "
                      "goes on, or choose another name")


class UrlZarrWriter(ZarrWriter):
    """:class:`~.zarr.ZarrWriter` for a store at a URL (module docstring): the same
    attributes and methods, paths as URLs; never replacing a store."""

    def __init__(
        self,
        url: str,
        shape: Sequence[int],
        dtype: Any,
        *,
        chunks: Sequence[int] | None = None,
        resume_key: str | None = None,
        zarr_format: int = 2,
        overwrite: bool = False,
        **described: Any,
    ) -> None:
        import numpy as np
        import zarr

        del overwrite  # nothing may be there (check_output_url): there is nothing to replace
        self.path = self.url = check_output_url(url, resume=resume_key is not None)
        self.zarr_format = check_zarr_format(zarr_format)
        shape = tuple(int(n) for n in shape)
        meta, axes = self._describe(shape, resume_key=resume_key, **{"spacing": None, "unit": "nm", "axes": None,
                                                                     "attrs": None, "origin": None, **described})
        self._state = "open"
        if resume_key is not None:
            found = find_unfinished(self.url, resume_key, shape, np.dtype(dtype), chunks, self.zarr_format)
            if found is not None:
                if store_exists(self.url):
                    _refuse_existing(self.url, True)
                self._temp, self.resumed = found, True
                self._claim(exclusive=False)  # the stopped run's claim, taken over
                self.array = zarr.open_array(writable_store(self.array_path), mode="r+")
                return
        fs, path = url_fs(self.url)
        if fs.exists(path):  # a finished store, or another run's chunks: not this run's to write over
            _refuse_existing(self.url, store_exists(self.url))
        others = partials_beside(self.url)
        if others:  # its chunks would go to the same keys as this run's
            raise _another_run(self.url, others[0])
        self._temp = f"{self.url}.partial-{secrets.token_hex(4)}"
        try:  # the metadata, under the prefix: nothing of this run is at the URL before its claim
            if self.ome:
                zarr.open_group(writable_store(self._temp), mode="w-", zarr_format=self.zarr_format)
            self.array = create_zarr_array(self.array_path, shape, dtype, chunks=chunks, zarr_format=self.zarr_format,
                                           axes=axes)  # fmt: skip
            self.array.attrs.update(meta)
            self._claim(exclusive=True)  # a run begun at the same moment passed the checks above too
        except BaseException as exc:
            self._remove(self._temp)  # never the URL: what is there is another run's
            self._state = "aborted"
            if not isinstance(exc, InputError) and fs.exists(path):  # zarr saw the other run's claim or chunks
                raise self._lost() from exc
            if isinstance(exc, (OSError, ValueError)) and not isinstance(exc, InputError):
                raise InputError(f"cannot write '{self.url}': {reason(exc)}") from exc
            raise

    def _claim(self, *, exclusive: bool) -> None:
        """Write :data:`CLAIM_FILE` at the URL, naming this run's prefix, before any chunk (and
        after its metadata: zarr would not create an array where it sees an object).

        The checks before it (nothing at the URL, no other run's prefix beside it) cannot see a
        run that began at the same moment; this object can: created only where none is (S3's
        ``If-None-Match``, ``open(..., "x")`` on a file system), then read back (a service that
        ignores the condition keeps the last writer's: the other run then stops here). The run
        that loses is refused before it writes any chunk, and removes nothing of the other's.
        """
        from fsspec.implementations.local import LocalFileSystem

        fs, path = url_fs(self.url)
        claim, token = f"{path}/{CLAIM_FILE}", self._temp.rsplit(".partial-", 1)[-1].encode()
        try:
            if not exclusive:
                fs.pipe_file(claim, token)
            elif isinstance(fs, LocalFileSystem):
                fs.makedirs(path, exist_ok=True)
                with open(claim, "xb") as f:
                    f.write(token)
            else:
                fs.pipe_file(claim, token, mode="create")
            lost = fs.cat_file(claim) != token
        except FileExistsError:
            lost = True
        except Exception as exc:  # S3's refused condition reaches s3fs as an OSError naming it
            if "precondition" not in str(exc).lower():
                raise InputError(f"cannot write '{self.url}': {reason(exc)}") from exc
            lost = True
        if lost:
            raise self._lost()

    def _lost(self) -> InputError:
        return InputError(f"cannot write '{self.url}': another run began writing it at the same moment; let that one "
                          "finish, or stop it and remove what it wrote, or choose another name")

    def _join(self, name: str) -> str:
        return f"{self._temp}/{name}"

    def _group(self) -> Any:
        import zarr

        return zarr.open_group(writable_store(self._temp), mode="r+")

    def _drop(self, where: Any) -> None:
        self._remove(where)

    @property
    def temp_path(self) -> str:  # type: ignore[override]
        """Where the store lives until :meth:`commit` (a URL)."""
        return self._temp

    @property
    def ledger(self) -> Ledger:
        """The finished parts of a resumable run, under the prefix (inert for other runs)."""
        return Ledger(self._join(LEDGER_DIR) if self.resume_key is not None else None)

    @property
    def kept(self) -> bool:
        """An aborted resumable store left at its prefix for the next run."""
        return self._state == "aborted" and self.resume_key is not None

    def commit(self) -> str:  # type: ignore[override]
        """Finish the store and copy its metadata to its URL, the marker last (module docstring)."""
        if self._state == "committed":
            return self.url
        if self._state != "open":
            raise RuntimeError(f"UrlZarrWriter for '{self.url}' was aborted; nothing to commit")
        if store_exists(self.url):  # another run (which nothing stops in an object store) finished it meanwhile
            self._state = "failed"
            raise InputError(f"cannot write '{self.url}': another run finished a store there while this one wrote its "
                             f"chunks into it, so it may hold chunks of both; this run's metadata is kept at "
                             f"'{self._temp}'; delete both and run again")
        try:
            self._finish()
            fs, temp = url_fs(self.array_path)
            fs.pipe_file(f"{temp}/{COMPLETE_FILE}", b"complete\n")
        except InputError:
            raise
        except Exception as exc:
            raise InputError(f"cannot finish '{self.url}': {reason(exc)}") from exc
        copied: list[str] = []
        try:
            self._copy_to_url(copied)
        except Exception as exc:  # the chunks are in place and the metadata whole under the prefix: keep both
            self._state = "failed"
            fs, _ = url_fs(self.url)
            for path in reversed(copied):  # the URL back to chunks without metadata, which no reader takes
                fs.rm_file(path)
            raise InputError(f"cannot copy the finished store's metadata to '{self.url}': {reason(exc)}; its chunks "
                             f"are there and its metadata whole at '{self._temp}' (copy that there, or delete both "
                             "and run again)") from exc
        self._remove(f"{self.url}/{CLAIM_FILE}")
        self._remove(self._temp)
        self._state = "committed"
        self.array = open_zarr_readonly(self.url)
        return self.url

    def _copy_to_url(self, copied: list[str]) -> None:
        """The metadata documents under the hidden prefix to the URL, deepest first (arrays
        before the group that lists them), then the completion marker; each one's URL path
        appended to ``copied`` once it is there."""
        fs, temp = url_fs(self._temp)
        _, final = url_fs(self.url)
        found = sorted(fs.find(temp))
        last = [p for p in found if p.rsplit("/", 1)[-1] == COMPLETE_FILE]
        rest = sorted((p for p in found if p not in set(last)), key=lambda p: (-p.count("/"), p))
        for path in rest + last:
            fs.copy(path, final + path[len(temp):])
            copied.append(final + path[len(temp):])

    def abort(self) -> None:
        """Remove the chunks and the hidden prefix (keep both, for a later run to resume,
        when resumable); nothing after :meth:`commit`, an earlier abort, or a copy that
        failed (its store is kept)."""
        if self._state != "open":
            return
        self._state = "aborted"
        self.array = None  # type: ignore[assignment]
        if self.resume_key is None:
            self._remove(self._temp)
            self._remove(self.url)

    @staticmethod
    def _remove(url: str) -> None:
        try:
            fs, path = url_fs(url)
            if fs.exists(path):
                fs.rm(path, recursive=True)
        except Exception:  # noqa: BLE001 - best effort: a leftover prefix is hidden and says partial
            pass
