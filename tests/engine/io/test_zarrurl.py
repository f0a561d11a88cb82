"""zarr outputs by URL (an object store): the local run's pixels and metadata, nothing at
the URL until the store is whole, refusals in one line. fsspec's ``local://`` protocol stands
in for an object store: a URL the code reaches only through fsspec, never by path, that
cluster workers in other processes reach too."""

from __future__ import annotations

import numpy as np
import pytest

from napari_emdiffuse.api import reconstruct_isotropic, restore_to_zarr, restore_to_zarr_iter
from napari_emdiffuse.cli import main
from napari_emdiffuse.engine.errors import InputError
from napari_emdiffuse.engine.io.fetch import url_fs
from napari_emdiffuse.engine.io.images import read_image

from tests.conftest import make_tiny

KW = dict(steps=1, tile=32, overlap=8, device="cpu", dtype=np.float32, block=32)


@pytest.fixture(scope="module")
def model():
    return make_tiny("denoise")


@pytest.fixture
def stack():
    return (np.random.default_rng(0).random((2, 90, 100)) * 255).astype(np.uint8)


@pytest.mark.parametrize("name, fmt", [("out.zarr", 2), ("out.ome.zarr", 2), ("out.ome.zarr", 3)])
def test_a_store_by_url_is_the_local_store(model, stack, tmp_path, name, fmt, monkeypatch):
    """The same pixels, uncertainty, pixel size, place and pyramid as the store written to a
    folder; only the finished store at the URL, no hidden prefix left."""
    from napari_emdiffuse.engine.io import pyramid

    monkeypatch.setattr(pyramid, "PYRAMID_TOP", 16)
    kw = dict(KW, spacing=(30.0, 4.0, 4.0), region=(10, 74, 20, 84), samples=2, zarr_format=fmt)
    (tmp_path / "local").mkdir()
    restore_to_zarr(stack, tmp_path / "local" / name, "denoise", model, uncertainty_out=tmp_path / "local" / f"u_{name}",
                    **kw)  # fmt: skip
    url = f"local://{tmp_path}/remote/{name}"
    got = restore_to_zarr(stack, url, "denoise", model, uncertainty_out=f"local://{tmp_path}/remote/u_{name}", **kw)
    assert got == url
    assert sorted(p.name for p in (tmp_path / "remote").iterdir()) == sorted([name, f"u_{name}"])
    for stem in (name, f"u_{name}"):
        a, b = read_image(tmp_path / "local" / stem), read_image(f"local://{tmp_path}/remote/{stem}")
        assert np.array_equal(np.asarray(a.data), np.asarray(b.data)), stem
        assert (a.spacing, a.origin) == (b.spacing, b.origin) == ((30.0, 4.0, 4.0), (0.0, 40.0, 80.0))
    if "ome" in name:
        import zarr

        there = zarr.open_group(str(tmp_path / "remote" / name), mode="r")
        here = zarr.open_group(str(tmp_path / "local" / name), mode="r")
        assert there["1"].shape == (2, 32, 32) and np.array_equal(there["2"][:], here["2"][:])
        assert dict(there.attrs) == {**dict(here.attrs), **{k: v for k, v in there.attrs.items() if k == "ome"}}


