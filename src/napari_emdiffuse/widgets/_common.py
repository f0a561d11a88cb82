"""What the three dock widgets share.

Two halves, kept apart so the first can be unit-tested without a viewer:

* plain logic: error reporting, device choices, model choices, settings persistence (and
  the options dataclasses' round trip), sampling-option checks, layer geometry and output
  layers, the model-list listener registry, the engine-generator driver with its progress
  bar and the training child process;
* thin Qt helpers: a layer combo box, a model picker (with "Browse…"), a device picker that
  shows the device actually used, a Run/Cancel button, small form builders, and
  :class:`DockWidget`, the Run/Cancel state machine and settings plumbing of every dock.

Nothing here touches tensors: torch is imported only to ask which devices exist.
"""

from __future__ import annotations

import atexit
import json
import logging
import multiprocessing.util  # noqa: F401 - before our atexit hook, see _kill_training
import os
import queue as _queue
import tempfile
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
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

from ..engine.errors import EMDiffuseError

if TYPE_CHECKING:  # pragma: no cover
    import napari
    from superqt import QCollapsible

__all__ = [
    "BROWSE",
    "MIN_WIDTH",
    "CANCELLED",
    "PRESETS",
    "UNCERTAINTY_COLORMAP",
    "ModelChoice",
    "Settings",
    "WidgetOptions",
    "EngineRun",
    "ProgressBar",
    "TrainingProcess",
    "report_error",
    "notify_error",
    "notify_info",
    "device_choices",
    "model_choices",
    "is_checkpoint",
    "architectures_for",
    "resolve_browsed",
    "settings_path",
    "notify_models_changed",
    "layer_geometry",
    "layer_source",
    "layer_units",
    "upsert_image",
    "show_outputs",
    "check_preset",
    "check_tiling",
    "sampling_kwargs",
    "LayerCombo",
    "ModelPicker",
    "DevicePicker",
    "RunButton",
    "spin_box",
    "advanced_section",
    "path_row",
    "DockWidget",
]

logger = logging.getLogger("napari_emdiffuse.widgets")

BROWSE = "Browse…"
MIN_WIDTH = 340  # dock width at which the labels and model names fit
# Bare weight files that engine.model.load_model accepts with an architecture.
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors")
PRESETS = ("fast", "balanced", "reference")  # engine sampling presets (Restore, Isotropic)
UNCERTAINTY_COLORMAP = "magma"


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


def report_error(exc: BaseException) -> str:
    """Tell the user about a failed run and return the message shown.

    :class:`EMDiffuseError` is the user's to fix: its one-line message is shown as is.
    Anything else is a bug or an environment problem: logged with its traceback (for the
    bug report) and shown briefly.
    """
    if isinstance(exc, EMDiffuseError):
        message = str(exc)
    else:
        logger.error("unexpected error in napari-emdiffuse", exc_info=(type(exc), exc, exc.__traceback__))
        text = " ".join(str(exc).split())  # one line, however the exception was worded
        if len(text) > 200:
            text = text[:197] + "..."
        message = f"unexpected error: {text or type(exc).__name__}"
    notify_error(message)
    return message


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
# settings


def settings_path() -> Path:
    """Where widget settings persist: ``$EMDIFFUSE_HOME/widgets.json`` when set, else the
    user config directory."""
    env = os.environ.get("EMDIFFUSE_HOME")
    if env:
        return Path(env) / "widgets.json"
    from platformdirs import user_config_dir

    return Path(user_config_dir("napari-emdiffuse", appauthor=False)) / "widgets.json"


class Settings:
    """Per-widget option values kept between napari sessions in one JSON file.

    A plain JSON file rather than QSettings so tests isolate it with ``EMDIFFUSE_HOME``
    and users can read it. Unreadable files count as empty: settings are a convenience.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self._path = Path(path) if path is not None else None

    @property
    def path(self) -> Path:
        return self._path or settings_path()

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def load(self, section: str) -> dict[str, Any]:
        """Saved values of one widget (empty if none)."""
        values = self._read().get(section, {})
        return values if isinstance(values, dict) else {}

    def save(self, section: str, values: dict[str, Any]) -> None:
        """Replace one widget's values (atomically, so a crash never leaves half a file)."""
        data = self._read()
        data[section] = values
        path = self.path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".widgets.json.")
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh, indent=1, default=str)
            os.replace(tmp, path)
        except OSError as exc:
            logger.warning("could not save widget settings to %s: %s", path, exc)


_O = TypeVar("_O", bound="WidgetOptions")


class WidgetOptions:
    """Base of the widgets' option dataclasses: the round trip through :class:`Settings`.

    Subclasses are dataclasses of plain values whose defaults fix each field's type.
    """

    def validate(self: _O) -> _O:
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]  # subclasses are dataclasses

    @classmethod
    def from_dict(cls: type[_O], values: dict[str, Any]) -> _O:
        """Options from saved settings: unknown keys and wrongly typed values are dropped (an
        int is taken for a float: JSON writes 1.0 as 1); a combination that does not validate
        gives the defaults, since settings are a convenience."""
        defaults = cls()
        kept = {}
        for f in fields(cls):  # type: ignore[arg-type]
            v = values.get(f.name)
            want = type(getattr(defaults, f.name))
            if v is not None and (type(v) is want or (want is float and type(v) is int)):
                kept[f.name] = want(v)
        try:
            return cls(**kept).validate()
        except EMDiffuseError:
            return defaults


