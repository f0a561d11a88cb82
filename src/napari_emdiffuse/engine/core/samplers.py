"""Reverse-diffusion samplers.

Every sampler works on a whole state ``x`` and asks a *model function* for the noise
prediction: ``eps = yield from model_fn(x, gamma)``. The model function may be a plain
network call or the tiled, per-step-merged evaluation of a whole image; it may yield
:class:`~napari_emdiffuse.engine.events.Progress` events, which the sampler passes on, so
closing the outer generator cancels at the next tile. Fresh noise comes from
``noise_fn(step)``, which the caller seeds per pixel position.

The arithmetic stays float32 whatever precision the network runs in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator

import numpy as np
import torch

from ..events import Progress
from .schedules import NoiseSchedule, gamma_from_log_snr, log_snr

__all__ = [
    "SAMPLERS",
    "ModelFn",
    "noise_grid",
    "predict_x0",
    "ddpm_reference",
    "ddim",
    "dpm_solver_pp_2m",
    "sample",
]

SAMPLERS = ("ddim", "dpm++", "ddpm")

ModelFn = Callable[[torch.Tensor, float], Generator[Progress, None, torch.Tensor]]
NoiseFn = Callable[[int], torch.Tensor]
StepGen = Generator[Progress, None, torch.Tensor]


def predict_x0(x: torch.Tensor, eps: torch.Tensor, gamma: float, clip: bool = True) -> torch.Tensor:
    """x0 = sqrt(1/gamma) x - sqrt(1/gamma - 1) eps, optionally clamped to [-1, 1]."""
    x0 = math.sqrt(1.0 / gamma) * x - math.sqrt(1.0 / gamma - 1.0) * eps
    return x0.clamp(-1.0, 1.0) if clip else x0


def noise_grid(
    train: NoiseSchedule,
    steps: int,
    *,
    log_snr_max: float | None = 8.0,
    start_log_snr: float | None = None,
) -> np.ndarray:
    """Noise levels (gamma, rising: noisiest first) for a few-step sampler.

    The grid is uniform in log-SNR and stays inside the range the model was trained on:
    from the noisiest training level (or ``start_log_snr`` when starting from a noised copy of
    the condition) up to ``log_snr_max`` (capped at the cleanest training level). Truncating
    the 1000-step test schedule instead would start far below the noisiest level ever seen
    in training.

    Examples
    --------
    >>> from napari_emdiffuse.engine.core.schedules import NoiseSchedule, make_beta_schedule
    >>> g = noise_grid(NoiseSchedule(make_beta_schedule("linear", 2000, 1e-6, 1e-2)), 10)
    >>> len(g), bool(np.all(np.diff(g) > 0))
    (10, True)
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    lo, hi = train.log_snr_range()
    if log_snr_max is not None:
        hi = min(hi, log_snr_max)
    if start_log_snr is not None:
        lo = float(np.clip(start_log_snr, lo, hi))
    if steps == 1 or lo >= hi:
        return np.array([gamma_from_log_snr(lo)])
    return gamma_from_log_snr(np.linspace(lo, hi, steps))


def _progress(step: int, total: int) -> Progress:
    return Progress("sampling", step, total)


def ddpm_reference(
    model_fn: ModelFn,
    x: torch.Tensor,
    test: NoiseSchedule,
    noise_fn: NoiseFn,
    *,
    clip: bool = True,
) -> StepGen:
    """Ancestral DDPM over every step of ``test``: the published EMDiffuse sampler.

    The network is fed gamma_t of the test schedule; x0 is clamped to [-1, 1] and the
    posterior mean plus sqrt(posterior variance) times fresh noise gives x_{t-1}.
    """
    c1, c2 = test.posterior_mean_coef1, test.posterior_mean_coef2
    logvar, gammas = test.posterior_log_variance_clipped, test.gammas
    total = test.num_timesteps
    for i, t in enumerate(reversed(range(total))):
        eps = yield from model_fn(x, float(gammas[t]))
        x0 = predict_x0(x, eps, float(gammas[t]), clip)
        mean = float(c1[t]) * x0 + float(c2[t]) * x
        x = mean + math.exp(0.5 * float(logvar[t])) * noise_fn(i) if t > 0 else mean
        yield Progress("step", i + 1, total)
    return x


