"""Typed progress events yielded by every long-running engine generator.

The CLI turns them into a tqdm bar, the widgets into napari progress bars and plots, and
tests into lists. Closing the generator cancels the work at the next step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Progress"]


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
