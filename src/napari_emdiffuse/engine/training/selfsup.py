"""Self-supervised denoising from noisy images alone: a structured blind spot.

Noise2Void / Noise2Self train a network to predict a pixel from its surroundings with the
pixel itself hidden: the noise of the hidden pixel cannot be predicted from the others, so
the best prediction is the clean value. That argument needs pixels whose noise is
independent of their neighbours'. The noise of a short-dwell SEM recording is not: the
detector's signal decays slower than the dwell time, so neighbouring pixels' noise correlates
by 0.4-0.5 (measured on the 4 us recording of ``pair_brain_4us``: 0.41 along x, 0.49 along y,
0.23 diagonally, 0.03 two pixels away). Hiding only the pixel lets the network read its noise
off the neighbours (Noise2Void trained on such an image learns to keep the noise, and leaves
a grid artifact).

The blind spot alone pulls a network trained on clean targets toward a blind-spot network,
which throws away what the hidden pixels still say about the signal. On the real SEM pair's
validation rows with its noise scaled x1.41 / x2, where the bundled model already fits the
noise, that lost 0.78 / 0.56 dB while the blind-spot score rose. So a fine-tune from a base
adds :func:`anchor_loss`: away from the hidden pixels, where the blind-spot loss says nothing,
the output stays at the base's. With weight 10 (``TrainConfig.anchor``, the fine-tune default)
and lr 5e-5, 200 iterations, the same runs gained 0.04 / 0.05 dB, liver_0 with simulated
correlated noise (dose 30) 0.09 and the bundled sample 0.04 (the blind spot alone at its best
lr, 1e-5: -0.78, -0.56, +0.05, 0.00; weight 3: +0.01, +0.03, +0.13, +0.05).

So the blind spot here is the whole 3x3 neighbourhood of each supervised pixel: every pixel
whose noise correlates with it. The 9 pixels are replaced by random pixels of the ring two
pixels away (noise nearly independent of the centre's), and the loss is the squared error
between the prediction and the noisy value at the centre only. We chose this
over Neighbor2Neighbor-style sub-sampling, which needs sub-images with independent noise: at
stride 2 the pairs are one pixel apart, exactly where the correlation is strongest.

We also chose it over re-noising the base model's own restoration: fit a noise model to the
input (variance by intensity, neighbour correlation per axis; calibrated by re-noising the
restoration and denoising it again until the residuals match) and train on (restoration +
fitted noise -> restoration). That gained more where the base does not fit (liver_0, dose 30,
correlated: +0.19 dB; inverted contrast: +0.14) but lost 0.25 dB on the real SEM pair's noise,
which the base learnt from and the fitted Gaussian noise only approximates. Its own validation
(pairs of the same kind) rose there all the same, and a SURE estimate with the fitted noise
model ranked base and fine-tune the wrong way round in both cases: nothing told the loss from
the gain without a clean image. The anchored blind spot never fell below the base.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["blind_spot", "blind_spot_loss", "anchor_loss", "DENSITY", "ANCHOR_REACH"]

#: Pixels within this many pixels of a supervised centre are left out of :func:`anchor_loss`:
#: the hidden 3x3 and the ring its values come from.
ANCHOR_REACH = 3

#: Fraction of pixels supervised per crop: few enough that the masked 3x3 patches (9x this)
#: change the input little, many enough for a useful gradient.
DENSITY = 0.01


def blind_spot(
    x: torch.Tensor, *, density: float = DENSITY, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hide the 3x3 neighbourhood of random pixels of ``x`` (B, C, H, W).

    Returns the masked input (hidden pixels replaced by random pixels of the ring two pixels
    away) and the float mask of the supervised centres (B, 1, H, W). Never modifies ``x``.

    Examples
    --------
    >>> x = torch.arange(256.0).view(1, 1, 16, 16)
    >>> masked, centres = blind_spot(x, density=0.05, generator=torch.Generator().manual_seed(0))
    >>> bool(centres.sum() >= 1) and masked.shape == x.shape
    True
    """
    b, c, h, w = x.shape
    u = torch.rand((b, 1, h, w), generator=generator).to(x.device)
    centres = (u < density).to(x.dtype)
    # Keep centres at least 3 px apart, so no 3x3 overlaps another and no ring reads a
    # pixel next to another centre.
    near = F.conv2d(centres, torch.ones(1, 1, 5, 5, dtype=x.dtype, device=x.device), padding=2)
    centres = centres * (near < 1.5)
    box = torch.ones(c, 1, 3, 3, dtype=x.dtype, device=x.device)
    hidden = F.conv2d(centres, box[:1], padding=1)  # 1 on the 3x3 around every centre
    # Each hidden pixel takes the value of a random pixel of its centre's ring (two pixels
    # from the centre: noise nearly independent of the centre's). Random, not the ring's mean:
    # the predictor adds its correction to the input pixel, so it must learn to discard what
    # it sees at the centre (which at inference is the noisy pixel itself), not to trust it.
    fill = torch.zeros_like(x)
    ring = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if max(abs(dy), abs(dx)) == 2]
    pad = F.pad(x, (4, 4, 4, 4), mode="reflect")
    for oy in (-1, 0, 1):
        for ox in (-1, 0, 1):
            # hidden pixel at centre + (oy, ox): a random ring pixel of that centre
            pick = torch.randint(len(ring), (b, 1, h, w), generator=generator).to(x.device)
            val = torch.zeros_like(x)
            for k, (dy, dx) in enumerate(ring):
                # value at centre + (dy, dx), placed at centre + (oy, ox)
                src = pad[:, :, 4 + dy - oy : 4 + dy - oy + h, 4 + dx - ox : 4 + dx - ox + w]
                val = torch.where(pick == k, src, val)
            shifted = F.pad(centres, (1, 1, 1, 1))[:, :, 1 - oy : 1 - oy + h, 1 - ox : 1 - ox + w]
            fill = fill + val * shifted
    masked = x * (1 - hidden) + fill
    return masked, centres


def blind_spot_loss(prediction: torch.Tensor, noisy: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the prediction and the noisy image at the centres only."""
    err = (prediction.float() - noisy.float()) ** 2 * centres
    return err.sum() / centres.sum().clamp_min(1.0) / prediction.shape[1]


def anchor_loss(prediction: torch.Tensor, reference: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between the prediction and a reference (the base model's output
    on the unmasked input) over the pixels farther than :data:`ANCHOR_REACH` from every centre.

    Examples
    --------
    >>> c = torch.zeros(1, 1, 16, 16); c[0, 0, 8, 8] = 1
    >>> ref = torch.zeros(1, 1, 16, 16)
    >>> near = ref.clone(); near[0, 0, 6:11, 6:11] = 5.0  # differs only next to the centre
    >>> float(anchor_loss(near, ref, c))
    0.0
    >>> far = ref.clone(); far[0, 0, 0, 0] = 3.0
    >>> round(float(anchor_loss(far, ref, c)) * (256 - 49), 4)
    9.0
    """
    k = 2 * ANCHOR_REACH + 1
    away = 1.0 - F.max_pool2d(centres, k, stride=1, padding=ANCHOR_REACH)
    err = (prediction.float() - reference.float()) ** 2 * away
    return err.sum() / away.sum().clamp_min(1.0) / prediction.shape[1]
