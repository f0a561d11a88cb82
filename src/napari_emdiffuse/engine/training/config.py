"""Training recipes: :class:`TrainConfig` (a YAML file or keyword arguments) and the image
sources it names (:class:`ImageSource`)."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import EMDiffuseError, InputError
from ..io.hdf5 import h5_file_of
from ..io.common import refuse_url
from ..io.images import read_image
from ..io.views import check_one_channel
from ..models.cards import Normalisation

__all__ = ["ImageSource", "TrainConfig", "checkpoint_path", "SMALL_NETWORK", "CHECKPOINT_NAME", "one_line"]

CHECKPOINT_NAME = "checkpoint.pt"

# Network of models trained from scratch unless the recipe says otherwise: ~3 M parameters,
# trainable on a laptop CPU, far smaller than the published 15.7 M.
SMALL_NETWORK: dict[str, Any] = {
    "inner_channel": 32,
    "channel_mults": [1, 2, 4],
    "res_blocks": 1,
    "attn_res": [],
    "dropout": 0.1,
}


def one_line(err: ValidationError, what: str) -> str:
    """One line from a pydantic error of a training setting: the first field and why."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first.get("loc", ())) or "(top level)"
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    return f"invalid {what}: {loc}: {msg}" if loc != "(top level)" else f"invalid {what}: {msg}"


# --------------------------------------------------------------------------- sources


def _parse_range(value: Any, axis: str) -> tuple[int | None, int | None] | None:
    """``"0:512"``, ``"-6:"``, ``[0, 512]`` or ``[null, -6]`` -> (start, stop)."""
    if value is None:
        return None
    if isinstance(value, str):
        parts = value.split(":")
        if len(parts) != 2:
            raise ValueError(f"{axis} range {value!r} must look like 'start:stop'")
        try:
            return tuple(int(p) if p.strip() else None for p in parts)  # type: ignore[return-value]
        except ValueError:
            raise ValueError(f"{axis} range {value!r} must hold integers") from None
    if isinstance(value, (list, tuple)) and len(value) == 2:
        if not all(v is None or isinstance(v, (int, np.integer)) for v in value):
            raise ValueError(f"{axis} range {list(value)} must hold integers or null")
        return (None if value[0] is None else int(value[0]), None if value[1] is None else int(value[1]))
    raise ValueError(f"{axis} range must be 'start:stop' or [start, stop], got {value!r}")


