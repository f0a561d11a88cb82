"""Model files: save and load model directories safely, import published checkpoints.

A model directory holds ``model.yaml`` (a :class:`~.config.ModelCard`) and the weights as
safetensors. Loading never executes code from a file: YAML is parsed with the safe loader,
weights come from safetensors or ``torch.load(weights_only=True)``, zip archives with
absolute or ``..`` member paths are refused, and declared tensor shapes are checked against
the network before any tensor is read.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
import yaml
from pydantic import ValidationError

from ..core.diffusion import SCHEDULE_BUFFERS
from ..errors import ModelFileError
from ..io.atomic import replace_dir, temp_dir_beside
from .cards import ModelCard, validation_message

__all__ = [
    "PACKAGED_CARD_NAME",
    "CARD_NAME",
    "read_card",
    "write_card",
    "save_model_dir",
    "load_model_dir",
    "load_state_dict_file",
    "check_state_dict",
    "extract_archive",
    "clean_published_state_dict",
    "safetensors_header",
    "torch_load",
]

CARD_NAME = "model.yaml"
# The card's name inside a bioimage.io package, where "model.yaml" is reserved for the
# package's own description.
PACKAGED_CARD_NAME = "emdiffuse-card.yaml"
_MAX_HEADER = 100 * 1024 * 1024


def read_card(path: str | Path) -> ModelCard:
    """Parse and validate ``model.yaml`` (safe YAML loader only)."""
    path = Path(path)
    if path.is_dir():
        packaged = path / PACKAGED_CARD_NAME
        path = packaged if packaged.is_file() and not (path / CARD_NAME).is_file() else path / CARD_NAME
    if not path.is_file():
        raise ModelFileError(f"no model card: '{path}' does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelFileError(f"model card '{path}' is not valid YAML: {reason}") from None
    if not isinstance(data, dict):
        raise ModelFileError(f"model card '{path}' must be a mapping of fields")
    try:
        return ModelCard(**data)
    except ValidationError as exc:
        raise ModelFileError(validation_message(exc, f"model card '{path}'")) from None


def write_card(card: ModelCard, path: str | Path) -> None:
    text = yaml.safe_dump(card.model_dump(mode="json"), sort_keys=False)
    Path(path).write_text(text)


def save_model_dir(
    path: str | Path,
    card: ModelCard,
    state_dict: Mapping[str, torch.Tensor],
    *,
    extra_files: Mapping[str, str] | None = None,
) -> Path:
    """Write a model directory atomically (temp dir, then rename).

    ``extra_files`` maps file names to text (e.g. the training recipe ``config.yaml``).
    """
    from safetensors.torch import save_file

    final = Path(path)
    tmp = temp_dir_beside(final)
    try:
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
        save_file(tensors, str(tmp / card.weights), metadata={"format": "pt"})
        write_card(card, tmp / CARD_NAME)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        # mkdtemp makes 0700; a model is meant to be shared (lab servers, clusters)
        os.chmod(tmp, 0o755)
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def safetensors_header(path: Path) -> dict:
    """The checked header of a safetensors file (key -> dtype, shape, offsets), read without
    reading any tensor."""
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise ModelFileError(f"weights file '{path}' is truncated")
        (n,) = struct.unpack("<Q", raw)
        if n > _MAX_HEADER:
            raise ModelFileError(f"weights file '{path}' has an implausible header ({n} bytes)")
        head = fh.read(n)
        if len(head) < n:
            raise ModelFileError(f"weights file '{path}' is truncated")
        size = os.fstat(fh.fileno()).st_size
    try:
        header = json.loads(head)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelFileError(f"weights file '{path}' is not a safetensors file") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"weights file '{path}' is not a safetensors file")
    header.pop("__metadata__", None)
    for key, v in header.items():
        # Every entry must be {"shape": [ints >= 0], "data_offsets": [begin, end], ...}.
        ok = isinstance(v, dict) and isinstance(v.get("shape"), list) and isinstance(v.get("data_offsets"), list)
        ok = ok and len(v["data_offsets"]) == 2
        ok = ok and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in v["shape"] + v["data_offsets"])
        if not ok:
            raise ModelFileError(f"weights file '{path}' is not a safetensors file (bad entry for '{key}')")
    end = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
    if 8 + n + end > size:
        raise ModelFileError(f"weights file '{path}' is truncated")
    return header


def check_state_dict(
    shapes: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]], source: str
) -> None:
    """Raise a one-line error naming the first missing, unexpected or mis-shaped key."""
    for key, shape in expected.items():
        if key not in shapes:
            raise ModelFileError(f"{source}: missing key '{key}'")
        if tuple(shapes[key]) != tuple(shape):
            raise ModelFileError(
                f"{source}: key '{key}' has shape {list(shapes[key])}, the network expects {list(shape)}"
            )
    for key in shapes:
        if key not in expected:
            raise ModelFileError(f"{source}: unexpected key '{key}'")


def load_state_dict_file(
    path: str | Path, expected: Mapping[str, tuple[int, ...]] | None = None
) -> dict[str, torch.Tensor]:
    """Load weights from safetensors or a PyTorch file without executing code.

    When ``expected`` (key -> shape) is given, safetensors headers are checked before any
    tensor is read; ``.pth`` files are memory-mapped and checked before they are copied.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"weights file '{path}' does not exist")
    if path.suffix == ".safetensors":
        header = safetensors_header(path)
        if expected is not None:
            check_state_dict({k: tuple(v["shape"]) for k, v in header.items()}, expected, f"'{path}'")
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise ModelFileError(f"cannot read weights '{path}': {exc}") from None
    sd = torch_load(path)
    if expected is not None:
        check_state_dict({k: tuple(v.shape) for k, v in sd.items()}, expected, f"'{path}'")
    return sd


