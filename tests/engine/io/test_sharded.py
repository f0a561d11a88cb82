"""Sharded neuroglancer precomputed scales: chunks packed into shard files, found through the
shard and minishard indexes by the compressed Morton code of their grid position, hashed."""

from __future__ import annotations

import base64
import json
import pickle

import numpy as np
import pytest

from napari_emdiffuse.engine.errors import InputError
from napari_emdiffuse.engine.io.images import read_image
from napari_emdiffuse.engine.io.sharded import ShardingSpec, morton_bits, morton_key, murmurhash3_x86_128_low64

# A 5 x 8 x 10 (z, y, x) uint8 volume, voxels (z * 80 + y * 10 + x) % 251 but the chunk
# [2:4, 4:8, 4:8] zero, in 2 x 4 x 4 chunks at
# offset (7, 0, 3), written by TensorStore 0.1.86: MurmurHash3, preshift 1, 2 shards of 2
# minishards, chunks and minishard indexes gzip-compressed. The data of another implementation.
_TENSORSTORE_SHARDS = {
    "0.shard": (
        "rQAAAAAAAADaAAAAAAAAAN0BAAAAAAAADgIAAAAAAAAfiwgAAAAAAAID4+AUEpaRVVOPiExKzsktKwcAEImzghAAAAAfiwgAAAAA"
        "AAIDW7Fy0+Y9e48d//GTnUNQSFoGAO+8mUEQAAAAH4sIAAAAAAACA8vNyy8or6isamxqbunu6e0DANY3omIQAAAAH4sIAAAAAAAC"
        "AyssKi6prqmta21r7+ifMHESACatVgkQAAAAH4sIAAAAAAACA/P1C49ITMrOAQADqqLQCAAAAB+LCAAAAAAAAgPjYIAAFijNBqUZ"
        "oTQrA2lABUqrovFhtAyUBgBOS9uteAAAAB+LCAAAAAAAAgNjYGRi5uLm4RURFROXk1dQDAgMCo6KjolNSU1Lz8svKAQAG5rEWCAA"
        "AAAfiwgAAAAAAAIDY2FlY+fjFxCUkJSSVlJWUQ0JDQuPi09IzMjMyi4qLikFAOrrwqQgAAAAH4sIAAAAAAACAwEgAN//yMnKy9LT"
        "1NXc3d7f5ufo6R0eHyAnKCkqMTIzNDs8PT4oI28sIAAAAB+LCAAAAAAAAgNzdXP38A8IDIqMio5JTklNAwCWRSwvEAAAAB+LCAAA"
        "AAAAAgPz9PL2CQ4JDYuNi09Iz8jMAgDktkVmEAAAAB+LCAAAAAAAAgMrLatv6OyaPAUAaUNFlAgAAAAfiwgAAAAAAAIDY2CAAEYo"
        "zQqludDEOaH0LQbSgAkabQ6lVdBoGSgNAFYuP2uQAAAA"
    ),
    "1.shard": (
        "/AAAAAAAAAAlAQAAAAAAAEkBAAAAAAAAZwEAAAAAAAAfiwgAAAAAAAID09DU0jYyNjG1sbWzd3P38KyorKpuam5p7ent6582fcZM"
        "AA4lIEkgAAAAH4sIAAAAAAACA9PR1dM3M7ewdHB0cvby9vGtqa2rb2vv6JwwcdLkWbPnzAUAtnnmmCAAAAAfiwgAAAAAAAIDASAA"
        "3/+goaKjqqusrbS1tre+v8DB8PHy8/oAAQIJCgsMExQVFuBdypUgAAAAH4sIAAAAAAACAwEgAN//pKWmp66vsLG4ubq7wsPExfT1"
        "9vcDBAUGDQ4PEBcYGRrUseMGIAAAAB+LCAAAAAAAAgO7cPHW7SdP371XVdM3sLRydgEA3JfTrBAAAAAfiwgAAAAAAAIDY2KAAEYc"
        "NCcDacAESptCaXM0WhVKAwBVVL0aeAAAAB+LCAAAAAAAAgMzMLSydnH1829o7OqeMnXefADDjUOmEAAAAB+LCAAAAAAAAgPjYoAA"
        "VUYIrQLlAwC+K1YBGAAAAA=="
    ),
}
_SPEC = {"@type": "neuroglancer_uint64_sharded_v1", "hash": "murmurhash3_x86_128", "preshift_bits": 1,
         "minishard_bits": 1, "shard_bits": 1, "minishard_index_encoding": "gzip", "data_encoding": "gzip"}  # fmt: skip


