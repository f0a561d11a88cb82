"""Fine-tune dock widget: adapt a model to the user's own images.

Training runs ``finetune_iter`` in a spawned child process (so all GPU memory is returned
when it ends); the child sends plain-dict events on a queue that a QTimer drains. The
widget plots train and validation loss live, shows the validation preview as the napari
layer ``finetune_preview``, and Stop asks the child to close the generator, which saves a
usable model. When a model is saved, every open model list refreshes at once.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QWidget,
)

from ..engine.errors import EMDiffuseError, InputError
from ..engine.models.cards import TASKS
from ..engine.models.bioimageio import export_bioimageio
from ..engine.models.files import read_card
from ..engine.models.registry import load_model
from ..engine.training.data.pairs import DOWNSAMPLING
from ..engine.training.finetune import verdict
from ._base import DockWidget
from ._controls import ModelPicker, advanced_section, combo_box, notify_models_changed, path_row, spin_box
from ._jobs import ProgressBar, TrainingProcess, logger, notify_error, notify_info
from ._layers import LayerCombo, layer_spacing, upsert_image
from ._finetune_options import LEARN_FROM, REGISTER, FinetuneOptions, default_output, exportable, parse_doses, parse_lr
from ._lossplot import LossHistory, LossPlot, eta_text
from .isotropic import prefill_factor
from .restore import check_input_layer, layer_array

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = ["FinetuneWidget", "FinetuneOptions", "default_output", "exportable", "parse_doses", "parse_lr"]

PREVIEW_LAYER = "finetune_preview"
POLL_MS = 150


class FinetuneWidget(DockWidget):
    """Fine-tune a model on image pairs (or a volume) from the viewer.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        Injected by napari.
    """

    # DockWidget.run_finished says "done", "stopped" or "failed" here.
    SETTINGS = "finetune"
    OPTIONS = FinetuneOptions
    NOT_RESTORED = ("output",)  # never train into last session's model by default
    CANCELLING = "stopping: saving the model as it stands…"
    ENDED: ClassVar[dict[str, str]] = {}  # the status already says how training ended
    _run: TrainingProcess | None

    def __init__(self, napari_viewer: "napari.viewer.Viewer", parent: QWidget | None = None) -> None:
        super().__init__(napari_viewer, parent, run_text="Train", cancel_text="Stop")
        self._progress = ProgressBar("EMDiffuse fine-tuning")
        self.saved_model: str | None = None
        self.history = LossHistory()

        self.task = QComboBox()
        self.task.addItems(TASKS)
        self.task.setToolTip("denoise / super-resolve: input and target image pairs; isotropic: one volume")
        self.input_combo = LayerCombo(napari_viewer)
        self.input_combo.setToolTip("Degraded image (noisy / low resolution), or the anisotropic volume")
        self.target_combo = LayerCombo(napari_viewer, none_label="(none)")
        self.target_combo.setToolTip(
            "Registered clean / high-resolution image of the same field of view. (none), denoise: learn from the "
            "noisy input alone, with a blind spot, kept near the base model (+0.03 to +0.19 dB measured on one "
            "image); the run's first note says what it found"
        )
        self.target_label = QLabel("target")
        # Pairs added before the one chosen above: a second pair of the same kind of sample
        # raised liver_0's other half from +0.28 to +0.46 dB over the base (benchmarks/RESULTS.md).
        self.extra_pairs: list[tuple[str, str]] = []
        self.add_pair = QPushButton("add this pair")
        self.add_pair.setToolTip(
            "Train on several registered pairs (of any sizes): add this input and target, choose the next pair "
            "above, and Train uses all of them, each with its held-back strip. A second pair of the same kind of "
            "sample gained another 0.2 dB on an unseen image"
        )
        self.add_pair.clicked.connect(self._add_pair)
        self.clear_pairs = QPushButton("clear")
        self.clear_pairs.setToolTip("Forget the added pairs")
        self.clear_pairs.clicked.connect(self._clear_pairs)
        self.pairs_label = QLabel("")
        self.pairs_label.setWordWrap(True)
        pairs_row = QWidget()
        row = QHBoxLayout(pairs_row)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.add_pair)
        row.addWidget(self.clear_pairs)
        row.addWidget(self.pairs_label, 1)
        self.base = ModelPicker("denoise", allow_default=True)
        self.base.combo.setToolTip("Model to start from (default: the bundled model for the task)")

        defaults = FinetuneOptions()
        self.iterations = spin_box(1, 1_000_000, defaults.iterations, tip="Training iterations")
        self.patch = spin_box(8, 1024, defaults.patch, tip="Patch edge in pixels")
        self.batch = spin_box(1, 256, defaults.batch, tip="Patches per iteration")
        self.lr = QLineEdit("auto")
        self.lr.setToolTip("Learning rate; auto: the default for the base model (larger for one-pass predictors)")
        self.val_fraction = QDoubleSpinBox()
        self.val_fraction.setRange(0.0, 0.89)
        self.val_fraction.setSingleStep(0.05)
        self.val_fraction.setValue(defaults.val_fraction)
        self.val_fraction.setToolTip("Share of the image held out for validation (PSNR/SSIM, preview)")
        self.seed = spin_box(0, 2**31 - 1, 0, tip="Random seed (patch sampling, initial noise)")
        self.factor = spin_box(
            0, 16, 0, "model's", "Isotropic tasks: slices per gap, z / xy spacing (model's: the base model's)"
        )
        self.factor_label = QLabel("factor")
        self.freeze = QCheckBox("freeze encoder")
        self.freeze.setToolTip("Train only the decoder: fewer data needed, less forgetting")
        self.faster = QDoubleSpinBox()
        self.faster.setRange(1.0, 16.0)
        self.faster.setSingleStep(0.5)
        self.faster.setValue(defaults.faster)
        self.faster.setSuffix("x")
        self.faster.setToolTip(
            "Denoising from a pair: also train for scans up to this many times faster (shorter dwell) "
            "than the pair's, by scaling its noise; 1x: the pair as recorded"
        )
        self.downsampling = combo_box(
            DOWNSAMPLING,
            "Super-resolution with target (none): how the low-resolution image was made, so that it is halved "
            "once more the same way. area: block means (a detector integrating over each pixel); gaussian: "
            "point samples at the pixel centres after a blur (a scan); decimate: image[::2, ::2]. The right "
            "choice gained 1.0-1.7 dB on point-sampled images, the wrong one lost 1.1-1.5 dB",
        )
        self.register = combo_box(
            REGISTER,
            "A pair: align the target onto the input to a fraction of a pixel before training. affine also "
            "removes the drift and magnification difference of two scans (0.1-0.4 px across a 768-px SEM "
            "pair); as given: a target of the input's shape is taken as registered",
        )
        self.clean_input = QCheckBox("input is clean: simulate noise")
        self.clean_input.setToolTip(
            "Denoising with target (none): the input is a clean image of your kind and noise is simulated on "
            "it at the doses below (on unseen clean FIB-SEM and ssTEM halves: +0.08 to +0.15 dB on the other "
            "half); unchecked, the input is noisy and the model learns from it alone (self-supervised)"
        )
        self.learn_from = combo_box(
            tuple(LEARN_FROM),
            "Denoising with target (none), a noisy input: default and blind spot learn each pixel from its "
            "surroundings; neighbouring slices learn each slice of a stack whose slices look alike (FIB-SEM) from "
            "its two neighbours. Restoring averages such a stack along z anyway, and after that the blind spot "
            "led by 0.4-0.5 dB; sections far apart (ssTEM) must not learn from their neighbours (-4.9 dB measured)",
        )
        self.doses = QLineEdit(defaults.doses)
        self.doses.setToolTip("Simulated doses, detected electrons at white (lower: noisier); match your recordings")
        self.noise_correlation = QDoubleSpinBox()
        self.noise_correlation.setRange(0.0, 1.0)
        self.noise_correlation.setSingleStep(0.05)
        self.noise_correlation.setValue(defaults.noise_correlation)
        self.noise_correlation.setToolTip(
            "Neighbour weight of the simulated noise (0: white; 0.35: the ~0.5 neighbour correlation of short-dwell SEM)"
        )
        advanced = advanced_section(
            [
                ("learn from", self.learn_from),
                ("", self.clean_input),
                ("doses", self.doses),
                ("noise correlation", self.noise_correlation),
                ("register pair", self.register),
                ("faster scans", self.faster),
                ("low-res made by", self.downsampling),
                ("batch", self.batch),
                ("learning rate", self.lr),
                ("validation", self.val_fraction),
                ("seed", self.seed),
                ("", self.freeze),
            ]
        )
        self.output = QLineEdit()
        self.output.setPlaceholderText("new folder in the user model directory")
        self.output.setToolTip("Folder the fine-tuned model is saved to")
        self.plot = LossPlot(self.history)
        self.export_button = QPushButton("Export to bioimage.io…")
        self.export_button.setToolTip(
            "Write the model just trained as a bioimage.io package (.zip) for deepImageJ, ilastik or "
            "bioimageio.core; denoising, super-resolution and isotropic predictors (a model of every factor "
            "for the factor above; needs napari-emdiffuse[all])"
        )
        self.export_button.setEnabled(False)
        self.export_button.clicked.connect(self._export_clicked)
        self._lay_out(
            [
                ("task", self.task),
                ("input", self.input_combo),
                (self.target_label, self.target_combo),
                ("", pairs_row),
                (self.factor_label, self.factor),
                ("base model", self.base),
                ("iterations", self.iterations),
                ("patch", self.patch),
                ("output", path_row(self.output, self._browse_output)),
            ],
            advanced,
            self.plot,
            self.export_button,
        )

        # The child process cannot signal Qt: its events are drained on a timer.
        self._timer = QTimer(self)
        self._timer.setInterval(POLL_MS)
        self._timer.timeout.connect(self._poll)
        self.task.currentTextChanged.connect(self._task_changed)
        self.input_combo.currentIndexChanged.connect(self._prefill_factor)
        self.input_combo.currentIndexChanged.connect(self._prefill_target)
        self._load_settings()
        self._prefill_target()

    def _prefill_target(self, *_: Any) -> None:
        """Pick a target of the input's shape (e.g. the sample's clean layer) when none is set."""
        source = self.input_combo.layer()
        if source is None or self.target_combo.layer() is not None:
            return
        for i in range(self.target_combo.count()):
            layer = self.target_combo.itemData(i)
            if layer is not None and layer is not source and tuple(layer.data.shape) == tuple(source.data.shape):
                self.target_combo.setCurrentIndex(i)
                return
        self._task_changed(self.task.currentText())

    # -- options ---------------------------------------------------------------------------------

    def options(self) -> FinetuneOptions:
        """Current options (raises EMDiffuseError for an unreadable learning rate)."""
        return FinetuneOptions(
            task=self.task.currentText(),
            iterations=self.iterations.value(),
            patch=self.patch.value(),
            batch=self.batch.value(),
            lr=parse_lr(self.lr.text()),
            val_fraction=round(self.val_fraction.value(), 4),
            seed=self.seed.value(),
            device=self.device.value(),
            freeze_encoder=self.freeze.isChecked(),
            factor=self.factor.value(),
            faster=round(self.faster.value(), 2),
            downsampling=self.downsampling.currentText(),
            register=self.register.currentText(),
            clean_input=self.clean_input.isChecked(),
            learn_from=self.learn_from.currentText(),
            doses=self.doses.text().strip(),
            noise_correlation=round(self.noise_correlation.value(), 3),
            output=self.output.text().strip(),
        )

    def set_options(self, opts: FinetuneOptions) -> None:
        self.task.setCurrentText(opts.task)
        self.iterations.setValue(opts.iterations)
        self.patch.setValue(opts.patch)
        self.batch.setValue(opts.batch)
        self.lr.setText(f"{opts.lr:g}" if opts.lr else "auto")
        self.val_fraction.setValue(opts.val_fraction)
        self.seed.setValue(opts.seed)
        self.device.set_value(opts.device)
        self.freeze.setChecked(opts.freeze_encoder)
        self.factor.setValue(opts.factor)
        self.faster.setValue(opts.faster)
        self.downsampling.setCurrentText(opts.downsampling)
        self.register.setCurrentText(opts.register)
        self.clean_input.setChecked(opts.clean_input)
        self.learn_from.setCurrentText(opts.learn_from)
        self.doses.setText(opts.doses)
        self.noise_correlation.setValue(opts.noise_correlation)
        self.output.setText(opts.output)

    def _add_pair(self) -> None:
        """Keep the chosen input and target as one of the pairs to train on."""
        layer, target = self.input_combo.layer(), self.target_combo.layer()
        if layer is None or target is None or target is layer:
            self.status.setText("add a pair: choose an input and its registered target first")
            return
        pair = (layer.name, target.name)
        if pair not in self.extra_pairs:
            self.extra_pairs.append(pair)
        self._show_pairs()

    def _clear_pairs(self) -> None:
        self.extra_pairs.clear()
        self._show_pairs()

    def _show_pairs(self) -> None:
        self.pairs_label.setText("; ".join(f"{a} -> {b}" for a, b in self.extra_pairs))

    def _task_changed(self, task: str) -> None:
        self.base.set_task(task)
        paired = not task.startswith("isotropic")
        self.add_pair.setEnabled(paired)
        self.clear_pairs.setEnabled(paired)
        self.target_combo.setEnabled(paired)
        self.target_label.setEnabled(paired)
        self.factor.setEnabled(not paired)
        self.factor_label.setEnabled(not paired)
        self.faster.setEnabled(task == "denoise")
        self.downsampling.setEnabled(task == "super-resolve")
        self.register.setEnabled(paired)
        for control in (self.clean_input, self.learn_from, self.doses, self.noise_correlation):
            control.setEnabled(task == "denoise")
        self._prefill_factor()
        self.input_combo.setToolTip(
            "Degraded image (noisy / low resolution)" if paired else "Anisotropic ZYX volume (trained on itself)"
        )

    def _prefill_factor(self, *_: Any) -> None:
        layer = self.input_combo.layer()
        if self.task.currentText().startswith("isotropic") and layer is not None and layer.ndim == 3:
            factor = prefill_factor(layer_spacing(layer, tuple(float(v) for v in layer.scale)))
            if factor is not None:
                self.factor.setValue(factor)

    def _browse_output(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Save the fine-tuned model in")
        if path:
            self.output.setText(path)

    # -- running ---------------------------------------------------------------------------------

    def _inputs(self, opts: FinetuneOptions) -> tuple[Any, Any]:
        """The input and target arrays, or lists of them with the added pairs first."""
        layer = self.input_combo.layer()
        check_input_layer(layer, volume=not opts.needs_target)
        target = self.target_combo.layer() if opts.needs_target else None
        if target is not None:
            if target is layer:
                raise InputError("input and target are the same layer; choose the clean image as target")
            check_input_layer(target)
        # The child gets plain arrays: dask/zarr layers are read here, once.
        x = np.asarray(layer_array(layer))
        y = np.asarray(layer_array(target)) if target is not None else None
        pairs = [p for p in self.extra_pairs if p != (layer.name, getattr(target, "name", None))]
        if not pairs or not opts.needs_target:
            return x, y
        if target is None:
            raise InputError("the added pairs have targets: choose this input's target too, or clear the added pairs")
        xs, ys = [], []
        for names in pairs:
            found = [self.viewer.layers[n] if n in self.viewer.layers else None for n in names]
            if None in found:
                raise InputError(f"layer '{names[found.index(None)]}' of the added pairs is gone; clear them and add again")
            for added in found:
                check_input_layer(added)
            xs.append(np.asarray(layer_array(found[0])))
            ys.append(np.asarray(layer_array(found[1])))
        return [*xs, x], [*ys, y]

    def _start(self) -> None:
        """Train in a child process."""
        opts = self.options()
        kwargs = opts.engine_kwargs()
        x, y = self._inputs(opts)
        base, arch = self.base.value()
        if arch is not None:
            raise EMDiffuseError(
                "fine-tuning starts from a model folder or .zip; import the checkpoint first (emdiffuse import)"
            )
        if y is None and "register" in kwargs:
            raise InputError("register aligns a target onto the input: choose a target, or set register pair to 'as given'")
        if y is None and "noise_gain" in kwargs:
            raise InputError("faster scans scale a pair's noise: choose a target, or set faster scans to 1x")
        if y is not None and opts.clean_input:
            raise InputError("'input is clean' simulates the noisy image: set the target to (none), or uncheck it")
        if y is not None and opts.learn_from != "default":
            raise InputError("'learn from' is for a noisy input alone: set the target to (none), or it to default")
        if y is not None and "downsampling" in kwargs:
            raise InputError("'low-res made by' makes pairs from the input alone: set the target to (none), or it to area")
        self._save_settings(opts)  # the base model is not remembered
        kwargs.update(task=opts.task, input=x, target=y, base=base)
        self.history.clear()
        self.plot.update()
        self.saved_model = None
        self.export_button.setEnabled(False)
        self._started = time.monotonic()
        self._pace_from: tuple[int, float] | None = None  # (iteration, time) the ETA's pace starts at
        self.status.setText(f"starting training ({opts.iterations} iterations) -> {kwargs['out']}")
        self._run = TrainingProcess(kwargs).start()
        self.run_button.set_running(True)
        self._timer.start()

    def stop(self) -> None:
        """Stop after the current iteration; the model as trained so far is saved."""
        self.cancel()

    def _poll(self) -> None:
        if self._run is None:
            self._timer.stop()
            return
        events = self._run.poll()
        changed = ended = False
        for ev in events:
            stage = ev.get("stage")
            if stage == "training" and ev.get("loss") is None and ev.get("message"):
                notify_info(str(ev["message"]))  # a note (registration, the time budget), not a step
            elif stage == "training":
                changed |= self.history.add(ev)
                self._progress.update(int(ev.get("done", 0)), int(ev.get("total") or 0))
                self._eta = self._eta_text(int(ev.get("done", 0)), int(ev.get("total") or 0))
            elif stage == "validation":
                changed |= self.history.add(ev)
                if ev.get("preview") is not None:
                    upsert_image(self.viewer, PREVIEW_LAYER, np.asarray(ev["preview"]))
            elif stage == "done":
                self._done(ev)
                ended = True
            elif stage == "error":
                self._failed(ev)
                ended = True
        if changed:
            self.plot.update()
        if changed and not ended:  # the last validation can arrive with "done": keep its message
            self.status.setText(", ".join(t for t in (self.history.summary(), getattr(self, "_eta", "")) if t))

    def _eta_text(self, done: int, total: int) -> str:
        # Paced from the first training event, not from the start: reading the data, loading the
        # model and scoring the base on the validation strip come before it, once.
        now = time.monotonic()
        if self._pace_from is None:
            self._pace_from = (done, now)
            return ""
        first, then = self._pace_from
        return eta_text(done - first, total - first, now - then)

    def _finished(self, outcome: str) -> None:
        self._timer.stop()
        self._progress.close()
        super()._finished(outcome)

    def _done(self, ev: dict[str, Any]) -> None:
        path = ev.get("path")
        stopped = bool(ev.get("stopped"))
        self.saved_model = path
        self.export_button.setEnabled(bool(path) and exportable(path))
        if path:
            notify_models_changed()  # the new model appears in every open model list
            self.base.refresh()
            minutes = self._elapsed() / 60
            msg = f"{'stopped; ' if stopped else ''}model saved to {path} ({minutes:.1f} min)"
            try:
                kept = verdict(read_card(path).metrics)
            except EMDiffuseError:
                kept = None
            if kept:
                msg = f"{kept}; {msg}"
            self.status.setText(f"{self.history.summary()}\n{msg}")
            notify_info(f"EMDiffuse: {msg}")
        else:
            self.status.setText("stopped before any model was saved")
        self._finished("stopped" if stopped else "done")

    def _export_clicked(self) -> None:
        if not self.saved_model:
            return
        path, _ = QFileDialog.getSaveFileName(
            self, "Export to bioimage.io", str(Path(self.saved_model).with_suffix(".zip")),
            "bioimage.io package (*.zip)",
        )
        if path:
            self.export_to(path)

    def export_to(self, path: str | Path) -> Path | None:
        """Write the model just saved as a bioimage.io package at ``path`` (``.zip`` added when
        missing); None, with a one-line notification, when it cannot be exported."""
        from qtpy.QtCore import Qt
        from qtpy.QtWidgets import QApplication

        if not self.saved_model:
            notify_error("no model to export yet: train one first")
            return None
        path = Path(path)
        if path.suffix.lower() != ".zip":
            path = path.with_name(path.name + ".zip")
        QApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)  # a few seconds: tests the package
        try:
            model = load_model(self.saved_model, device="cpu", cache=False)
            # a model of every factor (fine-tuned from demo-isotropic-any): for the factor it learnt
            factor = self.factor.value() if model.card.network.gap_depth else None
            out = export_bioimageio(model, path, factor=factor)
        except EMDiffuseError as exc:
            notify_error(str(exc))
            self.status.setText(f"export failed: {exc}")
            return None
        finally:
            QApplication.restoreOverrideCursor()
        self.status.setText(f"exported to {out} (bioimage.io package)")
        notify_info(f"EMDiffuse: exported to {out}")
        return out

    def _failed(self, ev: dict[str, Any]) -> None:
        message = str(ev.get("message", "training failed"))
        if ev.get("user"):
            notify_error(message)
        else:
            logger.error("fine-tuning failed in the training process:\n%s", ev.get("traceback", message))
            notify_error(f"unexpected error: {message}")
        self.status.setText(f"failed: {message}")
        self._finished("failed")

    def shutdown(self) -> None:
        """End a running training process (napari closing or the widget removed)."""
        if self._run is not None:
            self._run.kill()
            self._finished("stopped")

    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt name
        self.shutdown()
        super().closeEvent(event)
