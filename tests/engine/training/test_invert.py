"""Contrast-inverted copies of the clean images (``invert_contrast``): raw backscatter SEM."""

from __future__ import annotations

import numpy as np
import pytest

from napari_emdiffuse.engine.models.cards import Normalisation
from napari_emdiffuse.engine.training.config import TrainConfig
from napari_emdiffuse.engine.training.data.noise import SimulatedNoiseData


def _dark_image() -> np.ndarray:
    img = np.full((96, 96), 20, np.uint8)
    img[:, 72:] = 220  # a quarter bright; inverted, three quarters
    return img


@pytest.mark.parametrize("share", [0.0, 0.25, 0.5])
def test_the_inverted_share_of_crops_is_as_asked(share):
    data = SimulatedNoiseData([_dark_image()], doses=[1000], rule=Normalisation(), patch=16, invert=share)
    rng = np.random.default_rng(0)
    bright = np.mean([float(data.sample_one(rng)[1].mean()) > 0 for _ in range(800)])
    # a 16-px crop is mostly bright when it starts at x = 65..80 of the 81 starts: 16/81 of
    # the crops from the image, the other 65/81 from its inverse
    f = 16 / 81
    assert bright == pytest.approx(f * (1 - share) + (1 - f) * share, abs=0.05)


def test_inverted_twins_keep_the_originals_and_their_normalisation():
    img = (np.random.default_rng(1).random((64, 64)) * 200 + 20).astype(np.uint8)
    plain = SimulatedNoiseData([img], doses=[10, 100], rule=Normalisation(), patch=16)
    data = SimulatedNoiseData([img], doses=[10, 100], rule=Normalisation(), patch=16, invert=0.3)
    assert data.norms[0] == plain.norms[0] and data.train_area == plain.train_area
    lo, hi = int(img.min()), int(img.max())
    assert np.array_equal(data.images[1].astype(int), lo + hi - img.astype(int))
    assert data.names == ["image 0", "image 0 (inverted)"]
    assert data.describe()["invert_contrast"] == 0.3


def test_invert_contrast_is_validated():
    with pytest.raises(Exception, match="invert_contrast inverts clean images"):
        TrainConfig(task="denoise", inputs=["x.tif"], out="m", invert_contrast=0.3)
    with pytest.raises(Exception, match="invert_contrast inverts clean images"):
        TrainConfig(task="super-resolve", clean=["x.tif"], out="m", invert_contrast=0.3)
    with pytest.raises(Exception, match="less than 1"):
        TrainConfig(task="denoise", clean=["x.tif"], out="m", invert_contrast=1.0)
    assert TrainConfig(task="denoise", clean=["x.tif"], out="m", invert_contrast=0.3).invert_contrast == 0.3
