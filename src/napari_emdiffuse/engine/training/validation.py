"""Scoring a run's held-out crops: the prediction each kind of model makes there, its PSNR
and SSIM in the model range, and the preview strip the widgets show.

Shared by :class:`~.trainer.Trainer` and the refiner's trainer, so that every validation
reports its figures the same way (data range 2: the model range [-1, 1]).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..core.losses import mean_var_loss, mse_loss
from ..core.metrics import psnr, ssim
from ..models.cards import ModelCard
from .config import TrainConfig
from .data.base import Batch
from .predictors import one_pass
from .selfsup import blind_spot, blind_spot_loss

__all__ = ["held_out_prediction", "mean_psnr", "mean_ssim", "preview", "sampler_name", "validation_metrics", "PSNR_AGAINST"]


def sampler_name(card: ModelCard, config: TrainConfig) -> str:
    """How validation restores the crops, in words (recorded in the model card)."""
    if card.kind != "diffusion":
        return "one pass"
    if card.start_log_snr is not None and card.fast_steps:
        return f"dpm++ {card.fast_steps} steps from the condition at log-SNR {card.start_log_snr:g} (fast preset)"
    return f"dpm++ {config.val_steps} steps from noise"


@torch.no_grad()
def held_out_prediction(
    net: torch.nn.Module, card: ModelCard, config: TrainConfig, vb: Batch
) -> tuple[torch.Tensor, torch.Tensor]:
    """(prediction, loss) of ``net`` (in eval mode) on the held-out batch ``vb``.

    Diffusion: a DPM-Solver++ restoration with the card's fast-preset settings when it starts
    from the condition, else ``val_steps`` from pure noise (as :func:`sampler_name` says), and
    the training loss at fixed noise levels. Self-supervised: the plain prediction, and the
    blind-spot loss at fixed hidden pixels. Otherwise the one-pass prediction and its loss.
    Draws come from generators seeded with ``config.seed``: every validation sees the same.
    """
    if card.kind == "diffusion":
        gen = torch.Generator().manual_seed(config.seed)
        gammas = net.sample_gammas(len(vb), generator=gen)
        noise = torch.randn(vb.target.shape, generator=gen).to(vb.target.device)
        loss = net(vb.target, vb.cond, vb.slice_index, noise=noise, gammas=gammas)
        steps = card.fast_steps if card.start_log_snr is not None and card.fast_steps else config.val_steps
        pred = net.restoration(
            vb.cond, sampler="dpm++", steps=steps, slice_index=vb.slice_index, generator=gen,
            start_log_snr=card.start_log_snr, log_snr_max=card.log_snr_max, factor=card.z_factor,
        )  # fmt: skip
        return pred, loss
    if config.objective == "self-supervised":
        masked, centres = blind_spot(vb.cond, generator=torch.Generator().manual_seed(config.seed))
        out = net(masked)
        loss = blind_spot_loss(out[0] if isinstance(out, tuple) else out, vb.target, centres)
        out = net(vb.cond)
        return (out[0] if isinstance(out, tuple) else out), loss
    out = one_pass(net, vb.cond, vb.slice_index)
    loss = mean_var_loss(vb.target, *out) if isinstance(out, tuple) else mse_loss(vb.target, out)
    return (out[0] if isinstance(out, tuple) else out), loss


def mean_psnr(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean over crops (axis 0) of the PSNR in the model range, each capped at 100 dB.

    Examples
    --------
    >>> t = np.zeros((2, 1, 8, 8)); round(mean_psnr(t + 0.02, t), 2)  # 10 log10(4 / 0.0004)
    40.0
    """
    return float(np.mean([min(psnr(pred[i], target[i], data_range=2.0), 100.0) for i in range(len(pred))]))


def mean_ssim(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean over crops of the SSIM in the model range: 2D for one plane, else the mean
    over a crop's planes (isotropic crops hold several)."""

    def planes(a: np.ndarray) -> np.ndarray:
        return a[0] if a.shape[0] == 1 else a

    return float(np.mean([ssim(planes(pred[i]), planes(target[i]), data_range=2.0) for i in range(len(pred))]))


#: What a run's validation PSNR compares with when there is no clean target (the card's
#: ``metrics.psnr_against``): such a score ranks a run's own weights, not their worth.
PSNR_AGAINST = {
    "self-supervised": "the noisy input at blind-spot pixels",
    "neighbour-slices": "the mean of the neighbouring noisy slices",
}


def validation_metrics(pred: np.ndarray, target: np.ndarray, loss: float, *, self_supervised: bool) -> dict[str, float]:
    """``psnr``, ``ssim`` and ``val_loss`` of one validation.

    Self-supervised runs have no clean target: the blind-spot error is the true error plus the
    noise variance, so the PSNR of that loss ranks models as the true PSNR would (not its value).

    Examples
    --------
    >>> t = np.zeros((2, 1, 8, 8))
    >>> validation_metrics(t + 0.02, t, 0.0004, self_supervised=False)["psnr"]  # from the crops
    40.0
    >>> validation_metrics(t + 0.02, t, 0.04, self_supervised=True)["psnr"]  # from the loss
    20.0
    """
    score = 10 * math.log10(4.0 / max(loss, 1e-10)) if self_supervised else mean_psnr(pred, target)
    return {"psnr": float(min(score, 100.0)), "ssim": mean_ssim(pred, target), "val_loss": float(loss)}


def preview(cond: np.ndarray, pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """First crop's condition, prediction and target side by side, as uint8 (model range)."""
    strip = np.concatenate([cond[0, 0], pred[0, 0], target[0, 0]], axis=1)
    return np.clip((strip + 1.0) * 127.5, 0, 255).astype(np.uint8)
