"""Neuroglancer precomputed outputs: the files neuroglancer and CloudVolume read (checked
byte for byte against the format's layout, not only through our own reader), their scales,
and the guarantees of every output (atomic, one-line refusals)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_emdiffuse.engine.errors import InputError
from napari_emdiffuse.engine.io.images import read_image, write_image
from napari_emdiffuse.engine.io.precomputed import read_precomputed
from napari_emdiffuse.engine.io.precomputed_write import write_precomputed


def _mean2(a: np.ndarray) -> np.ndarray:
    """2x2 means of the last two axes, rounded half up (even sizes): the level's closed form."""
    s = a.astype(np.int64)
    total = s[..., 0::2, 0::2] + s[..., 1::2, 0::2] + s[..., 0::2, 1::2] + s[..., 1::2, 1::2]
    return ((2 * total + 4) // 8).astype(a.dtype)


def test_chunks_lie_on_disk_as_the_format_names_them(tmp_path):
    vol = (np.arange(5 * 70 * 150) * 7919 % 65521).astype(np.uint16).reshape(5, 70, 150)
    out = write_image(tmp_path / "vol.precomputed", vol, spacing=(30.0, 4.0, 4.0), origin=(60.0, 40.0, 8.0))
    info = json.loads((out / "info").read_text())
    assert info["data_type"] == "uint16" and info["num_channels"] == 1 and info["type"] == "image"
    (scale,) = info["scales"]
    assert scale["key"] == "4_4_30" and scale["resolution"] == [4.0, 4.0, 30.0]
    assert scale["size"] == [150, 70, 5] and scale["voxel_offset"] == [2, 10, 2]  # x y z voxels
    assert scale["chunk_sizes"] == [[128, 70, 5]] and scale["encoding"] == "raw"  # thin sections, cut to the volume
    # the chunk at x 128:150 (an edge chunk, cut to the volume), offset included in its name
    raw = (out / "4_4_30" / "130-152_10-80_2-7").read_bytes()
    assert raw == vol[:, :, 128:150].astype("<u2").tobytes()  # little-endian, x fastest
    back = read_image(out)
    assert back.spacing == (30.0, 4.0, 4.0) and back.origin == (60.0, 40.0, 8.0)
    assert np.array_equal(np.asarray(back.data[:]), vol)


def test_a_large_volume_gets_the_scales_neuroglancer_zooms_through(tmp_path):
    rng = np.random.default_rng(0)
    vol = rng.integers(0, 256, (4, 1040, 600), dtype=np.uint8)
    out = write_precomputed(tmp_path / "iso.precomputed", vol, spacing=(8.0, 8.0, 8.0))
    info = json.loads((out / "info").read_text())
    assert [s["key"] for s in info["scales"]] == ["8_8_8", "16_16_16", "32_32_32"]
    assert info["scales"][0]["chunk_sizes"] == [[64, 64, 4]]
    one = read_precomputed(out, "16_16_16")
    assert one.data.shape == (2, 520, 300) and one.spacing == (16.0, 16.0, 16.0)
    # z halved too, the voxels being isotropic: the mean of each 2x2x2, rounded half up
    s = vol.astype(np.int64)
    total = sum(s[dz::2, dy::2, dx::2] for dz in (0, 1) for dy in (0, 1) for dx in (0, 1))
    assert np.array_equal(np.asarray(one.data[:]), ((2 * total + 8) // 16).astype(np.uint8))
    assert read_precomputed(out, "32_32_32").data.shape == (1, 260, 150)


def test_a_stack_of_thin_sections_keeps_every_section_in_its_first_levels(tmp_path):
    vol = np.random.default_rng(1).integers(0, 256, (3, 1100, 40), dtype=np.uint8)
    out = write_precomputed(tmp_path / "stack.precomputed", vol, spacing=(40.0, 4.0, 4.0), origin=(0.0, 8.0, 0.0))
    info = json.loads((out / "info").read_text())
    assert [s["size"] for s in info["scales"]] == [[40, 1100, 3], [20, 550, 3], [10, 275, 3]]
    assert [s["voxel_offset"] for s in info["scales"]] == [[0, 2, 0], [0, 1, 0], [0, 0, 0]]
    level = np.asarray(read_precomputed(out, "8_8_40").data[:])
    assert np.array_equal(level, _mean2(vol))


def test_a_2d_float_image_becomes_one_float32_section(tmp_path, capsys):
    """... which `emdiffuse info` calls one slice (no isotropic factor to find for it)."""
    from napari_emdiffuse.cli import main

    image = np.random.default_rng(2).random((90, 70))  # float64, no pixel size
    out = write_image(tmp_path / "den.precomputed", image)
    info = json.loads((out / "info").read_text())
    assert info["data_type"] == "float32" and info["scales"][0]["resolution"] == [1.0, 1.0, 1.0]
    back = np.asarray(read_image(out).data[:])
    assert back.shape == (1, 90, 70) and back.dtype == np.float32
    assert np.array_equal(back[0], image.astype(np.float32))
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    line = capsys.readouterr().out
    assert "one slice: restored as a 2D image" in line and "isotropic" not in line, line


def test_a_stopped_write_leaves_nothing_and_the_old_volume_whole(tmp_path, monkeypatch):
    from napari_emdiffuse.engine.io import precomputed_write

    monkeypatch.setattr(precomputed_write, "_UNIT_PIXELS", 40 * 64 * 64)  # one chunk a block: 25 blocks
    vol = np.random.default_rng(3).integers(0, 256, (40, 300, 300), dtype=np.uint8)
    out = write_precomputed(tmp_path / "v.precomputed", vol[:2], spacing=(8.0, 8.0, 8.0))
    calls = []

    def stop(done: int, total: int) -> None:
        calls.append((done, total))
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_precomputed(out, vol, spacing=(8.0, 8.0, 8.0), progress=stop)
    assert calls == [(0, 25), (1, 25), (2, 25)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.precomputed"]  # no partial beside it
    assert read_image(out).data.shape == (2, 300, 300)  # the earlier volume, untouched


@pytest.mark.parametrize(
    ("data", "kwargs", "words"),
    [
        (np.zeros((2, 3, 8, 8), np.uint8), {}, "one 2D image or one ZYX volume"),
        (np.zeros((8, 8), np.complex64), {}, "neuroglancer shows"),
        (np.zeros((8, 8), np.uint8), {"spacing": (1.0, 1.0), "unit": "furlong"}, "unknown length unit"),
        (np.zeros((2, 8, 8), np.uint8), {"spacing": (1.0, 1.0)}, "2 pixel sizes for 3 axes"),
        (np.zeros((2, 8, 8), np.uint16), {"encoding": "jpeg"}, "jpeg chunks: they hold 8-bit pixels, not uint16"),
        (np.zeros((2, 8, 8), np.uint8), {"encoding": "png"}, "unknown chunk encoding 'png'; choose raw or jpeg"),
        (np.zeros((2, 8, 8), np.uint8), {"encoding": "jpeg", "jpeg_quality": 101}, "from 1 to 100, not 101"),
    ],
)
def test_what_a_precomputed_volume_cannot_hold_is_refused_in_one_line(tmp_path, data, kwargs, words):
    before = data.copy()
    with pytest.raises(InputError, match=words) as err:
        write_precomputed(tmp_path / "x.precomputed", data, **kwargs)
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == [] and np.array_equal(data, before)


def test_the_command_line_writes_and_rewrites_precomputed_and_zarr_outputs(tmp_path, capsys):
    """Writing a result again into its own store replaces it: a store named as one is not a
    batch's output folder (it once received the input's copy inside it)."""
    import tifffile

    from napari_emdiffuse.cli import main

    vol = np.random.default_rng(4).integers(0, 256, (4, 48, 40), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "vol.tif", vol, imagej=True, resolution=(250.0, 250.0),
                     metadata={"spacing": 0.02, "unit": "um", "axes": "ZYX"})
    for name in ("v.precomputed", "v.zarr"):
        out = tmp_path / name
        assert main(["convert", str(tmp_path / "vol.tif"), "-o", str(out)]) == 0
        assert main(["convert", str(tmp_path / "vol.tif"), "-o", f"{out}/", "--region", "8", "24", "0", "16"]) == 0
        back = read_image(out)
        assert back.data.shape == (4, 16, 16) and back.spacing == (20.0, 4.0, 4.0)
        assert np.array_equal(np.asarray(back.data[:]), vol[:, 8:24, :16])
        assert not (out / "vol.tif").exists()
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "vol.tif"), str(tmp_path / "vol.tif"), "-o", str(tmp_path / "b.precomputed")]) == 2
    assert "named like a file" in capsys.readouterr().err
    assert not (tmp_path / "b.precomputed").exists()
    url = f"local://{tmp_path}/bucket/c.precomputed"  # a remote cluster's result by URL: a store, then convert
    assert main(["denoise", str(tmp_path / "vol.tif"), "-o", url, "--scheduler", "tcp://127.0.0.1:9"]) == 2
    assert "then 'emdiffuse convert c.zarr -o c.precomputed'" in capsys.readouterr().err


def test_a_shard_file_is_laid_out_as_the_format_says():
    """Closed form: 2 minishards (key bit 0 after a preshift of 1): keys 2 and 3 in minishard
    1, key 4 in minishard 0; the shard index, then the chunks by minishard and key, then each
    minishard's index of delta-coded keys, offsets (after the chunk before) and sizes."""
    from napari_emdiffuse.engine.io.sharded import ShardingSpec, shard_bytes

    spec = ShardingSpec(preshift_bits=1, hash="identity", minishard_bits=1, shard_bits=0)
    raw = shard_bytes({3: b"ccc", 2: b"bb", 4: b"a"}, spec)
    index = np.frombuffer(raw[:32], "<u8").tolist()
    assert raw[32:38] == b"a" + b"bb" + b"ccc"
    assert index == [6, 6 + 24, 6 + 24, 6 + 24 + 48]  # minishard 0's index, then 1's, after the 6 data bytes
    assert np.frombuffer(raw[32 + 6 : 32 + 30], "<u8").tolist() == [4, 0, 1]
    assert np.frombuffer(raw[32 + 30 :], "<u8").reshape(3, 2).tolist() == [[2, 1], [1, 0], [2, 3]]


def test_large_scales_are_sharded_and_read_back_as_written(tmp_path, monkeypatch):
    """A scale of many chunks is packed into shard files (one per aligned box of chunks):
    every scale reads back as written, at any offset, with its levels' closed form."""
    from napari_emdiffuse.engine.io import precomputed_write

    monkeypatch.setattr(precomputed_write, "SHARD_FROM", 20)  # the full-resolution scale's 27 chunks, not the level's 9
    vol = np.random.default_rng(7).integers(0, 2**16, (3, 1100, 300), dtype=np.uint16)
    out = write_precomputed(tmp_path / "s.precomputed", vol, spacing=(40.0, 4.0, 4.0), origin=(0.0, 40.0, 0.0))
    info = json.loads((out / "info").read_text())
    full, level, top = info["scales"]
    assert full["sharding"]["@type"] == "neuroglancer_uint64_sharded_v1" and full["sharding"]["hash"] == "identity"
    assert "sharding" not in level and "sharding" not in top
    assert sorted(p.suffix for p in (out / "4_4_40").iterdir()) == [".shard"] * len(list((out / "4_4_40").iterdir()))
    assert full["voxel_offset"] == [0, 10, 0]
    assert np.array_equal(np.asarray(read_precomputed(out).data[:]), vol)
    assert np.array_equal(np.asarray(read_precomputed(out, "8_8_40").data[:]), _mean2(vol))
    forced = write_precomputed(tmp_path / "f.precomputed", vol[:, :520], spacing=(40.0, 4.0, 4.0), sharded=True)
    scales = json.loads((forced / "info").read_text())["scales"]
    assert all("sharding" in s for s in scales)
    assert np.array_equal(np.asarray(read_precomputed(forced, "8_8_40").data[:]), _mean2(vol[:, :520]))


def test_a_store_pairs_with_a_file_and_folders_pair_their_stores_by_name(tmp_path):
    """A fine-tune's pair or a score's image may be a store (one image on disk as a folder):
    it pairs with a file; two folders pair their files and stores by name (a batch's
    ``--to .zarr`` / ``.precomputed`` outputs). Control: a folder of files with a file is refused."""
    import tifffile

    from napari_emdiffuse.engine.io.batch import is_image_folder, matched_pairs

    img = np.zeros((8, 8), np.uint8)
    for folder in ("noisy", "clean"):
        (tmp_path / folder).mkdir()
    write_image(tmp_path / "noisy" / "a.precomputed", img)
    write_image(tmp_path / "noisy" / "b.ome.zarr", img)
    tifffile.imwrite(tmp_path / "clean" / "a.tif", img)
    tifffile.imwrite(tmp_path / "clean" / "b.tif", img)
    store = str(tmp_path / "noisy" / "a.precomputed")
    assert not is_image_folder(store) and is_image_folder(tmp_path / "noisy")
    assert matched_pairs([store], [str(tmp_path / "clean" / "a.tif")]) == ([store], [str(tmp_path / "clean" / "a.tif")])
    xs, ys = matched_pairs([str(tmp_path / "noisy")], [str(tmp_path / "clean")])
    assert [p.rsplit("/", 1)[1] for p in xs] == ["a.precomputed", "b.ome.zarr"]
    assert [p.rsplit("/", 1)[1] for p in ys] == ["a.tif", "b.tif"]
    with pytest.raises(InputError, match="pair a folder with a folder"):
        matched_pairs([str(tmp_path / "noisy")], [str(tmp_path / "clean" / "a.tif")])


@pytest.mark.parametrize("sharded", [False, True])
def test_jpeg_chunks_are_one_picture_per_chunk_within_the_quality_s_error(tmp_path, sharded):
    """Each chunk is a greyscale JPEG x wide and y * z tall (decoded here by imageio, not by our
    reader); the pixels come back within a few grey levels, the exact raw volume is the control."""
    import io

    import imageio.v3 as iio
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(1)
    vol = np.clip(128 + 400 * gaussian_filter(rng.normal(size=(20, 150, 140)), (0, 3, 3)), 0, 255).astype(np.uint8)
    out = write_precomputed(tmp_path / "v.precomputed", vol, spacing=(40.0, 4.0, 4.0), encoding="jpeg",
                            jpeg_quality=90, sharded=sharded)
    (scale,) = json.loads((out / "info").read_text())["scales"]
    assert scale["encoding"] == "jpeg" and scale["chunk_sizes"] == [[128, 128, 16]]
    if not sharded:
        picture = iio.imread(io.BytesIO((out / "4_4_40" / "0-128_0-128_0-16").read_bytes()))
        assert picture.shape == (16 * 128, 128) and picture.dtype == np.uint8
        assert np.abs(picture.reshape(16, 128, 128).astype(int) - vol[:16, :128, :128]).mean() < 2
    back = np.asarray(read_image(out).data[:]).astype(int)
    err = np.abs(back - vol)
    assert back.shape == vol.shape and 0 < err.mean() < 2 and err.max() < 30  # lossy, and close
    raw = write_precomputed(tmp_path / "r.precomputed", vol, spacing=(40.0, 4.0, 4.0), sharded=sharded)
    assert np.array_equal(np.asarray(read_image(raw).data[:]), vol)
    assert sum(f.stat().st_size for f in out.rglob("*")) < sum(f.stat().st_size for f in raw.rglob("*")) / 2
    # a lower quality gives smaller chunks and a larger error
    low = write_precomputed(tmp_path / "l.precomputed", vol, spacing=(40.0, 4.0, 4.0), encoding="jpeg",
                            jpeg_quality=30, sharded=sharded)
    assert np.abs(np.asarray(read_image(low).data[:]).astype(int) - vol).mean() > err.mean()


def test_convert_and_restorations_write_jpeg_chunks_and_refuse_them_elsewhere(tmp_path, capsys, monkeypatch):
    """``--encoding jpeg``: convert's and every restoration's ``.precomputed`` output (the image's
    chunks; the float uncertainty stays raw), refused in one line before any work elsewhere."""
    from napari_emdiffuse.cli import main

    monkeypatch.chdir(tmp_path)
    vol = np.random.default_rng(4).integers(0, 256, (4, 48, 40), dtype=np.uint8)
    write_image(tmp_path / "vol.tif", vol, spacing=(40.0, 4.0, 4.0))
    write_image(tmp_path / "f.tif", vol.astype(np.float32), spacing=(40.0, 4.0, 4.0))
    assert main(["convert", str(tmp_path / "vol.tif"), "-o", str(tmp_path / "v.precomputed"), "--encoding", "jpeg",
                 "--jpeg-quality", "95"]) == 0
    info = json.loads((tmp_path / "v.precomputed" / "info").read_text())
    assert {s["encoding"] for s in info["scales"]} == {"jpeg"}
    assert np.abs(np.asarray(read_image(tmp_path / "v.precomputed").data[:]).astype(int) - vol).mean() < 20
    capsys.readouterr()
    assert main(["info", "v.precomputed", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["encoding"] == "jpeg"  # info says the chunks are lossy
    for args, words in [
        (["vol.tif", "-o", "v.tif", "--encoding", "jpeg"], "jpeg chunks are a .precomputed output's; 'v.tif' is not one"),
        (["vol.tif", "-o", "q.precomputed", "--encoding", "jpeg", "--jpeg-quality", "0"], "from 1 to 100, not 0"),
        (["f.tif", "-o", "f.precomputed", "--encoding", "jpeg"], "they hold 8-bit pixels, not float32"),
        (["vol.tif", "f.tif", "-o", "batch", "--encoding", "jpeg"], "add --to .precomputed"),
    ]:
        assert main(["convert", *args]) == 2, args
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err, err
    # a restoration (a batch too) writes its image with JPEG chunks, its uncertainty raw
    fast = ["--model", "demo-denoise", "--device", "cpu", "--tile", "32"]
    assert main(["denoise", "vol.tif", "-o", "d.precomputed", "--uncertainty", "u.precomputed", "--encoding", "jpeg",
                 *fast]) == 0
    assert json.loads((tmp_path / "d.precomputed" / "info").read_text())["scales"][0]["encoding"] == "jpeg"
    assert json.loads((tmp_path / "u.precomputed" / "info").read_text())["scales"][0]["encoding"] == "raw"
    assert main(["denoise", "vol.tif", "-o", "raw.precomputed", *fast]) == 0
    jpeg, exact = (np.asarray(read_image(tmp_path / n).data[:]).astype(int) for n in ("d.precomputed", "raw.precomputed"))
    assert 0 < np.abs(jpeg - exact).mean() < 3  # the same restoration, compressed
    capsys.readouterr()
    for args, words in [
        (["denoise", "vol.tif", "-o", "d.tif", "--encoding", "jpeg"], "'d.tif' is not one"),
        (["denoise", "f.tif", "-o", "g.precomputed", "--encoding", "jpeg"], "would be float32: write raw chunks"),
        (["isotropic", "vol.tif", "-o", "i.mrc", "--encoding", "jpeg"], "'i.mrc' is not one"),
        (["denoise", "vol.tif", "f.tif", "-o", "b/", "--encoding", "jpeg"], "add --to .precomputed"),
    ]:
        assert main([*args, *fast]) == 2, args
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.precomputed", "f.tif", "raw.precomputed", "u.precomputed",
                                                          "v.precomputed", "vol.tif"]
    assert main(["denoise", "vol.tif", "-o", "b/", "--to", ".precomputed", "--encoding", "jpeg", *fast]) == 0
    assert json.loads((tmp_path / "b" / "vol.precomputed" / "info").read_text())["scales"][0]["encoding"] == "jpeg"
    with pytest.raises(InputError, match="jpeg chunks are a .precomputed output's; 'x.zarr' is not one"):
        write_image(tmp_path / "x.zarr", vol, chunk_encoding="jpeg")


def test_convert_on_workers_writes_what_one_process_writes(tmp_path, capsys, monkeypatch):
    """``convert --workers``: a stored volume into a .precomputed folder by the workers, file for
    file what convert writes in one process; an image read whole here is converted here, with a
    note; other outputs, cutouts and bins are refused in one line (exit 2)."""
    pytest.importorskip("distributed")
    from napari_emdiffuse.cli import main

    monkeypatch.chdir(tmp_path)
    vol = np.random.default_rng(6).integers(0, 256, (6, 300, 260), dtype=np.uint8)
    write_image(tmp_path / "v.zarr", vol, spacing=(30.0, 4.0, 4.0))
    write_image(tmp_path / "small.tif", vol[:2], spacing=(30.0, 4.0, 4.0))
    assert main(["convert", "v.zarr", "-o", "one.precomputed"]) == 0
    assert main(["convert", "v.zarr", "-o", "two.precomputed", "--workers", "1"]) == 0
    files = [p.relative_to(tmp_path / "one.precomputed") for p in sorted((tmp_path / "one.precomputed").rglob("*"))]
    assert len(files) > 3 and files == [p.relative_to(tmp_path / "two.precomputed")
                                        for p in sorted((tmp_path / "two.precomputed").rglob("*"))]
    assert all((tmp_path / "one.precomputed" / f).read_bytes() == (tmp_path / "two.precomputed" / f).read_bytes()
               for f in files if (tmp_path / "one.precomputed" / f).is_file())
    capsys.readouterr()
    assert main(["convert", "small.tif", "-o", "s.precomputed", "--workers", "1"]) == 0
    assert "is read here, not in place by workers" in capsys.readouterr().err
    assert np.array_equal(np.asarray(read_image(tmp_path / "s.precomputed").data[:]), vol[:2])
    for args, words in [
        (["v.zarr", "-o", "v.tif", "--workers", "1"], "write a .precomputed folder on a path they reach, not 'v.tif'"),
        (["v.zarr", "-o", "c.precomputed", "--workers", "1", "--region", "0", "10", "0", "10"], "leave out --region"),
        (["v.zarr", "-o", "c.precomputed", "--scheduler", "tcp://127.0.0.1:9", "--bin", "2"], "leave out --region"),
        (["v.zarr", "small.tif", "-o", "cb", "--workers", "1"], "add --to .precomputed"),  # a batch: up front
    ]:
        assert main(["convert", *args]) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
    assert not (tmp_path / "c.precomputed").exists() and not (tmp_path / "v.tif").exists()
    assert not (tmp_path / "cb").exists()
