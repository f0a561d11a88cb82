"""Zeiss CZI files (ZEN: GeminiSEM and Crossbeam images and stacks saved from ZEN core,
correlative ZEN Connect projects, Axio light microscopes), read lazily through Zeiss's own
library pylibCZIrw (the ``czi`` extra: ``pip install "napari-emdiffuse[czi]"``).

A CZI holds subblocks placed in a plane (tiles of a mosaic are stitched by their positions)
along T, C and Z; pylibCZIrw composes any region of one plane. The array here is TCZYX, read
region by region, with the pixel size from ``Metadata/Scaling/Items/Distance`` (metres). A
channel of several is picked as for other files (``--channel``). A file of several scenes (the
regions of a ZEN tile scan or array tomography session) is several images, each named like a
dataset of an HDF5 file: ``session.czi/scene-2``, its index in the file. Colour pixels and files
pylibCZIrw cannot open are refused in one line.
"""

from __future__ import annotations

import itertools
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .common import CZI_SUFFIXES, ImageData, check_readable, file_and_inner, reason
from .units import tidy
from .views import AxesPicked, LazyArray, ascending_index, drop_single_axes

__all__ = ["CziArray", "read_czi", "czi_file_of", "czi_scenes", "SCENE_PREFIX"]

#: A scene's name: this and its index in the file (``scene-0``, ``scene-1``, ...).
SCENE_PREFIX = "scene-"

_GREY = {"Gray8": np.uint8, "Gray16": np.uint16, "Gray32Float": np.float32, "Gray32": np.int32}
_M_TO_NM = 1e9


def _pyczi() -> Any:
    try:
        import pylibCZIrw.czi as pyczi
    except ImportError:
        raise InputError("reading .czi files needs Zeiss's pylibCZIrw: pip install \"napari-emdiffuse[czi]\" "
                         "(or pip install pylibCZIrw)") from None
    return pyczi


def czi_file_of(path: Path) -> tuple[Path, str] | None:
    """Split ``session.czi/scene-2`` into the file and the scene's name (``""`` for the file
    itself); None if no part of the path is named like a CZI file.

    Examples
    --------
    >>> czi_file_of(Path("/data/session.czi/scene-2"))
    (PosixPath('/data/session.czi'), 'scene-2')
    >>> czi_file_of(Path("/data/a.tif")) is None
    True
    """
    return file_and_inner(path, CZI_SUFFIXES)


def czi_scenes(path: Path) -> list[str]:
    """The names of a CZI file's scenes where it holds several (``scene-0``, ...), else []."""
    check_readable(path, "a CZI file")
    boxes = _scene_boxes(path)
    return [f"{SCENE_PREFIX}{k}" for k in sorted(boxes)] if len(boxes) > 1 else []


def _scene_boxes(path: Path) -> dict[int, Any]:
    reader = _open_reader(str(path))
    try:
        return dict(reader.scenes_bounding_rectangle or {})
    except Exception as exc:
        raise InputError(f"cannot read '{path}': {reason(exc)}") from exc
    finally:
        reader.close()


def read_czi(path: Path, scene: str | None = None) -> ImageData:
    """Read a CZI file (one ``scene`` of several, by its name ``scene-<index>``) lazily, TCZYX
    without its size-1 axes (one plane: YX), with its pixel size in nm.

    Raises
    ------
    InputError
        pylibCZIrw missing, the file missing or unreadable, colour pixels, several scenes and
        none named, a scene it does not hold.
    """
    check_readable(path, "a CZI file")
    index = None
    if scene:
        number = scene[len(SCENE_PREFIX):] if scene.startswith(SCENE_PREFIX) else ""
        if not number.isdigit():
            raise InputError(f"cannot read '{path}/{scene}': a CZI file's scenes are named {SCENE_PREFIX}0, "
                             f"{SCENE_PREFIX}1, ... (emdiffuse info '{path}' lists them)")
        index = int(number)
    array = CziArray(path, index)
    data, spacing, axes = drop_single_axes(array, array.spacing, array.axes)
    if axes == "CYX" and data.shape[0] == 1:  # one plane of one channel: an image
        data = AxesPicked(array, (0, 0))
        spacing, axes = (spacing[1:] if spacing else None), "YX"
    return ImageData(data=data, spacing=spacing, unit="nm" if spacing else None, axes=axes, path=path)