def test_nothing_is_at_the_url_until_the_store_is_whole(model, stack, tmp_path, monkeypatch, capsys):
    """The chunks go straight to the URL, the metadata under the hidden prefix: no reader
    finds an array at the URL until the commit copies the metadata documents (and nothing
    else: no chunk is copied), the marker last. A run closed midway removes both; a copy that
    fails leaves chunks without metadata at the URL and the metadata at the prefix, saying
    where."""
    from napari_emdiffuse.engine.io.stores import store_exists

    url = f"local://{tmp_path}/out.zarr"
    gen = restore_to_zarr_iter(stack, url, "denoise", model, **dict(KW, block=32, tile=16, overlap=4))
    seen = []
    for ev in gen:
        if getattr(ev, "stage", None) == "block" and ev.done >= 2:
            there = sorted(p.name for p in (tmp_path / "out.zarr").iterdir())
            seen.append((there, store_exists(url)))
            break
    gen.close()
    (there, whole), = seen
    assert there and not any(n.startswith((".z", "zarr.json")) for n in there) and not whole  # chunks only
    assert ".emdiffuse_run" in there  # and the run's claim on the URL
    with pytest.raises(InputError, match="not a zarr|cannot read|no such"):
        read_image(url)
    assert list(tmp_path.iterdir()) == []
    fs, _ = url_fs(url)
    real_copy = fs.copy
    copied: list[str] = []

    def copy(src, dst, fail, **kw):
        copied.append(src.rsplit("/", 1)[-1])
        if fail and src.endswith(".zattrs"):
            raise OSError("the service went away")
        return real_copy(src, dst, **kw)

    monkeypatch.setattr(type(fs), "copy", lambda self, src, dst, **kw: copy(src, dst, False, **kw))
    restore_to_zarr(stack, url, "denoise", model, **KW)
    assert copied == [".zarray", ".zattrs", ".emdiffuse_complete"]  # the metadata only, the marker last
    assert read_image(url).data.shape == stack.shape and [p.name for p in tmp_path.iterdir()] == ["out.zarr"]
    fs.rm(str(tmp_path / "out.zarr"), recursive=True)
    monkeypatch.setattr(type(fs), "copy", lambda self, src, dst, **kw: copy(src, dst, True, **kw))
    with pytest.raises(InputError, match="its chunks are there and its metadata whole at 'local://.*out.zarr.partial-"):
        restore_to_zarr(stack, url, "denoise", model, **KW)
    assert not store_exists(url) and not (tmp_path / "out.zarr" / ".zarray").exists()
    kept = next(tmp_path.glob("out.zarr.partial-*"))
    assert sorted(p.name for p in kept.iterdir()) == [".emdiffuse_complete", ".zarray", ".zattrs"]
    assert main(["info", url]) == 2
    assert "is no zarr store yet: a run writing it goes on, or one stopped" in capsys.readouterr().err
    with pytest.raises(InputError, match=r"out.zarr.partial-[0-9a-f]{8}' beside it is the record of another run"):
        restore_to_zarr(stack, url, "denoise", model, **KW)


def test_what_cannot_go_to_a_url_is_refused_in_one_line(model, stack, tmp_path):
    url = f"local://{tmp_path}/out.zarr"
    restore_to_zarr(stack, url, "denoise", model, **KW)
    (tmp_path / "junk.zarr").mkdir()
    (tmp_path / "junk.zarr" / "x").write_bytes(b"x")
    for bad, why in (
        (url, "it exists, and an object store cannot swap"),
        (f"local://{tmp_path}/junk.zarr", "it holds objects but no zarr store"),
        ("https://host/out.zarr", "a web server's files are read here"),
        (f"local://{tmp_path}/out.tif", "a zarr store goes here"),
    ):
        with pytest.raises(InputError, match=why):
            restore_to_zarr(stack, bad, "denoise", model, **KW)
    with pytest.raises(InputError, match="it exists, and an object store cannot swap"):  # another job's store
        restore_to_zarr(stack, url, "denoise", model, resume=True, **KW)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.zarr", "out.zarr"]


