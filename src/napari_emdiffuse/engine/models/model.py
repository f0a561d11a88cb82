"""The loaded model: its card and its torch module, ready to run."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .cards import ModelCard
from .device import resolve_device
from .files import save_model_dir

__all__ = ["EMDiffuseModel"]


class EMDiffuseModel:
    """A model ready to run: its card and its torch module.

    Use :func:`load_model` to get one; the restoration functions accept it wherever they
    accept a model name or path.
    """

    def __init__(self, card: ModelCard, module: nn.Module, *, path: Path | None = None) -> None:
        self.card = card
        self.module = module.eval()
        self.path = path

    def __repr__(self) -> str:
        where = f", path='{self.path}'" if self.path else ""
        return f"EMDiffuseModel(name={self.card.name!r}, task={self.card.task!r}, kind={self.card.kind!r}{where})"

    @property
    def task(self) -> str:
        return self.card.task

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    @property
    def unet(self) -> nn.Module:
        return getattr(self.module, "denoise_fn", self.module)

    def to(self, device: str | torch.device) -> "EMDiffuseModel":
        self.module.to(resolve_device(device) if isinstance(device, str) else device)
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def save(self, path: str | Path, *, extra_files: dict[str, str] | None = None) -> Path:
        """Write this model as a model directory (atomically)."""
        return save_model_dir(path, self.card, self.state_dict(), extra_files=extra_files)