class CziArray(LazyArray):
    """A CZI's only scene, or its ``scene`` (index) of several, as a TCZYX array (TCYX where it
    holds one plane along Z) that composes only the region an index asks for,
    plane by plane. The reader stays open while the array is used (one at a time); the array
    pickles as its path and scene, so cluster workers open the file themselves."""

    def __init__(self, path: str | os.PathLike[str], scene: int | None = None) -> None:
        self.file = str(Path(path).resolve())
        self.scene = scene
        self._reader: Any = None
        self._lock = threading.Lock()
        reader = self._open()
        try:
            box = dict(reader.total_bounding_box)
            scenes = reader.scenes_bounding_rectangle or {}
            types = reader.pixel_types or {}
            metadata = reader.metadata
        except Exception as exc:  # pylibCZIrw raises its own errors for damaged files
            raise InputError(f"cannot read '{self.file}': {reason(exc)}") from exc
        if scene is None and len(scenes) > 1:
            names = ", ".join(f"{SCENE_PREFIX}{k}" for k in sorted(scenes))
            raise InputError(f"cannot read '{self.file}': it holds {len(scenes)} scenes ({names}); name one, "
                             f"such as '{self.file}/{SCENE_PREFIX}{min(scenes)}'")
        if scene is not None:
            if scene not in scenes:
                held = ", ".join(f"{SCENE_PREFIX}{k}" for k in sorted(scenes)) or "none named"
                raise InputError(f"cannot read '{self.file}': it holds no {SCENE_PREFIX}{scene} (its scenes: {held})")
            rect = scenes[scene]  # the scene's own plane: the rest of the mosaic is not its image
            box["X"], box["Y"] = (int(rect.x), int(rect.x) + int(rect.w)), (int(rect.y), int(rect.y) + int(rect.h))
        kinds = set(types.values())
        grey = [k for k in kinds if k in _GREY]
        if len(kinds) != 1 or not grey:
            raise InputError(f"cannot read '{self.file}': its pixels are {', '.join(sorted(kinds)) or 'unknown'}; "
                             "greyscale (Gray8, Gray16, Gray32Float) is read")
        self.dtype = np.dtype(_GREY[grey[0]])
        self.origin = (int(box["X"][0]), int(box["Y"][0]))
        self.starts = {d: int(box.get(d, (0, 1))[0]) for d in "TCZ"}
        sizes = {d: int(box.get(d, (0, 1))[1]) - int(box.get(d, (0, 1))[0]) for d in "TCZ"}
        # one plane along Z: no Z axis, so that a channel of several is picked as an image
        self.axes = "TCZYX" if sizes["Z"] > 1 else "TCYX"
        self.shape: tuple[int, ...] = (*(sizes[d] for d in self.axes[:-2]), int(box["Y"][1]) - int(box["Y"][0]),
                                       int(box["X"][1]) - int(box["X"][0]))
        if min(self.shape) < 1:
            raise InputError(f"cannot read '{self.file}': it holds no pixels (bounding box {box})")
        self.chunks: tuple[int, ...] = (*(1 for _ in self.axes[:-2]), *(min(n, 1024) for n in self.shape[-2:]))
        self.spacing = _spacing(metadata, self.axes)

    def _open(self) -> Any:
        if self._reader is None:
            self._reader = _open_reader(self.file)
        return self._reader

    def __getitem__(self, key: Any) -> np.ndarray:
        read, post = ascending_index(key, self.shape)
        ranges = [range(k, k + 1) if isinstance(k, int) else range(k.start, k.stop, k.step) for k in read]
        out = np.zeros(tuple(len(r) for r in ranges), self.dtype)
        if out.size:
            (ry, rx) = ranges[-2], ranges[-1]
            roi = (self.origin[0] + rx[0], self.origin[1] + ry[0], rx[-1] - rx[0] + 1, ry[-1] - ry[0] + 1)
            planes = [dict(zip(self.axes[:-2], at)) for at in itertools.product(*ranges[:-2])]
            spots = list(itertools.product(*(range(len(r)) for r in ranges[:-2])))
            with self._lock:
                reader = self._open()
                for at, spot in zip(planes, spots):
                    plane = {d: at.get(d, 0) + self.starts[d] for d in "TCZ"}
                    try:
                        region = reader.read(roi=roi, plane=plane, scene=self.scene)
                    except Exception as exc:  # a damaged subblock
                        raise InputError(f"cannot read '{self.file}': {reason(exc)}") from exc
                    out[spot] = np.asarray(region)[:: ry.step, :: rx.step, 0]
        out = out.reshape(tuple(len(r) for r, k in zip(ranges, read) if not isinstance(k, int)))
        return out[post] if post else out

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_reader", "_lock")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reader, self._lock = None, threading.Lock()

    def __dask_tokenize__(self) -> tuple:
        st = os.stat(self.file)
        return ("CziArray", self.file, self.scene, st.st_mtime_ns, st.st_size)

    def __repr__(self) -> str:
        scene = f", scene={self.scene}" if self.scene is not None else ""
        return f"CziArray('{self.file}'{scene}, shape={getattr(self, 'shape', None)}, dtype={getattr(self, 'dtype', None)})"


def _open_reader(file: str) -> Any:
    pyczi = _pyczi()
    try:
        return pyczi.CziReader(file)
    except Exception as exc:
        raise InputError(f"cannot read '{file}': not a readable CZI file ({reason(exc)})") from exc


def _spacing(metadata: Any, axes: str) -> tuple[float, ...] | None:
    """Spacing per axis (``TCZYX`` or ``TCYX``) in nm from the scaling items (metres); None
    without x and y."""
    try:
        items = metadata["ImageDocument"]["Metadata"]["Scaling"]["Items"]["Distance"]
        items = items if isinstance(items, list) else [items]
        found = {str(d["@Id"]).upper(): float(d["Value"]) for d in items if isinstance(d, dict) and "Value" in d}
    except (KeyError, TypeError, ValueError):
        return None
    x, y = found.get("X"), found.get("Y", found.get("X"))
    if not (x and y and np.isfinite(x) and np.isfinite(y) and x > 0 and y > 0):
        return None
    z = found.get("Z")
    z_nm = tidy(z * _M_TO_NM) if z and np.isfinite(z) and z > 0 else 1.0
    lead = (1.0, 1.0, z_nm) if "Z" in axes else (1.0, 1.0)
    return (*lead, tidy(y * _M_TO_NM), tidy(x * _M_TO_NM))
