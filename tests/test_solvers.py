"""Samplers: orders of accuracy on ODEs with closed-form flows, exact NFE counts, validation."""

import math

import pytest
import torch

from kaclib.guidance import GuidedVelocity
from kaclib.solvers import NFE_PER_STEP, SOLVERS, nfe_for, sample, time_grid

torch.set_num_threads(1)


def linear_field(x, t, y):
    """``dx/dt = (1 + t^2) x`` (a ``-lambda(t) x`` field in reverse time);
    flow from ``T`` to 0: ``x(0) = x(T) exp(-(T + T^3/3))``."""
    return (1 + t * t).reshape((-1,) + (1,) * (x.ndim - 1)) * x


def linear_exact(x_T, T):
    return x_T * math.exp(-(T + T**3 / 3))


def riccati_field(x, t, y):
    """Nonlinear ``dx/dt = x^2``: ``x(0) = x_T / (1 + T x_T)``."""
    return x * x


def riccati_exact(x_T, T):
    return x_T / (1 + T * x_T)


def _x_T():
    return torch.tensor([[0.5, -0.3], [1.0, 0.2]], dtype=torch.float64)


def _order(field, exact, method, T=1.0, steps=(32, 64, 128)):
    x_T = _x_T()
    ref = exact(x_T, T)
    errs = [(sample(field, x_T, n, method=method, T=T).x - ref).abs().max().item() for n in steps]
    return [math.log2(errs[i] / errs[i + 1]) for i in range(len(errs) - 1)], errs


@pytest.mark.parametrize("field,exact", [(linear_field, linear_exact), (riccati_field, riccati_exact)])
@pytest.mark.parametrize("method,order", [("euler", 1.0), ("midpoint", 2.0), ("ab2", 2.0)])
def test_order_of_accuracy(field, exact, method, order):
    orders, errs = _order(field, exact, method, T=0.8)
    for p in orders:
        assert abs(p - order) < 0.15, (method, orders, errs)
    assert errs[-1] < 1e-2


def test_second_order_methods_beat_euler():
    _, e_euler = _order(linear_field, linear_exact, "euler")
    _, e_mid = _order(linear_field, linear_exact, "midpoint")
    _, e_ab2 = _order(linear_field, linear_exact, "ab2")
    assert e_mid[-1] < e_euler[-1] / 10 and e_ab2[-1] < e_euler[-1] / 10


def test_one_step_formulas_exactly():
    """One step of each method on ``u = (1 + t^2) x`` by hand."""
    x = _x_T()
    h = 1.0
    u_T = 2.0 * x  # 1 + T^2 at T = 1
    torch.testing.assert_close(sample(linear_field, x, 1, "euler").x, x - h * u_T)
    torch.testing.assert_close(sample(linear_field, x, 1, "ab2").x, x - h * u_T)  # Euler start
    x_mid = x - 0.5 * h * u_T
    torch.testing.assert_close(sample(linear_field, x, 1, "midpoint").x, x - h * (1 + 0.25) * x_mid)
    # two AB-2 steps: Euler then x2 = x1 - h (1.5 u1 - 0.5 u0), h = 1/2
    h = 0.5
    x1 = x - h * 2.0 * x
    x2 = x1 - h * (1.5 * (1 + 0.25) * x1 - 0.5 * 2.0 * x)
    torch.testing.assert_close(sample(linear_field, x, 2, "ab2").x, x2)


class Counter:
    def __init__(self):
        self.times = []

    def __call__(self, x, t, y):
        assert t.shape == (x.shape[0],) and t.dtype == x.dtype
        self.times.append(float(t[0]))
        return -x


@pytest.mark.parametrize("method", SOLVERS)
@pytest.mark.parametrize("steps", [1, 2, 7])
def test_exact_nfe_and_times(method, steps):
    f = Counter()
    res = sample(f, _x_T(), steps, method=method, T=2.0, return_trajectory=True)
    assert res.nfe == len(f.times) == NFE_PER_STEP[method] * steps == nfe_for(method, steps)
    assert res.network_passes == res.nfe and res.steps == steps
    grid = time_grid(steps, 2.0)
    assert grid[0] == 2.0 and grid[-1] == 0.0 and torch.equal(res.times, grid)
    if method == "midpoint":
        expected = [v for k in range(steps) for v in (float(grid[k]), float(grid[k]) - 1.0 / steps)]
    else:
        expected = [float(v) for v in grid[:-1]]
    assert f.times == pytest.approx(expected, abs=1e-12)
    assert res.trajectory.shape == (steps + 1, 2, 2)
    assert torch.equal(res.trajectory[0], _x_T()) and torch.equal(res.trajectory[-1], res.x)


def test_network_passes_of_guided_field():
    class Model(torch.nn.Module):
        def forward(self, x, t, y):
            return x * (1.0 + y.to(x.dtype)).reshape(-1, 1)

    x = _x_T()
    y = torch.tensor([0, 1])
    for w, per in [(1.5, 2), (1.0, 1), (0.0, 1)]:
        res = sample(GuidedVelocity(Model(), w, num_classes=2), x, 5, method="midpoint", y=y)
        assert res.nfe == 10 and res.network_passes == per * 10


def test_no_grad_and_determinism():
    w = torch.nn.Parameter(torch.tensor(0.7, dtype=torch.float64))
    field = lambda x, t, y: w * x  # noqa: E731
    r1 = sample(field, _x_T(), 4, "ab2")
    assert not r1.x.requires_grad
    assert r1.trajectory is None
    assert torch.equal(r1.x, sample(field, _x_T(), 4, "ab2", progress=True).x)


@pytest.mark.parametrize("steps", [0, -3, 2.5, True, "4"])
def test_bad_steps(steps):
    with pytest.raises(ValueError, match="steps"):
        sample(linear_field, _x_T(), steps)


def test_bad_arguments():
    with pytest.raises(ValueError, match="method"):
        sample(linear_field, _x_T(), 3, method="rk4")
    with pytest.raises(ValueError, match="T"):
        sample(linear_field, _x_T(), 3, T=float("nan"))
    with pytest.raises(ValueError, match="T"):
        sample(linear_field, _x_T(), 3, T=-1.0)
    with pytest.raises(ValueError, match="y"):
        sample(linear_field, _x_T(), 3, y=torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="x_T"):
        sample(linear_field, torch.tensor(1.0), 3)
