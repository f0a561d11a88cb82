"""napari writer for MRC (*File > Save Selected Layers...* with a ``.mrc``/``.rec`` name), so an
MRC opened with this plugin's reader can be saved back with its voxel size."""

from __future__ import annotations

from typing import Any

__all__ = ["write_mrc_layer"]


def write_mrc_layer(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write one image layer as MRC; its ``scale`` is taken as the pixel size in nm.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from pathlib import Path
    >>> out = Path(tempfile.mkdtemp()) / "saved.mrc"
    >>> write_mrc_layer(str(out), np.zeros((4, 4), np.float32), {"scale": (2.0, 2.0)}) == [str(out)]
    True
    """
    from .engine.errors import InputError
    from .engine.io.mrc import write_mrc

    if isinstance(data, list):  # a multiscale layer: its full resolution
        data = data[0]
    if meta.get("rgb"):
        raise InputError("MRC holds greyscale images; this layer is RGB")
    scale = meta.get("scale")
    spacing = tuple(float(s) for s in scale) if scale is not None and any(float(s) != 1.0 for s in scale) else None
    made = (meta.get("metadata") or {}).get("emdiffuse")  # set on the layers this plugin made
    return [str(write_mrc(path, data, spacing=spacing, unit="nm", provenance=made))]
