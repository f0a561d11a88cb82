"""Typed progress events yielded by every long-running engine generator.

The CLI turns them into a tqdm bar, the widgets into napari progress bars and plots, and
tests into lists. Closing the generator cancels the work at the next step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Progress", "drain", "TimeLeft", "VOLUME_STAGES", "files_left", "duration"]

#: Stages besides the network passes that go over the whole image once, and take long on a
#: large volume: copying the input for dask workers, averaging a stack along z, writing an
#: OME-Zarr pyramid, writing a TIFF or MRC file slice by slice. The CLI and the widgets show
#: a progress bar for each.
VOLUME_STAGES = ("staging", "z filter: choosing its width", "z filter", "pyramid", "writing")


@dataclass
class Progress:
    """One unit of work finished.

    Attributes
    ----------
    stage : str
        What is running: ``"sampling"``, ``"slice"``, ``"block"``, ``"training"``, ``"validation"``.
    done, total : int
        Units finished so far and units in this stage (steps x tiles when sampling).
    loss : float, optional
        Training loss of the last iteration.
    metrics : dict, optional
        Validation metrics (``psnr``, ``ssim``, ...).
    preview : numpy.ndarray, optional
        A small image to show the current state.
    message : str
        Human-readable detail.
    """

    stage: str
    done: int
    total: int
    loss: float | None = None
    metrics: dict[str, float] | None = None
    preview: np.ndarray | None = None
    message: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


def drain(gen: Generator) -> Any:
    """Run an engine generator to its end and return its result.

    Engine generators yield :class:`Progress` events and hand over their result in one of two
    ways: the steps that others compose with ``yield from`` (samplers, canvas, blocks)
    *return* it; the public ``..._iter`` functions *yield* it as their last item. The result
    is the generator's return value when it has one, else the last item it yielded that is not
    a :class:`Progress`, else None.

    Examples
    --------
    >>> def job():
    ...     yield Progress("step", 1, 2)
    ...     yield "result"
    >>> drain(job())
    'result'
    >>> def step():
    ...     yield Progress("step", 1, 1)
    ...     return 42
    >>> drain(step())
    42
    """
    result = None
    while True:
        try:
            item = next(gen)
        except StopIteration as stop:
            return stop.value if stop.value is not None else result
        if not isinstance(item, Progress):
            result = item


class TimeLeft:
    """How long the rest of a run's network passes will take, said once, early.

    The pace is measured from the end of the first pass on: the first one also pays for
    reading the input, loading the model and the device's warm-up, and timed from the start
    it made a 2-second run announce 35 seconds.

    Parameters
    ----------
    clock : callable
        Seconds, monotonic (a fake one in tests).

    Examples
    --------
    >>> ticks = iter([5.0, 5.5])  # the first pass ends at 5 s (start-up), the second at 5.5 s
    >>> left = TimeLeft(clock=lambda: next(ticks))
    >>> left.update(Progress("sampling", 1, 100)) is None  # the clock starts
    True
    >>> left.update(Progress("sampling", 2, 100))  # 0.5 s per pass, 98 to go
    49.0
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._mark: tuple[int, float] | None = None
        self.said = False

    def update(self, ev: Progress) -> float | None:
        """Seconds left, at the first sampling event that shows the pace; None before and after."""
        if self.said or ev.stage != "sampling" or ev.done < 1 or ev.total <= ev.done:
            return None
        now = self._clock()
        if self._mark is None or ev.done <= self._mark[0]:
            self._mark = (ev.done, now)
            return None
        done, then = self._mark
        self.said = True
        return (now - then) / (ev.done - done) * (ev.total - ev.done)


def files_left(elapsed: float, done: int, total: int) -> float | None:
    """Seconds the rest of a batch of ``total`` files will take at the pace of the ``done``
    finished in ``elapsed`` seconds; None before the first is done, or after the last.

    Examples
    --------
    >>> files_left(120.0, 2, 10)
    480.0
    """
    if done < 1 or done >= total:
        return None
    return elapsed / done * (total - done)


def duration(seconds: float) -> str:
    """Seconds as a person says them: ``45 s``, ``12 min``, ``2.5 h``.

    Examples
    --------
    >>> duration(45), duration(720), duration(9000)
    ('45 s', '12 min', '2.5 h')
    """
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
