"""Image-quality metrics for evaluating restorations.

All image metrics take numpy arrays of any real dtype, compute in float64 and return a
Python float; inputs are never modified. ``data_range`` is always explicit: inferring it
from the dtype would make a float image in [0, 1] and the same image in [0, 255] score
differently, and silently.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from skimage.metrics import structural_similarity

from ..errors import EMDiffuseError, InputError

__all__ = [
    "mae",
    "psnr",
    "ssim",
    "extreme_bias",
    "uncertainty_calibration",
    "frc_curve",
    "frc_resolution",
    "inception_score",
    "METRICS",
]


def _as_float(image: Any, name: str) -> np.ndarray:
    """A float64 copy of a real-valued array (a copy, so the caller's array stays untouched)."""
    arr = np.asarray(image)
    if arr.dtype.kind not in "biuf":
        raise InputError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    return arr.astype(np.float64, copy=True)


def _pair(image: Any, reference: Any) -> tuple[np.ndarray, np.ndarray]:
    a = _as_float(image, "image")
    b = _as_float(reference, "reference")
    if a.shape != b.shape:
        raise InputError(f"image and reference shapes differ: {a.shape} vs {b.shape}")
    if a.size == 0:
        raise InputError("image is empty")
    return a, b


def _check_range(data_range: float) -> float:
    data_range = float(data_range)
    if not math.isfinite(data_range) or data_range <= 0:
        raise InputError(f"data_range must be a positive number, got {data_range}")
    return data_range


def mae(image: np.ndarray, reference: np.ndarray) -> float:
    """Mean absolute error between an image and its reference.

    Parameters
    ----------
    image, reference : ndarray
        Arrays of the same shape and any real dtype.

    Returns
    -------
    float
        ``mean(|image - reference|)`` in the units of the images.

    Examples
    --------
    >>> import numpy as np
    >>> mae(np.array([0, 2, 4], dtype=np.uint8), np.array([1, 0, 1], dtype=np.uint8))
    2.0
    """
    a, b = _pair(image, reference)
    return float(np.mean(np.abs(a - b)))


def psnr(image: np.ndarray, reference: np.ndarray, *, data_range: float) -> float:
    """Peak signal-to-noise ratio in dB: ``10 log10(data_range^2 / MSE)``.

    Parameters
    ----------
    image, reference : ndarray
        Arrays of the same shape and any real dtype.
    data_range : float
        Span of possible values (e.g. 255 for 8-bit data, 1 for images scaled to [0, 1]).
        Required: it is never guessed from the dtype.

    Returns
    -------
    float
        PSNR in dB; ``inf`` for identical images.

    Examples
    --------
    >>> import numpy as np
    >>> ref = np.zeros((8, 8))
    >>> round(psnr(ref + 0.1, ref, data_range=1.0), 6)  # MSE = 0.01
    20.0
    """
    a, b = _pair(image, reference)
    data_range = _check_range(data_range)
    err = float(np.mean((a - b) ** 2))
    if err == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / err)


def extreme_bias(image: np.ndarray, reference: np.ndarray, *, fraction: float = 0.01) -> tuple[float, float]:
    """Mean signed error at the reference's darkest and brightest pixels.

    Membranes and dense organelles are the darkest pixels of an EM image and what users look
    at; a restoration that lifts them toward the mean loses little PSNR but much contrast.
    PSNR does not show that bias, this does.

    Parameters
    ----------
    image, reference : ndarray
        Arrays of the same shape and any real dtype.
    fraction : float, optional
        Share of the reference's pixels at each end, in (0, 0.5]; default the 1 %.

    Returns
    -------
    (dark, bright) : tuple of float
        ``mean(image - reference)`` over the reference's ``fraction`` darkest pixels and over
        its ``fraction`` brightest, in the units of the images: positive means too bright.

    Examples
    --------
    >>> import numpy as np
    >>> ref = np.arange(100.0)
    >>> extreme_bias(ref + np.where(ref < 5, 3.0, 0.0), ref, fraction=0.05)
    (3.0, 0.0)
    """
    a, b = _pair(image, reference)
    fraction = float(fraction)
    if not 0.0 < fraction <= 0.5:
        raise InputError(f"fraction must be in (0, 0.5], got {fraction}")
    err, ref = (a - b).ravel(), b.ravel()
    k = max(1, int(round(fraction * ref.size)))
    # A stable sort ranks ties by position, so equal reference values split deterministically.
    order = np.argsort(ref, kind="stable")
    return float(err[order[:k]].mean()), float(err[order[-k:]].mean())


