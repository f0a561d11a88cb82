"""napari readers: MRC files (IMOD, SerialEM, tomography), Gatan DigitalMicrograph files
(``.dm3``, ``.dm4``), HDF5 files (CREMI, ilastik; Velox ``.emd``) and N5 containers (OpenOrganelle), which
napari cannot open itself, and OME-Zarr stores (this plugin's ``.ome.zarr`` outputs among them) as multiscale layers with
their pixel size, which napari's own zarr reader leaves out.

The layer's ``scale`` is the voxel size in nanometres, as for every image this plugin opens, so
the widgets know the physical spacing (for example the factor of an isotropic reconstruction).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

__all__ = ["get_reader", "get_ome_reader", "get_zarr_reader", "get_h5_reader", "get_n5_reader", "get_slices_reader", "image_layer",
           "layer_meta", "url_layers"]

LayerData = tuple[Any, dict[str, Any], str]


def _one(path: str | list[str]) -> str | None:
    """The one path napari hands a reader (alone, or in a list of one); None for several."""
    if isinstance(path, (list, tuple)):
        return str(path[0]) if len(path) == 1 else None
    return str(path)


def image_layer(path: str | os.PathLike[str], name: str | None = None, *, channel: int | None = None,
                **extra: Any) -> LayerData:
    """An image file (one ``channel`` of several) as a napari layer-data tuple, with its pixel
    size as ``scale`` (nm).

    Examples
    --------
    >>> from napari_emdiffuse._sample_data import sample_path
    >>> data, meta, kind = image_layer(sample_path("fibsem_liver_clean.tif"))
    >>> meta["scale"], kind
    ((8.0, 8.0), 'image')
    """
    from .engine.io.images import read_image

    img = read_image(path, channel=channel)
    return img.data, layer_meta(img, name or _stem(path), **extra), "image"


def _stem(path: str | os.PathLike[str]) -> str:
    """A file's name without its extension, both of a compressed MRC's (``emd_1.map.gz``)."""
    from .engine.io.common import suffix_of

    name = Path(path).name
    return name[: len(name) - len(suffix_of(Path(path)))] or name


def layer_meta(img: Any, name: str, **extra: Any) -> dict[str, Any]:
    """A layer's name, its ``scale`` (and units) from an :class:`ImageData`'s spacing, and its
    ``translate`` from its origin (a restored region over the image it came from)."""
    meta: dict[str, Any] = {"name": name, **extra}
    if img.spacing is not None:
        meta["scale"] = tuple(float(s) for s in img.spacing)
        if img.unit == "nm":
            meta["units"] = ("nm",) * len(img.spacing)
    if img.origin is not None:
        meta["translate"] = tuple(float(v) for v in img.origin)
    return meta


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """The reader for one MRC file (``.mrc``, ``.mrcs``, ``.rec``, ``.st``, ``.ali``, ``.map``; also
    gzip- or bzip2-compressed, ``.map.gz``),
    DigitalMicrograph file (``.dm3``, ``.dm4``), TIA series file (``.ser``), Amira / Avizo
    volume (``.am``) or Zeiss CZI (``.czi``), else None."""
    from .engine.io.common import (
        AMIRA_SUFFIXES, CZI_SUFFIXES, DM_SUFFIXES, MRC_PACKED_SUFFIXES, MRC_SUFFIXES, SER_SUFFIXES, suffix_of,
    )

    path = _one(path)
    if path is None:
        return None
    if suffix_of(Path(path)) not in MRC_SUFFIXES + MRC_PACKED_SUFFIXES + DM_SUFFIXES + SER_SUFFIXES + AMIRA_SUFFIXES + CZI_SUFFIXES:
        return None
    return _read


def _read(path: str | list[str]) -> list[LayerData]:
    """One layer, or one per channel where the file holds several (a CZI of two SEM detectors,
    correlative light and EM) and one per scene (the regions of a ZEN tile scan), so each can
    be restored."""
    from .engine.io.images import image_names

    path = _one(path) or ""
    names = image_names(path)  # a CZI file's scenes, where it holds several
    if len(names) == 1:
        return _channels(path, _stem(path))
    return [layer for name in names for layer in _channels(name, f"{_stem(path)} [{Path(name).name}]")]


def _channels(path: str, name: str) -> list[LayerData]:
    from .engine.io.images import read_image

    img = read_image(path)
    axes = img.axes or ""
    if "C" not in axes or img.data.shape[axes.index("C")] == 1:
        return [(img.data, layer_meta(img, name), "image")]
    count = img.data.shape[axes.index("C")]
    return [image_layer(path, f"{name} [channel {k}]", channel=k) for k in range(count)]


def get_ome_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """The reader for one OME-Zarr store (a ``.ome.zarr`` folder with ``multiscales``, NGFF
    0.4 or 0.5, or the URL of one: ``viewer.open("https://host/vol.ome.zarr", plugin="napari-emdiffuse")``), else None."""
    from .engine.io.common import is_url
    from .engine.io.zarr import is_ome, ome_levels

    path = _one(path)
    if path is None:
        return None
    if is_url(path):
        return _read_ome if is_ome(path) and ome_levels(path) else None
    p = Path(path)
    if not (is_ome(p) and p.is_dir() and ome_levels(p)):
        return None
    return _read_ome


def _read_ome(path: str | list[str]) -> list[LayerData]:
    """Every level of the store's first multiscale image, lazily, without the leading
    size-1 axes (a single T or C) that the restoration drops too; the full resolution's
    pixel size as the layer's scale. Several channels (two detectors, CLEM) give a layer
    each, so each can be restored."""
    import dask.array as da
    import zarr

    from .engine.io.images import read_image
    from .engine.io.common import is_url
    from .engine.io.views import single_axes
    from .engine.io.fetch import zarr_store
    from .engine.io.zarr import ome_levels

    path = _one(path) or ""
    group = zarr.open_group(zarr_store(path), mode="r")
    paths = ome_levels(path)
    name = Path(path).name[: -len(".ome.zarr")]
    img = read_image(f"{path.rstrip('/')}/{paths[0]}" if is_url(path) else Path(path) / paths[0])
    levels = [da.from_zarr(group[k]) for k in paths]
    lead, trail = single_axes(levels[0].shape)  # as read_image drops them from the first level
    levels = [lv[(0,) * lead + (Ellipsis,) + (0,) * trail] for lv in levels]
    axes = img.axes or ""
    if "C" not in axes or levels[0].shape[axes.index("C")] == 1:
        meta = layer_meta(img, name, multiscale=len(levels) > 1)
        return [(levels if len(levels) > 1 else levels[0], meta, "image")]
    c = axes.index("C")
    layers: list[LayerData] = []
    for k in range(levels[0].shape[c]):
        picked = read_image(Path(path) / paths[0], channel=k)  # the scale without the channel axis
        at = (slice(None),) * c + (k,)
        one = [lv[at] for lv in levels]
        meta = layer_meta(picked, f"{name} [channel {k}]", multiscale=len(one) > 1)
        layers.append((one if len(one) > 1 else one[0], meta, "image"))
    return layers


def get_h5_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """The reader for one HDF5 file (``.h5``, ``.hdf5``, ``.hdf``, Velox ``.emd``), else None."""
    from .engine.io.common import H5_SUFFIXES

    path = _one(path)
    if path is None:
        return None
    if Path(path).suffix.lower() not in H5_SUFFIXES or not Path(path).is_file():
        return None
    return _read_h5


def _read_h5(path: str | list[str]) -> list[LayerData]:
    """A layer per image dataset of the file, read lazily (dask, one slice or one stored chunk
    per block) with its voxel size; integer datasets named like labels (CREMI's
    ``volumes/labels/neuron_ids``) as labels layers; a BigDataViewer pyramid as one multiscale
    layer."""
    import dask.array as da
    from dask.base import tokenize

    from .engine.io.bdv import bdv_level
    from .engine.io.hdf5 import H5Array, h5_datasets, open_h5
    from .engine.io.images import read_image

    path = _one(path) or ""
    with open_h5(str(path)) as f:
        names = h5_datasets(f)
        coarser = {}
        for name in names:  # a BigDataViewer setup's coarser levels, while they exist
            where, keys = bdv_level(name), []
            while where is not None and f"t{where[0]:05d}/s{where[1]:02d}/{len(keys) + 1}/cells" in f:
                keys.append(f"t{where[0]:05d}/s{where[1]:02d}/{len(keys) + 1}/cells")
            coarser[name] = keys

    def lazy(data: Any) -> Any:
        chunks = data.chunks if data.chunks != data.shape else (1,) * (data.ndim - 2) + data.shape[-2:]
        return da.from_array(data, chunks=chunks, name=f"h5-{tokenize(data)}", asarray=False)

    layers: list[LayerData] = []
    for name in names:
        img = read_image(Path(path) / name)
        levels = [lazy(img.data)] + [lazy(H5Array(path, key)) for key in coarser[name]]
        levels = [lv for lv in levels if lv.ndim == levels[0].ndim]
        labels = "label" in name.lower() and img.data.dtype.kind in "ui"
        meta = layer_meta(img, Path(path).stem if len(names) == 1 else name)
        if len(levels) > 1:
            meta["multiscale"] = True
        layers.append((levels if len(levels) > 1 else levels[0], meta, "labels" if labels else "image"))
    return layers


def get_n5_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """The reader for one N5 container (a ``.n5`` folder), else None."""
    from .engine.io.common import N5_SUFFIX

    path = _one(path)
    if path is None:
        return None
    if Path(path).suffix.lower() != N5_SUFFIX or not Path(path).is_dir():
        return None
    return _read_n5


def _read_n5(path: str | list[str]) -> list[LayerData]:
    """A layer per dataset of the container, read lazily block by block, with its voxel size;
    a multiscale group (``s0``, ``s1``, ...) as one multiscale layer."""
    import dask.array as da
    from dask.base import tokenize

    from .engine.io.images import read_image
    from .engine.io.n5 import N5Array, n5_datasets, n5_levels

    path = _one(path) or ""
    root = Path(path)
    names = n5_datasets(root)
    layers: list[LayerData] = []
    for name in names:
        img = read_image(root / name)
        keys = [name] + [str(Path(name).parent / f"s{k}") for k in range(1, n5_levels(root / name))]
        levels = []
        for key in keys:
            arr = N5Array(root, key)
            if arr.ndim != len(img.data.shape) and key != name:
                break
            levels.append(da.from_array(arr, chunks=arr.chunks, name=f"n5-{tokenize(arr)}", asarray=False))
        title = root.stem if len(names) == 1 else name
        meta = layer_meta(img, title, multiscale=len(levels) > 1)
        layers.append((levels if len(levels) > 1 else levels[0], meta, "image"))
    return layers


def get_zarr_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """The reader for a plain zarr array (a ``.zarr`` folder, not OME) that records its pixel
    size or its place (``spacing``, ``origin``: this plugin's ``.zarr`` outputs, a restored
    region among them), so that it opens with its scale, over the image it came from; else
    None (napari's own zarr reader, which leaves both out)."""
    from .engine.io.common import ZARR_SUFFIX, is_url, suffix_of
    from .engine.io.zarr import is_ome

    path = _one(path)
    if path is None or is_url(path) or suffix_of(Path(path)) != ZARR_SUFFIX or is_ome(path) or not Path(path).is_dir():
        return None
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception:  # not a zarr store after all: napari's reader says so
        return None
    if not isinstance(node, zarr.Array) or not ({"spacing", "origin"} & set(node.attrs.keys())):
        return None
    return _read_zarr


def _read_zarr(path: str | list[str]) -> list[LayerData]:
    """The array as one lazy layer with its scale and translate."""
    path = _one(path) or ""
    return [image_layer(path, name=_stem(path))]


def get_slices_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """The reader for a folder of sections, one file each (TIFF, MRC, DigitalMicrograph such as
    3View's ``.dm4``, pictures), or for a neuroglancer precomputed volume, else None. napari offers every folder reader for every folder,
    so this one serves the folders this plugin's other readers do not (stores, containers)."""
    from .engine.io.batch import is_batch
    from .engine.io.common import image_files_in

    from .engine.io.precomputed import precomputed_of

    path = _one(path)
    if path is None or not Path(path).is_dir():
        return None
    if precomputed_of(Path(path)) is not None:
        return _read_precomputed
    if not is_batch([path]):  # a store or container: not slices
        return None
    return _read_slices if len(image_files_in(Path(path))) >= 2 else None


def get_precomputed_url_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """The reader for a neuroglancer precomputed volume by URL, as neuroglancer names its
    source (``viewer.open("precomputed://gs://bucket/volume", plugin="napari-emdiffuse")``), else None."""
    path = _one(path)
    return _read_precomputed if path is not None and path.lower().startswith("precomputed://") else None


def _read_precomputed(path: str | list[str]) -> list[LayerData]:
    """A neuroglancer precomputed volume (or one of its scales), from a folder or a URL, as one
    lazy layer, chunk by chunk, with its voxel size; its coarser scales as the levels of a
    multiscale layer."""
    import dask.array as da
    from dask.base import tokenize

    from .engine.errors import InputError
    from .engine.io.images import read_image
    from .engine.io.precomputed import PrecomputedArray, precomputed_of, precomputed_scales, precomputed_url
    from .engine.io.remote import source_prefix

    path = _one(path) or ""
    found = precomputed_url(source_prefix(path)[0]) if "://" in path else precomputed_of(Path(path))
    if found is None:
        raise InputError(f"cannot read '{path}': no neuroglancer precomputed 'info' there")
    root, key = found
    img = read_image(path)
    levels = [img.data]
    if not key:  # the whole volume: every scale whose chunks are read here, finest first
        for name in precomputed_scales(root)[1:]:
            try:
                level = PrecomputedArray(root, name)
            except Exception:  # a scale not read here (another encoding, a damaged info): left out
                continue
            if all(a <= b for a, b in zip(level.shape, levels[-1].shape)):
                levels.append(level)
    lazy = [da.from_array(lv, chunks=lv.chunks, name=f"precomputed-{tokenize(lv)}", asarray=False) for lv in levels]
    title = root.name if isinstance(root, Path) else root.rstrip("/").rsplit("/", 1)[-1]
    meta = layer_meta(img, title if not key else f"{title} {key}", multiscale=len(lazy) > 1)
    return [(lazy if len(lazy) > 1 else lazy[0], meta, "image")]


def _read_slices(path: str | list[str]) -> list[LayerData]:
    """The folder's sections as one lazy ZYX layer (a slice is read when napari shows it), each
    read as the restorations read it (a Thermo Fisher data bar left out)."""
    path = _one(path) or ""
    return [image_layer(path, name=Path(path).name)]


def url_layers(url: str) -> list[LayerData]:
    """The layers a volume read by URL opens as (the *Open by URL* dock): an OME-Zarr store
    as a multiscale image, a neuroglancer precomputed volume with its scales, an N5 dataset, a
    zarr array or an HDF5 dataset as one image, each lazily with its voxel size. Anything else is refused in one
    line (:class:`~.engine.errors.InputError`).

    Examples
    --------
    >>> url_layers("vol.zarr")
    Traceback (most recent call last):
    ...
    napari_emdiffuse.engine.errors.InputError: 'vol.zarr' is not a URL: give one such as https://host/vol.ome.zarr, s3://bucket/vol.zarr or precomputed://gs://bucket/volume
    """
    from .engine.errors import InputError
    from .engine.io.common import is_url
    from .engine.io.remote import h5_url, is_single_file, source_prefix, split_url, url_file_name
    from .engine.io.zarr import is_ome

    url = url.strip()
    if not is_url(url):
        raise InputError(f"'{url}' is not a URL: give one such as https://host/vol.ome.zarr, s3://bucket/vol.zarr "
                         "or precomputed://gs://bucket/volume")
    bare, kind = source_prefix(url)
    named = any(p.lower().endswith((".zarr", ".n5")) for p in bare.split("://", 1)[1].split("/"))
    if kind is None and not named and is_single_file(bare):  # a TIFF, MRC, ...: fetched once, then read
        return [image_layer(url, name=_stem(url_file_name(bare)))]
    if kind is None and (h5 := h5_url(bare)) is not None:  # an HDF5 file: its dataset
        return [image_layer(url, name="/".join(p for p in (h5[0].rsplit("/", 1)[-1], h5[1]) if p))]
    if kind == "precomputed" or (kind is None and not named):
        return _read_precomputed(url if kind else f"precomputed://{bare}")
    if not named:  # zarr:// or n5:// before a name without the suffix
        return [image_layer(url, name=bare.rstrip("/").rsplit("/", 1)[-1])]
    store, inner = split_url(bare)
    if not inner and is_ome(store) and get_ome_reader(store) is not None:
        return _read_ome(store)
    return [image_layer(url, name="/".join(p for p in (store.rsplit("/", 1)[-1], inner) if p))]

