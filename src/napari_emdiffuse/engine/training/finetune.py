"""Training and fine-tuning runs as generators of :class:`~..events.Progress` events that end
by yielding the saved model directory; closing them stops training and still leaves a usable
model."""

from __future__ import annotations

from collections.abc import Generator, Mapping
from pathlib import Path
from typing import Any

from ..errors import EMDiffuseError, InputError
from ..events import Progress, drain
from ..models.cards import TASKS
from ..models.registry import DEFAULT_MODELS
from ..io.images import read_image
from ..core.alikeness import slice_alikeness
from .config import TrainConfig, checkpoint_path
from .neighbours import MIN_SLICES
from .refine import RefinerTrainer
from .trainer import Trainer

__all__ = ["as_config", "train_iter", "train", "finetune_iter", "verdict", "self_supervised_objective"]


def as_config(config: TrainConfig | Mapping[str, Any] | str | Path) -> TrainConfig:
    """A recipe from a :class:`TrainConfig`, a mapping of its fields or a YAML file."""
    if isinstance(config, TrainConfig):
        return config
    if isinstance(config, Mapping):
        return TrainConfig(**config)
    return TrainConfig.from_yaml(config)


def train_iter(
    config: TrainConfig | Mapping[str, Any] | str | Path,
) -> Generator[Progress | Path, None, None]:
    """Train a model; yield :class:`~.events.Progress` events, then the model directory.

    Events: ``Progress("training", done=iteration, total=iterations, loss=...)`` after every
    iteration, ``Progress("validation", metrics={"psnr", "ssim", "val_loss"}, preview=uint8
    image of condition | restoration | target)`` every ``val_every`` iterations and at the end. The
    last item is the saved model directory (a ``Path``). Bad input raises
    :class:`~.errors.InputError` at the first ``next()``, before any iteration. Closing the
    generator stops training after the current iteration and still writes the model and a
    checkpoint (``resume: true`` continues exactly where it stopped).

    Parameters
    ----------
    config : TrainConfig, mapping or path
        The recipe (a YAML file path is read with :meth:`TrainConfig.from_yaml`).

    Examples
    --------
    >>> for ev in train_iter("configs/demo-denoise.yaml"):  # doctest: +SKIP
    ...     print(ev)
    """
    cfg = as_config(config)
    if cfg.refiner is not None and cfg.base is None:
        # One recipe, both networks: the predictor first, then its refiner (own checkpoint).
        pred_cfg = cfg.model_copy(update={"refiner": None})
        path = yield from Trainer(pred_cfg).run()
        settings = dict(cfg.refiner)
        folder = checkpoint_path(cfg).parent / "refiner"
        cfg = cfg.model_copy(
            update={
                "base": str(path), "network": {}, "refiner": settings, "checkpoint_dir": folder,
                "iterations": int(settings.pop("iterations", cfg.iterations)), "lr": float(settings.pop("lr", cfg.lr)),
            }
        )  # fmt: skip
    trainer = RefinerTrainer(cfg) if cfg.refiner is not None else Trainer(cfg)
    path = yield from trainer.run()
    yield path


