"""Resumable zarr runs: a stopped or crashed run keeps its finished blocks, and the next run of
the same input, model and options continues from them to the same pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr
from scipy.ndimage import gaussian_filter

from napari_emdiffuse.api import reconstruct_isotropic_iter, restore_to_zarr_iter
from napari_emdiffuse.engine.errors import InputError
from napari_emdiffuse.engine.events import Progress
from napari_emdiffuse.engine.inference.blocks import input_identity
from napari_emdiffuse.engine.io.ledger import LEDGER_DIR
from napari_emdiffuse.engine.io.zarr import RESUME_ATTR, is_complete

from tests.conftest import make_tiny

KW = dict(block=24, steps=2, tile=32, overlap=8, batch=2, device="cpu")


@pytest.fixture(scope="module")
def model():
    return make_tiny("denoise")


def _alike_stack(nz=5, seed=0) -> np.ndarray:
    """Slices alike enough that the z filter's auto mode averages them."""
    rng = np.random.default_rng(seed)
    base = 128 + 400 * gaussian_filter(rng.normal(size=(48, 40)), 3)
    return np.clip(base + rng.normal(0, 10, (nz, 48, 40)), 0, 255).astype(np.uint8)


def _run(gen, stop_after: int | None = None) -> tuple[list[str], int]:
    """Drive a run; close it after ``stop_after`` finished blocks. Returns its notes and the
    number of blocks it restored."""
    notes, blocks = [], 0
    for ev in gen:
        if isinstance(ev, Progress) and ev.stage == "note":
            notes.append(ev.message)
        if isinstance(ev, Progress) and ev.stage == "block" and ev.total:
            blocks = ev.done
            if stop_after is not None and blocks >= stop_after:
                gen.close()
                break
    return notes, blocks


def _partials(folder, name):
    return sorted(folder.glob(f"{name}.partial-*"))


def test_a_stopped_resumable_run_continues_to_the_same_pixels(tmp_path, model):
    img = _alike_stack()
    ref, ref_unc = tmp_path / "ref.zarr", tmp_path / "ref_unc.zarr"
    _run(restore_to_zarr_iter(img, ref, "denoise", model, uncertainty_out=ref_unc, samples=2, **KW))
    out, unc = tmp_path / "out.zarr", tmp_path / "unc.zarr"

    notes, done = _run(restore_to_zarr_iter(img, out, "denoise", model, uncertainty_out=unc, samples=2, resume=True,
                                            **KW), stop_after=7)  # fmt: skip
    assert done == 7 and not out.exists() and not unc.exists()
    assert len(_partials(tmp_path, "out.zarr")) == 1 and len(_partials(tmp_path, "unc.zarr")) == 1
    assert "if this run stops, its finished blocks stay in" in notes[0]

    notes, done = _run(restore_to_zarr_iter(img, out, "denoise", model, uncertainty_out=unc, samples=2, resume=True,
                                            **KW))  # fmt: skip
    assert "7 of 20 blocks are done" in notes[0]
    assert done == 13  # only the blocks the first run had not finished
    assert is_complete(out) and is_complete(unc) and not _partials(tmp_path, "out.zarr")
    a, b = zarr.open_array(str(out), mode="r"), zarr.open_array(str(ref), mode="r")
    assert np.array_equal(a[:], b[:]) and a.attrs["z_filter"] == b.attrs["z_filter"] is not None
    assert np.array_equal(zarr.open_array(str(unc), mode="r")[:], zarr.open_array(str(ref_unc), mode="r")[:])
    assert a.attrs[RESUME_ATTR] and not (out / LEDGER_DIR).exists()  # the key stays, the ledger goes

    # the same job again: nothing to do; with other options: done again, in full
    notes, done = _run(restore_to_zarr_iter(img, out, "denoise", model, uncertainty_out=unc, samples=2, resume=True,
                                            **KW))  # fmt: skip
    assert done == 0 and "is complete from an earlier run of the same input, model and options" in notes[0]
    notes, done = _run(restore_to_zarr_iter(img, out, "denoise", model, uncertainty_out=unc, samples=2, resume=True,
                                            seed=5, **KW))  # fmt: skip
    assert done == 20 and not np.array_equal(zarr.open_array(str(out), mode="r")[:], b[:])


