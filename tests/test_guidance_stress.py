import math

import pytest
import torch

from kaclib.guidance_stress import stress, trajectory_stats


def test_trajectory_stats_of_a_known_trajectory():
    # two images of two pixels, two Euler steps on [0, 1] (dt = 0.5)
    traj = torch.tensor(
        [
            [[0.0, 0.0], [0.0, 0.0]],
            [[1.0, 0.0], [0.0, 0.5]],
            [[3.0, 0.0], [0.0, 0.5]],
        ]
    )
    st = trajectory_stats(traj)
    assert st["n"] == 2 and st["n_nonfinite"] == 0
    assert st["frac_out_of_range"] == pytest.approx(1 / 4)  # only the 3.0 lies outside [-1, 1]
    assert st["max_abs_x"] == 3.0
    assert st["max_velocity_norm"] == pytest.approx(2.0 / 0.5)  # the step from 1 to 3


def test_nonfinite_images_are_counted_and_left_out():
    traj = torch.zeros(2, 3, 4)
    traj[1, 0, 0] = float("nan")
    traj[1, 1, 2] = float("inf")
    traj[1, 2] = 0.5
    st = trajectory_stats(traj)
    assert st["n_nonfinite"] == 2
    assert st["frac_out_of_range"] == 0.0 and st["max_abs_x"] == 0.5
    assert math.isfinite(st["max_velocity_norm"])


def test_stress_reads_the_guided_velocity_off_the_euler_steps():
    """For a field whose guided velocity is known, ||v_w|| along the trajectory is that field's norm."""
    from kaclib.paths import GaussianPath

    class Field(torch.nn.Module):
        num_classes = 2

        def forward(self, x, t, y):  # conditional field 1 + y, null class (y = 2) field 0
            return torch.where((y == 2).view(-1, 1, 1, 1), 0.0, 1.0 + y.view(-1, 1, 1, 1).float()).expand_as(
                x
            )

    model = Field()
    res, g = stress(model, GaussianPath(), n=4, steps=2, w=3.0, seed=0, image_shape=(1, 2, 2))
    # v_w = v_u + w (v_c - v_u) = 3 (1 + y) in every pixel of a 1x2x2 image: ||v_w|| = 3 (1 + y) * 2
    assert res.max_velocity_norm == pytest.approx(3 * 2 * 2, rel=1e-5)
    assert res.n_nonfinite == 0 and res.network_passes == 2 * 2
