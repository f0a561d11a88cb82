"""Where the shipped resources (bundled models, sample images) live: inside the installed
wheel (``napari_emdiffuse/resources``), or at the repository root for an editable install."""

from __future__ import annotations

from pathlib import Path

__all__ = ["resources_dir"]


def resources_dir() -> Path:
    """The ``resources`` folder: bundled models (``models/``) and sample images (``samples/``)."""
    package = Path(__file__).resolve().parents[2]  # src/napari_emdiffuse
    packaged = package / "resources"
    if packaged.is_dir():
        return packaged
    return package.parent.parent / "resources"
