"""The variance-matched Gaussian twin, the Kac family's distance to its diffusion limit, straightness
and few-step error (kaclib.paths.VarianceMatchedGaussianPath, kaclib.diffusion_limit)."""

import itertools
import math

import pytest
import torch
from torch import nn

from kaclib.diffusion_limit import (
    few_step_error,
    kac_family,
    law_distance,
    straightness,
)
from kaclib.evaluation import teacher_config
from kaclib.kac import KacProcess
from kaclib.latents import image_latents
from kaclib.paths import KacPath, VarianceMatchedGaussianPath, build_path

SCHEDULES = [
    (25.0, 2.0, "linear", "t2"),
    (9.0, 3.0, "exp", "t"),
    (0.0, 1.5, "linear", "t"),
    (1e-5, 2.0, "linear", "t"),
]


# ----------------------------------------------------------------------------- the twin


@pytest.mark.parametrize("a,c,f,g", SCHEDULES)
def test_twin_variance_equals_kac_variance_at_every_t(a, c, f, g):
    twin = VarianceMatchedGaussianPath(a, c, f, g, T=1.0)
    kac = KacPath(a, c, f, g, T=1.0)
    t = torch.linspace(0, 1, 201, dtype=torch.float64)
    var = KacProcess(a, c).var(kac.g(t))
    # for a s << 1 the closed form cancels (lam + expm1(-2 lam)/2 ~ lam^2): the twin uses its series
    rtol = 1e-12 if a == 0 or a >= 1 else 1e-5
    assert torch.allclose(twin.sigma(t) ** 2, var, rtol=rtol, atol=1e-300)
    assert torch.equal(twin.f(t), kac.f(t)) and torch.equal(twin.g(t), kac.g(t))


@pytest.mark.parametrize("a,c,f,g", SCHEDULES)
def test_twin_sigma_derivative_matches_finite_differences(a, c, f, g):
    twin = VarianceMatchedGaussianPath(a, c, f, g, T=1.0)
    t = torch.tensor([1e-4, 2e-3, 0.05, 0.3, 0.7, 0.99], dtype=torch.float64)
    h = 1e-6
    fd = (twin.sigma(t + h) - twin.sigma(t - h)) / (2 * h)
    assert torch.allclose(twin.dsigma(t), fd, rtol=1e-6, atol=1e-8)


def test_twin_sigma_starts_ballistic():
    """For small s, Var K_s = c^2 s^2 (1 - 2as/3 + ...): sigma'(0) = c g'(0)."""
    twin = VarianceMatchedGaussianPath(25.0, 2.0, "linear", "t")
    assert float(twin.sigma(torch.tensor(0.0, dtype=torch.float64))) == 0.0
    assert float(twin.dsigma(torch.tensor(0.0, dtype=torch.float64))) == pytest.approx(2.0, rel=1e-12)
    assert float(VarianceMatchedGaussianPath(25.0, 2.0, "linear", "t2").dsigma(torch.tensor(0.0))) == 0.0


def test_twin_target_is_the_time_derivative_of_the_state():
    """Same eps at t +- h (same generator seed): (x_{t+h} - x_{t-h}) / 2h = target."""
    twin = VarianceMatchedGaussianPath(25.0, 2.0, "linear", "t2")
    x0 = torch.rand(6, 1, 4, 4, dtype=torch.float64) * 2 - 1
    t = torch.tensor([0.1, 0.2, 0.4, 0.5, 0.8, 0.95], dtype=torch.float64)
    h = 1e-6
    up = twin.sample(x0, t + h, generator=torch.Generator().manual_seed(3))
    down = twin.sample(x0, t - h, generator=torch.Generator().manual_seed(3))
    mid = twin.sample(x0, t, generator=torch.Generator().manual_seed(3))
    assert torch.allclose((up.x_t - down.x_t) / (2 * h), mid.target, atol=1e-7)
    assert torch.allclose(twin.conditional_velocity(mid.x_t, x0, t), mid.target, atol=1e-10)


def test_twin_noise_has_the_kac_variance_monte_carlo():
    twin = VarianceMatchedGaussianPath(9.0, 3.0, "linear", "t")
    x0 = torch.zeros(40_000, 1)
    ps = twin.sample(x0, torch.full((40_000,), 0.5), generator=torch.Generator().manual_seed(0))
    var = float(KacProcess(9.0, 3.0).var(torch.tensor(0.5)))
    assert ps.noise.var().item() == pytest.approx(var, rel=0.03)  # 0.7% standard error


def test_twin_target_at_t0_is_finite():
    twin = VarianceMatchedGaussianPath(25.0, 2.0, "linear", "t")
    x0 = torch.rand(3, 2)
    u = twin.conditional_velocity(x0 * 1.0, x0, torch.zeros(3))
    assert torch.allclose(u, -x0)  # f'(0) x0 with f = 1 - t


def test_twin_config_round_trip_and_latents():
    twin = VarianceMatchedGaussianPath(25.0, 2.0, "linear", "t2")
    cfg = twin.config()
    assert cfg["kind"] == "gaussian-twin"
    back = build_path(cfg)
    assert isinstance(back, VarianceMatchedGaussianPath) and back.config() == cfg
    std = math.sqrt(float(KacProcess(25.0, 2.0).var(torch.tensor(1.0, dtype=torch.float64))))
    assert twin.latent_std() == pytest.approx(std, rel=1e-12)
    z = image_latents(twin, 400, (1, 8, 8), seed=0)
    assert z.std().item() == pytest.approx(std, rel=0.03)
    assert twin.sample_latent(
        (20_000,), generator=torch.Generator().manual_seed(1)
    ).std().item() == pytest.approx(std, rel=0.03)


