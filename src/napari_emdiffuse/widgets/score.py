"""The *Score* dock: image layers side by side against a reference layer, without code (the
figures of ``emdiffuse score``: :func:`~..scoring.score_images`).

Load a noisy image and its reference (*File > Open Sample > EMDiffuse > ... with its clean
reference*), restore it, tick the layers to compare and press Score. Each layer's uncertainty
(the layer the Restore dock adds beside it, ``NAME_uncertainty``) is scored for calibration.
A layer that covers part of the reference (a region restored in view) is scored against the
reference's pixels beneath it. The scoring runs in a thread, so the viewer stays responsive.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QApplication, QCheckBox, QComboBox, QFormLayout, QHBoxLayout, QLabel, QListWidget, QListWidgetItem, QPushButton,
    QSpinBox, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget,
)

from ..engine.errors import InputError
from ._jobs import report_error
from ._layers import LayerCombo, layer_source

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = ["ScoreWidget", "under_layer"]

#: The suffix of the uncertainty layer the Restore dock adds beside a result.
UNCERTAINTY_SUFFIX = "_uncertainty"


def under_layer(layer: Any, reference: Any) -> tuple[slice, ...]:
    """The reference's pixels beneath ``layer``: all of them where the two share a grid, else
    the part the layer covers where both have one scale and the layer lies a whole number of
    pixels in (a region restored in view). Refused in one line otherwise.

    Examples
    --------
    >>> from types import SimpleNamespace as L
    >>> ref = L(name="ref", data=np.zeros((64, 64)), scale=(4.0, 4.0), translate=(0.0, 0.0), metadata={})
    >>> part = L(name="part", data=np.zeros((16, 32)), scale=(4.0, 4.0), translate=(8.0, 40.0), metadata={})
    >>> under_layer(part, ref)
    (slice(2, 18, None), slice(10, 42, None))
    """
    from .restore import layer_array

    # the pixels scored (a multiscale layer's finest level, leading size-1 axes dropped) and
    # their geometry
    shape, ref_shape = tuple(layer_array(layer).shape), tuple(layer_array(reference).shape)
    (scale, at), (ref_scale, ref_at) = _geometry(layer), _geometry(reference)
    if shape == ref_shape and at == ref_at:
        return tuple(slice(0, n) for n in shape)
    if len(shape) != len(ref_shape) or not np.allclose(scale, ref_scale, rtol=1e-6):
        raise InputError(f"'{layer.name}' is {' x '.join(map(str, shape))} at scale {scale}, the reference "
                         f"'{reference.name}' {' x '.join(map(str, ref_shape))} at {ref_scale}: score layers on the "
                         "reference's grid (super-resolve the reference's own input, or resize it)")
    start = (np.asarray(at) - np.asarray(ref_at)) / np.asarray(ref_scale)
    if not np.allclose(start, np.round(start), atol=1e-3):
        raise InputError(f"'{layer.name}' lies between the reference's pixels (offset {tuple(start)} px)")
    box = tuple(slice(int(round(s)), int(round(s)) + n) for s, n in zip(start, shape))
    if any(b.start < 0 or b.stop > n for b, n in zip(box, ref_shape)):
        raise InputError(f"'{layer.name}' reaches beyond the reference '{reference.name}'")
    return box


def _bounded(data: Any, name: str) -> Any:
    """``data`` where it can be scored at once; refused in one line before a lazy layer is read."""
    from ..scoring import MAX_SCORED_PIXELS

    if int(np.prod(np.shape(data))) > MAX_SCORED_PIXELS:
        raise InputError(f"'{name}' has {int(np.prod(np.shape(data)))} pixels: restore a region in view and score "
                         "that (or emdiffuse score --region)")
    return data


def _geometry(layer: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    source = layer_source(layer)
    return tuple(source["scale"]), tuple(source["translate"])


class ScoreWidget(QWidget):
    """Layers to score (ticked), a reference, options, Score, and the table."""

    #: Emitted when a scoring ends: "done" or "failed".
    scored = Signal(str)

    def __init__(self, napari_viewer: "napari.viewer.Viewer", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.layers = QListWidget()
        self.layers.setToolTip("the layers to score, ticked: an input and its restorations, say")
        self.layers.setMaximumHeight(140)
        self.reference = LayerCombo(napari_viewer)
        self.reference.setToolTip("the same field, as well recorded as you have it (a long-dwell scan, a clean image)")
        self.register = QComboBox()
        self.register.addItems(["none", "translation", "affine"])
        self.register.setToolTip("align the reference onto the layers first (two scans drift; 2D only)")
        self.factor = QSpinBox()
        self.factor.setRange(0, 64)
        self.factor.setSpecialValueText("(not isotropic: all slices)")
        self.factor.setToolTip("isotropic results of this factor: score only the slices they made")
        self.uncertainty = QCheckBox("with each layer's uncertainty (NAME_uncertainty)")
        self.uncertainty.setChecked(True)
        self.run_button = QPushButton("Score")
        self.run_button.clicked.connect(self.run)
        self.copy_button = QPushButton("Copy table")
        self.copy_button.clicked.connect(self.copy)
        self.copy_button.setEnabled(False)
        self.table = QTableWidget(0, 0)
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        form = QFormLayout()
        form.addRow("score", self.layers)
        form.addRow("reference", self.reference)
        form.addRow("register", self.register)
        form.addRow("isotropic factor", self.factor)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.copy_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.uncertainty)
        layout.addLayout(buttons)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.status)
        self.text = ""  # the last table, as Copy gives it
        self.worker: Any = None
        self._outcome = "failed"
        for signal in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed,
                       napari_viewer.layers.events.reordered):
            signal.connect(self._refresh)
        self._refresh()

    def _refresh(self, event: Any = None) -> None:
        """The image layers (top first; uncertainty layers go with their image), ticks kept by
        name; a new layer comes unticked."""
        from napari.layers import Image

        ticked = set(self.checked_names())
        self.layers.clear()
        for layer in reversed([la for la in self.viewer.layers if isinstance(la, Image)]):
            if layer.name.endswith(UNCERTAINTY_SUFFIX):
                continue
            item = QListWidgetItem(layer.name)
            item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
            item.setCheckState(Qt.Checked if layer.name in ticked else Qt.Unchecked)
            self.layers.addItem(item)

    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt name
        """A closed dock stops following the viewer's layers."""
        events = self.viewer.layers.events
        for signal in (events.inserted, events.removed, events.reordered):
            signal.disconnect(self._refresh)
        self.reference.stop_following()
        super().closeEvent(event)

    def checked_names(self) -> list[str]:
        return [self.layers.item(i).text() for i in range(self.layers.count())
                if self.layers.item(i).checkState() == Qt.Checked]

    def set_checked(self, names: list[str]) -> None:
        for i in range(self.layers.count()):
            item = self.layers.item(i)
            item.setCheckState(Qt.Checked if item.text() in names else Qt.Unchecked)

    def job(self) -> tuple[Any, dict[str, Any]]:
        """What to score, read off the dock and the layers now (they may change while it runs)."""
        from .restore import layer_array

        names = self.checked_names()
        if not names:
            raise InputError("tick the layers to score")
        ref_layer = self.reference.layer()
        if ref_layer is None:
            raise InputError("choose a reference layer")
        layers = [self.viewer.layers[n] for n in names]
        register = None if self.register.currentText() == "none" else self.register.currentText()
        ref = layer_array(ref_layer)  # lazy layers stay lazy: the worker reads them
        if register is None and len({np.shape(layer_array(la)) for la in layers}) == 1:
            box = under_layer(layers[0], ref_layer)
            ref = ref[box]
        images, maps = [], []
        for layer in layers:
            images.append(_bounded(layer_array(layer), layer.name))
            unc = self.viewer.layers[layer.name + UNCERTAINTY_SUFFIX] if (
                self.uncertainty.isChecked() and layer.name + UNCERTAINTY_SUFFIX in self.viewer.layers) else None
            maps.append(layer_array(unc) if unc is not None else None)
        pixel = float(ref_layer.scale[-1]) if float(ref_layer.scale[-1]) != 1.0 else None
        return _bounded(ref, ref_layer.name), {"images": images, "names": names, "uncertainties": maps, "register": register,
                     "factor": self.factor.value() or None, "pixel_size": pixel}

    def run(self) -> None:
        """Score in a thread; the table when it returns, one line when it cannot."""
        from napari.qt.threading import create_worker

        from ..scoring import score_images

        if self.worker is not None:
            return
        try:
            ref, kwargs = self.job()
        except InputError as exc:
            self._failed(exc)
            self.scored.emit("failed")
            return
        self.run_button.setEnabled(False)
        self.status.setText("scoring…")
        self.worker = create_worker(lambda: score_images(reference=ref, **kwargs), _start_thread=False,
                                    _ignore_errors=True)
        self.worker.returned.connect(self._show)
        self.worker.errored.connect(self._failed)
        self.worker.finished.connect(self._finished)
        self._outcome = "failed"
        self.worker.start()

    def _show(self, scores: list) -> None:
        from ..cli_score import score_rows, score_table

        unit = "nm" if scores and scores[0].frc_nm is not None else None
        head, rows = score_rows(scores, unit=unit)
        self.table.setColumnCount(len(head))
        self.table.setHorizontalHeaderLabels(head)
        self.table.setRowCount(len(rows))
        for i, row in enumerate(rows):
            for j, cell in enumerate(row):
                self.table.setItem(i, j, QTableWidgetItem(cell))
        self.table.resizeColumnsToContents()
        self.text = score_table(scores, unit=unit)
        self.copy_button.setEnabled(True)
        best = max(scores, key=lambda s: s.psnr)
        self.status.setText(f"highest PSNR: '{best.name}' ({best.psnr:.2f} dB)")
        self._outcome = "done"

    def _failed(self, exc: BaseException) -> None:
        self.status.setText(report_error(exc))  # a user's error in one line; a bug logged

    def _finished(self) -> None:
        self.worker = None
        self.run_button.setEnabled(True)
        self.scored.emit(self._outcome)

    def copy(self) -> None:
        """The table as text, for a lab notebook."""
        QApplication.clipboard().setText(self.text)