def test_a_stopped_run_into_a_url_resumes(model, tmp_path, capsys):
    """A resumable run into a store by URL that is stopped keeps its chunks, and its prefix
    with the metadata and the ledger; the next run (the CLI's info lists it) continues from the blocks it finished, to the pixels
    and uncertainty of a run that never stopped; the same job again has nothing to do."""
    from tests.engine.inference.test_resume import KW as RKW, _alike_stack, _run

    img = _alike_stack()
    kw = dict(RKW, samples=2, resume=True)
    restore_to_zarr(img, tmp_path / "ref.ome.zarr", "denoise", model, uncertainty_out=tmp_path / "ref_u.zarr",
                    **dict(RKW, samples=2))  # fmt: skip
    (tmp_path / "b").mkdir()
    url, unc = f"local://{tmp_path}/b/out.ome.zarr", f"local://{tmp_path}/b/u.zarr"
    notes, done = _run(restore_to_zarr_iter(img, url, "denoise", model, uncertainty_out=unc, **kw), stop_after=7)
    assert done == 7 and "its finished blocks stay in 'local://" in notes[0]
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "b").iterdir()) == [
        "out.ome.zarr", "out.ome.zarr.partial", "u.zarr", "u.zarr.partial"]  # chunks; metadata and ledger
    assert not list(tmp_path.glob("b/*.zarr/**/.za*")) and not list(tmp_path.glob("b/*.zarr/**/zarr.json"))
    assert main(["info", url]) == 0
    assert "unfinished resumable run in 'local://" in capsys.readouterr().out
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.glob("b/**/*"))
    for other in (dict(kw, samples=3), dict(kw, resume=False)):  # another run's, or no run's, chunks: not over them
        with pytest.raises(InputError, match="beside it is the record of another run into it, going on or stopped"):
            restore_to_zarr(img, url, "denoise", model, uncertainty_out=unc, **other)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.glob("b/**/*")) == before
    notes, done = _run(restore_to_zarr_iter(img, url, "denoise", model, uncertainty_out=unc, **kw))
    assert "resuming the unfinished run in 'local://" in notes[0] and "7 of 20 blocks are done" in notes[0]
    assert done == 13 and sorted(p.name for p in (tmp_path / "b").iterdir()) == ["out.ome.zarr", "u.zarr"]
    for got, ref in ((url, tmp_path / "ref.ome.zarr"), (unc, tmp_path / "ref_u.zarr")):
        assert np.array_equal(np.asarray(read_image(got).data), np.asarray(read_image(ref).data))
    assert not list(tmp_path.glob("b/**/.emdiffuse-ledger"))  # the ledger is not copied to the URL
    notes, done = _run(restore_to_zarr_iter(img, url, "denoise", model, uncertainty_out=unc, **kw))
    assert done == 0 and "is complete from an earlier run of the same input, model and options" in notes[0]


def test_an_isotropic_volume_by_url_and_its_denoised_slices(tmp_path):
    """Reconstructed into a store by URL, denoised first too (its scratch is this machine's):
    the local run's voxels; a denoiser that gives no uncertainty leaves the measured slices'
    at 0 (it failed to open the store it never wrote)."""
    iso, den = make_tiny("isotropic-i"), make_tiny("denoise")
    vol = (np.random.default_rng(6).random((3, 40, 40)) * 255).astype(np.uint8)
    kw = dict(KW, spacing=(24.0, 8.0, 8.0), region=(4, 36, 8, 40), samples=2, uncertainty=True, denoise=den)
    local = reconstruct_isotropic(vol, 3, iso, out=tmp_path / "iso.zarr", **kw)
    remote = reconstruct_isotropic(vol, 3, iso, out=f"local://{tmp_path}/remote/iso.zarr", **kw)
    assert remote.path == f"local://{tmp_path}/remote/iso.zarr"
    assert remote.uncertainty_path == f"local://{tmp_path}/remote/iso_uncertainty.zarr"
    assert np.array_equal(np.asarray(local.volume), np.asarray(remote.volume))
    assert np.array_equal(np.asarray(local.uncertainty)[::3], np.zeros_like(np.asarray(local.uncertainty)[::3]))
    assert read_image(remote.path).origin == (0.0, 32.0, 64.0)
    assert sorted(p.name for p in (tmp_path / "remote").iterdir()) == ["iso.zarr", "iso_uncertainty.zarr"]


