"""Large files by URL whose pixels lie uncompressed at a known place (an MRC volume, an
ImageJ or plain TIFF stack), read a band of rows at a time, never downloaded whole.

EMPIAR, Zenodo and lab servers hand out FIB-SEM and serial-section volumes as single MRC or
TIFF files of many gigabytes. Where the pixels lie uncompressed after a header, plane after
plane and row after row, any rows of any plane are one byte range. :class:`RawUrlArray`
reads, for each read, the bands of :data:`BAND_ROWS` full rows it touches: one range each,
fetched concurrently (:func:`~.fetch.read_many`) and kept in the process's chunk cache
(:mod:`.chunkcache`), so a block's halo and the next block's rows are not fetched again. A
``--region`` of a volume then costs only its own rows.

The formats find where the pixels are (:func:`~.mrcurl.read_mrc_url`,
:func:`~.tiff.read_tiff_url`, which reads compressed TIFFs a tile or page at a time); a file
below :data:`LAZY_MIN_BYTES`, a compressed MRC map or one on a server that ignores byte ranges
is fetched whole instead, once (:func:`~.remote.download`).
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from ..errors import InputError
from .chunkcache import new_token, shared_cache
from .common import reason
from .fetch import answers_ranges, read_many, remote_size
from .views import LazyArray, ascending_index

__all__ = ["BAND_ROWS", "LAZY_MIN_BYTES", "RawUrlArray", "check_size", "large_and_ranged", "size_note"]

#: Files by URL at least this large are read by byte range where they can be; smaller ones
#: are fetched whole and kept.
LAZY_MIN_BYTES = 256 << 20
#: Rows of a plane fetched as one range (and kept as one chunk): 64 rows of a 4096-px uint8
#: plane are 256 kB, a request's worth.
BAND_ROWS = 64


class RawUrlArray(LazyArray):
    """Pixels of ``shape`` (..., rows, columns) stored raw as ``stored`` from byte ``offset``
    of the file at ``url``, C order, read by byte range: an index fetches the bands of rows
    it touches. ``dtype``: what they read as (default ``stored`` in native byte order; the
    same size, as IMOD's unsigned bytes). Pickles as its URL and layout, so cluster workers
    read it in place (:attr:`key`, :meth:`from_key`).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "raw.bin"
    >>> _ = p.write_bytes(b"HEAD" + np.arange(24, dtype=">u2").tobytes())
    >>> a = RawUrlArray(f"file://{p}", 4, (2, 3, 4), ">u2")
    >>> a[1, ::2, -1].tolist(), a.key
    ([15, 23], 'raw:4:>u2:<u2:2x3x4')
    """

    def __init__(self, url: str, offset: int, shape: tuple[int, ...], stored: Any, dtype: Any = None) -> None:
        self.url = str(url)
        self.offset = int(offset)
        self.shape: tuple[int, ...] = tuple(int(n) for n in shape)
        self.stored = np.dtype(stored)
        self.dtype = np.dtype(dtype) if dtype is not None else self.stored.newbyteorder("=")
        if len(self.shape) < 2 or min(self.shape) < 1 or self.dtype.itemsize != self.stored.itemsize:
            raise ValueError(f"no raw array of shape {self.shape}, {self.stored} read as {self.dtype}")
        rows, cols = self.shape[-2:]
        self.chunks: tuple[int, ...] = (*(1,) * (len(self.shape) - 2), min(BAND_ROWS, rows), cols)
        self._cache = shared_cache()
        self._token = new_token()

    @property
    def nbytes_stored(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.stored.itemsize

    @property
    def key(self) -> str:
        """The layout as text (:meth:`from_key` opens it again, in a worker)."""
        return f"raw:{self.offset}:{self.stored.str}:{self.dtype.str}:{'x'.join(map(str, self.shape))}"

    @classmethod
    def from_key(cls, url: str, key: str) -> "RawUrlArray":
        _, offset, stored, dtype, shape = key.split(":")
        return cls(url, int(offset), tuple(int(n) for n in shape.split("x")), stored, dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        read, post = ascending_index(key, self.shape)
        ranges = [range(k, k + 1) if isinstance(k, int) else range(k.start, k.stop, k.step) for k in read]
        out = np.zeros(tuple(len(r) for r in ranges), self.dtype)
        if out.size:
            rows, cols = ranges[-2], ranges[-1]
            lead = list(itertools.product(*ranges[:-2]))
            planes = [int(np.ravel_multi_index(p, self.shape[:-2])) if p else 0 for p in lead]
            first, last = rows[0] // BAND_ROWS, rows[-1] // BAND_ROWS
            bands = [(z, b) for z in planes for b in range(first, last + 1)]
            got = dict(zip(bands, self._bands(bands)))
            flat = out.reshape(len(planes), len(rows), len(cols))
            for i, z in enumerate(planes):
                for b in range(first, last + 1):
                    lo = b * BAND_ROWS
                    inside = [j for j, r in enumerate(rows) if lo <= r < lo + BAND_ROWS]
                    if inside:
                        flat[i, inside] = got[(z, b)][np.ix_([rows[j] - lo for j in inside], list(cols))]
        out = out.reshape(tuple(len(r) for r, k in zip(ranges, read) if not isinstance(k, int)))
        return out[post] if post else out

    def _bands(self, bands: list[tuple[int, int]]) -> list[np.ndarray]:
        """Each band's pixels (rows, columns): kept ones from the cache, the others fetched
        together, one byte range each."""
        got: list[np.ndarray | None] = [self._cache.get((self._token, *b)) for b in bands]
        todo = [i for i, band in enumerate(got) if band is None]
        rows, cols = self.shape[-2:]
        row_bytes = cols * self.stored.itemsize
        spans = []
        for i in todo:
            plane, b = bands[i]
            n = min(BAND_ROWS, rows - b * BAND_ROWS)
            spans.append((self.offset + (plane * rows + b * BAND_ROWS) * row_bytes, n * row_bytes))
        try:
            fetched = read_many([self.url] * len(todo), spans) if todo else []
        except OSError as exc:
            raise InputError(f"cannot read '{self.url}': {reason(exc)}") from exc
        for i, raw, (_, size) in zip(todo, fetched, spans):
            if raw is None or len(raw) != size:
                raise InputError(f"cannot read '{self.url}': a range of its pixels did not come back whole")
            pixels = np.frombuffer(raw, self.stored).reshape(-1, cols)
            band = pixels.view(self.dtype) if self.dtype.itemsize == 1 else pixels.astype(self.dtype)
            self._cache.put((self._token, *bands[i]), band)
            got[i] = band
        return got  # type: ignore[return-value]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_token": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._token = new_token()  # another process: its own cache entries

    def __dask_tokenize__(self) -> tuple:
        return ("RawUrlArray", self.url, self.key)

    def __repr__(self) -> str:
        return f"RawUrlArray('{self.url}', shape={self.shape}, dtype={self.dtype})"


def large_and_ranged(url: str, size: int | None) -> bool:
    """Whether the file at ``url`` of ``size`` bytes (as its server says) is worth reading by
    byte range: :data:`LAZY_MIN_BYTES` or more, on a server that answers ranges (False where
    that cannot be found out: it is then fetched whole, which says why it cannot be)."""
    try:
        return size is not None and size >= LAZY_MIN_BYTES and answers_ranges(url)
    except OSError:
        return False


def size_note(array: RawUrlArray) -> str:
    """What a run tells the user about such an input."""
    size = array.nbytes_stored
    amount = f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.0f} MB"
    return f"{amount} of pixels read by byte range, only the rows a run needs"


def check_size(array: RawUrlArray) -> None:
    """One line where the file ends before its pixels do."""
    size = remote_size(array.url)
    need = array.offset + array.nbytes_stored
    if size is not None and size < need:
        raise InputError(f"cannot read '{array.url}': its pixels are truncated ({size} of {need} bytes)")
