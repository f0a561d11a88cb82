"""Predict, then refine: the refiner's card and weights, its training, and its sampling
around the predictor's mean (closed form with a refiner whose answer is known)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_emdiffuse.api import load_model, restore, train
from napari_emdiffuse.engine.errors import EMDiffuseError
from napari_emdiffuse.engine.models.cards import RefinerCard, UNetConfig
from napari_emdiffuse.engine.models.factory import create_model
from tests.engine.models.test_predictors import predictor

REF_NET = dict(inner_channel=16, channel_mults=[1, 2], res_blocks=1, attn_res=[], num_head_channels=16, dropout=0.0)


class _ConstantResidual(torch.nn.Module):
    """A refiner 'UNet' whose x0 estimate is the constant ``c`` at every noise level."""

    out_channel, slice_embedding, aleatoric = 1, False, False

    def __init__(self, c: float):
        super().__init__()
        self.c = c
        self.w = torch.nn.Parameter(torch.zeros(1))  # a parameter, so the model has a device

    def forward(self, x, level):
        g = level.view(-1, 1, 1, 1).to(x)
        x_t = x[:, -1:]
        return (x_t - g.sqrt() * self.c) / (1 - g).sqrt()


def refined_predictor(task: str = "denoise", c: float | None = None, scale: float = 0.5, start: float | None = None):
    m = predictor(task, perturb=0.02)
    card = m.card.model_copy(deep=True)
    card.refiner = RefinerCard(network=UNetConfig(in_channel=3, out_channel=1, **REF_NET), residual_scale=scale,
                               steps=3, samples=2, start_log_snr=start)
    full = create_model(card, m.state_dict() | {f"refiner.{k}": v for k, v in create_model(card).refiner.state_dict().items()})
    if c is not None:
        full.refiner.denoise_fn = _ConstantResidual(c)
    return full


@pytest.mark.parametrize("task, start", [("denoise", None), ("super-resolve", None), ("denoise", 1.0)])
def test_refined_output_is_mean_plus_scaled_residual(task, start):
    img = np.random.default_rng(0).normal(0, 1, (40, 36)).astype(np.float32)
    plain = restore(img, task, refined_predictor(task, c=0.0), preset="reference", refine=False, steps=3, device="cpu")
    # balanced + refine: the few-step sampler, from the card's start level (from a zero residual)
    kw = dict(preset="balanced", refine=True, steps=3, device="cpu") if start is not None else dict(preset="reference", steps=3, device="cpu")
    if start is not None:
        plain = restore(img, task, refined_predictor(task, c=0.0), preset="balanced", device="cpu")
    zero = restore(img, task, refined_predictor(task, c=0.0, start=start), **kw)
    shift = restore(img, task, refined_predictor(task, c=0.4, scale=0.5, start=start), **kw)
    assert "refine" in zero.info and "refine" not in plain.info
    np.testing.assert_allclose(zero.mean, plain.mean, atol=1e-4)
    # c in model range is c * (hi - lo) / 2 input units: the normalisation maps [lo, hi] to [-1, 1]
    lo, hi = zero.normalisation["lo"], zero.normalisation["hi"]
    np.testing.assert_allclose(shift.mean - plain.mean, 0.4 * 0.5 * (hi - lo) / 2, rtol=1e-3)
    # identical samples add no spread: the uncertainty is the predictor's own
    np.testing.assert_allclose(zero.uncertainty, plain.uncertainty, rtol=1e-4, atol=1e-5)


def test_refiner_is_used_by_its_presets_only_and_refused_without_one():
    img = np.random.default_rng(1).normal(0, 1, (32, 32)).astype(np.float32)
    m = refined_predictor()
    assert "refine" not in restore(img, "denoise", m, device="cpu").info  # fast
    # reference: the published sampler (DDPM over the refiner's 1000-step test schedule)
    from napari_emdiffuse.engine.inference.canvas import resolve_options

    opts = resolve_options(m, torch.device("cpu"), preset="reference")
    assert (opts.refine_samples, opts.refine_steps, opts.sampler) == (2, 1000, "ddpm")
    assert resolve_options(m, torch.device("cpu"), preset="balanced").refine_samples == 0  # not in the card's presets
    assert resolve_options(m, torch.device("cpu"), preset="balanced", refine=True).refine_steps == 3  # the card's
    assert restore(img, "denoise", m, preset="reference", steps=2, device="cpu").info["refine"] == {"samples": 2, "steps": 2}
    with pytest.raises(EMDiffuseError, match="has no refiner"):
        restore(img, "denoise", predictor(), refine=True, device="cpu")


def test_model_with_refiner_saves_and_loads_one_directory(tmp_path):
    m = refined_predictor()
    path = m.save(tmp_path / "both")
    back = load_model(path, cache=False)
    assert back.card.refiner is not None and back.refiner is not None
    for k, v in m.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    assert any(k.startswith("refiner.") for k in back.state_dict())
    # the predictor alone (no refiner in its card) still loads from the same format
    assert load_model(predictor().save(tmp_path / "one"), cache=False).refiner is None


def test_training_a_refiner_keeps_the_predictor_and_records_its_scale(tmp_path, shared_data):
    base = predictor(perturb=0.02).save(tmp_path / "pred")
    clean = shared_data / "em2d" / "clean" / "microns_1.tif"
    out = train(
        dict(task="denoise", base=str(base), refiner={"network": REF_NET, "samples": 2, "steps": 2},
             clean=[{"path": str(clean), "y": "0:160", "x": "0:160"}], out=tmp_path / "refined", iterations=4,
             patch=32, batch=2, val_every=2, val_crops=2, lr=1e-3, device="cpu", doses=[50.0])
    )  # fmt: skip
    m = load_model(out, cache=False)
    b = load_model(base, cache=False)
    assert m.card.kind == "regression" and m.card.refiner is not None
    assert m.card.refiner.residual_scale > 0
    assert {"psnr", "psnr_mean", "spread_corr"} <= set(m.card.refiner.metrics)
    for k, v in b.state_dict().items():  # the predictor is frozen
        assert torch.equal(m.state_dict()[k], v), k
    img = np.random.default_rng(2).normal(100, 20, (40, 40)).astype(np.float32)
    res = restore(img, "denoise", m, preset="reference", steps=2, device="cpu")
    assert res.mean.shape == img.shape and np.isfinite(res.mean).all() and res.uncertainty is not None
    with pytest.raises(EMDiffuseError, match="refiner is trained"):
        train(dict(task="denoise", kind="diffusion", refiner={}, clean=[str(clean)], out=tmp_path / "x"))


def test_one_recipe_trains_the_predictor_then_its_refiner(tmp_path, shared_data):
    clean = shared_data / "em2d" / "clean" / "microns_1.tif"
    out = train(
        dict(task="denoise", kind="regression", network={**REF_NET, "aleatoric": True, "residual": True},
             refiner={"network": REF_NET, "samples": 2, "steps": 2, "iterations": 2, "lr": 1e-3},
             clean=[{"path": str(clean), "y": "0:160", "x": "0:160"}], out=tmp_path / "both", iterations=3,
             patch=32, batch=2, val_every=3, val_crops=2, lr=1e-3, device="cpu", doses=[50.0])
    )  # fmt: skip
    m = load_model(out, cache=False)
    assert m.card.training["iterations"] == 3 and m.card.refiner.training["iterations"] == 2
    assert m.refiner is not None
