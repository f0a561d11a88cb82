"""napari-emdiffuse: diffusion-model restoration of electron-microscopy images.

EMDiffuse / vEMDiffuse (Lu et al., Nature Communications 2024) as a library, a command
line tool (``emdiffuse``) and napari dock widgets.

The public API is imported lazily so that ``import napari_emdiffuse`` stays cheap (napari
imports it to read the plugin manifest) and never pulls in napari or Qt.

Examples
--------
>>> import napari_emdiffuse as emd
>>> result = emd.restore(noisy_image, "denoise")          # doctest: +SKIP
>>> volume = emd.reconstruct_isotropic(stack, factor=3)    # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "restore": "engine.inference.restore",
    "restore_iter": "engine.inference.restore",
    "restore_to_zarr": "engine.inference.blocks",
    "restore_to_zarr_iter": "engine.inference.blocks",
    "Restoration": "engine.inference.restore",
    "reconstruct_isotropic": "engine.inference.volume",
    "reconstruct_isotropic_iter": "engine.inference.volume",
    "IsotropicResult": "engine.inference.volume",
    "load_model": "engine.models.registry",
    "list_models": "engine.models.registry",
    "register_model": "engine.models.registry",
    "EMDiffuseModel": "engine.models.model",
    "create_EMDiffuse": "engine.models.factory",
    "create_model": "engine.models.factory",
    "import_published": "engine.models.factory",
    "train": "engine.training.finetune",
    "train_iter": "engine.training.finetune",
    "finetune": "engine.training.finetune",
    "finetune_iter": "engine.training.finetune",
    "TrainConfig": "engine.training.config",
    "register_pair": "engine.training.data.registration",
    "read_image": "engine.io.images",
    "write_image": "engine.io.images",
    "Progress": "engine.events",
    "EMDiffuseError": "engine.errors",
}

__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _API:
        module = importlib.import_module(f".{_API[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'napari_emdiffuse' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
