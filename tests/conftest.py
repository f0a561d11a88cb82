"""Shared fixtures: tiny models, real EM data from ../shared/data, isolated user dirs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

TINY = dict(inner_channel=16, channel_mults=[1, 2], res_blocks=1, attn_res=[], num_head_channels=16, dropout=0.0)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Keep user model registries out of the developer's home."""
    monkeypatch.setenv("EMDIFFUSE_HOME", str(tmp_path_factory.mktemp("emdiffuse-home")))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"real EM data not found at {SHARED} (only present in the project's CI layout)")
    return SHARED


def make_tiny(task: str = "denoise", seed: int = 0, **overrides):
    """A tiny randomly initialised model with non-trivial output (zero-init convs perturbed)."""
    from napari_emdiffuse.engine.models.cards import Normalisation
    from napari_emdiffuse.engine.models.factory import create_EMDiffuse

    torch.manual_seed(seed)
    m = create_EMDiffuse(task, **{**TINY, **overrides})
    m.card.normalisation = Normalisation()
    m.card.name = f"tiny-{task}"
    m.card.overlap = 8  # before tile: the card checks overlap < tile on each assignment
    m.card.tile = 32
    with torch.no_grad():
        for p in m.module.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
    m.module.eval()
    return m


@pytest.fixture
def tiny_model():
    return make_tiny("denoise")


@pytest.fixture
def tiny_model_dir(tmp_path, tiny_model):
    return tiny_model.save(tmp_path / "tiny-denoise")


@pytest.fixture
def tiny_sr_dir(tmp_path):
    return make_tiny("super-resolve").save(tmp_path / "tiny-sr")


@pytest.fixture
def em_image(shared_data) -> np.ndarray:
    import tifffile

    return tifffile.imread(shared_data / "em2d" / "noisy_nogt" / "noisy_9.tif")
