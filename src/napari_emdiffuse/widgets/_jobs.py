"""Running the widgets' jobs: engine generators in napari thread workers, training in a
child process, with cancel, progress bars and the notifications a run ends with.

No Qt widgets here (napari is imported only when a job runs), so the spawned training
child, which imports this module to find :func:`training_child`, stays light.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing.util  # noqa: F401 - before our atexit hook, see _kill_training
import os
import queue as _queue
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..engine.errors import EMDiffuseError

__all__ = [
    "CANCELLED",
    "EngineRun",
    "ProgressBar",
    "TrainingProcess",
    "report_error",
    "notify_error",
    "notify_info",
]

logger = logging.getLogger("napari_emdiffuse.widgets")


# ----------------------------------------------------------------------------------------------
# notifications


def notify_error(message: str) -> None:
    """Show a one-line problem the user can fix (napari notification)."""
    # Looked up at call time so tests can monkeypatch napari.utils.notifications.show_error.
    from napari.utils import notifications

    notifications.show_error(message)


def notify_info(message: str) -> None:
    """Show a one-line status message (napari notification)."""
    from napari.utils import notifications

    notifications.show_info(message)


def report_error(exc: BaseException, *, source: str | None = None) -> str:
    """Tell the user about a failed run and return the message shown.

    :class:`EMDiffuseError` is the user's to fix: its one-line message is shown as is, and so
    is a damaged chunk of the input (``source`` names it: the layer). Anything else is a bug or
    an environment problem: logged with its traceback (for the bug report) and shown briefly.
    """
    from ..engine.io.common import damaged_reason

    if isinstance(exc, EMDiffuseError):
        message = str(exc)
    elif (why := damaged_reason(exc, source=source)) is not None:  # a damaged input: the user's to fix, not a bug
        message = why
    else:
        logger.error("unexpected error in napari-emdiffuse", exc_info=(type(exc), exc, exc.__traceback__))
        text = " ".join(str(exc).split())  # one line, however the exception was worded
        if len(text) > 200:
            text = text[:197] + "..."
        message = f"unexpected error: {text or type(exc).__name__}"
    notify_error(message)
    return message


# ----------------------------------------------------------------------------------------------
# driving an engine generator in a napari thread worker


class _Cancelled:
    def __repr__(self) -> str:
        return "CANCELLED"


CANCELLED = _Cancelled()


@dataclass
class _Failure:
    exc: BaseException


def drive(factory: Callable[[], Generator], cancel: threading.Event) -> Generator[Any, None, Any]:
    """Run an engine generator (made in the worker thread), relay its events, obey cancel.

    Returns the engine's final result, :data:`CANCELLED`, or a ``_Failure``: the worker
    itself never raises, so napari shows no second, raw traceback notification.
    """
    from ..engine.events import Progress

    result: Any = None
    gen = None
    try:
        if cancel.is_set():
            return CANCELLED
        gen = factory()
        for item in gen:
            if cancel.is_set():
                gen.close()  # the engine stops at this tile batch and writes nothing
                return CANCELLED
            if isinstance(item, Progress):
                yield item
            else:
                result = item
        return result
    except Exception as exc:  # noqa: BLE001 - handed to report_error in the GUI thread
        return _Failure(exc)
    finally:
        if gen is not None:
            gen.close()


class ProgressBar:
    """A napari progress bar, made at the first counted event (only then is the total known)."""

    def __init__(self, desc: str) -> None:
        self.desc = desc
        self.bar: Any = None
        self._label = desc

    def update(self, done: int, total: int, stage: str = "sampling") -> None:
        if not total:
            return
        from napari.utils import progress

        label = self.desc if stage in ("sampling", "block") else f"{self.desc} ({stage})"
        if self.bar is not None and label != self._label:  # a pass over the volume: a bar of its own
            self.close()
        if self.bar is None:
            self.bar, self._label = progress(total=total, desc=label), label
        elif self.bar.total != total or done < self.bar.n:
            # A new phase (denoising, then reconstructing; a retry with smaller blocks)
            # counts from 0 again: so does the bar, or it would sit at the last phase's count.
            self.bar.reset(total=total)
        self.bar.update(max(0, done - self.bar.n))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class EngineRun:
    """One run of an engine generator in a napari thread worker, with a progress bar.

    Parameters
    ----------
    factory : callable
        Called in the worker thread; returns the engine generator.
    desc : str
        Progress bar text.
    stages : tuple of str
        Progress stages counted by the bar (``sampling``: tiles x steps).
    on_event : callable, optional
        Called in the GUI thread with every Progress.
    on_result : callable
        Called in the GUI thread with the engine's final result.
    on_finished : callable
        Called in the GUI thread at the end, with ``"done"``, ``"cancelled"`` or ``"failed"``.
    source : str, optional
        What the input is (``"layer 'scan'"``), for an error that cannot say (a damaged chunk).
    """

    def __init__(
        self,
        factory: Callable[[], Generator],
        *,
        desc: str,
        on_result: Callable[[Any], None],
        on_finished: Callable[[str], None],
        on_event: Callable[[Any], None] | None = None,
        stages: tuple[str, ...] = ("sampling",),
        source: str | None = None,
    ) -> None:
        self._factory = factory
        self._source = source
        self._stages = stages
        self._on_event = on_event
        self._on_result = on_result
        self._on_finished = on_finished
        self._cancel = threading.Event()
        self._progress = ProgressBar(desc)
        self._sampling_seen = False
        self._outcome = "failed"
        self.error_message: str | None = None  # what the user was told when it failed
        self.worker: Any = None

    @property
    def cancelling(self) -> bool:
        return self._cancel.is_set()

    @property
    def _pbar(self) -> Any:
        """The napari progress bar; None until the first counted event."""
        return self._progress.bar

    def start(self) -> "EngineRun":
        from napari.qt.threading import create_worker

        self.worker = create_worker(
            drive, self._factory, self._cancel, _start_thread=False, _ignore_errors=True
        )
        self.worker.yielded.connect(self._event)
        self.worker.returned.connect(self._returned)
        self.worker.finished.connect(self._finished)
        self.worker.start()
        return self

    def cancel(self) -> None:
        """Ask the engine to stop at its next tile batch."""
        self._cancel.set()

    def _event(self, ev: Any) -> None:
        # Block counts drive the bar only when no finer sampling counts come (a distributed
        # run); in one process they would pull it back and forth between the two totals.
        if ev.stage in self._stages and not (ev.stage == "block" and self._sampling_seen):
            self._progress.update(ev.done, ev.total, ev.stage)
        self._sampling_seen = self._sampling_seen or ev.stage == "sampling"
        if self._on_event is not None:
            self._on_event(ev)

    def _returned(self, result: Any) -> None:
        if result is CANCELLED:
            self._outcome = "cancelled"
        elif isinstance(result, _Failure):
            self._outcome = "failed"
            self.error_message = report_error(result.exc, source=self._source)
        else:
            try:
                self._on_result(result)
                self._outcome = "done"
            except Exception as exc:  # noqa: BLE001 - showing a result must not kill napari
                self._outcome = "failed"
                self.error_message = report_error(exc)

    def _finished(self) -> None:
        self._progress.close()
        self._on_finished(self._outcome)


# ----------------------------------------------------------------------------------------------
# training in a child process


def event_to_dict(ev: Any) -> dict[str, Any]:
    """A Progress as plain data (picklable without importing the engine's classes)."""
    import numpy as np

    out: dict[str, Any] = {"stage": ev.stage, "done": int(ev.done), "total": int(ev.total)}
    if ev.loss is not None:
        out["loss"] = float(ev.loss)
    if ev.metrics:
        out["metrics"] = {str(k): float(v) for k, v in ev.metrics.items()}
    if ev.preview is not None:
        out["preview"] = np.asarray(ev.preview)
    if ev.message:
        out["message"] = str(ev.message)
    if getattr(ev, "extra", None) and ev.extra.get("base"):
        out["base"] = True  # the base model's score before fine-tuning
    return out


def _stopped_model(out: str | os.PathLike[str]) -> str | None:
    """The model a stopped run left: ``out`` itself or its newest model subdirectory."""
    out = Path(out)
    if (out / "model.yaml").is_file():
        return str(out)
    if out.is_dir():
        found = sorted((p for p in out.iterdir() if (p / "model.yaml").is_file()), key=lambda p: p.stat().st_mtime)
        if found:
            return str(found[-1])
    return None


def training_child(kwargs: dict[str, Any], events: Any, stop: Any) -> None:
    """Entry point of the training process (spawned): run ``finetune_iter``, send plain
    dicts back on ``events``, close the generator when ``stop`` is set.

    Runs in its own process so that all GPU memory is returned when it ends.
    """
    try:
        if stop.is_set():
            events.put({"stage": "done", "path": None, "stopped": True})
            return
        from ..engine.events import Progress
        from ..api import finetune_iter

        gen = finetune_iter(**kwargs)
        result: Any = None
        stopped = False
        for item in gen:
            if isinstance(item, Progress):
                events.put(event_to_dict(item))
            else:
                result = item
            if stop.is_set():
                gen.close()  # the engine saves the model as it stands
                stopped = True
                break
        path = str(result) if result is not None else (_stopped_model(kwargs["out"]) if stopped else None)
        if path is not None:
            try:
                from ..engine.models.registry import register_model

                register_model(path)  # idempotent: the engine registers completed runs itself
            except EMDiffuseError:
                pass
        events.put({"stage": "done", "path": path, "stopped": stopped})
    except EMDiffuseError as exc:
        events.put({"stage": "error", "user": True, "message": str(exc)})
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the GUI
        events.put(
            {
                "stage": "error",
                "user": False,
                "message": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(),
            }
        )


_RUNNING: "weakref.WeakSet[TrainingProcess]" = weakref.WeakSet()


@atexit.register
def _kill_training() -> None:
    # Registered after multiprocessing's own exit hook, so it runs first: napari quitting
    # must not wait for a training run to finish.
    for proc in list(_RUNNING):
        proc.kill()


class TrainingProcess:
    """A fine-tuning run in a spawned child process; the GUI polls it (no Qt here).

    Parameters
    ----------
    kwargs : dict
        Arguments of ``finetune_iter`` (arrays as numpy).
    stop_grace_s : float
        After Stop, how long the child may take to save its model before it is terminated.
    """

    def __init__(self, kwargs: dict[str, Any], *, stop_grace_s: float = 120.0) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")  # fork would copy Qt and CUDA state into the child
        self.events = ctx.Queue()
        self._stop = ctx.Event()
        self.process = ctx.Process(
            # Not a daemon: training may start data-loader processes of its own.
            target=training_child, args=(kwargs, self.events, self._stop), name="emdiffuse-finetune", daemon=False
        )
        self._grace = float(stop_grace_s)
        self._stop_time: float | None = None
        self.finished = False

    def start(self) -> "TrainingProcess":
        self.process.start()
        _RUNNING.add(self)
        return self

    def stop(self) -> None:
        """Ask the child to stop after its current iteration (it keeps a usable model)."""
        if self._stop_time is None:
            self._stop_time = time.monotonic()
        self._stop.set()

    cancel = stop  # the name DockWidget's Cancel (here: Stop) button calls

    @property
    def stopping(self) -> bool:
        return self._stop_time is not None

    def poll(self, limit: int = 200) -> list[dict[str, Any]]:
        """Events that arrived since the last call; ends with a ``done``/``error`` event once."""
        if self.finished:
            return []
        out: list[dict[str, Any]] = []
        alive = self.process.is_alive()
        for _ in range(limit):
            try:
                ev = self.events.get_nowait()
            except _queue.Empty:
                break
            out.append(ev)
            if ev.get("stage") in ("done", "error"):
                self.finished = True
                self.process.join(timeout=5)
                return out
        if not alive and not out:
            self.finished = True
            out.append(
                {
                    "stage": "error",
                    "user": False,
                    "message": f"the training process ended unexpectedly (exit code {self.process.exitcode})",
                }
            )
        elif self._stop_time is not None and time.monotonic() - self._stop_time > self._grace and alive:
            self.process.terminate()
        return out

    def kill(self) -> None:
        """End the child now (napari is closing)."""
        self._stop.set()
        if self.process.is_alive():
            self.process.join(timeout=2)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=5)
        self.finished = True
