"""How the ``emdiffuse`` command drives an engine generator: one tqdm bar on stderr, a time
estimate once the pace is known, notes (validation, time budget) above the bar, and a stop
on Ctrl-C or SIGTERM that closes the generator between two of its events."""

from __future__ import annotations

import _thread
import signal
import sys
import threading
import time
from collections.abc import Generator, Sequence
from typing import Any

__all__ = ["PROG", "drive", "say", "Terminated", "STOP_GRACE_S"]

PROG = "emdiffuse"

#: Seconds a run has, after SIGTERM, to reach its next event and stop there; then it stops at
#: once. A cluster's scheduler kills a job this long after its SIGTERM: SLURM's KillWait, 30 s
#: by default.
STOP_GRACE_S = 20.0


class Terminated(KeyboardInterrupt):
    """SIGTERM (a cluster job's time limit, ``scancel``, ``kill``): the run stops as it does on
    Ctrl-C. Python's own response to SIGTERM ends the process with no clean-up at all."""


def _interrupt(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


class _StopBetweenEvents:
    """Ctrl-C or SIGTERM while a training is driven: noted, and the run stops at its next event
    (:func:`drive` then closes the generator at its ``yield``, where the trainer saves its model
    and checkpoint). Raised at the signal, mid-step, the stop skipped that, and a training
    stopped by Ctrl-C saved nothing. A second Ctrl-C or SIGTERM stops at once, and so does
    SIGTERM's after :data:`STOP_GRACE_S`. Not ``enabled``: the signals raise where the run is.
    """

    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self.signum: int | None = None
        self.bar: Any = None  # the bar on screen: a note goes below its line
        self._previous: dict[int, Any] = {}
        self._timer: threading.Timer | None = None

    def __enter__(self) -> _StopBetweenEvents:
        if self.enabled and threading.current_thread() is threading.main_thread():  # signals reach it only
            self._previous = {s: signal.signal(s, self._noted) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)

    def _noted(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # the second: at once
            raise _interrupt(signum)
        self.signum = signum
        if signum == signal.SIGTERM:
            self._timer = threading.Timer(STOP_GRACE_S, _thread.interrupt_main, args=(signal.SIGTERM,))
            self._timer.daemon = True
            self._timer.start()
        what = "terminated (SIGTERM); stopping" if signum == signal.SIGTERM else "stopping (Ctrl-C again: at once)"
        print(f"{chr(10) if self.bar is not None else ''}{PROG}: {what} at the next step", file=sys.stderr)

    def check(self) -> None:
        """Raise the noted stop, if any (between two events)."""
        if self.signum is not None:
            raise _interrupt(self.signum)


def drive(gen: Generator, stages: Sequence[str] | None = None, *, between_events: bool = False) -> Any:
    """Drive an engine generator with a tqdm bar on stderr; return its final item. ``stages``:
    those shown (default: sampling, blocks, training, files on workers, uploads and the passes
    over a whole volume). Ctrl-C (SIGTERM: :class:`Terminated`) raises where the run is: its
    files clean up as the exception passes. With ``between_events`` (a training, which saves
    its model when closed at an event) the run goes on to its next event and is closed there
    (:class:`_StopBetweenEvents`)."""
    from .engine.events import VOLUME_STAGES, TimeLeft

    stages = ("sampling", "block", "training", "files", "upload", *VOLUME_STAGES) if stages is None else stages
    with _StopBetweenEvents(enabled=between_events) as stop:
        return _show(gen, stages, TimeLeft(clock=lambda: time.monotonic()), stop)


def _show(gen: Generator, stages: Sequence[str], eta: Any, stop: _StopBetweenEvents) -> Any:
    """:func:`drive`'s loop: the bar, the notes, and a noted stop between two events."""
    from tqdm import tqdm

    from .engine.events import Progress, duration

    bar = None
    result = None
    try:
        for ev in gen:
            stop.check()
            if isinstance(ev, Progress):
                if ev.stage == "note" and ev.message:  # what the engine chose, and why
                    say(bar, f"{PROG}: {ev.message}")
                    continue
                if ev.stage not in stages:
                    if ev.stage == "validation" and ev.message:
                        say(bar, f"validation at {ev.done}: {ev.message}")
                    continue
                left = eta.update(ev) if ev.stage != "upload" else None  # bytes, not network passes
                if left is not None and left > 30:
                    note = "; over 10 minutes: Ctrl-C stops it and writes nothing" if left > 600 else ""
                    say(bar, f"{PROG}: estimate: {ev.total} network passes, about {duration(left)} more{note}")
                if ev.stage == "training" and ev.loss is None and ev.message:  # a note, e.g. the time budget
                    say(bar, f"{PROG}: {ev.message}")
                    continue
                if ev.stage == "block" and bar is not None and bar.desc == "sampling":
                    # Block counts ride on the finer, global sampling/training bar: a bar of
                    # their own would restart it (rate, ETA) at every slice.
                    bar.set_postfix_str(f"block {ev.done}/{ev.total}", refresh=True)
                    continue
                if bar is None or bar.total != ev.total or bar.desc != ev.stage:
                    if bar is not None:
                        bar.close()
                    unit = {"unit": "B", "unit_scale": True} if ev.stage == "upload" else {"unit": "it"}
                    bar = tqdm(total=ev.total, initial=ev.done, desc=ev.stage, file=sys.stderr, dynamic_ncols=True,
                               **unit)  # fmt: skip
                    stop.bar = bar
                bar.n = ev.done
                if ev.loss is not None:
                    bar.set_postfix(loss=f"{ev.loss:.4f}", refresh=False)
                bar.refresh()
            else:
                result = ev
    finally:
        gen.close()
        if bar is not None:
            bar.close()
    return result


def say(bar: Any, text: str) -> None:
    """A line on stderr, above the progress bar when there is one (tqdm's write goes to stdout)."""
    if bar is not None:
        bar.write(text, file=sys.stderr)
    else:
        print(text, file=sys.stderr)