def ddim(
    model_fn: ModelFn,
    x: torch.Tensor,
    gammas: np.ndarray,
    noise_fn: NoiseFn | None = None,
    *,
    eta: float = 0.0,
    clip: bool = True,
) -> StepGen:
    """DDIM (Song et al. 2021) over rising noise levels ``gammas``; eta=1 is ancestral.

    One network evaluation per level; the last evaluation's x0 estimate is returned.
    """
    total = len(gammas)
    for i, g in enumerate(gammas):
        g = float(g)
        eps = yield from model_fn(x, g)
        x0 = predict_x0(x, eps, g, clip)
        if i == total - 1:
            x = x0
        else:
            g_next = float(gammas[i + 1])
            # Re-derive eps from the clamped x0 so the update stays on the x0 estimate.
            eps = (x - math.sqrt(g) * x0) / math.sqrt(1.0 - g)
            sigma = 0.0
            if eta > 0:
                sigma = eta * math.sqrt((1 - g_next) / (1 - g) * (1 - g / g_next))
            x = math.sqrt(g_next) * x0 + math.sqrt(max(1 - g_next - sigma**2, 0.0)) * eps
            if sigma > 0:
                if noise_fn is None:
                    raise ValueError("eta > 0 needs a noise function")
                x = x + sigma * noise_fn(i)
        yield Progress("step", i + 1, total)
    return x


def dpm_solver_pp_2m(
    model_fn: ModelFn,
    x: torch.Tensor,
    gammas: np.ndarray,
    *,
    clip: bool = True,
) -> StepGen:
    """DPM-Solver++(2M) (Lu et al. 2022), data prediction, multistep second order.

    Uses half log-SNR lambda = log(alpha/sigma) as time; first order on the first step.
    """
    total = len(gammas)
    lam = 0.5 * log_snr(np.asarray(gammas, dtype=np.float64))
    prev_x0: torch.Tensor | None = None
    for i, g in enumerate(gammas):
        g = float(g)
        eps = yield from model_fn(x, g)
        x0 = predict_x0(x, eps, g, clip)
        if i == total - 1:
            x = x0
        else:
            g_next = float(gammas[i + 1])
            h = float(lam[i + 1] - lam[i])
            alpha_next = math.sqrt(g_next)
            ratio = math.sqrt((1 - g_next) / (1 - g))
            d = x0
            if prev_x0 is not None:
                r = float(lam[i] - lam[i - 1]) / h
                d = (1 + 0.5 / r) * x0 - (0.5 / r) * prev_x0
            x = ratio * x - alpha_next * math.expm1(-h) * d
            prev_x0 = x0
        yield Progress("step", i + 1, total)
    return x


def sample(
    model_fn: ModelFn,
    x: torch.Tensor,
    *,
    sampler: str,
    train: NoiseSchedule,
    test: NoiseSchedule,
    steps: int | None,
    noise_fn: NoiseFn,
    eta: float = 0.0,
    start_log_snr: float | None = None,
    log_snr_max: float | None = 8.0,
    clip: bool = True,
) -> StepGen:
    """Run a named sampler; ``ddpm`` with ``steps`` None or equal to the test schedule's
    length is the published reference; with fewer steps it is ancestral sampling (DDIM,
    eta=1) on the log-SNR grid."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if sampler == "ddpm" and (steps is None or steps == test.num_timesteps) and start_log_snr is None:
        return (yield from ddpm_reference(model_fn, x, test, noise_fn, clip=clip))
    grid = noise_grid(train, steps or 10, log_snr_max=log_snr_max, start_log_snr=start_log_snr)
    if sampler == "ddpm":
        return (yield from ddim(model_fn, x, grid, noise_fn, eta=1.0, clip=clip))
    if sampler == "ddim":
        return (yield from ddim(model_fn, x, grid, noise_fn, eta=eta, clip=clip))
    return (yield from dpm_solver_pp_2m(model_fn, x, grid, clip=clip))