def ssim(
    image: np.ndarray,
    reference: np.ndarray,
    *,
    data_range: float,
    win_size: int = 7,
    gaussian: bool = False,
) -> float:
    """Mean structural similarity (Wang et al. 2004) of a 2D image or a 3D stack.

    Parameters
    ----------
    image, reference : ndarray
        2D images ``(Y, X)`` or stacks ``(Z, Y, X)`` of the same shape; a stack scores the
        mean of its per-slice (2D) SSIMs.
    data_range : float
        Span of possible values; required, never guessed from the dtype.
    win_size : int, optional
        Odd side of the uniform window. Ignored when ``gaussian`` is True.
    gaussian : bool, optional
        Use the Gaussian-weighted 11-tap window (sigma 1.5) and population covariances of
        the original paper instead of a uniform window with sample covariances.

    Returns
    -------
    float
        SSIM in [-1, 1]; 1 for identical images.

    Examples
    --------
    >>> import numpy as np
    >>> ref = np.random.default_rng(0).random((32, 32))
    >>> ssim(ref, ref, data_range=1.0)
    1.0
    """
    a, b = _pair(image, reference)
    data_range = _check_range(data_range)
    if a.ndim not in (2, 3):
        raise InputError(f"ssim needs a 2D image or a 3D stack, got {a.ndim} dimensions")
    if gaussian:
        kwargs: dict[str, Any] = {
            "win_size": None,
            "gaussian_weights": True,
            "sigma": 1.5,
            "use_sample_covariance": False,
        }
        needed = 11
    else:
        if win_size < 3 or win_size % 2 == 0:
            raise InputError(f"win_size must be an odd number of at least 3, got {win_size}")
        kwargs = {"win_size": int(win_size)}
        needed = int(win_size)
    if min(a.shape[-2:]) < needed:
        raise InputError(
            f"ssim needs images of at least {needed}x{needed} pixels, got {a.shape[-2:]}"
        )
    if a.ndim == 2:
        return float(structural_similarity(a, b, data_range=data_range, **kwargs))
    scores = [structural_similarity(x, y, data_range=data_range, **kwargs) for x, y in zip(a, b)]
    return float(np.mean(scores))