def torch_load(path: Path) -> dict[str, torch.Tensor]:
    """A PyTorch state dict loaded with ``weights_only=True`` (no pickled code); one-line errors."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as exc:  # noqa: BLE001 - every failure is the file's fault here
        msg = str(exc)
        if "Weights only load failed" in msg or "Unsupported global" in msg or "GLOBAL" in msg:
            raise ModelFileError(
                f"refusing '{path}': it contains pickled code or objects, not just weights"
            ) from None
        reason = msg.strip().splitlines()[0] if msg.strip() else type(exc).__name__
        raise ModelFileError(f"cannot read checkpoint '{path}': {reason}") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelFileError(f"checkpoint '{path}' is not a state_dict of tensors")
    return dict(obj)


def extract_archive(path: str | Path, dest: str | Path) -> Path:
    """Extract a zipped model directory after checking every member path.

    Returns the directory that holds ``model.yaml``.
    """
    path, dest = Path(path), Path(dest)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelFileError(f"cannot open model archive '{path}': {exc}") from None
    with zf:
        for info in zf.infolist():
            name = info.filename
            parts = Path(name.replace("\\", "/")).parts
            if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts:
                raise ModelFileError(f"refusing model archive '{path}': unsafe member path '{name}'")
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise ModelFileError(f"refusing model archive '{path}': member '{name}' is a symbolic link")
        zf.extractall(dest)
    cards = sorted([*dest.rglob(CARD_NAME), *dest.rglob(PACKAGED_CARD_NAME)], key=lambda p: len(p.parts))
    if not cards:
        raise ModelFileError(f"model archive '{path}' holds no {CARD_NAME} (nor a bioimage.io package's {PACKAGED_CARD_NAME})")
    return cards[0].parent


def load_model_dir(
    path: str | Path, expected_for: callable | None = None
) -> tuple[ModelCard, dict[str, torch.Tensor]]:
    """Read the card and weights of a model directory.

    ``expected_for(card)`` returns the key -> shape map the network built from the card
    expects; it is checked against the file before tensors are read.
    """
    path = Path(path)
    card = read_card(path)
    weights = path / card.weights
    expected = expected_for(card) if expected_for else None
    return card, load_state_dict_file(weights, expected)


def clean_published_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the noise-schedule buffers and a DataParallel ``module.`` prefix."""
    out = {}
    for k, v in sd.items():
        k = k[len("module.") :] if k.startswith("module.") else k
        if k in SCHEDULE_BUFFERS:
            continue
        out[k] = v
    return out
