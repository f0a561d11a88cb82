"""How the ``emdiffuse`` command shows an engine generator's progress: one tqdm bar on stderr,
a time estimate once the pace is known, and notes (validation, time budget) above the bar."""

from __future__ import annotations

import sys
import time
from collections.abc import Generator, Sequence
from typing import Any

__all__ = ["PROG", "drive", "say"]

PROG = "emdiffuse"


def drive(gen: Generator, stages: Sequence[str] | None = None) -> Any:
    """Drive an engine generator with a tqdm bar on stderr; return its final item. ``stages``:
    those shown (default: sampling, blocks, training, files on workers and the passes over a
    whole volume)."""
    from tqdm import tqdm

    from .engine.events import VOLUME_STAGES, Progress, TimeLeft, duration

    stages = ("sampling", "block", "training", "files", "upload", *VOLUME_STAGES) if stages is None else stages

    bar = None
    result = None
    eta = TimeLeft(clock=lambda: time.monotonic())
    try:
        for ev in gen:
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
