"""A result held in memory that the machine cannot hold is refused before any work, with the
way out (a .zarr output, written block by block)."""

import numpy as np
import pytest

from napari_emdiffuse.engine.errors import InputError
from napari_emdiffuse.engine.inference import checks


@pytest.fixture
def little_memory(monkeypatch):
    monkeypatch.setattr(checks, "available_memory", lambda: 2_000)  # bytes: a 64² result (4 kB) does not fit


def test_an_in_memory_result_too_large_is_refused_and_zarr_still_works(tmp_path, tiny_model_dir, little_memory, capsys):
    import tifffile
    import zarr

    from napari_emdiffuse.api import restore, restore_to_zarr
    from napari_emdiffuse.cli import main

    image = (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)
    kw = dict(steps=2, tile=32, overlap=8, device="cpu")
    with pytest.raises(InputError, match=r"would not fit in memory \(0.0 GiB free\); write it to a .zarr output"):
        restore(image, "denoise", str(tiny_model_dir), **kw)
    restore_to_zarr(image, tmp_path / "out.zarr", "denoise", str(tiny_model_dir), **kw)  # the way out
    assert zarr.open_array(str(tmp_path / "out.zarr"), mode="r").shape == (64, 64)
    tifffile.imwrite(tmp_path / "in.tif", image)
    args = ["--model", str(tiny_model_dir), "--device", "cpu", "--steps", "2"]
    assert main(["denoise", str(tmp_path / "in.tif"), "-o", str(tmp_path / "out.tif"), *args]) == 0  # through a store
    assert "goes through a temporary .zarr" in capsys.readouterr().err


def test_the_check_counts_the_uncertainty_and_passes_what_fits(monkeypatch):
    monkeypatch.setattr(checks, "available_memory", lambda: 10_000)
    checks.check_fits_in_memory((50, 50), np.uint8, uncertainty=False)  # 2.5 kB of 10 kB
    with pytest.raises(InputError, match="and its uncertainty"):
        checks.check_fits_in_memory((50, 50), np.uint8, uncertainty=True)  # 12.5 kB
    monkeypatch.setattr(checks, "available_memory", lambda: None)  # unknown: no refusal
    checks.check_fits_in_memory((10**6, 10**6), np.float32, uncertainty=True)


def test_an_isotropic_volume_too_large_for_memory_is_refused(tmp_path, little_memory):
    from napari_emdiffuse.api import reconstruct_isotropic
    from napari_emdiffuse.engine.models import cards, factory

    m = factory.create_EMDiffuse("vEMDiffuse-i", inner_channel=16, channel_mults=[1, 2], res_blocks=1, attn_res=[],
                                 num_head_channels=16)  # fmt: skip
    m.card.normalisation, m.card.overlap, m.card.tile = cards.Normalisation(), 8, 32
    vol = (np.random.default_rng(1).random((3, 40, 40)) * 255).astype(np.uint8)
    with pytest.raises(InputError, match=r"result \(7 x 40 x 40, .*write it to a .zarr output"):
        reconstruct_isotropic(vol, 3, m, steps=2, tile=32, overlap=8, device="cpu")
    out = reconstruct_isotropic(vol, 3, m, steps=2, tile=32, overlap=8, device="cpu", out=tmp_path / "iso.zarr")
    assert out.volume.shape == (7, 40, 40)


