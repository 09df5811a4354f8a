"""kaclib.velocity_checks: the per-coordinate finite-speed bound along sampling trajectories."""

import math

import pytest
import torch

from kaclib.paths import GaussianPath, KacPath
from kaclib.solvers import sample, time_grid
from kaclib.velocity_checks import coordinate_bound, trajectory_bound_stats


def test_coordinate_bound_closed_form():
    p = KacPath(a=25.0, c=2.0, f="linear", g="t2")
    # f = 1 - t, g = t^2: |f'| + g' c = 1 + 2 t c
    assert coordinate_bound(p, 0.5) == pytest.approx(1 + 2 * 0.5 * 2.0)
    assert coordinate_bound(p, 0.0) == pytest.approx(1.0)


def test_exact_field_of_one_point_respects_the_bound_and_a_scaled_one_does_not():
    torch.manual_seed(0)
    p = KacPath(a=9.0, c=3.0, g="t")
    x0 = (
        torch.rand(1, 1, 4, 4) * 2 - 1
    )  # one data point in [-1, 1]: its marginal field is the conditional one

    def exact(x, t, y):
        return p.conditional_velocity(x.double(), x0.double().expand_as(x), t.double()).float()

    x_T = x0 + p.sample_latent((64, 1, 4, 4), generator=torch.Generator().manual_seed(1))
    res = sample(exact, x_T, 16, "euler", return_trajectory=True)
    times = time_grid(16)
    ok = trajectory_bound_stats(exact, p, res.trajectory, times)
    assert len(ok.times) == 16 and max(ok.ratio_max) <= 1 + 1e-5 and max(ok.violation_fraction) == 0
    assert all(n <= b * (1 + 1e-5) for n, b in zip(ok.norm_max, ok.norm_bound))
    assert ok.norm_bound[0] == pytest.approx(coordinate_bound(p, 1.0) * math.sqrt(16))
    bad = trajectory_bound_stats(lambda x, t, y: 2 * exact(x, t, y), p, res.trajectory, times)
    assert max(bad.ratio_max) > 1.5 and max(bad.violation_fraction) > 0


def test_errors():
    with pytest.raises(ValueError, match="Kac path"):
        trajectory_bound_stats(lambda x, t, y: x, GaussianPath(), torch.zeros(3, 2, 1, 2, 2), [1.0, 0.5, 0.0])
    with pytest.raises(ValueError, match="states"):
        trajectory_bound_stats(lambda x, t, y: x, KacPath(), torch.zeros(3, 2, 1, 2, 2), [1.0, 0.0])
