"""The base class of the three dock widgets: Run/Cancel state, the status line, the layout
around each dock's own form, and its options kept in :class:`~._settings.Settings`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import fields
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QFormLayout, QLabel, QVBoxLayout, QWidget

from ..engine.errors import EMDiffuseError
from ..engine.events import TimeLeft, duration
from ._controls import DevicePicker, ModelPicker, RunButton, control_value, set_control
from ._jobs import EngineRun, notify_error, notify_info
from ._layers import LayerCombo, read_back, show_outputs
from ._settings import Settings, WidgetOptions

if TYPE_CHECKING:  # pragma: no cover
    import napari
    from superqt import QCollapsible

__all__ = ["MIN_WIDTH", "DockWidget"]

MIN_WIDTH = 340  # dock width at which the labels and model names fit


class _Job(Protocol):
    def cancel(self) -> None: ...


class DockWidget(QWidget):
    """What the dock widgets share: Run, which becomes Cancel (or Stop) while their one job
    runs; the device picker and status line; the layout around each one's own form; and
    their options kept in :class:`Settings`.

    A subclass sets ``SETTINGS`` and ``OPTIONS``, and defines ``_start()``, which validates
    (raising EMDiffuseError before anything starts) and then starts the job, e.g. with
    :meth:`_start_engine`. Each field of ``OPTIONS`` is shown by the control of its name
    (:meth:`options`, :meth:`set_options`); a subclass whose fields need converting
    overrides both.
    """

    #: Emitted when a run ends, with its outcome: "done", "cancelled" / "stopped" or "failed".
    run_finished = Signal(str)

    SETTINGS: ClassVar[str]
    OPTIONS: ClassVar[type[WidgetOptions]]
    #: Options saved but not restored: last session's output is not today's default target.
    NOT_RESTORED: ClassVar[tuple[str, ...]] = ()
    CANCELLING: ClassVar[str] = "cancelling…"
    #: Status line for an outcome; outcomes not listed keep the status the run left.
    ENDED: ClassVar[dict[str, str]] = {
        "cancelled": "cancelled: no output written",
        "failed": "failed",
    }

    def __init__(
        self,
        napari_viewer: "napari.viewer.Viewer",
        parent: QWidget | None = None,
        *,
        run_text: str = "Run",
        cancel_text: str = "Cancel",
    ) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self._run: _Job | None = None  # an EngineRun or a TrainingProcess while running
        self._started = 0.0
        self._time_left = TimeLeft()
        self.run_notes: list[str] = []
        self.device = DevicePicker()
        self.run_button = RunButton(run_text, cancel_text)
        self.status = QLabel("")
        self.status.setWordWrap(True)

    def _lay_out(self, rows: Sequence[tuple[Any, Any]], advanced: QCollapsible, *extra: QWidget) -> None:
        """The form (``rows``, then the device), Advanced, Run, ``extra`` and the status."""
        form = QFormLayout()
        for label, field in (*rows, ("device", self.device)):
            form.addRow(label, field)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        self.setMinimumWidth(MIN_WIDTH)
        lay.addWidget(advanced)
        lay.addWidget(self.run_button)
        for widget in extra:
            lay.addWidget(widget)
        lay.addWidget(self.status)
        lay.addStretch(1)
        self.advanced = advanced
        self.run_button.clicked.connect(self._on_run_clicked)

    # -- options ---------------------------------------------------------------------------------

    def options(self) -> Any:
        """The options the form shows: each field read off the control of its name."""
        return self.OPTIONS(**{f.name: control_value(getattr(self, f.name)) for f in fields(self.OPTIONS)})

    def set_options(self, opts: Any) -> None:
        """Show ``opts`` in the form, field by field in their order (a task before its model)."""
        for f in fields(self.OPTIONS):
            set_control(getattr(self, f.name), getattr(opts, f.name))

    def _load_settings(self, model: ModelPicker | None = None) -> None:
        """Show the options of the last run and, given its picker, its model."""
        saved = Settings().load(self.SETTINGS)
        opts = self.OPTIONS.from_dict(saved.get("options", {}))
        for name in self.NOT_RESTORED:
            setattr(opts, name, getattr(self.OPTIONS(), name))
        self.set_options(opts)
        if model is not None:
            model.apply_settings(saved)

    def _save_settings(self, opts: WidgetOptions, model: ModelPicker | None = None) -> None:
        values = {"options": opts.to_dict(), **(model.settings() if model is not None else {})}
        Settings().save(self.SETTINGS, values)

    # -- running ---------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._run is not None

    def _on_run_clicked(self) -> None:
        if self._run is not None:
            self.cancel()
        else:
            self.run()

    def run(self) -> bool:
        """Start a run; False (and a notification) if it cannot start."""
        if self._run is not None:
            return False
        try:
            self._start()
        except EMDiffuseError as exc:  # the user's to fix: nothing was started
            notify_error(str(exc))
            self.status.setText(f"not started: {exc}")  # the toast may be cut off; this stays
            return False
        return True

    def _start(self) -> None:
        raise NotImplementedError

    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt name
        """A closed dock stops its job and its layer lists stop following the viewer."""
        if self._run is not None:
            self.cancel()
        for combo in self.findChildren(LayerCombo):
            combo.stop_following()
        super().closeEvent(event)

    def cancel(self) -> None:
        """Ask the job to stop; the button says so until it has."""
        if self._run is not None:
            self._run.cancel()
            self.run_button.set_cancelling()
            self.status.setText(self.CANCELLING)

    def _start_engine(
        self,
        factory: Callable[[], Generator],
        *,
        status: str,
        desc: str,
        on_result: Callable[[Any], None],
        stages: tuple[str, ...] = ("sampling",),
        source: str | None = None,
    ) -> None:
        """Run an engine generator in a napari thread worker (see :class:`EngineRun`)."""
        self._started = time.monotonic()
        self._resumable = False  # a resumable zarr run keeps its finished blocks when it ends early
        self.run_notes: list[str] = []  # what the run said on the way (a file output's notes), for its status line
        self.status.setText(status)
        self._time_left = TimeLeft()
        self.device.set_used(None)  # the last run's device may not be this one's
        self.run_button.set_running(True)
        self._run = EngineRun(
            factory, desc=desc, stages=stages, on_result=on_result, on_finished=self._finished,
            on_event=lambda ev: self._estimate(ev, status), source=source,
        ).start()

    def _estimate(self, ev: Any, status: str) -> None:
        """Once the pace is known: how long the rest will take, on this device. A resumed run
        says first how much an earlier one had done."""
        if ev.stage == "note" and (ev.message or "").startswith(("resuming", "resumable")):
            self._resumable = True
            if ev.message.startswith("resuming"):
                self.status.setText(ev.message)
                notify_info(ev.message)
            return
        if ev.stage == "note":
            text = str(ev.message).removeprefix("note: ")
            self._resumable = self._resumable or "--resume continues it" in text  # a file's store kept if stopped
            self.run_notes.append(text)
            return
        left = self._time_left.update(ev)
        if left is not None and left > 30:
            self.status.setText(f"{status} about {duration(left)} left ({ev.total} network passes)")
            if left > 600:
                notify_info(f"this run will take about {duration(left)}; Cancel stops it and writes nothing")

    def _show_written(self, wrote: list[str], source: dict, place: Callable[[tuple[int, ...]], Any]) -> None:
        """A TIFF, MRC or precomputed result (``wrote``: what the files route wrote, the
        uncertainty marked so): shown from the file, lazily where the format allows, over its
        input (``source``); ``place(shape)`` gives the layers' names, geometry and provenance.
        The status line names the file and the run's notes."""
        ndim = len(source["scale"])
        image = read_back(wrote[0], ndim)
        unc_path = next((w[: -len(" (uncertainty)")] for w in wrote[1:] if w.endswith(" (uncertainty)")), None)
        unc = read_back(unc_path, ndim) if unc_path is not None else None
        names, geometry, made = place(tuple(image.shape))
        self.last_outputs = show_outputs(self.viewer, source, geometry, (names[0], image), (names[1], unc),
                                         {**made, "output": wrote[0]})
        from ..engine.models.device import resolve_device

        device = str(resolve_device(self.device.value()))  # what the run resolved the choice to
        self.device.set_used(device)
        also = " and its uncertainty" if unc is not None else ""
        self.status.setText(f"'{names[0]}' {tuple(image.shape)} written to '{wrote[0]}'{also} in {self._elapsed():.1f} s"
                            f" on {device}" + "".join(f"; {n}" for n in self.run_notes))

    def _elapsed(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self._started

    def _finished(self, outcome: str) -> None:
        message = getattr(self._run, "error_message", None)
        self._run = None
        self.run_button.set_running(False)
        if outcome in self.ENDED:
            kept = "; its finished blocks are kept: Run again with the same options to continue"
            self.status.setText(
                self.ENDED[outcome] + (f": {message}" if message and outcome == "failed" else "")
                + (kept if outcome in ("cancelled", "failed") and getattr(self, "_resumable", False) else "")
            )
        self.run_finished.emit(outcome)