def finetune_iter(
    task: str,
    input: Any,
    target: Any = None,
    *,
    base: str | Path | None = None,
    out: str | Path,
    iterations: int = 200,
    patch: int = 64,
    batch: int = 8,
    lr: float | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    device: str = "auto",
    freeze_encoder: bool = False,
    factor: int | None = None,
    objective: str | None = None,
    **options: Any,
) -> Generator[Progress | Path, None, None]:
    """Fine-tune a model on your own images; yields progress, then the model directory.

    Parameters
    ----------
    task : {"denoise", "super-resolve", "isotropic-i", "isotropic-a"}
        What the model does.
    input : array-like or path, or a list of them
        Degraded image (or stack), low-resolution image, or the volume (isotropic tasks). A
        list: several images (several registered pairs, of any sizes), each with its
        held-back strip.
    target : array-like or path, or a list of them, optional
        Registered clean / high-resolution counterpart (one per input). Without it, denoising learns from the
        noisy ``input`` alone (``objective="self-supervised"``, a structured blind spot; see
        :mod:`~.selfsup`), super-resolution from area downsampling of ``input``; the isotropic
        tasks always learn from the volume itself.
    base : str or Path, optional
        Model to start from; default the bundled model for the task. Its card (network,
        normalisation rule, scale, z factor) is kept and its name recorded.
    out : str or Path
        Model directory to write.
    iterations, patch, batch, lr, val_fraction, seed, device, freeze_encoder
        As in :class:`TrainConfig`. A finished fine-tune leaves no checkpoint beside its model
        (``keep_checkpoint=True`` keeps it); a stopped one keeps it, and ``resume=True`` goes on. ``lr`` defaults to 1e-3 for predictors denoising from
        pairs (5e-4 with ``freeze_encoder``), 2e-4 for other predictors and self-supervised
        ones, 5e-5 self-supervised with ``freeze_encoder`` (1e-5 with ``anchor=0``) and for
        diffusion models.
        The bottom ``val_fraction`` of the images is held back: the base model is scored there
        first, and the best validation's weights are kept, the base's included: a fine-tune
        that never beats the base by ``base_margin`` (default 0.1 dB; 0.06 for the mean of a
        denoising pair's fine-tune below; 0 for denoising a clean input; -0.1 self-supervised
        from a predictor, below) saves the base.
        Training stops after ``patience`` (default 2) validations without a gain. Denoising
        pairs with a predictor as base train only the full-resolution layers
        (``train_layers="full-resolution"``, lr 1e-3) and save the mean of the weights from the
        first validation on (``average="uniform"``), which the base must still lose to by the margin.
        A self-supervised fine-tune from a predictor does the same (lr 2e-4) and keeps the mean
        unless its blind-spot score falls 0.1 dB below the base's (``base_margin=-0.1``): that
        score cannot rank the base, but it tells a run that diverged. Learning from neighbouring
        slices takes the pair's route with that margin.
    factor : int, optional
        Isotropic tasks: slices per gap. Default: from the voxel size of an ``input`` file
        that records one, else the base model's (a model that serves every factor has none:
        then it must be given).
    objective : {"supervised", "self-supervised", "neighbour-slices"}, optional
        Default: for denoising without a target, ``"neighbour-slices"`` where ``input`` is a
        stack whose neighbouring slices are alike (each inner slice learns from the mean of its
        two neighbours, Noise2Noise: see :mod:`~.neighbours`), else ``"self-supervised"`` (a
        structured blind spot: see :mod:`~.selfsup`); with a target, supervised. The first
        event says which and why. ``"supervised"`` without a target takes ``input`` as clean
        and simulates noise.
    **options
        Any other :class:`TrainConfig` field (``warmup``, ``val_every``, ``doses``,
        ``doses``, ``noise_correlation`` and ``read_noise`` (the simulated noise of a clean input,
        ``objective="supervised"`` without a target: match them to your recordings),
        ``noise_focus`` (default 0.75 here), ``resample_noise`` (default 1.0 here for denoising
        pairs: every crop gets the pair's own noise from elsewhere, so 200 iterations do not
        learn one noise realisation by heart), ``noise_gain`` (denoising pairs: e.g. ``(1, 1.41)``
        also trains for scans at half the pair's dwell time), ...).

    Examples
    --------
    >>> for ev in finetune_iter("denoise", "noisy.tif", "clean.tif", out="my-model"):  # doctest: +SKIP
    ...     print(ev)
    """

    if task not in TASKS:
        raise EMDiffuseError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    inputs = list(input) if isinstance(input, (list, tuple)) else [input]
    targets = list(target) if isinstance(target, (list, tuple)) else [target] * (len(inputs) if target is None else 1)
    if not inputs:
        raise InputError("no input to learn from")
    if len(targets) != len(inputs):
        raise InputError(f"{len(inputs)} inputs and {len(targets)} targets: give one target for each input")
    if any(t is None for t in targets) and not all(t is None for t in targets):
        raise InputError("some inputs have a target and some not: fine-tune on pairs, or on inputs alone")
    target = targets[0]
    iso = task.startswith("isotropic")
    if iso and target is not None:
        raise EMDiffuseError("isotropic fine-tuning learns from the volume itself; give no target")
    note = None
    if objective is None:
        objective = "self-supervised" if task == "denoise" and target is None else "supervised"
        if objective == "self-supervised":
            objective, note = self_supervised_objective(inputs[0])
    simulated = {"doses", "noise_correlation", "read_noise"} & options.keys()
    if simulated and (task == "super-resolve" or (task == "denoise" and (target is not None or objective != "supervised"))):
        raise EMDiffuseError(
            f"{', '.join(sorted(simulated))}: these describe simulated noise; give them for denoising a "
            "clean input (objective='supervised', no target) or for the isotropic tasks"
        )
    if iso and factor is None:
        factor = _default_factor(inputs[0], base, task)
    # Isotropic: the factor-3 model with new heads for the factor, not the every-factor model:
    # 200 iterations of -a on the held-out C. elegans rows gave 27.82 / 25.88 dB at x3 / x5 from
    # it, 27.72 / 25.89 from demo-isotropic-any (linear 27.17 / 25.25); on ISBI 2012 at x12,
    # 17.67 from it, 17.63 from demo-isotropic-any (no validation beat that base).
    base = str(base) if base is not None else DEFAULT_MODELS[task]
    settings: dict[str, Any] = dict(
        task=task,
        base=base,
        objective=objective,
        keep_best=True,
        # Pairs: on the pair's rows 512+ with its noise scaled x1.41 / x2 (a base that already
        # fits that noise), the default paired fine-tune gained 0.03 / 0.05 dB on its strip and
        # lost 0.13 / 0.14 dB on the other half (two scans drift apart differently across the
        # field); on liver_0 at dose 30 it gained 0.12 / 0.18 there and 0.18 / 0.15 on the other half.
        # A clean input scores the strip on simulated noise, with nothing misaligned: on liver_0's
        # left half the strip rose 0.05-0.07 dB and the right half 0.09-0.15 (doses 30 / 100),
        # which a 0.1 dB margin threw away (ISBI 2012 z12: strip +0.12, right half +0.08 / +0.12).
        # (not self-supervised: its blind-spot score is PSNR against the noisy input, squeezed
        # by the noise variance, and cannot rank the base anyway; see verdict)
        base_margin=0.0 if objective != "supervised" or (task == "denoise" and target is None) else 0.1,
        # Stop after two validations without a gain (a predictor's denoising pair runs to the
        # end instead: below). vEMDiffuse-a on C. elegans rose to the end with one flat step.
        patience=2,
        out=out,
        iterations=iterations,
        patch=patch,
        batch=batch,
        lr=lr or 5e-5,
        val_fraction=val_fraction,
        seed=seed,
        device=device,
        freeze_encoder=freeze_encoder,
        factor=factor,
        warmup=min(50, iterations // 10),
        # a short fine-tune is spent where the fast presets sample, as for the bundled models
        noise_focus=0.75,
        val_every=max(1, iterations // 5),
        checkpoint_every=max(1, iterations // 2),
        # a finished fine-tune's checkpoint (the size of the model and its optimiser, 50 MB for
        # the bundled denoiser) would stay hidden beside it after every run; a stopped run's stays
        # for resume=True
        keep_checkpoint=False,
        # a blur-conditioned base keeps its estimator: one image's pairs would narrow it
        estimator_iterations=0,
    )
    if objective == "self-supervised":
        settings["anchor"] = 10.0  # the blind spot alone lost 0.6-0.8 dB on real SEM noise (see selfsup)
    paired_denoise = task == "denoise" and target is not None and objective == "supervised"
    if paired_denoise:
        settings["resample_noise"] = 1.0
    if iso:
        settings["volume"] = inputs
    else:
        settings["inputs"] = inputs
        settings["targets"] = targets
    settings.update(options)
    config = TrainConfig(**settings)  # bad settings fail here, before the base is loaded
    from ..models.registry import load_model

    kind = load_model(base, task=task, device="cpu").card.kind
    if paired_denoise and kind == "regression":
        # Only the full-resolution layers train, and the saved weights are the mean of every
        # step's from the first validation on, scored once against the base: on liver_0's right
        # half (left half trained; correlated noise at dose 30 / inverted contrast at dose 200)
        # +0.28 / +0.32 dB over the base, against +0.22 / +0.26 for all layers with the best of
        # five validations. The held-back strip cannot pick a checkpoint at that resolution: it
        # preferred iteration 40 while the other half improved until 140 (benchmarks/RESULTS.md).
        # The mean's strip gain over five seeds on liver_0 was 0.09-0.13 dB (other half +0.25 to
        # +0.28), on the pair's rows 512+ at noise x1.41 (a base that already fits it) at most
        # 0.03 (other half -0.08): the margin sits between them. At 0.1 one seed in five
        # threw away +0.25 dB.
        route = dict(train_layers="full-resolution", average="uniform", patience=None, ema_start=max(1, iterations // 5),
                     base_margin=0.06)
    elif task == "denoise" and objective == "neighbour-slices" and kind == "regression":
        # As a pair's (lr 1e-3). The neighbours' mean cannot rank the base either: on C. elegans
        # (dose 30, correlated) the mean's score rose 0.0004 dB where the truth rose 0.57 dB, on
        # ISBI 2012 (slices unlike: see neighbours) 0.9 dB where the truth fell 4.9. The mean is
        # kept unless it fell 0.1 dB: self_supervised_objective guards the rest.
        route = dict(train_layers="full-resolution", average="uniform", patience=None, ema_start=max(1, iterations // 5),
                     base_margin=-0.1)
    elif task == "denoise" and objective == "self-supervised" and kind == "regression":
        # The same from the noisy image alone (lr 2e-4): on the right halves of the four cases of
        # benchmarks/finetune.py 26.98 / 32.56 / 32.00 / 30.29 dB against 26.92 / 32.55 / 31.99 /
        # 30.28 for all layers with the best blind-spot validation (liver_0 at seed 1: 26.96
        # against 26.93). The blind-spot score cannot rank the base (see verdict): on liver_0 it
        # put the mean 0.01 dB below the base where the mean was 0.19 dB better (inverted: +0.16,
        # pair x1.41: +0.88). So the mean is kept unless its score falls 0.1 dB below the
        # base's, which still catches a run that diverged.
        route = dict(train_layers="full-resolution", average="uniform", patience=None, ema_start=max(1, iterations // 5),
                     base_margin=-0.1)
    else:
        route = {}
    for key, value in route.items():
        if key not in options and not (key == "train_layers" and freeze_encoder):
            setattr(config, key, value)
    if lr is None and "lr" not in options:
        # Predictors take a larger step than diffusion networks before they drift; the
        # self-supervised objective's sparse, noisy targets want a small one, the smaller the
        # better the base (liver_0, correlated noise, dose 30, 200 iterations: with the 16-wide
        # base 3e-5 +0.09 dB, 2e-4 -0.66; with the 24-wide base 3e-5 -0.14 / -0.28, 1e-5
        # +0.06 / -0.03); with resampled noise a pair is not learnt by heart and takes a larger
        # one (mean of two seeds: plain 2e-4 +0.14 dB; resampled 5e-4 +0.20, 1e-3 +0.21).
        if kind != "regression":
            config.lr = 5e-5
        elif objective == "self-supervised" and config.train_layers == "full-resolution":
            config.lr = 2e-4  # liver_0: 5e-4 gave 27.00 dB but the inverted case 32.52 (2e-4: 26.98 / 32.56)
        elif objective == "self-supervised":
            # anchored (the default), a larger step pays: lr 5e-5 gained 0.04-0.09 dB on the four
            # cases of selfsup's docstring, 1e-5 0.02-0.05; 1e-4 kept the base on liver_0
            config.lr = 5e-5 if config.anchor > 0 else 1e-5
        elif config.train_layers == "full-resolution":
            config.lr = 1e-3  # 0.2 M of the bundled 6.4 M weights train: a larger step (as measured)
        else:
            config.lr = 5e-4 if config.resample_noise > 0 else 2e-4
    if note:
        yield Progress("training", 0, config.iterations, message=note)
    yield from train_iter(config)


def self_supervised_objective(input: Any) -> tuple[str, str | None]:
    """How a denoising fine-tune with no target learns from ``input`` (a path or an array), and
    a line that says why: always ``"self-supervised"`` (the blind spot); the line, for a stack,
    says whether its neighbouring slices are alike (:func:`~..core.alikeness.slice_alikeness`).

    Learning each slice from its neighbours (``"neighbour-slices"``) beat the blind spot on an
    alike stack as long as slices were restored one by one (C. elegans, dose 30: 24.93 against
    24.71 dB). A restoration now averages an alike stack along z (:mod:`..inference.zfilter`),
    and after that the blind spot leads (25.58 against 25.19; dose 100: 27.11 against 26.64):
    the neighbours' fine-tune learns an average along z that the filter then takes twice. So
    the neighbours are there to ask for, not the default.

    Examples
    --------
    >>> import numpy as np
    >>> self_supervised_objective(np.zeros((64, 64)))  # one image: the blind spot
    ('self-supervised', None)
    >>> from scipy.ndimage import gaussian_filter
    >>> same = np.repeat(gaussian_filter(np.random.default_rng(0).random((1, 64, 64)), 2), 16, axis=0)
    >>> self_supervised_objective(same)[1][:63]  # one structure in every slice
    'self-supervised with a blind spot: its slices look 0.0 px apart'
    """
    found_file = _read(input)
    data = found_file.data if found_file is not None else input  # zarr stays lazy
    shape = tuple(getattr(data, "shape", ()))
    if len(shape) != 3 or shape[0] < MIN_SLICES:
        return "self-supervised", None
    try:
        found = slice_alikeness(data)
    except InputError:  # slices too small (or colour samples): the blind spot, whose checks say why
        return "self-supervised", None
    if found.alike:
        return "self-supervised", (f"self-supervised with a blind spot: {found.describe()}, so restoring averages "
                                   "them along z (z_filter auto), which learning from neighbouring slices would do "
                                   "twice (objective neighbour-slices to try)")
    return "self-supervised", (f"self-supervised with a blind spot: {found.describe()}; sections this far apart "
                               "do not show the same structure")


def train(config: TrainConfig | Mapping[str, Any] | str | Path) -> Path:
    """Run :func:`train_iter` to the end and return the model directory."""
    return drain(train_iter(config))


def verdict(metrics: Mapping[str, Any]) -> str | None:
    """One line on what a fine-tune kept, from its model card's ``metrics``; None without a base.

    Examples
    --------
    >>> verdict({"psnr": 27.1, "base_psnr": 26.8, "best_iteration": 160})
    'kept iteration 160: validation PSNR 27.10 dB (base 26.80 dB)'
    >>> verdict({"psnr": 26.8, "base_psnr": 26.8, "best_iteration": 0})
    'no validation beat the base model by the margin: its weights are kept (base 26.80 dB)'
    >>> verdict({"psnr": 23.5, "base_psnr": 22.3, "best_iteration": 200, "psnr_against": "..."})[-38:]
    'its base: compare with the base by eye'
    """
    if "base_psnr" not in metrics or "psnr" not in metrics:
        return None
    base = f"(base {metrics['base_psnr']:.2f} dB)"
    if metrics.get("best_iteration") == 0:
        return f"no validation beat the base model by the margin: its weights are kept {base}"
    line = f"kept iteration {metrics.get('best_iteration')}: validation PSNR {metrics['psnr']:.2f} dB {base}"
    if "psnr_against" in metrics:
        # A blind-spot score favours blind-spot training over any base: on the pair's rows 512+
        # with its noise x1.41 / x2 it rose 1.2 / 0.8 dB while the true PSNR fell 0.78 / 0.56 dB.
        line += (f"; self-supervised: a score against {metrics['psnr_against']}, which cannot rank a fine-tune "
                 "against its base: compare with the base by eye")
    return line


def _default_factor(volume: Any, base: str | None, task: str) -> int | None:
    """The isotropic factor a fine-tune uses when none is given: the file's voxel size, else
    the base model's (None: the config's default)."""
    from ..io.spacing import factor_from_spacing
    from ..models.registry import load_model

    found = _read(volume)
    if found is not None:
        spacing = found.spacing  # lazy: only the header is read here
        if spacing is not None and len(spacing) == 3:
            try:
                return factor_from_spacing(spacing)
            except InputError:
                pass  # (nearly) isotropic or no whole ratio: the header says nothing usable
    card = load_model(base or DEFAULT_MODELS[task], task=task, device="cpu").card
    if card.kind == "regression" and card.network.gap_depth:
        raise InputError(
            f"model '{card.name}' serves every factor and the volume does not say its voxel size; "
            "give the factor (factor= or --factor)"
        )
    return None


def _read(source: Any) -> Any:
    """An input named by its path, or by a recipe's mapping (``{path, key, channel, time}``),
    read lazily (an :class:`~..io.common.ImageData`); None for an array."""
    if isinstance(source, (str, Path)):
        return read_image(source)
    if isinstance(source, Mapping) and source.get("path") is not None:
        return read_image(source["path"], key=source.get("key"), channel=source.get("channel"), time=source.get("time"))
    return None
