"""One-pass predictors in training: how the trainer calls them, and the factor that
calibrates their uncertainty on held-out crops."""

from __future__ import annotations

import torch

from .data.base import Batch

__all__ = ["one_pass", "calibrate_uncertainty"]


def one_pass(net: torch.nn.Module, cond: torch.Tensor, slice_index: torch.Tensor | None):
    """A predictor's output for ``cond``; a gap-depth predictor also gets the depths
    (``slice_index``, float) of the slices to make, a blur-conditioned one the crops'
    acquisition blur (None: its estimator reads it)."""
    if getattr(getattr(net, "module", net), "level_input", False):  # through a DDP wrapper too
        return net(cond, slice_index)
    return net(cond)


@torch.no_grad()
def calibrate_uncertainty(module: torch.nn.Module, batch: Batch, coverage: float = 0.95) -> float:
    """Factor on a predictor's aleatoric std so that +-1.96 std covers ``coverage`` of its
    errors on ``batch`` (held-out crops): a head fitted on training crops is over-confident
    on data it has not seen, and one number fixes most of it.

    Examples
    --------
    >>> class Net(torch.nn.Module):
    ...     def forward(self, x):
    ...         return x, torch.zeros_like(x)  # claims std 1
    >>> b = Batch(cond=torch.zeros(1, 1, 64, 64), target=torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(0)) * 3)
    >>> round(calibrate_uncertainty(Net(), b), 1)  # the errors have std 3
    3.0
    """
    device = next(module.parameters(), torch.zeros(())).device
    was = module.training
    module.eval()
    si = None if batch.slice_index is None else batch.slice_index.to(device)
    mean, logvar = one_pass(module, batch.cond.to(device), si)
    module.train(was)
    z = ((mean.float() - batch.target.to(device).float()).abs() / torch.exp(0.5 * logvar.float())).flatten()
    return float(torch.quantile(z.cpu(), coverage) / 1.96)
