"""Neuroglancer precomputed volumes on disk, written here as the format lays them out: an
info file, chunks named by their voxel ranges (offset included), raw (x fastest) or jpeg."""

from __future__ import annotations

import gzip
import itertools
import json
import pickle

import numpy as np
import pytest

from napari_emdiffuse.engine.errors import InputError
from napari_emdiffuse.engine.io.images import read_image
from napari_emdiffuse.engine.io.precomputed import PrecomputedArray
from napari_emdiffuse.engine.io.sources import open_source, source_of


def _precomputed(root, zyx, chunk=(3, 4, 5), offset=(10, 20, 2), encoding="raw", skip=(), gz=(), extra=None):
    """``chunk`` and ``offset`` z, y, x; writes scale ``4_4_40`` of the ZYX volume."""
    key = "4_4_40"
    scale = {"key": key, "size": list(zyx.shape[::-1]), "voxel_offset": list(offset[::-1]), "resolution": [4, 4, 40],
             "chunk_sizes": [list(chunk[::-1])], "encoding": encoding, **(extra or {})}  # fmt: skip
    root.mkdir()
    (root / "info").write_text(json.dumps({"@type": "neuroglancer_multiscale_volume", "type": "image",
                                           "data_type": zyx.dtype.name, "num_channels": 1, "scales": [scale]}))  # fmt: skip
    (root / key).mkdir()
    counts = [-(-n // c) for n, c in zip(zyx.shape, chunk)]
    for index in itertools.product(*[range(n) for n in counts]):
        if index in skip:
            continue
        lo = [i * c for i, c in zip(index, chunk)]
        hi = [min(a + c, n) for a, c, n in zip(lo, chunk, zyx.shape)]
        part = zyx[tuple(slice(a, b) for a, b in zip(lo, hi))]
        (z0, y0, x0), (z1, y1, x1), (oz, oy, ox) = lo, hi, offset
        name = f"{x0 + ox}-{x1 + ox}_{y0 + oy}-{y1 + oy}_{z0 + oz}-{z1 + oz}"
        if encoding == "jpeg":
            import imageio.v3 as iio

            data = iio.imwrite("<bytes>", part.reshape(-1, part.shape[-1]), extension=".jpg", quality=100)
        else:
            data = part.astype(part.dtype.newbyteorder("<")).tobytes()  # C order of z, y, x: x fastest
        if index in gz:
            (root / key / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (root / key / name).write_bytes(data)
    return root


@pytest.fixture
def vol():
    return (np.arange(7 * 9 * 11) * 37 % 65521).astype(np.uint16).reshape(7, 9, 11)


def test_a_volume_reads_chunk_by_chunk_with_its_voxel_size(tmp_path, vol, capsys):
    from napari_emdiffuse.cli import main

    root = _precomputed(tmp_path / "vol", vol, skip={(1, 1, 1)}, gz={(0, 0, 0), (2, 2, 2)})
    want = vol.copy()
    want[3:6, 4:8, 5:10] = 0  # the chunk never written: empty
    img = read_image(root)
    assert isinstance(img.data, PrecomputedArray) and img.data.shape == (7, 9, 11)
    assert img.spacing == (40.0, 4.0, 4.0) and img.unit == "nm" and img.axes == "ZYX"
    for key in itertools.product([0, -1, slice(None), slice(None, None, -2)], [4, slice(1, 8, 3)],
                                 [slice(None), slice(9, 1, -3)]):  # fmt: skip
        assert np.array_equal(img.data[key], want[key]), key
    assert np.array_equal(read_image(root / "4_4_40").data[2], want[2])  # a scale named
    assert np.array_equal(pickle.loads(pickle.dumps(img.data))[5], want[5])
    assert np.array_equal(np.asarray(open_source(*source_of(img.data))), want)
    assert main(["info", str(root)]) == 0
    # its voxel_offset (z 10, y 20, x 2) of 40 x 4 x 4 nm voxels: where the volume lies
    assert ("7 x 9 x 11 uint16, axes ZYX, 40 x 4 x 4 nm; first pixel at 400 x 80 x 8 nm; isotropic factor 10"
            in capsys.readouterr().out)


def test_jpeg_chunks_read_as_the_picture_x_wide_and_y_times_z_tall(tmp_path):
    zyx = np.tile(np.arange(0, 240, 24, dtype=np.uint8), (4, 6, 1))  # smooth: jpeg keeps it within a level or two
    img = read_image(_precomputed(tmp_path / "jpg", zyx, chunk=(2, 3, 10), offset=(0, 0, 0), encoding="jpeg"))
    assert img.data.shape == (4, 6, 10) and np.abs(np.asarray(img.data).astype(int) - zyx).max() <= 3


def test_strided_and_reversed_reads_across_chunks_equal_numpys(tmp_path, vol):
    """Every basic index numpy takes (steps, reversals, integers) reads what numpy gives, across
    chunk boundaries and with a missing chunk (zeros)."""
    root = _precomputed(tmp_path / "vol", vol, skip={(1, 1, 1)})
    want = vol.copy()
    want[3:6, 4:8, 5:10] = 0
    array = PrecomputedArray(root, "4_4_40")
    for key in [(slice(1, 7, 2), slice(None, None, 3), slice(2, 11, 4)), (slice(None, None, -1), 5, slice(9, 0, -2)),
                (4, slice(None), slice(None)), (slice(2, 3), slice(3, 9), 7), (slice(6, 0, -3), slice(0, 9, 8), 10)]:
        assert np.array_equal(array[key], want[key]), key


def test_a_raw_chunk_that_begins_like_gzip_reads_as_raw(tmp_path):
    """Pixels 31, 139 are gzip's magic bytes; a raw chunk's exact size says it is not gzip."""
    vol = np.full((2, 5, 6), 90, np.uint8)
    vol[0, 0, :2] = (31, 139)
    root = _precomputed(tmp_path / "vol", vol, chunk=(2, 5, 6), offset=(0, 0, 0))
    assert np.array_equal(np.asarray(PrecomputedArray(root, "4_4_40")[:]), vol)
    gz = _precomputed(tmp_path / "gz", vol, chunk=(2, 5, 6), offset=(0, 0, 0), gz={(0, 0, 0)})
    (gz / "4_4_40" / "0-6_0-5_0-2.gz").rename(gz / "4_4_40" / "0-6_0-5_0-2")  # gzip stored under the plain name
    assert np.array_equal(np.asarray(PrecomputedArray(gz, "4_4_40")[:]), vol)


def test_what_is_not_read_here_is_refused_in_one_line(tmp_path, vol):
    cases = [
        (_precomputed(tmp_path / "sharded", vol, extra={"sharding": {"@type": "neuroglancer_uint64_sharded_v1"}}),
         "its sharding spec is malformed"),
        (_precomputed(tmp_path / "seg", vol, encoding="compressed_segmentation"), "compressed_segmentation"),
    ]
    root = _precomputed(tmp_path / "bad", vol)
    chunk = next((root / "4_4_40").iterdir())
    chunk.write_bytes(chunk.read_bytes()[:10])  # truncated
    for path, needle in cases:
        with pytest.raises(InputError, match=needle) as exc:
            read_image(path)
        assert "\n" not in str(exc.value)
    with pytest.raises(InputError, match="4_4_40") as exc:
        np.asarray(read_image(root).data)
    with pytest.raises(InputError, match="no scale '8_8_40'"):
        read_image(root / "8_8_40")


def test_napari_opens_a_precomputed_volume_with_its_scales(tmp_path, vol, capsys):
    from napari_emdiffuse._reader import get_slices_reader
    from napari_emdiffuse.cli import main

    root = _precomputed(tmp_path / "vol", vol)
    (data, meta, kind), = get_slices_reader(str(root))(str(root))
    assert kind == "image" and meta["scale"] == (40.0, 4.0, 4.0) and np.array_equal(np.asarray(data), vol)
    # a coarser scale (8_8_40: x and y halved) makes it a multiscale layer
    half = vol[:, ::2, ::2].copy()
    other = _precomputed(tmp_path / "half", half)
    info = json.loads((root / "info").read_text())
    coarse = {**info["scales"][0], "key": "8_8_40", "size": list(half.shape[::-1]), "resolution": [8, 8, 40]}
    (root / "info").write_text(json.dumps({**info, "scales": info["scales"] + [coarse]}))
    (other / "4_4_40").rename(root / "8_8_40")
    (levels, meta, _), = get_slices_reader(str(root))(str(root))
    assert meta["multiscale"] and [lv.shape for lv in levels] == [(7, 9, 11), (7, 5, 6)]
    assert np.array_equal(np.asarray(levels[1]), half)
    assert main(["info", str(root)]) == 0 and "2 scales (4_4_40 read)" in capsys.readouterr().out


def test_a_volume_by_url_reads_as_the_local_one(served_any, vol, capsys):
    """By URL (neuroglancer's ``precomputed://`` prefix or none, a scale or the volume), from a
    server with or without byte ranges: the local volume's pixels and voxel size."""
    pytest.importorskip("aiohttp", reason="http(s) URLs are read through aiohttp (the [all] extra)")
    from napari_emdiffuse._reader import get_precomputed_url_reader
    from napari_emdiffuse.cli import main

    folder, url = served_any
    local = read_image(_precomputed(folder / "vol", vol, skip={(1, 1, 1)}, gz={(0, 0, 0)}))
    want = np.asarray(local.data)
    for name in (f"{url}/vol", f"precomputed://{url}/vol/", f"{url}/vol/4_4_40"):
        img = read_image(name)
        assert img.spacing == (40.0, 4.0, 4.0) and img.path is None
        assert np.array_equal(img.data[1:6, 2:9], want[1:6, 2:9]) and not img.data[3:6, 4:8, 5:10].any()
    where = source_of(img.data)  # workers open the URL, marked as precomputed
    assert where[0] == f"precomputed://{url}/vol" and np.array_equal(np.asarray(open_source(*where)), want)
    assert np.array_equal(pickle.loads(pickle.dumps(img.data))[5], want[5])
    assert get_precomputed_url_reader(f"{url}/vol") is None  # napari: as neuroglancer names the source
    (data, meta, kind), = get_precomputed_url_reader(f"precomputed://{url}/vol")(f"precomputed://{url}/vol")
    assert kind == "image" and meta["scale"] == (40.0, 4.0, 4.0) and np.array_equal(np.asarray(data), want)
    assert main(["info", f"precomputed://{url}/vol"]) == 0
    assert "7 x 9 x 11 uint16, axes ZYX, 40 x 4 x 4 nm" in capsys.readouterr().out
    for bad, needle in ((f"{url}/none", "no neuroglancer precomputed 'info' there"), (f"{url}/vol/8_8_40", "no scale '8_8_40'")):
        with pytest.raises(InputError, match=needle):
            read_image(bad)


def test_a_restoration_from_a_precomputed_url_equals_the_local_one(served, tiny_model_dir):
    pytest.importorskip("aiohttp", reason="http(s) URLs are read through aiohttp (the [all] extra)")
    from napari_emdiffuse.cli import main

    folder, url = served
    noisy = (np.random.default_rng(0).random((2, 48, 40)) * 255).astype(np.uint8)
    _precomputed(folder / "noisy", noisy, chunk=(1, 32, 32), offset=(0, 0, 0))
    common = ["--model", str(tiny_model_dir), "--steps", "2", "--device", "cpu", "--z-filter", "off"]
    assert main(["denoise", f"precomputed://{url}/noisy", "-o", str(folder / "remote.tif"), *common]) == 0
    assert main(["denoise", str(folder / "noisy"), "-o", str(folder / "local.tif"), *common]) == 0
    remote, local = (read_image(folder / n) for n in ("remote.tif", "local.tif"))
    assert np.array_equal(remote.data, local.data) and remote.spacing == pytest.approx((40.0, 4.0, 4.0))


def test_info_says_how_large_a_volume_is_and_the_way_round_it(tmp_path, capsys):
    """A 32 TB volume (the info of H01's size, no chunk written): `info` reads its info and a
    crop, says its size and that a region or a zarr output is the way to restore it."""
    from napari_emdiffuse.cli import main

    scale = {"key": "8_8_33", "size": [65536, 98304, 5000], "voxel_offset": [0, 0, 0], "resolution": [8, 8, 33],
             "chunk_sizes": [[128, 128, 32]], "encoding": "raw"}  # fmt: skip
    (tmp_path / "h01").mkdir()
    (tmp_path / "h01" / "info").write_text(json.dumps({"data_type": "uint8", "num_channels": 1, "scales": [scale]}))
    assert main(["info", str(tmp_path / "h01")]) == 0
    out = capsys.readouterr().out
    assert "5000 x 98304 x 65536 uint8" in out and "32.2 TB of pixels: restore a part with --region" in out
    assert main(["info", str(tmp_path / "h01" / "8_8_33")]) == 0 and "TB" in capsys.readouterr().out
