"""The loaded model: its card and its torch module, ready to run."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from .cards import ModelCard
from .device import resolve_device
from .files import save_model_dir

__all__ = ["EMDiffuseModel", "REFINER_PREFIX"]

#: Key prefix of the refiner's weights in a predictor's weights file.
REFINER_PREFIX = "refiner."


class EMDiffuseModel:
    """A model ready to run: its card and its torch module.

    Use :func:`load_model` to get one; the restoration functions accept it wherever they
    accept a model name or path.
    """

    def __init__(
        self, card: ModelCard, module: nn.Module, *, refiner: nn.Module | None = None, path: Path | None = None
    ) -> None:
        self.card = card
        self.module = module.eval()
        # A predictor's diffusion refiner (a ``Network``), when its card has one.
        self.refiner = refiner.eval() if refiner is not None else None
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
        dev = resolve_device(device) if isinstance(device, str) else device
        self.module.to(dev)
        if self.refiner is not None:
            self.refiner.to(dev)
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        sd = dict(self.module.state_dict())
        if self.refiner is not None:
            sd.update({f"{REFINER_PREFIX}{k}": v for k, v in self.refiner.state_dict().items()})
        return sd

    def digest(self) -> str:
        """A digest of the card and every weight: equal digests compute equal pixels."""
        h = hashlib.blake2b(self.card.model_dump_json().encode(), digest_size=16)
        for name, tensor in sorted(self.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().to("cpu").reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def refiner_model(self) -> "EMDiffuseModel | None":
        """The refiner as a diffusion model of its own (its card: the refiner's network and
        schedule, this model's tiling), for the samplers; None without a refiner."""
        ref = self.card.refiner
        if ref is None or self.refiner is None:
            return None
        card = self.card.model_copy(
            update=dict(
                name=f"{self.card.name} (refiner)", kind="diffusion", network=ref.network,
                beta_schedule=ref.beta_schedule, refiner=None, log_snr_max=ref.log_snr_max,
                start_log_snr=None, uncertainty_scale=1.0, uncertainty_structure=0.0, uncertainty_tail=0.0,
            )
        )  # fmt: skip
        return EMDiffuseModel(card, self.refiner, path=self.path)

    def save(self, path: str | Path, *, extra_files: dict[str, str] | None = None) -> Path:
        """Write this model as a model directory (atomically)."""
        return save_model_dir(path, self.card, self.state_dict(), extra_files=extra_files)
