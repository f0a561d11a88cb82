"""The emdiffuse command: outputs, metadata, exit codes and one-line errors."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from napari_emdiffuse.cli import main
from napari_emdiffuse.engine.io.images import read_image

from tests.conftest import make_tiny

FAST = ["--steps", "2", "--tile", "32", "--overlap", "8", "--device", "cpu"]


def run_cli(*args: str, env_home: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    if env_home:
        env["EMDIFFUSE_HOME"] = str(env_home)
    return subprocess.run([sys.executable, "-m", "napari_emdiffuse.cli", *args], capture_output=True, text=True, env=env)


@pytest.fixture
def noisy_tif(tmp_path):
    img = (np.random.default_rng(0).random((40, 56)) * 255).astype(np.uint8)
    path = tmp_path / "noisy.tif"
    tifffile.imwrite(path, img, imagej=True, resolution=(1 / 4.0, 1 / 4.0), metadata={"unit": "nm", "axes": "YX"})
    return path


def test_denoise_writes_tiff_with_metadata(tmp_path, noisy_tif, tiny_model_dir):
    out = tmp_path / "out.tif"
    assert main(["denoise", str(noisy_tif), "-o", str(out), "--model", str(tiny_model_dir), *FAST]) == 0
    res = read_image(out)
    assert res.data.shape == (40, 56) and res.data.dtype == np.uint8
    assert res.spacing == pytest.approx((4.0, 4.0))
    # provenance: which model and settings made it (Fiji: Image > Show Info)
    import json

    import tifffile

    made = json.loads(tifffile.TiffFile(out).imagej_metadata["Info"])
    assert made["model"] == "tiny-denoise" and made["preset"] == "fast" and made["seed"] == 0
    assert made["normalisation"]["mode"] == "percentile" and made["package"].startswith("napari-emdiffuse")


def test_alike_stack_is_averaged_along_z_and_says_why(tmp_path, tiny_model_dir, capsys):
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    base = gaussian_filter(rng.normal(size=(48, 48)), 3)
    stack = np.clip(128 + 400 * base + rng.normal(0, 10, (6, 48, 48)), 0, 255).astype(np.uint8)
    src, out, off = tmp_path / "fib.tif", tmp_path / "out.tif", tmp_path / "off.tif"
    tifffile.imwrite(src, stack)
    assert main(["denoise", str(src), "-o", str(out), "--model", str(tiny_model_dir), *FAST]) == 0
    err = capsys.readouterr().err
    assert "averaged along z, where its slices look" in err
    assert "z filter: 100%" in err  # the pass over the stack has a progress bar of its own
    made = json.loads(tifffile.TiffFile(out).imagej_metadata["Info"])
    assert 0.3 <= made["z_filter"] <= 1.0
    assert main(["denoise", str(src), "-o", str(off), "--model", str(tiny_model_dir), "--z-filter", "off", *FAST]) == 0
    assert "averaged along z" not in capsys.readouterr().err
    assert not np.array_equal(tifffile.imread(out), tifffile.imread(off))
    # a width given is used as given; on a 2D image it is one line, exit 2, nothing written
    assert main(["denoise", str(src), "-o", str(tmp_path / "x.tif"), "--model", str(tiny_model_dir), "--z-filter", "1.5",
                 *FAST]) == 0
    assert json.loads(tifffile.TiffFile(tmp_path / "x.tif").imagej_metadata["Info"])["z_filter"] == 1.5
    tifffile.imwrite(tmp_path / "one.tif", stack[0])
    rc = main(["denoise", str(tmp_path / "one.tif"), "-o", str(tmp_path / "y.tif"), "--model", str(tiny_model_dir),
               "--z-filter", "1", *FAST])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "the input is 2D" in err[-1] and not (tmp_path / "y.tif").exists()


def test_fill_border_is_noted_and_kept(tmp_path, noisy_tif, tiny_model_dir, capsys):
    img = tifffile.imread(noisy_tif)
    img[:, 40:] = 0  # an aligned section's border
    src, out = tmp_path / "section.tif", tmp_path / "out.tif"
    tifffile.imwrite(src, img)
    assert main(["denoise", str(src), "-o", str(out), "--model", str(tiny_model_dir), *FAST]) == 0
    assert "regions of value 0 are taken as fill" in capsys.readouterr().err
    assert (tifffile.imread(out)[:, 40:] == 0).all()
    # control: no border, no note
    assert main(["denoise", str(noisy_tif), "-o", str(out), "--model", str(tiny_model_dir), *FAST]) == 0
    assert "taken as fill" not in capsys.readouterr().err
    # into zarr too
    assert main(["denoise", str(src), "-o", str(tmp_path / "out.zarr"), "--model", str(tiny_model_dir), *FAST]) == 0
    assert "regions of value 0 are taken as fill" in capsys.readouterr().err


def test_nan_border_is_noted_and_kept_nan(tmp_path, noisy_tif, tiny_model_dir, capsys):
    img = tifffile.imread(noisy_tif).astype(np.float32)
    img[:, 40:] = np.nan  # a registration tool's border
    src, out = tmp_path / "section.tif", tmp_path / "out.tif"
    tifffile.imwrite(src, img)
    assert main(["denoise", str(src), "-o", str(out), "--model", str(tiny_model_dir), *FAST]) == 0
    assert "NaN pixels are taken as no data" in capsys.readouterr().err
    got = tifffile.imread(out)
    assert np.isnan(got[:, 40:]).all() and np.isfinite(got[:, :40]).all()
    made = json.loads(tifffile.TiffFile(out).imagej_metadata["Info"])
    assert made["normalisation"]["nan"] is True
    # control: no NaN, no note
    assert main(["denoise", str(noisy_tif), "-o", str(out), "--model", str(tiny_model_dir), *FAST]) == 0
    assert "NaN pixels" not in capsys.readouterr().err


def test_super_resolve_updates_pixel_size(tmp_path, noisy_tif, tiny_sr_dir):
    out = tmp_path / "sr.tif"
    assert main(["super-resolve", str(noisy_tif), "-o", str(out), "--model", str(tiny_sr_dir), "--scale", "2", *FAST]) == 0
    res = read_image(out)
    assert res.data.shape == (80, 112) and res.spacing == pytest.approx((2.0, 2.0))


def test_uncertainty_output(tmp_path, noisy_tif, tiny_model_dir):
    out, unc = tmp_path / "out.tif", tmp_path / "unc.tif"
    rc = main(["denoise", str(noisy_tif), "-o", str(out), "--uncertainty", str(unc), "--samples", "2",
               "--model", str(tiny_model_dir), *FAST])
    assert rc == 0 and read_image(unc).data.dtype == np.float32


def test_zarr_to_zarr_streams(tmp_path, noisy_tif, tiny_model_dir):
    from napari_emdiffuse.engine.io.images import write_image
    from napari_emdiffuse.engine.io.zarr import is_complete

    src = write_image(tmp_path / "in.zarr", tifffile.imread(noisy_tif)[None].repeat(2, axis=0), spacing=(40, 4, 4))
    out = tmp_path / "out.zarr"
    assert main(["denoise", str(src), "-o", str(out), "--model", str(tiny_model_dir), *FAST]) == 0
    assert is_complete(out) and read_image(out).data.shape == (2, 40, 56)


def test_scale_mismatch_is_a_user_error(tmp_path, noisy_tif, tiny_sr_dir, capsys):
    rc = main(["super-resolve", str(noisy_tif), "-o", str(tmp_path / "x.tif"), "--model", str(tiny_sr_dir), "--scale", "3", *FAST])
    assert rc == 2 and "x2, not x3" in capsys.readouterr().err


def test_blur_option_is_checked_and_reported(tmp_path, noisy_tif, tiny_sr_dir, capsys):
    from tests.engine.models.test_blur import blur_model

    blur_dir = blur_model().save(tmp_path / "sr-blur")
    out = tmp_path / "b.tif"
    assert main(["super-resolve", str(noisy_tif), "-o", str(out), "--model", str(blur_dir), "--blur", "area", *FAST]) == 0
    assert "acquisition blur 0.505 px (area mean)" in capsys.readouterr().err
    assert main(["super-resolve", str(noisy_tif), "-o", str(out), "--model", str(blur_dir), *FAST]) == 0
    assert "(read off the image); give --blur if you know it" in capsys.readouterr().err
    for model, blur, needle in ((blur_dir, "wide", "blur must be auto, area"), (blur_dir, "3", "between 0 and 2"),
                                (tiny_sr_dir, "1", "not told the acquisition blur")):
        rc = main(["super-resolve", str(noisy_tif), "-o", str(tmp_path / "x.tif"), "--model", str(model),
                   "--blur", blur, *FAST])
        err = capsys.readouterr().err
        assert rc == 2 and needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "x.tif").exists()


def test_models_lists_bundled_and_imported(tmp_path, shared_data, capsys):
    out = tmp_path / "imported"
    ref = shared_data / "reference" / "emdiffuse2d_checkpoint.pth"
    # the fixture checkpoint is inner-16: its network is read off the shapes
    assert main(["import", str(ref), "--arch", "EMDiffuse-n", "-o", str(out)]) == 0
    assert (out / "model.yaml").is_file() and "inner_channel: 16" in (out / "model.yaml").read_text()
    assert "network read from the checkpoint: 16 channels, multipliers [1, 2, 4]" in capsys.readouterr().err
    # control: a checkpoint that fits no network fails cleanly, leaving no model directory
    import torch

    sd = torch.load(ref, weights_only=True)
    sd.pop("denoise_fn.out.2.bias")
    torch.save(sd, tmp_path / "bad.pth")
    capsys.readouterr()
    rc = main(["import", str(tmp_path / "bad.pth"), "--arch", "EMDiffuse-n", "-o", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert rc == 2 and "denoise_fn." in err and err.count("\n") == 1 and not (tmp_path / "bad").exists()


def test_import_random_published_checkpoints_for_all_architectures(tmp_path, capsys):
    import torch

    from napari_emdiffuse.engine.models.factory import create_EMDiffuse

    for arch in ("EMDiffuse-n", "EMDiffuse-r", "vEMDiffuse-i", "vEMDiffuse-a"):
        sd = create_EMDiffuse(arch).module.state_dict()
        sd = {k: torch.randn_like(v) for k, v in sd.items()}
        sd["gammas"] = torch.rand(2000)  # saved schedule buffers are ignored
        ckpt = tmp_path / f"{arch}.pth"
        torch.save(sd, ckpt)
        out = tmp_path / f"model-{arch}"
        assert main(["import", str(ckpt), "--arch", arch, "-o", str(out)]) == 0
        assert (out / "model.yaml").is_file()
    assert main(["models"]) == 0
    captured = capsys.readouterr()
    listed = captured.out
    assert all(f"model-{a}" in listed for a in ("EMDiffuse-n", "vEMDiffuse-a"))
    assert "network read from the checkpoint" not in captured.err  # the published network as it is


def test_verify_checkpoint_command(shared_data):
    ref = shared_data / "reference"
    proc = run_cli("verify-checkpoint", str(ref / "vemdiffuse_checkpoint.pth"), str(ref / "vemdiffuse_reference.json"),
                   str(ref / "vemdiffuse_reference.npz"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS" in proc.stdout and "t700_eps" in proc.stdout


def test_verify_checkpoint_fails_with_exit_1_on_wrong_weights(tmp_path, shared_data):
    import torch

    ref = shared_data / "reference"
    sd = torch.load(ref / "emdiffuse2d_checkpoint.pth", weights_only=True)
    sd = {k: v + 0.01 if k.endswith("out.2.weight") else v for k, v in sd.items()}
    bad = tmp_path / "bad.pth"
    torch.save(sd, bad)
    proc = run_cli("verify-checkpoint", str(bad), str(ref / "emdiffuse2d_reference.json"), str(ref / "emdiffuse2d_reference.npz"))
    assert proc.returncode == 1 and "FAIL" in proc.stdout


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _bad_inputs(tmp: Path) -> dict[str, tuple[list[str], str]]:
    def tif(name, arr):
        p = tmp / name
        tifffile.imwrite(p, arr)
        return str(p)

    corrupt = tmp / "corrupt.tif"
    corrupt.write_bytes(b"II*\x00" + os.urandom(200))
    good = tif("good.tif", (np.random.default_rng(0).random((32, 32)) * 255).astype(np.uint8))
    return {
        "all-nan": (["denoise", tif("nan.tif", np.full((16, 16), np.nan, np.float32))], "NaN"),
        "empty": (["denoise", tif("empty.tif", np.zeros((0, 16), np.uint8))], ""),
        # a colour image (channels differ; a grey one saved as RGB is read as grey)
        "rgb": (["denoise", tif("rgb.tif", np.stack([np.zeros((16, 16)), np.ones((16, 16)), np.zeros((16, 16))],
                                                     -1).astype(np.uint8))], "colour image"),
        "5d": (["denoise", tif("5d.tif", np.zeros((2, 2, 2, 8, 8), np.uint8))], "dimensions"),
        "corrupt": (["denoise", str(corrupt)], "cannot read"),
        "missing": (["denoise", str(tmp / "nope.tif")], "nope.tif"),
        "tile0": (["denoise", good, "--tile", "0"], "tile"),
        "iso2d": (["isotropic", good, "--factor", "2"], "3D"),
        "factor1": (["isotropic", tif("vol.tif", np.zeros((3, 16, 16), np.uint8)), "--factor", "1"], "factor"),
        "iso-denoiser": (["isotropic", tif("vol3.tif", np.zeros((3, 16, 16), np.uint8)), "--factor", "3",
                          "--denoise-model", "demo-sr2"], "made for super-resolve, not denoise"),
        "badext": (["denoise", good, "-o_placeholder"], ""),
    }


@pytest.mark.parametrize(
    "case", ["all-nan", "empty", "rgb", "5d", "corrupt", "missing", "tile0", "iso2d", "factor1", "iso-denoiser"]
)
def test_bad_input_table(tmp_path, tiny_model_dir, case):
    args, needle = _bad_inputs(tmp_path)[case]
    inputs = [Path(a) for a in args[1:] if a.endswith(".tif") and Path(a).exists()]
    before = {p: _digest(p) for p in inputs}
    out = tmp_path / "out" / "result.tif"
    out.parent.mkdir()
    model = [] if args[0] == "isotropic" else ["--model", str(tiny_model_dir)]
    proc = run_cli(*args, "-o", str(out), *model, "--device", "cpu", env_home=tmp_path / "home")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert needle.lower() in lines[0].lower()
    assert not any((tmp_path / "out").iterdir())
    assert {p: _digest(p) for p in inputs} == before


@pytest.mark.parametrize(
    "args,needle",
    [(["denoise"], "required"), (["denoise", "x.tif", "-o", "y.h5"], "read only here"),
     (["denoise", "x.tif", "-o", "y.png"], "read only here; write .tif, .mrc or .zarr"),
     (["denoise", "x.tif", "-o", "y.tif", "--steps", "-1"], "positive"), (["frobnicate"], "invalid choice"),
     (["finetune", "--task", "denoise", "--input", "x.tif", "-o", "m", "--base-margin", "-11"], "[-10, 10]"),
     (["finetune", "--task", "denoise", "--input", "x.tif", "-o", "m", "--anchor", "-1"], "[0, 1e6]"),
     (["finetune", "--task", "denoise", "--input", "x.tif", "-o", "m", "--lr", "-1"], "learning rate in (0, 1)"),
     (["finetune", "--task", "denoise", "--input", "x.tif", "-o", "m", "--lr", "nan"], "learning rate in (0, 1)"),
     (["verify-checkpoint", "c.pth", "r.json", "r.npz", "--tolerance", "-1"], "positive number"),
     (["denoise", "x.tif", "-o", "y.tif", "--z-filter", "strong"], "expected auto or off or a width in slices"),
     (["super-resolve", "x.tif", "-o", "y.tif", "--z-filter", "1"], "unrecognized arguments: --z-filter"),
     (["train", "recipe.yaml", "--max-minutes", "0"], "positive number of minutes"),
     (["finetune", "--task", "super-resolve", "--input", "x.tif", "--target", "y.tif", "-o", "m",
       "--downsampling", "gaussian"], "every input here has its target"),
     (["finetune", "--task", "super-resolve", "--input", "x.tif", "-o", "m", "--downsampling", "bicubic"],
      "invalid choice")],
)
def test_usage_errors_are_one_line_exit_2(args, needle, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]


def test_png_in_mrc_out(tmp_path, noisy_tif, tiny_model_dir):
    """A console's PNG export restores to an MRC file; uncertainty too, as float32."""
    import imageio.v3 as iio

    from napari_emdiffuse.engine.io.images import read_image

    png = tmp_path / "scan.png"
    iio.imwrite(png, tifffile.imread(noisy_tif))
    out, unc = tmp_path / "scan.mrc", tmp_path / "scan_sd.mrc"
    assert main(["denoise", str(png), "-o", str(out), "--uncertainty", str(unc), "--model", str(tiny_model_dir),
                 "--samples", "2", *FAST]) == 0
    # the same pixels as a TIFF give the same result (uint8 comes back widened to uint16)
    ref = tmp_path / "ref.tif"
    assert main(["denoise", str(noisy_tif), "-o", str(ref), "--model", str(tiny_model_dir), "--samples", "2", *FAST]) == 0
    got = read_image(out).data
    assert got.dtype == np.uint16 and np.array_equal(got, tifffile.imread(ref))
    assert read_image(unc).data.dtype == np.float32