class ImageSource(BaseModel):
    """One training image or volume: a file (TIFF, zarr, ...) or an array, optionally cropped.

    In YAML either a plain path or a mapping such as ``{path: a.tif, y: "0:512"}``; ranges are
    Python slices (``"-6:"``: the last six) of the z, y and x axes. ``planes`` (isotropic
    tasks) says which planes of a volume teach the model: ``z`` (planes perpendicular to z,
    the ``-i`` way, for a near-isotropic volume) or ``lateral`` (perpendicular to y, rows
    dropped: the ``-a`` way, for an anisotropic volume); the default follows the task.
    ``channel`` and ``time`` pick one of several (:func:`~..io.images.read_image`).
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    path: Path | None = None
    array: Any = None
    key: str | None = None
    z: tuple[int | None, int | None] | None = None
    y: tuple[int | None, int | None] | None = None
    x: tuple[int | None, int | None] | None = None
    planes: Literal["z", "lateral"] | None = None
    channel: int | None = Field(default=None, ge=0)
    time: int | None = Field(default=None, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _coerce(cls, value: Any) -> Any:
        if isinstance(value, (str, os.PathLike)):
            return {"path": value}
        if hasattr(value, "shape") and hasattr(value, "dtype"):
            return {"array": value}
        if isinstance(value, Mapping):
            value = dict(value)
            for axis in ("z", "y", "x"):
                if axis in value:
                    value[axis] = _parse_range(value[axis], axis)
        return value

    @model_validator(mode="after")
    def _one_of(self) -> "ImageSource":
        if (self.path is None) == (self.array is None):
            raise ValueError("an image source needs exactly one of a path or an array")
        if self.array is not None and not (hasattr(self.array, "shape") and hasattr(self.array, "dtype")):
            raise ValueError("array must be an array (numpy, dask or zarr)")
        return self

    @property
    def label(self) -> str:
        """Short name for messages and model cards: file name (or array shape) and crop."""
        base = self.path.name if self.path is not None else f"array {tuple(self.array.shape)}"
        crop = ", ".join(f"{a}={_fmt(getattr(self, a))}" for a in "zyx" if getattr(self, a) is not None)
        return f"{base} [{crop}]" if crop else base

    def load(self) -> np.ndarray:
        """The pixels (cropped), as numpy."""
        if self.path is not None:
            inside = h5_file_of(Path(self.path))  # 'file.h5/dataset' names a dataset in a file
            if not (inside[0] if inside else Path(self.path)).exists():
                raise InputError(f"training image '{self.path}' does not exist")
            img = read_image(self.path, key=self.key, channel=self.channel, time=self.time)
            check_one_channel(tuple(img.data.shape), img.axes, str(self.path))
            data = img.data
        else:
            data = self.array
        nd = len(data.shape)
        index: list[slice] = [slice(None)] * nd
        for i, axis in enumerate("zyx"):
            rng = getattr(self, axis)
            if rng is None:
                continue
            pos = nd - 3 + i
            if pos < 0:
                raise InputError(f"{self.label}: a {axis} range needs a 3D volume, the image is {nd}D")
            index[pos] = slice(*rng)
        data = data[tuple(index)]
        data = data.compute() if hasattr(data, "compute") else data
        return np.asarray(data)

    def describe(self) -> str | dict:
        if self.path is None:
            return f"<array {'x'.join(map(str, self.array.shape))} {self.array.dtype}>"
        out: dict[str, Any] = {"path": str(self.path)}
        if self.key:
            out["key"] = self.key
        for axis in "zyx":
            if getattr(self, axis) is not None:
                out[axis] = _fmt(getattr(self, axis))
        if self.planes is not None:
            out["planes"] = self.planes
        return out if len(out) > 1 else str(self.path)


def _fmt(r: tuple[int | None, int | None]) -> str:
    return f"{'' if r[0] is None else r[0]}:{'' if r[1] is None else r[1]}"


# --------------------------------------------------------------------------- config


# ``register`` is a user-facing field name; pydantic warns that it shadows ABCMeta.register,
# which nobody calls on a config.
warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)


class TrainConfig(BaseModel):
    """A training or fine-tuning recipe.

    Either ``base`` names the model to start from (fine-tuning: its card, i.e. network,
    normalisation rule, scale and z factor, is kept), or the model is trained from scratch
    with :data:`SMALL_NETWORK` updated by ``network`` (any :class:`~.config.UNetConfig` field).
    From a base, ``network: {inner_channel: N}`` widens it first, computing what it did
    (:mod:`~napari_emdiffuse.engine.core.networks.widen`): more capacity for a model that has
    stopped improving at its width.

    Data (all paths may be relative to the YAML file):

    * ``inputs`` + ``targets``: registered degraded/clean pairs (super-resolve: the input is
      the low-resolution image). Pairs of different shapes are registered
      (:func:`~.registration.register_pair`); same-shape pairs are taken as registered unless
      ``register`` asks for it: ``affine`` (or ``true``) also removes the drift and the
      magnification difference between two scans of one field of view (a few tenths of a pixel
      across a 768-px SEM pair), ``translation`` only shifts. A ``null`` target, or ``inputs`` without ``targets``, means the
      input is clean and the degraded image is simulated: Poisson-Gaussian noise at
      ``doses`` (denoise), area downsampling by ``scale`` (super-resolve).
    * ``clean``: more clean images to simulate pairs from.
    * ``volume`` (isotropic tasks; ``inputs`` are taken as volumes too): the volume teaches
      itself (``-i``: planes perpendicular to z; ``-a``: perpendicular to y), ``factor``
      planes apart; a source's ``planes`` (``z`` or ``lateral``) overrides the task's choice,
      so one model can learn from a near-isotropic volume and an anisotropic volume's lateral
      planes at once (each kind of plane then gets half of the batches).

    Examples
    --------
    >>> cfg = TrainConfig(task="denoise", inputs=["noisy.tif"], targets=["clean.tif"], out="my-model")
    >>> cfg.patch, cfg.batch, cfg.iterations
    (128, 4, 1000)
    >>> TrainConfig(task="denoise", out="m")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    napari_emdiffuse.engine.errors.EMDiffuseError: invalid training config: no training data: ...
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, arbitrary_types_allowed=True)

    task: Literal["denoise", "super-resolve", "isotropic-i", "isotropic-a"]
    out: Path
    name: str | None = None
    description: str = ""
    # what to start from
    base: str | None = None
    arch: str | None = None
    kind: Literal["diffusion", "regression"] | None = None  # None: the base's, else diffusion
    network: dict[str, Any] = Field(default_factory=dict)
    normalisation: Normalisation | None = None
    scale: int | None = Field(None, ge=2, le=8)
    factor: int | None = Field(None, ge=2, le=64)
    # gap-depth isotropic predictors (network.gap_depth): crops draw their factor from factor..max_factor
    max_factor: int | None = Field(None, ge=2, le=64)
    pixel_size_nm: float | None = Field(None, gt=0)
    # inference defaults written into the model card (None: the base's or the card default)
    tile: int | None = Field(None, ge=8)
    overlap: int | None = Field(None, ge=0)
    log_snr_max: float | None = None
    start_log_snr: float | None = None
    fast_steps: int | None = Field(None, ge=1)
    balanced_steps: int | None = Field(None, ge=1)
    # noise levels: this fraction of each batch is drawn log-SNR-uniformly from focus_log_snr
    # (default: the range the model card's fast samplers visit, widened by 2 on each side)
    noise_focus: float = Field(0.0, ge=0, le=1)
    focus_log_snr: tuple[float, float] | None = None
    # data
    inputs: list[ImageSource] = Field(default_factory=list)
    targets: list[ImageSource | None] | None = None
    clean: list[ImageSource] = Field(default_factory=list)
    volume: list[ImageSource] = Field(default_factory=list)
    register: Literal["off", "translation", "affine"] = "off"
    doses: list[float] = Field(default_factory=lambda: [20.0, 50.0, 100.0, 200.0, 500.0], min_length=1)
    read_noise: float = Field(1.0, ge=0)
    noise_correlation: float = Field(0.0, ge=0, le=1)  # see simulate_noise(correlation=)
    # isotropic: this share of crops gets simulated noise (doses, read_noise, noise_correlation)
    # on its two condition planes only, so noisy measured slices give clean new ones
    condition_noise: float = Field(0.0, ge=0, le=1)
    # simulated noise: this share of crops comes from contrast-inverted copies of the clean
    # images (noise simulated after inverting, as raw backscatter SEM records it)
    invert_contrast: float = Field(0.0, ge=0, lt=1)
    # simulated noise: half of the clean crops are rescaled by up to this factor (either way)
    # before the noise, as at other magnifications (SimulatedNoiseData)
    zoom: float = Field(1.0, ge=1, le=4)
    input_blur: float = Field(0.0, ge=0, le=10)
    # super-resolution from clean images: how the low-resolution inputs are made (sr_data)
    downsampling: list[Literal["area", "gaussian", "decimate"]] = Field(default_factory=lambda: ["area"], min_length=1)
    # super-resolution from clean images: half of the crops get white noise on the
    # low-resolution grid, std up to this (model range, the image spans about 2); PairData
    input_noise: float = Field(0.0, ge=0, le=0.5)
    # denoising pairs: this fraction of crops gets the pair's own noise from elsewhere (PairData)
    resample_noise: float = Field(0.0, ge=0, le=1)
    # denoising pairs: factors on the pair's noise, as at shorter / longer dwell (PairData)
    noise_gain: tuple[float, float] = (1.0, 1.0)
    # optimisation
    patch: int = Field(128, ge=8)
    batch: int = Field(4, ge=1)
    iterations: int = Field(1000, ge=0)  # 0: a blur model refits only its estimator
    # Blur-conditioned super-resolution: steps of the estimator's own fit after the
    # predictor's (training/estimator.py; a small network, about 100 steps a second on a CPU).
    estimator_iterations: int = Field(5000, ge=0)
    lr: float = Field(1e-4, gt=0, le=1)
    warmup: int = Field(0, ge=0)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    weight_decay: float = Field(0.0, ge=0)
    ema_decay: float = Field(0.999, ge=0, le=1)
    ema_start: int = Field(0, ge=0)
    # "uniform": the saved weights are the plain mean of every step's from ema_start on
    # (stochastic weight averaging); with keep_best only the base and the last validation
    # compete, since the mean is meant to span the run (so patience never stops it)
    average: Literal["ema", "uniform"] = "ema"
    freeze_encoder: bool = False
    # "full-resolution": from a base, train only the blocks that read or write the input's grid
    # (the first encoder level, the last decoder level, the output heads); the rest stays the base's
    train_layers: Literal["all", "full-resolution"] = "all"
    # "self-supervised" (denoise, predictors): learn from the noisy inputs alone with a
    # structured blind spot (see training.selfsup); "neighbour-slices" (denoise): from noisy
    # stacks alone, each inner slice against the mean of its neighbours (training.neighbours)
    objective: Literal["supervised", "self-supervised", "neighbour-slices"] = "supervised"
    # Self-supervised from a base: weight of a term that keeps the output, away from the hidden
    # pixels, at the base's (see training.selfsup.anchor_loss); 0 for the blind spot alone
    anchor: float = Field(0.0, ge=0, le=1e6)
    # Train a diffusion refiner (see training.refine) for the predictor named as base, or for
    # the predictor this recipe trains first: its settings (network, samples, steps, presets,
    # residual_scale; iterations and lr when the recipe trains both); {} for the defaults.
    refiner: dict[str, Any] | None = None
    # validation and checkpoints
    keep_best: bool = False  # save the weights of the best validation, not the last
    # With keep_best and a base: PSNR (dB) a validation must gain over the base's to replace it.
    # A fine-tune's held-back strip is small and next to its training crops: gains below ~0.1 dB
    # there did not carry to the rest of an image (see finetune_iter). Negative: a loss the
    # validation may show and still replace the base (a score that cannot rank the base).
    base_margin: float = Field(0.0, ge=-10, le=10)
    patience: int | None = Field(None, ge=1)  # stop after this many validations without a gain
    # Wall-clock budget of one run (a cluster slot, a lent GPU): stop after this many minutes,
    # validate, save the model (``completed: false`` in its card) and a checkpoint to resume from.
    max_minutes: float | None = Field(None, gt=0)
    val_fraction: float = Field(0.1, ge=0, lt=0.9)
    val_every: int = Field(100, ge=1)
    val_crops: int = Field(4, ge=1)
    val_steps: int = Field(5, ge=1)
    checkpoint_every: int = Field(500, ge=1)
    checkpoint_dir: Path | None = None
    keep_checkpoint: bool = True
    resume: bool = False
    seed: int = Field(0, ge=0)
    device: str = "auto"
    # the arithmetic of the training steps: bf16 mixed precision (weights, optimiser and
    # validation stay fp32) where the device has native bf16, fp32 elsewhere (auto); see
    # Trainer.precision
    precision: Literal["auto", "fp32", "bf16"] = "auto"

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise EMDiffuseError(one_line(exc, "training config")) from None

    @field_validator("inputs", "clean", "volume", mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        if v is None:
            return []
        if isinstance(v, (str, os.PathLike, Mapping)) or hasattr(v, "shape"):
            return [v]
        return v

    @field_validator("targets", mode="before")
    @classmethod
    def _listify_targets(cls, v: Any) -> Any:
        if v is None:
            return None
        if isinstance(v, (str, os.PathLike, Mapping)) or hasattr(v, "shape"):
            return [v]
        return v

    @field_validator("out", mode="before")
    @classmethod
    def _local_out(cls, v: Any) -> Any:
        refuse_url(v, "a model")  # caught here, before any training
        return v

    @field_validator("register", mode="before")
    @classmethod
    def _register_flag(cls, v: Any) -> Any:
        # YAML's true / false: register with the affine field, or take same-shape pairs as they are
        if isinstance(v, bool):
            return "affine" if v else "off"
        return v

    @field_validator("doses")
    @classmethod
    def _positive_doses(cls, v: list[float]) -> list[float]:
        if any(not d > 0 for d in v):
            raise ValueError("doses must be positive")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "TrainConfig":
        iso = self.task.startswith("isotropic")
        if self.objective != "supervised" and self.task != "denoise":
            raise ValueError(f"{self.objective} training denoises; it cannot train a {self.task} model")
        if not (self.inputs or self.clean or self.volume):
            raise ValueError("no training data: give inputs, clean images or a volume")
        if self.anchor > 0 and (self.objective != "self-supervised" or self.base is None):
            raise ValueError("anchor keeps a self-supervised fine-tune near its base; it needs objective "
                             "self-supervised and a base model")
        if self.downsampling != ["area"] and self.task != "super-resolve":
            raise ValueError("downsampling makes super-resolution pairs; it needs task super-resolve")
        if self.iterations == 0 and (self.base is None or self.estimator_iterations == 0 or self.task != "super-resolve"):
            raise ValueError("iterations 0 refits only the blur estimator of a super-resolution base model; it "
                             "needs task super-resolve, a base and estimator_iterations")
        if self.input_noise > 0 and self.task != "super-resolve":
            raise ValueError("input_noise adds noise to low-resolution inputs; it needs task super-resolve "
                             "(denoising simulates noise with doses)")
        if (self.downsampling != ["area"] and not self.clean and self.targets is not None
                and all(t is not None for t in self.targets)):
            raise ValueError("downsampling makes pairs from clean images, and every input here has its target")
        if self.resample_noise > 0 and (self.task != "denoise" or self.objective != "supervised"):
            raise ValueError("resample_noise draws a denoising pair's noise anew; it needs supervised denoising from pairs")
        lo, hi = self.noise_gain
        if not 0 < lo <= hi <= 10:
            raise ValueError(f"noise_gain must be two factors 0 < low <= high <= 10, got [{lo:g}, {hi:g}]")
        if hi > lo and (self.task != "denoise" or self.objective != "supervised"):
            raise ValueError("noise_gain scales a denoising pair's noise; it needs supervised denoising from pairs")
        if self.invert_contrast > 0 and (self.task != "denoise" or not self.clean):
            raise ValueError("invert_contrast inverts clean images before simulating noise; it needs denoise with clean images")
        if self.zoom > 1 and (self.task != "denoise" or not self.clean):
            raise ValueError("zoom rescales clean images before simulating noise; it needs denoise with clean images")
        if self.targets is not None and len(self.targets) != len(self.inputs):
            raise ValueError(
                f"{len(self.inputs)} inputs but {len(self.targets)} targets; give one target per input (null: simulate)"
            )
        if self.register != "off" and not any(t is not None for t in self.targets or []):
            raise ValueError("register aligns each target onto its input; it needs inputs with targets")
        if self.condition_noise > 0 and not iso:
            raise ValueError("condition_noise noises the condition planes of isotropic training; it needs an isotropic task")
        if iso and (self.clean or any(t is not None for t in self.targets or [])):
            raise ValueError("isotropic training learns from the volume itself; remove targets and clean images")
        if not iso and self.volume:
            raise ValueError(f"volume is for the isotropic tasks; for {self.task} give inputs (and targets)")
        if any(s.planes is not None for s in [*self.inputs, *self.clean, *self.volume]) and not iso:
            raise ValueError("planes says which planes of a volume teach an isotropic model; it needs an isotropic task")
        if self.refiner is not None and (iso or self.objective != "supervised" or self.kind == "diffusion"):
            raise ValueError("a refiner is trained, supervised, for a 2D predictor (kind regression)")
        from_base = {k: v for k, v in self.network.items() if k != "inner_channel"}
        if self.base is not None and from_base and from_base not in ({"gap_depth": True}, {"blur_level": True}):
            raise ValueError("network changes apply to training from scratch (from a base, only gap_depth: true, "
                             "blur_level: true or a wider inner_channel); remove them or the base model")
        if self.network.get("blur_level") and self.task != "super-resolve":
            raise ValueError("blur_level conditions a super-resolution predictor on the acquisition blur; "
                             "it needs task super-resolve")
        if self.max_factor is not None:
            if not iso:
                raise ValueError("max_factor is for the isotropic tasks")
            if self.max_factor < (self.factor or 2):
                raise ValueError(f"max_factor ({self.max_factor}) must be at least factor ({self.factor or 2})")
        if self.freeze_encoder and self.base is None:
            raise ValueError("freeze_encoder keeps a base model's encoder; name a base model")
        if self.train_layers != "all" and (self.base is None or self.freeze_encoder):
            raise ValueError("train_layers 'full-resolution' keeps a base model's inner layers: name a base model, "
                             "and do not also freeze the encoder")
        dev = self.device.strip().lower()
        if dev not in ("auto", "cpu", "mps", "cuda") and not dev.startswith("cuda:"):
            raise ValueError(f"invalid device {self.device!r}; use auto, cpu, cuda, cuda:N or mps")
        return self

    # -- YAML -------------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> "TrainConfig":
        """Read a recipe (safe YAML loader); relative paths are relative to the file.

        ``overrides`` replace fields after reading (e.g. ``iterations=2`` for a smoke run);
        their paths are taken as given.

        Examples
        --------
        >>> cfg = TrainConfig.from_yaml("configs/demo-denoise.yaml", iterations=2)  # doctest: +SKIP
        """
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise EMDiffuseError(f"training config '{path}' does not exist") from None
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EMDiffuseError(f"cannot read training config '{path}': {reason}") from None
        if not isinstance(data, dict):
            raise EMDiffuseError(f"training config '{path}' must be a mapping of fields")
        root = path.resolve().parent

        def rel(p: Any) -> Any:
            return str((root / p).resolve()) if isinstance(p, str) and not Path(p).is_absolute() else p

        def src(s: Any) -> Any:
            if isinstance(s, str):
                return rel(s)
            if isinstance(s, dict) and "path" in s:
                return {**s, "path": rel(s["path"])}
            return s

        for key in ("inputs", "clean", "volume", "targets"):
            v = data.get(key)
            if v is None:
                continue
            data[key] = [src(s) for s in v] if isinstance(v, list) else src(v)
        for key in ("out", "checkpoint_dir"):
            if data.get(key) is not None:
                data[key] = rel(str(data[key]))
        base = data.get("base")
        if isinstance(base, str) and not Path(base).is_absolute() and (root / base).exists():
            data["base"] = str(root / base)
        data.update(overrides)
        return cls(**data)

    def to_yaml(self) -> str:
        """The recipe as YAML (arrays are described, not stored; paths absolute)."""
        out = self.model_dump(mode="python", exclude_defaults=False)
        for key in ("inputs", "clean", "volume"):
            out[key] = [s.describe() for s in getattr(self, key)]
        if self.targets is not None:
            out["targets"] = [None if t is None else t.describe() for t in self.targets]
        for key in ("out", "checkpoint_dir"):
            if out.get(key) is not None:
                out[key] = str(Path(out[key]).resolve())
        if self.normalisation is not None:
            out["normalisation"] = self.normalisation.model_dump(mode="json")
        return yaml.safe_dump(json.loads(json.dumps(out, default=str)), sort_keys=False)


def checkpoint_path(config: TrainConfig) -> Path:
    """Where a run's checkpoint lives: ``checkpoint_dir`` or ``<out>/../.<name>.train``."""
    out = Path(config.out)
    folder = Path(config.checkpoint_dir) if config.checkpoint_dir else out.parent / f".{out.name}.train"
    return folder / CHECKPOINT_NAME