# ----------------------------------------------------------------------------------------------
# sampling options (Restore and Isotropic drive the same sampler)


class _Sampling(Protocol):
    preset: str
    steps: int
    samples: int
    tile: int
    overlap: int
    seed: int
    device: str


def check_preset(preset: str) -> None:
    if preset not in PRESETS:
        raise EMDiffuseError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")


def check_tiling(opts: _Sampling) -> None:
    """Refuse negative counts and an overlap that leaves a tile nothing new."""
    if opts.steps < 0 or opts.samples < 0 or opts.tile < 0 or opts.overlap < -1 or opts.seed < 0:
        raise EMDiffuseError("steps, samples, tile, overlap and seed cannot be negative")
    if opts.tile and opts.overlap >= opts.tile:
        raise EMDiffuseError(f"overlap {opts.overlap} must be smaller than tile {opts.tile}")


def sampling_kwargs(opts: _Sampling) -> dict[str, Any]:
    """The engine's sampling keyword arguments; 0 / -1 become None ("let the engine choose")."""
    return {
        "preset": opts.preset,
        "steps": opts.steps or None,
        "samples": opts.samples or None,
        "tile": opts.tile or None,
        "overlap": None if opts.overlap < 0 else opts.overlap,
        "seed": opts.seed,
        "device": opts.device,
    }


# ----------------------------------------------------------------------------------------------
# layers


def layer_geometry(layer: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The data-to-world scale and translate of a layer, as tuples of floats."""
    return tuple(float(v) for v in layer.scale), tuple(float(v) for v in layer.translate)


def layer_units(layer: Any) -> tuple[str, ...] | None:
    """The layer's axis units as strings (napari >= 0.6), or None."""
    units = getattr(layer, "units", None)
    return tuple(str(u) for u in units) if units is not None else None


def layer_source(layer: Any) -> dict[str, Any]:
    """What an output layer needs from its input, captured when a run starts (the input
    may be renamed, moved or removed while the worker runs)."""
    scale, translate = layer_geometry(layer)
    return {"layer": layer, "name": layer.name, "scale": scale, "translate": translate, "units": layer_units(layer)}


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
    if isinstance(existing, Image) and not any(existing is p for p in protect):
        if existing.ndim == len(data.shape) and not existing.rgb:
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
    return outputs


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

    def update(self, done: int, total: int) -> None:
        if not total:
            return
        from napari.utils import progress

        if self.bar is None:
            self.bar = progress(total=total, desc=self.desc)
        elif self.bar.total != total:
            self.bar.total = total
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
    ) -> None:
        self._factory = factory
        self._stages = stages
        self._on_event = on_event
        self._on_result = on_result
        self._on_finished = on_finished
        self._cancel = threading.Event()
        self._progress = ProgressBar(desc)
        self._outcome = "failed"
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
        if ev.stage in self._stages:
            self._progress.update(ev.done, ev.total)
        if self._on_event is not None:
            self._on_event(ev)

    def _returned(self, result: Any) -> None:
        if result is CANCELLED:
            self._outcome = "cancelled"
        elif isinstance(result, _Failure):
            self._outcome = "failed"
            report_error(result.exc)
        else:
            try:
                self._on_result(result)
                self._outcome = "done"
            except Exception as exc:  # noqa: BLE001 - showing a result must not kill napari
                self._outcome = "failed"
                report_error(exc)

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
        from ..engine.training.finetune import finetune_iter

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


# ----------------------------------------------------------------------------------------------
# Qt helpers (thin)


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


def advanced_section(rows: Sequence[tuple[str, QWidget]]) -> QCollapsible:
    """A collapsed "Advanced" group of form rows: options most runs leave alone."""
    from superqt import QCollapsible  # here: the spawned training child imports this module

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


class _Job(Protocol):
    def cancel(self) -> None: ...


class DockWidget(QWidget):
    """What the dock widgets share: Run, which becomes Cancel (or Stop) while their one job
    runs; the device picker and status line; the layout around each one's own form; and
    their options kept in :class:`Settings`.

    A subclass sets ``SETTINGS`` and ``OPTIONS``, and defines ``options()``,
    ``set_options()`` and ``_start()``, which validates (raising EMDiffuseError before
    anything starts) and then starts the job, e.g. with :meth:`_start_engine`.
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
        "failed": "failed: see the notification",
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
        raise NotImplementedError

    def set_options(self, opts: Any) -> None:
        raise NotImplementedError

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
            return False
        return True

    def _start(self) -> None:
        raise NotImplementedError

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
    ) -> None:
        """Run an engine generator in a napari thread worker (see :class:`EngineRun`)."""
        self._started = time.monotonic()
        self.status.setText(status)
        self.device.set_used(None)  # the last run's device may not be this one's
        self.run_button.set_running(True)
        self._run = EngineRun(
            factory, desc=desc, stages=stages, on_result=on_result, on_finished=self._finished
        ).start()

    def _elapsed(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self._started

    def _finished(self, outcome: str) -> None:
        self._run = None
        self.run_button.set_running(False)
        if outcome in self.ENDED:
            self.status.setText(self.ENDED[outcome])
        self.run_finished.emit(outcome)
