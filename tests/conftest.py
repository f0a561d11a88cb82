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


@pytest.fixture(autouse=True)
def _torch_threads():
    """Tests that train on one thread (to be reproducible) give the count back: a later test's
    float rounding must not depend on which tests ran before it."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


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


def write_tczyx_ome(path: Path, zyx: np.ndarray, spacing=(40.0, 8.0, 8.0), version: str = "0.4") -> Path:
    """An OME-Zarr store as bioformats2raw and ome-zarr-py write one: a single time point and
    channel in front (TCZYX), micrometres; NGFF 0.4 in zarr format 2 or 0.5 in format 3.
    A 5-D ``zyx`` is written as TCZYX as it is (several channels or time points)."""
    import zarr

    tczyx = zyx if zyx.ndim == 5 else zyx[None, None]

    fmt = 2 if version == "0.4" else 3
    group = zarr.open_group(str(path), mode="w", zarr_format=fmt)
    arr = group.create_array("0", shape=tczyx.shape, dtype=tczyx.dtype, chunks=(1, 1, 1, *tczyx.shape[3:]))
    arr[...] = tczyx
    axes = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}]
    axes += [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"]
    ms = {"axes": axes, "datasets": [{"path": "0", "coordinateTransformations": [
        {"type": "scale", "scale": [1.0, 1.0, *(s / 1000 for s in spacing)]}]}]}  # fmt: skip
    if version == "0.4":
        group.attrs["multiscales"] = [{"version": "0.4", **ms}]
    else:
        group.attrs["ome"] = {"version": "0.5", "multiscales": [ms]}
    return path


# Web servers for what is read by URL (fixtures `served`, `served_any`, `served_counted`).
from tests.http_servers import served, served_any, served_counted  # noqa: E402,F401
