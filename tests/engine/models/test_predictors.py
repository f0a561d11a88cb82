"""Predictors (kind regression, residual, aleatoric): closed-form behaviour of an untrained
residual network, the decoupled loss, the mirror ensemble and the combined uncertainty."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_emdiffuse.engine.core.losses import mean_var_loss, mse_var_loss
from napari_emdiffuse.engine.core.networks.regression import RegressionUNet, residual_base
from napari_emdiffuse.engine.models.cards import ModelCard, Normalisation, UNetConfig
from napari_emdiffuse.engine.models.factory import create_model
from napari_emdiffuse.engine.inference.canvas import combined_std
from napari_emdiffuse.api import reconstruct_isotropic, restore

NET = dict(inner_channel=16, channel_mults=[1, 2], res_blocks=1, attn_res=[], num_head_channels=16, dropout=0.0)


def predictor(task: str = "denoise", *, out_channel: int = 1, residual: bool = True, aleatoric: bool = True,
              perturb: float = 0.0, gap_depth: bool = False):
    iso = task.startswith("isotropic")
    card = ModelCard(
        name=f"pred-{task}", task=task, kind="regression",
        network=UNetConfig(in_channel=2 if iso else 1, out_channel=out_channel, residual=residual,
                           aleatoric=aleatoric, gap_depth=gap_depth, **NET),
        normalisation=Normalisation(), scale=2 if task == "super-resolve" else 1,
        z_factor=out_channel + 1 if iso and not gap_depth else None, tile=32, overlap=8,
    )
    torch.manual_seed(0)
    m = create_model(card)
    if perturb:
        with torch.no_grad():
            for p in m.module.parameters():
                if p.abs().sum() == 0:
                    p.normal_(0, perturb)
    m.module.eval()
    return m


def test_residual_base_closed_form():
    x = torch.stack([torch.zeros(3, 3), torch.full((3, 3), 6.0)])[None]
    assert residual_base(x, 2)[0, :, 1, 1].tolist() == [2.0, 4.0]  # depths 1/3 and 2/3
    assert residual_base(x, 1)[0, 0, 0, 0].item() == 3.0
    assert torch.equal(residual_base(x[:, :1], 1), x[:, :1])
    with pytest.raises(ValueError, match="1 or 2"):
        residual_base(torch.zeros(1, 3, 4, 4), 1)


def test_untrained_residual_predictor_is_identity_without_clipping():
    """Zero-initialised output convolutions: the untrained predictor returns its base exactly,
    including values far outside the normalisation's percentiles (nothing is clipped)."""
    rng = np.random.default_rng(0)
    img = rng.normal(1000, 50, (48, 40)).astype(np.float32)
    img[5, 5], img[30, 20] = -4000.0, 9000.0  # far outside the 0.5-99.5 percentile range
    res = restore(img, "denoise", predictor(), device="cpu")
    np.testing.assert_allclose(res.mean, img, rtol=1e-5, atol=1e-2)
    # the control: the same network without the residual connection returns a constant
    flat = restore(img, "denoise", predictor(residual=False), device="cpu").mean
    assert np.abs(flat - img).max() > 100


def test_untrained_sr_predictor_returns_bicubic():
    img = (np.random.default_rng(1).random((24, 20)) * 200 + 20).astype(np.float32)
    res = restore(img, "super-resolve", predictor("super-resolve"), device="cpu")
    up = torch.nn.functional.interpolate(torch.from_numpy(img)[None, None], scale_factor=2, mode="bicubic",
                                         align_corners=False)[0, 0].numpy()
    assert res.mean.shape == (48, 40)
    np.testing.assert_allclose(res.mean, up, rtol=1e-4, atol=1e-2)


def test_isotropic_predictor_gives_each_slice_its_channel():
    """Factor 3: the untrained predictor returns the linear interpolation at 1/3 and 2/3."""
    rng = np.random.default_rng(2)
    vol = rng.uniform(0, 1000, (3, 32, 32)).astype(np.float32)
    res = reconstruct_isotropic(vol, 3, predictor("isotropic-i", out_channel=2), device="cpu")
    assert res.volume.shape == (7, 32, 32)
    for z in range(2):
        lo, hi = vol[z], vol[z + 1]
        np.testing.assert_allclose(res.volume[3 * z + 1], lo + (hi - lo) / 3, rtol=1e-4, atol=0.05)
        np.testing.assert_allclose(res.volume[3 * z + 2], lo + 2 * (hi - lo) / 3, rtol=1e-4, atol=0.05)
    np.testing.assert_array_equal(res.volume[::3], vol)
    with pytest.raises(Exception, match="give factor 3"):
        reconstruct_isotropic(vol, 2, predictor("isotropic-i", out_channel=2), device="cpu")