@pytest.mark.skipif(int(zarr.__version__.split(".")[0]) < 3, reason="zarr format 3 needs zarr-python 3")
def test_a_stopped_format_3_run_continues_in_its_own_format(tmp_path, model):
    """A sharded (format 3) run resumes block by block like format 2, to the same pixels; a
    finished format-2 store of the same job does not answer a format-3 run, nor a format-3
    store a format-2 one."""
    img = _alike_stack(nz=2)
    kw = dict(z_filter="off", **KW)
    ref = tmp_path / "ref.zarr"
    _run(restore_to_zarr_iter(img, ref, "denoise", model, resume=True, **kw))
    out = tmp_path / "out.zarr"
    _run(restore_to_zarr_iter(img, out, "denoise", model, resume=True, zarr_format=3, **kw), stop_after=3)
    (part,) = _partials(tmp_path, "out.zarr")
    assert zarr.open_array(str(part), mode="r").metadata.zarr_format == 3
    notes, done = _run(restore_to_zarr_iter(img, out, "denoise", model, resume=True, zarr_format=3, **kw))
    assert "3 of 8 blocks are done" in notes[0] and done == 5 and is_complete(out)
    a = zarr.open_array(str(out), mode="r")
    assert a.metadata.zarr_format == 3 and a.shards == (1, 32, 32)  # blocks of one tile
    assert np.array_equal(a[:], zarr.open_array(str(ref), mode="r")[:])
    # the finished format-2 reference is no answer to a format-3 run of the same job
    notes, done = _run(restore_to_zarr_iter(img, ref, "denoise", model, resume=True, zarr_format=3, **kw))
    assert done == 8 and zarr.open_array(str(ref), mode="r").metadata.zarr_format == 3


def test_a_tile_the_z_filter_left_half_done_is_restored_again(tmp_path, model):
    """A crash inside the z filter leaves a column of chunks partly averaged: averaging it
    again would average twice. Its blocks are restored again instead."""
    img = _alike_stack()
    ref = tmp_path / "ref.zarr"
    _run(restore_to_zarr_iter(img, ref, "denoise", model, **KW))
    out = tmp_path / "out.zarr"
    gen = restore_to_zarr_iter(img, out, "denoise", model, resume=True, **KW)
    for ev in gen:
        if isinstance(ev, Progress) and ev.stage == "z filter" and ev.done == 1:
            gen.close()
            break
    (part,) = _partials(tmp_path, "out.zarr")
    ledger = part / LEDGER_DIR
    assert (ledger / "z-0-32-0-32").exists() and (ledger / "z-width").exists()  # 32 px: blocks of one tile
    # As a crash would leave the second column: begun, one slice written, not finished.
    (ledger / "z-0-32-32-40-start").write_text("")
    zarr.open_array(str(part), mode="r+")[0, 0:32, 32:40] = 7

    notes, done = _run(restore_to_zarr_iter(img, out, "denoise", model, resume=True, **KW))
    assert "15 of 20 blocks are done" in notes[0] and done == 5  # the column's 5 slices
    assert np.array_equal(zarr.open_array(str(out), mode="r")[:], zarr.open_array(str(ref), mode="r")[:])


def test_a_run_with_other_options_starts_afresh(tmp_path, model):
    img = _alike_stack()
    out = tmp_path / "out.zarr"
    _run(restore_to_zarr_iter(img, out, "denoise", model, resume=True, seed=0, **KW), stop_after=5)
    (first,) = _partials(tmp_path, "out.zarr")
    notes, done = _run(restore_to_zarr_iter(img, out, "denoise", model, resume=True, seed=1, **KW))
    assert "if this run stops" in notes[0] and done == 20
    assert first.exists()  # another run's blocks: left alone, and the run says so
    assert any(n.startswith(f"'{first}' holds an unfinished run with other input") and "(5 blocks)" in n for n in notes)
    ref = tmp_path / "ref.zarr"
    _run(restore_to_zarr_iter(img, ref, "denoise", model, seed=1, **KW))
    assert np.array_equal(zarr.open_array(str(out), mode="r")[:], zarr.open_array(str(ref), mode="r")[:])


def test_without_resume_a_stopped_run_leaves_nothing(tmp_path, model):
    out = tmp_path / "out.zarr"
    _run(restore_to_zarr_iter(_alike_stack(), out, "denoise", model, **KW), stop_after=3)
    assert not out.exists() and not _partials(tmp_path, "out.zarr")


def test_an_isotropic_run_resumes(tmp_path):
    m = make_tiny("isotropic-i")
    rng = np.random.default_rng(1)
    vol = np.clip(128 + 300 * gaussian_filter(rng.normal(size=(4, 40, 40)), 2), 0, 255).astype(np.uint8)
    kw = dict(block=20, steps=2, tile=32, overlap=8, batch=2, device="cpu")
    ref = tmp_path / "ref.zarr"
    for ev in reconstruct_isotropic_iter(vol, 3, m, out=ref, **kw):
        pass
    out = tmp_path / "iso.zarr"
    gen = reconstruct_isotropic_iter(vol, 3, m, out=out, resume=True, **kw)
    for ev in gen:
        if isinstance(ev, Progress) and ev.stage == "sampling" and ev.done >= ev.total // 2:
            gen.close()
            break
    assert not out.exists() and _partials(tmp_path, "iso.zarr")
    notes = [ev.message for ev in reconstruct_isotropic_iter(vol, 3, m, out=out, resume=True, **kw)
             if isinstance(ev, Progress) and ev.stage == "note"]  # fmt: skip
    assert "resuming" in notes[0] and " of 12 blocks are done" in notes[0] and "0 of" not in notes[0]
    assert np.array_equal(zarr.open_array(str(out), mode="r")[:], zarr.open_array(str(ref), mode="r")[:])
    with pytest.raises(InputError, match="pass out="):
        next(reconstruct_isotropic_iter(vol, 3, m, resume=True, **kw))


