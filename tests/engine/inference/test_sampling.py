"""The values an input's normalisation is fitted on: a stored input of many chunks is sampled
in a few dozen of them, not read whole, and the percentiles still hold."""

from __future__ import annotations

import numpy as np

from napari_emdiffuse.engine.inference import normalise
from napari_emdiffuse.engine.inference.normalise import sample_values


class _Stored:
    """A lazily read array (as zarr or an N5 dataset) that counts the chunks each read touches."""

    def __init__(self, data: np.ndarray, chunks: tuple[int, ...]) -> None:
        self.data, self.chunks, self.touched = data, chunks, set()
        self.shape, self.dtype, self.ndim = data.shape, data.dtype, data.ndim

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        ranges = [range(*k.indices(n)) if isinstance(k, slice) else range(k, k + 1) for k, n in zip(key, self.shape)]
        for idx in np.ndindex(*[len({i // c for i in r}) for r, c in zip(ranges, self.chunks)]):
            self.touched.add(tuple(sorted({i // c for i in r})[j] for j, r, c in zip(idx, ranges, self.chunks)))
        return self.data[key]


def test_a_store_of_many_chunks_is_sampled_in_64_of_them(monkeypatch):
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    # an EM-like montage (texture and noise) whose brightness drifts by 20 grey levels across it
    y, x = np.mgrid[0:2048, 0:2048]
    texture = 128 + 900 * gaussian_filter(rng.normal(size=(2048, 2048)), 3) + rng.normal(0, 12, (2048, 2048))
    image = (texture + 20 * (x + y) / 4096).astype(np.float32)
    stored = _Stored(image, (128, 128))  # 256 chunks
    values = sample_values(stored, max_values=200_000)
    assert len(stored.touched) == 64 and values.size <= 200_000
    want = np.percentile(image, [0.5, 50, 99.5])
    span = want[2] - want[0]
    assert np.abs(np.percentile(values, [0.5, 50, 99.5]) - want).max() < 0.01 * span
    # the control: one chunk's values miss the field's drift and its tails
    monkeypatch.setattr(normalise, "_MAX_CHUNKS", 1)
    alone = sample_values(_Stored(image, (128, 128)), max_values=200_000)
    assert np.abs(np.percentile(alone, [0.5, 50, 99.5]) - want).max() > 0.02 * span
    monkeypatch.undo()
    assert np.array_equal(sample_values(stored, max_values=200_000), values)  # the same chunks each run
    # the control: a strided subsample reads every chunk, and an array of 64 chunks or fewer is still read so
    few = _Stored(image, (256, 256))  # 64 chunks
    sample_values(few, max_values=200_000)
    assert len(few.touched) == 64
    assert np.array_equal(sample_values(image, max_values=200_000), image[::5, ::5].ravel())  # numpy: strided


def test_a_volume_of_many_chunks_is_normalised_from_64_of_them():
    """vEMDiffuse's normalisation: a volume stored in 256 chunks is read in 64 of them (a
    strided subsample of 16 slices read all 256 here, and every chunk layer of a terabyte volume),
    and its percentiles hold; a volume in memory is sampled by slices as before."""
    from scipy.ndimage import gaussian_filter

    from napari_emdiffuse.engine.inference.volume import _fit_volume_norm
    from tests.conftest import make_tiny

    m = make_tiny("isotropic-i")
    rng = np.random.default_rng(1)
    vol = (128 + 900 * gaussian_filter(rng.normal(size=(16, 512, 512)), 2) + rng.normal(0, 12, (16, 512, 512)))
    vol = np.clip(vol + np.linspace(0, 20, 16)[:, None, None], 0, 255).astype(np.float32)  # a drift along z
    stored = _Stored(vol, (4, 64, 64))  # 4 x 8 x 8 = 256 chunks
    norm = _fit_volume_norm(m, stored)
    assert len(stored.touched) == 64
    whole = _fit_volume_norm(m, vol)  # in memory: strided slices, every value of the sampled ones
    span = whole.hi - whole.lo
    assert abs(norm.lo - whole.lo) < 0.01 * span and abs(norm.hi - whole.hi) < 0.01 * span
    few = _Stored(vol, (16, 128, 128))  # 16 chunks: by slices as before, every chunk read
    _fit_volume_norm(m, few)
    assert len(few.touched) == 16
