"""Reusable Qt controls of the docks: a model picker (with "Browse…"), a device picker that
shows the device actually used, a Run/Cancel button and small form builders, with the
plain logic behind the pickers (device and model choices, the model-list listeners).

torch is imported only to ask which devices exist.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractSpinBox,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from ._settings import CHUNK_ITEMS, FILES_AS, ZARR_FORMAT_ITEMS

__all__ = [
    "control_value",
    "set_control",
    "tiling_boxes",
    "files_as_box",
    "scheduler_box",
    "chunks_box",
    "output_row",
    "OUTPUT_FILTERS",
    "workers_box",
    "resume_box",
    "zarr_format_box",
    "BROWSE",
    "ModelChoice",
    "ModelPicker",
    "DevicePicker",
    "RunButton",
    "device_choices",
    "model_choices",
    "is_checkpoint",
    "architectures_for",
    "resolve_browsed",
    "notify_models_changed",
    "spin_box",
    "advanced_section",
    "path_row",
]

logger = logging.getLogger("napari_emdiffuse.widgets")

BROWSE = "Browse…"


# ----------------------------------------------------------------------------------------------
# devices


def device_choices(cuda_count: int | None = None, mps: bool | None = None) -> list[str]:
    """Entries of the device dropdown: ``auto``, ``cpu``, ``cuda:N`` per GPU, ``mps``.

    ``cuda_count`` and ``mps`` default to what torch reports on this machine.
    """
    if cuda_count is None or mps is None:
        import torch

        if cuda_count is None:
            cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if mps is None:
            backend = getattr(torch.backends, "mps", None)
            mps = bool(backend is not None and backend.is_available())
    return ["auto", "cpu"] + [f"cuda:{i}" for i in range(cuda_count)] + (["mps"] if mps else [])


# ----------------------------------------------------------------------------------------------
# models


@dataclass(frozen=True)
class ModelChoice:
    """One entry of a model dropdown.

    Attributes
    ----------
    label : str
        Shown text.
    value : str or None
        What the engine gets as ``model``: a model directory, zip or checkpoint path; None
        means the engine's bundled default for the task.
    """

    label: str
    value: str | None

    @property
    def checkpoint(self) -> bool:
        return self.value is not None and is_checkpoint(self.value)


def is_checkpoint(path: str | os.PathLike[str]) -> bool:
    """A bare published checkpoint, which needs its architecture named."""
    from ..engine.models.registry import CHECKPOINT_SUFFIXES

    return Path(path).suffix.lower() in CHECKPOINT_SUFFIXES


def architectures_for(task: str) -> list[str]:
    """Published architectures able to do ``task`` (isotropic modes are interchangeable)."""
    from ..engine.models.cards import ARCHITECTURES

    def same(t: str) -> bool:
        return t == task or (t.startswith("isotropic") and task.startswith("isotropic"))

    return [a for a, t in ARCHITECTURES.items() if same(t)] or list(ARCHITECTURES)


def resolve_browsed(path: str | os.PathLike[str]) -> Path:
    """A browsed file as a model: a picked ``model.yaml`` stands for its directory."""
    p = Path(path)
    return p.parent if p.name == "model.yaml" else p


def model_choices(task: str, extra_paths: Iterable[str] = (), *, allow_default: bool = False) -> list[ModelChoice]:
    """Model dropdown entries for a task: bundled, then user models, then browsed paths.

    Parameters
    ----------
    task : str
        ``denoise``, ``super-resolve``, ``isotropic-i`` or ``isotropic-a``.
    extra_paths : iterable of str
        Paths the user browsed to in this session (shown even though unregistered).
    allow_default : bool
        Put a "default for the task" entry (value None) first.
    """
    from ..engine.models.registry import list_models

    out: list[ModelChoice] = [ModelChoice("(default for the task)", None)] if allow_default else []
    seen: set[str] = set()
    try:
        infos = list_models(task)
    except Exception:  # noqa: BLE001 - a broken registry must not break the widget
        logger.exception("could not list models")
        infos = []
    for info in infos:
        path = str(Path(info.path).resolve())
        if path in seen:
            continue
        seen.add(path)
        out.append(ModelChoice(f"{info.name} ({info.source})", path))
    for extra in extra_paths:
        p = str(Path(extra).resolve())
        if p not in seen:
            seen.add(p)
            out.append(ModelChoice(f"{Path(p).name} (file)", p))
    return out


# Open model pickers, refreshed when a model is added (fine-tuning, import).
_LISTENERS: "weakref.WeakSet[Any]" = weakref.WeakSet()


def notify_models_changed() -> int:
    """Refresh every open model list at once; returns how many lists were refreshed."""
    n = 0
    for listener in list(_LISTENERS):
        try:
            listener.refresh()
            n += 1
        except RuntimeError:  # its Qt object was deleted with its dock widget
            _LISTENERS.discard(listener)
    return n


# ----------------------------------------------------------------------------------------------
# Qt controls


class ModelPicker(QWidget):
    """A model dropdown for a task: bundled and user models, browsed paths, and "Browse…"
    for a model directory (pick its ``model.yaml``), a ``.zip`` model or a published
    checkpoint; checkpoints also show an architecture choice.
    """

    def __init__(self, task: str, *, allow_default: bool = False, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._task = task
        self._allow_default = allow_default
        self.extra_paths: list[str] = []
        self.combo = QComboBox()
        self.combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.combo.setMinimumContentsLength(14)
        self.combo.setToolTip("Bundled and user models for the task; Browse… for a folder, .zip or .pth")
        self.arch = QComboBox()
        self.arch.setToolTip("Architecture of the published checkpoint")
        self.arch_label = QLabel("architecture")
        arch_row = QHBoxLayout()
        arch_row.setContentsMargins(0, 0, 0, 0)
        arch_row.addWidget(self.arch_label)
        arch_row.addWidget(self.arch, 1)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.combo)
        lay.addLayout(arch_row)
        self._previous = 0
        # Replaced in tests; returns a path or None.
        self.ask_path: Callable[[], str | None] = self._file_dialog
        self.combo.activated.connect(self._on_activated)
        self.combo.currentIndexChanged.connect(self._update_arch)
        _LISTENERS.add(self)
        self.refresh()

    @property
    def task(self) -> str:
        return self._task

    def set_task(self, task: str) -> None:
        if task != self._task:
            self._task = task
            self.refresh()

    def refresh(self) -> None:
        """Re-read the model lists (e.g. after fine-tuning), keeping the selection."""
        keep = self.combo.currentData() if self.combo.count() else None
        choices = model_choices(self._task, self.extra_paths, allow_default=self._allow_default)
        self.combo.blockSignals(True)
        self.combo.clear()
        if not choices:
            self.combo.addItem("(no model installed: Browse…)", None)
        for c in choices:
            self.combo.addItem(c.label, c.value)
            self.combo.setItemData(self.combo.count() - 1, c.value or "", Qt.ToolTipRole)
        self.combo.addItem(BROWSE, BROWSE)
        idx = self.combo.findData(keep) if keep not in (None, BROWSE) else 0
        self.combo.setCurrentIndex(max(idx, 0))
        self._previous = self.combo.currentIndex()
        self.combo.blockSignals(False)
        self._update_arch()

    def _file_dialog(self) -> str | None:
        path, _ = QFileDialog.getOpenFileName(
            self,
            "Choose a model (its model.yaml, a .zip, or a published .pth checkpoint)",
            "",
            "Models (model.yaml *.zip *.pth *.pt *.ckpt *.bin *.safetensors);;All files (*)",
        )
        return path or None

    def _on_activated(self, index: int) -> None:
        if self.combo.itemData(index) != BROWSE:
            self._previous = index
            return
        path = self.ask_path()
        if path:
            self.add_path(path)
        else:
            self.combo.setCurrentIndex(self._previous)

    def add_path(self, path: str | os.PathLike[str]) -> None:
        """Add a model path (browsed, or saved from an earlier session) and select it."""
        p = str(resolve_browsed(path).resolve())
        if p not in self.extra_paths:
            self.extra_paths.append(p)
        self.refresh()
        self.select(p)

    def select(self, value: str | None) -> bool:
        """Select an entry by its value; False if there is none."""
        idx = self.combo.findData(value)
        if idx >= 0:
            self.combo.setCurrentIndex(idx)
            self._previous = idx
        return idx >= 0

    def _update_arch(self, *_: Any) -> None:
        value = self.combo.currentData()
        checkpoint = isinstance(value, str) and value != BROWSE and is_checkpoint(value)
        archs = architectures_for(self._task)
        if [self.arch.itemText(i) for i in range(self.arch.count())] != archs:
            self.arch.clear()
            self.arch.addItems(archs)
        self.arch.setVisible(checkpoint)
        self.arch_label.setVisible(checkpoint)

    def settings(self) -> dict[str, Any]:
        """The selection and browsed paths, for :class:`Settings`."""
        return {"model": self.value()[0], "model_paths": list(self.extra_paths)}

    def apply_settings(self, saved: dict[str, Any]) -> None:
        """Restore :meth:`settings`; paths that no longer exist are dropped."""
        for p in saved.get("model_paths", []):
            if isinstance(p, str) and Path(p).exists():
                self.add_path(p)
        if isinstance(saved.get("model"), str):
            self.select(saved["model"])

    def value(self) -> tuple[str | None, str | None]:
        """``(model, arch)`` for the engine; arch is set only for checkpoints."""
        model = self.combo.currentData()
        if model == BROWSE:
            model = None
        arch = self.arch.currentText() if model is not None and is_checkpoint(model) else None
        return model, arch


class DevicePicker(QWidget):
    """Device dropdown (auto/cpu/cuda:N/mps) and the device the last run actually used."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.combo = QComboBox()
        self.combo.addItems(device_choices())
        self.combo.setToolTip("auto: the first CUDA GPU, else Apple MPS, else the CPU")
        self.used = QLabel("")
        self.used.setToolTip("Device used by the last run")
        self.used.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Preferred)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.combo)
        lay.addWidget(self.used, 1)

    def value(self) -> str:
        return self.combo.currentText()

    def set_value(self, device: str) -> None:
        idx = self.combo.findText(device)
        if idx >= 0:
            self.combo.setCurrentIndex(idx)

    def set_used(self, device: str | None) -> None:
        self.used.setText(f"used: {device}" if device else "")