def _volume(root, shards=_TENSORSTORE_SHARDS, spec=_SPEC):
    scale = {"key": "4_4_40", "size": [10, 8, 5], "voxel_offset": [3, 0, 7], "resolution": [4, 4, 40],
             "chunk_sizes": [[4, 4, 2]], "encoding": "raw", "sharding": spec}  # fmt: skip
    (root / "4_4_40").mkdir(parents=True)
    (root / "info").write_text(json.dumps({"data_type": "uint8", "num_channels": 1, "type": "image", "scales": [scale]}))
    for name, text in shards.items():
        (root / "4_4_40" / name).write_bytes(base64.b64decode(text))
    return root


def _expected() -> np.ndarray:
    z, y, x = np.meshgrid(np.arange(5), np.arange(8), np.arange(10), indexing="ij")
    out = ((z * 80 + y * 10 + x) % 251).astype(np.uint8)
    out[2:4, 4:8, 4:8] = 0
    return out


def test_murmurhash3_x86_128_matches_the_reference_implementation():
    """Values of the C reference (the ``mmh3`` package, x86 128-bit, seed 0, low 64 bits)."""
    cases = {(0).to_bytes(8, "little"): 0x4772B084E028AE41, (1).to_bytes(8, "little"): 0xE8BD67D616D4CE9A,
             (2**40 + 7).to_bytes(8, "little"): 0xF6B242E1DF6537B4, bytes(range(20)): 0xC4867CA12B0CDCD2,
             b"neuroglancer precomputed": 0xB9CF282C37E204A7, b"": 0}  # fmt: skip
    for data, want in cases.items():
        assert murmurhash3_x86_128_low64(data) == want, data


def test_the_compressed_morton_code_interleaves_only_the_bits_a_coordinate_needs():
    assert morton_bits((4, 4, 4)) == (2, 2, 2) and morton_bits((1, 3, 9)) == (0, 2, 4)
    for x, y, z in np.ndindex(4, 4, 4):  # a cube: the plain Morton code, x lowest
        plain = sum(((c >> b) & 1) << (3 * b + d) for b in range(2) for d, c in enumerate((x, y, z)))
        assert morton_key((x, y, z), (2, 2, 2)) == plain
    assert [morton_key((0, 0, z), (0, 0, 4)) for z in range(9)] == list(range(9))  # one axis: z itself
    assert morton_key((1, 3, 9), (0, 2, 4)) == 0b100111  # y0 z0 y1 z1 z2 z3 = 1 1 1 0 0 1, lowest first


def test_a_volume_sharded_by_tensorstore_reads_equal_lazily_and_pickles(tmp_path):
    img = read_image(_volume(tmp_path / "vol"))
    want = _expected()
    assert img.data.shape == (5, 8, 10) and img.spacing == (40.0, 4.0, 4.0)
    assert np.array_equal(np.asarray(img.data[:]), want)
    assert np.array_equal(img.data[3, ::-2, 1:9], want[3, ::-2, 1:9])
    again = pickle.loads(pickle.dumps(img.data))  # a cluster worker reads the indexes itself
    assert np.array_equal(again[1:4, 2:7, 5], want[1:4, 2:7, 5])


