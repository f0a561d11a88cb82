"""Self-supervised denoising of a stack from its neighbouring slices (Noise2Noise)."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import tifffile
import torch
from scipy import ndimage as ndi

from napari_emdiffuse.api import finetune_iter, train
from napari_emdiffuse.engine.errors import EMDiffuseError, InputError
from napari_emdiffuse.engine.inference.normalise import to_model
from napari_emdiffuse.engine.models.registry import load_model
from napari_emdiffuse.engine.training.build import build_data, build_model
from napari_emdiffuse.engine.training.config import TrainConfig
from napari_emdiffuse.engine.training.data.base import fit_rule
from napari_emdiffuse.engine.training.finetune import self_supervised_objective
from napari_emdiffuse.engine.core.alikeness import slice_alikeness
from napari_emdiffuse.engine.training.neighbours import neighbour_pairs

from tests.conftest import TINY

FAST = dict(patch=32, batch=2, val_crops=2, device="cpu")
PREDICTOR = {**TINY, "aleatoric": True, "residual": True}


def _fields(n: int, seed: int = 0, *, same: bool, cells: bool = False) -> np.ndarray:
    """Structure (grey levels 20-220): the same in every slice, or new in each; smooth, or
    cells of constant grey with sharp borders, as membranes make them."""
    rng = np.random.default_rng(seed)
    k = 1 if same else n
    if cells:
        f = ndi.gaussian_filter(np.kron(rng.random((k, 10, 10)), np.ones((1, 8, 8))), (0, 0.7, 0.7))
    else:
        f = ndi.gaussian_filter(rng.random((k, 80, 80)), (0, 3, 3))
    f = (f - f.min()) / np.ptp(f) * 200 + 20
    return np.repeat(f, n, axis=0) if same else f


def _noisy(stack: np.ndarray, std: float, seed: int = 1) -> np.ndarray:
    return (stack + np.random.default_rng(seed).normal(0, std, stack.shape)).astype(np.float32)


def test_pairs_are_each_inner_slice_and_the_mean_of_its_neighbours():
    stack = np.random.default_rng(0).integers(0, 255, (5, 8, 9)).astype(np.uint8)
    before = stack.copy()
    inputs, targets = neighbour_pairs(stack)
    np.testing.assert_array_equal(inputs, stack[1:4])
    for z in range(3):
        np.testing.assert_allclose(targets[z], (stack[z].astype(float) + stack[z + 2]) / 2)
    assert targets.dtype == np.float32
    np.testing.assert_array_equal(stack, before)  # never modified


@pytest.mark.parametrize("bad, match", [(np.zeros((8, 8)), "needs a stack"), (np.zeros((2, 8, 8)), "at least 3 slices")])
def test_pairs_need_a_stack_of_three_slices(bad, match):
    with pytest.raises(InputError, match=match) as info:
        neighbour_pairs(bad)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("cells", [False, True])
@pytest.mark.parametrize("std", [5.0, 60.0])
def test_alikeness_tells_a_stack_of_one_structure_from_one_of_unrelated_sections(std, cells):
    """At any noise: independent noise adds as much to both errors compared. Control: sections
    that show unrelated structure (ssTEM far apart) are not alike, noisy or not."""
    alike = slice_alikeness(_noisy(_fields(6, same=True, cells=cells), std))
    unlike = slice_alikeness(_noisy(_fields(6, same=False, cells=cells), std))
    assert alike.alike and alike.spacing <= 1.0
    assert not unlike.alike and unlike.spacing > 3.0
    assert "within the 1.5 px" in alike.describe() and "beyond the 1.5 px" in unlike.describe()


@pytest.mark.parametrize("step", [1, 2, 3])
@pytest.mark.parametrize("std", [0.0, 0.7])
def test_alikeness_reads_the_spacing_of_an_isotropic_volume_sampled_every_step_px(step, std):
    """A random field that looks the same along every axis, kept every ``step`` px along z:
    its slices look ``step`` px apart, noisy or not."""
    rng = np.random.default_rng(0)
    field = ndi.gaussian_filter(rng.normal(size=(40, 96, 96)), 3, mode="wrap")
    stack = field[::step][:12] / field.std() + std * rng.normal(size=(12, 96, 96))
    found = slice_alikeness(stack)
    assert found.spacing == pytest.approx(step, abs=0.3)
    assert found.alike == (step == 1)


def test_alikeness_reads_a_central_crop_of_a_lazy_stack():
    stack = _noisy(_fields(20, same=True), 10.0)
    lazy = da.from_array(stack, chunks=(1, 40, 40))
    a, b = slice_alikeness(lazy, max_slices=4, crop=40), slice_alikeness(stack[8:12, 20:60, 20:60])
    assert a == b


def test_the_default_objective_is_the_blind_spot_and_says_why(tmp_path):
    """Restoring averages an alike stack along z, so the default no longer learns from the
    neighbours (that would average twice); the note says what the stack looks like."""
    assert self_supervised_objective(_noisy(_fields(1, same=True)[0], 5.0)) == ("self-supervised", None)
    tifffile.imwrite(tmp_path / "alike.tif", _noisy(_fields(16, same=True), 5.0))
    objective, note = self_supervised_objective(tmp_path / "alike.tif")
    assert objective == "self-supervised" and "within the 1.5 px" in note and "averages them along z" in note
    objective, note = self_supervised_objective(_noisy(_fields(16, same=False), 5.0))
    assert objective == "self-supervised" and "beyond the 1.5 px" in note and "along z" not in note
    assert self_supervised_objective(np.zeros((2, 64, 64))) == ("self-supervised", None)  # no neighbours


def test_the_training_targets_are_the_neighbours_mean_in_the_inputs_model_range():
    stack = _noisy(_fields(4, same=True), 10.0)
    cfg = TrainConfig(task="denoise", kind="regression", inputs=[stack], out="m", objective="neighbour-slices",
                      network=PREDICTOR, **FAST)
    card, _, _ = build_model(cfg)
    data = build_data(cfg, card, 4)
    assert len(data.conds) == 2  # the two inner slices
    # the input's normalisation maps input and target alike
    info = fit_rule(stack[1:3], card.normalisation)
    for z in range(2):
        np.testing.assert_allclose(data.targets[z][0], to_model((stack[z] + stack[z + 2]) / 2, info), atol=1e-5)
        np.testing.assert_allclose(data.conds[z][0], to_model(stack[z + 1], info), atol=1e-5)


def test_a_stack_asked_to_learn_from_its_neighbours_keeps_the_uncertainty(tmp_path):
    stack = _noisy(_fields(16, same=True), 12.0)
    base = train(TrainConfig(task="denoise", kind="regression", inputs=[stack[0]], targets=[_fields(1, same=True)[0]],
                             out=tmp_path / "base", iterations=4, network=PREDICTOR, **FAST))
    events = list(finetune_iter("denoise", stack, base=base, out=tmp_path / "ft", iterations=6, patch=32, batch=2,
                                val_crops=2, device="cpu", objective="neighbour-slices"))
    tuned, original = load_model(events[-1], cache=False), load_model(base, cache=False)
    assert tuned.card.training["objective"] == "neighbour-slices"
    assert tuned.card.training["train_layers"] == "full-resolution"
    assert tuned.card.metrics["psnr_against"] == "the mean of the neighbouring noisy slices"
    # the neighbours' noise is no error of the mean's: the variance head and its calibration stay
    assert tuned.card.uncertainty_scale == original.card.uncertainty_scale
    heads = [k for k in original.module.state_dict() if k.startswith("net.out_var")]
    assert heads
    t, o = tuned.module.state_dict(), original.module.state_dict()
    assert all(torch.equal(t[k], o[k]) for k in heads)
    assert any(not torch.equal(t[k], o[k]) for k in o if k.startswith("net.out."))  # control: the mean moved


def test_learning_from_neighbouring_slices_needs_a_stack_and_no_target(tmp_path):
    image = _noisy(_fields(1, same=True)[0], 5.0)
    with pytest.raises(InputError, match="needs a stack") as info:
        next(finetune_iter("denoise", image, objective="neighbour-slices", out=tmp_path / "a", device="cpu"))
    assert "\n" not in str(info.value) and not (tmp_path / "a").exists()
    stack = _noisy(_fields(4, same=True), 5.0)
    with pytest.raises(EMDiffuseError, match="give no targets"):
        next(finetune_iter("denoise", stack, stack, objective="neighbour-slices", out=tmp_path / "b", device="cpu"))
    with pytest.raises(EMDiffuseError, match="cannot train a super-resolve"):
        TrainConfig(task="super-resolve", inputs=[stack], out="m", objective="neighbour-slices")


def test_the_cli_refuses_neighbouring_slices_of_one_image(tmp_path, capsys):
    from napari_emdiffuse.cli import main

    tifffile.imwrite(tmp_path / "one.tif", _noisy(_fields(1, same=True)[0], 5.0))
    argv = ["finetune", "--task", "denoise", "--input", str(tmp_path / "one.tif"), "-o", str(tmp_path / "m"),
            "--objective", "neighbour-slices", "--iterations", "2", "--device", "cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "needs a stack (Z, Y, X)" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m").exists()


def test_the_default_fine_tune_of_an_alike_stack_says_first_why_it_takes_the_blind_spot(tmp_path):
    stack = _noisy(_fields(16, same=True), 12.0)
    base = train(TrainConfig(task="denoise", kind="regression", inputs=[stack[0]], targets=[_fields(1, same=True)[0]],
                             out=tmp_path / "base", iterations=4, network=PREDICTOR, **FAST))
    events = list(finetune_iter("denoise", stack, base=base, out=tmp_path / "ft", iterations=4, patch=32, batch=2,
                                val_crops=2, device="cpu"))
    assert "averages them along z" in events[0].message and events[0].loss is None  # said first
    assert load_model(events[-1], cache=False).card.training["objective"] == "self-supervised"
