import pytest
import torch
import torch.nn.functional as F

from napari_emdiffuse.engine.core.losses import (
    LOSSES,
    FocalLoss,
    PinballLoss,
    l1_loss,
    mse_loss,
    mse_var_loss,
    pin_loss,
)

TARGET = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
OUTPUT = torch.tensor([[1.0, 1.0, 0.0, 4.0]])  # errors -1, 0, 2, -1


def test_mse_and_l1_known_values():
    assert mse_loss(TARGET, OUTPUT).item() == pytest.approx((1 + 0 + 4 + 1) / 4)
    assert l1_loss(TARGET, OUTPUT).item() == pytest.approx((1 + 0 + 2 + 1) / 4)


def test_losses_compute_in_float32_for_half_inputs():
    loss = mse_loss(TARGET.half(), OUTPUT.half())
    assert loss.dtype == torch.float32


def test_mse_var_loss_with_zero_log_var_is_mse():
    log_var = torch.zeros_like(OUTPUT)
    assert mse_var_loss(TARGET, OUTPUT, log_var).item() == pytest.approx(1.5)


def test_mse_var_loss_known_value_and_clamp():
    log_var = torch.full_like(OUTPUT, 2.0)
    expected = (torch.exp(torch.tensor(-2.0)) * 1.5 + 2.0).item()
    assert mse_var_loss(TARGET, OUTPUT, log_var).item() == pytest.approx(expected)
    # log_var is clamped to [-10, 10]: -100 behaves like -10.
    low = mse_var_loss(TARGET, OUTPUT, torch.full_like(OUTPUT, -100.0))
    assert low.item() == pytest.approx(mse_var_loss(TARGET, OUTPUT, torch.full_like(OUTPUT, -10.0)).item())
    assert torch.isfinite(low)


def test_pinball_at_median_is_half_l1():
    assert pin_loss(TARGET, OUTPUT, 0.5).item() == pytest.approx(0.5 * l1_loss(TARGET, OUTPUT).item())


def test_pinball_is_asymmetric():
    # Under-prediction (target > output) costs q per unit, over-prediction 1 - q.
    t, under, over = torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([2.0])
    assert pin_loss(t, under, 0.9).item() == pytest.approx(0.9)
    assert pin_loss(t, over, 0.9).item() == pytest.approx(0.1)


@pytest.mark.parametrize("q", [0.0, 1.0, -0.1, 1.5])
def test_invalid_quantile_raises(q):
    with pytest.raises(ValueError, match="quantile"):
        pin_loss(TARGET, OUTPUT, q)
    with pytest.raises(ValueError, match="quantile"):
        PinballLoss((0.5, q))


def test_pinball_module_averages_quantiles():
    target = torch.zeros(2, 1, 4, 4)
    output = torch.ones(2, 3, 4, 4)  # over-prediction by 1 for each quantile
    loss = PinballLoss((0.1, 0.5, 0.9))(target, output)
    assert loss.item() == pytest.approx(((1 - 0.1) + (1 - 0.5) + (1 - 0.9)) / 3)


def test_pinball_channel_count_error():
    with pytest.raises(ValueError, match="2 channels but 3 quantiles"):
        PinballLoss((0.1, 0.5, 0.9))(torch.zeros(1, 1, 4, 4), torch.zeros(1, 2, 4, 4))


def test_focal_gamma0_no_alpha_is_bce_with_logits():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 5, 5)
    target = (torch.rand(2, 1, 5, 5) > 0.5).float()
    focal = FocalLoss(gamma=0.0, alpha=None)(target, logits)
    assert focal.item() == pytest.approx(F.binary_cross_entropy_with_logits(logits, target).item())


def test_focal_downweights_easy_pixels():
    target = torch.ones(1)
    easy, hard = torch.tensor([4.0]), torch.tensor([-1.0])
    bce_ratio = F.binary_cross_entropy_with_logits(easy, target) / F.binary_cross_entropy_with_logits(hard, target)
    focal = FocalLoss(gamma=2.0, alpha=None)
    assert (focal(target, easy) / focal(target, hard)).item() < bce_ratio.item()


def test_focal_invalid_options():
    with pytest.raises(ValueError):
        FocalLoss(gamma=-1)
    with pytest.raises(ValueError):
        FocalLoss(reduction="max")


def test_registry_names():
    assert LOSSES["mse"] is mse_loss and LOSSES["l1_loss"] is l1_loss
