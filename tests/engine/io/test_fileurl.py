"""TIFF and MRC results by URL (an object store): written here, then uploaded whole. fsspec's
``local://`` protocol stands in for the object store: a URL reached only through fsspec. The
system's temporary folder is the test's own, so that what a run leaves there is seen."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_emdiffuse.cli import main
from napari_emdiffuse.engine.errors import InputError
from napari_emdiffuse.engine.events import Progress
from napari_emdiffuse.engine.inference import checks
from napari_emdiffuse.engine.io import fileurl
from napari_emdiffuse.engine.io.images import read_image, write_image


@pytest.fixture
def tmp(tmp_path, monkeypatch):
    """The system's temporary folder, empty."""
    folder = tmp_path / "systemp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture
def scan(tmp_path):
    image = (np.random.default_rng(0).random((72, 80)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "in.tif", image, imagej=True, resolution=(0.25, 0.25), metadata={"unit": "nm"})
    return tmp_path / "in.tif"


def _args(model_dir):
    return ["--model", str(model_dir), "--device", "cpu", "--steps", "2", "--samples", "2"]


def test_a_tiff_or_mrc_result_by_url_is_the_local_file(tmp_path, tmp, scan, tiny_model_dir, capsys):
    """The same pixels, uncertainty and pixel size as the run into a folder; at the URL only
    the two files, nothing left in the temporary folder."""
    args = _args(tiny_model_dir)
    assert main(["denoise", str(scan), "-o", str(tmp_path / "here.tif"), "--uncertainty", str(tmp_path / "here_sd.tif"),
                 *args]) == 0  # fmt: skip
    for ext in (".tif", ".mrc"):
        url, unc = f"local://{tmp_path}/bucket/out{ext}", f"local://{tmp_path}/bucket/out_sd{ext}"
        assert main(["denoise", str(scan), "-o", url, "--uncertainty", unc, *args]) == 0
        err = capsys.readouterr().err
        assert f"wrote {url} and {unc} (uncertainty)" in err
        assert f"note: '{unc}' is written in '{tmp}' first (about 0.1 MiB), then uploaded whole" in err
        got, want = read_image(url), read_image(tmp_path / "here.tif")
        assert np.array_equal(np.asarray(got.data), np.asarray(want.data)) and got.spacing == (4.0, 4.0)
        assert np.allclose(np.asarray(read_image(unc).data), np.asarray(read_image(tmp_path / "here_sd.tif").data))
    assert sorted(p.name for p in (tmp_path / "bucket").iterdir()) == ["out.mrc", "out.tif", "out_sd.mrc", "out_sd.tif"]
    assert not list(tmp.iterdir())
    assert main(["convert", str(scan), "-o", f"local://{tmp_path}/bucket/c.tif"]) == 0
    assert np.array_equal(read_image(f"local://{tmp_path}/bucket/c.tif").data, tifffile.imread(scan))


def test_nothing_is_at_the_url_until_the_file_is_whole(tmp_path, tmp, scan, tiny_model_dir, monkeypatch):
    """A run closed midway uploads nothing and leaves nothing here; an upload that fails
    leaves nothing at the URL and keeps the finished file here, saying where."""
    from napari_emdiffuse.files import restore_file_iter

    url = f"local://{tmp_path}/bucket/out.tif"
    gen = restore_file_iter(scan, url, "denoise", str(tiny_model_dir), device="cpu", steps=2, tile=32, overlap=8)
    for ev in gen:
        if isinstance(ev, Progress) and ev.stage not in ("note",) and ev.done >= 1:
            break
    gen.close()
    assert not (tmp_path / "bucket").exists() and not list(tmp.iterdir())

    def refused(*_a, **_k):
        raise PermissionError("access denied")

    monkeypatch.setattr(fileurl, "upload_file", refused)
    with pytest.raises(InputError, match=r"cannot upload to 'local://.*out.tif': permission denied; the result is kept at"):
        write_image(url, np.zeros((8, 8), np.uint8))
    assert not (tmp_path / "bucket").exists()
    (kept,) = tmp.glob("emdiffuse-kept-*/out.tif")  # named so that no later run removes it as an orphan
    assert tifffile.imread(kept).shape == (8, 8) and not list(tmp.glob("emdiffuse-upload-*"))
    fileurl.staging_dir(url)
    assert kept.is_file()


def test_the_upload_is_reported_and_a_cancel_there_leaves_nothing(tmp_path, tmp, scan, tiny_model_dir):
    """``Progress("upload", sent, total)`` for each file by URL (its size in bytes, its URL as
    the message), uncertainty first; closing the run at that event stops the upload: nothing
    at the URL, nothing here. The control: a run left to its end has the files there."""
    from napari_emdiffuse.files import restore_file_iter

    url, unc = f"local://{tmp_path}/bucket/out.tif", f"local://{tmp_path}/bucket/out_sd.tif"
    kw = dict(uncertainty_out=unc, device="cpu", steps=2, samples=2)
    events = [ev for ev in restore_file_iter(scan, url, "denoise", str(tiny_model_dir), **kw)
              if isinstance(ev, Progress) and ev.stage == "upload"]
    sizes = [(tmp_path / "bucket" / n).stat().st_size for n in ("out_sd.tif", "out.tif")]
    assert [(ev.message, ev.done, ev.total) for ev in events] == [(unc, sizes[0], sizes[0]), (url, sizes[1], sizes[1])]
    for name in ("out.tif", "out_sd.tif"):
        (tmp_path / "bucket" / name).unlink()
    gen = restore_file_iter(scan, url, "denoise", str(tiny_model_dir), **kw)
    for ev in gen:
        if isinstance(ev, Progress) and ev.stage == "upload":
            gen.close()
            break
    assert not list((tmp_path / "bucket").iterdir()) and not list(tmp.iterdir())


def test_a_local_file_system_gets_the_file_under_a_hidden_name_then_renamed(tmp_path, monkeypatch):
    """``local://`` (a mounted bucket) has no atomic upload: the file goes under a hidden
    name beside it, then is renamed; a copy that fails midway leaves nothing."""
    from fsspec.implementations.local import LocalFileSystem

    src = tmp_path / "a.tif"
    tifffile.imwrite(src, np.arange(64, dtype=np.uint8).reshape(8, 8))
    (tmp_path / "b").mkdir()
    seen = []
    real = LocalFileSystem.put_file

    def watched(self, lpath, rpath, **kw):
        seen.append(rpath.rsplit("/", 1)[-1])
        return real(self, lpath, rpath, **kw)

    monkeypatch.setattr(LocalFileSystem, "put_file", watched)
    fileurl.upload_file(src, f"local://{tmp_path}/b/a.tif")
    assert seen[0].startswith(".a.tif.partial-") and [p.name for p in (tmp_path / "b").iterdir()] == ["a.tif"]

    def broken(self, lpath, rpath, **kw):
        with open(rpath, "wb") as f:
            f.write(b"II*\x00half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(LocalFileSystem, "put_file", broken)
    with pytest.raises(OSError):
        fileurl.upload_file(src, f"local://{tmp_path}/b/c.tif")
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["a.tif"]


def test_a_stack_too_large_for_memory_goes_to_its_url_through_a_local_store_and_resumes(tmp_path, tmp, tiny_model_dir,
                                                                                         monkeypatch):
    """The hidden store of a result too large for memory lies in the temporary folder, not
    beside the URL; a resumable run that stops keeps it there, and the next run of the same
    output continues from its finished blocks to the pixels of a run that never stopped; then
    nothing is left here."""
    from napari_emdiffuse.engine.events import drain
    from napari_emdiffuse.files import restore_file_iter

    stack = (np.random.default_rng(2).random((4, 64, 64)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "in.tif", stack, imagej=True, metadata={"axes": "ZYX"})
    kw = dict(device="cpu", steps=2, tile=32, overlap=8, block=32, z_filter="off")
    ref = drain(restore_file_iter(tmp_path / "in.tif", tmp_path / "ref.tif", "denoise", str(tiny_model_dir), **kw))
    monkeypatch.setattr(checks, "available_memory", lambda: 2_000)
    url = f"local://{tmp_path}/bucket/out.tif"
    gen = restore_file_iter(tmp_path / "in.tif", url, "denoise", str(tiny_model_dir), resume=True, **kw)
    notes, done, total = [], 0, 0
    for ev in gen:
        if ev.stage == "note":
            notes.append(ev.message)
        if ev.stage == "block" and ev.total and ev.done >= 3:
            done, total = ev.done, ev.total
            gen.close()
            break
    assert done == 3 and "a URL's file is written here, then uploaded" in notes[0]
    (folder,) = tmp.iterdir()
    (kept,) = folder.iterdir()  # the unfinished store, its finished blocks in it
    assert kept.name.startswith(".out.tif.resumable.zarr") and not (tmp_path / "bucket").exists()
    gen = restore_file_iter(tmp_path / "in.tif", url, "denoise", str(tiny_model_dir), resume=True, **kw)
    events = [ev for ev in gen if isinstance(ev, Progress)]
    blocks = [ev.done for ev in events if ev.stage == "block" and ev.total]
    assert [ev.message for ev in events if "then uploaded whole" in ev.message] == [
        f"note: '{url}' is written in '{tmp}' first (about 0.1 MiB), then uploaded whole"]  # 4 x 64 x 64 bytes
    assert any(f"3 of {total} blocks are done" in ev.message for ev in events if ev.stage == "note")
    assert total > 3 and blocks[-1] == total - 3  # the finished blocks were not restored again
    assert np.array_equal(np.asarray(read_image(url).data), np.asarray(read_image(ref[0]).data))
    assert not list(tmp.iterdir())


def test_a_batch_into_a_url_writes_files_and_resumes_past_them(tmp_path, tmp, tiny_model_dir, capsys):
    rng = np.random.default_rng(3)
    src = tmp_path / "scans"
    src.mkdir()
    for name in ("a", "b", "c"):
        write_image(src / f"{name}.tif", (rng.random((40, 48)) * 255).astype(np.uint8), spacing=(5.0, 5.0))
    url = f"local://{tmp_path}/bucket/clean/"
    args = ["--model", str(tiny_model_dir), "--device", "cpu", "--steps", "2", "--to", ".mrc"]
    assert main(["denoise", str(src), "-o", url, *args]) == 0
    there = tmp_path / "bucket" / "clean"
    assert sorted(p.name for p in there.iterdir()) == ["a.mrc", "b.mrc", "c.mrc"]
    assert read_image(url + "b.mrc").spacing == (5.0, 5.0)
    (there / "b.mrc").unlink()
    capsys.readouterr()
    assert main(["denoise", str(src), "-o", url, *args, "--resume"]) == 0
    assert "resuming: 2 of 3 files were restored by an earlier run; 1 to do" in capsys.readouterr().err
    assert sorted(p.name for p in there.iterdir()) == ["a.mrc", "b.mrc", "c.mrc"] and not list(tmp.iterdir())


@pytest.mark.parametrize("out, why", [
    ("https://host/out.tif", "a web server's files are read here, not written"),
    ("local://{tmp}/out.png", "unsupported file type '.png'"),
    ("local://{tmp}/taken.tif", "a folder with that name exists"),
    ("local://{tmp}/in.tif/out.tif", "is a file, not a folder"),
    ("local://{tmp}/in.tif", "is the input file"),
])
def test_what_cannot_be_written_by_url_is_refused_in_one_line(tmp_path, scan, tiny_model_dir, capsys, out, why):
    (tmp_path / "taken.tif").mkdir()
    out = out.format(tmp=tmp_path)
    inp = f"local://{scan}" if why == "is the input file" else str(scan)
    assert main(["denoise", inp, "-o", out, *_args(tiny_model_dir)]) == 2
    err = capsys.readouterr().err
    assert why in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "taken.tif", "tiny-denoise"]


def test_a_missing_bucket_is_refused_before_the_run(monkeypatch):
    """S3's HeadBucket answers 404 for a bucket that does not exist: refused in one line
    before any work (not at the upload, hours later; a zarr store's writer raised a traceback),
    for a file, a zarr store and a batch's folder. 403 (write-only credentials, not allowed to
    look) and a store that has no such question pass."""
    from napari_emdiffuse.engine.io import batch, fetch, zarrurl
    from napari_emdiffuse.engine.io.batch import plan_batch
    from napari_emdiffuse.engine.io.zarrurl import check_output_url

    class Store:
        def __init__(self, answer):
            self.answer, self.asked = answer, []

        def isdir(self, path):
            return False

        def isfile(self, path):
            return False

        def exists(self, path):
            return False

        def call_s3(self, method, **kw):
            self.asked.append((method, kw))
            if self.answer is not None:
                raise self.answer

    for answer, refused in ((FileNotFoundError("NoSuchBucket"), True), (PermissionError("AccessDenied"), False),
                            (None, False)):
        store = Store(answer)
        for module in (fetch, zarrurl, batch):
            monkeypatch.setattr(module, "url_fs", lambda url, store=store: (store, url.split("://", 1)[1]))
        if refused:
            with pytest.raises(InputError, match=r"^cannot write 's3://nobucket/run/a.tif': there is no bucket "
                                                 r"'nobucket'$"):
                fileurl.check_file_url("s3://nobucket/run/a.tif")
            for check, url in ((check_output_url, "s3://nobucket/run/a.zarr"),
                               (lambda u: plan_batch([Path("a.tif")], u, ext=".tif"), "s3://nobucket/run")):
                with pytest.raises(InputError, match=rf"^cannot write '{url}': there is no bucket 'nobucket'$"):
                    check(url)
        else:
            assert fileurl.check_file_url("s3://nobucket/run/a.tif") == "s3://nobucket/run/a.tif"
        assert store.asked[0] == ("head_bucket", {"Bucket": "nobucket"})
    del Store.call_s3  # a store with no such question (gcs, a mounted bucket): not asked
    assert fileurl.check_file_url("gs://nobucket/a.tif") == "gs://nobucket/a.tif"


def test_a_new_staging_folder_removes_those_killed_processes_left(tmp, tmp_path):
    """A process killed outright (SIGKILL, the out-of-memory killer) leaves its staging folder;
    the next one made on this machine removes it, and leaves alone those of processes that run,
    another machine's, a resumable run's and a failed upload's kept file."""
    import os
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = __import__("napari_emdiffuse.engine.io.atomic", fromlist=["host_tag"]).host_tag()
    names = {"orphan": f"emdiffuse-upload-{host}-{int(dead.stdout)}-abc", "alive": f"emdiffuse-upload-{host}-{os.getpid()}-x",
             "other machine": f"emdiffuse-upload-elsewhere-{int(dead.stdout)}-y", "kept": f"emdiffuse-kept-{host}-1-z"}
    for name in names.values():
        (tmp / name).mkdir()
        (tmp / name / "out.tif").write_bytes(b"x" * 100)
    resumable = fileurl.staging_dir("s3://b/run.tif", resume=True)
    new = fileurl.staging_dir("s3://b/out.tif")
    assert new.name.startswith(f"emdiffuse-upload-{host}-{os.getpid()}-")
    assert sorted(p.name for p in tmp.iterdir()) == sorted(
        [new.name, resumable.name] + [n for k, n in names.items() if k != "orphan"])


def test_a_precomputed_result_by_url_is_the_local_one_and_its_info_comes_last(tmp_path, tmp, scan, tiny_model_dir,
                                                                               capsys, monkeypatch):
    """A neuroglancer precomputed folder by URL: the same volume as the local run; into an
    object store (fsspec's memory store: not a file system) its chunks go first and its
    ``info`` last, so no reader finds a volume before every chunk is there; a volume already
    at the URL is refused (two volumes' chunks would mix); a stopped upload leaves nothing."""
    from fsspec.implementations.memory import MemoryFileSystem

    args = _args(tiny_model_dir)
    assert main(["denoise", str(scan), "-o", str(tmp_path / "here.precomputed"), *args]) == 0
    want = np.asarray(read_image(tmp_path / "here.precomputed").data[:])
    url = f"local://{tmp_path}/bucket/out.precomputed"
    assert main(["denoise", str(scan), "-o", url, *args]) == 0
    assert np.array_equal(np.asarray(read_image(url).data[:]), want)
    assert sorted(p.name for p in (tmp_path / "bucket").iterdir()) == ["out.precomputed"] and not list(tmp.iterdir())
    capsys.readouterr()
    assert main(["denoise", str(scan), "-o", url, *args]) == 2
    assert "a precomputed volume is there already" in capsys.readouterr().err

    put = []
    real = MemoryFileSystem.put_file

    def watched(self, lpath, rpath, **kw):
        put.append(rpath.rsplit("/", 1)[-1])
        return real(self, lpath, rpath, **kw)

    monkeypatch.setattr(MemoryFileSystem, "put_file", watched)
    vol = np.arange(2 * 600 * 30, dtype=np.uint16).reshape(2, 600, 30)
    bucket = f"memory://{tmp_path.name}"
    write_image(f"{bucket}/m.precomputed", vol, spacing=(40.0, 4.0, 4.0))
    assert put[-1] == "info" and "provenance" in put and len(put) == 2 + 5 + 3  # 5 chunks, then 3 of the level
    back = read_image(f"{bucket}/m.precomputed")
    assert back.spacing == (40.0, 4.0, 4.0) and np.array_equal(np.asarray(back.data[:]), vol)

    def stop(stage, done, total):
        if stage == "upload" and done > 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_image(f"{bucket}/s.precomputed", vol, spacing=(40.0, 4.0, 4.0), progress=stop)
    assert not MemoryFileSystem().exists(f"/{tmp_path.name}/s.precomputed") and not list(tmp.iterdir())