def test_the_cli_writes_a_store_to_a_url(tiny_model_dir, stack, tmp_path, capsys):
    import tifffile

    tifffile.imwrite(tmp_path / "in.tif", stack[0])
    url = f"local://{tmp_path}/out.ome.zarr"
    fast = ["--steps", "1", "--tile", "32", "--overlap", "8", "--device", "cpu"]
    assert main(["denoise", str(tmp_path / "in.tif"), "-o", url, "--model", str(tiny_model_dir), *fast]) == 0
    assert f"wrote {url}" in capsys.readouterr().err
    assert read_image(url).data.shape == (90, 100)
    assert main(["denoise", str(tmp_path / "in.tif"), "-o", url, "--model", str(tiny_model_dir), *fast]) == 2
    err = capsys.readouterr().err
    assert "it exists" in err and len(err.strip().splitlines()) == 1
    again = ["denoise", str(tmp_path / "in.tif"), "-o", f"local://{tmp_path}/r.zarr", "--resume", "--model",
             str(tiny_model_dir), *fast]  # fmt: skip
    assert main(again) == 0 and main(again) == 0
    assert "is complete from an earlier run of the same input, model and options" in capsys.readouterr().err


@pytest.mark.slow
def test_cluster_workers_write_into_a_store_by_url(model, stack, tmp_path, monkeypatch):
    """Workers in other processes open the hidden prefix by URL and write their blocks' chunks,
    and the pyramid's levels, straight to the URL."""
    import zarr

    from napari_emdiffuse.engine.io import pyramid

    monkeypatch.setattr(pyramid, "PYRAMID_TOP", 32)  # levels planned here, written by the workers
    model.save(tmp_path / "m")
    url = f"local://{tmp_path}/w.ome.zarr"
    restore_to_zarr(stack, url, "denoise", str(tmp_path / "m"), workers=2, **KW)
    here = restore_to_zarr(stack, tmp_path / "here.ome.zarr", "denoise", model, **KW)
    # the workers' threads round differently: within float rounding
    assert np.abs(np.asarray(read_image(url).data) - np.asarray(read_image(here).data)).max() < 0.05
    there = zarr.open_group(str(tmp_path / "w.ome.zarr"), mode="r")
    assert there["2"].shape == (2, 23, 25) and np.abs(there["2"][:] - pyramid.halve(pyramid.halve(there["0"][:]))).max() <= 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here.ome.zarr", "m", "w.ome.zarr"]


def test_convert_writes_a_store_to_a_url(stack, tmp_path, capsys):
    """A stack converted into an OME-Zarr store in a bucket (for neuroglancer), its cut-out
    placed; a TIFF by URL too (written here, then uploaded), and a batch of TIFFs."""
    import tifffile

    from napari_emdiffuse.engine.io.images import write_image

    write_image(tmp_path / "in.tif", stack, spacing=(30.0, 4.0, 4.0))
    url = f"local://{tmp_path}/bucket/cut.ome.zarr"
    assert main(["convert", str(tmp_path / "in.tif"), "-o", url, "--region", "10", "50", "20", "60"]) == 0
    back = read_image(url)
    assert np.array_equal(np.asarray(back.data), stack[:, 10:50, 20:60]) and back.origin == (0.0, 40.0, 80.0)
    assert main(["convert", str(tmp_path / "in.tif"), "-o", f"local://{tmp_path}/bucket/cut.tif"]) == 0
    assert read_image(f"local://{tmp_path}/bucket/cut.tif").spacing == (30.0, 4.0, 4.0)
    assert sorted(p.name for p in (tmp_path / "bucket").iterdir()) == ["cut.ome.zarr", "cut.tif"]
    write_image(tmp_path / "in2.tif", stack[:1], spacing=(30.0, 4.0, 4.0))  # a batch into a folder by URL
    two = [str(tmp_path / "in.tif"), str(tmp_path / "in2.tif")]
    assert main(["convert", *two, "-o", f"local://{tmp_path}/bucket/many/", "--to", ".ome.zarr"]) == 0
    assert np.array_equal(np.asarray(read_image(f"local://{tmp_path}/bucket/many/in2.ome.zarr").data), stack[0])
    assert main(["convert", *two, "-o", f"local://{tmp_path}/bucket/tifs/"]) == 0  # --to .tif, the default
    assert np.array_equal(tifffile.imread(tmp_path / "bucket" / "tifs" / "in2.tif"), stack[0])
    assert tifffile.imread(tmp_path / "in.tif").shape == stack.shape  # the input untouched


