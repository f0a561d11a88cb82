"""The template-method :class:`Trainer` shared by every task (2D and volume): setup, training
steps, EMA, validation, resumable checkpoints and the saved model.

Files of a run with ``out=<dir>/<name>``:

* ``<dir>/<name>/``: the model directory (``model.yaml``, ``weights.safetensors`` holding
  the EMA weights, ``config.yaml`` the recipe), written atomically at the end or on stop,
  and registered so that it shows up in every model list.
* ``<dir>/.<name>.train/checkpoint.pt`` (or ``checkpoint_dir``): everything needed to
  resume exactly: raw weights, optimiser, LR scheduler, EMA, iteration and every random
  generator state (torch, numpy, python, the data sampler's), written every
  ``checkpoint_every`` iterations, at the end and on stop, atomically (temporary file, then
  ``os.replace``). It holds only tensors, numbers and strings, so it loads with
  ``torch.load(weights_only=True)``.

Launched by ``torchrun`` (``WORLD_SIZE > 1``) the same code trains with
DistributedDataParallel: each rank draws different crops, gradients are averaged, and only
rank 0 validates and writes files.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from collections.abc import Generator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.ema import EMA
from ..core.losses import mean_var_loss, mse_loss
from ..errors import EMDiffuseError, InputError
from ..events import Progress
from ..io.atomic import atomic_file
from ..models.cards import ModelCard
from ..models.device import resolve_device, train_precision
from ..models.model import EMDiffuseModel
from ..models.registry import register_model
from .config import TrainConfig, checkpoint_path
from .build import build_data, build_model, registration_notes
from .data.base import Batch, TrainingData
from .estimator import blur_reader, fit_estimator
from .predictors import calibrate_uncertainty, one_pass
from .selfsup import anchor_loss, blind_spot, blind_spot_loss
from .state import CHECKPOINT_FORMAT, check_fingerprint, dist_env, fingerprint, read_checkpoint, rng_state, set_rng_state
from .validation import PSNR_AGAINST, held_out_prediction, preview, sampler_name, validation_metrics

__all__ = ["Trainer"]


class Trainer:
    """Template-method trainer shared by every task.

    :meth:`run` calls, in order: :meth:`setup` once, then per iteration
    :meth:`next_batch`, :meth:`train_step` and :meth:`update_ema`, every ``val_every``
    iterations :meth:`validate`, every ``checkpoint_every`` iterations
    :meth:`save_checkpoint`; at the end :meth:`save_model`. Every event passes through
    :meth:`log` before it is yielded. Override a hook to change one step (e.g. a different
    loss) without copying the loop.

    For reproducibility :meth:`setup` seeds the global torch, numpy and ``random``
    generators from ``seed`` (and the rank), as ``seed_everything`` helpers do; crops come
    from a private numpy generator and diffusion noise from a private torch generator.

    Parameters
    ----------
    config : TrainConfig
        The recipe.

    Examples
    --------
    >>> trainer = Trainer(TrainConfig(task="denoise", inputs=["x.tif"], out="m"))  # doctest: +SKIP
    >>> for event in trainer.run():  # doctest: +SKIP
    ...     print(event)
    """

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.iteration = 0
        self.rank, self.world, self.local_rank = dist_env()
        self.distributed = self.world > 1
        self._owns_group = False
        self.metrics: dict[str, float] = {}
        self.base_name: str | None = None
        self.ready = False
        self._stopping = False
        self._timed_out = False
        self._run_started = time.perf_counter()
        self.base_metrics: dict[str, float] = {}
        # (score, iteration, metrics, weights) of the best validation so far
        self._best: tuple[float, int, dict[str, float], dict[str, torch.Tensor]] | None = None
        self._since_best = 0
        self._tracked_at = -1  # iteration of the latest validation that _track_best saw
        # Seconds spent in training steps, summed over resumed runs: the card records the cost.
        self.train_seconds = 0.0
        # Blur-conditioned models: how the estimator was fitted after the predictor (None: not yet).
        self.estimator_fit: dict[str, Any] | None = None

    # -- properties ---------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def checkpoint_file(self) -> Path:
        return checkpoint_path(self.config)

    @property
    def out(self) -> Path:
        return Path(self.config.out)

    @property
    def size_multiple(self) -> int:
        """What crops' edges must be a multiple of: the network halves them this often."""
        return self.card.network.size_multiple

    # -- hooks ----------------------------------------------------------------------------
    def setup(self) -> None:
        """Check the data, build the model, data, optimiser, EMA and generators; resume."""
        cfg = self.config
        self._init_distributed()
        self.card, self.net = self.build_model()
        mult = self.size_multiple
        if cfg.patch % mult or cfg.patch < 2 * mult:
            raise InputError(
                f"patch {cfg.patch} must be a multiple of {mult} (the network halves the image "
                f"{len(self.card.network.channel_mults) - 1} times) and at least {2 * mult}"
            )
        self.data = self.build_data()
        self.val_batch = self.data.validation(cfg.val_crops) if cfg.val_fraction > 0 else None
        self.precision = train_precision(cfg.precision, self.device)
        self.net.to(self.device)
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel


            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.net, device_ids=ids)
        else:
            self.model = self.net
        est = getattr(self.net, "blur_estimator", None)
        if est is not None:
            est.requires_grad_(False)  # fitted on its own after the predictor (see estimator)
        elif cfg.iterations == 0:
            raise EMDiffuseError(f"iterations 0 refits a blur estimator, and model '{self.card.name}' has none")
        params = [p for p in self.net.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        warm, total, cosine = cfg.warmup, cfg.iterations, cfg.lr_schedule == "cosine"

        def factor(i: int) -> float:
            ramp = min(1.0, (i + 1) / warm) if warm else 1.0
            if not cosine or i < warm:
                return ramp
            # Cosine decay to 5 % over the rest of the run: the last iterations polish.
            t = min(1.0, (i - warm) / max(1, total - warm))
            return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)

        self.ema = EMA(self.net, decay=cfg.ema_decay, start_step=cfg.ema_start)
        # Different crops and noise per rank; the weights stay in sync through DDP.
        torch.manual_seed(cfg.seed * 1000 + self.rank)
        np.random.seed((cfg.seed * 1000 + self.rank) % 2**32)
        random.seed(cfg.seed * 1000 + self.rank)
        self.data_rng = np.random.default_rng([cfg.seed, self.rank, 1])
        self.gen = torch.Generator().manual_seed(cfg.seed * 1000 + self.rank + 17)
        self.start_iteration = 0
        self.anchor_net = None  # the base as it started: what the anchor term keeps the output near
        if cfg.anchor > 0:
            self.anchor_net = copy.deepcopy(self.net).eval().requires_grad_(False)
        if cfg.resume and self.checkpoint_file.is_file():
            self.load_checkpoint(self.checkpoint_file)
        self.ready = True

    def train_step(self, batch: Batch) -> float:
        """One optimiser step on ``batch``; returns the loss."""
        self.model.train()
        batch = batch.to(self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            loss = self._loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise EMDiffuseError(
                f"training diverged: the loss is {value} at iteration {self.iteration + 1}; lower lr or check the data"
            )
        return value

    def _loss(self, batch: Batch) -> torch.Tensor:
        if self.config.objective == "self-supervised":
            masked, centres = blind_spot(batch.cond, generator=self.gen)
            out = self.model(masked)
            out = out[0] if isinstance(out, tuple) else out
            loss = blind_spot_loss(out, batch.target, centres)
            if self.anchor_net is not None:
                with torch.no_grad():
                    ref = self.anchor_net(batch.cond)
                ref = ref[0] if isinstance(ref, tuple) else ref
                loss = loss + self.config.anchor * anchor_loss(out, ref, centres)
        elif self.card.kind == "diffusion":
            b = batch.target.shape[0]
            gammas = self.net.sample_gammas(
                b, generator=self.gen, focus=self.config.noise_focus, focus_log_snr=self.focus_range
            )
            noise = torch.randn(batch.target.shape, generator=self.gen).to(self.device)
            loss = self.model(batch.target, batch.cond, batch.slice_index, noise=noise, gammas=gammas)
        else:
            out = one_pass(self.model, batch.cond, batch.slice_index)
            if isinstance(out, tuple) and self.config.objective == "supervised":
                loss = mean_var_loss(batch.target, *out)
            else:  # the neighbours' noise is no error of the mean's: the variance head is left as it is
                loss = mse_loss(batch.target, out[0] if isinstance(out, tuple) else out)
        return loss

    @property
    def focus_range(self) -> tuple[float, float]:
        """Log-SNR range of the focused noise levels (see ``TrainConfig.noise_focus``)."""
        if self.config.focus_log_snr is not None:
            return self.config.focus_log_snr
        lo_train, _ = self.net.train_schedule.log_snr_range()
        start = self.card.start_log_snr
        lo = lo_train if start is None else start - 2.0
        return (lo, self.card.log_snr_max + 2.0)

    def _val_sampler(self) -> str:
        return sampler_name(self.card, self.config)

    def update_ema(self) -> None:
        """Fold the new weights into the EMA (after ``iteration`` was advanced)."""
        # Warm-up: average over at most the iterations seen so far, so that a short
        # fine-tune is not dominated by the starting weights.
        n = self.ema.num_updates
        uniform = self.config.average == "uniform"
        self.ema.decay = n / (n + 1) if uniform else min(self.config.ema_decay, (1 + n) / (10 + n))
        self.ema.update(self.net, step=self.iteration)

    def next_batch(self) -> Batch:
        return self.data.sample(self.data_rng, self.config.batch)

    @torch.no_grad()
    def validate(self) -> tuple[dict[str, float], np.ndarray] | None:
        """Score the held-out crops with the EMA weights (see :mod:`.validation`).

        ``psnr``/``ssim`` (model range, data_range 2) of what the fast preset does there, and
        ``val_loss``: the training loss on the held-out crops with fixed noise levels and
        noise, comparable between validations and with the training loss. Random draws come
        from private generators, so validating does not change the training run.
        """
        if self.val_batch is None or not self.is_main:
            return None
        vb = self.val_batch.to(self.device)
        with self._averaged():
            self.net.eval()
            pred, loss = held_out_prediction(self.net, self.card, self.config, vb)
            self.net.train()
        p, t = pred.float().cpu().numpy(), vb.target.cpu().numpy()
        self.metrics = validation_metrics(p, t, float(loss), self_supervised=self.config.objective == "self-supervised")
        return self.metrics, preview(vb.cond.cpu().numpy(), p, t)

    def save_checkpoint(self) -> Path | None:
        """Write the resumable state atomically (rank 0); other ranks send their RNG states."""
        rng = rng_state(self.data_rng, self.gen)
        states = [rng]
        if self.distributed and not self._stopping:  # a stop may reach one rank only: no collective
            import torch.distributed as dist

            states = [None] * self.world
            dist.all_gather_object(states, rng)
        if not self.is_main:
            return None
        state = {
            "format": CHECKPOINT_FORMAT,
            "iteration": self.iteration,
            "model": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict(),
            "rng": states,
            "world_size": self.world,
            "fingerprint": json.dumps(self._fingerprint(), sort_keys=True),
            "card": self.card.model_dump_json(),
            "metrics": json.dumps(self.metrics),
            "config": self.config.to_yaml(),
            "train_seconds": self.train_seconds,
        }
        with atomic_file(self.checkpoint_file) as tmp:
            torch.save(state, tmp)
        return self.checkpoint_file

    def load_checkpoint(self, path: Path) -> None:
        """Restore everything :meth:`save_checkpoint` wrote; refuse an incompatible run."""
        state = read_checkpoint(path)
        check_fingerprint(json.loads(state["fingerprint"]), self._fingerprint())
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.ema.load_state_dict(state["ema"])
        self.iteration = self.start_iteration = int(state["iteration"])
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.metrics = json.loads(state.get("metrics", "{}"))
        states = state["rng"]
        if self.rank < len(states) and states[self.rank] is not None:
            set_rng_state(states[self.rank], self.data_rng, self.gen)
        else:  # a different number of processes: fresh, but distinct, streams per rank
            self.data_rng = np.random.default_rng([self.config.seed, self.rank, 1, self.iteration])

    def save_model(self, *, completed: bool = True) -> Path:
        """Write the model directory with the EMA weights and register it (rank 0)."""
        cfg = self.config
        card = self.card.model_copy(deep=True)
        card.name = cfg.name or self.out.name
        if cfg.description:
            card.description = cfg.description
        elif self.base_name:
            card.description = f"{self.base_name} fine-tuned on {self._data_summary()}"
        else:
            card.description = f"Trained from scratch on {self._data_summary()}"
        # no step taken (iterations 0): the weights are the base's, EMA or not
        card.ema = self._ema_active() if self.iteration > 0 else self.card.ema
        base_record = self.card.training if self.base_name else None  # the base's own history
        settings = ("patch", "lr", "warmup", "weight_decay", "seed", "val_fraction", "freeze_encoder",
                    "train_layers", "average", "input_blur", "objective")
        card.training = {
            "base": self.base_name,
            "data": self.data.describe(),
            "iterations": self.iteration,
            "completed": completed,
            **{name: getattr(cfg, name) for name in settings},
            "batch": cfg.batch * self.world,
            "ema_decay": cfg.ema_decay if card.ema else None,
            "input_noise": cfg.input_noise or None,
            "processes": self.world,
            "device": self.device.type,
            "minutes": round(self.train_seconds / 60.0, 1),
            "threads": torch.get_num_threads() if self.device.type == "cpu" else None,
            "precision": self.precision,
        }
        if base_record is not None:
            card.training["base_training"] = base_record
        card.metrics = {}
        if self.metrics and self.val_batch is not None:
            card.metrics = {
                **{k: round(float(v), 4) for k, v in self.metrics.items()},
                "evaluated_on": f"{len(self.val_batch)} held-out crops (bottom {cfg.val_fraction:.0%} of each image)",
                "sampler": self._val_sampler(),
                "data_range": 2.0,
                "intensities": "model range [-1, 1]",
            }
        module = self.ema.shadow_module(self.net) if self._ema_active() else copy.deepcopy(self.net)
        if cfg.keep_best and self._best is not None and self._best[1] != self._tracked_at:
            module.load_state_dict(self._best[3])  # the latest validation lost: keep the best
            card.metrics.update({k: round(float(v), 4) for k, v in self._best[2].items()})
        if self._best is not None:
            card.metrics["best_iteration"] = self._best[1] if cfg.keep_best else self.iteration
        if self.base_metrics:
            card.metrics["base_psnr"] = round(float(self.base_metrics["psnr"]), 4)
        if self.estimator_fit is not None:
            # fitted after the predictor: neither the EMA nor the best validation holds it
            module.blur_estimator.load_state_dict(self.net.blur_estimator.state_dict())
            card.training["blur_estimator"] = self.estimator_fit
        if card.kind == "regression" and card.network.aleatoric and self.val_batch is not None:
            if cfg.objective == "supervised":
                card.uncertainty_scale = calibrate_uncertainty(module, self.val_batch)
                card.uncertainty_by_factor = None  # a base's table no longer describes these weights
        if cfg.objective != "supervised":
            card.metrics["psnr_against"] = PSNR_AGAINST[cfg.objective]
        path = self.write_model(card, module)
        register_model(path)
        return path

    def write_model(self, card: ModelCard, module: torch.nn.Module) -> Path:
        """Write the model directory of the trained ``module`` described by ``card``."""
        return EMDiffuseModel(card, module.cpu()).save(self.out, extra_files={"config.yaml": self.config.to_yaml()})

    def log(self, event: Progress) -> Progress:
        """Every event passes here before it is yielded (override to print or record)."""
        return event

    def teardown(self) -> None:
        if self._owns_group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self._owns_group = False

    # -- the template method ----------------------------------------------------------------
    def run(self) -> Generator[Progress, None, Path]:
        """Train; yields progress events and returns the model directory.

        Closing the generator after any iteration writes the model (EMA weights) and a
        checkpoint, then stops.
        """
        cfg = self.config
        try:
            if not self.ready:
                self.setup()
            total = cfg.iterations
            for note in registration_notes(self.data.describe()):  # said once, before training
                yield self.log(Progress("training", self.iteration, total, message=note))
            validated_at = -1
            self._run_started = time.perf_counter()
            if cfg.base is not None and self.iteration == 0 and not self.base_metrics:
                yield from self._validation_event(base=True)  # what the fine-tune must beat
                validated_at = 0  # the same network: no second validation when nothing trains
            try:
                while self.iteration < total and not self._early_stop() and not self._out_of_time():
                    started = time.perf_counter()
                    loss = self.train_step(self.next_batch())
                    self.iteration += 1
                    self.update_ema()
                    self.train_seconds += time.perf_counter() - started
                    lr = self.optimizer.param_groups[0]["lr"]
                    event = Progress(
                        "training", self.iteration, total, loss=loss, message=f"loss {loss:.4f}", extra={"lr": lr}
                    )
                    yield self.log(event)
                    if self.iteration % cfg.val_every == 0 and self.iteration < total:
                        yield from self._validation_event()
                        validated_at = self.iteration
                    if self.iteration % cfg.checkpoint_every == 0 and self.iteration < total:
                        self.save_checkpoint()
                if validated_at != self.iteration:
                    yield from self._validation_event()
            except GeneratorExit:
                self._stopping = True
                if self.is_main and self.iteration > self.start_iteration:
                    if cfg.average == "uniform" and cfg.keep_best and (res := self.validate()) is not None:
                        self._track_best(res[0])  # the mean so far against the base, as at the end
                    self.save_checkpoint()
                    self.save_model(completed=self.iteration >= total)
                raise
            if self.is_main and not self._timed_out:
                yield from self._fit_estimator()
            self.save_checkpoint()
            if self._timed_out:
                yield self.log(Progress("training", self.iteration, total, message=(
                    f"stopped at the time budget ({cfg.max_minutes:g} min) after {self.iteration} of {total} "
                    "iterations; resume to continue")))
            path = self.save_model(completed=not self._timed_out) if self.is_main else self.out
            if self.distributed:
                import torch.distributed as dist

                dist.barrier()  # every rank returns once the model exists
            if self.is_main and not cfg.keep_checkpoint:
                self._remove_checkpoint()
            return path
        finally:
            self.teardown()

    # -- internals --------------------------------------------------------------------------
    def _fit_estimator(self) -> Generator[Progress, None, None]:
        est = getattr(self.net, "blur_estimator", None)
        n = self.config.estimator_iterations
        if est is None or n == 0:
            return
        steps = fit_estimator(est, self.data, iterations=n, batch=self.config.batch, seed=self.config.seed,
                              device=self.device)
        try:
            while True:
                try:
                    event = next(steps)
                except StopIteration as end:
                    self.estimator_fit = {"iterations": n, "loss": None if end.value is None else round(end.value, 4)}
                    return
                yield self.log(event)
        finally:
            steps.close()

    def _validation_event(self, *, base: bool = False) -> Generator[Progress, None, None]:
        res = self.validate()
        if res is None:
            return
        metrics, preview = res
        message = f"PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.3f}, loss {metrics['val_loss']:.4f}"
        if base:
            self.base_metrics = dict(metrics)
            message = f"base model: {message}"
            if self.config.keep_best:
                # The base is a candidate too: a fine-tune that never beats it on the held-back
                # strip saves the base's weights rather than worse ones.
                self._track_best(metrics)
        elif self.base_metrics:
            message += f" (base {self.base_metrics['psnr']:.2f} dB)"
        last = self.iteration >= self.config.iterations
        if not base and (self.config.average != "uniform" or last):
            self._track_best(metrics)
        yield self.log(
            Progress(
                "validation", self.iteration, self.config.iterations, metrics=metrics, preview=preview,
                message=message, extra={"base": base, "base_psnr": self.base_metrics.get("psnr"),
                                                  "base_margin": self.config.base_margin},
            )
        )

    def _track_best(self, metrics: dict[str, float]) -> None:
        score = metrics["psnr"]
        self._tracked_at = self.iteration
        # the base (a fine-tune's iteration 0) is replaced only by a margin
        margin = self.config.base_margin if self._best is not None and self._best[1] == 0 and self.base_metrics else 0.0
        if self._best is None or score > self._best[0] + margin:
            with self._averaged() as net:
                weights = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
            self._best = (score, self.iteration, dict(metrics), weights)
            self._since_best = 0
        else:
            self._since_best += 1

    def _out_of_time(self) -> bool:
        """Whether this run has spent ``max_minutes``; every rank gets rank 0's answer."""
        limit = self.config.max_minutes
        if limit is None:
            return False
        over = time.perf_counter() - self._run_started >= 60.0 * limit
        if self.distributed:
            import torch.distributed as dist

            flag = torch.tensor([float(over)], device=self.device)
            dist.broadcast(flag, src=0)  # ranks' clocks differ: one decision, or a rank hangs
            over = bool(flag.item())
        self._timed_out = over
        return over

    def _early_stop(self) -> bool:
        patience = self.config.patience
        return patience is not None and self._since_best >= patience

    def _ema_active(self) -> bool:
        return self.iteration >= max(self.config.ema_start, 1) and self.ema.num_updates > 0

    def _averaged(self):
        return self.ema.averaged(self.net) if self._ema_active() else nullcontext(self.net)

    def _remove_checkpoint(self) -> None:
        f = self.checkpoint_file
        f.unlink(missing_ok=True)
        try:
            f.parent.rmdir()
        except OSError:
            pass

    def _init_distributed(self) -> None:
        if not self.distributed:
            self.device = resolve_device(self.config.device)
            return
        import torch.distributed as dist

        if torch.cuda.is_available() and self.config.device.lower() != "cpu":
            torch.cuda.set_device(self.local_rank)
            self.device = torch.device("cuda", self.local_rank)
            backend = "nccl"
        else:
            self.device = torch.device("cpu")
            backend = "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend=backend)
            self._owns_group = True

    def _fingerprint(self) -> dict[str, Any]:
        """Settings that must not change between a run and its resumption."""
        return fingerprint(self.card, self.config, self.data.describe())

    def _data_summary(self) -> str:
        d = self.data.describe()
        kinds = [p["kind"] for p in d["parts"]] if d.get("kind") == "mixture" else [d.get("kind", "data")]
        return " + ".join(kinds)

    # -- building ----------------------------------------------------------------------------
    def build_model(self) -> tuple[ModelCard, torch.nn.Module]:
        """The card and module to train: a copy of the base model, or a new small one."""
        card, net, self.base_name = build_model(self.config)
        return card, net

    def build_data(self) -> TrainingData:
        """Load, check and (where needed) register the images; build the data sets."""
        # a fitted estimator (not one this run converts a plain base to) reads recorded pairs
        fitted = not self.config.network.get("blur_level")
        read = blur_reader(self.net, self.card) if fitted else None
        return build_data(self.config, self.card, self.size_multiple, read_blur=read)


