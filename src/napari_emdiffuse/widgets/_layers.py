"""napari layer helpers: the geometry a result takes from its input, showing results as
layers that a re-run updates in place, and a combo box of the viewer's image layers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtWidgets import QComboBox, QWidget

from ..engine.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = [
    "UNCERTAINTY_COLORMAP",
    "view_region",
    "visible_pixels",
    "region_in_view",
    "LayerCombo",
    "layer_image",
    "read_back",
    "refuse_own_file",
    "lazy_volume",
    "layer_geometry",
    "layer_source",
    "layer_spacing",
    "layer_units",
    "show_outputs",
    "upsert_image",
]

UNCERTAINTY_COLORMAP = "magma"


# ----------------------------------------------------------------------------------------------
# geometry and output layers


def layer_geometry(layer: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The data-to-world scale and translate of a layer, as tuples of floats."""
    return tuple(float(v) for v in layer.scale), tuple(float(v) for v in layer.translate)


def layer_units(layer: Any) -> tuple[str, ...] | None:
    """The layer's axis units as strings (napari >= 0.6), or None."""
    units = getattr(layer, "units", None)
    return tuple(str(u) for u in units) if units is not None else None


def layer_source(layer: Any) -> dict[str, Any]:
    """What an output layer needs from its input, captured when a run starts (the input
    may be renamed, moved or removed while the worker runs). The geometry leaves out the
    leading size-1 axes that the pixels to process leave out (``restore.layer_array``)."""
    from ..engine.io.views import single_axes

    scale, translate = layer_geometry(layer)
    units = layer_units(layer)
    shape = tuple((layer.data[0] if getattr(layer, "multiscale", False) else layer.data).shape)
    lead, trail = single_axes(shape)
    kept = slice(lead, len(shape) - trail)
    return {"layer": layer, "name": layer.name, "scale": scale[kept], "translate": translate[kept],
            "units": units[kept] if units is not None else None,
            "spacing": layer_spacing(layer, scale[kept])}  # fmt: skip


def visible_pixels(low: float, high: float, n: int) -> tuple[int, int]:
    """The pixels ``[start, stop)`` of an axis of ``n`` pixels that a view spanning data
    coordinates ``low`` to ``high`` shows, wholly or in part (pixel ``i`` covers ``i - 1/2``
    to ``i + 1/2``), clipped to the image; an empty range where the view misses it.

    Examples
    --------
    >>> visible_pixels(9.7, 20.2, 64), visible_pixels(-5.0, 3.0, 64), visible_pixels(70.0, 80.0, 64)
    ((10, 21), (0, 4), (64, 64))
    """
    lo, hi = sorted((low, high))
    start = max(0, math.floor(lo + 0.5))
    stop = min(n, math.ceil(hi - 0.5) + 1)
    return min(start, n), max(min(start, n), stop)