@pytest.mark.slow
def test_cluster_workers_resume_a_stopped_run_into_a_url(model, tmp_path):
    """Workers mark their blocks in the ledger under the prefix by URL: a stopped cluster
    run's next run submits only the blocks not marked, and ends at the pixels of one
    uninterrupted run (1 grey level of float ordering between processes)."""
    from napari_emdiffuse.engine.events import Progress
    from tests.engine.inference.test_resume import KW as RKW, _alike_stack

    img, path = _alike_stack(), str(model.save(tmp_path / "m"))
    ref = restore_to_zarr(img, tmp_path / "ref.zarr", "denoise", path, **RKW)
    url = f"local://{tmp_path}/b/out.zarr"
    gen = restore_to_zarr_iter(img, url, "denoise", path, workers=2, resume=True, **RKW)
    for ev in gen:
        if isinstance(ev, Progress) and ev.stage == "block" and ev.done >= 6:
            gen.close()
            break
    (part,) = (tmp_path / "b").glob("out.zarr.partial-*")
    assert (part / ".emdiffuse-ledger").is_dir() and not (tmp_path / "b" / "out.zarr" / ".zarray").exists()
    events = list(restore_to_zarr_iter(img, url, "denoise", path, workers=2, resume=True, **RKW))
    note = next(e.message for e in events[:-1] if e.stage == "note")
    done = int(note.split(": ")[-1].split(" of ")[0])
    assert note.startswith("resuming") and 6 <= done < 20
    assert [(e.stage, e.total) for e in events[:-1] if e.message == f"{e.total} tasks submitted"][0] == ("block", 20 - done)
    a = np.asarray(read_image(url).data).astype(np.int16)
    assert np.abs(a - np.asarray(read_image(ref).data).astype(np.int16)).max() <= 1
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["out.zarr"]


