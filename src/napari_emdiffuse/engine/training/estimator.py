"""Fitting a blur-conditioned super-resolution model's estimator (core.networks.blur).

The estimator is a small network with a fixed band split; it learns from the training
crops, whose blur is known, in a few thousand cheap steps. It fits alone, after the
predictor has trained (the predictor is told the true blur of each crop meanwhile), so it
costs one pass of its own and stays out of the predictor's optimiser and of DDP.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator

import numpy as np
import torch

from ..core.networks.blur import BlurEstimator, blur_estimator_loss
from ..events import Progress
from ..inference.normalise import read_blur
from ..models.cards import ModelCard
from .data.base import TrainingData, fit_rule

__all__ = ["fit_estimator", "blur_reader"]


def fit_estimator(
    estimator: BlurEstimator,
    data: TrainingData,
    *,
    iterations: int,
    batch: int = 16,
    lr: float = 2e-3,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> Generator[Progress, None, float | None]:
    """Fit ``estimator`` on ``data``'s crops of known blur (their ``slice_index``), cosine
    learning rate from ``lr``; yields progress every 100 steps and returns the mean loss of
    the last 100 steps (None when the crops carry no blur, e.g. recorded pairs).

    Examples
    --------
    >>> from napari_emdiffuse.engine.training.data.pairs import sr_data
    >>> from napari_emdiffuse.engine.models.cards import Normalisation
    >>> img = np.random.default_rng(0).random((96, 96))
    >>> data = sr_data([img], scale=2, rule=Normalisation(), patch=32, downsampling=["area", "gaussian"], levels=True)
    >>> from napari_emdiffuse.engine.events import drain
    >>> loss = drain(fit_estimator(BlurEstimator(width=8), data, iterations=3, batch=2))
    >>> loss is not None and loss >= 0
    True
    """
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    # Noise reads as detail: an estimator taught that noisy crops have their true blur reads
    # clean images too wide (on unseen ones by 0.23 px on average, against 0.14 without).
    data = data.without_input_noise()
    estimator.to(device).train()
    for p in estimator.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(estimator.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, iterations) / iterations)))
    recent: list[float] = []
    try:
        for i in range(1, iterations + 1):
            b = data.sample(rng, batch)
            if b.slice_index is None:
                return None
            loss = blur_estimator_loss(estimator, b.cond.to(device), b.slice_index, generator=gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            recent = (recent + [float(loss.detach())])[-100:]
            if i % 100 == 0 or i == iterations:
                yield Progress("estimator", i, iterations, loss=recent[-1],
                               message=f"blur estimator: loss {np.mean(recent):.4f}")
    finally:
        estimator.eval()
        for p in estimator.parameters():
            p.requires_grad_(False)
    return float(np.mean(recent)) if recent else None


def blur_reader(net: torch.nn.Module, card: ModelCard) -> Callable[[np.ndarray], float] | None:
    """What a recorded low-resolution input (2D, or a stack: its middle slice) is told, read
    off the whole image as inference reads it; None for a network without an estimator."""
    est = getattr(net, "blur_estimator", None)
    if est is None:
        return None

    def read(image: np.ndarray) -> float:
        plane = image[image.shape[0] // 2] if image.ndim == 3 else image
        return read_blur(est, plane, fit_rule(image, card.normalisation), card.scale, torch.device("cpu"))

    return read
