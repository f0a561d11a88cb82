"""Plain regression UNet: one forward pass, no diffusion.

A baseline and a fast mode. It reuses the diffusion UNet's body with the noise level fixed
at 1 (no noise), so the same architecture configs and speed options apply.
"""

from __future__ import annotations

import torch
from torch import nn

from .unet import UNet

__all__ = ["RegressionUNet"]


class RegressionUNet(nn.Module):
    """Predicts the clean image from the degraded one in a single pass.

    Parameters are those of :class:`UNet` except that ``in_channel`` counts only the
    condition channels. With ``aleatoric=True`` it also returns a per-pixel log-variance.
    """

    def __init__(self, in_channel: int = 1, out_channel: int = 1, **unet_kwargs) -> None:
        super().__init__()
        unet_kwargs.pop("slice_embedding", None)
        self.net = UNet(in_channel, out_channel, **unet_kwargs)
        self.in_channel, self.out_channel = in_channel, out_channel
        self.aleatoric = self.net.aleatoric

    @property
    def size_multiple(self) -> int:
        return self.net.size_multiple

    def forward(self, x: torch.Tensor):
        level = torch.ones(x.shape[0], device=x.device)
        return self.net(x, level)