def test_gap_depth_predictor_serves_every_factor():
    """One network, any factor: untrained, it returns the linear interpolation at depth j/f."""
    rng = np.random.default_rng(3)
    vol = rng.uniform(0, 1000, (3, 32, 32)).astype(np.float32)
    m = predictor("isotropic-i", gap_depth=True)
    for f in (2, 4, 5):
        res = reconstruct_isotropic(vol, f, m, device="cpu", uncertainty=True)
        assert res.volume.shape == (2 * f + 1, 32, 32) and res.uncertainty.shape == res.volume.shape
        np.testing.assert_array_equal(res.volume[::f], vol)
        for z in range(2):
            lo, hi = vol[z], vol[z + 1]
            for j in range(1, f):
                np.testing.assert_allclose(res.volume[f * z + j], lo + j * (hi - lo) / f, rtol=1e-4, atol=0.05)


def test_gap_depth_reaches_the_network():
    """A trained-looking (perturbed) network makes different slices at different depths, and
    each slice is what the network makes when told that depth (not its index)."""
    m = predictor("isotropic-i", gap_depth=True, perturb=0.05)
    x = torch.from_numpy(np.random.default_rng(4).uniform(-1, 1, (1, 2, 32, 32)).astype(np.float32))
    with torch.no_grad():
        a, b = (m.module(x, torch.tensor([d]))[0] for d in (0.25, 0.5))
    assert (a - b).abs().max() > 1e-3
    # depth 1/2 is slice 1 of 2 and slice 2 of 4: the same slice (an index would differ)
    vol = np.random.default_rng(5).uniform(0, 1000, (2, 32, 32)).astype(np.float32)
    half = reconstruct_isotropic(vol, 2, m, device="cpu").volume[1]
    quarters = reconstruct_isotropic(vol, 4, m, device="cpu").volume
    np.testing.assert_allclose(quarters[2], half, rtol=1e-5, atol=1e-3)
    assert np.abs(quarters[1] - half).max() > 0.5  # the control: another depth, another slice
    with pytest.raises(ValueError, match="needs the depth"):
        m.module(x)
    with pytest.raises(ValueError, match="gap_depth"):
        ModelCard(name="x", task="denoise", kind="regression",
                  network=UNetConfig(in_channel=1, out_channel=1, gap_depth=True, **NET))


def test_gap_depth_uncertainty_scale_follows_the_factor():
    """uncertainty_by_factor {2: 1, 8: 4}: at factor 4 (half-way in log) the std is 2.5x that of
    the same network with scale 1 everywhere; factor 16 (beyond the end) 4x."""
    m = predictor("isotropic-i", gap_depth=True, perturb=0.05)
    vol = np.random.default_rng(7).uniform(0, 1000, (2, 32, 32)).astype(np.float32)
    stds = {}
    for name, table in (("flat", {2: 1.0, 8: 1.0}), ("rising", {2: 1.0, 8: 4.0})):
        m.card.uncertainty_by_factor = table
        stds[name] = {f: reconstruct_isotropic(vol, f, m, device="cpu", uncertainty=True).uncertainty for f in (4, 16)}
    for f, ratio in ((4, 2.5), (16, 4.0)):
        new = np.arange(stds["flat"][f].shape[0]) % f != 0
        np.testing.assert_allclose(stds["rising"][f][new], ratio * stds["flat"][f][new], rtol=1e-3, atol=1e-3)
        assert stds["flat"][f][new].mean() > 0.1
    with pytest.raises(ValueError, match="uncertainty_by_factor belongs"):
        ModelCard(name="x", task="denoise", kind="regression", uncertainty_by_factor={3: 1.0},
                  network=UNetConfig(in_channel=1, out_channel=1, **NET))


