"""Kac-flow, Gaussian and diffusion paths: end points, targets recomputed independently, bounds."""

import math

import pytest
import torch

from kaclib.kac import KacProcess
from kaclib.paths import DiffusionPath, GaussianPath, KacPath, build_path
from kaclib.stats import ks_bound_99, ks_distance

F64 = torch.float64


def _images(b=6, seed=0, dtype=torch.float32):
    return 2 * torch.rand(b, 3, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=dtype) - 1


@pytest.mark.parametrize("f", ["linear", "exp"])
@pytest.mark.parametrize("g", ["t", "t2"])
def test_kac_path_is_data_at_t0(f, g):
    path = KacPath(9.0, 3.0, f=f, g=g)
    x0 = _images()
    ps = path.sample(x0, torch.zeros(6))
    assert torch.equal(ps.x_t, x0)


@pytest.mark.parametrize("f", ["linear", "exp"])
@pytest.mark.parametrize("g", ["t", "t2"])
def test_kac_target_recomputed_independently(f, g):
    a, c, T = 25.0, 2.0, 1.0
    path = KacPath(a, c, f=f, g=g, T=T)
    x0 = _images(dtype=F64)
    t = torch.tensor([0.0, 0.01, 0.2, 0.5, 0.9, 1.0], dtype=F64)
    ps = path.sample(x0, t, generator=torch.Generator().manual_seed(1))
    tb = t.view(-1, 1, 1, 1)
    fv, dfv = (1 - tb / T, -torch.ones_like(tb) / T) if f == "linear" else (torch.exp(-tb), -torch.exp(-tb))
    gv, dgv = (tb, torch.ones_like(tb)) if g == "t" else (tb**2 / T, 2 * tb / T)
    noise = ps.x_t - fv * x0
    assert torch.allclose(noise, ps.noise, atol=1e-12)
    # x_t - f x0 recovers a front atom only up to rounding, and the field jumps at the front: use the
    # drawn noise where it sits exactly on a front (the particle never turned), the recomputed one elsewhere
    on_front = ps.noise.abs() == c * gv
    noise = torch.where(on_front, ps.noise, noise)
    assert on_front.any() and (~on_front).any()
    expect = dfv * x0 + dgv * KacProcess(a, c).velocity(noise, gv.expand_as(noise))
    assert torch.allclose(ps.target, expect, atol=1e-12)
    # finite speed: every coordinate of the noise part of the target is within g' c
    assert ((ps.target - dfv * x0).abs() <= dgv * c + 1e-12).all()
    assert (ps.noise.abs() <= gv * c + 1e-12).all()


def test_kac_latent_has_the_law_of_k_at_g_of_T():
    path = KacPath(9.0, 3.0, g="t2", T=1.0)
    z = path.sample_latent((25_000, 4), generator=torch.Generator().manual_seed(0), dtype=F64)
    proc = KacProcess(9.0, 3.0)
    d = ks_distance(z, lambda v: proc.cdf(v, torch.tensor(1.0, dtype=F64)))
    assert d < ks_bound_99(z.numel())


def test_kac_path_marginal_at_T_is_the_latent_law_for_linear_f():
    path = KacPath(4.0, 1.5)
    x0 = torch.full((20_000, 1), 0.7, dtype=F64)
    x_T = path.sample(x0, torch.ones(20_000, dtype=F64), generator=torch.Generator().manual_seed(2)).x_t
    proc = KacProcess(4.0, 1.5)
    assert ks_distance(x_T, lambda v: proc.cdf(v, torch.tensor(1.0, dtype=F64))) < ks_bound_99(20_000)


def test_per_coordinate_target_bound():
    path = KacPath(9.0, 3.0)
    x0 = _images(b=64)
    t = torch.rand(64, generator=torch.Generator().manual_seed(3))
    ps = path.sample(x0, t, generator=torch.Generator().manual_seed(4))
    bound = path.velocity_bound(t).view(-1, 1, 1, 1)
    assert (ps.target.abs() <= bound + 1e-6).all()


def test_gaussian_path_end_points_and_target():
    path = GaussianPath()
    x0 = _images()
    assert torch.equal(path.sample(x0, torch.zeros(6)).x_t, x0)
    ps = path.sample(x0, torch.ones(6), generator=torch.Generator().manual_seed(0))
    assert torch.equal(ps.x_t, ps.noise)
    t = torch.full((6,), 0.3)
    ps = path.sample(x0, t, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ps.target, ps.noise - x0)
    # the target is the time derivative of x_t: finite difference with the same noise
    h = 1e-3
    ps2 = path.sample(x0, t + h, generator=torch.Generator().manual_seed(0))
    assert torch.allclose((ps2.x_t - ps.x_t) / h, ps.target, atol=1e-2)


def test_kac_target_is_the_time_derivative_in_the_diffusion_limit():
    """Diffusion limit: the diffusion path's conditional field is x/(2g)-based; a Kac path with large a and
    c^2/(2a) = D matches it where both are defined."""
    D = 0.5
    diff = DiffusionPath(D)
    kac = KacPath(1e4, math.sqrt(2 * D * 1e4))
    x0 = torch.zeros(1, 41, dtype=F64)
    t = torch.tensor([0.5], dtype=F64)
    x = torch.linspace(-1.5, 1.5, 41, dtype=F64).view(1, -1) * math.sqrt(2 * D * 0.5)
    assert torch.allclose(kac.conditional_velocity(x, x0, t), diff.conditional_velocity(x, x0, t), atol=1e-3)


def test_shapes_and_dtypes_follow_the_data():
    path = KacPath()
    for shape in [(5, 2), (5, 1, 8, 8), (5, 3, 4, 4, 2)]:
        x0 = torch.zeros(shape, dtype=F64)
        ps = path.sample(x0, torch.rand(5, dtype=F64))
        assert ps.x_t.shape == shape and ps.target.dtype == F64 and ps.t.shape == (5,)


def test_config_round_trip():
    for p in [KacPath(25.0, 2.0, f="exp", g="t2", T=2.0), GaussianPath(), DiffusionPath(0.3)]:
        q = build_path(p.config())
        assert q.config() == p.config()


@pytest.mark.parametrize(
    "make,name",
    [
        (lambda: KacPath(a=-1.0), "a"),
        (lambda: KacPath(c=0.0), "c"),
        (lambda: KacPath(f="cos"), "f"),
        (lambda: KacPath(g="sqrt"), "g"),
        (lambda: KacPath(T=0.0), "T"),
        (lambda: KacPath(T=float("nan")), "T"),
        (lambda: build_path({"kind": "brownian"}), "path kind"),
    ],
)
def test_invalid_path_parameters(make, name):
    with pytest.raises(ValueError, match=rf"^{name} "):
        make()


def test_times_outside_the_interval_or_wrong_batch_raise():
    path = KacPath()
    x0 = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="t must lie"):
        path.sample(x0, torch.tensor([0.1, 0.2, 1.5]))
    with pytest.raises(ValueError, match="batch size"):
        path.sample(x0, torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="NaN"):
        GaussianPath().sample(x0, torch.tensor([0.1, float("nan"), 0.2]))
