"""Clean crops rescaled before the noise (``zoom``): structures at other pixel sizes."""

from __future__ import annotations

import numpy as np
import pytest

from napari_emdiffuse.engine.errors import InputError
from napari_emdiffuse.engine.models.cards import Normalisation
from napari_emdiffuse.engine.training.config import TrainConfig
from napari_emdiffuse.engine.training.data.noise import SimulatedNoiseData, resized


def _slopes(zoom: float) -> np.ndarray:
    """Target slopes of 64 crops of a ramp (one grey level per pixel), in model units.

    A region ``s`` times the patch resized to the patch has ``s`` times the ramp's slope;
    the normalisation is fixed per image and dose, so the slope ratio is the rescaling."""
    ramp = np.tile(np.arange(256, dtype=np.float32), (256, 1))
    data = SimulatedNoiseData([ramp], doses=[1e6], read_noise=0.0, rule=Normalisation(), patch=32, zoom=zoom)
    t = data.sample(np.random.default_rng(3), 64).target[:, 0, 8:24, 8:24].numpy()
    # rotations and flips move the ramp to either axis and either sign
    return np.maximum(np.abs(np.diff(t, axis=1)).mean(axis=(1, 2)), np.abs(np.diff(t, axis=2)).mean(axis=(1, 2)))


def test_zoom_rescales_half_of_the_crops_within_its_range():
    plain = _slopes(1.0)
    unit = float(np.median(plain))
    assert np.allclose(plain / unit, 1.0, atol=0.03)  # control: no rescaling without zoom
    ratio = _slopes(2.0) / unit
    assert 0.45 <= ratio.min() and ratio.max() <= 2.2
    assert ratio.min() < 0.8 and ratio.max() > 1.25  # both ways
    rescaled = np.mean(np.abs(np.log(ratio)) > 0.05)
    # half of the crops, of which |log factor| <= 0.05 takes 0.05 / log 2 = 7 %
    assert 0.25 <= rescaled <= 0.65


def test_resized_keeps_dtype_limits_and_the_mean():
    rng = np.random.default_rng(0)
    crop = rng.integers(10, 250, (48, 48)).astype(np.uint8)
    for size in (24, 96):
        out = resized(crop, size, (10, 249))
        assert out.shape == (size, size) and out.dtype == np.uint8
        assert out.min() >= 10 and out.max() <= 249
        assert abs(out.mean() - crop.mean()) < 1.5
    flat = np.full((40, 40), 7.5, np.float32)
    assert np.allclose(resized(flat, 64, (0, 10)), 7.5, atol=1e-4)


def test_zoom_is_validated():
    img = np.zeros((64, 64), np.uint8)
    with pytest.raises(InputError, match="zoom"):
        SimulatedNoiseData([img], doses=[10], rule=Normalisation(), patch=16, zoom=0.5)
    with pytest.raises(Exception, match="zoom rescales clean images"):
        TrainConfig(task="super-resolve", clean=["x.tif"], out="m", zoom=2)
    with pytest.raises(Exception, match="zoom rescales clean images"):
        TrainConfig(task="denoise", inputs=["x.tif"], out="m", zoom=2)
    assert TrainConfig(task="denoise", clean=["x.tif"], out="m", zoom=2).zoom == 2
    assert SimulatedNoiseData([img], doses=[10], rule=Normalisation(), patch=16, zoom=2).describe()["zoom"] == 2