def test_a_batch_goes_into_a_folder_by_url_as_zarr_stores(tiny_model_dir, tmp_path, capsys):
    """Several files into an object store's folder: each a store by URL with its uncertainty,
    the pixels of each file restored alone; --resume leaves the finished ones out; mixed
    folders (a URL and a path), --to with one output file, and a store there already are
    refused."""
    import tifffile

    rng = np.random.default_rng(3)
    (tmp_path / "in").mkdir()
    for name in ("a", "b"):
        tifffile.imwrite(tmp_path / "in" / f"{name}.tif", (rng.random((70, 80)) * 255).astype(np.uint8))
    fast = ["--steps", "1", "--tile", "32", "--overlap", "8", "--device", "cpu", "--model", str(tiny_model_dir)]
    url, sd = f"local://{tmp_path}/bucket/clean/", f"local://{tmp_path}/bucket/sd/"
    assert main(["denoise", str(tmp_path / "in"), "-o", url, "--uncertainty", sd, "--samples", "2", *fast]) == 0
    assert sorted(p.name for p in (tmp_path / "bucket" / "clean").iterdir()) == ["a.zarr", "b.zarr"]
    assert sorted(p.name for p in (tmp_path / "bucket" / "sd").iterdir()) == ["a_uncertainty.zarr", "b_uncertainty.zarr"]
    alone = tmp_path / "a_alone.zarr"
    assert main(["denoise", str(tmp_path / "in" / "a.tif"), "-o", str(alone), "--samples", "2", *fast]) == 0
    assert np.array_equal(np.asarray(read_image(f"{url}a.zarr").data), np.asarray(read_image(alone).data))
    capsys.readouterr()
    assert main(["denoise", str(tmp_path / "in"), "-o", url, "--resume", "--to", ".zarr", *fast]) == 0
    assert "2 of 2 files were restored by an earlier run; 0 to do" in capsys.readouterr().err
    assert main(["denoise", str(tmp_path / "in"), "-o", url, *fast]) == 2  # the stores cannot be swapped in place
    assert "it exists, and an object store cannot swap" in capsys.readouterr().err
    for bad, why in (
        ([str(tmp_path / "in"), "-o", url, "--uncertainty", str(tmp_path / "sd")], "both as URLs, or both as folders"),
        ([str(tmp_path / "in" / "a.tif"), "-o", str(tmp_path / "one.tif"), "--to", ".zarr"], "sets the format of a batch"),
        ([str(tmp_path / "in"), "-o", str(tmp_path / "loc3"), "--zarr-format", "3"], "add --to .zarr"),
        ([str(tmp_path / "in"), "-o", "nosuch://bucket/clean/"], "cannot write into 'nosuch://bucket/clean': "),
    ):
        assert main(["denoise", *bad, *fast]) == 2, bad
        err = capsys.readouterr().err
        assert why in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "loc3").exists()


def test_a_local_batch_as_ome_zarr_stores_resumes_an_unfinished_one(tiny_model_dir, tmp_path, capsys):
    """--to .ome.zarr in a folder: each result an OME-Zarr store (format 3 too); with --resume
    a store that a stopped run left unfinished continues block by block, the finished ones are
    left out."""
    import tifffile

    from napari_emdiffuse.engine.io.stores import is_complete
    from napari_emdiffuse.batches import restore_files_iter

    rng = np.random.default_rng(4)
    (tmp_path / "in").mkdir()
    for name in ("a", "b"):
        tifffile.imwrite(tmp_path / "in" / f"{name}.tif", (rng.random((2, 70, 80)) * 255).astype(np.uint8))
    kw = dict(steps=1, tile=32, overlap=8, device="cpu", block=32, z_filter="off", zarr_format=3)
    gen = restore_files_iter([tmp_path / "in"], tmp_path / "out", "denoise", str(tiny_model_dir), ext=".ome.zarr",
                             resume=True, **kw)  # fmt: skip
    blocks = 0
    for ev in gen:  # stop inside the second file
        blocks += getattr(ev, "stage", None) == "block" and bool(ev.total)
        if blocks >= 18 + 5:  # 18 blocks a file
            gen.close()
            break
    out = tmp_path / "out"
    assert is_complete(out / "a.ome.zarr") and not (out / "b.ome.zarr").exists()
    assert [p.name.split("-")[0] for p in out.glob("b.ome.zarr.partial-*")] == ["b.ome.zarr.partial"]
    events = list(restore_files_iter([tmp_path / "in"], out, "denoise", str(tiny_model_dir), ext=".ome.zarr",
                                     resume=True, **kw))  # fmt: skip
    said = [e.message for e in events[:-1] if getattr(e, "stage", None) == "note"]
    assert "1 of 2 files were restored by an earlier run; 1 to do" in said[0]
    assert any("resuming the unfinished run in" in m and "blocks are done" in m for m in said)
    import zarr

    a = zarr.open_group(str(out / "b.ome.zarr"), mode="r")
    assert a["0"].metadata.zarr_format == 3 and is_complete(out / "b.ome.zarr")
    alone = restore_to_zarr(read_image(tmp_path / "in" / "b.tif").data, tmp_path / "b.zarr", "denoise",
                            str(tiny_model_dir), **{k: v for k, v in kw.items() if k != "zarr_format"})  # fmt: skip
    assert np.array_equal(a["0"][:], np.asarray(read_image(alone).data))