class RunButton(QPushButton):
    """Run, which becomes Cancel (or Stop) while work is running."""

    def __init__(self, run_text: str = "Run", cancel_text: str = "Cancel", parent: QWidget | None = None) -> None:
        super().__init__(run_text, parent)
        self._run_text = run_text
        self._cancel_text = cancel_text
        self.running = False

    def set_running(self, running: bool) -> None:
        self.running = running
        self.setEnabled(True)
        self.setText(self._cancel_text if running else self._run_text)

    def set_cancelling(self) -> None:
        self.setEnabled(False)
        self.setText("Stopping…" if self._cancel_text == "Stop" else "Cancelling…")


def spin_box(lo: int, hi: int, value: int, special: str | None = None, tip: str = "") -> QSpinBox:
    box = QSpinBox()
    box.setRange(lo, hi)
    box.setValue(value)
    if special:
        box.setSpecialValueText(special)  # shown at the minimum value
    box.setToolTip(tip)
    return box


def tiling_boxes() -> tuple[QSpinBox, QSpinBox, QSpinBox]:
    """The tile edge, the overlap between tiles and the noise seed of a run (Advanced)."""
    return (
        spin_box(0, 4096, 0, "auto", "Tile edge in pixels (auto: the model's, shrunk to fit the GPU)"),
        spin_box(-1, 1024, -1, "auto", "Overlap between tiles in pixels"),
        spin_box(0, 2**31 - 1, 0, None, "Noise seed: the same seed gives the same result"),
    )


