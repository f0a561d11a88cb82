"""The diffusion Network and samplers: training loss, q_sample, sampler behaviour."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_emdiffuse.engine.core import samplers
from napari_emdiffuse.engine.core.diffusion import Network
from napari_emdiffuse.engine.events import drain
from napari_emdiffuse.engine.core.networks import UNet
from napari_emdiffuse.engine.core.schedules import NoiseSchedule, make_beta_schedule

from tests.conftest import TINY


def _net():
    torch.manual_seed(0)
    return Network(UNet(2, 1, **TINY))


def test_q_sample_moments():
    y0 = torch.full((1, 1, 64, 64), 0.5)
    g = torch.tensor([0.36])
    noise = torch.zeros_like(y0)
    assert torch.allclose(Network.q_sample(y0, g, noise), torch.full_like(y0, 0.3))
    x = Network.q_sample(torch.zeros(1, 1, 256, 256), g)
    assert abs(x.std().item() - 0.8) < 0.02


def test_training_gammas_lie_between_neighbouring_steps():
    net = _net()
    g = net.sample_gammas(10_000, generator=torch.Generator().manual_seed(0))
    gam = net.train_schedule.gammas
    assert g.min() >= gam[-1] - 1e-7 and g.max() <= gam[0] + 1e-7
    # a continuum, not the discrete grid
    assert len(torch.unique(g)) > 9000


def test_focused_training_gammas_stay_in_the_requested_log_snr_range():
    net = _net()
    gen = torch.Generator().manual_seed(0)
    g = net.sample_gammas(4000, generator=gen, focus=1.0, focus_log_snr=(0.0, 8.0))
    lam = torch.log(g / (1 - g))
    assert lam.min() >= -1e-3 and lam.max() <= 8.0 + 1e-3
    # uniform in log-SNR: about half below 4
    assert abs(float((lam < 4).float().mean()) - 0.5) < 0.05
    # a fraction: the rest keep the schedule's distribution (mostly below log-SNR 0)
    g = net.sample_gammas(4000, generator=gen, focus=0.5, focus_log_snr=(0.0, 8.0))
    below = float((torch.log(g / (1 - g)) < 0).float().mean())
    assert 0.25 < below < 0.45
    # a range beyond the schedule is clipped to it
    g = net.sample_gammas(100, generator=gen, focus=1.0, focus_log_snr=(-50.0, 50.0))
    gam = net.train_schedule.gammas
    assert g.min() >= gam[-1] - 1e-6 and g.max() <= gam[0] + 1e-6


def test_training_loss_is_finite_and_backpropagates():
    net = _net().train()
    y0, cond = torch.rand(2, 1, 32, 32) * 2 - 1, torch.rand(2, 1, 32, 32) * 2 - 1
    loss = net(y0, cond)
    loss.backward()
    assert torch.isfinite(loss)
    assert net.denoise_fn.input_blocks[0][0].weight.grad is not None


class _Oracle:
    """A 'network' that knows x0: eps = (x - sqrt(g) x0) / sqrt(1 - g)."""

    def __init__(self, x0):
        self.x0 = x0

    def __call__(self, x, gamma):
        return (x - math.sqrt(gamma) * self.x0) / math.sqrt(1 - gamma)
        yield  # noqa


@pytest.mark.parametrize("name", ["ddim", "dpm++", "ddpm"])
def test_samplers_recover_x0_with_a_perfect_network(name):
    train = NoiseSchedule(make_beta_schedule("linear", 2000, 1e-6, 1e-2))
    test = NoiseSchedule(make_beta_schedule("linear", 1000, 1e-4, 0.09))
    x0 = torch.rand(1, 1, 16, 16) * 1.6 - 0.8
    gen = torch.Generator().manual_seed(0)
    noise = lambda step: torch.randn(1, 1, 16, 16, generator=gen)  # noqa: E731
    out = drain(samplers.sample(_Oracle(x0), noise(-1), sampler=name, train=train, test=test,
                                steps=8 if name != "ddpm" else None, noise_fn=noise))
    assert torch.allclose(out, x0, atol=1e-4)


def test_reference_ddpm_runs_every_test_step():
    test = NoiseSchedule(make_beta_schedule("linear", 1000, 1e-4, 0.09))
    seen = []

    def fn(x, g):
        seen.append(g)
        return torch.zeros_like(x)
        yield  # noqa

    drain(samplers.ddpm_reference(fn, torch.zeros(1, 1, 4, 4), test, lambda s: torch.zeros(1, 1, 4, 4)))
    assert len(seen) == 1000 and seen[0] == pytest.approx(test.gammas[-1]) and seen[-1] == pytest.approx(test.gammas[0])


def test_noise_grid_inside_training_range_unlike_truncation():
    train = NoiseSchedule(make_beta_schedule("linear", 2000, 1e-6, 1e-2))
    grid = samplers.noise_grid(train, 10)
    assert grid[0] == pytest.approx(train.gammas[-1], rel=1e-6)  # starts at the noisiest trained level
    test = NoiseSchedule(make_beta_schedule("linear", 1000, 1e-4, 0.09))
    below = int((test.gammas < train.gammas[-1]).sum())
    assert below == 532  # the published test schedule spends 532 steps below the trained range


def test_restoration_whole_batch_shapes():
    net = _net().eval()
    out = net.restoration(torch.zeros(2, 1, 32, 32), sampler="ddim", steps=3, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 1, 32, 32) and torch.isfinite(out).all()
    assert out.abs().max() <= 1.0 + 1e-6


def test_start_from_noised_condition_uses_fewer_noise_levels():
    train = NoiseSchedule(make_beta_schedule("linear", 2000, 1e-6, 1e-2))
    full = samplers.noise_grid(train, 5)
    part = samplers.noise_grid(train, 5, start_log_snr=0.0)
    assert part[0] > full[0] and np.isclose(part[-1], full[-1])


class _GaussianOracle:
    """Exact noise prediction for data x0 ~ N(mu, s^2) per pixel: E[eps | x_t]."""

    def __init__(self, mu: float, s: float) -> None:
        self.mu, self.s = mu, s

    def __call__(self, x, gamma):
        g, mu, s2 = gamma, self.mu, self.s**2
        return math.sqrt(1 - g) * (x - math.sqrt(g) * mu) / (g * s2 + 1 - g)
        yield  # noqa


def _exact_output(x_t: torch.Tensor, g_start: float, g_end: float, mu: float, s: float) -> torch.Tensor:
    """What a deterministic sampler must return for Gaussian data: the probability-flow ODE
    keeps z = (x - sqrt(g) mu) / sqrt(g s^2 + 1 - g); the last step returns E[x0 | x_end]."""
    z = (x_t - math.sqrt(g_start) * mu) / math.sqrt(g_start * s**2 + 1 - g_start)
    return mu + math.sqrt(g_end) * s**2 * z / math.sqrt(g_end * s**2 + 1 - g_end)


@pytest.mark.parametrize("name, order", [("ddim", 1), ("dpm++", 2)])
def test_deterministic_samplers_solve_the_ode_at_their_order(name, order):
    """Against the closed-form answer for Gaussian data; a wrong update fails (the error
    would not shrink at the solver's order), unlike an oracle that knows x0."""
    train = NoiseSchedule(make_beta_schedule("linear", 2000, 1e-6, 1e-2))
    mu, s = 0.2, 0.5
    x_t = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    errors = []
    for steps in (32, 64, 128):  # the asymptotic range (4.4e-5 .. 0.98 in gamma)
        grid = samplers.noise_grid(train, steps, log_snr_max=4.0)
        run = samplers.ddim if name == "ddim" else samplers.dpm_solver_pp_2m
        out = drain(run(_GaussianOracle(mu, s), x_t.clone(), grid, clip=False))
        want = _exact_output(x_t, float(grid[0]), float(grid[-1]), mu, s)
        errors.append(float((out - want).abs().max()))
    rates = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    assert errors[-1] < (0.03 if order == 1 else 1e-3)
    assert all(r > order - 0.35 for r in rates), (errors, rates)
    if order == 1:
        assert all(r < 1.5 for r in rates)  # first order really: DDIM is not secretly exact