def view_region(viewer: "napari.viewer.Viewer", layer: Any, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)``: the rows and columns of ``layer``'s pixels (of an array of
    ``shape``, the pixels to process) that the viewer's 2D view shows.

    Raises
    ------
    InputError
        The view is 3D, shows other axes than the image's Y and X, or misses the image.
    """
    dims = viewer.dims
    if dims.ndisplay != 2:
        raise InputError("region in view: switch the viewer to 2D first")
    if tuple(dims.displayed) != (dims.ndim - 2, dims.ndim - 1):
        raise InputError("region in view needs the image's Y and X on screen; the viewer shows other axes "
                         "(roll or transpose them back)")
    h, w = viewer.canvas.size  # screen pixels: height, width
    zoom = float(viewer.camera.zoom)
    cy, cx = (float(v) for v in viewer.camera.center[-2:])
    point = list(dims.point)
    corners = []
    for y, x in ((cy - h / 2 / zoom, cx - w / 2 / zoom), (cy + h / 2 / zoom, cx + w / 2 / zoom)):
        point[-2:] = [y, x]
        corners.append(layer.world_to_data(point)[-2:])
    (y0, y1), (x0, x1) = (visible_pixels(corners[0][k], corners[1][k], shape[-2 + k]) for k in (0, 1))
    if y1 <= y0 or x1 <= x0:
        raise InputError(f"layer '{layer.name}' is not in view; pan to the part to restore")
    return y0, y1, x0, x1


def region_in_view(viewer: "napari.viewer.Viewer", layer: Any, shape: tuple[int, ...],
                   source: dict[str, Any]) -> tuple[tuple[int, int, int, int], dict[str, Any]]:
    """The region of ``layer`` on screen (:func:`view_region`) and ``source``
    (:func:`layer_source`) moved to it, so that a result of the region overlays the input."""
    region = view_region(viewer, layer, shape)
    t, sc = source["translate"], source["scale"]
    return region, {**source, "translate": (*t[:-2], t[-2] + region[0] * sc[-2], t[-1] + region[2] * sc[-1])}


def source_origin(source: dict[str, Any]) -> tuple[float, ...] | None:
    """The engine's ``origin`` for a :func:`layer_source`: its ``translate``, where its
    ``spacing`` is its scale (the units are then the same); a zarr output records it, so
    that the result opens over the input. None where there is nothing to record."""
    if tuple(source["spacing"]) != tuple(source["scale"]) or not any(source["translate"]):
        return None
    return tuple(source["translate"])


def layer_spacing(layer: Any, scale: tuple[float, ...]) -> tuple[float, ...]:
    """The voxel size to give the engine for a layer whose geometry is ``scale`` (without the
    axes :func:`layer_source` leaves out): the scale, or, where the layer is unscaled (all 1),
    the calibration in nm of the file or store it was opened from. napari's own readers leave
    a calibrated TIFF or zarr store unscaled: an SEM console's pixel size, a Fiji stack's z
    spacing, the ``spacing`` of this plugin's zarr outputs.
    The layer keeps its scale; results are shown over it and written with the file's size."""
    if any(v != 1 for v in scale):
        return scale
    path = getattr(getattr(layer, "source", None), "path", None)
    if not path or not Path(path).exists():
        return scale
    from ..engine.io.images import read_calibration

    try:
        img = read_calibration(path)
    except Exception:  # an unreadable file: the layer's scale is all there is
        return scale
    shape = tuple((layer.data[0] if getattr(layer, "multiscale", False) else layer.data).shape)
    # the file's pixels can lack a data bar the layer shows: compare the width and axes only
    if img.spacing is None or img.unit != "nm" or len(img.spacing) != len(scale) or img.data.shape[-1] != shape[-1]:
        return scale
    return tuple(float(v) for v in img.spacing)


def upsert_image(
    viewer: "napari.viewer.Viewer",
    name: str,
    data: Any,
    *,
    protect: Sequence[Any] = (),
    **kwargs: Any,
) -> Any:
    """Show ``data`` in the image layer called ``name``: update it if it exists, else add it.

    Re-running a widget therefore replaces its output rather than piling up copies. A layer
    in ``protect`` (the input) is never overwritten: a new layer is added instead and
    napari makes its name unique.
    """
    from napari.layers import Image

    existing = viewer.layers[name] if name in viewer.layers else None
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    multiscale = isinstance(data, list)  # an OME-Zarr output's levels
    if isinstance(existing, Image) and not any(existing is p for p in protect):
        shape = data[0].shape if multiscale else data.shape
        # napari fixes a layer's multiscale-ness when it is made
        if existing.ndim == len(shape) and not existing.rgb and existing.multiscale == multiscale:
            existing.data = data
            for key in ("scale", "translate", "units", "colormap"):
                if key in kwargs:
                    setattr(existing, key, kwargs[key])
            existing.reset_contrast_limits()
            return existing
        viewer.layers.remove(existing)  # another dimensionality: replace the layer
    return viewer.add_image(data, name=name, **kwargs)


def remove_layer(viewer: "napari.viewer.Viewer", name: str, *, protect: Sequence[Any] = ()) -> None:
    """Remove a stale output layer (e.g. an uncertainty no longer produced)."""
    if name in viewer.layers and not any(viewer.layers[name] is p for p in protect):
        viewer.layers.remove(name)


