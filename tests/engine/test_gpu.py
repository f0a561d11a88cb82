"""GPU checks (marker `gpu`; skipped without CUDA). Run with `python -m pytest -m gpu`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_emdiffuse.api import restore

from tests.conftest import make_tiny

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _no_tf32():
    """TF32 matmuls differ from the CPU's fp32 by ~1e-3 relative: compare true fp32."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _img():
    return (np.random.default_rng(0).random((96, 96)) * 255).astype(np.uint8)


def test_cuda_restore_matches_cpu():
    m = make_tiny("denoise")  # on the CPU; restore copies it to the GPU and leaves m alone
    cpu = restore(_img(), "denoise", m, steps=3, tile=32, overlap=8, device="cpu", precision="fp32").mean
    gpu = restore(_img(), "denoise", m, steps=3, tile=32, overlap=8, device="cuda", precision="fp32").mean
    assert m.device.type == "cpu"
    diff = np.abs(cpu.astype(int) - gpu.astype(int))
    assert diff.max() <= 2 and (diff > 0).mean() < 0.01


def test_bf16_channels_last_close_to_fp32():
    m = make_tiny("denoise").to("cuda")
    ref = restore(_img(), "denoise", m, steps=3, tile=32, overlap=8, device="cuda", precision="fp32").mean
    fast = restore(_img(), "denoise", m, steps=3, tile=32, overlap=8, device="cuda", precision="bf16", channels_last=True).mean
    assert np.abs(ref.astype(int) - fast.astype(int)).mean() < 3


def test_batch_size_does_not_change_result_on_gpu():
    m = make_tiny("denoise").to("cuda")
    a = restore(_img(), "denoise", m, steps=2, tile=32, overlap=8, batch=1, device="cuda", precision="fp32").mean
    b = restore(_img(), "denoise", m, steps=2, tile=32, overlap=8, batch=9, device="cuda", precision="fp32").mean
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_auto_tile_fits_free_memory():
    from napari_emdiffuse.engine.inference.canvas import auto_tile

    m = make_tiny("denoise").to("cuda")
    assert auto_tile(m, torch.device("cuda"), None) == m.card.tile  # small tiles are never grown
    m.card.tile = 1 << 16  # a card asking for far more than any GPU holds is shrunk to fit
    tile = auto_tile(m, torch.device("cuda"), None)
    free, _ = torch.cuda.mem_get_info()
    per_px = 48 * m.card.network.inner_channel * 4
    assert tile == 64 or per_px * tile * tile * 2 <= 0.5 * free
    assert auto_tile(m, torch.device("cuda"), 96) == 96  # a request is kept


def test_position_noise_is_drawn_on_the_gpu_and_matches_the_cpu():
    from napari_emdiffuse.engine.inference.tiling import position_noise

    a = position_noise(70, 90, seed=3, origin=(5, 7), stream=(1, 2), device="cuda")
    assert a.device.type == "cuda"
    torch.testing.assert_close(a.cpu(), position_noise(70, 90, seed=3, origin=(5, 7), stream=(1, 2)), atol=1e-5, rtol=1e-5)
