"""The acquisition blur of a low-resolution image, and a small network that reads it.

How a low-resolution image was made decides how much a super-resolution network should
sharpen: a detector that integrates over each pixel (an area mean) leaves more detail than
a scan whose beam probe is wider than a high-resolution pixel, and a sharp point sample
leaves aliasing. One network trained on all of them deblurs by an average amount and loses
to bicubic on some. So a blur-conditioned predictor is told the blur, as the level its
embedding sees, and :class:`BlurEstimator` reads it off the image when the user does not
know it.

The blur is the width (standard deviation, high-resolution pixels) of the Gaussian probe
before point sampling at the block centres. An area mean counts as :func:`area_blur`: the
Gaussian with the same response at the new Nyquist frequency.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["BLUR_MAX", "READ_FLOOR", "READ_SCALE", "BlurEstimator", "area_blur", "blur_estimator_loss"]

#: The widest probe (high-resolution pixels) the estimator reports: beyond it the image has
#: no detail left near the new Nyquist limit to tell one width from another.
BLUR_MAX = 2.0
#: What a reading gives away: the network is told this share of the estimate, because
#: telling it too wide a probe makes it sharpen what is not there, which costs far more than
#: too narrow a one (demo-sr2 on unseen images: +0.2 px -1.3 to -1.9 dB, -0.2 px 0 to -0.7
#: dB), and the estimate errs wide on content it has not seen by an amount that grows with
#: the width (FIB-SEM liver: about 0 px on area means, 0.2 px at probes of 1-1.4 px). Mean
#: PSNR of demo-sr2 over 36 cases of six unseen images (area, probes of 0.5-1.5 px, noisy),
#: told the estimate less 0.1 / 0.15 / 0.2 px: 33.34 / 33.38 / 33.38 dB; times 0.8 / 0.85 /
#: 0.9: 33.39 / 33.41 / 33.38.
READ_SCALE = 0.85
#: The narrowest probe a reading tells. Noise reads as detail, so noisy images read as sharp
#: point samples (ISBI 2012 and C. elegans sections, area means: 0), which no real scan is; told
#: 0.3 instead they restore 0.18-0.20 dB better, while true point samples lose 0.07-0.11 dB.
READ_FLOOR = 0.3

def area_blur(scale: int) -> float:
    """The probe width that stands for a ``scale`` x ``scale`` area mean.

    Integrating the scene over a box of ``scale`` pixels passes ``2 / pi`` of the amplitude
    at the new Nyquist frequency ``1 / (2 scale)``; a Gaussian of width ``0.30 scale`` passes
    the same. (The estimator, trained on both, reads area means and centred Gaussian samples
    of this width alike.)

    Examples
    --------
    >>> round(area_blur(2), 3)
    0.605
    """
    return scale * math.sqrt(-math.log(2 / math.pi) * 2) / math.pi


#: Widths (output pixels) of the Gaussians whose differences split the image into bands.
BANDS = (0.7, 1.4, 2.8, 5.6)


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    r = max(1, math.ceil(3 * sigma))
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


class BlurEstimator(nn.Module):
    """Reads the acquisition blur from a super-resolution condition (the normalised
    low-resolution image upsampled to the output grid), one value per image in the batch.

    A blur shows in how fast the image's energy falls from band to band towards the Nyquist
    limit. So the input is split into band-pass images (differences of Gaussians of
    :data:`BANDS`), whose local log-energies (over ``window`` pixels) a small per-pixel
    network maps to a width; the answers are averaged over the image, so a whole image
    gives a steadier value than a crop. The band split is fixed, not learnt: it makes the
    estimator learn in a few hundred steps where a plain CNN learns in thousands.

    Examples
    --------
    >>> est = BlurEstimator(width=8)
    >>> est(torch.zeros(3, 1, 32, 32)).shape
    torch.Size([3])
    """

    def __init__(self, width: int = 32, window: int = 8) -> None:
        super().__init__()
        self.window = window
        for i, sigma in enumerate(BANDS):
            self.register_buffer(f"_g{i}", _gaussian_kernel(sigma), persistent=False)
        n = len(BANDS) + 1  # the bands, and what lies below the last
        self.head = nn.Sequential(
            nn.Conv2d(n, width, 1), nn.GELU(), nn.Conv2d(width, width, 1), nn.GELU(), nn.Conv2d(width, 1, 1)
        )
        with torch.no_grad():
            self.head[-1].bias.fill_(0.8)  # start mid-range

    def _smooth(self, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        r = k.numel() // 2
        x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
        return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))

    def features(self, cond: torch.Tensor) -> torch.Tensor:
        """Local log-energy of each band, (B, len(BANDS) + 1, H / window, W / window)."""
        x = cond.float()
        smooth = [x] + [self._smooth(x, getattr(self, f"_g{i}")) for i in range(len(BANDS))]
        bands = [a - b for a, b in zip(smooth[:-1], smooth[1:])] + [smooth[-1] - smooth[-1].mean((2, 3), True)]
        energy = F.avg_pool2d(torch.cat(bands, 1) ** 2, self.window, ceil_mode=True)
        return torch.log(energy + 1e-6)

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        """The estimate, unclamped (what training fits; :meth:`read` is what to tell a network)."""
        return self.head(self.features(cond)).mean(dim=(1, 2, 3))

    @torch.no_grad()
    def read(self, cond: torch.Tensor) -> torch.Tensor:
        """The blur to tell a network: :data:`READ_SCALE` times the estimate, within
        [:data:`READ_FLOOR`, :data:`BLUR_MAX`]."""
        return (self(cond) * READ_SCALE).clamp(READ_FLOOR, BLUR_MAX)


def blur_estimator_loss(
    estimator: BlurEstimator, cond: torch.Tensor, blur: torch.Tensor, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Robust regression loss of the estimator on crops whose blur is known.

    Half of the crops are inverted, so that inverted-contrast images are read the same. No
    noise is added: noise reads as detail, and an estimator taught that noisy crops have
    their true blur reads clean images wider than they are (unseen clean images, 5 blurs
    each: on average 0.23 px too wide with white noise up to 0.1 on half of the crops, 0.14
    without), where too wide a reading costs far more than too narrow a one. Noisy images
    then read narrower, and are sharpened less. The estimator's input is detached, so this
    loss trains the estimator alone.

    Examples
    --------
    >>> est = BlurEstimator(width=8)
    >>> loss = blur_estimator_loss(est, torch.randn(4, 1, 32, 32), torch.full((4,), 0.6))
    >>> loss.ndim, bool(loss >= 0)
    (0, True)
    """
    x = cond.detach().float()
    sign = torch.where(torch.rand((x.shape[0], 1, 1, 1), generator=generator) < 0.5, -1.0, 1.0).to(x.device)
    return F.smooth_l1_loss(estimator(x * sign), blur.to(x.device, torch.float32).reshape(-1), beta=0.1)
