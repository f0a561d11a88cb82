"""Sample data for napari's File > Open Sample menu: small CC-BY EM images shipped in
``resources/samples`` (sources, licences and how they were made: its README.md).

Each contribution returns napari layer-data tuples whose ``scale`` is the pixel / voxel
size in nanometres, read from the files' own calibration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._reader import LayerData, image_layer
from .engine.io.resources import resources_dir

__all__ = ["noisy_fibsem", "noisy_fibsem_with_reference", "anisotropic_volume", "sample_path"]

NOISY = "fibsem_liver_noisy.tif"
CLEAN = "fibsem_liver_clean.tif"
VOLUME = "celegans_anisotropic_z3.tif"

def sample_path(name: str) -> Path:
    """Path of a shipped sample file."""
    return resources_dir() / "samples" / name


def _layer(name: str, layer_name: str, **extra: Any) -> LayerData:
    return image_layer(sample_path(name), layer_name, **extra)


def noisy_fibsem() -> list[LayerData]:
    """Mouse liver FIB-SEM (OpenOrganelle, CC-BY 4.0), 256x256 at 8 nm, with simulated
    low-dose Poisson-Gaussian noise: input for the Restore widget (denoise)."""
    return [_layer(NOISY, "liver_noisy")]


def noisy_fibsem_with_reference() -> list[LayerData]:
    """The noisy liver image and its clean original: a denoising pair for judging results
    or fine-tuning (input ``liver_noisy``, target ``liver_clean``)."""
    return [_layer(CLEAN, "liver_clean", visible=False), _layer(NOISY, "liver_noisy")]


def anisotropic_volume() -> list[LayerData]:
    """C. elegans volume EM (NEUBIAS, CC-BY 4.0): every 3rd slice of a near-isotropic
    stack, 7x256x128, voxel size 24x8x8 nm (nominal): input for Isotropic reconstruction
    (factor 3)."""
    return [_layer(VOLUME, "celegans_z3")]