#: The output dialog's choices and the name each one gives a path typed without it.
OUTPUT_FILTERS = {
    "zarr store (*.zarr)": ".zarr",
    "OME-Zarr with its pyramid (*.ome.zarr)": ".ome.zarr",
    "TIFF (*.tif)": ".tif",
    "MRC (*.mrc)": ".mrc",
    "neuroglancer precomputed (*.precomputed)": ".precomputed",
}


def output_row(parent: QWidget, placeholder: str, title: str) -> tuple[QLineEdit, QHBoxLayout]:
    """The output field (empty: in memory; a ``.zarr`` store, a TIFF, MRC or ``.precomputed``
    result, or either by an object store's URL) and its row with a "…" button that asks for
    its name (``title`` on the dialog)."""
    edit = QLineEdit()
    edit.setPlaceholderText(placeholder)
    edit.setToolTip(
        "Empty: keep the result in memory. A .zarr path (or an object store's URL, s3://...): written block by "
        "block, shown lazily;\na .ome.zarr path also writes its pyramid (OME-Zarr), shown as a multiscale layer;\n"
        "a .tif, .mrc or .precomputed (neuroglancer) path: written with its voxel size once whole, then shown "
        "from the file"
    )

    def browse() -> None:
        path, chosen = QFileDialog.getSaveFileName(parent, title, "", ";;".join(OUTPUT_FILTERS))
        if path:
            suffix = OUTPUT_FILTERS.get(chosen, ".zarr")
            edit.setText(path if path.lower().endswith(tuple(OUTPUT_FILTERS.values())) else f"{path}{suffix}")

    return edit, path_row(edit, browse)


def workers_box() -> QSpinBox:
    """How many local dask processes run the blocks (0: in napari)."""
    return spin_box(
        0, 64, 0, "in napari", "Run the blocks on a local dask cluster of this many processes (one GPU each where "
        "there are several); needs an output path (a .tif or .mrc one is written from the zarr store they fill, "
        "a .precomputed one by them too). With the files… button: this many files side by side",
    )  # fmt: skip


def scheduler_box() -> QLineEdit:
    """A running dask cluster to run the blocks on (``scheduler``: its address or file)."""
    edit = QLineEdit()
    edit.setPlaceholderText("none: workers above, or in napari")
    edit.setToolTip(
        "Run the blocks on a running dask cluster: its scheduler's address (tcp://host:8786) or the file the "
        "scheduler wrote (dask scheduler --scheduler-file /shared/sched.json, as on HPC). Its workers must reach "
        "the output (and a stored input and model) on shared storage; needs an output path. With the files… "
        "button: the files side by side on it"
    )
    return edit


