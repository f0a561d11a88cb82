"""Devices: ``auto`` picks CUDA, then Apple MPS, then the CPU; explicit names are checked."""

from __future__ import annotations

import torch

from ..errors import EMDiffuseError

__all__ = ["resolve_device"]


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then the CPU; explicit names are checked."""
    if isinstance(device, torch.device):
        return device
    name = (device or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise EMDiffuseError("device 'mps' is not available on this machine")
        return torch.device("mps")
    if name == "cuda" or name.startswith("cuda:"):
        idx = name.partition(":")[2]
        if idx and not idx.isdigit():
            raise EMDiffuseError(f"invalid device {device!r}; use auto, cpu, cuda, cuda:N or mps")
        if not torch.cuda.is_available():
            raise EMDiffuseError(f"device {device!r} is not available: no CUDA GPU found")
        if idx and int(idx) >= torch.cuda.device_count():
            raise EMDiffuseError(f"device {device!r} is not available: {torch.cuda.device_count()} CUDA GPU(s) found")
        return torch.device(name)
    raise EMDiffuseError(f"invalid device {device!r}; use auto, cpu, cuda, cuda:N or mps")
