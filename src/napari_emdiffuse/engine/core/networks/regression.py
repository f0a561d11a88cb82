"""Plain regression UNet: one forward pass, no diffusion.

The predictor of the predict-then-refine models. It reuses the diffusion UNet's body with
the noise level fixed at 1 (no noise), so the same architecture configs and speed options
apply.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blur import BLUR_MAX, BlurEstimator
from .unet import UNet

__all__ = ["RegressionUNet", "RegressionUNetStd", "SuperResolutionUNet", "residual_base"]


def residual_base(x: torch.Tensor, out_channel: int, depth: torch.Tensor | None = None) -> torch.Tensor:
    """The classical answer a residual predictor corrects, (B, out_channel, H, W).

    One condition channel: the condition itself (a noisy image, or a low-resolution image
    already upsampled). Two (the measured slices below and above a gap): output channel
    ``j`` is the linear interpolation at depth ``(j + 1) / (out_channel + 1)``, or, with
    ``depth`` (B,) given, the one channel at that depth.

    Examples
    --------
    >>> x = torch.stack([torch.zeros(2, 2), torch.full((2, 2), 3.0)])[None]
    >>> residual_base(x, 2)[0, :, 0, 0].tolist()
    [1.0, 2.0]
    """
    if x.shape[1] == 1:
        return x.expand(-1, out_channel, -1, -1)
    if x.shape[1] == 2 and depth is not None:
        w = depth.to(x.device, x.dtype).reshape(-1, 1, 1, 1)
        return (1 - w) * x[:, :1] + w * x[:, 1:2]
    if x.shape[1] == 2:
        w = torch.arange(1, out_channel + 1, dtype=x.dtype, device=x.device) / (out_channel + 1)
        w = w.view(1, -1, 1, 1)
        return (1 - w) * x[:, :1] + w * x[:, 1:2]
    raise ValueError(f"a residual predictor takes 1 or 2 condition channels, not {x.shape[1]}")


class RegressionUNet(nn.Module):
    """Predicts the clean image from the degraded one in a single pass.

    Parameters are those of :class:`UNet` except that ``in_channel`` counts only the
    condition channels. With ``aleatoric=True`` it also returns a per-pixel log-variance.
    With ``residual=True`` the network's output is added to :func:`residual_base`. With
    ``gap_depth=True`` (isotropic, 2 slices in, 1 out) ``forward(x, depth)`` makes the slice at
    ``depth`` (B,) in (0, 1) of the gap: the depth takes the place of the noise level in the
    UNet's embedding, so one network serves every factor. With ``blur_level=True``
    (super-resolution) ``forward(x, blur)`` gets the acquisition blur the same way (see
    :mod:`.blur`); without ``blur`` its own :class:`~.blur.BlurEstimator` reads it from each
    item of ``x``.
    """

    def __init__(
        self, in_channel: int = 1, out_channel: int = 1, *, residual: bool = False, gap_depth: bool = False,
        blur_level: bool = False, **unet_kwargs,
    ) -> None:
        super().__init__()
        unet_kwargs.pop("slice_embedding", None)
        self.net = UNet(in_channel, out_channel, **unet_kwargs)
        self.in_channel, self.out_channel = in_channel, out_channel
        self.aleatoric = self.net.aleatoric
        self.residual = residual
        self.gap_depth = gap_depth
        if residual and in_channel not in (1, 2):
            raise ValueError(f"a residual predictor takes 1 or 2 condition channels, not {in_channel}")
        if gap_depth and (in_channel, out_channel) != (2, 1):
            raise ValueError("a gap-depth predictor takes 2 slices and makes 1")
        if blur_level and (gap_depth or (in_channel, out_channel) != (1, 1)):
            raise ValueError("a blur-conditioned predictor takes 1 image and makes 1")
        self.blur_level = blur_level
        if blur_level:
            self.blur_estimator = BlurEstimator()

    @property
    def level_input(self) -> bool:
        """Whether ``forward`` takes a level (a gap depth or an acquisition blur)."""
        return self.gap_depth or self.blur_level

    @property
    def size_multiple(self) -> int:
        return self.net.size_multiple

    def forward(self, x: torch.Tensor, level: torch.Tensor | None = None):
        """``level`` (B,) or scalar: the depth in the gap (gap-depth predictors) or the
        acquisition blur (blur-conditioned ones; None: estimated per item)."""
        depth = None
        if self.gap_depth:
            if level is None:
                raise ValueError("a gap-depth predictor needs the depth of the slice to make")
            depth = level
        elif self.blur_level and level is None:
            level = self.blur_estimator.read(x)
        elif not self.blur_level:
            level = None
        if level is None:
            level = torch.ones(x.shape[0], device=x.device)
        level = torch.as_tensor(level).reshape(-1).to(x.device, torch.float32).expand(x.shape[0])
        if self.blur_level:
            level = level.clamp(0.0, BLUR_MAX)
        out = self.net(x, level)
        if not self.residual:
            return out
        base = residual_base(x.float(), self.out_channel, depth)
        if isinstance(out, tuple):
            return out[0] + base, out[1]
        return out + base


class RegressionUNetStd(RegressionUNet):
    """A predictor that returns its uncertainty as a standard deviation: ``(mean, std)``
    with ``std = std_scale * exp(log_var / 2)``.

    The same weights as :class:`RegressionUNet` (same state-dict keys); the form exported to
    bioimage.io, whose consumers expect an uncertainty map, not a log-variance.
    """

    def __init__(self, in_channel: int = 1, out_channel: int = 1, *, std_scale: float = 1.0, **kwargs) -> None:
        super().__init__(in_channel, out_channel, **kwargs)
        if not self.aleatoric:
            raise ValueError("RegressionUNetStd needs aleatoric=True")
        self.std_scale = float(std_scale)

    def forward(self, x: torch.Tensor, level: torch.Tensor | None = None):
        mean, log_var = super().forward(x, level)
        return mean, self.std_scale * torch.exp(0.5 * log_var)


class SuperResolutionUNet(RegressionUNet):
    """A super-resolution predictor that takes the low-resolution image itself: it upsamples
    ``x`` (bicubic, ``scale`` times, as inference does) before the network, and returns
    ``mean`` or, for an aleatoric network, ``(mean, std)`` with ``std = std_scale *
    exp(log_var / 2)``.

    The same weights as :class:`RegressionUNet` (same state-dict keys); the form exported to
    bioimage.io, whose consumers run one network call on the image as given. ``blur`` fixes
    the acquisition blur a blur-conditioned network is told; None lets its estimator read it
    off each item of ``x``.

    Examples
    --------
    >>> net = SuperResolutionUNet(inner_channel=8, channel_mults=[1], attn_res=[], num_head_channels=8,
    ...                           residual=True, scale=2)
    >>> net(torch.zeros(1, 1, 8, 8)).shape
    torch.Size([1, 1, 16, 16])
    """

    def __init__(self, in_channel: int = 1, out_channel: int = 1, *, scale: int = 2, blur: float | None = None,
                 std_scale: float = 1.0, **kwargs) -> None:
        super().__init__(in_channel, out_channel, **kwargs)
        if int(scale) != scale or scale < 2:
            raise ValueError(f"scale must be an integer of at least 2, got {scale}")
        if blur is not None and not self.blur_level:
            raise ValueError("only a blur-conditioned predictor is told the acquisition blur")
        if blur is not None and not 0.0 <= blur <= BLUR_MAX:
            raise ValueError(f"blur must be between 0 and {BLUR_MAX:g} pixels, got {blur}")
        self.scale, self.blur, self.std_scale = int(scale), blur, float(std_scale)

    def forward(self, x: torch.Tensor, level: torch.Tensor | None = None):
        up = F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)
        out = super().forward(up, self.blur if level is None and self.blur is not None else level)
        if isinstance(out, tuple):
            return out[0], self.std_scale * torch.exp(0.5 * out[1])
        return out


class GapSlicesUNet(RegressionUNet):
    """A gap-depth isotropic predictor at one ``factor``: from two neighbouring slices (the two
    channels of ``x``) the ``factor - 1`` slices between them, in order, as channels, in one
    call (a pass per slice inside it, at depths ``j / factor``); ``(mean, std)`` for an
    aleatoric network, with ``std = std_scale * exp(log_var / 2)``.

    The same weights as :class:`RegressionUNet` with ``gap_depth=True`` (same state-dict
    keys); the form exported to bioimage.io for one factor, whose consumers run one call.

    Examples
    --------
    >>> net = GapSlicesUNet(inner_channel=8, channel_mults=[1], attn_res=[], num_head_channels=8,
    ...                     residual=True, factor=4)
    >>> net(torch.zeros(1, 2, 8, 8)).shape
    torch.Size([1, 3, 8, 8])
    """

    def __init__(self, in_channel: int = 2, out_channel: int = 1, *, factor: int, std_scale: float = 1.0,
                 **kwargs) -> None:
        kwargs["gap_depth"] = True
        super().__init__(in_channel, out_channel, **kwargs)
        if int(factor) != factor or factor < 2:
            raise ValueError(f"factor must be an integer of at least 2, got {factor}")
        self.factor, self.std_scale = int(factor), float(std_scale)

    def forward(self, x: torch.Tensor, level: torch.Tensor | None = None):
        outs = [super(GapSlicesUNet, self).forward(x, torch.full((x.shape[0],), j / self.factor, device=x.device))
                for j in range(1, self.factor)]  # fmt: skip
        if not isinstance(outs[0], tuple):
            return torch.cat(outs, dim=1)
        mean = torch.cat([o[0] for o in outs], dim=1)
        return mean, self.std_scale * torch.exp(0.5 * torch.cat([o[1] for o in outs], dim=1))
