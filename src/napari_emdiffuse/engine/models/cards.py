"""Typed, validated configurations: network, noise schedules, normalisation, model card.

A model card (``model.yaml``) is a :class:`ModelCard`. Validation errors become one-line
:class:`~napari_emdiffuse.engine.errors.ModelFileError` messages naming the field.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..core.schedules import SCHEDULES
from ..errors import EMDiffuseError, ModelFileError

__all__ = [
    "TASKS",
    "ARCHITECTURES",
    "UNetConfig",
    "ScheduleConfig",
    "BetaScheduleConfig",
    "Normalisation",
    "ModelCard",
    "RefinerCard",
    "validation_message",
    "read_original_config",
    "published_network",
    "published_card",
    "TAIL_CURVATURE",
    "TAIL_CAP",
]

#: |LoG| of a 2D output (model range) at which its uncertainty's tail factor reaches
#: ``1 + uncertainty_tail`` (about the 99th percentile on real EM; inference.structure).
TAIL_CURVATURE = 0.12
#: The tail factor's curvature is capped at this many ``TAIL_CURVATURE``.
TAIL_CAP = 2.0

TASKS = ("denoise", "super-resolve", "isotropic-i", "isotropic-a")
# Published architectures and the task each one does.
ARCHITECTURES = {
    "EMDiffuse-n": "denoise",
    "EMDiffuse-r": "super-resolve",
    "vEMDiffuse-i": "isotropic-i",
    "vEMDiffuse-a": "isotropic-a",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class UNetConfig(_Strict):
    """Architecture of the denoising UNet (names as in the original configs)."""

    in_channel: int = Field(2, ge=1)
    out_channel: int = Field(1, ge=1)
    inner_channel: int = Field(32, ge=2)
    channel_mults: list[int] = Field(default_factory=lambda: [1, 2, 4, 8], min_length=1)
    attn_res: list[int] = Field(default_factory=lambda: [16])
    num_head_channels: int = 32
    res_blocks: int = Field(2, ge=1)
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    image_size: int = Field(256, ge=8)
    slice_embedding: bool = False
    aleatoric: bool = False
    # Predictors (kind regression): the network adds a correction to a base image, the
    # condition itself (denoise, super-resolve after upsampling) or the linear interpolation
    # of the two measured slices (isotropic), so an untrained network already returns the
    # classical answer and capacity goes into what the classical answer misses.
    residual: bool = False
    # Isotropic predictors: the network makes one slice of a gap at a time and is told how far
    # into the gap it lies (depth j/f, as the level its embedding sees), so one model serves
    # every factor; without it, one output channel per new slice fixes the factor.
    gap_depth: bool = False
    # Super-resolution predictors: told the acquisition blur of the low-resolution image
    # (probe width, high-resolution pixels) as the level their embedding sees, and carrying
    # a small estimator that reads it off the image (core.networks.blur).
    blur_level: bool = False
    norm_groups: int | None = None
    # Width of the sinusoidal level embedding (None: inner_channel); a widened network keeps
    # its base's (core.networks.widen).
    embed_channels: int | None = Field(None, ge=2)

    @field_validator("channel_mults")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(m < 1 for m in v):
            raise ValueError("channel multipliers must be positive")
        return v

    @model_validator(mode="after")
    def _groups_divide(self) -> "UNetConfig":
        groups = self.norm_groups or min(32, self.inner_channel)
        for m in self.channel_mults:
            if (m * self.inner_channel) % groups:
                raise ValueError(
                    f"{m * self.inner_channel} channels cannot be split into {groups} normalisation groups"
                )
        return self

    @property
    def size_multiple(self) -> int:
        return 2 ** (len(self.channel_mults) - 1)


class ScheduleConfig(_Strict):
    schedule: str = "linear"
    n_timestep: int = Field(1000, ge=1)
    linear_start: float = Field(1e-6, gt=0)
    linear_end: float = Field(1e-2, gt=0, le=1)

    @field_validator("schedule")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in SCHEDULES:
            raise ValueError(f"unknown schedule {v!r}; choose one of {', '.join(SCHEDULES)}")
        return v


class BetaScheduleConfig(_Strict):
    train: ScheduleConfig = Field(
        default_factory=lambda: ScheduleConfig(n_timestep=2000, linear_start=1e-6, linear_end=0.01)
    )
    test: ScheduleConfig = Field(
        default_factory=lambda: ScheduleConfig(n_timestep=1000, linear_start=1e-4, linear_end=0.09)
    )


class Normalisation(_Strict):
    """How input intensities map to the model's [-1, 1].

    ``percentile``: the ``low``/``high`` percentiles of the input map to -1/+1 (the
    default; works for any dtype). ``range``: the fixed values ``vmin``/``vmax`` map to
    -1/+1 (the published models: 8-bit 0..255).
    """

    mode: Literal["percentile", "range"] = "percentile"
    low: float = Field(0.5, ge=0, lt=100)
    high: float = Field(99.5, gt=0, le=100)
    vmin: float = 0.0
    vmax: float = 255.0

    @model_validator(mode="after")
    def _ordered(self) -> "Normalisation":
        if self.mode == "percentile" and self.low >= self.high:
            raise ValueError("low percentile must be below high percentile")
        if self.mode == "range" and self.vmin >= self.vmax:
            raise ValueError("vmin must be below vmax")
        return self


class RefinerCard(_Strict):
    """The second network of a predictor: a diffusion UNet that samples the residual (the
    image minus the predictor's mean, divided by ``residual_scale``) from the condition and
    the mean (``network.in_channel`` = condition channels + 1 mean + 1 noisy residual). Its
    weights sit in the model's weights file under the ``refiner.`` prefix."""

    network: UNetConfig
    beta_schedule: BetaScheduleConfig = Field(default_factory=BetaScheduleConfig)
    residual_scale: float = Field(0.1, gt=0)
    steps: int = Field(10, ge=1)  # sampler steps of the refining presets
    samples: int = Field(4, ge=1)  # residual samples drawn per image
    # the presets that refine by default (measured per model: averaging K samples can cost
    # PSNR against the predictor's mean, for sharper samples and a spread)
    presets: list[Literal["fast", "balanced", "reference"]] = Field(default_factory=lambda: ["reference"])
    # Few-step sampling starts from a zero residual (the mean itself) noised to this
    # log-SNR, not from pure noise (None); the published 1000-step sampler always starts
    # from noise.
    start_log_snr: float | None = None
    log_snr_max: float = 8.0
    training: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)