def test_a_ledger_in_an_object_store_marks_reads_and_forgets(tmp_path):
    """The ledger of a run into a URL: one object a mark, listed in one request, a value read
    back, a part forgotten (the z filter's half-done columns), invalid keys refused as in a
    folder; an inert ledger remembers nothing."""
    from napari_emdiffuse.engine.io.ledger import Ledger

    led = Ledger(f"local://{tmp_path}/out.zarr.partial-1/.emdiffuse-ledger")
    assert led.keys() == set() and not led.done("block-1") and led.read("width") is None
    led.mark("block-1")
    led.mark("block-2")
    led.write("width", "0.8")
    assert led.done("block-1") and led.keys() == {"block-1", "block-2", "width"} and led.read("width") == "0.8"
    led.forget("block-1")
    led.forget("block-9")  # not there: nothing to do
    assert not led.done("block-1") and led.keys() == {"block-2", "width"}
    assert sorted(p.name for p in (tmp_path / "out.zarr.partial-1" / ".emdiffuse-ledger").iterdir()) == ["block-2", "width"]
    with pytest.raises(ValueError, match="not a ledger key"):
        led.mark("../escape")
    assert Ledger(None).keys() == set() and not Ledger(None).done("block-2")


def test_two_runs_into_one_url_do_not_mix_their_chunks(tmp_path, monkeypatch):
    """Chunks go straight to the URL, so a second run into it while a first one writes (its
    prefix beside the URL, before any chunk) is refused in one line; of two runs begun in the
    same instant (both past those checks), the later to claim the URL is refused before it
    writes anything, and the other's chunks stay; where a service ignores the claim's
    condition, the run that finds a store finished there at its commit says so rather than
    adding its metadata to it."""
    from napari_emdiffuse.engine.io import zarrurl
    from napari_emdiffuse.engine.io.zarrurl import CLAIM_FILE, UrlZarrWriter

    url = f"local://{tmp_path}/out.zarr"
    first = UrlZarrWriter(url, (4, 32, 32), np.uint8, chunks=(1, 16, 16))
    with pytest.raises(InputError, match=r"out.zarr.partial-[0-9a-f]{8}' beside it is the record of another run"):
        UrlZarrWriter(url, (4, 32, 32), np.uint8, chunks=(1, 16, 16))
    first.array[:] = 3
    first.abort()
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(zarrurl, "partials_beside", lambda where: [])  # both begin before either's prefix is seen
    monkeypatch.setattr(zarrurl, "_refuse_existing", lambda where, whole: None)  # ... or anything at the URL
    a = UrlZarrWriter(url, (4, 32, 32), np.uint8, chunks=(1, 16, 16))
    with pytest.raises(InputError, match="another run began writing it at the same moment"):
        UrlZarrWriter(url, (4, 32, 32), np.uint8, chunks=(1, 16, 16))
    a.array[:] = 5
    assert a.commit() == url
    assert np.all(read_image(url).data[:] == 5) and sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]
    assert not (tmp_path / "out.zarr" / CLAIM_FILE).exists()  # the commit removes the claim
    monkeypatch.setattr(UrlZarrWriter, "_claim", lambda self, exclusive: None)  # a service without conditions
    url = f"local://{tmp_path}/two.zarr"
    a = UrlZarrWriter(url, (4, 32, 32), np.uint8, chunks=(1, 16, 16))
    b = UrlZarrWriter(url, (4, 32, 32), np.uint8, chunks=(1, 16, 16))
    a.array[:] = 5
    b.array[:] = 7
    a.commit()
    with pytest.raises(InputError, match="another run finished a store there while this one wrote its chunks"):
        b.commit()
    assert (tmp_path / b.temp_path.split("/")[-1]).is_dir()  # b's metadata kept, as the message says
