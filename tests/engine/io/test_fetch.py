"""Blocks of volumes read by URL: fetched together (concurrently), and chunks deeper than a
slice kept for the next slices instead of fetched again."""

from __future__ import annotations

import numpy as np
import pytest

from napari_emdiffuse.engine.io import fetch
from napari_emdiffuse.engine.io.images import read_image
from tests.engine.io.test_n5 import _write_n5
from tests.engine.io.test_precomputed import _precomputed

pytest.importorskip("aiohttp", reason="http(s) URLs are read through aiohttp (the [all] extra)")


@pytest.mark.parametrize("at_once", [fetch.REQUESTS_AT_ONCE, 1])
def test_the_blocks_of_a_read_are_fetched_together(served_counted, monkeypatch, at_once):
    """16 N5 blocks of one slice: several requests in flight at once (the control, one at a
    time, must show one)."""
    monkeypatch.setattr(fetch, "REQUESTS_AT_ONCE", at_once)
    folder, url, stats = served_counted
    vol = (np.arange(2 * 64 * 64) % 251).astype(np.uint8).reshape(2, 64, 64)
    _write_n5(folder / "v.n5" / "raw", vol, block=(1, 16, 16))
    img = read_image(f"{url}/v.n5/raw")
    assert np.array_equal(img.data[1], vol[1])
    assert (stats.most > 4) if at_once > 1 else (stats.most == 1)


@pytest.mark.parametrize("depth", [4, 1])
def test_chunks_deeper_than_a_slice_are_fetched_once_for_all_their_slices(served_counted, depth):
    folder, url, stats = served_counted
    vol = (np.arange(4 * 30 * 30) * 7 % 253).astype(np.uint8).reshape(4, 30, 30)
    _precomputed(folder / "vol", vol, chunk=(depth, 16, 16), offset=(0, 0, 0))
    img = read_image(f"{url}/vol")
    assert np.array_equal(img.data[0], vol[0])
    before = stats.requests
    assert np.array_equal(img.data[1], vol[1]) and np.array_equal(img.data[3, 2:20], vol[3, 2:20])
    assert (stats.requests == before) if depth > 1 else (stats.requests > before)


def test_a_request_that_fails_for_a_passing_reason_is_asked_again(tmp_path, monkeypatch):
    """Each file's first request answered 503 (a busy server): precomputed chunks and a
    sharded zarr store still read whole; without retries (the control) the read fails."""
    from napari_emdiffuse.engine.errors import InputError
    from napari_emdiffuse.engine.io.images import write_image
    from tests.http_servers import _RangeHandler, _serve

    monkeypatch.setattr(fetch, "RETRY_WAIT", 0.01)
    failed: set[str] = set()

    class Busy(_RangeHandler):
        def send_head(self):  # noqa: D401 - http.server's hook
            if self.path not in failed:
                failed.add(self.path)
                self.send_error(503)
                return None
            return super().send_head()

    vol = (np.arange(3 * 40 * 50) * 11 % 251).astype(np.uint8).reshape(3, 40, 50)
    _precomputed(tmp_path / "vol", vol, chunk=(2, 16, 16), offset=(0, 0, 0))
    write_image(tmp_path / "v.zarr", vol, zarr_format=3)
    for _, url in _serve(tmp_path, Busy):
        assert np.array_equal(np.asarray(read_image(f"{url}/vol").data), vol)
        assert np.array_equal(read_image(f"{url}/v.zarr").data[1:3, 5:30], vol[1:3, 5:30])
        monkeypatch.setattr(fetch, "RETRIES", 0)
        failed.clear()
        with pytest.raises(InputError, match="503"):
            np.asarray(read_image(f"{url}/vol").data)


def test_a_cutout_of_a_remote_volume_reads_only_its_chunks(served_counted, tmp_path, capsys):
    """`emdiffuse convert URL --region --slices`: the box's pixels with the volume's voxel
    size, from the chunks it touches only; a box outside the volume is refused in one line."""
    from napari_emdiffuse.cli import main

    folder, url, stats = served_counted
    vol = (np.arange(8 * 64 * 64) * 13 % 251).astype(np.uint8).reshape(8, 64, 64)
    _precomputed(folder / "vol", vol, chunk=(4, 16, 16), offset=(0, 0, 0))  # 2 x 4 x 4 chunks
    before = stats.requests
    out = tmp_path / "cut.tif"
    assert main(["convert", f"precomputed://{url}/vol", "--region", "20", "30", "5", "15", "--slices", "1", "3",
                 "-o", str(out)]) == 0
    cut = read_image(out)
    assert np.array_equal(cut.data, vol[1:3, 20:30, 5:15]) and cut.spacing == (40.0, 4.0, 4.0)
    assert stats.requests - before == 1 + 1  # its info (once for the volume, its scale and its chunks), and the one chunk of 32 the box touches
    assert main(["convert", f"{url}/vol", "--slices", "6", "8", "-o", str(tmp_path / "cut.zarr")]) == 0
    assert np.array_equal(read_image(tmp_path / "cut.zarr").data[...], vol[6:8])
    capsys.readouterr()
    for args, needle in ((["--region", "0", "70", "0", "8"], "region y 0:70 is not inside the image's 64 rows"),
                         (["--slices", "3", "3"], "sections 3:3 are not inside the image's 8 sections")):
        assert main(["convert", f"{url}/vol", *args, "-o", str(tmp_path / "bad.tif")]) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad.tif").exists()


def test_every_array_of_a_process_shares_one_bounded_cache(tmp_path, monkeypatch):
    """Two volumes (as the scales of a multiscale layer) keep their chunks in the process's one
    cache, within its bound; a volume opened again reads its files again."""
    from napari_emdiffuse.engine.io import chunkcache

    monkeypatch.setattr(chunkcache, "CHUNK_CACHE_BYTES", 5 * (4 * 16 * 16 + 64))  # room for 5 chunks of 4 x 16 x 16
    vol = (np.arange(8 * 32 * 32) % 251).astype(np.uint8).reshape(8, 32, 32)
    a = read_image(_precomputed(tmp_path / "a", vol, chunk=(4, 16, 16), offset=(0, 0, 0))).data
    b = read_image(_precomputed(tmp_path / "b", vol[:, ::-1], chunk=(4, 16, 16), offset=(0, 0, 0))).data
    assert np.array_equal(a[...], vol) and np.array_equal(b[...], vol[:, ::-1])  # 8 chunks each
    cache = chunkcache.shared_cache()
    assert 0 < cache.nbytes <= chunkcache.CHUNK_CACHE_BYTES
    (tmp_path / "a" / "4_4_40" / "0-16_0-16_0-4").write_bytes(np.full(4 * 16 * 16, 7, np.uint8).tobytes())
    assert np.all(read_image(tmp_path / "a").data[0:4, 0:16, 0:16] == 7)  # opened again: the new chunk


def test_a_server_that_cannot_be_reached_is_not_a_missing_file(served):
    """fsspec says "not found" for both; a user must learn which (a typo in the host, or in the
    name). Control: a missing file on a live server stays FileNotFoundError."""
    import socket

    folder, url = served
    (folder / "here.bin").write_bytes(b"x" * 10)
    assert fetch.remote_size(f"{url}/here.bin") == 10
    with pytest.raises(FileNotFoundError):
        fetch.remote_size(f"{url}/gone.bin")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(OSError, match="cannot reach 127.0.0.1") as err:
        fetch.remote_size(f"http://127.0.0.1:{port}/x.mrc")
    assert not isinstance(err.value, FileNotFoundError)
    assert fetch.answers_ranges(f"{url}/here.bin")