class ModelCard(_Strict):
    """Everything needed to run a model, stored as ``model.yaml`` beside the weights."""

    format_version: int = 1
    name: str
    task: Literal["denoise", "super-resolve", "isotropic-i", "isotropic-a"]
    kind: Literal["diffusion", "regression"] = "diffusion"
    arch: str | None = None  # published architecture name when imported
    description: str = ""
    network: UNetConfig
    beta_schedule: BetaScheduleConfig = Field(default_factory=BetaScheduleConfig)
    normalisation: Normalisation = Field(default_factory=Normalisation)
    scale: int = Field(1, ge=1, le=8)  # lateral super-resolution factor
    z_factor: int | None = Field(None, ge=2)  # isotropic: slices per input gap the model was trained for
    pixel_size_nm: float | None = Field(None, gt=0)
    tile: int = Field(256, ge=8)
    overlap: int = Field(32, ge=0)
    log_snr_max: float = 8.0  # cleanest noise level of the fast samplers
    # Few-step samplers may start from a noised copy of the condition at this log-SNR
    # instead of pure noise (None): fewer steps, and only noise levels the model handles well.
    start_log_snr: float | None = None
    # Predictors: factor on the aleatoric std so that +-2 std covers 95 % of the errors on the
    # training run's held-out crops (set when training ends; 1 = as the head predicts).
    uncertainty_scale: float = Field(1.0, gt=0)
    # Gap-depth isotropic predictors: the scale measured at a few factors ({factor: scale});
    # other factors interpolate it linearly in log(factor), constant beyond the ends. The error
    # of a mean grows with the gap faster than the head learnt on the training volume says.
    uncertainty_by_factor: dict[int, float] | None = None
    # 2D predictors: a predictor errs most where the image curves (membranes, edges), which
    # its aleatoric head underrates; the variance gains this weight times the squared
    # Laplacian of Gaussian (1 px) of the output (0: off; see inference.structure).
    uncertainty_structure: float = Field(0.0, ge=0)
    # 2D predictors: the std is multiplied by 1 + this * min(|LoG| / TAIL_CURVATURE, TAIL_CAP)^2,
    # so that the sharpest places, where the largest errors are, are marked (0: off;
    # inference.structure).
    uncertainty_tail: float = Field(0.0, ge=0)
    fast_steps: int = Field(10, ge=1)  # steps of the "fast" preset for this model
    balanced_steps: int = Field(20, ge=1)  # steps of the "balanced" preset
    weights: str = "weights.safetensors"
    ema: bool = False
    # Predictors only: the diffusion refiner that samples around the mean (None: none).
    refiner: RefinerCard | None = None
    training: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    citation: str = (
        "Lu et al., EMDiffuse: a diffusion-based deep learning method augmenting ultrastructural "
        "imaging and volume electron microscopy. Nature Communications 15, 4677 (2024)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> "ModelCard":
        if self.overlap >= self.tile:
            raise ValueError(f"overlap {self.overlap} must be smaller than tile {self.tile}")
        iso = self.task.startswith("isotropic")
        if iso and self.kind == "diffusion" and not self.network.slice_embedding:
            raise ValueError("an isotropic diffusion model needs network.slice_embedding: true")
        if self.network.gap_depth and not (
            iso and self.kind == "regression" and self.network.in_channel == 2 and self.network.out_channel == 1
        ):
            raise ValueError("network.gap_depth belongs to an isotropic predictor with 2 input channels and 1 output")
        if self.network.blur_level and not (
            self.task == "super-resolve" and self.kind == "regression"
            and self.network.in_channel == 1 and self.network.out_channel == 1
        ):
            raise ValueError("network.blur_level belongs to a super-resolution predictor with 1 input channel and 1 output")
        if self.uncertainty_by_factor is not None:
            if not self.network.gap_depth:
                raise ValueError("uncertainty_by_factor belongs to a gap-depth isotropic predictor")
            if not self.uncertainty_by_factor or any(
                f < 2 or not v > 0 for f, v in self.uncertainty_by_factor.items()
            ):
                raise ValueError("uncertainty_by_factor maps factors >= 2 to positive scales")
        if (self.uncertainty_structure > 0 or self.uncertainty_tail > 0) and iso:
            raise ValueError("uncertainty_structure and uncertainty_tail apply to 2D restorations (denoise, "
                             "super-resolve)")
        if self.task == "super-resolve" and self.scale < 2:
            raise ValueError("a super-resolve model needs scale >= 2")
        if self.refiner is not None:
            if self.kind != "regression" or iso:
                raise ValueError("a refiner belongs to a 2D predictor (kind regression, denoise or super-resolve)")
            if self.refiner.network.in_channel != self.cond_channels + 2:
                raise ValueError(
                    f"refiner.network.in_channel must be {self.cond_channels + 2} "
                    "(the condition, the mean and the noisy residual)"
                )
        return self

    def std_scale(self, factor: int | None = None) -> float:
        """The factor on the predicted std (``uncertainty_scale``, or for a gap-depth model
        its ``uncertainty_by_factor`` at ``factor``).

        Examples
        --------
        >>> card = ModelCard(name="x", task="isotropic-i", kind="regression", uncertainty_by_factor={3: 1.5, 12: 3.0},
        ...                  network=UNetConfig(in_channel=2, out_channel=1, gap_depth=True))
        >>> card.std_scale(6), card.std_scale(2), card.std_scale(20)
        (2.25, 1.5, 3.0)
        """
        table = self.uncertainty_by_factor
        if not table or factor is None:
            return self.uncertainty_scale
        keys = sorted(table)
        return float(np.interp(np.log(factor), np.log(keys), [table[k] for k in keys]))

    @property
    def cond_channels(self) -> int:
        """Channels of the condition image (the network also sees y_t for diffusion)."""
        return self.network.in_channel - (1 if self.kind == "diffusion" else 0)


def validation_message(err: ValidationError, what: str) -> str:
    """One line from a pydantic error: the first offending field and why."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first.get("loc", ())) or "(top level)"
    return f"invalid {what}: {loc}: {first.get('msg', 'invalid value')}"


_COMMENT = re.compile(r"(\"(?:\\.|[^\"\\])*\")|//[^\n]*")


def _strip_json_comments(text: str) -> str:
    # Keep string literals (URLs contain //), drop the rest of a // comment line.
    return _COMMENT.sub(lambda m: m.group(1) or "", text)


def _find(d: Any, want: tuple[str, ...]) -> dict | None:
    if isinstance(d, dict):
        if all(k in d for k in want):
            return d
        for v in d.values():
            found = _find(v, want)
            if found is not None:
                return found
    elif isinstance(d, list):
        for v in d:
            found = _find(v, want)
            if found is not None:
                return found
    return None


def read_original_config(path: str | Path) -> tuple[UNetConfig, BetaScheduleConfig, dict]:
    """Read an original EMDiffuse JSON config (``//`` comments allowed).

    Accepts the training configs of the original code (``model.which_networks[0].args``)
    and the reference fixtures' ``{"config": {"unet": ..., "beta_schedule": ...}}``.
    Returns the network config, the noise schedules and the whole parsed file.

    Examples
    --------
    >>> unet, sched, raw = read_original_config("EMDiffuse-n.json")  # doctest: +SKIP
    >>> unet.inner_channel
    32
    """
    path = Path(path)
    try:
        raw = json.loads(_strip_json_comments(path.read_text()))
    except FileNotFoundError:
        raise EMDiffuseError(f"config file '{path}' does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EMDiffuseError(f"cannot read config '{path}': {exc}") from None
    found = _find(raw, ("unet", "beta_schedule"))
    if found is None:
        raise EMDiffuseError(f"config '{path}' has no 'unet' and 'beta_schedule' sections")
    unet = {k: v for k, v in found["unet"].items() if k in UNetConfig.model_fields}
    sched = {
        phase: {k: v for k, v in found["beta_schedule"][phase].items() if k in ScheduleConfig.model_fields}
        for phase in ("train", "test")
        if phase in found["beta_schedule"]
    }
    try:
        return UNetConfig(**unet), BetaScheduleConfig(**sched), raw
    except ValidationError as exc:
        raise ModelFileError(validation_message(exc, f"config '{path}'")) from None


def published_network(arch: str) -> UNetConfig:
    """The network configuration of a published EMDiffuse / vEMDiffuse model."""
    if arch not in ARCHITECTURES:
        raise ModelFileError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    vem = arch.startswith("vEM")
    return UNetConfig(
        in_channel=3 if vem else 2,
        out_channel=1,
        inner_channel=32,
        channel_mults=[1, 2, 4, 8],
        attn_res=[16],
        num_head_channels=32,
        res_blocks=2,
        dropout=0.2,
        image_size=256,
        slice_embedding=vem,
    )


def published_card(arch: str, *, name: str | None = None, network: UNetConfig | None = None) -> ModelCard:
    """Model card of a published model: 8-bit input mapped linearly to [-1, 1]."""
    network = network or published_network(arch)
    task = ARCHITECTURES[arch]
    return ModelCard(
        name=name or arch,
        task=task,
        kind="diffusion",
        arch=arch,
        description=f"Published {arch} weights (Lu et al. 2024), imported unchanged.",
        network=network,
        normalisation=Normalisation(mode="range", vmin=0.0, vmax=255.0),
        scale=2 if task == "super-resolve" else 1,
        tile=256,
        overlap=64,
    )
