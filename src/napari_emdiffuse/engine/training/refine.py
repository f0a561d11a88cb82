"""Training the refiner of a predictor: predict, then refine.

The predictor (a one-pass UNet, frozen here) gives the mean; the refiner is a conditional
diffusion network that learns the distribution of what the mean misses, the residual
``(target - mean) / residual_scale``, given the condition and the mean. Sampling it gives
images that differ where the data leave the answer open (the spread is an uncertainty), and
its average stays on the mean where they do not.

A recipe with a ``refiner`` section (:data:`REFINER_DEFAULTS` lists its keys) trains the
refiner of the predictor it names as ``base``, or trains the predictor first and then its
refiner (``refiner.iterations`` and ``refiner.lr`` for the second stage). The saved model
directory holds both networks under one card; it loads and runs wherever the predictor did.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.diffusion import Network
from ..errors import EMDiffuseError
from ..models.cards import ModelCard, RefinerCard, UNetConfig
from ..models.factory import define_network
from ..models.model import EMDiffuseModel
from ..models.registry import load_model
from .data.base import Batch
from .trainer import Trainer
from .validation import mean_psnr, mean_ssim, preview

__all__ = ["RefinerTrainer", "REFINER_DEFAULTS"]

#: Keys of a recipe's ``refiner`` section and their defaults: the refiner UNet (smaller than
#: the predictor: it models a small residual), residual samples and sampler steps at
#: inference, and the presets that refine.
REFINER_DEFAULTS: dict[str, Any] = {
    "network": {
        "inner_channel": 16, "channel_mults": [1, 2, 4], "res_blocks": 1, "attn_res": [],
        "num_head_channels": 16, "dropout": 0.0,
    },
    "samples": 4,
    "steps": 10,
    "presets": ["reference"],
    "start_log_snr": None,
}  # fmt: skip


class RefinerTrainer(Trainer):
    """:class:`~.trainer.Trainer` of a predictor's refiner.

    ``self.card`` and ``self.net`` are the refiner seen as a diffusion model of its own (see
    :meth:`~..models.model.EMDiffuseModel.refiner_model`), so the loop, EMA, checkpoints and
    early stopping are the trainer's; the batch is turned into (residual, [condition, mean])
    here, and :meth:`save_model` writes the predictor with its refiner.
    """

    def build_model(self) -> tuple[ModelCard, torch.nn.Module]:
        cfg = self.config
        if cfg.base is None:
            raise EMDiffuseError("a refiner refines a predictor: name it as base")
        base = load_model(cfg.base, task=cfg.task, device="cpu", cache=False)
        if base.card.kind != "regression" or cfg.task.startswith("isotropic"):
            raise EMDiffuseError(f"'{base.card.name}' is not a 2D predictor; only those take a refiner")
        self.base_name = base.card.name
        self.predictor = copy.deepcopy(base.module).eval()
        for p in self.predictor.parameters():
            p.requires_grad_(False)
        settings = {**REFINER_DEFAULTS, **(cfg.refiner or {})}
        unknown = set(settings) - set(REFINER_DEFAULTS) - {"residual_scale", "iterations", "lr"}
        if unknown:
            raise EMDiffuseError(f"unknown refiner setting(s) {sorted(unknown)}; valid: {sorted(REFINER_DEFAULTS)}")
        network = UNetConfig(
            **{**REFINER_DEFAULTS["network"], **settings["network"]},
            in_channel=base.card.cond_channels + 2,
            out_channel=1,
        )
        self.refiner_settings = settings
        self.full_card = base.card.model_copy(deep=True)
        # The scale is fitted on the data in setup (residual_scale), before the first step.
        self.full_card.refiner = RefinerCard(
            network=network, residual_scale=float(settings.get("residual_scale", 0.1)),
            steps=int(settings["steps"]), samples=int(settings["samples"]), presets=list(settings["presets"]),
            start_log_snr=settings["start_log_snr"],
        )  # fmt: skip
        torch.manual_seed(cfg.seed)
        net = Network(define_network(network, "diffusion"), self.full_card.refiner.beta_schedule.model_dump())
        view = EMDiffuseModel(self.full_card, base.module, refiner=net).refiner_model()
        assert view is not None
        return view.card, net

    def _val_sampler(self) -> str:
        ref = self.full_card.refiner
        start = "noise" if ref.start_log_snr is None else f"the mean at log-SNR {ref.start_log_snr:g}"
        return f"mean + average of residual samples: dpm++ {ref.steps} steps from {start}"

    @property
    def size_multiple(self) -> int:
        # the crops go through the predictor too
        return math.lcm(self.card.network.size_multiple, self.full_card.network.size_multiple)

    def setup(self) -> None:
        super().setup()
        self.predictor.to(self.device)
        if self.val_batch is not None and self.is_main:
            # What the refiner must beat: the predictor's mean alone on the held-out crops.
            residual, cond = self._residual(self.val_batch, 1.0)
            t, m = (residual + cond[:, -1:]).cpu().numpy(), cond[:, -1:].cpu().numpy()
            self.base_metrics = {"psnr": mean_psnr(m, t), "ssim": mean_ssim(m, t), "val_loss": float("nan")}
        if "residual_scale" not in (self.config.refiner or {}):
            # 4 std of the predictor's residual on training crops: the sampler clips x0 to
            # [-1, 1], so the residual must fit with room to spare.
            rng = np.random.default_rng([self.config.seed, 99])
            r = torch.cat([self._residual(self.data.sample(rng, self.config.batch), 1.0)[0] for _ in range(4)])
            scale = float(4.0 * r.std().clamp_min(1e-3))
            self.full_card.refiner.residual_scale = round(scale, 5)

    @torch.no_grad()
    def _residual(self, batch: Batch, scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(residual / scale, condition for the refiner: [condition, mean]) of a batch."""
        batch = batch.to(self.device)
        out = self.predictor(batch.cond)
        mean = out[0] if isinstance(out, tuple) else out
        s = self.full_card.refiner.residual_scale if scale is None else scale
        return (batch.target - mean) / s, torch.cat([batch.cond, mean], dim=1)

    def train_step(self, batch: Batch) -> float:
        residual, cond = self._residual(batch)
        refined = Batch(cond=cond, target=residual, slice_index=None)
        return super().train_step(refined)

    @torch.no_grad()
    def validate(self) -> tuple[dict[str, float], np.ndarray] | None:
        """PSNR of the mean plus the average of K sampled residuals, beside the mean alone.

        ``psnr`` (what early stopping and keep_best follow) is the refined average's;
        ``psnr_mean`` the predictor's; ``spread_corr``: the correlation over crops' pixels
        of the samples' spread with the refined average's true error.
        """
        if self.val_batch is None or not self.is_main:
            return None
        ref = self.full_card.refiner
        residual, cond = self._residual(self.val_batch)
        gen = torch.Generator().manual_seed(self.config.seed)
        with self._averaged():
            self.net.eval()
            g = self.net.sample_gammas(len(residual), generator=gen)
            noise = torch.randn(residual.shape, generator=gen).to(self.device)
            val_loss = float(self.net(residual, cond, None, noise=noise, gammas=g))
            k = max(2, min(ref.samples, 4))
            draws = torch.stack(
                [
                    self.net.restoration(
                        cond, sampler="dpm++", steps=ref.steps, generator=gen, log_snr_max=ref.log_snr_max,
                        start_log_snr=ref.start_log_snr, start=torch.zeros_like(residual),
                    )
                    for _ in range(k)
                ]
            )
            self.net.train()
        s = ref.residual_scale
        vb = self.val_batch.to(self.device)
        mean = cond[:, -1:]
        refined = mean + s * draws.mean(0)
        t, m, r = vb.target.cpu().numpy(), mean.cpu().numpy(), refined.cpu().numpy()
        spread = (s * draws.std(0)).cpu().numpy()
        err = np.abs(r - t)
        corr = float(np.corrcoef(spread.ravel(), err.ravel())[0, 1]) if spread.std() > 0 else 0.0
        metrics = {
            "psnr": mean_psnr(r, t),
            "psnr_mean": mean_psnr(m, t),
            "spread_corr": corr if math.isfinite(corr) else 0.0,
            "ssim": mean_ssim(r, t),
            "val_loss": val_loss,
        }
        self.metrics = metrics
        return metrics, preview(vb.cond.cpu().numpy(), r, t)

    def write_model(self, card: ModelCard, module: torch.nn.Module) -> Path:
        """The predictor's model directory with the trained refiner (EMA or best weights)."""
        full = self.full_card.model_copy(deep=True)
        full.name = card.name
        full.refiner.training = card.training
        full.refiner.metrics = card.metrics
        model = EMDiffuseModel(full, copy.deepcopy(self.predictor).cpu(), refiner=module.cpu())
        return model.save(self.out, extra_files={"config.yaml": self.config.to_yaml()})