def uncertainty_calibration(
    image: np.ndarray, std: np.ndarray, reference: np.ndarray, *, tile: int = 32
) -> dict[str, float]:
    """How well a per-pixel uncertainty (a std map) tells where an image errs.

    Parameters
    ----------
    image, reference : ndarray
        The restoration and its reference: 2D images or stacks of the same shape.
    std : ndarray
        The predicted standard deviation of ``image``'s error, same shape and units.
    tile : int, optional
        Side of the square tiles the rank correlation compares (cut to the image's height or
        width where smaller).

    Returns
    -------
    dict
        ``coverage``: the share of pixels whose reference lies within ±2 std of the image
        (about 0.95 for a calibrated Gaussian std). ``rank_correlation``: Spearman's rho between
        the tiles' mean std and their RMS error (does the map rank the regions that err? NaN
        with fewer than 3 tiles or a constant map). ``worst_median`` / ``worst_mean``: the
        median and the mean std at the 1 % of pixels that err most, over the median std (above
        1: the map marks them). ``scale_95``: the factor the map would need for 95 % coverage
        (above 1: it is too small here; inf where errors sit at zero-std pixels).

    Examples
    --------
    >>> import numpy as np
    >>> ref = np.zeros((64, 64)); sd = np.ones((64, 64)); sd[:, 32:] = 3.0
    >>> err = np.random.default_rng(0).standard_normal((64, 64)) * sd
    >>> cal = uncertainty_calibration(ref + err, sd, ref, tile=16)
    >>> round(cal["coverage"], 2), cal["rank_correlation"] > 0.8, cal["worst_mean"]  # worst: all at 3, median 2
    (0.96, True, 1.5)
    >>> half = uncertainty_calibration(ref + err, sd / 2, ref, tile=16)  # a map half as large needs twice
    >>> round(half["scale_95"] / cal["scale_95"], 6)
    2.0
    """
    from scipy.stats import spearmanr

    a, b = _pair(image, reference)
    s = _as_float(std, "std")
    if s.shape != a.shape:
        raise InputError(f"the uncertainty's shape {s.shape} is not the image's {a.shape}")
    if int(tile) < 1:
        raise InputError(f"tile must be a positive number of pixels, got {tile}")
    err = np.abs(a - b)
    s = np.maximum(s, 0.0)
    t = min(int(tile), *a.shape[-2:])
    h, w = (n // t * t for n in a.shape[-2:])
    e2 = (err[..., :h, :w] ** 2).reshape(-1, h // t, t, w // t, t).mean(axis=(2, 4)).ravel()
    st = s[..., :h, :w].reshape(-1, h // t, t, w // t, t).mean(axis=(2, 4)).ravel()
    # a constant map (or error) ranks nothing: NaN, as scipy says, without its warning
    rho = float(spearmanr(st, np.sqrt(e2)).statistic) if e2.size > 2 and np.ptp(st) > 0 and np.ptp(e2) > 0 else math.nan
    worst = err >= np.quantile(err, 0.99)
    med = float(np.median(s))
    scale = med if med > 0 else math.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        need = np.where(err > 0, err / (2 * s), 0.0)  # the std multiple each pixel needs to be covered
    return {"coverage": float(np.mean(err <= 2 * s)), "rank_correlation": rho,
            "worst_median": float(np.median(s[worst])) / scale, "worst_mean": float(np.mean(s[worst])) / scale,
            "scale_95": float(np.quantile(need, 0.95, method="higher"))}  # no interpolation: inf stays inf


# --------------------------------------------------------------------------- FRC


def _hann2d(shape: tuple[int, int]) -> np.ndarray:
    # Periodic Hann: tapers the edges to zero so the FFT's wrap-around jump does not put
    # a spurious cross of correlated high-frequency power into the rings.
    wy = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(shape[0]) / shape[0])
    wx = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(shape[1]) / shape[1])
    return np.outer(wy, wx)


def _spectrum(img: np.ndarray) -> np.ndarray:
    return np.fft.fft2((img - img.mean()) * _hann2d(img.shape))


def _split_checkerboard(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # The two diagonal sub-lattices (even row, even column) and (odd row, odd column).
    h, w = (img.shape[0] // 2) * 2, (img.shape[1] // 2) * 2
    img = img[:h, :w]
    return img[0::2, 0::2], img[1::2, 1::2]


def _frc_data(
    image: Any, reference: Any | None, pixel_size: float, bins: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(ring-centre frequencies, FRC, pixels per ring, pixel size of the measured grid)."""
    pixel_size = float(pixel_size)
    if not math.isfinite(pixel_size) or pixel_size <= 0:
        raise InputError(f"pixel_size must be a positive number, got {pixel_size}")
    a = _as_float(image, "image")
    if a.ndim != 2:
        raise InputError(f"FRC needs a 2D image, got {a.ndim} dimensions")
    if reference is None:
        a, b = _split_checkerboard(a)
        grid = 2.0 * pixel_size
        # The odd sub-lattice sits one original pixel further along both axes; undo that
        # offset with a Fourier phase ramp so a noise-free image still correlates to 1.
        shift = pixel_size
    else:
        a, b = _pair(a, reference)
        grid = pixel_size
        shift = 0.0
    if min(a.shape) < 8:
        raise InputError(f"FRC needs at least 8x8 pixels to compare, got {a.shape}")

    fa, fb = _spectrum(a), _spectrum(b)
    ky = np.fft.fftfreq(a.shape[0], d=grid)[:, None]
    kx = np.fft.fftfreq(a.shape[1], d=grid)[None, :]
    if shift:
        fb = fb * np.exp(-2j * np.pi * (kx + ky) * shift)
    radius = np.sqrt(kx**2 + ky**2)
    nyquist = 0.5 / grid

    max_bins = min(a.shape) // 2
    n_bins = max_bins if bins is None else int(bins)
    if not 2 <= n_bins <= max_bins:
        raise InputError(f"bins must lie between 2 and {max_bins} for this image, got {bins}")
    edges = np.linspace(0.0, nyquist, n_bins + 1)
    ring = np.digitize(radius, edges) - 1
    inside = (ring >= 0) & (ring < n_bins)  # drop the corners beyond Nyquist
    ring = ring[inside]

    cross = np.bincount(ring, (fa * np.conj(fb)).real[inside], n_bins)
    pa = np.bincount(ring, (np.abs(fa) ** 2)[inside], n_bins)
    pb = np.bincount(ring, (np.abs(fb) ** 2)[inside], n_bins)
    count = np.bincount(ring, minlength=n_bins).astype(np.float64)
    denom = np.sqrt(pa * pb)
    # A ring without power carries no shared information: correlation 0, not NaN.
    frc = np.divide(cross, denom, out=np.zeros(n_bins), where=denom > 0)
    freqs = 0.5 * (edges[:-1] + edges[1:])
    return freqs, frc, count, grid


def frc_curve(
    image: np.ndarray,
    reference: np.ndarray | None = None,
    *,
    pixel_size: float = 1.0,
    bins: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Fourier ring correlation between two images of the same field.

    Each image has its mean removed and is apodised with a 2D Hann window before the FFT.
    The FRC of ring r is ``Re(sum F1 F2*) / sqrt(sum |F1|^2 sum |F2|^2)`` over the
    frequencies of that ring, for rings evenly spaced from 0 to Nyquist.

    With ``reference=None`` the curve is the single-image FRC of Koho et al. (2019,
    Nat. Commun. 10:3103): the image is split by checkerboard sub-sampling into its
    (even row, even column) and (odd row, odd column) pixels, two half-size images of the
    same field with independent pixel noise. Their pixel size is ``2 * pixel_size``, so the
    curve then ends at the Nyquist frequency ``1 / (4 * pixel_size)``; the one-pixel
    diagonal offset between the halves is compensated by a Fourier phase shift.

    Parameters
    ----------
    image : ndarray
        2D image, any real dtype.
    reference : ndarray, optional
        Second, independent image of the same field and shape (e.g. another acquisition
        or another sample of a generative model). None: single-image FRC.
    pixel_size : float, optional
        Size of a pixel, in the unit the frequencies are reported in (e.g. nm).
    bins : int, optional
        Number of rings; default one per frequency step of the shorter side.

    Returns
    -------
    freqs : ndarray
        Ring-centre spatial frequencies in cycles per ``pixel_size`` unit.
    frc : ndarray
        Correlation per ring, in [-1, 1].

    Examples
    --------
    >>> import numpy as np
    >>> img = np.random.default_rng(0).random((64, 64))
    >>> freqs, frc = frc_curve(img, img)
    >>> len(freqs), bool(np.allclose(frc, 1.0))
    (32, True)
    """
    freqs, frc, _, _ = _frc_data(image, reference, pixel_size, bins)
    return freqs, frc


def frc_resolution(
    image: np.ndarray,
    reference: np.ndarray | None = None,
    *,
    pixel_size: float = 1.0,
    threshold: float | str = 1 / 7,
) -> float:
    """Resolution at which the Fourier ring correlation falls below a threshold.

    Parameters
    ----------
    image : ndarray
        2D image, any real dtype.
    reference : ndarray, optional
        Second independent image of the same field; None for the single-image
        (checkerboard) FRC described in :func:`frc_curve`.
    pixel_size : float, optional
        Size of a pixel; the result is in the same unit.
    threshold : float or "half-bit", optional
        A fixed correlation threshold (default 1/7), or ``"half-bit"`` for the
        information-based threshold of van Heel & Schatz (2005), which depends on the
        number of pixels per ring.

    Returns
    -------
    float
        ``1 / frequency`` of the first crossing below the threshold (linearly interpolated
        between rings); larger means coarser. If the curve never drops below the threshold,
        the Nyquist resolution of the measured grid: ``2 * pixel_size`` for two images,
        ``4 * pixel_size`` for a single image (its halves have twice the pixel size).

    Examples
    --------
    >>> import numpy as np
    >>> img = np.random.default_rng(0).random((64, 64))
    >>> frc_resolution(img, img, pixel_size=2.0)
    4.0
    """
    freqs, frc, count, grid = _frc_data(image, reference, pixel_size, None)
    if isinstance(threshold, str):
        if threshold != "half-bit":
            raise InputError(f"threshold must be a number or 'half-bit', got {threshold!r}")
        root_n = np.sqrt(np.maximum(count, 1.0))
        curve = (0.2071 + 1.9102 / root_n) / (1.2071 + 0.9102 / root_n)
    else:
        t = float(threshold)
        if not 0.0 < t < 1.0:
            raise InputError(f"threshold must lie in (0, 1), got {threshold}")
        curve = np.full_like(frc, t)

    below = np.flatnonzero(frc < curve)
    if below.size == 0:
        return 2.0 * grid
    i = int(below[0])
    if i == 0:
        return float(1.0 / freqs[0])
    # Interpolate the zero of (frc - threshold) between the last ring above and the first below.
    d0, d1 = frc[i - 1] - curve[i - 1], frc[i] - curve[i]
    f = freqs[i - 1] + (freqs[i] - freqs[i - 1]) * d0 / (d0 - d1)
    return float(1.0 / f)


# --------------------------------------------------------------------------- IS


def _module_device(classifier: Callable) -> torch.device | None:
    if isinstance(classifier, torch.nn.Module):
        for p in classifier.parameters():
            return p.device
    return None


def inception_score(
    images: np.ndarray | torch.Tensor,
    *,
    classifier: Callable[[torch.Tensor], torch.Tensor] | None = None,
    splits: int = 10,
    batch_size: int = 32,
) -> tuple[float, float]:
    """Inception score (Salimans et al. 2016) with a caller-supplied classifier.

    For each of ``splits`` disjoint groups of images the score is
    ``exp(E_x[KL(p(y|x) || p(y))])``, with ``p(y|x)`` the softmax of the classifier's logits
    and ``p(y)`` their mean over the group. It ranges from 1 (every image gets the same
    class distribution) to the number of classes (confident, evenly spread classes).

    Parameters
    ----------
    images : ndarray or Tensor
        ``(N, C, H, W)`` or ``(N, H, W)`` (a channel axis is added); converted to float32
        in batches, in whatever value range the classifier expects.
    classifier : callable
        Maps a float tensor ``(B, C, H, W)`` to logits ``(B, K)``. No weights are ever
        downloaded, so it is required. An ``nn.Module`` is run in eval mode on the device of
        its parameters (its mode is restored afterwards).
    splits : int, optional
        Number of groups; the spread of their scores is the reported std.
    batch_size : int, optional
        Images per classifier call.

    Returns
    -------
    mean, std : float
        Mean and standard deviation of the per-split scores.

    Examples
    --------
    >>> import numpy as np, torch
    >>> imgs = np.zeros((20, 1, 4, 4), dtype=np.float32)
    >>> uniform = lambda x: torch.zeros(x.shape[0], 5)
    >>> mean, std = inception_score(imgs, classifier=uniform, splits=2)
    >>> round(mean, 6), round(std, 6)
    (1.0, 0.0)
    """
    if classifier is None:
        raise EMDiffuseError(
            "inception_score needs a classifier: pass classifier=<callable returning logits>; "
            "no weights are downloaded"
        )
    if isinstance(images, torch.Tensor):
        data: np.ndarray | torch.Tensor = images.detach()
        kind_ok = not (images.is_complex())
    else:
        data = np.asarray(images)
        kind_ok = data.dtype.kind in "biuf"
    if not kind_ok:
        raise InputError("images must hold real numbers")
    if data.ndim == 3:
        data = data[:, None]
    if data.ndim != 4:
        raise InputError(f"images must be (N, C, H, W) or (N, H, W), got shape {tuple(data.shape)}")
    n = int(data.shape[0])
    if not 1 <= int(splits) <= n:
        raise InputError(f"splits must lie between 1 and the number of images ({n}), got {splits}")
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")

    device = _module_device(classifier)
    was_training = isinstance(classifier, torch.nn.Module) and classifier.training
    if was_training:
        classifier.eval()
    probs = []
    try:
        with torch.no_grad():
            for start in range(0, n, batch_size):
                chunk = data[start : start + batch_size]
                # A private float32 copy: an in-place first layer cannot touch the caller's data.
                if isinstance(chunk, torch.Tensor):
                    batch = chunk.to(torch.float32, copy=True)
                else:
                    batch = torch.from_numpy(np.array(chunk, dtype=np.float32, copy=True))
                if device is not None:
                    batch = batch.to(device)
                logits = classifier(batch)
                if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != len(batch):
                    shape = tuple(getattr(logits, "shape", ()))
                    raise EMDiffuseError(
                        f"classifier must return logits of shape ({len(batch)}, K), got {shape}"
                    )
                probs.append(torch.softmax(logits.detach().double(), dim=1).cpu().numpy())
    finally:
        if was_training:
            classifier.train()
    p = np.concatenate(probs)

    scores = []
    for part in np.array_split(p, int(splits)):
        p_y = part.mean(axis=0, keepdims=True)
        # xlogy-style: 0 * log 0 = 0 for classes a softmax underflowed to zero.
        safe = np.where(part > 0, part, 1.0)
        kl = np.sum(part * (np.log(safe) - np.log(np.where(part > 0, p_y, 1.0))), axis=1)
        scores.append(math.exp(float(np.mean(kl))))
    return float(np.mean(scores)), float(np.std(scores))


METRICS: dict[str, Callable[..., Any]] = {
    "mae": mae,
    "psnr": psnr,
    "ssim": ssim,
    "frc_resolution": frc_resolution,
    "inception_score": inception_score,
}