def show_outputs(
    viewer: "napari.viewer.Viewer",
    source: dict[str, Any],
    geometry: tuple[tuple[float, ...], tuple[float, ...]],
    output: tuple[str, Any],
    uncertainty: tuple[str, Any | None],
    provenance: dict[str, Any] | None = None,
) -> list[Any]:
    """Show a result over its input (``source`` from :func:`layer_source`) and its
    uncertainty, or drop a stale uncertainty an earlier run left; returns the layers shown,
    the result first."""
    (name, data), (unc_name, unc_data) = output, uncertainty
    protect = [source["layer"]]
    geo = {"scale": geometry[0], "translate": geometry[1], "units": source["units"]}
    outputs = []
    if unc_data is not None:
        new = unc_name not in viewer.layers
        unc = upsert_image(viewer, unc_name, unc_data, protect=protect, colormap=UNCERTAINTY_COLORMAP, **geo)
        if new:  # hidden at first, to be toggled on; a re-run keeps the user's choice
            unc.visible = False
        outputs.append(unc)
    else:
        remove_layer(viewer, unc_name, protect=protect)
    outputs.insert(0, upsert_image(viewer, name, data, protect=protect, **geo))
    if provenance is not None:  # which model and settings made each layer (layer.metadata)
        for layer in outputs:
            layer.metadata["emdiffuse"] = dict(provenance, source_layer=source.get("name"))
    return outputs


# ----------------------------------------------------------------------------------------------
# choosing a layer


