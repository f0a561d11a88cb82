"""napari dock widgets: Restore, Isotropic reconstruction and Fine-tune, and Open by URL.

The widgets hold no restoration logic. Each one collects options, drives an engine
generator (``restore_iter``, ``reconstruct_isotropic_iter``, ``finetune_iter``) in a napari
thread worker or, for training, a separate process, and turns its progress events into
napari progress bars, plots and layers. The manifest (``napari.yaml``) points napari at the
widget classes; importing this package is cheap and imports neither torch nor napari.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["RestoreWidget", "IsotropicWidget", "FinetuneWidget", "OpenUrlWidget"]

_WHERE = {"RestoreWidget": "restore", "IsotropicWidget": "isotropic", "FinetuneWidget": "finetune",
          "OpenUrlWidget": "open_url"}


def __getattr__(name: str) -> Any:
    # Lazy, so the training child process (spawned) does not import Qt widgets it never shows.
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