def test_an_isotropic_run_denoised_first_resumes_without_denoising_again(tmp_path):
    """The measured slices denoised first go to a resumable scratch store named by the run's
    key: a stop in the reconstruction keeps them, and the next run reads them instead of
    denoising again."""
    iso, den = make_tiny("isotropic-i"), make_tiny("denoise")
    vol = (np.random.default_rng(0).random((4, 40, 40)) * 255).astype(np.uint8)
    kw = dict(block=20, steps=2, tile=32, overlap=8, batch=2, device="cpu", denoise=den)
    ref = tmp_path / "ref.zarr"
    for _ in reconstruct_isotropic_iter(vol, 3, iso, out=ref, **kw):
        pass
    out = tmp_path / "o.zarr"
    gen = reconstruct_isotropic_iter(vol, 3, iso, out=out, resume=True, **kw)
    started = False
    for ev in gen:
        started = started or (ev.stage == "note" and ev.message.startswith("resumable: if this run stops, its "
                                                                             "finished blocks stay in '" + str(out)))
        if started and ev.stage == "sampling" and ev.done > ev.total // 2:
            gen.close()
            break
    assert started and [p.name for p in tmp_path.glob(".o.zarr.denoised-*-resumable")]
    notes = [e.message for e in reconstruct_isotropic_iter(vol, 3, iso, out=out, resume=True, **kw)
             if isinstance(e, Progress) and e.stage == "note"]  # fmt: skip
    assert any("denoised.zarr' is complete from an earlier run" in n for n in notes)  # not denoised again
    assert any(n.startswith("resuming the unfinished run in '" + str(out)) for n in notes)
    assert np.array_equal(zarr.open_array(str(out), mode="r")[:], zarr.open_array(str(ref), mode="r")[:])
    assert not list(tmp_path.glob(".o.zarr.denoised-*"))  # removed once the run is complete


def test_the_run_key_tells_inputs_and_weights_apart(model):
    img = _alike_stack()
    other = img.copy()
    other[0, 0, 0] ^= 1
    assert input_identity(img) == input_identity(img.copy()) != input_identity(other)
    changed = make_tiny("denoise")
    with torch.no_grad():
        next(changed.module.parameters()).add_(1e-3)
    assert model.digest() == make_tiny("denoise").digest() != changed.digest()


def test_an_ome_zarr_run_resumes_and_gets_its_whole_pyramid(tmp_path, model, monkeypatch):
    from napari_emdiffuse.engine.io import pyramid

    monkeypatch.setattr(pyramid, "PYRAMID_TOP", 16)
    img = _alike_stack()
    ref = tmp_path / "ref.ome.zarr"
    _run(restore_to_zarr_iter(img, ref, "denoise", model, **KW))
    out = tmp_path / "out.ome.zarr"
    _run(restore_to_zarr_iter(img, out, "denoise", model, resume=True, **KW), stop_after=9)
    assert not out.exists() and len(_partials(tmp_path, "out.ome.zarr")) == 1
    notes, done = _run(restore_to_zarr_iter(img, out, "denoise", model, resume=True, **KW))
    assert "9 of 20 blocks are done" in notes[0] and done == 11
    a, b = zarr.open_group(str(out), mode="r"), zarr.open_group(str(ref), mode="r")
    assert is_complete(out) and sorted(a.array_keys()) == sorted(b.array_keys()) == ["0", "1", "2"]
    for k in ("0", "1", "2"):
        assert np.array_equal(a[k][:], b[k][:])


def test_a_name_with_glob_characters_resumes(tmp_path, model):
    """``run[1].zarr``: the unfinished store is found by its literal name, not as a pattern."""
    img = _alike_stack(nz=2)
    out = tmp_path / "run[1].zarr"
    _run(restore_to_zarr_iter(img, out, "denoise", model, resume=True, z_filter="off", **KW), stop_after=3)
    notes, done = _run(restore_to_zarr_iter(img, out, "denoise", model, resume=True, z_filter="off", **KW))
    assert "3 of 8 blocks are done" in notes[0] and done == 5 and is_complete(out)