def test_teacher_config_accepts_a_path_dict():
    twin = VarianceMatchedGaussianPath(25.0, 2.0, "linear", "t2").config()
    cfg = teacher_config("smoke", path=twin, seed=3)
    assert cfg.path.to_dict() == twin and cfg.seed == 3 and cfg.model["head"] == "free"
    assert cfg.resolved().to_dict()["path"] == twin
    kac = teacher_config("smoke", path={"kind": "kac", "a": 4.0, "c": 1.0, "f": "linear", "g": "t", "T": 1.0})
    assert kac.resolved().path.a == 4.0
    with pytest.raises(ValueError, match="path must be"):
        teacher_config("smoke", path={"a": 1.0})


# ----------------------------------------------------------------------------- law distance


def test_kac_family_has_the_given_diffusivity():
    for xi, (a, c) in zip((2, 8, 32), kac_family(0.08, (2, 8, 32))):
        assert a == xi / 2 and KacProcess(a, c).diffusivity == pytest.approx(0.08, rel=1e-12)
    with pytest.raises(ValueError):
        kac_family(-1.0, (2,))


def test_law_distance_shrinks_monotonically_with_xi_at_fixed_D():
    s = [0.1, 0.5, 1.0]
    dists = [law_distance(a, c, s, grid=1001) for a, c in kac_family(0.08, (2, 8, 32, 128, 512))]
    for i in range(len(s)):
        m = [d.to_matched[i] for d in dists]
        dd = [d.to_diffusion[i] for d in dists]
        assert all(x > y for x, y in itertools.pairwise(m)), m
        assert all(x > y for x, y in itertools.pairwise(dd)), dd
    assert max(dists[-1].to_matched + dists[-1].to_diffusion) < 0.01
    assert min(dists[0].to_diffusion) > 0.1


def test_law_distance_known_answers():
    # no reversal yet (a s -> 0): atoms 1/2 at +-cs against N(0, (cs)^2): sup = Phi(1) - 1/2
    d = law_distance(1e-7, 1.0, 1.0, grid=201)
    assert d.to_matched[0] == pytest.approx(0.5 * math.erf(1 / math.sqrt(2)), abs=1e-5)
    # the number: (25, 2) at s = 1 is within KS 0.003 of its matched normal
    assert law_distance(25.0, 2.0, 1.0).to_matched[0] == pytest.approx(0.0028, abs=2e-4)


def test_law_distance_against_a_monte_carlo_sample():
    a, c, s = 4.0, 1.0, 0.5
    x = KacProcess(a, c).sample(
        torch.full((200_000,), s, dtype=torch.float64), generator=torch.Generator().manual_seed(0)
    )
    std = math.sqrt(float(KacProcess(a, c).var(torch.tensor(s, dtype=torch.float64))))
    xs, _ = x.sort()
    n = xs.numel()
    phi = 0.5 * torch.erfc(-xs / (std * math.sqrt(2)))
    ecdf_hi, ecdf_lo = (
        torch.arange(1, n + 1, dtype=torch.float64) / n,
        torch.arange(n, dtype=torch.float64) / n,
    )
    ks = float(torch.maximum((ecdf_hi - phi).abs(), (ecdf_lo - phi).abs()).max())
    assert law_distance(a, c, s).to_matched[0] == pytest.approx(ks, abs=0.005)  # DKW: 0.003 at 95%


@pytest.mark.parametrize("s", [0.0, -1.0, float("nan"), []])
def test_law_distance_rejects_bad_times(s):
    with pytest.raises(ValueError, match="s must"):
        law_distance(1.0, 1.0, s)


# ----------------------------------------------------------------------------- trajectories


def test_straightness_of_lines_and_bends():
    a, b = torch.randn(5, 1, 3, 3), torch.randn(5, 1, 3, 3)
    w = torch.tensor([0.0, 0.1, 0.15, 0.6, 1.0]).reshape(-1, 1, 1, 1, 1)
    line = (1 - w) * a + w * b
    assert torch.allclose(straightness(line), torch.ones(5, dtype=torch.float64))
    bend = torch.tensor([[[0.0, 0.0]], [[1.0, 0.0]], [[1.0, 1.0]]])  # an L: chord sqrt 2, length 2
    assert straightness(bend).item() == pytest.approx(1 / math.sqrt(2))
    back = torch.tensor([[[0.0]], [[1.0]], [[0.0]]])
    assert straightness(back).item() == 0.0
    assert straightness(torch.zeros(4, 2, 3)).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError):
        straightness(torch.zeros(1, 3))


class _Linear(nn.Module):
    """u(x, t) = x: the solver integrates back from T = 1 to 0, Euler gives x_T (1 - 1/S)^S."""

    def forward(self, x, t, y=None):
        return x


class _Constant(nn.Module):
    def forward(self, x, t, y=None):
        return torch.ones_like(x)


def test_few_step_error_known_answers():
    path = KacPath(25.0, 2.0, "linear", "t2")
    n, shape = 16, (1, 4, 4)
    x_T = image_latents(path, n, shape, seed=5)
    err = few_step_error(_Linear(), path, 1, 10, n=n, seed=5, method="euler", image_shape=shape)
    expected = (x_T * (1 - 0.1) ** 10).flatten(1).pow(2).mean(1).sqrt().double()
    assert torch.allclose(torch.tensor(err.rmse, dtype=torch.float64), expected, rtol=1e-5)
    straight = few_step_error(_Constant(), path, 1, 50, n=n, seed=5, method="euler", image_shape=shape)
    assert straight.mean == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(ValueError, match="reference_steps"):
        few_step_error(_Linear(), path, 4, 4, n=n, image_shape=shape)