@pytest.mark.parametrize("gap_depth", [False, True])
def test_balanced_isotropic_predictor_averages_the_mirrored_views(gap_depth):
    """balanced = the mean of fast run on the volume mirrored left-right, up-down and both,
    each flipped back (one 32-px tile: no padding, so the views are exact mirror images)."""
    m = predictor("isotropic-i", out_channel=1 if gap_depth else 2, gap_depth=gap_depth, perturb=0.05)
    vol = np.random.default_rng(6).uniform(0, 1000, (2, 32, 32)).astype(np.float32)
    bal = reconstruct_isotropic(vol, 3, m, preset="balanced", device="cpu").volume
    views = []
    for axes in ((), (2,), (1,), (1, 2)):
        v = np.flip(vol, axes) if axes else vol
        out = reconstruct_isotropic(np.ascontiguousarray(v), 3, m, preset="fast", device="cpu").volume
        views.append(np.flip(out, axes) if axes else out)
    np.testing.assert_allclose(bal, np.mean(views, axis=0), rtol=1e-4, atol=0.02)
    assert np.abs(views[0] - np.mean(views, axis=0)).max() > 0.1  # the control: the views differ


def test_mean_var_loss_decouples_the_mean_from_the_variance():
    target = torch.zeros(1, 1, 4, 4)
    mean = torch.full_like(target, 0.5, requires_grad=True)
    for log_var in (torch.zeros_like(target), torch.full_like(target, 3.0)):
        (g,) = torch.autograd.grad(mean_var_loss(target, mean, log_var), mean)
        np.testing.assert_allclose(g.numpy(), 2 * 0.5 / 16, rtol=1e-6)  # the MSE gradient only
    # the control: the coupled NLL down-weights the mean where the variance is large
    (g,) = torch.autograd.grad(mse_var_loss(target, mean, torch.full_like(target, 3.0)), mean)
    assert g.abs().max() < 2 * 0.5 / 16 * 0.1


def test_combined_std_law_of_total_variance():
    s = np.stack([np.zeros((2, 2)), np.full((2, 2), 2.0)])
    v = np.full((2, 2, 2), 3.0)
    np.testing.assert_allclose(combined_std(s, v), 2.0)  # sqrt(3 + 1)
    np.testing.assert_allclose(combined_std(s, None), np.sqrt(2.0))  # sample std, ddof 1
    assert combined_std(s[:1], None) is None


def test_presets_of_a_predictor():
    """fast: one pass, the aleatoric std; balanced: 4 mirrored views, averaged, wider std."""
    img = (np.random.default_rng(3).random((40, 40)) * 255).astype(np.uint8)
    m = predictor(perturb=0.05)
    fast = restore(img, "denoise", m, device="cpu")
    bal = restore(img, "denoise", m, preset="balanced", device="cpu")
    assert (fast.info["samples"], bal.info["samples"]) == (1, 4)
    assert fast.uncertainty is not None and (fast.uncertainty > 0).all()
    assert not np.array_equal(fast.mean, bal.mean)  # the perturbed network is not mirror-symmetric
    assert (bal.uncertainty >= fast.uncertainty.min() * 0.5).all()
    assert fast.mean.dtype == np.uint8


def test_regression_network_refuses_residual_with_other_inputs():
    with pytest.raises(ValueError, match="1 or 2"):
        RegressionUNet(3, 1, residual=True, **NET)


