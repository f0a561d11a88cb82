"""Beta schedules of the diffusion process, and the noise levels derived from them.

All arithmetic is float64 in numpy; tensors are made from the results where needed, so
that the cumulative products of 1000-2000 steps lose no precision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["SCHEDULES", "make_beta_schedule", "NoiseSchedule", "log_snr", "gamma_from_log_snr"]

SCHEDULES = ("linear", "quad", "cosine", "warmup10", "warmup50", "const", "jsd")


def _warmup(start: float, end: float, n: int, fraction: float) -> np.ndarray:
    betas = np.full(n, end, dtype=np.float64)
    warm = int(n * fraction)
    betas[:warm] = np.linspace(start, end, warm, dtype=np.float64)
    return betas


def make_beta_schedule(
    schedule: str,
    n_timestep: int,
    linear_start: float = 1e-6,
    linear_end: float = 1e-2,
    cosine_s: float = 8e-3,
) -> np.ndarray:
    """Return the ``n_timestep`` betas of a named schedule (float64).

    Parameters
    ----------
    schedule : {"linear", "quad", "cosine", "warmup10", "warmup50", "const", "jsd"}
        ``linear`` spaces betas evenly, ``quad`` evenly in sqrt(beta), ``cosine`` follows
        Nichol & Dhariwal (2021), ``warmupXX`` ramps linearly over the first XX % then stays at
        ``linear_end``, ``const`` is ``linear_end`` throughout and ``jsd`` is 1/T, 1/(T-1), ..., 1.
    n_timestep : int
        Number of steps.

    Examples
    --------
    >>> betas = make_beta_schedule("linear", 1000, 1e-4, 0.09)
    >>> betas.shape, float(betas[0]), float(betas[-1])
    ((1000,), 0.0001, 0.09)
    """
    if n_timestep < 1:
        raise ValueError(f"n_timestep must be at least 1, got {n_timestep}")
    if schedule == "linear":
        betas = np.linspace(linear_start, linear_end, n_timestep, dtype=np.float64)
    elif schedule == "quad":
        betas = np.linspace(linear_start**0.5, linear_end**0.5, n_timestep, dtype=np.float64) ** 2
    elif schedule == "warmup10":
        betas = _warmup(linear_start, linear_end, n_timestep, 0.1)
    elif schedule == "warmup50":
        betas = _warmup(linear_start, linear_end, n_timestep, 0.5)
    elif schedule == "const":
        betas = np.full(n_timestep, linear_end, dtype=np.float64)
    elif schedule == "jsd":
        betas = 1.0 / np.linspace(n_timestep, 1, n_timestep, dtype=np.float64)
    elif schedule == "cosine":
        steps = np.arange(n_timestep + 1, dtype=np.float64) / n_timestep + cosine_s
        alphas_bar = np.cos(steps / (1 + cosine_s) * math.pi / 2) ** 2
        alphas_bar = alphas_bar / alphas_bar[0]
        betas = np.clip(1 - alphas_bar[1:] / alphas_bar[:-1], 0, 0.999)
    else:
        raise ValueError(f"unknown beta schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    return betas


def log_snr(gamma):
    """log(gamma / (1 - gamma)) of a cumulative noise level gamma = alpha_bar."""
    gamma = np.asarray(gamma, dtype=np.float64)
    return np.log(gamma) - np.log1p(-gamma)


def gamma_from_log_snr(lam):
    """Inverse of :func:`log_snr`: the sigmoid."""
    lam = np.asarray(lam, dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-lam))


@dataclass(frozen=True)
class NoiseSchedule:
    """A discrete schedule with the quantities the samplers need (all float64 numpy).

    ``gammas[t]`` is the cumulative product alpha_bar_t of (1 - beta) up to step t.
    """

    betas: np.ndarray

    @classmethod
    def from_config(cls, cfg: dict) -> "NoiseSchedule":
        cfg = dict(cfg)
        name = cfg.pop("schedule", "linear")
        return cls(make_beta_schedule(name, **cfg))

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.shape[0])

    @property
    def alphas(self) -> np.ndarray:
        return 1.0 - self.betas

    @property
    def gammas(self) -> np.ndarray:
        return np.cumprod(self.alphas)

    @property
    def gammas_prev(self) -> np.ndarray:
        return np.append(1.0, self.gammas[:-1])

    @property
    def posterior_mean_coef1(self) -> np.ndarray:
        return self.betas * np.sqrt(self.gammas_prev) / (1.0 - self.gammas)

    @property
    def posterior_mean_coef2(self) -> np.ndarray:
        return (1.0 - self.gammas_prev) * np.sqrt(self.alphas) / (1.0 - self.gammas)

    @property
    def posterior_log_variance_clipped(self) -> np.ndarray:
        var = self.betas * (1.0 - self.gammas_prev) / (1.0 - self.gammas)
        return np.log(np.maximum(var, 1e-20))

    def log_snr_range(self) -> tuple[float, float]:
        """(lowest, highest) log-SNR the schedule covers."""
        g = self.gammas
        return float(log_snr(g[-1])), float(log_snr(g[0]))
