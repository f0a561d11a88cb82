"""The *Open by URL* dock (File > IO Utilities): a remote volume opened as napari layers
without code, lazily, with its voxel size: an OME-Zarr store, a zarr array, an N5 dataset or
a neuroglancer precomputed volume (:func:`~.._reader.url_layers`).

napari's own File menu opens local files and folders only; a public connectomics volume is a
URL (``precomputed://gs://...`` as neuroglancer shows it, ``https://.../vol.ome.zarr``). The URL
is read in a thread (a request can take seconds); the layers are added when it returns, and a
URL that cannot be read is said in one line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QComboBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from ._jobs import report_error

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = ["OpenUrlWidget"]

#: URLs kept in the box's list this session, most recent first.
RECENT = 10


class OpenUrlWidget(QWidget):
    """A URL box (its recent URLs in its list), Open, and a status line."""

    #: Emitted when an open ends: "done" or "failed".
    opened = Signal(str)

    def __init__(self, napari_viewer: "napari.viewer.Viewer", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.url = QComboBox()
        self.url.setEditable(True)
        self.url.setInsertPolicy(QComboBox.NoInsert)
        self.url.lineEdit().setPlaceholderText("precomputed://gs://bucket/volume, https://host/vol.ome.zarr, s3://...")
        self.url.lineEdit().returnPressed.connect(self.open)
        self.open_button = QPushButton("Open")
        self.open_button.clicked.connect(self.open)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        row = QHBoxLayout()
        row.addWidget(self.url, 1)
        row.addWidget(self.open_button)
        layout = QVBoxLayout(self)
        layout.addLayout(row)
        layout.addWidget(self.status)
        layout.addStretch(1)
        self.worker: Any = None
        self._outcome = "failed"

    def open(self) -> None:
        """Read the URL in a thread; add its layers when it returns."""
        from napari.qt.threading import create_worker

        from .._reader import url_layers

        url = self.url.currentText().strip()
        if not url or self.worker is not None:
            return
        self.open_button.setEnabled(False)
        self.status.setText(f"opening {url}…")
        self.worker = create_worker(url_layers, url, _start_thread=False, _ignore_errors=True)
        self.worker.returned.connect(lambda layers: self._add(url, layers))
        self.worker.errored.connect(self._failed)
        self.worker.finished.connect(self._finished)
        self.worker.start()

    def _add(self, url: str, layers: list) -> None:
        from napari.layers import Layer

        try:
            added = [self.viewer.add_layer(Layer.create(data, meta, kind)) for data, meta, kind in layers]
        except Exception as exc:  # noqa: BLE001 - a layer napari refuses must not kill the dock
            self._failed(exc)
            return
        self._remember(url)
        first = added[0]
        shape = " x ".join(str(n) for n in first.data[0].shape) if first.multiscale else " x ".join(
            str(n) for n in first.data.shape)  # fmt: skip
        size = " x ".join(f"{v:g}" for v in first.scale) + " nm" if any(v != 1 for v in first.scale) else "no pixel size"
        levels = f", {len(first.data)} levels" if first.multiscale else ""
        self.status.setText(f"opened {', '.join(layer.name for layer in added)}: {shape}, {size}{levels}")
        self._outcome = "done"

    def _failed(self, exc: BaseException) -> None:
        self.status.setText(report_error(exc))  # a user's error in one line; a bug logged
        self._outcome = "failed"

    def _finished(self) -> None:
        self.worker = None
        self.open_button.setEnabled(True)
        self.opened.emit(self._outcome)
        self._outcome = "failed"

    def _remember(self, url: str) -> None:
        known = [self.url.itemText(i) for i in range(self.url.count())]
        self.url.clear()
        self.url.addItems([url, *[u for u in known if u != url]][:RECENT])
        self.url.setCurrentIndex(0)

