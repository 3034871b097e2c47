"""Time grids: endpoints, spacing, and the SD3 shift against diffusers' scheduler."""

import numpy as np
import pytest
import torch

from mmflow.sampling.grids import make_grid, sd3_grid, shifted_grid, uniform_grid


def test_uniform_grid_has_n_full_steps_to_one():
    grid = uniform_grid(4, dtype=torch.float64)
    assert grid.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert uniform_grid(1).tolist() == [0.0, 1.0]
    with pytest.raises(ValueError):
        uniform_grid(0)


@pytest.mark.parametrize("shift", [0.5, 1.0, 3.0])
def test_shifted_grid_endpoints_and_monotone(shift):
    grid = shifted_grid(10, shift, dtype=torch.float64)
    assert grid.shape == (11,) and grid[0].item() == 0.0 and grid[-1].item() == 1.0
    assert (grid.diff() > 0).all()


def test_shift_spends_more_steps_at_high_noise():
    uniform, shifted = uniform_grid(20), shifted_grid(20, 3.0)
    assert (shifted[1:-1] < uniform[1:-1]).all()  # every interior time is pulled towards noise
    assert shifted.diff()[0] < uniform.diff()[0] < shifted.diff()[-1]  # small steps first, big last
    assert (shifted_grid(20, 0.5)[1:-1] > uniform[1:-1]).all()
    torch.testing.assert_close(shifted_grid(20, 1.0), uniform)
    # sigma = 1/2 maps to 3/4 under shift 3, i.e. t = 1/2 maps to t = 1/4
    assert shifted[10].item() == pytest.approx(0.25)


@pytest.mark.parametrize("shift", [1.0, 3.0, 6.0])
def test_shift_matches_diffusers_flow_match_euler(shift):
    from diffusers import FlowMatchEulerDiscreteScheduler

    n = 28
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    # feed the unshifted sigmas 1, 1 - 1/n, ..., 1/n; diffusers shifts them and appends the final 0
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1.0 / n, n).tolist())
    ours_sigma = 1.0 - shifted_grid(n, shift, dtype=torch.float64)  # decreasing, as diffusers
    torch.testing.assert_close(ours_sigma.float(), scheduler.sigmas, rtol=0, atol=1e-6)


def test_make_grid():
    torch.testing.assert_close(make_grid("uniform", 5), uniform_grid(5))
    torch.testing.assert_close(make_grid("shifted", 5, shift=2.0), shifted_grid(5, 2.0))
    with pytest.raises(ValueError, match="'karras'"):
        make_grid("karras", 5)
    with pytest.raises(ValueError):
        make_grid("uniform", 5, shift=3.0)
    with pytest.raises(ValueError):
        shifted_grid(5, 0.0)


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("n", [1, 4, 28])
def test_sd3_grid_is_diffusers_default_sd3_schedule(shift, n):
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(n)  # what StableDiffusion3Pipeline does: no sigmas given
    grid = sd3_grid(n, shift, dtype=torch.float64)
    assert grid.shape == (n + 1,) and grid[0].item() == 0.0 and grid[-1].item() == 1.0 and (grid.diff() > 0).all()
    torch.testing.assert_close((1.0 - grid).float(), scheduler.sigmas, rtol=0, atol=1e-6)
    torch.testing.assert_close(make_grid("sd3", n, shift), sd3_grid(n, shift))
    if n > 1:  # not the shifted grid: diffusers' last sigma before 0 is S(S(1/1000)), not S(1/n)
        assert not torch.allclose(grid, shifted_grid(n, shift, dtype=torch.float64))
