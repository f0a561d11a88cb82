"""An MRC volume by URL read by byte range (:mod:`.rawurl`): its header says where its
pixels lie, uncompressed, slice after slice."""

from __future__ import annotations

import io
import warnings

import numpy as np

from ..errors import InputError
from .common import ImageData, reason
from .fetch import read_range
from .mrc import imod_unsigned, mrc_origin, mrc_spacing
from .rawurl import RawUrlArray, check_size, size_note

__all__ = ["read_mrc_url"]

_HEADER = 1024


def read_mrc_url(url: str) -> ImageData | None:
    """The MRC file at ``url`` read lazily by byte range, with its voxel size in nm; None for
    a compressed one (gzip or bzip2: no pixel lies at a known byte)."""
    import mrcfile
    from mrcfile.mrcinterpreter import MrcInterpreter

    try:
        raw = read_range(url, 0, _HEADER)
    except OSError as exc:
        raise InputError(f"cannot read '{url}': {reason(exc)}") from exc
    if raw[:2] == b"\x1f\x8b" or raw[:3] == b"BZh":
        return None
    with warnings.catch_warnings():  # the extended header is not fetched: its size is all we need
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            head = MrcInterpreter(iostream=io.BytesIO(raw), permissive=True, header_only=True)
        except Exception as exc:  # noqa: BLE001 - mrcfile raises its own on a broken header
            raise InputError(f"cannot read '{url}': not an MRC file ({reason(exc)})") from exc
    header = head.header
    if len(raw) < _HEADER or header is None or bytes(header.map) != b"MAP ":
        raise InputError(f"cannot read '{url}': not an MRC file")
    try:
        stored = np.dtype(mrcfile.utils.data_dtype_from_header(header))
        shape = tuple(int(n) for n in mrcfile.utils.data_shape_from_header(header))
    except ValueError as exc:
        raise InputError(f"cannot read '{url}': {reason(exc)}") from exc
    shape = shape if len(shape) == 3 and shape[0] > 1 else shape[-2:]
    if min(shape) < 1:
        raise InputError(f"cannot read '{url}': expected a 2D image or a 3D stack, got shape {shape}")
    dtype = np.dtype(np.uint8) if int(header.mode) == 0 and imod_unsigned(header) else None
    data = RawUrlArray(url, _HEADER + max(int(header.nsymbt), 0), shape, stored, dtype)
    check_size(data)
    voxel = head.voxel_size
    spacing = mrc_spacing((float(voxel.z), float(voxel.y), float(voxel.x)), len(shape))
    return ImageData(data=data, spacing=spacing, unit="nm" if spacing else None, axes="ZYX"[-len(shape):],
                     path=None, note=size_note(data), origin=mrc_origin(header, spacing))  # fmt: skip
