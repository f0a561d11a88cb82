"""Precomputed folders written by dask workers (engine/parallel/precomputed.py)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("distributed")

from napari_emdiffuse.engine.io import precomputed_write  # noqa: E402
from napari_emdiffuse.engine.io.precomputed import read_precomputed  # noqa: E402
from napari_emdiffuse.engine.io.precomputed_write import precomputed_layout, write_precomputed  # noqa: E402
from napari_emdiffuse.engine.io.images import write_image  # noqa: E402
from napari_emdiffuse.engine.parallel import precomputed as on_workers  # noqa: E402
from napari_emdiffuse.engine.parallel.runner import cluster_client  # noqa: E402


@pytest.fixture(scope="module")
def client():
    with cluster_client(1, None) as c:
        yield c


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("spacing, kw", [
    ((4.0, 4.0, 4.0), {}),  # levels that halve z too
    ((8.0, 4.0, 4.0), {"sharded": True}),
    ((8.0, 4.0, 4.0), {"encoding": "jpeg", "jpeg_quality": 80}),
])
def test_workers_write_the_folder_one_process_writes(tmp_path, client, monkeypatch, spacing, kw):
    """Every file (info, provenance, each scale's chunks or shards) is byte for byte what
    write_precomputed writes in one process, split over several tasks per scale; the pixels
    read back are the volume's."""
    rng = np.random.default_rng(0)
    vol = (rng.random((10, 1100, 600)) * 255).astype(np.uint8)
    store = write_image(tmp_path / "spill.zarr", vol)
    made = {"model": "tiny", "preset": "fast"}
    ref = write_precomputed(tmp_path / "ref.precomputed", vol, spacing=spacing, origin=(0, 8, 12), provenance=made, **kw)
    monkeypatch.setattr(precomputed_write, "_UNIT_PIXELS", 2**20)  # several blocks a scale
    monkeypatch.setattr(on_workers, "_TASKS", 3)  # several blocks a task
    layout = precomputed_layout(tmp_path / "w.precomputed", vol.shape, vol.dtype, spacing=spacing, origin=(0, 8, 12),
                                **kw)
    assert len(layout.scales) == 3 and (len(layout.blocks(0)) > 3 or kw.get("sharded"))
    events = list(on_workers.precomputed_on_workers(client, (str(store), "", (), ()), tmp_path / "w.precomputed", layout,
                                                     provenance=made))
    out = tmp_path / "w.precomputed"
    assert _files(out) == _files(ref)
    assert {ev.stage for ev in events} == {"writing"} and events[-1].message.endswith("(scale 3 of 3)")
    back = read_precomputed(out)
    if "encoding" not in kw:
        assert np.array_equal(np.asarray(back.data[:]), vol)
    else:  # lossy: close, not equal
        assert np.abs(np.asarray(back.data[:], dtype=float) - vol).mean() < 20
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_cancelled_write_on_workers_leaves_nothing(tmp_path, client, monkeypatch):
    """Closing the generator mid-scale leaves neither the folder nor its hidden partial; the
    folder that was there before stays as it was."""
    vol = np.arange(6 * 600 * 600, dtype=np.uint32).reshape(6, 600, 600).astype(np.uint16)
    store = write_image(tmp_path / "spill.zarr", vol)
    out = tmp_path / "w.precomputed"
    old = write_precomputed(out, vol[:2])
    before = _files(old)
    monkeypatch.setattr(precomputed_write, "_UNIT_PIXELS", 2**18)
    layout = precomputed_layout(out, vol.shape, vol.dtype)
    gen = on_workers.precomputed_on_workers(client, (str(store), "", (), ()), out, layout)
    first = [next(gen) for _ in range(2)]
    assert first[0].total > 2
    gen.close()
    assert _files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spill.zarr", "w.precomputed"]
