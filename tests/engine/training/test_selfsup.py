"""Self-supervised denoising (structured blind spot) and fine-tuning that reports its base."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from scipy import ndimage as ndi

from napari_emdiffuse.engine.errors import EMDiffuseError, InputError
from napari_emdiffuse.engine.models.registry import load_model
from napari_emdiffuse.engine.training.config import TrainConfig
from napari_emdiffuse.api import finetune_iter, restore, train
from napari_emdiffuse.engine.events import drain
from napari_emdiffuse.engine.training.selfsup import blind_spot, blind_spot_loss

from tests.conftest import TINY

FAST = dict(network=TINY, patch=32, batch=2, val_crops=2, val_steps=2, device="cpu")


def test_blind_spot_hides_the_3x3_neighbourhood_with_values_from_its_ring():
    x = torch.arange(20 * 20, dtype=torch.float32).view(1, 1, 20, 20) * 7 + 1  # distinct values
    before = x.clone()
    for seed in range(500):  # a seed that puts exactly one centre well inside the image
        masked, centres = blind_spot(x, density=1 / 400, generator=torch.Generator().manual_seed(seed))
        ys, xs = torch.nonzero(centres[0, 0], as_tuple=True)
        if len(ys) == 1 and 2 <= ys[0] <= 17 and 2 <= xs[0] <= 17:
            break
    else:
        pytest.fail("no seed with a single interior centre")
    y0, x0 = int(ys[0]), int(xs[0])
    patch = x[0, 0, y0 - 2 : y0 + 3, x0 - 2 : x0 + 3]
    ring = set((patch.flatten().tolist())) - set(patch[1:4, 1:4].flatten().tolist())
    hole = masked[0, 0, y0 - 1 : y0 + 2, x0 - 1 : x0 + 2].flatten().tolist()
    # every hidden pixel shows a pixel two away from the centre (noise nearly independent of
    # the centre's), never the centre or its neighbours (noise correlated with it)
    assert all(v in ring for v in hole)
    assert int((masked != x).sum()) == 9  # the 3x3 only; everything else is the input
    assert torch.equal(x, before)  # never modifies its input
    # the loss sees the centre only: a prediction wrong elsewhere costs nothing
    pred = x.clone()
    pred[0, 0, 0, 0] += 100
    assert float(blind_spot_loss(pred, x, centres)) == 0.0
    pred[0, 0, y0, x0] += 3
    assert float(blind_spot_loss(pred, x, centres)) == pytest.approx(9.0)


def _noisy(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    clean = ndi.gaussian_filter(rng.random((96, 96)), 3)
    clean = (clean - clean.min()) / np.ptp(clean) * 200 + 20
    return (clean + rng.normal(0, 12, clean.shape)).astype(np.float32)


def test_self_supervised_finetune_reports_base_and_keeps_best(tmp_path):
    noisy = _noisy()
    net = {**TINY, "aleatoric": True, "residual": True}
    base = train(TrainConfig(task="denoise", kind="regression", inputs=[noisy], out=tmp_path / "base",
                             iterations=2, **{**FAST, "network": net}))
    events = list(finetune_iter("denoise", noisy, base=base, out=tmp_path / "ss", iterations=6, patch=32, batch=2,
                                val_crops=2, val_every=2, device="cpu", base_margin=0.0))
    path = events[-1]
    vals = [e for e in events[:-1] if e.stage == "validation"]
    assert vals[0].extra["base"] is True and vals[0].done == 0  # the base model is scored first
    assert all(v.extra["base_psnr"] == pytest.approx(vals[0].metrics["psnr"]) for v in vals[1:])
    card = load_model(path, cache=False).card
    assert card.training["objective"] == "self-supervised"
    assert card.metrics["base_psnr"] == pytest.approx(vals[0].metrics["psnr"], abs=1e-3)
    best = max(v.metrics["psnr"] for v in vals)  # the base is a candidate too
    assert card.metrics["psnr"] == pytest.approx(best, abs=1e-3)  # the best validation's weights
    assert card.metrics["best_iteration"] in {v.done for v in vals}


def test_a_finetune_that_never_beats_the_base_keeps_the_base_weights(tmp_path, capsys):
    from napari_emdiffuse.cli import main

    noisy = _noisy()
    net = {**TINY, "aleatoric": True, "residual": True}
    base = train(TrainConfig(task="denoise", kind="regression", inputs=[noisy], out=tmp_path / "base",
                             iterations=20, **{**FAST, "network": net}))
    tifffile.imwrite(tmp_path / "noisy.tif", noisy)
    # a learning rate this large wrecks the network at the first step
    argv = ["finetune", "--task", "denoise", "--input", str(tmp_path / "noisy.tif"), "--base", str(base),
            "-o", str(tmp_path / "ft"), "--iterations", "4", "--patch", "32", "--batch", "2", "--lr", "0.9",
            "--device", "cpu"]
    assert main(argv) == 0
    assert "no validation beat the base model" in capsys.readouterr().err
    tuned, original = load_model(tmp_path / "ft", cache=False), load_model(base, cache=False)
    assert tuned.card.metrics["best_iteration"] == 0
    assert tuned.card.metrics["psnr"] == pytest.approx(tuned.card.metrics["base_psnr"], abs=1e-4)
    for (k, a), b in zip(tuned.module.state_dict().items(), original.module.state_dict().values()):
        assert torch.equal(a, b), k


def test_self_supervised_needs_a_predictor(tmp_path):
    noisy = _noisy()
    diff = train(TrainConfig(task="denoise", inputs=[noisy], out=tmp_path / "diff", iterations=1, **FAST))
    with pytest.raises(EMDiffuseError, match="needs a predictor"):
        next(finetune_iter("denoise", noisy, base=diff, out=tmp_path / "x", iterations=2, patch=32, device="cpu"))
    assert not (tmp_path / "x").exists()
    with pytest.raises(EMDiffuseError, match="cannot train a super-resolve"):
        next(finetune_iter("super-resolve", noisy, base=diff, out=tmp_path / "y", objective="self-supervised",
                           iterations=2, patch=32, device="cpu"))


def test_isotropic_predictor_finetunes_to_another_factor(tmp_path):
    rng = np.random.default_rng(0)
    base_img = ndi.gaussian_filter(rng.random((60, 64)), 3).astype(np.float32)
    vol = np.stack([ndi.shift(base_img, (0.7 * z, 0.4 * z), order=1)[:48, :48] for z in range(12)])
    reg = dict(task="isotropic-i", kind="regression", volume=vol, **{**FAST, "network": {**TINY, "residual": True}})
    base = train(TrainConfig(factor=3, out=tmp_path / "iso3", iterations=2, **reg))
    out = [e for e in finetune_iter("isotropic-a", vol, base=base, out=tmp_path / "iso4", factor=4, iterations=2,
                                    patch=32, batch=2, device="cpu")][-1]
    m = load_model(out, cache=False)
    assert m.card.z_factor == 4 and m.card.network.out_channel == 3
    b = load_model(base, cache=False)
    # the body is the base's; only the output heads are new
    sb, sm = b.module.state_dict(), m.module.state_dict()
    same = [k for k in sb if sb[k].shape == sm[k].shape]
    assert len(same) > 0.8 * len(sb)


def test_isotropic_finetune_factor_comes_from_the_voxel_size(tmp_path):
    import tifffile

    rng = np.random.default_rng(1)
    base_img = ndi.gaussian_filter(rng.random((60, 64)), 3).astype(np.float32)
    vol = np.stack([ndi.shift(base_img, (0.7 * z, 0.4 * z), order=1)[:48, :48] for z in range(12)])
    net = {**TINY, "residual": True, "gap_depth": True}
    anyf = train(TrainConfig(task="isotropic-i", kind="regression", volume=vol, factor=2, max_factor=3,
                             out=tmp_path / "any", iterations=1, **{**FAST, "network": net}))
    common = dict(base=anyf, iterations=2, patch=32, batch=2, device="cpu")
    with pytest.raises(InputError, match="give the factor"):
        next(finetune_iter("isotropic-a", vol, out=tmp_path / "a", **common))
    assert not (tmp_path / "a").exists()
    path = tmp_path / "vol.tif"  # 4 nm pixels, 20 nm sections: factor 5
    tifffile.imwrite(path, vol, imagej=True, resolution=(1 / 4.0, 1 / 4.0),
                     metadata={"unit": "nm", "axes": "ZYX", "spacing": 20.0})
    out = [e for e in finetune_iter("isotropic-a", str(path), out=tmp_path / "b", **common)][-1]
    assert load_model(out, cache=False).card.training["data"]["factor"] == 5


@pytest.mark.parametrize("margin", [0.0, 10.0])
def test_the_base_is_replaced_only_by_a_validation_that_beats_it_by_the_margin(tmp_path, margin):
    noisy = _noisy()
    net = {**TINY, "aleatoric": True, "residual": True}
    base = train(TrainConfig(task="denoise", kind="regression", inputs=[noisy], out=tmp_path / "base",
                             iterations=2, **{**FAST, "network": net}))
    events = list(finetune_iter("denoise", noisy, base=base, out=tmp_path / "ft", iterations=6, patch=32, batch=2,
                                val_crops=2, val_every=2, device="cpu", base_margin=margin,
                                # every validation competes (not the route's weight mean)
                                train_layers="all", average="ema", patience=2))
    vals = [e.metrics["psnr"] for e in events[:-1] if e.stage == "validation"]
    assert vals[0] < max(vals[1:]) < vals[0] + 10  # the fine-tune beats the base, by less than 10 dB
    card = load_model(events[-1], cache=False).card
    if margin == 0.0:  # control: the best validation wins
        assert card.metrics["best_iteration"] > 0
        assert card.metrics["psnr"] == pytest.approx(max(vals), abs=1e-3)
    else:
        assert card.metrics["best_iteration"] == 0
        # patience 2: two validations (iterations 2, 4) without a gain end the run early
        assert sum(e.stage == "training" for e in events[:-1]) == 4
        assert card.metrics["psnr"] == pytest.approx(vals[0], abs=1e-3)
        original = load_model(base, cache=False)
        for (k, a), b in zip(load_model(events[-1], cache=False).module.state_dict().items(),
                             original.module.state_dict().values()):
            assert torch.equal(a, b), k


def test_the_anchor_keeps_a_self_supervised_finetune_near_its_base(tmp_path):
    """Away from the hidden pixels the anchored run's output stays at the base's; control: the
    blind spot alone moves it several times as far."""
    noisy = _noisy(1)
    net = {**TINY, "aleatoric": True, "residual": True}
    base = train(TrainConfig(task="denoise", kind="regression", inputs=[noisy], out=tmp_path / "base",
                             iterations=20, **{**FAST, "network": net}))
    before = restore(noisy, "denoise", base, device="cpu").mean
    moved = {}
    for anchor in (0.0, 1000.0):
        path = drain(finetune_iter("denoise", noisy, base=base, out=tmp_path / f"a{anchor:g}", iterations=20,
                                   patch=32, batch=2, val_crops=2, device="cpu", lr=1e-3, anchor=anchor,
                                   keep_best=False, patience=None))
        moved[anchor] = float(np.abs(restore(noisy, "denoise", path, device="cpu").mean - before).mean())
    assert moved[1000.0] < 0.3 * moved[0.0], moved


def test_the_anchor_needs_a_self_supervised_finetune():
    with pytest.raises(EMDiffuseError, match="anchor keeps a self-supervised fine-tune") as info:
        TrainConfig(task="denoise", kind="regression", inputs=[_noisy()], targets=[_noisy(1)], out="m", anchor=10.0)
    assert "\n" not in str(info.value)