def test_a_stack_too_large_for_memory_reaches_a_tiff_or_mrc_output_through_a_store(tmp_path, tiny_model_dir, capsys,
                                                                                    monkeypatch):
    """The CLI restores it into a hidden zarr store beside the output, writes the file from it
    slice by slice and removes the store: the same pixels as a run held in memory."""
    import tifffile

    from napari_emdiffuse.cli import main
    from napari_emdiffuse.engine.io.images import read_image

    stack = (np.random.default_rng(2).random((3, 48, 40)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "in.tif", stack, imagej=True, resolution=(0.25, 0.25), metadata={"unit": "nm", "spacing": 8.0, "axes": "ZYX"})
    args = ["--model", str(tiny_model_dir), "--device", "cpu", "--steps", "2", "--z-filter", "off"]
    assert main(["denoise", str(tmp_path / "in.tif"), "-o", str(tmp_path / "ram.tif"), *args]) == 0
    monkeypatch.setattr(checks, "available_memory", lambda: 2_000)
    for out in ("disk.tif", "disk.mrc"):
        assert main(["denoise", str(tmp_path / "in.tif"), "-o", str(tmp_path / out), *args]) == 0
        assert "goes through a temporary .zarr beside" in capsys.readouterr().err
        got = read_image(tmp_path / out)
        assert np.array_equal(np.asarray(got.data), read_image(tmp_path / "ram.tif").data)
        assert got.spacing == pytest.approx((8.0, 4.0, 4.0))
    assert not [p.name for p in tmp_path.iterdir() if "partial" in p.name]  # no store left


def test_a_2d_image_too_large_for_memory_reaches_a_tiled_tiff_or_an_mrc_through_a_store(tmp_path, tiny_model_dir,
                                                                                         capsys, monkeypatch):
    """A montage larger than memory: restored block by block into a hidden store, then written
    as tiles (TIFF) or row bands (MRC), never whole; the same pixels and pixel size as a run
    held in memory, and its uncertainty too."""
    import tifffile

    from napari_emdiffuse.cli import main
    from napari_emdiffuse.engine.io import common
    from napari_emdiffuse.engine.io.images import read_image

    image = (np.random.default_rng(4).random((600, 560)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "in.tif", image, imagej=True, resolution=(0.25, 0.25), metadata={"unit": "nm"})
    args = ["--model", str(tiny_model_dir), "--device", "cpu", "--steps", "2", "--samples", "2"]
    assert main(["denoise", str(tmp_path / "in.tif"), "-o", str(tmp_path / "ram.tif"), *args]) == 0
    ram = read_image(tmp_path / "ram.tif").data
    monkeypatch.setattr(checks, "available_memory", lambda: 2_000)
    monkeypatch.setattr(common, "STREAM_2D_MIN_BYTES", 1_000)  # as if it were 2 GiB or more
    reads: list[int] = []
    real_tiles = __import__("napari_emdiffuse.engine.io.tiff", fromlist=["_tiles"])._tiles

    def counted(img, dtype, told):
        for tile in real_tiles(img, dtype, told):
            reads.append(tile.size)
            yield tile

    monkeypatch.setattr("napari_emdiffuse.engine.io.tiff._tiles", counted)
    for out in ("disk.tif", "disk.mrc"):
        unc = tmp_path / out.replace("disk", "disk_sd")
        assert main(["denoise", str(tmp_path / "in.tif"), "-o", str(tmp_path / out), "--uncertainty", str(unc),
                     *args]) == 0  # fmt: skip
        assert "goes through a temporary .zarr beside" in capsys.readouterr().err
        got = read_image(tmp_path / out)
        assert np.array_equal(np.asarray(got.data), ram) and got.spacing == pytest.approx((4.0, 4.0))
        assert read_image(unc).data.shape == (600, 560)
    with tifffile.TiffFile(tmp_path / "disk.tif") as tif:
        assert tif.pages[0].is_tiled and (tif.pages[0].tilelength, tif.pages[0].tilewidth) == (512, 512)
    assert max(reads) <= 512 * 512 and len(reads) == 2 * 4  # two files (image, uncertainty) of 2 x 2 tiles
    assert not [p.name for p in tmp_path.iterdir() if "partial" in p.name]  # no store left


def test_an_isotropic_volume_too_large_for_memory_reaches_its_file_with_its_uncertainty(tmp_path, capsys, monkeypatch):
    import tifffile

    from napari_emdiffuse.cli import main
    from napari_emdiffuse.engine.io.images import read_image
    from napari_emdiffuse.engine.models import cards, factory

    m = factory.create_EMDiffuse("vEMDiffuse-i", inner_channel=16, channel_mults=[1, 2], res_blocks=1, attn_res=[],
                                 num_head_channels=16)  # fmt: skip
    m.card.normalisation, m.card.overlap, m.card.tile = cards.Normalisation(), 8, 32
    model = m.save(tmp_path / "tiny-iso")
    vol = (np.random.default_rng(3).random((3, 40, 40)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "vol.tif", vol)
    args = ["--factor", "3", "--model", str(model), "--device", "cpu", "--steps", "2", "--samples", "2"]
    assert main(["isotropic", str(tmp_path / "vol.tif"), "-o", str(tmp_path / "ram.tif"), *args]) == 0
    monkeypatch.setattr(checks, "available_memory", lambda: 2_000)
    assert main(["isotropic", str(tmp_path / "vol.tif"), "-o", str(tmp_path / "disk.tif"),
                 "--uncertainty", str(tmp_path / "disk_sd.tif"), *args]) == 0  # fmt: skip
    assert "goes through a temporary .zarr" in capsys.readouterr().err
    assert np.array_equal(read_image(tmp_path / "disk.tif").data, read_image(tmp_path / "ram.tif").data)
    assert read_image(tmp_path / "disk_sd.tif").data.shape == (7, 40, 40)
    assert not [p.name for p in tmp_path.iterdir() if "partial" in p.name]


def test_a_restoration_without_its_uncertainty_needs_less_memory(monkeypatch):
    """A predictor's uncertainty is 4 bytes a pixel: ``uncertainty=False`` leaves it out, and
    the memory check counts what is kept."""
    from napari_emdiffuse.api import restore
    from napari_emdiffuse.engine.models.cards import ModelCard, Normalisation, UNetConfig
    from napari_emdiffuse.engine.models.factory import create_model

    card = ModelCard(name="pred", task="denoise", kind="regression", tile=32, overlap=8, normalisation=Normalisation(),
                     network=UNetConfig(in_channel=1, residual=True, aleatoric=True, inner_channel=16,
                                        channel_mults=[1, 2], attn_res=[], num_head_channels=16))  # fmt: skip
    model = create_model(card)
    image = (np.random.default_rng(5).random((64, 64)) * 255).astype(np.uint8)
    full = restore(image, "denoise", model, device="cpu")
    assert full.uncertainty is not None and full.uncertainty.shape == (64, 64)
    lean = restore(image, "denoise", model, device="cpu", uncertainty=False)
    assert lean.uncertainty is None and np.array_equal(lean.mean, full.mean)
    monkeypatch.setattr(checks, "available_memory", lambda: 8_000)  # 64² uint8 is 4 kB; with its std 20 kB
    with pytest.raises(InputError, match="and its uncertainty"):
        restore(image, "denoise", model, device="cpu")
    assert restore(image, "denoise", model, device="cpu", uncertainty=False).mean.shape == (64, 64)


def test_a_resumable_tiff_too_large_for_memory_keeps_its_store_when_stopped(tmp_path, tiny_model_dir, monkeypatch):
    """--resume with a TIFF output that goes through a store: a run stopped in its blocks keeps
    the store (named by the output) and the next run continues from its blocks; a run stopped
    while writing the file keeps the finished store, and the next one only writes the file;
    the result equals a run that never stopped, and no store is left."""
    import tifffile

    from napari_emdiffuse import files
    from napari_emdiffuse.engine.io.images import read_image
    from tests.engine.inference.test_resume import _run

    stack = (np.random.default_rng(5).random((3, 48, 40)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "in.tif", stack)
    kw = dict(steps=2, tile=32, overlap=8, device="cpu", z_filter="off", block=32)
    ref = tmp_path / "ref.tif"
    for _ in files.restore_file_iter(tmp_path / "in.tif", ref, "denoise", str(tiny_model_dir), **kw):
        pass
    monkeypatch.setattr(checks, "available_memory", lambda: 2_000)
    out = tmp_path / "out.tif"

    def job():
        return files.restore_file_iter(tmp_path / "in.tif", out, "denoise", str(tiny_model_dir), resume=True, **kw)

    notes, _ = _run(job(), stop_after=2)
    assert any("--resume continues it" in n for n in notes) and not out.exists()
    assert [p.name.split("-")[0] for p in tmp_path.glob(".out.tif.resumable.zarr.partial-*")] == [
        ".out.tif.resumable.zarr.partial"]
    from napari_emdiffuse import outputs

    real, said = outputs.write_spilled, []

    def interrupted(*args, **kwargs):  # Ctrl-C while the file is written
        raise KeyboardInterrupt

    monkeypatch.setattr(outputs, "write_spilled", interrupted)
    gen = job()
    with pytest.raises(KeyboardInterrupt):
        for ev in gen:
            said.append(getattr(ev, "message", None) or "")
    assert any(n.startswith("resuming the unfinished run in") and "blocks are done" in n for n in said)
    assert (tmp_path / ".out.tif.resumable.zarr").is_dir() and not out.exists()  # finished, kept
    monkeypatch.setattr(outputs, "write_spilled", real)
    notes, blocks = _run(job())
    assert any("is complete from an earlier run" in n for n in notes) and blocks == 0  # only the file written
    assert np.array_equal(np.asarray(read_image(out).data), np.asarray(read_image(ref).data))
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no store left


@pytest.mark.parametrize("ext", [".tif", ".mrc"])
def test_a_file_written_from_its_store_reports_each_slice_and_a_cancel_there_leaves_nothing(
        tmp_path, tiny_model_dir, monkeypatch, ext):
    """A result too large for memory is written into its TIFF / MRC slice by slice from its
    store: ``Progress("writing", k, slices)`` for k = 0..slices, the file as the message, the
    uncertainty first. Closing the run at the image's second slice leaves no image file, no
    hidden partial and no store; the control, a run left to its end, has the pixels of a run
    that fitted in memory."""
    import tifffile

    from napari_emdiffuse import files
    from napari_emdiffuse.engine.events import Progress
    from napari_emdiffuse.engine.io.images import read_image

    stack = (np.random.default_rng(6).random((3, 48, 40)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "in.tif", stack)
    kw = dict(steps=2, samples=2, tile=32, overlap=8, device="cpu", z_filter="off", block=32)
    ref = tmp_path / f"ref{ext}"
    events = [ev for ev in files.restore_file_iter(tmp_path / "in.tif", ref, "denoise", str(tiny_model_dir), **kw)
              if isinstance(ev, Progress) and ev.stage == "writing"]
    assert events == []  # in memory: written at once
    monkeypatch.setattr(checks, "available_memory", lambda: 2_000)
    out, unc = tmp_path / f"out{ext}", tmp_path / f"out_sd{ext}"
    events = [(ev.message, ev.done, ev.total)
              for ev in files.restore_file_iter(tmp_path / "in.tif", out, "denoise", str(tiny_model_dir),
                                                uncertainty_out=unc, **kw)
              if isinstance(ev, Progress) and ev.stage == "writing"]
    assert events == [(str(unc), k, 3) for k in range(4)] + [(str(out), k, 3) for k in range(4)]
    assert np.array_equal(np.asarray(read_image(out).data), np.asarray(read_image(ref).data))
    out.unlink()
    unc.unlink()
    gen = files.restore_file_iter(tmp_path / "in.tif", out, "denoise", str(tiny_model_dir), uncertainty_out=unc, **kw)
    for ev in gen:
        if isinstance(ev, Progress) and ev.stage == "writing" and ev.message == str(out) and ev.done == 1:
            gen.close()
            break
    else:
        pytest.fail("no report of the image's second slice")
    assert not out.exists() and not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
