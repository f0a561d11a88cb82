"""Where a one-pass predictor errs that its aleatoric head does not see: the image's curvature.

A predictor's aleatoric head learns the average error at each kind of place, and a predictor
errs most where the image curves (membranes, edges, organelle boundaries): there it underrates
its error. :func:`with_structure` adds two terms, both computed from the restored mean, so that
an uncertainty map is not blind to those places:

* a **structure term** in quadrature (``ModelCard.uncertainty_structure``): the squared
  Laplacian of the output smoothed by :data:`STRUCTURE_SIGMA`. On the real SEM pair's held-out
  rows, weight 1 raised the rank correlation of uncertainty and error over 32-px tiles from 0.50
  to 0.57 (0.34 to 0.39 on the 256 crop) and the coverage of +-2 std from 92.6 % to 95.7 %.
* a **tail factor** (``ModelCard.uncertainty_tail``): the largest errors, those of the worst
  1 % of pixels, sit at the sharpest curvature, and the quadrature term, tuned for the tiles'
  ranking, raised them only to 1.06-1.29x the median uncertainty (issue #12 asks 1.2x). So the
  std is multiplied by ``1 + tail * min(|LoG| / TAIL_CURVATURE, TAIL_CAP)**2``: about 1 where
  the image is smooth, up to ``1 + tail * TAIL_CAP**2`` at its sharpest places. The Laplacian is
  taken in the model's range (the input's percentiles at +-1), so ``TAIL_CURVATURE`` (:mod:`~..models.cards`) is one
  number for every image (about the 99th percentile of ``|LoG|`` on real EM: 0.08-0.26), and a
  block of a large image gets what the whole image run gives it. On ``benchmarks/quality.py``'s
  16 denoising rows (balanced), tail 1 brought the worst 1 %'s mean from 1.06-1.29x to
  1.18-1.85x the median (1.2x or more on 15 rows instead of 2) and left the coverage at 95.9-99.2 %
  and the tiles' rank correlation at 0.46 on average (0.48 before).

Both terms scale with the intensity, so their weights are unitless.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter, laplace

from ..models.cards import TAIL_CAP, TAIL_CURVATURE

__all__ = ["with_structure", "STRUCTURE_SIGMA"]

#: Width (output pixels) of the Laplacian of Gaussian in :func:`with_structure`.
STRUCTURE_SIGMA = 1.0


def with_structure(mean: np.ndarray, std: np.ndarray, weight: float, *, tail: float = 0.0) -> np.ndarray:
    """``std`` (H, W) with the structure term (``weight``) added in quadrature, then multiplied
    by the tail factor (``tail``; module docstring). ``mean`` is in the model's range.

    Examples
    --------
    >>> mean = np.zeros((9, 9)); mean[4, 4] = 1.0
    >>> std = np.full((9, 9), 0.1, np.float32)
    >>> out = with_structure(mean, std, 1.0)
    >>> bool(out[4, 4] > out[0, 0] >= 0.1)
    True
    >>> bool(np.array_equal(with_structure(mean, std, 0.0), std))
    True
    >>> tailed = with_structure(mean, std, 1.0, tail=1.0)
    >>> bool(tailed[4, 4] / out[4, 4] > 2 and np.isclose(tailed[0, 0], out[0, 0], rtol=1e-3))
    True
    """
    if weight <= 0 and tail <= 0:
        return std
    # Gaussian, then the 3x3 discrete Laplacian: exactly 0 on constants, so the terms do not
    # depend on the intensity offset
    lap = laplace(gaussian_filter(np.asarray(mean, np.float64), STRUCTURE_SIGMA, mode="reflect"), mode="reflect")
    out = np.sqrt(np.asarray(std, np.float64) ** 2 + max(weight, 0.0) * lap**2)
    if tail > 0:
        out *= 1.0 + tail * np.minimum(np.abs(lap) / TAIL_CURVATURE, TAIL_CAP) ** 2
    return out.astype(np.float32)
