"""Blur-conditioned super-resolution: the acquisition blur reaches the network, is read off
the image when not given, is learnt from pairs whose blur is known, and is refused where it
makes no sense."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from napari_emdiffuse.api import restore
from napari_emdiffuse.engine.core.networks.blur import BLUR_MAX, READ_FLOOR, READ_SCALE, BlurEstimator, area_blur
from napari_emdiffuse.engine.errors import EMDiffuseError
from napari_emdiffuse.engine.inference.canvas import resolve_blur
from napari_emdiffuse.engine.models.cards import ModelCard, Normalisation, UNetConfig
from napari_emdiffuse.engine.models.factory import create_model
from napari_emdiffuse.engine.models.registry import load_model
from napari_emdiffuse.engine.events import drain
from napari_emdiffuse.engine.training.trainer import Trainer
from napari_emdiffuse.engine.training.data.pairs import BLUR_SIGMAS, downsample_area, downsample_gaussian, sr_data

NET = dict(inner_channel=16, channel_mults=[1, 2], res_blocks=1, attn_res=[], num_head_channels=16, dropout=0.0)


def blur_model(seed: int = 0):
    card = ModelCard(
        name="sr-blur", task="super-resolve", kind="regression", scale=2, tile=32, overlap=8,
        network=UNetConfig(in_channel=1, out_channel=1, residual=True, aleatoric=True, blur_level=True, **NET),
        normalisation=Normalisation(),
    )
    torch.manual_seed(seed)
    m = create_model(card)
    with torch.no_grad():  # zero-initialised output convs: perturb, so the level shows
        for p in m.module.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    return m.to("cpu")


def _texture(shape=(96, 96), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = ndi.gaussian_filter(rng.random(shape), 1.5) + 0.5 * ndi.gaussian_filter(rng.random(shape), 6)
    return ((a - a.min()) / (a.max() - a.min()) * 200 + 20).astype(np.float32)


def test_area_blur_matches_the_box_at_the_new_nyquist_frequency():
    # closed form: a box of width 2 passes sin(2 pi f) / (2 pi f) at frequency f; at the new
    # Nyquist frequency f = 1/4 that is 2/pi, and so does a Gaussian of width area_blur(2)
    sigma = area_blur(2)
    f = 0.25
    box = np.sinc(2 * f)  # numpy's sinc(x) = sin(pi x) / (pi x)
    assert np.isclose(box, 2 / np.pi)
    assert np.isclose(np.exp(-2 * np.pi**2 * sigma**2 * f**2), box, atol=1e-9)
    assert not np.isclose(np.exp(-2 * np.pi**2 * 0.5**2 * f**2), box, atol=1e-3)  # control: width 0.5 does not
    assert np.isclose(area_blur(4), 2 * sigma)


def test_the_network_gets_the_blur_and_estimates_it_when_not_given():
    m = blur_model()
    x = torch.from_numpy(_texture((64, 64)) / 100 - 1)[None, None]
    with torch.no_grad():
        sharp = m.module(x, torch.tensor([0.0]))[0]
        wide = m.module(x, torch.tensor([1.5]))[0]
        assert (sharp - wide).abs().max() > 1e-3  # the level reaches the embedding
        est = m.module.blur_estimator.read(x)
        np.testing.assert_allclose(est.numpy(), (m.module.blur_estimator(x) * READ_SCALE).clamp(READ_FLOOR, BLUR_MAX).numpy())
        auto = m.module(x)[0]
        np.testing.assert_allclose(auto.numpy(), m.module(x, est)[0].numpy(), atol=1e-6)
        clamped = m.module(x, torch.tensor([9.0]))[0]
        np.testing.assert_allclose(clamped.numpy(), m.module(x, torch.tensor([BLUR_MAX]))[0].numpy(), atol=1e-6)
    assert est.shape == (1,)


def test_cards_refuse_blur_level_outside_super_resolution_predictors():
    for task, kind, in_ch in (("denoise", "regression", 1), ("super-resolve", "diffusion", 2)):
        with pytest.raises(ValueError, match="blur_level"):
            ModelCard(name="x", task=task, kind=kind, scale=2 if task == "super-resolve" else 1,
                      network=UNetConfig(in_channel=in_ch, blur_level=True))


def test_resolve_blur_checks_the_request():
    card = blur_model().card
    assert resolve_blur(card, None) is None and resolve_blur(card, "auto") is None
    assert resolve_blur(card, "area") == round(area_blur(2) - 0.1, 3)
    assert resolve_blur(card, "1.25") == 1.25
    for bad in ("wide", -0.1, BLUR_MAX + 0.5):
        with pytest.raises(EMDiffuseError, match="blur must"):
            resolve_blur(card, bad)
    plain = card.model_copy(update={"network": card.network.model_copy(update={"blur_level": False})})
    with pytest.raises(EMDiffuseError, match="not told the acquisition blur"):
        resolve_blur(plain, 1.0)


def test_restore_reads_the_blur_once_or_uses_the_given_one():
    m = blur_model()
    low = _texture((48, 40))
    auto = restore(low, task="super-resolve", model=m)
    assert auto.info["blur_source"] == "read off the image" and 0 <= auto.info["blur"] <= BLUR_MAX
    a = restore(low, task="super-resolve", model=m, blur=0.0)
    b = restore(low, task="super-resolve", model=m, blur=1.5)
    assert a.info["blur"] == 0.0 and a.info["blur_source"] == "given" and b.info["blur"] == 1.5
    assert a.mean.shape == (96, 80) and np.abs(a.mean.astype(float) - b.mean.astype(float)).max() > 0
    # the estimate is what an explicit request of the same value gives
    same = restore(low, task="super-resolve", model=m, blur=auto.info["blur"])
    np.testing.assert_array_equal(same.mean, auto.mean)
    assert low.dtype == np.float32 and low.shape == (48, 40)  # input untouched


def test_sr_pairs_carry_their_blur():
    img = _texture((128, 128))
    data = sr_data([img], scale=2, rule=Normalisation(), patch=32, downsampling=["area", "gaussian"], levels=True)
    known = np.array([area_blur(2), *BLUR_SIGMAS])
    assert len(data.levels) == len(known) and np.allclose(sorted(data.levels), sorted(known))
    batch = data.sample(np.random.default_rng(0), 16)
    assert batch.slice_index is not None and batch.slice_index.dtype == torch.float32
    assert all(np.isclose(known, v, atol=1e-6).any() for v in batch.slice_index.numpy())
    assert data.validation(4).slice_index is not None
    # control: without levels the crops carry none
    assert sr_data([img], scale=2, rule=Normalisation(), patch=32).sample(np.random.default_rng(0), 4).slice_index is None


def test_training_a_blur_model_teaches_its_estimator(tmp_path):
    from napari_emdiffuse.api import train
    from napari_emdiffuse.engine.training.config import TrainConfig

    base = blur_model()
    base.card.network = base.card.network.model_copy(update={"blur_level": False})
    plain = create_model(base.card)
    base_dir = plain.save(tmp_path / "plain-sr")
    torch.set_num_threads(1)
    out = train(TrainConfig(
        task="super-resolve", base=str(base_dir), network={"blur_level": True}, clean=[_texture((128, 128))],
        downsampling=["area", "gaussian"], out=tmp_path / "sr-blur", iterations=3, patch=32, batch=4,
        val_crops=2, device="cpu", lr=1e-3, estimator_iterations=300,
    ))
    trained = load_model(out, device="cpu")
    assert trained.card.network.blur_level
    assert any(k.startswith("blur_estimator.") for k in trained.module.state_dict())
    assert trained.card.training["blur_estimator"]["iterations"] == 300
    # the predictor trains with its estimator frozen; the estimator fits after it, and the
    # saved model holds the fitted one (not the EMA's or a validation's copy)
    trainer = Trainer(TrainConfig(
        task="super-resolve", base=str(base_dir), network={"blur_level": True}, clean=[_texture((128, 128))],
        downsampling=["area", "gaussian"], out=tmp_path / "sr-blur2", iterations=2, patch=32, batch=4,
        val_crops=2, device="cpu", lr=1e-3, estimator_iterations=200,
    ))
    trainer.setup()
    est = trainer.net.blur_estimator
    before = [p.detach().clone() for p in est.parameters()]
    assert not any(p.requires_grad for p in est.parameters())
    trainer.train_step(trainer.next_batch())
    assert all(torch.equal(p, q) for p, q in zip(est.parameters(), before))
    path = drain(trainer.run())
    fitted = load_model(path, device="cpu").module.blur_estimator
    assert all(torch.equal(a, b) for a, b in zip(fitted.state_dict().values(), est.state_dict().values()))
    assert any(not torch.equal(p, q) for p, q in zip(est.parameters(), before))
    with pytest.raises(EMDiffuseError, match="blur_level"):
        TrainConfig(task="denoise", network={"blur_level": True}, clean=[_texture()], out=tmp_path / "x")


@pytest.mark.slow
def test_bundled_sr_model_reads_blurrier_scans_as_blurrier(shared_data):
    import tifffile

    m = load_model("demo-sr2", device="cpu")
    if not m.card.network.blur_level:
        pytest.skip("the bundled SR model is not blur-conditioned")
    img = tifffile.imread(shared_data / "em2d" / "clean" / "microns_1.tif").astype(np.float64)[:512, :512]
    read = {}
    for way in ("area", 0.0, 1.0, 1.5):
        low = downsample_area(img, 2) if way == "area" else downsample_gaussian(img, 2, way)
        read[way] = restore(low.astype(np.float32), task="super-resolve", model=m).info["blur"]
    assert read[0.0] < read[1.0] < read[1.5] and read[0.0] >= READ_FLOOR
    assert abs(read[1.0] / READ_SCALE - 1.0) < 0.2 and abs(read["area"] / READ_SCALE - area_blur(2)) < 0.2
    # the reading errs on the narrow side, where the network loses least
    assert read[1.0] < 1.0 and read["area"] < area_blur(2)


def test_the_estimator_loss_teaches_sharp_from_blurred():
    from napari_emdiffuse.engine.core.networks.blur import blur_estimator_loss
    from napari_emdiffuse.engine.inference.normalise import make_condition, NormInfo

    torch.manual_seed(0)
    est = BlurEstimator(width=8)
    opt = torch.optim.Adam(est.parameters(), 3e-3)
    norm = NormInfo("percentile", 20.0, 220.0)

    def conds(sigma: float, seeds) -> torch.Tensor:
        return torch.cat([make_condition(downsample_gaussian(_texture((64, 64), s), 2, sigma), norm, 2,
                                         torch.device("cpu")) for s in seeds])

    train = {0.0: conds(0.0, range(4)), 1.5: conds(1.5, range(4))}
    gen = torch.Generator().manual_seed(0)
    for _ in range(150):
        for sigma, x in train.items():
            loss = blur_estimator_loss(est, x, torch.full((len(x),), sigma), generator=gen)
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        sharp, wide = est(conds(0.0, [10, 11])), est(conds(1.5, [10, 11]))  # unseen textures
    assert float(wide.min()) > float(sharp.max()) + 0.5


def test_recorded_pairs_are_told_the_blur_read_off_their_input(tmp_path):
    from napari_emdiffuse.engine.training.config import TrainConfig
    from napari_emdiffuse.engine.inference.normalise import fit_normalisation, read_blur, sample_values

    m = blur_model()
    base_dir = m.save(tmp_path / "sr-blur")
    hr = _texture((128, 128)).astype(np.float64)
    lr = downsample_gaussian(hr, 2, 1.0)
    cfg = dict(task="super-resolve", base=str(base_dir), inputs=[lr], targets=[hr], iterations=1, patch=32, batch=4,
               val_crops=2, device="cpu")
    trainer = Trainer(TrainConfig(out=tmp_path / "ft", **cfg))
    trainer.setup()
    expected = read_blur(m.module.blur_estimator, lr, fit_normalisation(sample_values(lr), m.card.normalisation), 2,
                         torch.device("cpu"))
    batch = trainer.next_batch()
    assert batch.slice_index is not None
    np.testing.assert_allclose(batch.slice_index.numpy(), expected, atol=1e-5)
    # control: a plain base converted to blur_level has no fitted estimator to read with
    plain = m.card.model_copy(update={"network": m.card.network.model_copy(update={"blur_level": False})})
    plain_dir = create_model(plain).save(tmp_path / "plain")
    conv = Trainer(TrainConfig(out=tmp_path / "ft2", network={"blur_level": True}, **{**cfg, "base": str(plain_dir)}))
    conv.setup()
    assert conv.next_batch().slice_index is None


def test_iterations_0_refits_only_the_estimator(tmp_path):
    from napari_emdiffuse.api import train
    from napari_emdiffuse.engine.training.config import TrainConfig

    base_dir = blur_model().save(tmp_path / "sr-blur")
    torch.set_num_threads(1)
    kw = dict(task="super-resolve", base=str(base_dir), clean=[_texture((128, 128))], downsampling=["area", "gaussian"],
              patch=32, batch=4, val_crops=2, device="cpu", estimator_iterations=50)
    out = train(TrainConfig(out=tmp_path / "refit", iterations=0, **kw))
    before, after = load_model(base_dir, device="cpu"), load_model(out, device="cpu")
    a, b = before.module.state_dict(), after.module.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if not k.startswith("blur_estimator."))
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("blur_estimator."))
    assert after.card.training["iterations"] == 0 and after.card.training["blur_estimator"]["iterations"] == 50
    # refused: nothing to refit without a base, for another task, or with no estimator steps
    for bad in (dict(base=None), dict(task="denoise", downsampling=["area"]), dict(estimator_iterations=0)):
        with pytest.raises(EMDiffuseError, match="iterations 0"):
            TrainConfig(**{**kw, "out": tmp_path / "x", "iterations": 0, **bad})
    plain = blur_model()
    plain.card.network = plain.card.network.model_copy(update={"blur_level": False})
    plain_dir = create_model(plain.card).save(tmp_path / "plain")
    with pytest.raises(EMDiffuseError, match="has none"):
        train(TrainConfig(**{**kw, "base": str(plain_dir), "out": tmp_path / "y", "iterations": 0}))
    assert not (tmp_path / "y" / "model.yaml").exists()


def test_the_estimator_learns_from_clean_inputs_only():
    from napari_emdiffuse.engine.training.estimator import fit_estimator

    imgs = [_texture((128, 128), seed=s) for s in (0, 1)]
    clean = sr_data(imgs, scale=2, rule=Normalisation(), patch=32, downsampling=["area", "gaussian"], levels=True)
    noisy = sr_data(imgs, scale=2, rule=Normalisation(), patch=32, downsampling=["area", "gaussian"], levels=True,
                    input_noise=0.3)
    fitted = []
    for data in (clean, noisy):
        torch.manual_seed(0)
        est = BlurEstimator(width=8)
        drain(fit_estimator(est, data, iterations=20, batch=4, seed=3))
        fitted.append(est.state_dict())
    assert all(torch.equal(fitted[0][k], fitted[1][k]) for k in fitted[0])
    # the control: the noisy data do give noisy crops
    assert any(not np.array_equal(noisy.sample_one(np.random.default_rng(i))[0], clean.sample_one(np.random.default_rng(i))[0])
               for i in range(10))
