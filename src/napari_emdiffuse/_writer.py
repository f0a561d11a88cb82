"""napari writers: MRC (*File > Save Selected Layers...* with a ``.mrc``/``.rec`` name), so an
MRC opened with this plugin's reader can be saved back with its voxel size, and TIFF with the
pixel size (the "EMDiffuse TIFF with pixel size" file type), which napari's own TIFF writer
leaves out: Fiji and this plugin read it back with the layer's scale. Both keep the
layer's place too (its ``translate``: ImageJ's origin in a TIFF, the grid start in an MRC where
it is whole pixels): a restored region saved and opened again lies over the image it came from.
A ``.precomputed`` name saves a neuroglancer precomputed folder with its scales, for a
connectomics pipeline (CloudVolume, igneous) or neuroglancer itself."""

from __future__ import annotations

from typing import Any

__all__ = ["write_mrc_layer", "write_precomputed_layer", "write_tiff_layer"]


def _layer_spacing(meta: dict[str, Any]) -> tuple[tuple[float, ...] | None, str]:
    """The layer's scale as a pixel size, in its unit where napari knows a length one (nm
    otherwise: this plugin's layers are scaled in nm); None for an unscaled layer."""
    from .engine.io.units import nm_factor

    scale = meta.get("scale")
    spacing = tuple(float(s) for s in scale) if scale is not None and any(float(s) != 1.0 for s in scale) else None
    units = [str(u) for u in (meta.get("units") or ())]
    known = [u for u in units if nm_factor(u) is not None]
    return spacing, (known[-1] if known and len(set(known)) == 1 else "nm")


def write_mrc_layer(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write one image layer as MRC; its ``scale`` is taken as the pixel size in nm, its
    ``translate`` as its place where that is whole pixels (:func:`~.engine.io.mrc.write_mrc`).

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from pathlib import Path
    >>> out = Path(tempfile.mkdtemp()) / "saved.mrc"
    >>> write_mrc_layer(str(out), np.zeros((4, 4), np.float32), {"scale": (2.0, 2.0)}) == [str(out)]
    True
    """
    from .engine.io.mrc import write_mrc

    return _write_layer(write_mrc, path, data, meta, "MRC holds greyscale images; this layer is RGB")


def write_tiff_layer(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write one greyscale image layer as TIFF with its ``scale`` as the pixel size and its
    ``translate`` as the origin (an ImageJ hyperstack where the pixel type allows, so Fiji
    shows both), atomically.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from pathlib import Path
    >>> from napari_emdiffuse.engine.io.images import read_image
    >>> out = Path(tempfile.mkdtemp()) / "saved.tif"
    >>> _ = write_tiff_layer(str(out), np.zeros((2, 4, 4), np.uint8),
    ...                      {"scale": (30.0, 5.0, 5.0), "translate": (0.0, 40.0, 80.0)})
    >>> read_image(out).spacing, read_image(out).origin
    ((30.0, 5.0, 5.0), (0.0, 40.0, 80.0))
    """
    from .engine.io.tiff import write_tiff

    return _write_layer(write_tiff, path, data, meta, "this writer keeps greyscale images with their pixel size; "
                        "this layer is RGB")


def write_precomputed_layer(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write one greyscale 2D or 3D image layer as a neuroglancer precomputed folder
    (``NAME.precomputed``, :func:`~.engine.io.precomputed_write.write_precomputed`): its
    ``scale`` as the voxel size, its ``translate`` as the volume's offset where that is whole
    voxels, and the levels below full resolution that neuroglancer needs.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from pathlib import Path
    >>> from napari_emdiffuse.engine.io.images import read_image
    >>> out = Path(tempfile.mkdtemp()) / "saved.precomputed"
    >>> _ = write_precomputed_layer(str(out), np.zeros((2, 4, 4), np.uint8),
    ...                             {"scale": (30.0, 5.0, 5.0), "translate": (60.0, 40.0, 0.0)})
    >>> read_image(out).spacing, read_image(out).origin
    ((30.0, 5.0, 5.0), (60.0, 40.0, 0.0))
    """
    from .engine.io.precomputed_write import write_precomputed

    return _write_layer(write_precomputed, path, data, meta, "a precomputed image holds one greyscale channel; "
                        "this layer is RGB")


def _write_layer(write: Any, path: str, data: Any, meta: dict[str, Any], rgb_refused: str) -> list[str]:
    """One greyscale layer through ``write`` with its scale, place and provenance."""
    from .engine.errors import InputError

    if isinstance(data, list):  # a multiscale layer: its full resolution
        data = data[0]
    if meta.get("rgb"):
        raise InputError(rgb_refused)
    spacing, unit = _layer_spacing(meta)
    made = (meta.get("metadata") or {}).get("emdiffuse")  # set on the layers this plugin made
    return [str(write(path, data, spacing=spacing, unit=unit, provenance=made, origin=_layer_origin(meta)))]


def _layer_origin(meta: dict[str, Any]) -> tuple[float, ...] | None:
    """The layer's ``translate`` (where its first pixel's centre lies, in the scale's units),
    which this plugin's reader gives back as the layer's translate; None at 0."""
    translate = meta.get("translate")
    at = tuple(float(t) for t in translate) if translate is not None else ()
    return at if any(at) else None
