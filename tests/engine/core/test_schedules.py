import math

import numpy as np
import pytest

from napari_emdiffuse.engine.core.samplers import noise_grid
from napari_emdiffuse.engine.core.schedules import (
    SCHEDULES,
    NoiseSchedule,
    gamma_from_log_snr,
    log_snr,
    make_beta_schedule,
)


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("n", [1, 10, 1000, 2000])
def test_every_schedule_has_length_and_valid_betas(name, n):
    betas = make_beta_schedule(name, n, 1e-6, 1e-2)
    assert betas.shape == (n,)
    assert betas.dtype == np.float64
    assert np.all(betas > 0) and np.all(betas <= 1)


def test_linear_endpoints_exact():
    betas = make_beta_schedule("linear", 2000, 1e-6, 1e-2)
    assert betas[0] == 1e-6 and betas[-1] == 1e-2
    assert np.allclose(np.diff(betas), (1e-2 - 1e-6) / 1999)


def test_quad_and_warmup_endpoints():
    quad = make_beta_schedule("quad", 100, 1e-4, 1e-2)
    assert quad[0] == pytest.approx(1e-4) and quad[-1] == pytest.approx(1e-2)
    warm = make_beta_schedule("warmup10", 100, 1e-4, 1e-2)
    assert warm[0] == pytest.approx(1e-4) and np.all(warm[10:] == 1e-2)
    assert make_beta_schedule("jsd", 4)[-1] == 1.0


def test_cosine_gammas_monotone():
    gammas = NoiseSchedule(make_beta_schedule("cosine", 1000)).gammas
    assert np.all(np.diff(gammas) < 0)
    assert 0 < gammas[-1] < gammas[0] < 1


def test_unknown_schedule_names_valid_ones():
    with pytest.raises(ValueError) as info:
        make_beta_schedule("sigmoid", 10)
    message = str(info.value)
    assert "sigmoid" in message
    assert all(name in message for name in SCHEDULES)


def test_published_test_schedule():
    test = NoiseSchedule(make_beta_schedule("linear", 1000, 1e-4, 0.09))
    assert test.num_timesteps == 1000
    assert test.gammas[-1] < 1e-15
    # Step 0 has zero posterior variance; the log is clipped, not -inf.
    assert test.posterior_log_variance_clipped[0] == math.log(1e-20)
    assert np.all(np.isfinite(test.posterior_log_variance_clipped))


def test_log_snr_round_trip():
    gammas = np.array([1e-6, 0.1, 0.5, 0.9, 1 - 1e-6])
    assert np.allclose(gamma_from_log_snr(log_snr(gammas)), gammas)
    assert log_snr(0.5) == 0.0


@pytest.mark.parametrize("steps", [1, 2, 10, 50])
def test_noise_grid_inside_training_range_and_increasing(steps):
    train = NoiseSchedule(make_beta_schedule("linear", 2000, 1e-6, 1e-2))
    lo, hi = train.log_snr_range()
    grid = noise_grid(train, steps)
    lam = log_snr(grid)
    assert len(grid) == steps
    assert np.all(lam >= lo - 1e-9) and np.all(lam <= hi + 1e-9)
    assert lam[-1] <= 8.0 + 1e-9  # capped at log_snr_max
    if steps > 1:
        assert np.all(np.diff(grid) > 0)
        assert lam[0] == pytest.approx(lo)


def test_noise_grid_start_clipped_into_range():
    train = NoiseSchedule(make_beta_schedule("linear", 2000, 1e-6, 1e-2))
    lo, _ = train.log_snr_range()
    grid = noise_grid(train, 5, start_log_snr=-1e3)
    assert log_snr(grid[0]) == pytest.approx(lo)
    grid = noise_grid(train, 5, start_log_snr=2.0)
    assert log_snr(grid[0]) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        noise_grid(train, 0)
