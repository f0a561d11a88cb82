"""The Fine-tune widget's options as plain values, and the parsing of what the user types.

No Qt here: :class:`FinetuneOptions` round-trips through the settings file and turns into
``finetune_iter``'s keyword arguments, so the CLI-equivalent checks run without a viewer.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..api import FinetuneOptions as _ApiFinetuneOptions
from ..engine.errors import EMDiffuseError
from ..engine.models.cards import TASKS
from ..engine.models.files import read_card
from ..engine.training.data.pairs import DOWNSAMPLING
from ._settings import WidgetOptions

__all__ = ["FinetuneOptions", "LEARN_FROM", "REGISTER", "default_output", "exportable", "parse_doses", "parse_lr"]

def parse_lr(text: str) -> float:
    """A learning rate typed by the user (``5e-5``, ``0.00005``); ``auto`` or nothing is 0, the
    engine's default for the model (see :func:`~napari_emdiffuse.api.finetune`)."""
    if str(text).strip().lower() in ("", "auto"):
        return 0.0
    try:
        lr = float(str(text).strip())
    except ValueError:
        raise EMDiffuseError(f"learning rate {text!r} is not a number (e.g. 5e-5)") from None
    if not (math.isfinite(lr) and 0 < lr < 1):
        raise EMDiffuseError(f"learning rate must be between 0 and 1, got {text}")
    return lr


def parse_doses(text: str) -> list[float]:
    """Simulated doses typed by the user (``20 50 100``, ``20, 50``): positive numbers.

    Examples
    --------
    >>> parse_doses("20, 50 100")
    [20.0, 50.0, 100.0]
    """
    parts = [p for p in str(text).replace(",", " ").split() if p]
    try:
        doses = [float(p) for p in parts]
    except ValueError:
        raise EMDiffuseError(f"doses {text!r} are not numbers (e.g. 20 50 100)") from None
    if not doses or not all(math.isfinite(d) and d > 0 for d in doses):
        raise EMDiffuseError(f"doses must be positive numbers (detected electrons at white), got {text!r}")
    return doses


def exportable(model_dir: str | Path) -> bool:
    """Whether a saved model exports to bioimage.io: a percentile-normalised predictor of any
    task (an isotropic one of every factor, for the factor box's factor), as
    :func:`~..engine.models.bioimageio.export_bioimageio` takes it; not a diffusion model (the
    format describes network passes, not a sampler)."""
    try:
        card = read_card(model_dir)
    except (EMDiffuseError, OSError):
        return False
    return card.kind == "regression" and card.normalisation.mode == "percentile" and not card.network.slice_embedding


def default_output(task: str, now: float | None = None) -> Path:
    """A fresh folder under the user model directory, so the model is listed everywhere."""
    from ..engine.models.registry import user_dir

    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    return user_dir() / "models" / f"{task}-finetuned-{stamp}"


_API_DEFAULTS = _ApiFinetuneOptions()
#: How the Fine-tune widget aligns a pair (TrainConfig ``register``; "as given" is "off").
REGISTER = ("as given", "translation", "affine")

#: What a noisy input with no target learns from, and the engine's objective for each
#: (``None``: the engine picks, and says why).
LEARN_FROM = {"default": None, "blind spot": "self-supervised", "neighbouring slices": "neighbour-slices"}