def test_isotropic_mrc_factor_from_voxel_size(tmp_path):
    """An IMOD-style volume (voxel size in Å) gets its factor from z / xy, like a TIFF."""
    import mrcfile

    from napari_emdiffuse.engine.io.images import read_image

    vol = tmp_path / "stack.rec"
    with mrcfile.new(vol) as m:
        m.set_data(np.random.default_rng(0).integers(0, 255, (4, 48, 40)).astype(np.int16))
        m.voxel_size = (40.0, 40.0, 120.0)  # x, y, z in Å: z is 3x the pixel size
    out = tmp_path / "iso.mrc"
    assert main(["isotropic", str(vol), "-o", str(out), "--steps", "1", "--device", "cpu"]) == 0
    img = read_image(out)
    assert img.data.shape == (10, 48, 40) and img.spacing == (4.0, 4.0, 4.0)


def test_output_equal_to_input_is_refused(noisy_tif, capsys):
    before = _digest(noisy_tif)
    assert main(["denoise", str(noisy_tif), "-o", str(noisy_tif)]) == 2
    assert "is the input" in capsys.readouterr().err and _digest(noisy_tif) == before


def test_missing_output_folder_is_refused(tmp_path, noisy_tif, capsys):
    assert main(["denoise", str(noisy_tif), "-o", str(tmp_path / "no" / "out.tif")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("out, why", [
    ("nosuch://bucket/out.tif", "Protocol not known"),
    ("https://host/out.zarr", "a web server's files are read here, not written"),
    ("https://host/out.mrc", "a web server's files are read here, not written"),
    ("local://bucket/out.png", "unsupported file type '.png'"),
])  # fmt: skip
def test_an_output_url_that_cannot_be_written_is_refused_in_one_line(noisy_tif, out, why, capsys, tmp_path, monkeypatch):
    """Not "output folder 's3:/bucket' does not exist" (a URL folded into a path). A .zarr
    store, a TIFF or an MRC file may go to an object store (tests/engine/io/test_zarrurl.py,
    test_fileurl.py), nothing to a web server, nor to a service not known."""
    monkeypatch.chdir(tmp_path)
    assert main(["denoise", str(noisy_tif), "-o", out]) == 2
    err = capsys.readouterr().err
    assert f"cannot write '{out}'" in err and why in err and len(err.strip().splitlines()) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["noisy.tif"]  # nothing written, no "s3:" folder


def test_finetune_command_writes_and_registers_a_model(tmp_path, tiny_model_dir, capsys):
    img = (np.random.default_rng(0).random((96, 96)) * 200 + 20).astype(np.uint8)
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, img)
    out = tmp_path / "tuned"
    # a diffusion base: the input is taken as clean and noise simulated (self-supervised needs a predictor)
    rc = main(["finetune", "--task", "denoise", "--input", str(src), "--base", str(tiny_model_dir), "-o", str(out),
               "--iterations", "2", "--patch", "32", "--batch", "2", "--device", "cpu", "--objective", "supervised"])
    assert rc == 0 and (out / "model.yaml").is_file()
    assert not (tmp_path / ".tuned.train").exists()  # a finished fine-tune leaves no checkpoint beside it
    assert main(["models"]) == 0
    assert "tuned" in capsys.readouterr().out


def test_finetune_learns_from_several_pairs(tmp_path, tiny_model_dir, capsys):
    """--input A B --target a b: two registered pairs of different sizes, each with its strip;
    a count that does not match, or targets for some inputs only, is refused in one line."""
    import yaml

    rng = np.random.default_rng(0)
    files = {}
    for name, shape in (("a", (96, 96)), ("b", (80, 112))):
        clean = (rng.random(shape) * 200 + 20).astype(np.uint8)
        files[name] = (tmp_path / f"{name}_noisy.tif", tmp_path / f"{name}_clean.tif")
        tifffile.imwrite(files[name][0], np.clip(clean + rng.normal(0, 20, shape), 0, 255).astype(np.uint8))
        tifffile.imwrite(files[name][1], clean)
    out = tmp_path / "tuned"
    common = ["--base", str(tiny_model_dir), "--iterations", "2", "--patch", "32", "--batch", "2", "--device", "cpu"]
    rc = main(["finetune", "--task", "denoise", "--input", str(files["a"][0]), str(files["b"][0]),
               "--target", str(files["a"][1]), str(files["b"][1]), "-o", str(out), *common])
    assert rc == 0
    data = yaml.safe_load((out / "model.yaml").read_text())["training"]["data"]
    assert data["images"] == ["a_noisy.tif -> a_clean.tif", "b_noisy.tif -> b_clean.tif"]
    capsys.readouterr()
    rc = main(["finetune", "--task", "denoise", "--input", str(files["a"][0]), str(files["b"][0]),
               "--target", str(files["a"][1]), "-o", str(tmp_path / "m"), *common])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "2 inputs and 1 targets" in err[0] and not (tmp_path / "m").exists()
    # two folders: their images paired by name, whatever the formats
    (tmp_path / "noisy").mkdir()
    (tmp_path / "clean").mkdir()
    for name in ("a", "b"):
        files[name][0].rename(tmp_path / "noisy" / f"{name}.tif")
        tifffile.imwrite(tmp_path / "clean" / f"{name}.tiff", tifffile.imread(files[name][1]))
    out2 = tmp_path / "tuned2"
    rc = main(["finetune", "--task", "denoise", "--input", str(tmp_path / "noisy"), "--target", str(tmp_path / "clean"),
               "-o", str(out2), *common])
    assert rc == 0
    assert yaml.safe_load((out2 / "model.yaml").read_text())["training"]["data"]["images"] == [
        "a.tif -> a.tiff", "b.tif -> b.tiff"]
    (tmp_path / "clean" / "b.tiff").unlink()
    capsys.readouterr()
    rc = main(["finetune", "--task", "denoise", "--input", str(tmp_path / "noisy"), "--target", str(tmp_path / "clean"),
               "-o", str(tmp_path / "m2"), *common])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "no partner for b" in err[0] and not (tmp_path / "m2").exists()


def test_finetune_refuses_images_smaller_than_patch(tmp_path, tiny_model_dir, capsys):
    src = tmp_path / "small.tif"
    tifffile.imwrite(src, (np.random.default_rng(0).random((20, 20)) * 255).astype(np.uint8))
    rc = main(["finetune", "--task", "denoise", "--input", str(src), "--base", str(tiny_model_dir),
               "-o", str(tmp_path / "m"), "--iterations", "2", "--patch", "64", "--device", "cpu",
               "--objective", "supervised"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "patch" in err[0] and not (tmp_path / "m").exists()


def test_finetune_register_needs_a_target(tmp_path, tiny_model_dir, capsys):
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, (np.random.default_rng(0).random((96, 96)) * 255).astype(np.uint8))
    rc = main(["finetune", "--task", "denoise", "--input", str(src), "--base", str(tiny_model_dir),
               "-o", str(tmp_path / "m"), "--iterations", "2", "--device", "cpu", "--register", "affine"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "register" in err[0] and not (tmp_path / "m").exists()


def test_finetune_simulated_noise_options_reach_the_card(tmp_path, tiny_model_dir):
    import yaml

    src = tmp_path / "clean.tif"
    tifffile.imwrite(src, (np.random.default_rng(0).random((96, 96)) * 200 + 20).astype(np.uint8))
    out = tmp_path / "tuned"
    rc = main(["finetune", "--task", "denoise", "--input", str(src), "--base", str(tiny_model_dir), "-o", str(out),
               "--iterations", "2", "--patch", "32", "--batch", "2", "--device", "cpu", "--objective", "supervised",
               "--doses", "30", "45", "--noise-correlation", "0.35"])
    assert rc == 0
    data = yaml.safe_load((out / "model.yaml").read_text())["training"]["data"]
    assert data["doses"] == [30.0, 45.0] and data["correlation"] == 0.35


@pytest.mark.parametrize("given, expected", [(None, 2), ("0", None), ("5", 5)])
def test_finetune_patience_reaches_the_config(tmp_path, monkeypatch, given, expected):
    import napari_emdiffuse.api as api

    seen = {}

    def fake(*args, **kw):  # the command's settings, without training anything
        seen.update(kw)
        raise api.EMDiffuseError("stop here")
        yield

    monkeypatch.setattr(api, "finetune_iter", fake)
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, np.zeros((96, 96), np.uint8))
    rc = main(["finetune", "--task", "denoise", "--input", str(src), "-o", str(tmp_path / "m"),
               *([] if given is None else ["--patience", given])])
    assert rc == 2
    assert seen.get("patience", 2) == expected if given is not None else "patience" not in seen


@pytest.mark.parametrize("extra", [["--target", "T"], ["--objective", "self-supervised"], []])
def test_finetune_simulated_noise_options_need_a_clean_input(tmp_path, tiny_model_dir, capsys, extra):
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, (np.random.default_rng(0).random((96, 96)) * 255).astype(np.uint8))
    extra = [str(src) if e == "T" else e for e in extra]  # a target of the input's shape
    rc = main(["finetune", "--task", "denoise", "--input", str(src), "--base", str(tiny_model_dir),
               "-o", str(tmp_path / "m"), "--iterations", "2", "--device", "cpu", "--doses", "30", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "simulated noise" in err[0] and not (tmp_path / "m").exists()


def test_long_runs_print_an_estimate_first(tmp_path, noisy_tif, tiny_model_dir, capsys, monkeypatch):
    import itertools

    from napari_emdiffuse import cli_progress

    clock = itertools.count(0, 10.0)  # every look at the clock: 10 s later (a slow device)
    monkeypatch.setattr(cli_progress.time, "monotonic", lambda: next(clock))
    out = tmp_path / "o.tif"
    assert main(["denoise", str(noisy_tif), "-o", str(out), "--model", str(tiny_model_dir), "--steps", "40",
                 "--tile", "32", "--overlap", "8", "--batch", "2", "--device", "cpu"]) == 0  # 3 batches per step
    captured = capsys.readouterr()
    err = captured.err
    assert "estimate:" in err and "network passes" in err and "over 10 minutes" in err
    assert captured.out == ""  # said above the bar, on stderr (tqdm's own write goes to stdout)


@pytest.mark.parametrize(
    "argv, expect",
    [
        (["denoise"], "emdiffuse denoise: error: the following arguments are required"),
        (["denoise", ".", "-o", "x.tif"], "the output is a folder; 'x.tif' is named like a file"),
        (["super-resolve", "in.tif", "-o", "x.tif", "--model", "nope"], "(super-resolve models: "),
    ],
)
def test_cli_error_details(tmp_path, monkeypatch, capsys, argv, expect):
    import tifffile

    monkeypatch.chdir(tmp_path)
    tifffile.imwrite(tmp_path / "in.tif", np.zeros((32, 32), np.uint8))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expect in err[0]
    assert "demo-denoise" not in err[0] or "denoise models" in err[0]  # only the task's models


def test_stack_progress_is_one_bar_with_block_counts(monkeypatch, capsys):
    # A stack yields global sampling counts and, between slices, block counts. One bar must
    # follow the sampling counts to the end (its rate and ETA intact), the blocks as a postfix;
    # a control bar per event (the old behaviour) opens a new bar at every slice.
    import tqdm as tqdm_mod

    from napari_emdiffuse import cli_progress
    from napari_emdiffuse.engine.events import Progress

    opened = []

    class Counting(tqdm_mod.tqdm):
        def __init__(self, *a, **k):
            opened.append(k.get("desc"))
            super().__init__(*a, **k)

    monkeypatch.setattr(tqdm_mod, "tqdm", Counting)

    def job():
        for z in range(3):
            for t in range(4):
                yield Progress("sampling", z * 4 + t + 1, 12)
            yield Progress("block", z + 1, 3)
        yield "result"

    assert cli_progress.drive(job()) == "result"
    err = capsys.readouterr().err
    assert opened == ["sampling"]
    assert "12/12" in err and "block 3/3" in err

    def blocks_only():  # a dask run reports blocks only: they get the bar
        for n in range(1, 4):
            yield Progress("block", n, 3)
        yield "done"

    opened.clear()
    assert cli_progress.drive(blocks_only()) == "done"
    assert opened == ["block"] and "3/3" in capsys.readouterr().err


def _stoppable(log, signals, at=3):
    """A run of 10 events that sends itself ``signals`` before its event ``at`` and says how it
    ended: closed at a yield (where it cleans up) or interrupted in its body."""
    import os
    import signal

    from napari_emdiffuse.engine.events import Progress

    try:
        for k in range(10):
            if k == at:
                for signum in signals:
                    os.kill(os.getpid(), signal.SIGTERM if signum == "sleep" else signum)
                log.append("went on to its next event")
                if signals == ["sleep"]:  # no event for long after SIGTERM
                    for _ in range(100):
                        time.sleep(0.05)
            yield Progress("training", k + 1, 10)
        yield "model"
    except GeneratorExit:
        log.append("closed at a yield")
        raise
    except KeyboardInterrupt as exc:
        log.append(f"{type(exc).__name__} in its body")
        raise


def test_ctrl_c_and_sigterm_stop_a_training_at_its_next_event(monkeypatch, capsys):
    """Ctrl-C or SIGTERM while a training is driven (``between_events``): it goes on to its
    next event and is closed there (the trainer saves its model there; raised in its body,
    mid-step, it saved nothing), then KeyboardInterrupt / Terminated. A second Ctrl-C stops at
    once, and so does SIGTERM after its grace time when no event comes; the handlers are given
    back afterwards. Other runs stop where they are (their files clean up as it passes)."""
    import signal

    # Python's own Ctrl-C handler, as in a terminal: a shell script's background job (`cmd &`)
    # starts with SIGINT ignored, and Python then installs none
    shell_given = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _stops_at_events(monkeypatch, capsys)
    finally:
        signal.signal(signal.SIGINT, shell_given)


def _stops_at_events(monkeypatch, capsys):
    import signal

    from napari_emdiffuse import cli_progress
    from napari_emdiffuse.cli_progress import Terminated, drive

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    for signum, raised in ((signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Terminated)):
        log = []
        with pytest.raises(raised):
            drive(between_events=True, gen=_stoppable(log, [signum]))
        assert log == ["went on to its next event", "closed at a yield"]
        assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    err = capsys.readouterr().err
    assert "stopping (Ctrl-C again: at once) at the next step" in err
    assert "terminated (SIGTERM); stopping at the next step" in err
    log = []
    with pytest.raises(KeyboardInterrupt):
        drive(between_events=True, gen=_stoppable(log, [signal.SIGINT, signal.SIGINT]))
    assert log == ["KeyboardInterrupt in its body"]
    monkeypatch.setattr(cli_progress, "STOP_GRACE_S", 0.2)
    log, started = [], time.monotonic()
    with pytest.raises(Terminated):
        drive(between_events=True, gen=_stoppable(log, ["sleep"]))
    assert log == ["went on to its next event", "Terminated in its body"] and time.monotonic() - started < 3
    log = []
    assert drive(between_events=True, gen=_stoppable(log, [])) == "model" and log == ["went on to its next event"]
    log = []
    with pytest.raises(KeyboardInterrupt):  # a restoration's drive: at once, in its body
        drive(_stoppable(log, [signal.SIGINT]))
    assert log == ["KeyboardInterrupt in its body"]


def test_a_model_or_package_by_url_is_refused_in_one_line_and_makes_no_local_folder(tmp_path, capsys, monkeypatch,
                                                                                    tiny_model_dir):
    """A model (finetune, train, import) or a bioimage.io package (export) goes to a folder:
    a URL is refused before any work. Before, ``Path`` folded 's3://bucket/model' into a local
    folder 's3:/bucket/model' and a fine-tune saved its model there. ``info`` on a zarr URL it
    cannot list answers in one line (it raised a traceback)."""
    monkeypatch.chdir(tmp_path)
    tifffile.imwrite(tmp_path / "noisy.tif", (np.random.default_rng(0).random((96, 96)) * 255).astype(np.uint8))
    torch_file = tmp_path / "best_Network.pth"
    torch_file.write_bytes(b"not read")
    for argv in (["finetune", "--task", "denoise", "--input", "noisy.tif", "--base", str(tiny_model_dir), "--iterations",
                  "2", "--patch", "32", "-o", "s3://bucket/model"],
                 ["import", str(torch_file), "--arch", "EMDiffuse-n", "-o", "s3://bucket/model"],
                 ["export", str(tiny_model_dir), "-o", "s3://bucket/model.zip"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "goes to a local or shared folder" in err and len(err.splitlines()) == 1 and "Traceback" not in err
    with pytest.raises(Exception, match="cannot write 's3://bucket/model': a model goes to a local or shared folder"):
        __import__("napari_emdiffuse.engine.training.config", fromlist=["TrainConfig"]).TrainConfig(
            task="denoise", inputs=["noisy.tif"], out="s3://bucket/model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_Network.pth", "noisy.tif", "tiny-denoise"]
    assert main(["info", "s3://nobucket/x.zarr"]) == 2
    err = capsys.readouterr().err
    assert "cannot read 's3://nobucket/x.zarr'" in err and "Traceback" not in err


def test_a_damaged_chunk_of_a_zarr_input_is_reported_in_one_line(tmp_path, capsys, tiny_model_dir):
    """A chunk cut short (a copy that stopped, a failing disk): its codec raises while it is
    decoded, deep in a run. The command says the data is damaged, in one line that names the
    input, exit 2, with no traceback and no output; the control, the store before the damage, runs; any other
    RuntimeError stays a crash to report."""
    import zarr

    from napari_emdiffuse.engine.io.common import damaged_reason
    from napari_emdiffuse.engine.io.images import write_image

    vol = (np.random.default_rng(2).random((3, 40, 48)) * 255).astype(np.uint8)
    write_image(tmp_path / "v.zarr", vol)
    args = ["--model", str(tiny_model_dir), "--device", "cpu", "--steps", "2"]
    assert main(["denoise", str(tmp_path / "v.zarr"), "-o", str(tmp_path / "ok.tif"), *args]) == 0
    capsys.readouterr()
    store = zarr.open_array(str(tmp_path / "v.zarr"), mode="r")
    chunk = next(p for p in (tmp_path / "v.zarr").rglob("*") if p.is_file() and p.name[0].isdigit())
    assert store.chunks and chunk.stat().st_size > 20
    chunk.write_bytes(chunk.read_bytes()[:20])
    for argv in (["denoise", str(tmp_path / "v.zarr"), "-o", str(tmp_path / "d.tif"), *args],
                 ["convert", str(tmp_path / "v.zarr"), "-o", str(tmp_path / "c.mrc")],
                 ["info", str(tmp_path / "v.zarr")]):
        assert main(argv) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
        assert len(err) == 1 and "could not be decoded, so the data is damaged" in err[0], err
        assert f"a stored chunk of '{tmp_path / 'v.zarr'}' could not" in err[0], err  # which input
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.tif", "tiny-denoise", "v.zarr"]
    try:
        raise RuntimeError("decompression error, raised by our own code")
    except RuntimeError as exc:
        assert damaged_reason(exc) is None
    from numcodecs import Zstd

    from napari_emdiffuse.batches import _why_skipped
    from napari_emdiffuse.engine.errors import InputError

    try:
        Zstd().decode(b"not a zstd frame")
    except RuntimeError as exc:  # a batch skips such a file, with why, and goes on
        assert "damaged" in _why_skipped(exc)
    assert _why_skipped(InputError("too small")) == "too small"
    assert _why_skipped(RuntimeError("a bug")) is None  # stops the batch, as a crash


def test_isotropic_denoise_first(tmp_path, capsys):
    # --denoise: the measured slices come out denoised (the bundled denoiser), the volume
    # has (Z - 1) * factor + 1 slices; without it they are the input's, bit for bit.
    vol = (np.random.default_rng(1).random((3, 32, 32)) * 255).astype(np.uint8)
    src = tmp_path / "vol.tif"
    tifffile.imwrite(src, vol)
    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    assert main(["isotropic", "--denoise", str(src), "-o", str(a), "--factor", "3", "--device", "cpu"]) == 0
    assert main(["isotropic", str(src), "-o", str(b), "--factor", "3", "--device", "cpu"]) == 0
    den, plain = tifffile.imread(a), tifffile.imread(b)
    assert den.shape == plain.shape == (7, 32, 32)
    assert np.array_equal(plain[::3], vol) and not np.array_equal(den[::3], vol)
    assert den[::3].std() < vol.std()  # white noise in, smoother slices out
    import json

    made = json.loads(tifffile.TiffFile(a).imagej_metadata["Info"])
    assert made["denoised_first_by"] == "demo-denoise" and made["factor"] == 3
    assert "denoised_first_by" not in json.loads(tifffile.TiffFile(b).imagej_metadata["Info"])


# -- batches -----------------------------------------------------------------------------------

def test_batch_plan_names_and_refusals(tmp_path):
    from napari_emdiffuse.engine.errors import InputError
    from napari_emdiffuse.engine.io.batch import expand_inputs, plan_batch

    src = tmp_path / "scans"
    src.mkdir()
    for name in ("b.tif", "a.png", "c.mrc", "d.emd", "e.map.gz", ".hidden.tif", ".d.tif.partial-1234", "notes.txt",
                 "logs.tar.gz"):
        (src / name).write_bytes(b"x")
    files = expand_inputs([str(src)])
    # sorted; only images (a TEM session's .emd too, an EMDB map as downloaded)
    assert [f.name for f in files] == ["a.png", "b.tif", "c.mrc", "d.emd", "e.map.gz"]
    plan = plan_batch(files, tmp_path / "out", tmp_path / "sd")
    assert [(o.name, u.name) for _, o, u in plan] == [
        ("a.tif", "a_uncertainty.tif"), ("b.tif", "b_uncertainty.tif"), ("c.mrc", "c_uncertainty.mrc"),
        ("d.tif", "d_uncertainty.tif"), ("e.map", "e_uncertainty.map")]
    assert (tmp_path / "out").is_dir() and (tmp_path / "sd").is_dir()
    (tmp_path / "cremi.hdf").write_bytes(b"x")  # named explicitly
    assert [o.name for _, o, _ in plan_batch(expand_inputs([str(tmp_path / "cremi.hdf")]), tmp_path / "out")] == [
        "cremi.tif"]  # fmt: skip
    # the uncertainty folder may lie in the output folder, both made now
    files = files[:3]
    nested = plan_batch(files, tmp_path / "res", tmp_path / "res" / "sd")
    assert nested[0][2] == tmp_path / "res" / "sd" / "a_uncertainty.tif" and (tmp_path / "res" / "sd").is_dir()
    # refusals, each before any folder is made
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "b.tif").write_bytes(b"x")
    cases = [
        (lambda: plan_batch(files + [tmp_path / "other" / "b.tif"], tmp_path / "o2"), "would both write"),
        (lambda: plan_batch(files, src), "would replace an input"),
        (lambda: plan_batch(files, tmp_path / "other" / "b.tif"), "is a file"),
        (lambda: plan_batch(files, tmp_path / "no" / "where"), "does not exist"),
        (lambda: expand_inputs([str(tmp_path / "x.zarr")]), "one at a time"),
        (lambda: expand_inputs([str(tmp_path / "other"), str(tmp_path / "missing.tif")]), "file not found"),
        (lambda: expand_inputs([str(src / "notes.txt")]), "unsupported file type"),
        (lambda: expand_inputs([str(tmp_path / "sd")]), "holds no"),
    ]
    for call, needle in cases:
        with pytest.raises(InputError, match=needle):
            call()
    assert not (tmp_path / "o2").exists()


def test_batch_restores_each_file_as_alone(tmp_path, noisy_tif, tiny_model_dir, capsys):
    import imageio.v3 as iio

    from napari_emdiffuse.engine.io.images import read_image

    src = tmp_path / "scans"
    src.mkdir()
    img = tifffile.imread(noisy_tif)
    tifffile.imwrite(src / "s1.tif", img)
    tifffile.imwrite(src / "s2.tif", img[::-1].copy())
    iio.imwrite(src / "s3.png", img[:, ::-1].copy())
    (src / "s4.tif").write_bytes(b"II*\x00 not really a tiff")  # a broken file among good ones
    rc = main(["denoise", str(src), "-o", str(tmp_path / "out"), "--uncertainty", str(tmp_path / "sd"),
               "--model", str(tiny_model_dir), "--samples", "2", *FAST])
    err = capsys.readouterr().err
    assert rc == 2 and "skipped" in err and "s4.tif" in err and "1 of 4 files were skipped" in err
    assert "Traceback" not in err
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["s1.tif", "s2.tif", "s3.tif"]  # the broken file left nothing
    assert sorted(p.name for p in (tmp_path / "sd").iterdir()) == [
        "s1_uncertainty.tif", "s2_uncertainty.tif", "s3_uncertainty.tif"]
    # the same as restoring each file alone
    alone = tmp_path / "alone.tif"
    assert main(["denoise", str(src / "s2.tif"), "-o", str(alone), "--model", str(tiny_model_dir),
                 "--samples", "2", *FAST]) == 0
    assert np.array_equal(read_image(tmp_path / "out" / "s2.tif").data, read_image(alone).data)
    # several files by name work the same way, and a good batch exits 0
    rc = main(["denoise", str(src / "s1.tif"), str(src / "s3.png"), "-o", str(tmp_path / "out2"),
               "--model", str(tiny_model_dir), *FAST])
    assert rc == 0 and sorted(p.name for p in (tmp_path / "out2").iterdir()) == ["s1.tif", "s3.tif"]


def test_batch_interrupted_keeps_what_was_finished(tmp_path, noisy_tif, tiny_model_dir, capsys, monkeypatch):
    from napari_emdiffuse import batches

    src = tmp_path / "scans"
    src.mkdir()
    for k in range(3):
        tifffile.imwrite(src / f"s{k}.tif", tifffile.imread(noisy_tif))
    real = batches.restore_file_iter  # what a batch restores each file with
    calls = []

    def ctrl_c_on_second(src, out, *args, **kwargs):
        calls.append(out.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return (yield from real(src, out, *args, **kwargs))

    monkeypatch.setattr(batches, "restore_file_iter", ctrl_c_on_second)
    rc = main(["denoise", str(src), "-o", str(tmp_path / "out"), "--model", str(tiny_model_dir), *FAST])
    err = capsys.readouterr().err
    assert rc == 130 and "interrupted at file 2 of 3" in err and "the 1 written before it are complete" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["s0.tif"]


def test_isotropic_from_a_folder_of_slices(tmp_path, capsys):
    """One TIFF per section: a volume; without a voxel size the factor must be given."""
    from napari_emdiffuse.engine.io.images import read_image

    rng = np.random.default_rng(0)
    secs = tmp_path / "sections"
    secs.mkdir()
    vol = rng.integers(0, 255, (3, 40, 32)).astype(np.uint8)
    for z in range(3):
        tifffile.imwrite(secs / f"z{z}.tif", vol[z])
    out = tmp_path / "iso.tif"
    assert main(["isotropic", str(secs), "-o", str(out), "--device", "cpu"]) == 2
    assert "give the z / xy spacing ratio with --factor" in capsys.readouterr().err and not out.exists()
    assert main(["isotropic", str(secs), "-o", str(out), "--factor", "3", "--device", "cpu"]) == 0
    res = read_image(out).data
    assert res.shape == (7, 40, 32) and np.array_equal(res[::3], vol)  # measured slices kept
    # --voxel-size: the factor follows from it, and the result carries it
    assert main(["isotropic", str(secs), "-o", str(out), "--voxel-size", "30", "10", "10", "--device", "cpu"]) == 0
    res = read_image(out)
    assert res.data.shape == (7, 40, 32) and res.spacing == (10.0, 10.0, 10.0) and res.unit == "nm"
    assert main(["isotropic", str(secs), "-o", str(out), "--voxel-size", "10", "10", "--device", "cpu"]) == 2
    assert "--voxel-size gives 2 values for" in capsys.readouterr().err


def test_isotropic_batch_each_volume_at_its_own_factor(tmp_path, capsys):
    """Several volumes into a folder: each at the factor its voxel size gives, the measured
    slices kept, the uncertainty in its folder; an uncalibrated volume and a 2D image are
    skipped with their reasons (exit 2) while the others are written; --factor serves all."""
    from napari_emdiffuse.engine.io.images import read_image, write_image

    rng = np.random.default_rng(4)
    src = tmp_path / "vols"
    src.mkdir()
    a = rng.integers(0, 255, (3, 40, 32)).astype(np.uint8)
    b = rng.integers(0, 255, (4, 36, 40)).astype(np.uint8)
    write_image(src / "a.tif", a, spacing=(30.0, 10.0, 10.0), axes="ZYX")  # factor 3
    write_image(src / "b.mrc", b, spacing=(20.0, 10.0, 10.0))  # factor 2
    tifffile.imwrite(src / "c.tif", a[0])  # 2D
    tifffile.imwrite(src / "d.tif", a)  # no voxel size
    out = tmp_path / "iso"
    assert main(["isotropic", str(src), "-o", f"{out}/", "--uncertainty", str(out / "sd"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "skipped" in err and "'c.tif' has 2 dimensions" in err.replace(str(src) + "/", "")
    assert "does not say its voxel size" in err and "2 of 4 files were skipped" in err
    assert "[1/4]" in err and "left)" not in err.split("[2/4]")[0] and "s left)" in err.split("[2/4]")[1].splitlines()[0]
    ra, rb = read_image(out / "a.tif"), read_image(out / "b.mrc")
    assert ra.data.shape == (7, 40, 32) and np.array_equal(ra.data[::3], a) and ra.spacing == (10.0, 10.0, 10.0)
    assert rb.data.shape == (7, 36, 40) and np.array_equal(rb.data[::2], b) and rb.spacing == (10.0, 10.0, 10.0)
    assert sorted(p.name for p in (out / "sd").iterdir()) == ["a_uncertainty.tif", "b_uncertainty.mrc"]
    assert read_image(out / "sd" / "a_uncertainty.tif").data.shape == (7, 40, 32)
    assert sorted(p.name for p in out.iterdir()) == ["a.tif", "b.mrc", "sd"]  # nothing of c, d
    # --factor: every volume at it, the uncalibrated one too
    out2 = tmp_path / "iso2"
    assert main(["isotropic", str(src / "a.tif"), str(src / "d.tif"), "-o", str(out2), "--factor", "2",
                 "--device", "cpu"]) == 0
    assert [read_image(out2 / n).data.shape for n in ("a.tif", "d.tif")] == [(5, 40, 32), (5, 40, 32)]
    # one file into a folder (one that exists, or a name ending in /): a batch of one, named as the input
    assert main(["isotropic", str(src / "a.tif"), "-o", f"{tmp_path / 'solo'}/", "--device", "cpu"]) == 0
    assert read_image(tmp_path / "solo" / "a.tif").data.shape == (7, 40, 32)
    assert main(["isotropic", str(src / "b.mrc"), "-o", str(tmp_path / "solo"), "--device", "cpu"]) == 0
    assert sorted(p.name for p in (tmp_path / "solo").iterdir()) == ["a.tif", "b.mrc"]
    # one folder with an output file is still one volume of 2D slices (here: of 3D files, refused)
    assert main(["isotropic", str(src), "-o", str(tmp_path / "one.tif"), "--factor", "2", "--device", "cpu"]) == 2
    assert not (tmp_path / "one.tif").exists()


def test_a_batch_resumed_leaves_out_results_on_disk_written_after_their_uncertainty(tmp_path, tiny_model_dir,
                                                                                     monkeypatch):
    """An output is written after its uncertainty, so one on disk is whole with it, and
    --resume leaves out exactly the files whose outputs exist (with one sample there is no
    uncertainty, and the file still counts as done)."""
    from napari_emdiffuse.engine.io import images

    rng = np.random.default_rng(1)
    src = tmp_path / "in"
    src.mkdir()
    for k in range(3):
        tifffile.imwrite(src / f"s{k}.tif", (rng.random((40, 48)) * 255).astype(np.uint8))
    order = []
    real = images.write_image
    monkeypatch.setattr(images, "write_image", lambda path, *a, **k: order.append(Path(path).name) or real(path, *a, **k))
    out = tmp_path / "out"
    common = ["--model", str(tiny_model_dir), *FAST]
    assert main(["denoise", str(src), "-o", str(out), "--uncertainty", str(out / "sd"), "--samples", "2", *common]) == 0
    assert order == ["s0_uncertainty.tif", "s0.tif", "s1_uncertainty.tif", "s1.tif", "s2_uncertainty.tif", "s2.tif"]
    (out / "s1.tif").unlink()
    order.clear()
    assert main(["denoise", str(src), "-o", str(out), "--uncertainty", str(out / "sd"), "--samples", "2", "--resume",
                 *common]) == 0
    assert order == ["s1_uncertainty.tif", "s1.tif"]
    order.clear()
    one = tmp_path / "one"
    assert main(["denoise", str(src), "-o", str(one), "--uncertainty", str(one / "sd"), *common]) == 0
    assert main(["denoise", str(src), "-o", str(one), "--uncertainty", str(one / "sd"), "--resume", *common]) == 0
    assert order == ["s0.tif", "s1.tif", "s2.tif"]  # the second run wrote nothing


def test_region_restores_part_of_one_image(tmp_path, noisy_tif, tiny_model_dir, capsys):
    """--region Y0 Y1 X0 X1: that part only, as the API restores it, recorded in the file or
    the zarr store; a region outside the image refused in one line; a batch takes the same
    region of each file."""
    import json

    from napari_emdiffuse.api import restore

    out = tmp_path / "part.tif"
    common = ["--model", str(tiny_model_dir), *FAST]
    assert main(["denoise", str(noisy_tif), "-o", str(out), "--region", "4", "20", "8", "40", *common]) == 0
    got = read_image(out)
    assert got.data.shape == (16, 32) and got.spacing == (4.0, 4.0)
    src = read_image(noisy_tif)
    want = restore(src.data, "denoise", str(tiny_model_dir), region=(4, 20, 8, 40), steps=2, tile=32, overlap=8,
                   device="cpu")
    assert np.array_equal(got.data, want.mean)
    info = json.loads(tifffile.TiffFile(out).imagej_metadata["Info"])
    assert info["region"] == [4, 20, 8, 40]
    # into a zarr store: the same pixels, the region in its attributes
    assert main(["denoise", str(noisy_tif), "-o", str(tmp_path / "p.zarr"), "--region", "4", "20", "8", "40", *common]) == 0
    store = zarr.open_array(str(tmp_path / "p.zarr"), mode="r")
    assert np.array_equal(store[:], want.mean) and store.attrs["region"] == [4, 20, 8, 40]
    # its place over the image: the first pixel at row 4, column 8 (4 nm pixels), in each format
    assert main(["denoise", str(noisy_tif), "-o", str(tmp_path / "p.mrc"), "--region", "4", "20", "8", "40", *common]) == 0
    for placed in (out, tmp_path / "p.zarr", tmp_path / "p.mrc"):
        assert read_image(placed).origin == (16.0, 32.0), placed
    capsys.readouterr()
    assert main(["denoise", str(noisy_tif), "-o", str(tmp_path / "q.tif"), "--region", "4", "20", "8", "4000", *common]) == 2
    assert "not inside" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "q.tif").exists()
    # a batch: the same region of each file; one too small for it is skipped with the reason
    small = tmp_path / "small.tif"
    tifffile.imwrite(small, np.zeros((16, 16), np.uint8))
    assert main(["denoise", str(noisy_tif), str(small), "-o", str(tmp_path / "b"), "--region", "4", "20", "8", "40",
                 *common]) == 2
    assert "not inside the image's 16 rows" in capsys.readouterr().err
    assert np.array_equal(read_image(tmp_path / "b" / "noisy.tif").data, want.mean) and not (tmp_path / "b" / "small.tif").exists()


def test_voxel_size_replaces_the_files_and_says_so(tmp_path, noisy_tif, tiny_model_dir, capsys):
    out = tmp_path / "out.tif"
    assert main(["denoise", str(noisy_tif), "-o", str(out), "--model", str(tiny_model_dir), *FAST, "--voxel-size", "2.5"]) == 0
    assert read_image(out).spacing == (2.5, 2.5)
    assert "--voxel-size replaces the file's 4 x 4 nm" in capsys.readouterr().err
    assert main(["denoise", str(noisy_tif), "-o", str(out), "--voxel-size", "0"]) == 2  # argparse: not positive


def test_info_says_what_will_be_read(tmp_path, capsys):
    import mrcfile

    vol = tmp_path / "stack.rec"
    with mrcfile.new(vol) as m:
        m.set_data(np.zeros((4, 16, 12), np.int16))
        m.voxel_size = (40.0, 40.0, 500.0)  # 4 nm pixels, 50 nm sections
    near = tmp_path / "near.tif"
    tifffile.imwrite(near, np.zeros((3, 8, 8), np.uint8), imagej=True, resolution=(1 / 4.0, 1 / 4.0),
                     metadata={"unit": "nm", "axes": "ZYX", "spacing": 4.2})
    rc = main(["info", str(vol), str(near), str(tmp_path / "missing.tif")])
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert rc == 2 and "1 of 3 inputs could not be read" in captured.err and "missing.tif" in captured.err
    assert lines[0] == f"{vol}: 4 x 16 x 12 int16, axes ZYX, 50 x 4 x 4 nm; isotropic factor 12"
    assert lines[1].startswith(f"{near}: 3 x 8 x 8 uint8") and "no isotropic factor" in lines[1]
    assert "apart" not in lines[0] + lines[1]  # slices too small to compare: nothing said
    # a stack of alike slices, and one of unrelated slices: whether denoising averages along z
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    same = 128 + 400 * gaussian_filter(rng.normal(size=(48, 48)), 3) + rng.normal(0, 10, (6, 48, 48))
    other = 128 + 400 * gaussian_filter(rng.normal(size=(6, 48, 48)), (0, 3, 3)) + rng.normal(0, 10, (6, 48, 48))
    tifffile.imwrite(tmp_path / "fib.tif", np.clip(same, 0, 255).astype(np.uint8))
    tifffile.imwrite(tmp_path / "sstem.tif", np.clip(other, 0, 255).astype(np.uint8))
    assert main(["info", str(tmp_path / "fib.tif"), str(tmp_path / "sstem.tif")]) == 0
    fib, sstem = capsys.readouterr().out.strip().splitlines()
    assert "its slices look" in fib and "within the 1.5 px" in fib and "beyond the 1.5 px" in sstem
    # big-endian data (mrcfile keeps the byte order): numpy's '>f4' is float32 to a user
    from napari_emdiffuse.engine.io.images import read_image
    big = tmp_path / "big.mrc"
    with mrcfile.new(big) as m:
        m.set_data(np.zeros((8, 8), ">f4"))
    assert read_image(big).data.dtype.str == ">f4"  # the control: the file really is big-endian
    assert main(["info", str(big)]) == 0
    assert capsys.readouterr().out.startswith(f"{big}: 8 x 8 float32,")


def test_a_tiff_stack_runs_on_a_local_cluster_into_zarr(tmp_path, tiny_model_dir, capsys):
    """--workers takes any input (staged for the workers), writes zarr, or a file through a
    store they fill (a precomputed folder written from it by the workers too), and prints what
    emdiffuse says, not dask's logs."""
    import zarr

    stack = (np.random.default_rng(2).random((3, 40, 48)) * 255).astype(np.uint8)
    src = tmp_path / "stack.tif"
    tifffile.imwrite(src, stack)
    common = ["--model", str(tiny_model_dir), "--z-filter", "off", *FAST]
    assert main(["denoise", str(src), "-o", str(tmp_path / "one.tif"), *common]) == 0
    run = run_cli("denoise", str(src), "-o", str(tmp_path / "two.zarr"), "--workers", "1", *common)
    assert run.returncode == 0 and "distributed" not in run.stderr  # no scheduler or nanny chatter
    assert "emdiffuse: copying the input into a zarr store the workers read" in run.stderr
    two = zarr.open_array(str(tmp_path / "two.zarr"), mode="r")[:]
    one = tifffile.imread(tmp_path / "one.tif")
    assert two.shape == stack.shape and np.abs(two.astype(int) - one.astype(int)).max() <= 1
    assert not list(tmp_path.glob(".two.zarr.work-*"))  # the staged copy is gone
    # a file output: the workers fill a hidden store beside it, which is then written into it and removed
    run = run_cli("denoise", str(src), "-o", str(tmp_path / "three.precomputed"), "--workers", "1", *common)
    assert run.returncode == 0 and "the workers write zarr stores; it goes through a temporary .zarr" in run.stderr
    assert "from which they then write it, scale by scale" in run.stderr  # the workers write the folder too
    three = np.asarray(read_image(tmp_path / "three.precomputed").data[:])
    assert np.abs(three.astype(int) - one.astype(int)).max() <= 1
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no store, no staged copy
    capsys.readouterr()
    assert main(["denoise", str(src), "-o", f"local://{tmp_path}/b/x.tif", "--scheduler", "tcp://127.0.0.1:9",
                 *common]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("write x.zarr there, then 'emdiffuse convert x.zarr -o x.tif'"), err


def test_a_volume_made_on_workers_goes_into_precomputed_with_a_tiff_uncertainty(tmp_path, capsys):
    """isotropic --workers into a .precomputed folder (written by the workers from their store)
    with its uncertainty as a TIFF (written here): the pixels and voxel size of the run in one
    process, nothing hidden left."""
    from napari_emdiffuse.engine.io.images import read_image

    vol = (np.random.default_rng(4).random((3, 48, 40)) * 255).astype(np.uint8)
    src = tmp_path / "vol.tif"
    tifffile.imwrite(src, vol)
    common = ["--factor", "2", "--voxel-size", "20", "10", "10", "--device", "cpu"]
    assert main(["isotropic", str(src), "-o", str(tmp_path / "one.tif"), "--uncertainty", str(tmp_path / "sd1.tif"),
                 *common]) == 0
    run = run_cli("isotropic", str(src), "-o", str(tmp_path / "two.precomputed"), "--uncertainty",
                  str(tmp_path / "sd2.tif"), "--workers", "1", *common)
    assert run.returncode == 0, run.stderr
    assert "from which they then write it, scale by scale" in run.stderr
    one, two = read_image(tmp_path / "one.tif"), read_image(tmp_path / "two.precomputed")
    assert np.array_equal(np.asarray(two.data[:]), np.asarray(one.data))
    assert two.spacing == one.spacing == (10.0, 10.0, 10.0)
    sd1, sd2 = tifffile.imread(tmp_path / "sd1.tif"), tifffile.imread(tmp_path / "sd2.tif")
    assert sd2.shape == sd1.shape == (5, 48, 40) and np.allclose(sd2, sd1, atol=1e-3) and sd1.max() > 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_batch_runs_its_files_side_by_side_on_local_workers(tmp_path, tiny_model_dir):
    """--workers with a batch: each file a task, written as the batch in one process writes it
    (names, uncertainty folder, pixel size), a broken file skipped with its reason (exit 2),
    dask quiet; isotropic volumes too, each at its own factor; a model for another task is
    refused before any worker starts."""
    from napari_emdiffuse.engine.io.images import read_image, write_image

    rng = np.random.default_rng(6)
    src = tmp_path / "tiles"
    src.mkdir()
    for k in range(3):
        write_image(src / f"t{k}.tif", (rng.random((40, 48)) * 255).astype(np.uint8), spacing=(4.0, 4.0))
    (src / "broken.tif").write_bytes(b"II*\x00 not a tiff")
    common = ["--model", str(tiny_model_dir), "--samples", "2", *FAST]
    assert main(["denoise", str(src), "-o", str(tmp_path / "one"), *common]) == 2
    run = run_cli("denoise", str(src), "-o", str(tmp_path / "two"), "--uncertainty", str(tmp_path / "two" / "sd"),
                  "--workers", "2", *common)
    assert run.returncode == 2 and "distributed" not in run.stderr and "Traceback" not in run.stderr
    assert "4 files on 2 local workers" in run.stderr and "skipped" in run.stderr and "broken.tif" in run.stderr
    two = tmp_path / "two"
    assert sorted(p.name for p in two.iterdir()) == ["sd", "t0.tif", "t1.tif", "t2.tif"]  # no work folder left
    assert sorted(p.name for p in (two / "sd").iterdir()) == [f"t{k}_uncertainty.tif" for k in range(3)]
    for k in range(3):
        one, got = read_image(tmp_path / "one" / f"t{k}.tif"), read_image(two / f"t{k}.tif")
        assert got.spacing == (4.0, 4.0) and np.abs(got.data.astype(int) - one.data.astype(int)).max() <= 1
    # volumes: the bundled model for each one's factor, on the workers
    vols = tmp_path / "vols"
    vols.mkdir()
    a = rng.integers(0, 255, (3, 32, 32)).astype(np.uint8)
    write_image(vols / "a.tif", a, spacing=(30.0, 10.0, 10.0), axes="ZYX")
    write_image(vols / "b.tif", a, spacing=(20.0, 10.0, 10.0), axes="ZYX")
    run = run_cli("isotropic", str(vols), "-o", f"{tmp_path / 'iso'}/", "--workers", "2", "--device", "cpu")
    assert run.returncode == 0, run.stderr
    assert [read_image(tmp_path / "iso" / n).data.shape for n in ("a.tif", "b.tif")] == [(7, 32, 32), (5, 32, 32)]
    assert np.array_equal(read_image(tmp_path / "iso" / "a.tif").data[::3], a)
    # a denoising model given to super-resolve: refused before any worker starts
    run = run_cli("super-resolve", str(src / "t0.tif"), str(src / "t1.tif"), "-o", str(tmp_path / "sr"),
                  "--model", str(tiny_model_dir), "--workers", "2", "--device", "cpu")
    assert run.returncode == 2 and "local workers" not in run.stderr
    assert "made for denoise" in run.stderr.strip().splitlines()[-1] and not (tmp_path / "sr").exists()


def test_resume_keeps_a_zarr_run_and_is_refused_elsewhere(tmp_path, noisy_tif, tiny_model_dir, capsys, monkeypatch):
    model = ["--model", str(tiny_model_dir), *FAST]
    out = tmp_path / "out.zarr"
    assert main(["denoise", str(noisy_tif), "-o", str(out), "--resume", *model]) == 0
    assert "resumable: if this run stops, its finished blocks stay in" in capsys.readouterr().err
    assert zarr.open_array(str(out), mode="r").shape == (40, 56)
    # a TIFF output that fits in memory: written when complete, nothing to keep, and it says so
    assert main(["denoise", str(noisy_tif), "-o", str(tmp_path / "o.tif"), "--resume", *model]) == 0
    assert "--resume keeps nothing of it" in capsys.readouterr().err and (tmp_path / "o.tif").exists()

    # a batch: the files whose outputs exist are left out
    folder = tmp_path / "batch"
    folder.mkdir()
    for name in ("a.tif", "b.tif", "c.tif"):
        tifffile.imwrite(folder / name, tifffile.imread(noisy_tif))
    done = tmp_path / "done"
    done.mkdir()
    tifffile.imwrite(done / "b.tif", np.zeros((40, 56), np.uint8))  # as an earlier run left it
    assert main(["denoise", str(folder), "-o", str(done), "--resume", *model]) == 0
    err = capsys.readouterr().err
    assert "resuming: 1 of 3 files were restored by an earlier run; 2 to do" in err
    assert "b.tif" not in err.split("to do")[1] and not tifffile.imread(done / "b.tif").any()
    assert tifffile.imread(done / "a.tif").any() and tifffile.imread(done / "c.tif").any()
    assert main(["denoise", str(folder), "-o", str(done), "--resume", *model]) == 0
    assert "3 of 3 files were restored by an earlier run" in capsys.readouterr().err

    def stopped(*args, **kwargs):
        yield from ()
        raise KeyboardInterrupt

    import napari_emdiffuse.api as api

    monkeypatch.setattr(api, "restore_to_zarr_iter", stopped)
    assert main(["denoise", str(noisy_tif), "-o", str(tmp_path / "b.zarr"), "--resume", *model]) == 130
    assert "run the same command again to continue" in capsys.readouterr().err
    assert main(["denoise", str(noisy_tif), "-o", str(tmp_path / "c.zarr"), *model]) == 130
    assert "run the same command" not in capsys.readouterr().err  # without --resume nothing is kept


def test_an_ome_zarr_output_gets_its_pyramid(tmp_path, noisy_tif, tiny_model_dir, capsys, monkeypatch):
    from napari_emdiffuse.engine.io import pyramid

    monkeypatch.setattr(pyramid, "PYRAMID_TOP", 16)
    out = tmp_path / "clean.ome.zarr"
    assert main(["denoise", str(noisy_tif), "-o", str(out), "--model", str(tiny_model_dir), *FAST]) == 0
    assert "adding the multiscale pyramid of 'clean.ome.zarr'" in capsys.readouterr().err
    group = zarr.open_group(str(out), mode="r")
    assert [group[k].shape for k in ("0", "1", "2")] == [(40, 56), (20, 28), (10, 14)]
    assert group.attrs["multiscales"][0]["datasets"][2]["coordinateTransformations"][0]["scale"] == [16.0, 16.0]
    assert main(["info", str(out)]) == 0
    assert "40 x 56 uint8" in (got := capsys.readouterr().out) and "OME-Zarr, 3 levels" in got


def test_a_tczyx_ome_zarr_input_restores_as_zyx(tmp_path, tiny_model_dir, capsys):
    """The layout that bioformats2raw writes (a single T and C in front of ZYX) is read as a ZYX
    stack with its voxel size, and the output is ZYX."""
    from tests.conftest import write_tczyx_ome

    stack = (np.random.default_rng(3).random((3, 40, 48)) * 255).astype(np.uint8)
    src = write_tczyx_ome(tmp_path / "in.ome.zarr", stack, version="0.5")
    assert main(["info", str(src)]) == 0
    assert capsys.readouterr().out.startswith(f"{src}: 3 x 40 x 48 uint8, axes ZYX, 40 x 8 x 8 nm")
    out = tmp_path / "out.zarr"
    assert main(["denoise", str(src), "-o", str(out), "--model", str(tiny_model_dir), "--z-filter", "off", *FAST]) == 0
    got = read_image(out)
    assert got.data.shape == (3, 40, 48) and got.spacing == (40.0, 8.0, 8.0)
    ref = tmp_path / "ref.tif"
    tifffile.imwrite(ref, stack)
    assert main(["denoise", str(ref), "-o", str(tmp_path / "ref_out.tif"), "--model", str(tiny_model_dir),
                 "--z-filter", "off", *FAST]) == 0  # fmt: skip
    assert np.array_equal(got.data[...], tifffile.imread(tmp_path / "ref_out.tif"))


def test_info_shows_an_unfinished_resumable_run(tmp_path, tiny_model_dir, capsys):
    from napari_emdiffuse.api import restore_to_zarr_iter
    from napari_emdiffuse.engine.events import Progress

    img = (np.random.default_rng(0).random((2, 64, 64)) * 255).astype(np.uint8)
    out = tmp_path / "out.zarr"
    gen = restore_to_zarr_iter(img, out, "denoise", str(tiny_model_dir), resume=True, block=32, steps=2, tile=32,
                               overlap=8, device="cpu", z_filter="off")  # fmt: skip
    for ev in gen:
        if isinstance(ev, Progress) and ev.stage == "block" and ev.done == 3:
            gen.close()
            break
    assert main(["info", str(out)]) == 0  # no output yet: only the run that stopped
    got = capsys.readouterr().out
    assert "unfinished resumable run in" in got and "3 of 8 blocks done" in got
    assert main(["info", str(tmp_path / "none.zarr")]) == 2  # neither: cannot be read


def test_info_json_gives_one_record_per_input_for_scripts(tmp_path, capsys):
    from napari_emdiffuse.engine.io.images import write_image

    vol = np.zeros((4, 16, 16), np.uint8)
    write_image(tmp_path / "vol.tif", vol, spacing=(40.0, 8.0, 8.0), axes="ZYX")
    rc = main(["info", "--json", str(tmp_path / "vol.tif"), str(tmp_path / "missing.tif")])
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rc == 2 and len(out) == 2
    assert out[0] == {"path": str(tmp_path / "vol.tif"), "shape": [4, 16, 16], "dtype": "uint8", "axes": "ZYX",
                      "spacing": [40.0, 8.0, 8.0], "unit": "nm", "note": None, "source": "ImageJ metadata",
                      "isotropic_factor": 5, "bytes": 1024, "origin": None}  # fmt: skip
    assert out[1]["path"].endswith("missing.tif") and "file not found" in out[1]["error"]


def test_a_listing_piped_into_a_reader_that_stops_early_ends_quietly(monkeypatch, capsys):
    """`emdiffuse models | head -1`: the pipe closes under the listing; no traceback, status 0."""

    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["models"]) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_convert_writes_any_input_with_its_pixel_size(tmp_path, capsys):
    """A calibrated TIFF for Fiji from a file it cannot open with its scale; a zarr stack copied
    into MRC slice by slice; bad requests refused in one line."""
    import zarr

    from napari_emdiffuse.engine.io.images import read_image, write_image

    vol = (np.random.default_rng(4).random((3, 20, 24)) * 255).astype(np.uint8)
    write_image(tmp_path / "vol.zarr", vol, spacing=(40.0, 5.0, 5.0))
    assert isinstance(read_image(tmp_path / "vol.zarr").data, zarr.Array)  # lazy: the MRC is written slice by slice
    assert main(["convert", str(tmp_path / "vol.zarr"), "-o", str(tmp_path / "vol.mrc")]) == 0
    got = read_image(tmp_path / "vol.mrc")
    assert np.array_equal(np.asarray(got.data), vol) and got.spacing == pytest.approx((40.0, 5.0, 5.0))
    err = capsys.readouterr().err
    assert "wrote" in err and "writing: 100%" in err and "3/3" in err  # a bar over the slices
    assert main(["convert", str(tmp_path / "vol.mrc"), "-o", str(tmp_path / "slab.tif"), "--voxel-size", "50", "5", "5"]) == 0
    assert read_image(tmp_path / "slab.tif").spacing == (50.0, 5.0, 5.0)
    assert "writing" not in capsys.readouterr().err  # in memory: written at once, no bar
    big = np.tile(vol, (1, 30, 30))  # 3 x 600 x 720: an OME-Zarr store with levels below
    write_image(tmp_path / "big.zarr", big, spacing=(40.0, 5.0, 5.0))
    assert main(["convert", str(tmp_path / "big.zarr"), "-o", str(tmp_path / "big.ome.zarr")]) == 0
    err = capsys.readouterr().err
    assert "writing: 100%" in err and "pyramid" in err  # a zarr store from a lazy input: its rows, then its levels
    assert np.array_equal(np.asarray(read_image(tmp_path / "big.ome.zarr").data), big)
    # a folder: each file into the format --to names, in the output folder
    session = tmp_path / "session"
    session.mkdir()
    for name in ("slab.tif", "vol.mrc"):
        (session / name).write_bytes((tmp_path / name).read_bytes())
    assert main(["convert", str(session), "-o", str(tmp_path / "zarrs"), "--to", ".zarr"]) == 0
    assert sorted(p.name for p in (tmp_path / "zarrs").iterdir()) == ["slab.zarr", "vol.zarr"]
    assert read_image(tmp_path / "zarrs" / "vol.zarr").spacing == pytest.approx((40.0, 5.0, 5.0))
    capsys.readouterr()
    for argv, needle in ((["convert", str(tmp_path / "slab.tif"), "-o", str(tmp_path / "slab.tif")], "is the input file"),
                         (["convert", str(tmp_path / "slab.tif"), "-o", str(tmp_path / "slab.png")], "png"),
                         (["convert", str(tmp_path / "none.tif"), "-o", str(tmp_path / "x.tif")], "not found")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(int(__import__("zarr").__version__.split(".")[0]) < 3, reason="zarr format 3 needs zarr-python 3")
def test_zarr_format_3_from_the_command_line(tmp_path, capsys, tiny_model_dir):
    """--zarr-format 3: a restoration and a conversion into sharded zarr v3 (OME-Zarr 0.5),
    the same pixels as format 2; a TIFF output with it is refused in one line, exit 2."""
    import zarr

    from napari_emdiffuse.engine.io.images import write_image

    vol = (np.random.default_rng(4).random((2, 40, 48)) * 255).astype(np.uint8)
    write_image(tmp_path / "vol.tif", vol, spacing=(40.0, 5.0, 5.0))
    base = ["denoise", str(tmp_path / "vol.tif"), "--model", str(tiny_model_dir), "--steps", "2", "--device", "cpu"]
    assert main([*base, "-o", str(tmp_path / "v2.zarr")]) == 0
    assert main([*base, "-o", str(tmp_path / "v3.ome.zarr"), "--zarr-format", "3"]) == 0
    g = zarr.open_group(str(tmp_path / "v3.ome.zarr"), mode="r")
    assert g["0"].metadata.zarr_format == 3 and g.attrs["ome"]["version"] == "0.5"
    assert np.array_equal(g["0"][:], zarr.open_array(str(tmp_path / "v2.zarr"), mode="r")[:])
    capsys.readouterr()
    assert main(["info", str(tmp_path / "v3.ome.zarr"), str(tmp_path / "v2.zarr")]) == 0
    v3_line, v2_line = capsys.readouterr().out.strip().splitlines()
    assert "; zarr v3, shards of 1 x 40 x 48 in chunks of 1 x 40 x 48" in v3_line and "zarr v3" not in v2_line
    assert main(["convert", str(tmp_path / "vol.tif"), "-o", str(tmp_path / "c.zarr"), "--zarr-format", "3"]) == 0
    c = zarr.open_array(str(tmp_path / "c.zarr"), mode="r")
    assert c.metadata.zarr_format == 3 and c.shards == (1, 40, 48) and np.array_equal(c[:], vol)
    capsys.readouterr()
    batch = ["denoise", str(tmp_path / "vol.tif"), str(tmp_path / "vol.tif"), "-o", str(tmp_path / "many")]
    for argv, needle in (([*base, "-o", str(tmp_path / "o.tif"), "--zarr-format", "3"], "'o.tif' is not one"),
                         ([*base, "-o", str(tmp_path / "o.zarr"), "--zarr-format", "4"], "invalid choice"),
                         ([*batch, "--zarr-format", "3"], "add --to .zarr (or .ome.zarr) for a batch"),
                         (["convert", str(tmp_path / "vol.tif"), str(tmp_path / "vol.tif"), "-o", str(tmp_path / "many"),
                           "--zarr-format", "3"], "add --to .zarr")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.tif").exists() and not (tmp_path / "o.zarr").exists() and not (tmp_path / "many").exists()


def test_ctrl_c_while_convert_writes_a_stack_leaves_nothing(tmp_path, capsys, monkeypatch):
    """Ctrl-C while a lazy stack is copied into a TIFF slice by slice: exit 130, "no output
    written", and neither the file nor a hidden partial of it; the control, the same command
    left alone, writes the file."""
    from napari_emdiffuse.engine.io import tiff
    from napari_emdiffuse.engine.io.images import read_image, write_image

    vol = (np.random.default_rng(5).random((4, 20, 24)) * 255).astype(np.uint8)
    write_image(tmp_path / "vol.zarr", vol, spacing=(40.0, 5.0, 5.0))
    real = tiff._pages

    def interrupted(stack, dtype, told):
        for z, page in enumerate(real(stack, dtype, told)):
            if z == 2:
                raise KeyboardInterrupt
            yield page

    monkeypatch.setattr(tiff, "_pages", interrupted)
    argv = ["convert", str(tmp_path / "vol.zarr"), "-o", str(tmp_path / "out.tif")]
    assert main(argv) == 130
    assert "interrupted; no output written" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vol.zarr"]
    monkeypatch.setattr(tiff, "_pages", real)
    assert main(argv) == 0 and np.array_equal(np.asarray(read_image(tmp_path / "out.tif").data), vol)


def test_convert_bin_averages_blocks_and_scales_the_pixel_size(tmp_path, capsys):
    import zarr

    from napari_emdiffuse.engine.io.images import read_image, write_image

    vol = (np.random.default_rng(8).random((2, 21, 30)) * 255).astype(np.uint8)
    write_image(tmp_path / "vol.zarr", vol, spacing=(40.0, 2.0, 2.0))
    assert main(["convert", str(tmp_path / "vol.zarr"), "-o", str(tmp_path / "bin.tif"), "--bin", "2"]) == 0
    got = read_image(tmp_path / "bin.tif")
    want = np.rint(vol[:, :20, :30].reshape(2, 10, 2, 15, 2).astype(float).mean(axis=(2, 4))).astype(np.uint8)
    assert np.array_equal(got.data, want) and got.spacing == (40.0, 4.0, 4.0)  # the odd last row dropped
    assert isinstance(read_image(tmp_path / "vol.zarr").data, zarr.Array)  # read lazily, binned lazily
    assert main(["convert", str(tmp_path / "vol.zarr"), "-o", str(tmp_path / "x.tif"), "--bin", "64"]) == 2
    assert "smaller than one 64 x 64 bin" in capsys.readouterr().err


@pytest.mark.parametrize(("nm", "said"), [(1.0, True), (4.0, False)])
def test_pixels_far_finer_than_the_model_learnt_from_get_a_note(tmp_path, capsys, nm, said):
    """The bundled denoiser learnt from 3.3-16 nm pixels (its card's pixel_size_nm 3.3); at 2 nm
    and below smooth structures come out worse than a Gaussian's, and the note says what to do."""
    import tifffile

    image = (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "in.tif", image, imagej=True, resolution=(1 / nm, 1 / nm), metadata={"unit": "nm"})
    assert main(["denoise", str(tmp_path / "in.tif"), "-o", str(tmp_path / "out.tif"), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert ("pixels of 1 nm are much finer than the 3.3 nm the model learnt from" in err) == said
    assert ("convert --bin 2" in err) == said


def test_models_says_when_a_user_model_s_name_is_taken(tmp_path, capsys):
    """A user model named as a bundled one is listed as reachable by its path only, since
    --model NAME loads the bundled one."""
    from napari_emdiffuse.engine.models.registry import load_model, register_model

    from tests.conftest import make_tiny

    mine = make_tiny("denoise")
    mine.card = mine.card.model_copy(update={"name": "demo-denoise"})
    register_model(mine.save(tmp_path / "mine"))
    assert main(["models", "--task", "denoise"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("demo-denoise ")]
    assert len(rows) == 2 and " bundled " in rows[0] and "(name taken: --model PATH)" in rows[1]
    assert str(tmp_path / "mine") in rows[1]
    assert load_model("demo-denoise").card.network != mine.card.network  # the bundled one