def test_uint16_through_an_8bit_range_model_uses_the_input_range():
    """A published-style card maps 0..255; a uint16 image must not come out clipped."""
    m = predictor()
    m.card.normalisation = Normalisation(mode="range", vmin=0, vmax=255)
    img = (np.random.default_rng(4).random((40, 40)) * 40000 + 1000).astype(np.uint16)
    with pytest.warns(UserWarning, match="input-range"):
        res = restore(img, "denoise", m, device="cpu")
    assert res.normalisation["mode"] == "input-range"
    assert res.mean.dtype == np.uint16
    np.testing.assert_allclose(res.mean.astype(float), img.astype(float), atol=1.0)  # the identity network
    # the control: 8-bit input keeps the fixed range, silently
    img8 = (img // 257).astype(np.uint8)
    assert restore(img8, "denoise", m, device="cpu").normalisation["mode"] == "range"


def test_bioimageio_export_validates_and_loads_back(tmp_path):
    spec = pytest.importorskip("bioimageio.spec", reason="bioimageio.spec is in the [all] extra")
    from napari_emdiffuse.cli import main
    from napari_emdiffuse.engine.models.registry import load_model

    m = predictor(perturb=0.02)
    src = m.save(tmp_path / "pred")
    out = tmp_path / "pred.zip"
    assert main(["export", str(src), "-o", str(out)]) == 0
    descr = spec.load_description(out)
    assert descr.validation_summary.status in ("valid-format", "passed"), descr.validation_summary.format()
    assert [t.id for t in descr.outputs] == ["mean", "std"]
    back = load_model(out, cache=False)
    x = torch.randn(1, 1, 32, 32)
    torch.testing.assert_close(back.module(x)[0], m.module(x)[0])
    # the control: a diffusion model is refused with one line, and nothing is written
    from tests.conftest import make_tiny

    diff = make_tiny("denoise").save(tmp_path / "diff")
    assert main(["export", str(diff), "-o", str(tmp_path / "d.zip")]) == 2
    assert not (tmp_path / "d.zip").exists()


def test_zarr_streaming_writes_the_predictors_uncertainty(tmp_path):
    import zarr

    from napari_emdiffuse.api import restore_to_zarr

    img = (np.random.default_rng(5).random((48, 40)) * 255).astype(np.uint8)
    m = predictor(perturb=0.05)
    restore_to_zarr(img, tmp_path / "o.zarr", "denoise", m, uncertainty_out=tmp_path / "u.zarr", block=32,
                    device="cpu")
    unc = zarr.open_array(str(tmp_path / "u.zarr"), mode="r")[:]
    whole = restore(img, "denoise", m, device="cpu")
    assert unc.shape == img.shape and (unc > 0).all()
    # blocks see their halo, not the whole image: equal up to the network's reach beyond it
    assert np.median(np.abs(unc - whole.uncertainty) / whole.uncertainty) < 0.02


def test_structure_term_of_the_uncertainty_closed_form():
    """uncertainty_structure w: std = sqrt(std_0**2 + w * LoG_1px(mean)**2), in input units too
    (both terms scale with the intensity); the mean does not change, flat regions keep std_0."""
    from scipy.ndimage import gaussian_filter, laplace

    rng = np.random.default_rng(0)
    img = (100.0 + rng.normal(0, 1, (48, 48))).astype(np.float32)
    img[:, 24:] += 80.0  # one vertical edge (with some texture: not taken for a fill border)
    plain = restore(img, "denoise", predictor(), device="cpu")
    m = predictor()
    m.card.uncertainty_structure = 2.0
    marked = restore(img, "denoise", m, device="cpu")
    np.testing.assert_array_equal(marked.mean, plain.mean)
    lap = laplace(gaussian_filter(plain.mean.astype(np.float64), 1.0, mode="reflect"), mode="reflect")
    expected = np.sqrt(plain.uncertainty.astype(np.float64) ** 2 + 2.0 * lap**2)
    np.testing.assert_allclose(marked.uncertainty, expected, rtol=1e-3, atol=1e-3)
    added = marked.uncertainty.astype(np.float64) ** 2 - plain.uncertainty.astype(np.float64) ** 2
    assert added[:, 23].mean() > 100 * added[:, 5].mean() > 0  # at the edge, not far from it


def test_tail_factor_of_the_uncertainty_closed_form(tmp_path):
    """uncertainty_tail t: the structure term's std times 1 + t * min(|LoG| / 0.12, 2)**2, the
    Laplacian in the model's range (the input's percentiles at +-1), so an image and the same
    image scaled 2x get the same map up to that scale; flat places keep their std, the edge
    gains; the blocks of a large image get the whole image's map."""
    import zarr
    from scipy.ndimage import gaussian_filter, laplace

    from napari_emdiffuse.api import restore_to_zarr

    rng = np.random.default_rng(0)
    img = (100.0 + rng.normal(0, 1, (48, 48))).astype(np.float32)
    img[:, 24:] += 80.0
    m = predictor()
    m.card.uncertainty_structure = 1.0
    plain = restore(img, "denoise", m, device="cpu")
    m.card.uncertainty_tail = 2.0
    tailed = restore(img, "denoise", m, device="cpu")
    np.testing.assert_array_equal(tailed.mean, plain.mean)
    half = (tailed.normalisation["hi"] - tailed.normalisation["lo"]) / 2
    lap = laplace(gaussian_filter(plain.mean.astype(np.float64), 1.0, mode="reflect"), mode="reflect") / half
    expected = plain.uncertainty * (1 + 2.0 * np.minimum(np.abs(lap) / 0.12, 2.0) ** 2)
    np.testing.assert_allclose(tailed.uncertainty, expected, rtol=1e-3, atol=1e-3)
    gain = tailed.uncertainty / plain.uncertainty
    assert gain[:, 23].mean() > 5 and gain[:, 5].mean() < 1.01  # at the edge, not far from it
    doubled = restore(img * 2, "denoise", m, device="cpu")
    np.testing.assert_allclose(doubled.uncertainty, 2 * tailed.uncertainty, rtol=1e-3, atol=1e-2)
    restore_to_zarr(img, tmp_path / "o.zarr", "denoise", m, uncertainty_out=tmp_path / "u.zarr", block=32,
                    device="cpu")
    unc = zarr.open_array(str(tmp_path / "u.zarr"), mode="r")[:]
    assert np.median(np.abs(unc - tailed.uncertainty) / tailed.uncertainty) < 0.02


def test_structure_term_is_refused_for_volumes():
    m = predictor("isotropic-i", out_channel=2)
    with pytest.raises(ValueError, match="2D restorations"):
        m.card.uncertainty_structure = 1.0
    with pytest.raises(ValueError, match="2D restorations"):
        m.card.uncertainty_tail = 1.0


def _run_package(zip_path, x: np.ndarray) -> np.ndarray:
    """What a bioimage.io consumer does: build the declared architecture, load the packaged
    weights, apply the declared preprocessing and run it (mean output)."""
    import importlib
    import io
    import zipfile

    from bioimageio.spec import load_description

    descr = load_description(zip_path)
    arch = descr.weights.pytorch_state_dict.architecture
    net = getattr(importlib.import_module(arch.import_from), str(arch.callable))(**arch.kwargs)
    with zipfile.ZipFile(zip_path) as zf:
        net.load_state_dict(torch.load(io.BytesIO(zf.read("weights.pt")), weights_only=True))
    lo, hi = np.percentile(x, [0.5, 99.5])
    with torch.no_grad():
        out = net.eval()(torch.from_numpy(((x - lo) / (hi - lo + 1e-6) * 2 - 1).astype(np.float32))[None, None])
    return out[0][0, 0].numpy() if isinstance(out, tuple) else out[0, 0].numpy()


def test_bioimageio_export_of_super_resolution_takes_the_low_resolution_image(tmp_path):
    spec = pytest.importorskip("bioimageio.spec", reason="bioimageio.spec is in the [all] extra")
    from napari_emdiffuse.cli import main

    card = ModelCard(
        name="pred-sr", task="super-resolve", kind="regression", scale=2, tile=32, overlap=8,
        network=UNetConfig(in_channel=1, residual=True, aleatoric=True, blur_level=True, **NET),
        normalisation=Normalisation(), uncertainty_structure=0.5,  # the bundled SR model's term
    )
    torch.manual_seed(0)
    m = create_model(card)
    with torch.no_grad():
        for p in m.module.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
    src = m.save(tmp_path / "sr")
    auto, fixed = tmp_path / "auto.zip", tmp_path / "fixed.zip"
    assert main(["export", str(src), "-o", str(auto)]) == 0
    assert main(["export", str(src), "-o", str(fixed), "--blur", "1.5"]) == 0
    descr = spec.load_description(auto)
    assert descr.validation_summary.status in ("valid-format", "passed"), descr.validation_summary.format()
    assert [float(a.scale) for a in descr.outputs[0].axes[2:]] == [0.5, 0.5]  # outputs are twice the input's size
    # the package reproduces the pipeline's one network pass on a whole 16x16 image
    x = np.random.default_rng(1).normal(120, 20, (16, 16)).astype(np.float32)
    cond = torch.nn.functional.interpolate(
        torch.from_numpy(((x - np.percentile(x, 0.5)) / (np.ptp(np.percentile(x, [0.5, 99.5])) + 1e-6) * 2 - 1))
        [None, None].float(), scale_factor=2, mode="bicubic", align_corners=False)
    with torch.no_grad():
        want = m.module.eval()(cond)[0][0, 0].numpy()
        want_fixed = m.module(cond, torch.tensor([1.5]))[0][0, 0].numpy()
    got = _run_package(auto, x)
    assert got.shape == (32, 32)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(_run_package(fixed, x), want_fixed, atol=1e-5)
    assert np.abs(want_fixed - want).max() > 1e-4  # the control: the fixed blur reaches the network
    # the TorchScript weights run without this package's code, at another size too
    import io
    import zipfile

    with zipfile.ZipFile(auto) as zf:
        scripted = torch.jit.load(io.BytesIO(zf.read("weights.torchscript.pt")))
    other = torch.randn(2, 1, 24, 40)
    with torch.no_grad():
        mean_ts, std_ts = scripted(other)
        mean, log_var = m.module(torch.nn.functional.interpolate(other, scale_factor=2, mode="bicubic",
                                                                 align_corners=False))
    assert mean_ts.shape == (2, 1, 48, 80)
    torch.testing.assert_close(mean_ts, mean, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(std_ts, m.card.uncertainty_scale * torch.exp(0.5 * log_var), atol=1e-5, rtol=1e-4)
    # a blur for a model that is not told one, or out of range: one line, exit 2, no package
    den = predictor(perturb=0.02).save(tmp_path / "den")
    assert main(["export", str(den), "-o", str(tmp_path / "d.zip"), "--blur", "area"]) == 2
    assert main(["export", str(src), "-o", str(tmp_path / "e.zip"), "--blur", "3"]) == 2
    assert not (tmp_path / "d.zip").exists() and not (tmp_path / "e.zip").exists()


def test_bioimageio_export_of_an_isotropic_model_takes_two_slices(tmp_path):
    """A model of one factor: two neighbouring slices in as channels, normalised together, the
    factor - 1 new slices out as channels; the package reproduces the network's pass and loads
    back as an isotropic model."""
    spec = pytest.importorskip("bioimageio.spec", reason="bioimageio.spec is in the [all] extra")
    import importlib
    import io
    import zipfile

    from napari_emdiffuse.cli import main
    from napari_emdiffuse.engine.models.registry import load_model

    m = predictor("isotropic-i", out_channel=2, perturb=0.02)
    src = m.save(tmp_path / "iso")
    out = tmp_path / "iso.zip"
    assert main(["export", str(src), "-o", str(out)]) == 0
    descr = spec.load_description(out)
    assert descr.validation_summary.status in ("valid-format", "passed"), descr.validation_summary.format()
    assert [str(n) for n in descr.inputs[0].axes[1].channel_names] == ["slice_above", "slice_below"]
    assert [str(n) for n in descr.outputs[0].axes[1].channel_names] == ["new_slice_1", "new_slice_2"]
    scaled = next(step for step in descr.inputs[0].preprocessing if step.id == "scale_range")
    assert [str(a) for a in scaled.kwargs.axes] == ["channel", "y", "x"]  # both slices together
    arch = descr.weights.pytorch_state_dict.architecture
    net = getattr(importlib.import_module(arch.import_from), str(arch.callable))(**arch.kwargs)
    with zipfile.ZipFile(out) as zf:
        net.load_state_dict(torch.load(io.BytesIO(zf.read("weights.pt")), weights_only=True))
    pair = torch.from_numpy(np.random.default_rng(2).uniform(-1, 1, (1, 2, 32, 32)).astype(np.float32))
    with torch.no_grad():
        got, want = net.eval()(pair)[0], m.module(pair)[0]
    assert got.shape == (1, 2, 32, 32)
    torch.testing.assert_close(got, want)
    back = load_model(out, cache=False)
    assert back.card.task == "isotropic-i" and back.card.z_factor == 3
    # a factor for a model of one factor: one line, exit 2, no package
    assert main(["export", str(src), "-o", str(tmp_path / "iso4.zip"), "--factor", "4"]) == 2
    assert not (tmp_path / "iso4.zip").exists()


def test_bioimageio_export_of_the_every_factor_model_makes_one_factor(tmp_path):
    """The every-factor model (told each slice's depth in the gap) exports for the factor asked:
    the package gives the factor - 1 slices in one call, each the network's pass at depth j/F,
    with the card's calibrated std for that factor; without a factor, or with one out of range,
    nothing is written."""
    spec = pytest.importorskip("bioimageio.spec", reason="bioimageio.spec is in the [all] extra")
    import importlib
    import io
    import zipfile

    from napari_emdiffuse.cli import main
    from napari_emdiffuse.engine.models.registry import load_model

    m = predictor("isotropic-i", out_channel=1, gap_depth=True, perturb=0.02)
    m.card.uncertainty_by_factor = {3: 1.5, 12: 3.0}
    src = m.save(tmp_path / "any")
    out = tmp_path / "any4.zip"
    assert main(["export", str(src), "-o", str(out), "--factor", "4"]) == 0
    descr = spec.load_description(out)
    assert descr.validation_summary.status in ("valid-format", "passed"), descr.validation_summary.format()
    assert [str(n) for n in descr.outputs[0].axes[1].channel_names] == ["new_slice_1", "new_slice_2", "new_slice_3"]
    arch = descr.weights.pytorch_state_dict.architecture
    net = getattr(importlib.import_module(arch.import_from), str(arch.callable))(**arch.kwargs)
    with zipfile.ZipFile(out) as zf:
        net.load_state_dict(torch.load(io.BytesIO(zf.read("weights.pt")), weights_only=True))
        scripted = torch.jit.load(io.BytesIO(zf.read("weights.torchscript.pt")))
    pair = torch.from_numpy(np.random.default_rng(2).uniform(-1, 1, (2, 2, 32, 40)).astype(np.float32))
    with torch.no_grad():
        mean, std = net.eval()(pair)
        passes = [m.module.eval()(pair, torch.full((2,), j / 4)) for j in (1, 2, 3)]
        mean_ts, _ = scripted(pair)
    assert mean.shape == std.shape == (2, 3, 32, 40)
    torch.testing.assert_close(mean, torch.cat([p[0] for p in passes], 1))
    scale = m.card.std_scale(4)
    assert scale == pytest.approx(1.5 + 1.5 * np.log(4 / 3) / np.log(12 / 3))  # between 3 and 12, on log factor
    torch.testing.assert_close(std, scale * torch.exp(0.5 * torch.cat([p[1] for p in passes], 1)))
    torch.testing.assert_close(mean_ts, mean, atol=1e-5, rtol=1e-4)
    assert (mean[:, 0] - mean[:, 2]).abs().max() > 1e-3  # the control: each slice at its own depth
    assert load_model(out, cache=False).card.network.gap_depth  # loads back as the every-factor model
    for extra in ([], ["--factor", "1"], ["--factor", "33"]):
        assert main(["export", str(src), "-o", str(tmp_path / "bad.zip"), *extra]) == 2
    assert not (tmp_path / "bad.zip").exists()


def test_export_without_bioimageio_spec_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    from napari_emdiffuse.cli import main

    src = predictor(perturb=0.02).save(tmp_path / "pred")
    for name in ("bioimageio", "bioimageio.spec", "bioimageio.spec.model", "bioimageio.spec.model.v0_5"):
        monkeypatch.setitem(__import__("sys").modules, name, None)  # as if not installed
    assert main(["export", str(src), "-o", str(tmp_path / "p.zip")]) == 2
    err = capsys.readouterr().err
    assert "needs bioimageio.spec" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "p.zip").exists()


def test_a_denoiser_on_other_tiles_than_it_learnt_on_says_so():
    """Per-tile normalisation: a denoising predictor's tile is its card's unless asked; asked
    otherwise, the run says what that costs. Super-resolution keeps quiet (it moved 0.02 dB)."""
    from napari_emdiffuse.api import restore_iter
    from napari_emdiffuse.engine.events import Progress

    img = (np.random.default_rng(0).random((48, 48)) * 255).astype(np.uint8)

    def notes(m, task, **kw):
        return [e.message for e in restore_iter(img, task, m, device="cpu", **kw)
                if isinstance(e, Progress) and e.stage == "note"]  # fmt: skip

    den = predictor("denoise")
    assert not any("tile" in n for n in notes(den, "denoise"))
    assert any(n.startswith("tile 48 px: this denoiser normalises its features per tile and learnt on 32 px")
               for n in notes(den, "denoise", tile=48))  # fmt: skip
    assert not any("tile" in n for n in notes(predictor("super-resolve"), "super-resolve", tile=48))
