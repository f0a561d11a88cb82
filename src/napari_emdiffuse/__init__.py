"""napari-emdiffuse: diffusion-model restoration of electron-microscopy images.

EMDiffuse / vEMDiffuse (Lu et al., Nature Communications 2024) as a library, a command
line tool (``emdiffuse``) and napari dock widgets.

The public API lives in :mod:`napari_emdiffuse.api` (typed options, one dataclass per job)
and is re-exported here. It is imported lazily so that ``import napari_emdiffuse`` stays cheap (napari
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
    **dict.fromkeys(
        [
            "restore", "restore_iter", "restore_to_zarr", "restore_to_zarr_iter",
            "reconstruct_isotropic", "reconstruct_isotropic_iter", "finetune", "finetune_iter",
            "train", "train_iter", "load_model", "list_models", "register_model", "Cluster",
            "RestoreOptions", "ZarrOptions", "IsotropicOptions", "FinetuneOptions",
        ],
        "api",
    ),  # fmt: skip
    "restore_files": "batches",
    "restore_files_iter": "batches",
    "BatchResult": "batches",
    "Restoration": "engine.inference.restore",
    "IsotropicResult": "engine.inference.volume",
    "EMDiffuseModel": "engine.models.model",
    "create_EMDiffuse": "engine.models.factory",
    "create_model": "engine.models.factory",
    "import_published": "engine.models.factory",
    "TrainConfig": "engine.training.config",
    "register_pair": "engine.training.data.registration",
    "score_images": "scoring",
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