@dataclass
class FinetuneOptions(WidgetOptions):
    """The widget's options as plain values.

    Attributes
    ----------
    task : str
        ``denoise``, ``super-resolve``, ``isotropic-i`` or ``isotropic-a``.
    iterations, patch, batch : int
        Training iterations, patch edge in pixels, patches per iteration.
    lr : float
        Learning rate (AdamW); 0 takes the engine's default for the base model.
    val_fraction : float
        Share of the image held out for validation (its PSNR/SSIM and preview).
    freeze_encoder : bool
        Train only the decoder (less data needed, less forgetting).
    factor : int
        Isotropic tasks: slices per gap (z / xy spacing); 0 keeps the base model's.
    faster : float
        Denoising from a pair: also train for scans up to this many times faster (shorter
        dwell) than the pair's, by scaling its noise up to ``sqrt(faster)`` (``noise_gain``);
        1 trains on the pair as recorded. Ignored by the other tasks.
    downsampling : str
        Super-resolution without a target: how the low-resolution input was made, and so how
        it is halved once more into training pairs (``area``, ``gaussian`` or ``decimate``; see
        ``sr_data``). Ignored by the other tasks.
    register : str
        A pair: ``as given`` (a target of the input's shape is taken as registered),
        ``translation`` or ``affine`` (also the drift and magnification difference of two
        scans) to align the target onto the input first. Ignored without a target.
    clean_input : bool
        Denoising without a target: the input is a clean image of the user's kind, and noise
        is simulated on it at ``doses`` (``objective="supervised"``) instead of learning from
        a noisy input alone (self-supervised).
    learn_from : str
        Denoising a noisy input with no target: ``default`` (the engine's: the blind spot, with
        a note on how alike a stack's slices look), ``blind spot`` or ``neighbouring slices``
        (see :data:`LEARN_FROM`).
    doses : str
        With ``clean_input``: the simulated doses, detected electrons at white, separated by
        spaces or commas.
    noise_correlation : float
        With ``clean_input``: the simulated noise's neighbour weight (0: white; 0.35 gives the
        ~0.5 neighbour correlation of short-dwell SEM).
    output : str
        Where the model is saved; empty: a new folder under the user model directory.
    """

    task: str = "denoise"
    iterations: int = _API_DEFAULTS.iterations
    patch: int = _API_DEFAULTS.patch
    batch: int = _API_DEFAULTS.batch
    lr: float = 0.0
    val_fraction: float = _API_DEFAULTS.val_fraction
    seed: int = 0
    device: str = "auto"
    freeze_encoder: bool = False
    factor: int = 0
    faster: float = 1.0
    downsampling: str = "area"
    register: str = "as given"
    clean_input: bool = False
    learn_from: str = "default"
    doses: str = "20 50 100 200 500"
    noise_correlation: float = 0.0
    output: str = ""

    @property
    def needs_target(self) -> bool:
        return not self.task.startswith("isotropic")

    def validate(self) -> "FinetuneOptions":
        if self.task not in TASKS:
            raise EMDiffuseError(f"unknown task {self.task!r}; choose one of {', '.join(TASKS)}")
        if self.iterations < 1:
            raise EMDiffuseError("iterations must be at least 1")
        if self.patch < 8:
            raise EMDiffuseError(f"patch must be at least 8 pixels, got {self.patch}")
        if self.batch < 1:
            raise EMDiffuseError("batch must be at least 1")
        if self.lr:
            parse_lr(str(self.lr))
        if not 0 <= self.val_fraction < 0.9:
            raise EMDiffuseError(f"validation fraction must be in [0, 0.9), got {self.val_fraction}")
        if not 1 <= self.faster <= 16:
            raise EMDiffuseError(f"faster scans must be between 1 and 16 times the pair's speed, got {self.faster:g}")
        if self.downsampling not in DOWNSAMPLING:
            raise EMDiffuseError(f"downsampling must be one of {', '.join(DOWNSAMPLING)}, got {self.downsampling!r}")
        if self.register not in REGISTER:
            raise EMDiffuseError(f"register must be one of {', '.join(REGISTER)}, got {self.register!r}")
        if self.learn_from not in LEARN_FROM:
            raise EMDiffuseError(f"learn from must be one of {', '.join(LEARN_FROM)}, got {self.learn_from!r}")
        if self.learn_from != "default" and (self.task != "denoise" or self.clean_input):
            raise EMDiffuseError("'learn from' is for denoising a noisy input alone; set it to default")
        if self.clean_input:
            if self.task != "denoise":
                raise EMDiffuseError("'input is clean' simulates noise for denoising; uncheck it for this task")
            parse_doses(self.doses)
            if not 0 <= self.noise_correlation <= 1:
                raise EMDiffuseError(f"noise correlation must be in [0, 1], got {self.noise_correlation:g}")
        if self.factor and not 2 <= self.factor <= 16:
            raise EMDiffuseError(f"factor must be between 2 and 16, got {self.factor}")
        if self.output and Path(self.output).expanduser().is_file():
            raise EMDiffuseError(f"output '{self.output}' is a file; give a folder for the model")
        return self

    def engine_kwargs(self, now: float | None = None) -> dict[str, Any]:
        """Keyword arguments of ``finetune_iter`` (besides task, input, target, base)."""
        self.validate()
        out = Path(self.output).expanduser() if self.output else default_output(self.task, now)
        kw: dict[str, Any] = {"factor": self.factor or None} if not self.needs_target else {}
        if self.task == "denoise" and self.faster > 1:
            kw["noise_gain"] = (1.0, round(float(np.sqrt(self.faster)), 4))  # noise std ~ 1 / sqrt(dwell)
        if self.task == "super-resolve" and self.downsampling != "area":
            kw["downsampling"] = [self.downsampling]
        if self.needs_target and self.register != "as given":
            kw["register"] = self.register
        if self.clean_input:
            kw.update(objective="supervised", doses=parse_doses(self.doses), noise_correlation=self.noise_correlation)
        elif LEARN_FROM[self.learn_from] is not None:
            kw["objective"] = LEARN_FROM[self.learn_from]
        return kw | {
            "out": out,
            "iterations": self.iterations,
            "patch": self.patch,
            "batch": self.batch,
            "lr": self.lr or None,
            "val_fraction": self.val_fraction,
            "seed": self.seed,
            "device": self.device,
            "freeze_encoder": self.freeze_encoder,
        }