class LayerCombo(QComboBox):
    """The viewer's image layers, kept in sync with the layer list.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
    accept : callable, optional
        Filter on layers (default: image layers).
    none_label : str, optional
        Put a "no layer" entry first with this text (optional inputs).
    """

    def __init__(
        self,
        viewer: "napari.viewer.Viewer",
        *,
        accept: Callable[[Any], bool] | None = None,
        none_label: str | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        from napari.layers import Image

        self._viewer = viewer
        self._accept = accept or (lambda layer: isinstance(layer, Image))
        self._none = none_label
        self.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(12)
        viewer.layers.events.inserted.connect(self._on_inserted)
        viewer.layers.events.removed.connect(self.refresh)
        viewer.layers.events.reordered.connect(self.refresh)
        for layer in viewer.layers:
            layer.events.name.connect(self.refresh)
        self.refresh()

    def stop_following(self) -> None:
        """Disconnect from the viewer's layer events (the dock closed): a deleted combo box
        must not be called back, nor kept alive by the viewer."""
        events = self._viewer.layers.events
        for signal, callback in ((events.inserted, self._on_inserted), (events.removed, self.refresh),
                                 (events.reordered, self.refresh)):
            signal.disconnect(callback)
        for layer in self._viewer.layers:
            layer.events.name.disconnect(self.refresh)

    def _on_inserted(self, event: Any = None) -> None:
        if event is not None and getattr(event, "value", None) is not None:
            event.value.events.name.connect(self.refresh)
        self.refresh()

    def refresh(self, event: Any = None) -> None:
        try:
            current = self.currentData()
        except RuntimeError:  # deleted with its dock widget
            return
        layers = [layer for layer in self._viewer.layers if self._accept(layer)]
        self.blockSignals(True)
        self.clear()
        if self._none is not None:
            self.addItem(self._none, None)
        for layer in reversed(layers):  # top of the layer list first, as napari shows it
            self.addItem(layer.name, layer)
        idx = -1
        if current is not None:
            for i in range(self.count()):
                if self.itemData(i) is current:
                    idx = i
        if idx < 0:
            active = self._viewer.layers.selection.active
            idx = next((i for i in range(self.count()) if self.itemData(i) is active and active is not None), 0)
        self.setCurrentIndex(idx if self.count() else -1)
        self.blockSignals(False)
        self.currentIndexChanged.emit(self.currentIndex())

    def layer(self) -> Any:
        """The chosen layer, or None."""
        return self.currentData()

    def set_layer(self, layer: Any) -> None:
        for i in range(self.count()):
            if self.itemData(i) is layer:
                self.setCurrentIndex(i)
                return


# ----------------------------------------------------------------------------------------------
# zarr outputs


def refuse_own_file(out: Path | str, layer: Any) -> None:
    """An output that would replace the file the layer was opened from (still read while the
    result is made) is refused in one line."""
    path = getattr(getattr(layer, "source", None), "path", None)
    if path and isinstance(out, Path) and out.exists() and Path(path).exists():
        if out.resolve() == Path(path).resolve():
            raise InputError(f"output '{out}' is the file layer '{layer.name}' was opened from; write elsewhere")


def layer_image(data: Any, source: dict[str, Any], layer: Any, *, origin: tuple[float, ...] | None) -> Any:
    """A layer's pixels with their size and ``origin`` (:func:`source_origin` of the whole
    layer) as :class:`~..engine.io.common.ImageData`, to write a result the way the command
    line writes a file's (:mod:`napari_emdiffuse.files`): the voxel size in its length unit
    (nm where the layer's scale is the file's calibration or has no unit), the file it came
    from as its name."""
    from ..engine.io.common import ImageData
    from ..engine.io.units import nm_factor

    spacing = tuple(float(v) for v in source["spacing"])
    unit = "nm"
    if spacing == tuple(source["scale"]):  # the layer's own scale: in its length unit, if napari knows one
        known = {str(u) for u in (source["units"] or ()) if nm_factor(str(u)) is not None}
        unit = known.pop() if len(known) == 1 else "nm"
    path = getattr(getattr(layer, "source", None), "path", None)
    return ImageData(data=data, spacing=spacing if any(v != 1 for v in spacing) else None, unit=unit, axes=None,
                     path=Path(path) if path else None, origin=origin)


def read_back(out: Path | str, ndim: int) -> Any:
    """A result a dock wrote as a file, read back lazily for display (TIFF and MRC pages are
    memory-mapped or read as shown; a precomputed volume chunk by chunk), with the ``ndim``
    of the result (a precomputed volume is 3D: a 2D result is its one slice)."""
    import dask.array as da
    import numpy as np

    from ..engine.io.images import read_image

    data = read_image(out).data
    if not isinstance(data, (np.ndarray, da.Array)):
        chunks = getattr(data, "chunks", None)
        data = da.from_array(data, chunks=chunks if isinstance(chunks, tuple) and len(chunks) == data.ndim else "auto")
    while data.ndim > ndim and data.shape[0] == 1:
        data = data[0]
    return data


def lazy_volume(volume: Any, out: Path | str | None) -> Any:
    """The result for display: a zarr output becomes a dask array read chunk by chunk, an
    OME-Zarr output the list of its levels (a multiscale layer)."""
    import dask.array as da
    import numpy as np

    from ..engine.io.fetch import zarr_store
    from ..engine.io.zarr import is_ome, store_exists

    if out is not None and is_ome(out) and store_exists(out):
        import zarr

        group = zarr.open_group(zarr_store(str(out)), mode="r")
        levels = sorted((k for k in group.array_keys() if k.isdigit()), key=int)
        return [da.from_zarr(group[k]) for k in levels] if len(levels) > 1 else da.from_zarr(group[levels[0]])

    if out is None and isinstance(volume, np.ndarray):
        return volume
    if volume is not None and not isinstance(volume, (np.ndarray, str, Path)):
        if isinstance(volume, da.Array):
            return volume
        return da.from_zarr(volume)  # a zarr.Array
    import zarr

    node = zarr.open(zarr_store(str(out)), mode="r")
    if isinstance(node, zarr.Array):
        return da.from_zarr(node)
    arrays = dict(node.arrays())  # a group: the array "0" (OME-Zarr style) or the only one
    key = "0" if "0" in arrays else next(iter(arrays))
    return da.from_zarr(arrays[key])

