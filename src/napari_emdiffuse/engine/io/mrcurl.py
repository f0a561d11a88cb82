"""A large MRC volume read by URL a band of rows at a time, never downloaded whole.

EMPIAR and lab servers hand out FIB-SEM and serial-section volumes as single MRC files of
many gigabytes. Their pixels lie uncompressed after the header, slice after slice and row
after row, so any rows of any slice are one byte range. :class:`MrcUrlArray` reads the
header, then, for each read, the bands of :data:`BAND_ROWS` full rows it touches: one range
each, fetched concurrently (:func:`~.fetch.read_many`) and kept in the process's chunk cache
(:mod:`.chunkcache`), so a block's halo and the next block's rows are not fetched again. A
``--region`` or ``--slices`` of a volume then costs only its own rows.

A server that ignores byte ranges, a compressed map (``.map.gz``) or a file below
:data:`LAZY_MIN_BYTES` is fetched whole instead, once (:func:`~.remote.download`).
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np

from ..errors import InputError
from .chunkcache import new_token, shared_cache
from .common import ImageData, reason
from .fetch import answers_ranges, read_many, read_range, remote_size
from .mrc import imod_unsigned, mrc_spacing
from .views import LazyArray, ascending_index

__all__ = ["BAND_ROWS", "LAZY_MIN_BYTES", "MrcUrlArray", "read_mrc_url", "by_range"]

#: MRC files by URL at least this large are read by byte range; smaller ones are fetched whole.
LAZY_MIN_BYTES = 256 << 20
#: Rows of a slice fetched as one range (and kept as one chunk): 64 rows of a 4096-px uint8
#: slice are 256 kB, a request's worth.
BAND_ROWS = 64
_HEADER = 1024


class MrcUrlArray(LazyArray):
    """The pixels of an MRC file at ``url`` (YX, or ZYX for a stack or volume), read by byte
    range: an index fetches the bands of rows it touches. Pickles as its URL, so cluster
    workers read it in place.

    Parameters
    ----------
    url : str
        ``https://``, ``s3://``, ``gs://``, ... address of an uncompressed MRC file.
    """

    def __init__(self, url: str) -> None:
        import mrcfile
        from mrcfile.mrcinterpreter import MrcInterpreter

        self.url = str(url)
        try:
            raw = read_range(self.url, 0, _HEADER)
            with warnings.catch_warnings():  # the extended header is not fetched: its size is all we need
                warnings.simplefilter("ignore", RuntimeWarning)
                head = MrcInterpreter(iostream=io.BytesIO(raw), permissive=True, header_only=True)
        except OSError as exc:
            raise InputError(f"cannot read '{url}': {reason(exc)}") from exc
        header = head.header
        if len(raw) < _HEADER or header is None or bytes(header.map) != b"MAP ":
            raise InputError(f"cannot read '{url}': not an MRC file")
        try:
            dtype = mrcfile.utils.data_dtype_from_header(header)
            shape = tuple(int(n) for n in mrcfile.utils.data_shape_from_header(header))
        except ValueError as exc:
            raise InputError(f"cannot read '{url}': {reason(exc)}") from exc
        self.stored = np.dtype(dtype)
        self.dtype = np.dtype(np.uint8) if int(header.mode) == 0 and imod_unsigned(header) else self.stored.newbyteorder("=")
        self.offset = _HEADER + max(int(header.nsymbt), 0)
        self.shape: tuple[int, ...] = shape if len(shape) == 3 and shape[0] > 1 else shape[-2:]
        if min(self.shape) < 1 or len(shape) not in (2, 3):
            raise InputError(f"cannot read '{url}': expected a 2D image or a 3D stack, got shape {shape}")
        size = remote_size(self.url)
        need = self.offset + int(np.prod(self.shape, dtype=np.int64)) * self.stored.itemsize
        if size is not None and size < need:
            raise InputError(f"cannot read '{url}': its pixels are truncated ({size} of {need} bytes)")
        voxel = head.voxel_size
        self.voxel_size = (float(voxel.z), float(voxel.y), float(voxel.x))
        rows, cols = self.shape[-2:]
        self.chunks: tuple[int, ...] = (*(1,) * (len(self.shape) - 2), min(BAND_ROWS, rows), cols)
        self._cache = shared_cache()
        self._token = new_token()

    @property
    def nbytes_stored(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.stored.itemsize

    def __getitem__(self, key: Any) -> np.ndarray:
        read, post = ascending_index(key, self.shape)
        ranges = [range(k, k + 1) if isinstance(k, int) else range(k.start, k.stop, k.step) for k in read]
        out = np.zeros(tuple(len(r) for r in ranges), self.dtype)
        if out.size:
            zs = list(ranges[0]) if len(self.shape) == 3 else [0]
            rows, cols = ranges[-2], ranges[-1]
            first, last = rows[0] // BAND_ROWS, rows[-1] // BAND_ROWS
            bands = [(z, b) for z in zs for b in range(first, last + 1)]
            got = dict(zip(bands, self._bands(bands)))
            for i, z in enumerate(zs):
                for b in range(first, last + 1):
                    band = got[(z, b)]
                    lo = b * BAND_ROWS
                    inside = [j for j, r in enumerate(rows) if lo <= r < lo + band.shape[0]]
                    if inside:
                        picked = band[np.ix_([rows[j] - lo for j in inside], list(cols))]
                        target = (i, inside) if len(self.shape) == 3 else (inside,)
                        out[target] = picked
        out = out.reshape(tuple(len(r) for r, k in zip(ranges, read) if not isinstance(k, int)))
        return out[post] if post else out

    def _bands(self, bands: list[tuple[int, int]]) -> list[np.ndarray]:
        """Each band's pixels (rows, columns): kept ones from the cache, the others fetched
        together, one byte range each."""
        got: list[np.ndarray | None] = [self._cache.get((self._token, *b)) for b in bands]
        todo = [i for i, band in enumerate(got) if band is None]
        rows, cols = self.shape[-2:]
        spans = []
        for i in todo:
            z, b = bands[i]
            n = min(BAND_ROWS, rows - b * BAND_ROWS)
            spans.append((self.offset + ((z * rows) + b * BAND_ROWS) * cols * self.stored.itemsize,
                          n * cols * self.stored.itemsize))  # fmt: skip
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
        return ("MrcUrlArray", self.url, self.shape, str(self.dtype))

    def __repr__(self) -> str:
        return f"MrcUrlArray('{self.url}', shape={self.shape}, dtype={self.dtype})"


def read_mrc_url(url: str) -> ImageData:
    """An MRC file by URL, read lazily by byte range (:class:`MrcUrlArray`), with its voxel
    size in nm."""
    data = MrcUrlArray(url)
    spacing = mrc_spacing(data.voxel_size, len(data.shape))
    size = data.nbytes_stored
    amount = f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.0f} MB"
    note = f"{amount} of pixels read by byte range, only the rows a run needs"
    return ImageData(data=data, spacing=spacing, unit="nm" if spacing else None, axes="ZYX"[-len(data.shape):],
                     path=None, note=note)  # fmt: skip


def by_range(url: str) -> bool:
    """Whether the MRC file at ``url`` is read by byte range rather than fetched whole: an
    uncompressed one of :data:`LAZY_MIN_BYTES` or more, on a server that answers ranges."""
    from .common import MRC_SUFFIXES
    from .remote import url_file_name

    if not url_file_name(url).lower().endswith(MRC_SUFFIXES):
        return False
    try:
        size = remote_size(url)
        if size is None or size < LAZY_MIN_BYTES or not answers_ranges(url):
            return False
        return read_range(url, 0, 4)[:2] != b"\x1f\x8b" and read_range(url, 0, 3) != b"BZh"  # not compressed
    except OSError:
        return False  # fetched whole, which says why it cannot be
