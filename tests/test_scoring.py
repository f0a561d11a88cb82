"""`emdiffuse score` and `scoring.score_images`: figures against a reference, closed forms first."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tifffile
from scipy.ndimage import gaussian_filter, shift

from napari_emdiffuse.cli import main
from napari_emdiffuse.engine.core.metrics import uncertainty_calibration
from napari_emdiffuse.engine.errors import InputError
from napari_emdiffuse.scoring import default_data_range, score_images


def _texture(shape=(96, 96), seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(gaussian_filter(rng.random(shape), 2.0) * 900 - 330, 0, 255)


def test_figures_match_their_closed_forms_and_a_worse_image_scores_worse():
    """An image off by c everywhere: PSNR 20 log10(255 / c), MAE c, both extremes' bias +c; the
    reference itself: SSIM 1 and FRC at Nyquist (2 px); the control, a noisy copy, scores lower
    on every figure. Inputs are left as they were."""
    ref = _texture().astype(np.uint8)
    off = ref.astype(np.float64) + 3.0
    noisy = ref + np.random.default_rng(1).normal(0, 12, ref.shape)
    before = off.copy(), noisy.copy(), ref.copy()
    same, shifted, worse = score_images([ref, off, noisy], ref, names=["ref", "off", "noisy"])
    assert same.ssim == 1.0 and same.frc_px == 2.0 and same.mae == 0.0 and math.isinf(same.psnr)
    assert shifted.psnr == pytest.approx(20 * math.log10(255 / 3.0)) and shifted.mae == pytest.approx(3.0)
    assert (shifted.dark_bias, shifted.bright_bias) == pytest.approx((3.0, 3.0))
    assert worse.psnr < shifted.psnr and worse.ssim < 0.9 and worse.frc_px > 2.0
    assert all(np.array_equal(a, b) for a, b in zip((off, noisy, ref), before))
    # a stack: PSNR over every voxel, FRC the median of its slices
    stack = score_images([np.stack([off, off])], np.stack([ref, ref]), pixel_size=4.0)[0]
    assert stack.psnr == pytest.approx(shifted.psnr) and stack.frc_nm == pytest.approx(4.0 * stack.frc_px)


def test_uncertainty_calibration_ranks_a_true_map_and_not_a_shuffled_one():
    rng = np.random.default_rng(2)
    ref = np.zeros((128, 128))
    sd = np.repeat(np.repeat(rng.uniform(1, 6, (4, 4)), 32, 0), 32, 1)  # one std per 32-px tile
    img = ref + rng.standard_normal(ref.shape) * sd
    cal = uncertainty_calibration(img, sd, ref)
    assert cal["coverage"] == pytest.approx(0.954, abs=0.01) and cal["rank_correlation"] > 0.9
    assert cal["worst_mean"] > 1.2
    assert cal["scale_95"] == pytest.approx(1.96 / 2, abs=0.03)  # Gaussian errors: 95 % within 1.96 std
    shuffled = uncertainty_calibration(img, rng.permutation(sd.ravel()).reshape(sd.shape), ref)
    assert abs(shuffled["rank_correlation"]) < 0.4  # the control: a map that does not know
    with pytest.raises(InputError, match="the uncertainty's shape"):
        uncertainty_calibration(img, sd[:64], ref)


def test_register_aligns_a_shifted_reference_and_crops_every_image_alike():
    """A reference recorded 3 rows down and 2 columns left (a drifted scan): unaligned, even
    the image itself scores badly; registered, it scores near-perfectly on the overlap, and the
    PSNR's peak stays the 8-bit reference's 255 (not the resampled float's span)."""
    img = _texture((128, 128), seed=3)
    ref = np.clip(shift(img, (3, -2), order=3, mode="nearest"), 0, 255).astype(np.uint8)
    plain = score_images([img], ref)[0]
    aligned, = score_images([img], ref, register="translation", uncertainties=[np.ones_like(img)])
    assert plain.psnr < 25 and aligned.psnr > 40
    assert aligned.psnr == pytest.approx(score_images([img], ref, register="translation", data_range=255)[0].psnr)
    assert aligned.uncertainty["coverage"] > 0.9  # the map was cropped with its image
    with pytest.raises(InputError, match="aligns 2D images"):
        score_images([np.stack([img, img])], np.stack([ref, ref]), register="translation")


def test_default_data_range_and_bad_input_in_one_line():
    assert default_data_range(np.array([[0, 9]], np.uint8)) == 255.0
    assert default_data_range(np.array([[1000, 5000]], np.uint16)) == 4000.0
    img = np.zeros((16, 16))
    for kwargs, needle in (
        ({"images": [img], "reference": np.zeros((16, 16))}, "the reference is constant"),
        ({"images": [img], "reference": np.eye(20)}, "crop them alike"),
        ({"images": [img, np.zeros((8, 8))], "reference": np.eye(16)}, "share one grid"),
        ({"images": [np.full((16, 16), np.nan)], "reference": np.eye(16)}, "NaN or infinite"),
        ({"images": [img], "reference": np.eye(16), "uncertainties": [np.ones((4, 4))]}, "the uncertainty of"),
        ({"images": [], "reference": np.eye(16)}, "nothing to score"),
    ):
        with pytest.raises(InputError, match=needle):
            score_images(**kwargs)


def test_score_command_prints_a_table_and_json_and_refuses_bad_input(tmp_path, capsys):
    ref = _texture().astype(np.uint8)
    noisy = np.clip(ref + np.random.default_rng(4).normal(0, 12, ref.shape), 0, 255).astype(np.uint8)
    better = gaussian_filter(noisy.astype(np.float32), 1.0)
    for name, a in (("ref.tif", ref), ("noisy.tif", noisy), ("better.tif", better),
                    ("unc.tif", np.full(ref.shape, 8.0, np.float32))):
        tifffile.imwrite(tmp_path / name, a, imagej=True, resolution=(1 / 4.0, 1 / 4.0), metadata={"unit": "nm"})
    files = sorted(p.name for p in tmp_path.iterdir())
    args = [str(tmp_path / "noisy.tif"), str(tmp_path / "better.tif"), "--reference", str(tmp_path / "ref.tif")]
    assert main(["score", *args, "--uncertainty", "-", str(tmp_path / "unc.tif")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["image", "PSNR", "dB"] and "FRC nm" in lines[0] and "cov2 %" in lines[0]
    psnrs = [float(line.split()[1]) for line in lines[1:]]
    want = score_images([noisy, better], ref)
    assert psnrs == pytest.approx([round(s.psnr, 2) for s in want], abs=0.006) and psnrs[1] > psnrs[0]
    assert main(["score", *args, "--json", "--region", "8", "72", "0", "96"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    part = score_images([noisy[8:72], better[8:72]], ref[8:72])
    assert [r["psnr_db"] for r in records] == pytest.approx([s.psnr for s in part]) and records[0]["unit"] == "nm"
    assert records[1]["frc_nm"] == pytest.approx(4.0 * records[1]["frc_px"])
    tifffile.imwrite(tmp_path / "small.tif", ref[:50])
    for extra, needle in (
        (["--uncertainty", str(tmp_path / "unc.tif")], "2 images but 1 uncertainty maps"),
        (["--region", "0", "500", "0", "10"], "is not inside"),
        (["--data-range", "0"], "a positive number"),
    ):
        assert main(["score", *args, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0] and "Traceback" not in err[0], err
    assert main(["score", str(tmp_path / "small.tif"), "--reference", str(tmp_path / "ref.tif")]) == 2
    assert "crop them alike" in capsys.readouterr().err
    assert main(["score", str(tmp_path / "nothing.tif"), "--reference", str(tmp_path / "ref.tif")]) == 2
    assert "nothing.tif" in capsys.readouterr().err
    # two detectors in one file: refused as they are, one picked with --channel (the reference has none)
    tifffile.imwrite(tmp_path / "two.tif", np.stack([noisy, ref]), imagej=True, metadata={"axes": "CYX"})
    assert main(["score", str(tmp_path / "two.tif"), "--reference", str(tmp_path / "ref.tif")]) == 2
    assert "has 2 channels" in capsys.readouterr().err
    assert main(["score", str(tmp_path / "two.tif"), "--reference", str(tmp_path / "ref.tif"), "--channel", "1",
                 "--json"]) == 0
    assert math.isinf(json.loads(capsys.readouterr().out)["psnr_db"])  # channel 1 is the reference itself
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(files + ["small.tif", "two.tif"])  # it writes nothing


def test_factor_scores_only_the_generated_slices(tmp_path, capsys):
    """An isotropic result keeps its measured slices bit for bit: scored whole, every method
    gains from them alike. With the factor only the new slices count: a linear interpolation
    of a volume whose dropped slices are known scores exactly as its new slices alone do, and
    lower than scored whole."""
    truth = np.stack([_texture((48, 48), seed=z) for z in range(7)])  # slices 0, 3, 6 measured
    linear = truth.copy()
    for z in (1, 2, 4, 5):
        lo, hi = z // 3 * 3, z // 3 * 3 + 3
        linear[z] = truth[lo] + (truth[hi] - truth[lo]) * (z - lo) / 3
    whole, = score_images([linear], truth, data_range=255)
    new, = score_images([linear], truth, data_range=255, factor=3)
    assert new.psnr == pytest.approx(score_images([linear[[1, 2, 4, 5]]], truth[[1, 2, 4, 5]], data_range=255)[0].psnr)
    assert new.psnr < whole.psnr
    with pytest.raises(InputError, match="factor must be 2 or more"):
        score_images([linear], truth, factor=1)
    with pytest.raises(InputError, match="ZYX volumes"):
        score_images([linear[0]], truth[0], factor=3)
    tifffile.imwrite(tmp_path / "lin.tif", linear.astype(np.float32))
    tifffile.imwrite(tmp_path / "truth.tif", truth.astype(np.float32))
    assert main(["score", str(tmp_path / "lin.tif"), "--reference", str(tmp_path / "truth.tif"), "--factor", "3",
                 "--data-range", "255", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["psnr_db"] == pytest.approx(new.psnr)


def test_a_folder_of_results_is_scored_against_a_folder_of_references_by_name(tmp_path, capsys):
    """A batch's outputs (restored/, with their maps in restored/sd/) against clean/: each
    file against the reference of its name, in natural order, then the mean row; a file with
    no partner is refused in one line, before any is scored."""
    (tmp_path / "restored" / "sd").mkdir(parents=True)
    (tmp_path / "clean").mkdir()
    want = []
    for k in (1, 2, 10):
        ref = _texture((64, 64), seed=k).astype(np.uint8)
        out = np.clip(ref + k, 0, 255).astype(np.uint8)  # off by k grey levels (where not clipped)
        tifffile.imwrite(tmp_path / "clean" / f"s{k}.tif", ref)
        tifffile.imwrite(tmp_path / "restored" / f"s{k}.tif", out)
        tifffile.imwrite(tmp_path / "restored" / "sd" / f"s{k}.tif", np.full(ref.shape, k, np.float32))
        want.append(score_images([out], ref, uncertainties=[np.full(ref.shape, float(k))])[0])
    assert main(["score", str(tmp_path / "restored"), "--reference", str(tmp_path / "clean"),
                 "--uncertainty", str(tmp_path / "restored" / "sd"), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["image"] for r in rows] == ["s1.tif", "s2.tif", "s10.tif", "mean of 3"]
    assert [r["psnr_db"] for r in rows[:3]] == pytest.approx([s.psnr for s in want])
    assert rows[3]["psnr_db"] == pytest.approx(np.mean([s.psnr for s in want]))
    assert rows[3]["uncertainty_coverage"] == pytest.approx(np.mean([s.uncertainty["coverage"] for s in want]))
    tifffile.imwrite(tmp_path / "restored" / "extra.tif", np.zeros((64, 64), np.uint8))
    assert main(["score", str(tmp_path / "restored"), "--reference", str(tmp_path / "clean")]) == 2
    err = capsys.readouterr()
    assert "no partner for extra" in err.err and not err.out


def test_results_stored_as_stores_score_against_files_and_in_folders(tmp_path, capsys):
    """A result in a zarr store or a precomputed volume (a folder on disk, one image) scores
    against a TIFF reference; a 2D image written as a volume of one slice scores against the
    2D reference; a batch's folder of stores pairs with a folder of files by name. Control:
    the same images as TIFFs give the same figures."""
    from napari_emdiffuse.engine.io.images import write_image

    ref = _texture((64, 64), seed=3).astype(np.uint8)
    out = np.clip(ref.astype(int) + 3, 0, 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "ref.tif", ref)
    tifffile.imwrite(tmp_path / "out.tif", out)
    (tmp_path / "batch").mkdir()
    (tmp_path / "clean").mkdir()
    tifffile.imwrite(tmp_path / "clean" / "a.tif", ref)
    tifffile.imwrite(tmp_path / "clean" / "b.tif", ref)
    write_image(tmp_path / "out.zarr", out)
    write_image(tmp_path / "out.precomputed", out)  # read back as 1 x 64 x 64
    write_image(tmp_path / "batch" / "a.ome.zarr", out)
    write_image(tmp_path / "batch" / "b.precomputed", out)
    want = score_images([out], ref)[0].psnr
    for name in ("out.tif", "out.zarr", "out.precomputed"):
        assert main(["score", str(tmp_path / name), "--reference", str(tmp_path / "ref.tif"), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["psnr_db"] == pytest.approx(want)
    assert main(["score", str(tmp_path / "batch"), "--reference", str(tmp_path / "clean"), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["image"] for r in rows] == ["a.ome.zarr", "b.precomputed", "mean of 2"]
    assert [r["psnr_db"] for r in rows] == pytest.approx([want] * 3)
    with pytest.raises(InputError, match="share one grid"):  # a stack of two slices is no 2D image
        score_images([np.stack([out, out]), out], ref)