def resume_box() -> QCheckBox:
    """Keep a stopped zarr run's finished blocks, and continue from them (``resume``)."""
    box = QCheckBox("keep finished blocks")
    box.setToolTip(
        "zarr output: if the run is cancelled or fails, its finished blocks stay beside the output (unfinished);\n"
        "running it again with the same image, model and options continues from them.\n"
        "With the files… button: leave out the files whose results are in the folder (a batch stopped before)"
    )
    return box


def zarr_format_box() -> QComboBox:
    """The format of a ``.zarr`` output (``zarr_format``: each item's data)."""
    box = combo_box(
        list(ZARR_FORMAT_ITEMS.values()),
        ".zarr output: 2 (every zarr reader opens it) or 3 (zarr v3, OME-Zarr 0.5 for a .ome.zarr name: each block "
        "one shard of 512-px chunks, which viewers read piece by piece); the files… button's too where it "
        "writes zarr stores",
    )
    for i, fmt in enumerate(ZARR_FORMAT_ITEMS):
        box.setItemData(i, fmt)
    return box


def chunks_box() -> QComboBox:
    """The chunks of a ``.precomputed`` output (``chunks``: the text; editable, ``jpeg Q``)."""
    box = combo_box(
        list(CHUNK_ITEMS),
        ".precomputed output (and the files… button's, as .precomputed): raw chunks (exact), or JPEG of a "
        "quality of 1-100 (8-bit results; lossy, several times smaller, as large EM volumes are served for "
        "viewing; type 'jpeg 85' for another quality). The uncertainty stays raw",
    )
    box.setEditable(True)
    return box


def files_as_box() -> QComboBox:
    """The format of the *files…* button's results (``files_as``: each item's data)."""
    box = combo_box(
        list(FILES_AS.values()),
        "The files… button: each result in its file's format (TIFF or MRC; pictures, DM and HDF5 as TIFF), or "
        "all as one: .zarr and .ome.zarr stores are written block by block (files larger than memory)",
    )
    for i, key in enumerate(FILES_AS):
        box.setItemData(i, key)
    return box


def control_value(control: Any) -> Any:
    """The value an option takes from its control: a checkbox's state, a spin box's number, a
    line edit's text (stripped), a combo box's item data where its items carry some (a key
    behind a longer label), else its text; the device picker's choice."""
    if isinstance(control, DevicePicker):
        return control.value()
    if isinstance(control, QCheckBox):
        return control.isChecked()
    if isinstance(control, QAbstractSpinBox):
        return control.value()  # type: ignore[attr-defined]
    if isinstance(control, QLineEdit):
        return control.text().strip()
    if isinstance(control, QComboBox):
        data = control.currentData()
        return control.currentText() if data is None else data
    raise TypeError(f"no option value in a {type(control).__name__}")


def set_control(control: Any, value: Any) -> None:
    """Show an option's ``value`` in its control (:func:`control_value`'s inverse); a combo
    box whose items carry data falls back to its first item for a value it does not hold."""
    if isinstance(control, DevicePicker):
        control.set_value(value)
    elif isinstance(control, QCheckBox):
        control.setChecked(bool(value))
    elif isinstance(control, QAbstractSpinBox):
        control.setValue(value)  # type: ignore[attr-defined]
    elif isinstance(control, QLineEdit):
        control.setText(str(value))
    elif isinstance(control, QComboBox):
        if control.count() and control.itemData(0) is not None:
            control.setCurrentIndex(max(0, control.findData(value)))
        else:
            control.setCurrentText(str(value))
    else:
        raise TypeError(f"no option value in a {type(control).__name__}")


def combo_box(items: Sequence[str], tip: str = "") -> QComboBox:
    box = QComboBox()
    box.addItems(list(items))
    box.setToolTip(tip)
    return box


def advanced_section(rows: Sequence[tuple[str, QWidget]]) -> QCollapsible:
    """A collapsed "Advanced" group of form rows: options most runs leave alone."""
    advanced = QCollapsible("Advanced")
    body = QWidget()
    form = QFormLayout(body)
    for label, field in rows:
        form.addRow(label, field)
    advanced.addWidget(body)
    return advanced


def path_row(edit: QLineEdit, browse: Callable[[], None]) -> QHBoxLayout:
    """A path field and a "…" button that calls ``browse`` (a file dialog)."""
    button = QPushButton("…")
    button.setMaximumWidth(30)
    button.clicked.connect(browse)
    row = QHBoxLayout()
    row.setContentsMargins(0, 0, 0, 0)
    row.addWidget(edit, 1)
    row.addWidget(button)
    return row