def test_a_missing_shard_is_empty_and_damaged_shards_or_specs_are_refused_in_one_line(tmp_path):
    img = read_image(_volume(tmp_path / "half", shards={"0.shard": _TENSORSTORE_SHARDS["0.shard"]}))
    got, want = np.asarray(img.data[:]), _expected()
    assert 0 < np.count_nonzero(got == want) < want.size and np.all((got == want) | (got == 0))
    raw = base64.b64decode(_TENSORSTORE_SHARDS["1.shard"])
    damaged = {"truncated": raw[:300], "bad gzip": raw[:40] + b"\x00" * 40 + raw[80:]}
    for name, data in damaged.items():
        root = _volume(tmp_path / name.replace(" ", "_"), shards={"0.shard": _TENSORSTORE_SHARDS["0.shard"],
                                                                  "1.shard": base64.b64encode(data)})  # fmt: skip
        with pytest.raises(InputError, match="1.shard") as exc:
            np.asarray(read_image(root).data[:])
        assert "\n" not in str(exc.value), name
    for change, needle in (({"hash": "sha1"}, "hashed with 'sha1'"), ({"data_encoding": "zstd"}, "encoded as 'zstd'"),
                           ({"shard_bits": -1}, "malformed"), ({"@type": "other"}, "not neuroglancer_uint64")):
        with pytest.raises(InputError, match=needle) as exc:
            read_image(_volume(tmp_path / needle[:6].replace(" ", "_").replace("'", ""), spec={**_SPEC, **change}))
        assert "\n" not in str(exc.value)


def test_an_identity_hashed_raw_shard_is_laid_out_as_the_format_says(tmp_path):
    """A shard built here from the format's description, uncompressed: 1 shard, 4 minishards,
    chunk keys picked by their low bits; chunk (1, 1, 0) left out reads as zeros."""
    zyx = np.arange(2 * 4 * 6, dtype=np.uint16).reshape(2, 4, 6) * 7
    chunk = (2, 2, 3)  # z, y, x
    bits = morton_bits((2, 2, 1))  # grid x, y, z
    minishards: dict[int, list[tuple[int, bytes]]] = {m: [] for m in range(4)}
    for cx, cy in np.ndindex(2, 2):
        if (cx, cy) == (1, 1):
            continue
        key = morton_key((cx, cy, 0), bits)
        part = zyx[:, 2 * cy:2 * cy + 2, 3 * cx:3 * cx + 3]
        minishards[key & 3].append((key, part.astype("<u2").tobytes()))
    body, index = b"", []
    for m in range(4):
        entries = sorted(minishards[m])
        if not entries:  # an empty minishard: a zero-length index range
            index.append((len(body), len(body)))
            continue
        data_start = len(body)
        for _, blob in entries:
            body += blob
        keys = np.diff([0] + [k for k, _ in entries]).tolist()
        starts = [data_start] + [0] * (len(entries) - 1)
        table = np.array([keys, starts, [len(b) for _, b in entries]], "<u8").reshape(3, -1).tobytes()
        index.append((len(body), len(body) + len(table)))
        body += table
    shard = np.array(index, "<u8").tobytes() + body
    root = tmp_path / "id"
    spec = {"@type": "neuroglancer_uint64_sharded_v1", "hash": "identity", "preshift_bits": 0, "minishard_bits": 2,
            "shard_bits": 0}  # fmt: skip
    scale = {"key": "s0", "size": [6, 4, 2], "voxel_offset": [0, 0, 0], "resolution": [5, 5, 50],
             "chunk_sizes": [list(chunk[::-1])], "encoding": "raw", "sharding": spec}  # fmt: skip
    (root / "s0").mkdir(parents=True)
    (root / "info").write_text(json.dumps({"data_type": "uint16", "num_channels": 1, "scales": [scale]}))
    (root / "s0" / "0.shard").write_bytes(shard)
    want = zyx.copy()
    want[:, 2:4, 3:6] = 0
    assert np.array_equal(np.asarray(read_image(root).data[:]), want)
    assert ShardingSpec.parse(spec, "id").minishard_index_encoding == "raw"  # the default


def test_a_sharded_volume_by_url_reads_its_indexes_and_chunks_by_range(served_any):
    pytest.importorskip("aiohttp", reason="http(s) URLs are read through aiohttp (the [all] extra)")
    folder, url = served_any
    _volume(folder / "vol")
    img = read_image(f"precomputed://{url}/vol")
    assert np.array_equal(np.asarray(img.data), _expected())
    assert np.array_equal(pickle.loads(pickle.dumps(img.data))[1:3, 2:7], _expected()[1:3, 2:7])
    (folder / "vol" / "4_4_40" / "1.shard").unlink()  # a shard never written: its chunks empty
    fresh = np.asarray(read_image(f"{url}/vol").data)
    assert (fresh == 0).sum() > (_expected() == 0).sum() and np.array_equal(fresh[fresh > 0], _expected()[fresh > 0])
