"""Training losses of the method (names kept from the original code).

All losses take ``(target, prediction)`` in that order and return a scalar tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["mse_loss", "l1_loss", "mse_var_loss", "mean_var_loss", "pin_loss", "PinballLoss", "FocalLoss", "LOSSES"]


def mse_loss(target: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """Mean squared error (the diffusion noise-prediction loss)."""
    return F.mse_loss(output.float(), target.float())


def l1_loss(target: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """Mean absolute error."""
    return F.l1_loss(output.float(), target.float())


def mse_var_loss(target: torch.Tensor, output: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """Heteroscedastic Gaussian negative log-likelihood (up to a constant).

    ``exp(-log_var) * (output - target)^2 + log_var``, averaged: the aleatoric head learns
    a large variance where the target cannot be predicted. ``log_var`` is clamped to
    [-10, 10] so a confident wrong pixel cannot blow the loss up.
    """
    log_var = log_var.float().clamp(-10.0, 10.0)
    return torch.mean(torch.exp(-log_var) * (output.float() - target.float()) ** 2 + log_var)


def mean_var_loss(
    target: torch.Tensor, output: torch.Tensor, log_var: torch.Tensor, weight: float = 0.01
) -> torch.Tensor:
    """Mean squared error of the mean plus the Gaussian NLL of the variance, decoupled.

    The variance term sees the mean detached, so a pixel the head calls uncertain is not
    given less weight when fitting the mean (as in :func:`mse_var_loss`): the mean stays the
    MSE-optimal estimate and the variance learns the squared error around it. The NLL's
    gradient is O(1) per pixel while the MSE's is twice the error (a few hundredths), so in
    the shared layers the NLL would drown the mean's signal: ``weight`` scales it down
    (the variance head's own weights are unaffected: Adam normalises their step).

    Examples
    --------
    >>> t = torch.zeros(1, 1, 4, 4); m = torch.full_like(t, 0.5)
    >>> round(float(mean_var_loss(t, m, torch.log(torch.full_like(t, 0.25)), weight=1.0)), 4)  # 0.25 + 1 + ln 0.25
    -0.1363
    """
    mse = F.mse_loss(output.float(), target.float())
    return mse + weight * mse_var_loss(target, output.detach(), log_var)


def pin_loss(target: torch.Tensor, output: torch.Tensor, quantile: float = 0.5) -> torch.Tensor:
    """Pinball (quantile) loss for one quantile in (0, 1)."""
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must lie in (0, 1), got {quantile}")
    err = target.float() - output.float()
    return torch.mean(torch.maximum(quantile * err, (quantile - 1.0) * err))


class PinballLoss(nn.Module):
    """Quantile loss over several quantiles; ``output`` has one channel per quantile."""

    def __init__(self, quantiles: Sequence[float] = (0.1, 0.5, 0.9)) -> None:
        super().__init__()
        if not quantiles or any(not 0.0 < q < 1.0 for q in quantiles):
            raise ValueError(f"quantiles must lie in (0, 1), got {list(quantiles)}")
        self.quantiles = tuple(float(q) for q in quantiles)

    def forward(self, target: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        if output.shape[1] != len(self.quantiles):
            raise ValueError(
                f"output has {output.shape[1]} channels but {len(self.quantiles)} quantiles were given"
            )
        return sum(
            pin_loss(target, output[:, i : i + 1], q) for i, q in enumerate(self.quantiles)
        ) / len(self.quantiles)


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017) for binary targets in [0, 1] and logits.

    Down-weights easy pixels: ``-alpha (1 - p_t)^gamma log(p_t)``.
    """

    def __init__(self, gamma: float = 2.0, alpha: float | None = 0.25, reduction: str = "mean") -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be mean, sum or none, got {reduction!r}")
        self.gamma, self.alpha, self.reduction = gamma, alpha, reduction

    def forward(self, target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        target = target.float()
        logits = logits.float()
        ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        p = torch.sigmoid(logits)
        p_t = p * target + (1 - p) * (1 - target)
        loss = ce * (1 - p_t) ** self.gamma
        if self.alpha is not None:
            loss = loss * (self.alpha * target + (1 - self.alpha) * (1 - target))
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss


LOSSES = {
    "mse_loss": mse_loss,
    "mse": mse_loss,
    "l1_loss": l1_loss,
    "l1": l1_loss,
    "mse_var_loss": mse_var_loss,
    "mean_var_loss": mean_var_loss,
    "pin_loss": pin_loss,
    "PinballLoss": PinballLoss,
    "FocalLoss": FocalLoss,
}
