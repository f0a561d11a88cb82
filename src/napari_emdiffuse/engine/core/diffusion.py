"""The conditional diffusion ``Network``: forward noising, training loss, reverse steps.

``Network`` wraps a denoising UNet (``denoise_fn``) and the two noise schedules of the
method: a fine *training* schedule (EMDiffuse: 2000 linear steps, beta 1e-6 to 0.01) and the
published *test* schedule (1000 linear steps, beta 1e-4 to 0.09). Its state dict holds only
``denoise_fn.*`` parameters, so published checkpoints load once their saved schedule buffers
are dropped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator

import numpy as np
import torch
from torch import nn

from ..events import Progress, drain
from . import samplers
from .losses import mse_loss, mse_var_loss
from .schedules import NoiseSchedule, gamma_from_log_snr

__all__ = ["Network", "DEFAULT_BETA_SCHEDULE", "SCHEDULE_BUFFERS", "condition_start"]

DEFAULT_BETA_SCHEDULE = {
    "train": {"schedule": "linear", "n_timestep": 2000, "linear_start": 1e-6, "linear_end": 0.01},
    "test": {"schedule": "linear", "n_timestep": 1000, "linear_start": 1e-4, "linear_end": 0.09},
}

# Buffers the original implementation saved with its weights; recomputed here, never loaded.
SCHEDULE_BUFFERS = (
    "gammas",
    "sqrt_recip_gammas",
    "sqrt_recipm1_gammas",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)


class Network(nn.Module):
    """Conditional denoising diffusion model (Palette / SR3 style) around a UNet.

    Parameters
    ----------
    denoise_fn : torch.nn.Module
        Predicts the noise from ``cat([condition, y_t])`` and the noise level gamma
        (and, for vEM networks, the slice index).
    beta_schedule : dict
        ``{"train": {...}, "test": {...}}`` as in the original configs.
    loss_fn : callable, optional
        Loss between true and predicted noise; ``mse_loss`` by default, ``mse_var_loss``
        when the network has an aleatoric head.
    """

    def __init__(
        self,
        denoise_fn: nn.Module,
        beta_schedule: dict | None = None,
        loss_fn: Callable | None = None,
    ) -> None:
        super().__init__()
        self.denoise_fn = denoise_fn
        self.beta_schedule = beta_schedule or DEFAULT_BETA_SCHEDULE
        self.train_schedule = NoiseSchedule.from_config(self.beta_schedule["train"])
        self.test_schedule = NoiseSchedule.from_config(self.beta_schedule["test"])
        aleatoric = getattr(denoise_fn, "aleatoric", False)
        self.loss_fn = loss_fn or (mse_var_loss if aleatoric else mse_loss)
        # float32 copy for gathering during training
        self.register_buffer(
            "_train_gammas", torch.tensor(self.train_schedule.gammas, dtype=torch.float32), persistent=False
        )

    # -- forward process -------------------------------------------------------------
    @staticmethod
    def q_sample(y_0: torch.Tensor, gammas: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Noise ``y_0`` to level gamma: sqrt(gamma) y_0 + sqrt(1 - gamma) noise."""
        noise = torch.randn_like(y_0) if noise is None else noise
        g = gammas.reshape(-1, *([1] * (y_0.dim() - 1))).to(y_0)
        return g.sqrt() * y_0 + (1 - g).sqrt() * noise

    def sample_gammas(
        self,
        batch: int,
        generator: torch.Generator | None = None,
        *,
        focus: float = 0.0,
        focus_log_snr: tuple[float, float] | None = None,
    ) -> torch.Tensor:
        """Training noise levels: a step t in [1, T), then gamma uniform between
        gamma_{t-1} and gamma_t, so the network sees a continuum of levels.

        With ``focus`` > 0, that fraction of the batch instead draws its level uniformly in
        log-SNR from ``focus_log_snr`` (clipped to the training range): the levels the
        few-step samplers visit. Uniform steps of the linear schedule put three quarters of
        the samples below log-SNR 0, which a sampler that starts from a noised condition never
        visits.
        """
        device = self._train_gammas.device
        t = torch.randint(1, self.train_schedule.num_timesteps, (batch,), generator=generator, device="cpu").to(device)
        g_prev, g_t = self._train_gammas[t - 1], self._train_gammas[t]
        u = torch.rand(batch, generator=generator, device="cpu").to(device)
        gammas = g_t + (g_prev - g_t) * u
        if focus > 0 and focus_log_snr is not None:
            lo_train, hi_train = self.train_schedule.log_snr_range()
            lo = float(np.clip(min(focus_log_snr), lo_train, hi_train))
            hi = float(np.clip(max(focus_log_snr), lo_train, hi_train))
            pick = torch.rand(batch, generator=generator, device="cpu") < focus
            lam = lo + (hi - lo) * torch.rand(batch, generator=generator, device="cpu")
            gammas = torch.where(pick.to(device), torch.sigmoid(lam).to(device, torch.float32), gammas)
        return gammas

    def predict_noise(
        self,
        y_cond: torch.Tensor,
        y_t: torch.Tensor,
        gammas: torch.Tensor,
        slice_index: torch.Tensor | None = None,
    ):
        """Network output for ``cat([y_cond, y_t])``: eps, or (eps, log-variance)."""
        x = torch.cat([y_cond, y_t], dim=1)
        if getattr(self.denoise_fn, "slice_embedding", False):
            return self.denoise_fn(x, gammas, slice_index)
        return self.denoise_fn(x, gammas)

    def forward(
        self,
        y_0: torch.Tensor,
        y_cond: torch.Tensor,
        slice_index: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        gammas: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Training loss: noise ``y_0`` at a random level and score the noise prediction."""
        b = y_0.shape[0]
        gammas = self.sample_gammas(b) if gammas is None else gammas
        noise = torch.randn_like(y_0) if noise is None else noise
        y_noisy = self.q_sample(y_0, gammas, noise)
        out = self.predict_noise(y_cond, y_noisy, gammas, slice_index)
        if isinstance(out, tuple):
            return self.loss_fn(noise, out[0], out[1])
        return self.loss_fn(noise, out)

    # -- reverse process (published test schedule) ------------------------------------
    @torch.no_grad()
    def p_mean_variance(
        self,
        y_cond: torch.Tensor,
        y_t: torch.Tensor,
        t: int,
        slice_index: torch.Tensor | None = None,
        clip: bool = True,
    ) -> dict[str, torch.Tensor]:
        """One reverse step of the test schedule at integer step ``t``.

        Returns ``eps``, ``x0_clamped``, ``posterior_mean`` and ``posterior_log_variance``
        (one value per batch item), the quantities of the original implementation.
        """
        s = self.test_schedule
        g = float(s.gammas[t])
        level = torch.full((y_t.shape[0],), g, dtype=torch.float32, device=y_t.device)
        eps = self.predict_noise(y_cond, y_t, level, slice_index)
        eps = eps[0] if isinstance(eps, tuple) else eps
        x0 = samplers.predict_x0(y_t, eps, g, clip)
        mean = float(s.posterior_mean_coef1[t]) * x0 + float(s.posterior_mean_coef2[t]) * y_t
        logvar = torch.full((y_t.shape[0],), float(s.posterior_log_variance_clipped[t]), device=y_t.device)
        return {"eps": eps, "x0_clamped": x0, "posterior_mean": mean, "posterior_log_variance": logvar}

    # -- whole-batch sampling (no tiling) ---------------------------------------------
    def model_fn(
        self, y_cond: torch.Tensor, slice_index: torch.Tensor | None = None
    ) -> Callable[[torch.Tensor, float], Generator[Progress, None, torch.Tensor]]:
        """A sampler model function for a batch that fits the device as it is."""

        def fn(x: torch.Tensor, gamma: float):
            level = torch.full((x.shape[0],), gamma, dtype=torch.float32, device=x.device)
            with torch.no_grad():
                out = self.predict_noise(y_cond, x, level, slice_index)
            return (out[0] if isinstance(out, tuple) else out).float()
            yield  # pragma: no cover - makes this a generator

        return fn

    @torch.no_grad()
    def restoration(
        self,
        y_cond: torch.Tensor,
        *,
        sampler: str = "ddpm",
        steps: int | None = None,
        slice_index: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        eta: float = 0.0,
        start_log_snr: float | None = None,
        log_snr_max: float | None = 8.0,
        factor: int | None = None,
        start: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Sample one restoration per batch item of ``y_cond`` (images that fit memory).

        ``sampler="ddpm"`` with ``steps=None`` is the published 1000-step method. With
        ``start_log_snr``, sampling starts from ``start`` (default the condition; vEM: the
        interpolation of the two slices, ``factor`` slices per gap) noised to that level, as
        the fast presets do.
        """
        shape = (y_cond.shape[0], self.denoise_fn.out_channel, *y_cond.shape[2:])

        def noise_fn(_step: int) -> torch.Tensor:
            return torch.randn(shape, generator=generator).to(y_cond.device)

        x = noise_fn(-1)
        if start_log_snr is not None:
            g0 = float(gamma_from_log_snr(start_log_snr))
            if start is None:
                start = condition_start(y_cond, slice_index, factor)
            x = math.sqrt(g0) * start + math.sqrt(1 - g0) * x
        gen = samplers.sample(
            self.model_fn(y_cond, slice_index),
            x,
            sampler=sampler,
            train=self.train_schedule,
            test=self.test_schedule,
            steps=steps,
            noise_fn=noise_fn,
            eta=eta,
            start_log_snr=start_log_snr,
            log_snr_max=log_snr_max,
        )
        return drain(gen)


def condition_start(
    cond: torch.Tensor, slice_index: torch.Tensor | None = None, factor: int | None = None
) -> torch.Tensor:
    """The clean image a sampler that starts from the condition noises: the (last) condition
    channel, or for vEM (two slice channels) their linear interpolation at the depth of the
    slice to make, ``(slice_index + 1) / factor`` of the way."""
    if cond.shape[1] == 2 and slice_index is not None:
        f = factor if factor else int(slice_index.max()) + 2
        w = ((slice_index.to(cond.device, cond.dtype) + 1) / f).reshape(-1, 1, 1, 1)
        return torch.lerp(cond[:, 0:1], cond[:, 1:2], w)
    return cond[:, -1:]

