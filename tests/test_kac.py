"""The Kac process against its exact law: Monte Carlo, quadrature, the PDE, the continuity equation."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate

from kaclib.kac import KacProcess, poisson, standard_gamma
from kaclib.stats import ks_bound_99, ks_distance

PARAMS = [(9.0, 3.0), (25.0, 2.0), (1.0, 1.0)]
TIMES = [2.0**-10, 2.0**-6, 2.0**-3, 1.0]
F64 = torch.float64


@pytest.mark.parametrize("a,c", PARAMS)
@pytest.mark.parametrize("s", TIMES)
def test_sampler_matches_cdf_and_atom_mass(a, c, s):
    proc = KacProcess(a, c)
    n = 100_000
    gen = torch.Generator().manual_seed(int(1000 * a + 10 * c + s * 1e4))
    x = proc.sample(torch.full((n,), s, dtype=F64), generator=gen)
    st = torch.tensor(s, dtype=F64)
    assert (x.abs() <= c * s).all()
    d = ks_distance(x, lambda v: proc.cdf(v, st))
    if d >= ks_bound_99(n):
        # 48 cases at the 99% level: one exceedance is expected now and then from a correct
        # sampler; it must not recur on fresh draws (joint false alarm rate 1e-4 per case)
        d = ks_distance(proc.sample(torch.full((n,), s, dtype=F64), generator=gen), lambda v: proc.cdf(v, st))
    assert d < ks_bound_99(n), f"KS distance {d:.5f} over the 99% bound {ks_bound_99(n):.5f} twice"
    frac_atoms = (x.abs() == c * s).double().mean().item()
    mass = math.exp(-a * s)
    sd = math.sqrt(mass * (1 - mass) / n)
    assert abs(frac_atoms - mass) < 4 * sd + 1e-12


@pytest.mark.parametrize("a,c,s", [(1000.0, 1.0, 1.0), (1e4, 2.0, 1.0), (12.0, 1.0, 1.0), (0.0, 2.0, 0.5)])
def test_sampler_large_rates_and_no_flips(a, c, s):
    proc = KacProcess(a, c)
    n = 50_000
    x = proc.sample(torch.full((n,), s, dtype=F64), generator=torch.Generator().manual_seed(1))
    d = ks_distance(x, lambda v: proc.cdf(v, torch.tensor(s, dtype=F64)))
    assert d < ks_bound_99(n)
    if a > 0:
        assert (
            abs(x.var().item() - proc.var(torch.tensor(s, dtype=F64)).item())
            < 0.05 * proc.var(torch.tensor(s)).item()
        )


def test_sampler_float32_stays_inside_the_fronts_and_is_seeded():
    proc = KacProcess(9.0, 3.0)
    s = torch.rand(10_000, generator=torch.Generator().manual_seed(0))
    x1 = proc.sample(s, generator=torch.Generator().manual_seed(5))
    x2 = proc.sample(s, generator=torch.Generator().manual_seed(5))
    assert x1.dtype == torch.float32 and torch.equal(x1, x2)
    assert (x1.abs() <= 3.0 * s).all()
    assert not torch.equal(x1, proc.sample(s, generator=torch.Generator().manual_seed(6)))


def test_sampler_at_time_zero_is_zero_and_shapes_broadcast():
    proc = KacProcess(9.0, 3.0)
    s = torch.zeros(4, 3, 2)
    assert torch.equal(proc.sample(s), torch.zeros_like(s))
    assert proc.sample(torch.full((2, 5), 0.5)).shape == (2, 5)


@pytest.mark.parametrize("lam", [0.3, 4.0, 9.99, 10.0, 37.5, 2000.0])
def test_poisson_sampler_moments_and_pmf(lam):
    n = 200_000
    k = poisson(torch.full((n,), lam, dtype=F64), generator=torch.Generator().manual_seed(3))
    assert (k == k.round()).all() and (k >= 0).all()
    assert abs(k.mean().item() - lam) < 5 * math.sqrt(lam / n)
    from scipy import stats

    lo, hi = int(stats.poisson.ppf(1e-4, lam)), int(stats.poisson.ppf(1 - 1e-4, lam))
    counts = np.bincount(k.long().numpy(), minlength=hi + 2)[lo : hi + 1]
    expected = n * stats.poisson.pmf(np.arange(lo, hi + 1), lam)
    keep = expected > 20
    chi2 = (((counts[keep] - expected[keep]) ** 2) / expected[keep]).sum()
    assert stats.chi2.sf(chi2, keep.sum() - 1) > 1e-3


@pytest.mark.parametrize("alpha", [1.0, 1.5, 7.0, 4000.0])
def test_gamma_sampler_against_scipy(alpha):
    from scipy import stats

    x = standard_gamma(torch.full((100_000,), alpha, dtype=F64), generator=torch.Generator().manual_seed(2))
    assert stats.kstest(x.numpy(), stats.gamma(alpha).cdf).pvalue > 1e-3


@pytest.mark.parametrize("a,c", PARAMS)
@pytest.mark.parametrize("s", [2.0**-6, 0.3, 1.0])
def test_cdf_is_density_integral_plus_atoms(a, c, s):
    proc = KacProcess(a, c)
    st = torch.tensor(s, dtype=F64)

    def dens(x):
        return proc.density(torch.tensor(x, dtype=F64), st).item()

    atom = 0.5 * math.exp(-a * s)
    for frac in [-0.9, -0.3, 0.0, 0.2, 0.77, 0.999]:
        x = frac * c * s
        ref = atom + integrate.quad(dens, -c * s, x, epsabs=1e-13, epsrel=1e-11, limit=200)[0]
        assert abs(proc.cdf(torch.tensor(x, dtype=F64), st).item() - ref) < 1e-9
    # total mass and the jumps at the fronts
    cont = integrate.quad(dens, -c * s, c * s, epsabs=1e-13, epsrel=1e-12, limit=200)[0]
    assert abs(cont + math.exp(-a * s) - 1) < 1e-9
    assert proc.cdf(torch.tensor(c * s, dtype=F64), st).item() == 1.0
    assert abs(proc.cdf(torch.tensor(-c * s, dtype=F64), st).item() - atom) < 1e-15
    assert proc.cdf(torch.tensor(-c * s * 1.001, dtype=F64), st).item() == 0.0


@pytest.mark.parametrize("a,c", PARAMS + [(0.0, 1.5)])
@pytest.mark.parametrize("s", [0.05, 0.5, 2.0])
def test_variance_formula(a, c, s):
    proc = KacProcess(a, c)
    st = torch.tensor(s, dtype=F64)
    second = integrate.quad(
        lambda x: x * x * proc.density(torch.tensor(x, dtype=F64), st).item(),
        -c * s,
        c * s,
        epsabs=1e-14,
        limit=200,
    )[0]
    second += (c * s) ** 2 * math.exp(-a * s)
    assert abs(proc.var(st).item() - second) < 1e-9 * max(1.0, second)


@pytest.mark.parametrize("a,c", PARAMS)
def test_density_solves_the_damped_wave_equation(a, c):
    """p_ss + 2a p_s = c^2 p_xx in the interior (central differences, float64)."""
    proc = KacProcess(a, c)
    h = 1e-3
    s = torch.tensor([0.2, 0.5, 1.0], dtype=F64).repeat_interleave(7)
    x = (torch.linspace(-0.85, 0.85, 7, dtype=F64).repeat(3)) * c * s
    p = lambda dx, ds: proc.density(x + dx, s + ds)  # noqa: E731
    p_s = (p(0, h) - p(0, -h)) / (2 * h)
    p_ss = (p(0, h) - 2 * p(0, 0) + p(0, -h)) / h**2
    p_xx = (p(h, 0) - 2 * p(0, 0) + p(-h, 0)) / h**2
    resid = p_ss + 2 * a * p_s - c**2 * p_xx
    scale = p_ss.abs() + 2 * a * p_s.abs() + c**2 * p_xx.abs()
    assert (resid.abs() / scale).max() < 1e-4


@pytest.mark.parametrize("a,c", PARAMS)
def test_velocity_satisfies_the_continuity_equation(a, c):
    """p_s + (p v)_x = 0 in the interior: (p, p v) is the probability current of the process."""
    proc = KacProcess(a, c)
    h = 1e-4
    s = torch.tensor([0.1, 0.4, 1.0], dtype=F64).repeat_interleave(9)
    x = (torch.linspace(-0.95, 0.95, 9, dtype=F64).repeat(3)) * c * s
    flux = lambda xx: proc.density(xx, s) * proc.velocity(xx, s)  # noqa: E731
    p_s = (proc.density(x, s + h) - proc.density(x, s - h)) / (2 * h)
    j_x = (flux(x + h) - flux(x - h)) / (2 * h)
    scale = p_s.abs() + j_x.abs()
    assert ((p_s + j_x).abs() / scale).max() < 1e-5


@pytest.mark.parametrize("a,c", PARAMS + [(1e4, 1.0), (0.0, 1.0)])
def test_velocity_is_bounded_by_c_and_odd(a, c):
    proc = KacProcess(a, c)
    s = torch.rand(20_000, dtype=F64, generator=torch.Generator().manual_seed(0)) * 2
    x = (2 * torch.rand(20_000, dtype=F64, generator=torch.Generator().manual_seed(1)) - 1) * 1.2 * c * s
    v = proc.velocity(x, s)
    assert torch.isfinite(v).all()
    assert (v.abs() <= c).all()
    assert torch.allclose(proc.velocity(-x, s), -v)
    # at the fronts the particle has never turned: v = +-c; the interior value stays below c
    front = torch.tensor([0.7], dtype=F64)
    assert proc.velocity(c * front, front).item() == c
    inner = proc.velocity(c * front * (1 - 1e-12), front).item()
    assert inner < c or a == 0


def test_velocity_limit_at_the_front_is_cs_over_s_plus_2_over_a():
    proc = KacProcess(9.0, 3.0)
    s = torch.tensor(0.6, dtype=F64)
    near = proc.velocity(3.0 * s * (1 - 1e-10), s).item()
    assert abs(near - 3.0 * 0.6 / (0.6 + 2 / 9.0)) < 1e-6


def test_velocity_float32_agrees_with_float64():
    proc = KacProcess(9.0, 3.0)
    gen = torch.Generator().manual_seed(0)
    s32 = torch.rand(50_000, generator=gen) + 1e-3
    x32 = (2 * torch.rand(50_000, generator=gen) - 1) * 3.0 * s32
    v32 = proc.velocity(x32, s32)
    v64 = proc.velocity(x32.double(), s32.double())
    rel = (v32.double() - v64).abs() / v64.abs().clamp(min=1e-30)
    assert rel.max() < 1e-5


def test_velocity_large_rate_limit_is_the_heat_flow():
    """a, c -> inf with D = c^2/(2a) = 1/2 fixed: v -> x/(2s)."""
    s = torch.tensor(0.5, dtype=F64)
    x = torch.linspace(-2.0, 2.0, 41, dtype=F64) * math.sqrt(2 * 0.5 * 0.5)
    errs = []
    for a in [1e2, 1e3, 1e4]:
        proc = KacProcess(a, math.sqrt(a))
        errs.append((proc.velocity(x, s) - x / (2 * s)).abs().max().item())
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 1e-3


def test_finite_everywhere_including_edge_cases():
    proc = KacProcess(1e4, 2.0)
    s = torch.tensor([0.0, 0.0, 1e-30, 1.0, 1.0, 1.0, 1.0, 5.0])
    x = torch.tensor([0.0, 1.0, 0.0, 2.0, -2.0, 3.0, 1e30, -1.999999])
    for f in (proc.density, proc.cdf, proc.velocity):
        for dt in (torch.float32, torch.float64):
            assert torch.isfinite(f(x.to(dt), s.to(dt))).all(), f.__name__
    assert torch.isfinite(proc.atom_mass(s)).all() and torch.isfinite(proc.var(s)).all()
    assert torch.isfinite(proc.sample(s)).all()
    # s = 0: a point mass at 0
    assert proc.cdf(torch.tensor([-1e-9, 0.0]), torch.tensor(0.0)).tolist() == [0.0, 1.0]
    assert proc.atom_mass(torch.tensor(0.0)).item() == 1.0


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"a": -1.0, "c": 1.0}, "a"),
        ({"a": float("nan"), "c": 1.0}, "a"),
        ({"a": float("inf"), "c": 1.0}, "a"),
        ({"a": 1.0, "c": 0.0}, "c"),
        ({"a": 1.0, "c": -2.0}, "c"),
        ({"a": 1.0, "c": float("nan")}, "c"),
        ({"a": 1.0, "c": "fast"}, "c"),
    ],
)
def test_invalid_parameters_raise_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name} "):
        KacProcess(**kwargs)


def test_negative_or_nan_time_raises():
    proc = KacProcess(1.0, 1.0)
    for f in (
        lambda s: proc.sample(s),
        lambda s: proc.density(0.0, s),
        lambda s: proc.cdf(0.0, s),
        lambda s: proc.velocity(0.0, s),
        proc.atom_mass,
    ):
        with pytest.raises(ValueError, match="s must"):
            f(torch.tensor([0.5, -0.1]))
        with pytest.raises(ValueError, match="s must"):
            f(torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match="x must"):
        proc.density(torch.tensor([float("nan")]), 0.5)


# ---------------------------------------------------------------- sampling from given uniforms


@pytest.mark.parametrize("lam", [0.0, 0.3, 9.0, 25.0, 1000.0, 1e4])
def test_poisson_inversions_agree_on_the_same_uniforms(lam):
    """Table inversion, the mode walk and sequential inversion are the same map u -> N."""
    from kaclib.kac import _poisson_inversion, poisson_table_inversion, poisson_walk_inversion

    u = torch.rand(1, 100_000, dtype=F64, generator=torch.Generator().manual_seed(int(lam) + 1))
    table = poisson_table_inversion(torch.tensor([lam]), u)
    assert torch.equal(table, poisson_walk_inversion(torch.full_like(u, lam), u))
    if lam < 10:
        assert torch.equal(
            table[0], _poisson_inversion(torch.full((u.shape[1],), lam, dtype=F64), None, u=u[0])
        )
    from scipy import stats

    k = table.flatten().long().numpy()
    assert (k >= 0).all() and abs(k.mean() - lam) < 5 * math.sqrt(max(lam, 1e-3) / k.size)
    if lam > 0:
        assert stats.kstest(k, stats.poisson(lam).cdf).statistic < stats.poisson(lam).pmf(round(lam)) + 0.01


def test_poisson_table_rows_and_the_continuation_beyond_the_table(monkeypatch):
    import kaclib.kac as K

    lam = torch.tensor([0.0, 1.0, 5.0, 9.0, 25.0, 3000.0], dtype=F64)
    u = torch.rand(6, 40_000, dtype=F64, generator=torch.Generator().manual_seed(0))
    walk = K.poisson_walk_inversion(lam[:, None].expand_as(u), u)
    assert torch.equal(K.poisson_table_inversion(lam, u), walk)
    assert torch.equal(
        K.poisson_table_inversion(lam, u.float()),
        K.poisson_walk_inversion(lam[:, None].expand_as(u), u.float()),
    )
    # a table one standard deviation wide: the draws above it continue sequentially, exactly
    monkeypatch.setattr(K, "TABLE_SIGMAS", 1.0)
    narrow = K.poisson_table_inversion(lam, u)
    hi = (lam + lam.sqrt() + 20)[:, None].expand_as(u)
    lo = torch.floor(torch.clamp(lam - lam.sqrt() - 5, min=0))[:, None].expand_as(u)
    assert (walk > hi).sum() > 1000
    assert torch.equal(narrow[walk >= lo], walk[walk >= lo])
    assert (narrow[walk < lo] == lo[walk < lo]).all()  # the documented (here large) mass below the table
    short = K.poisson_table_inversion(lam, u[:, :64])  # short rows: branchless binary search, no guide
    w64, lo64 = walk[:, :64], lo[:, :64]
    assert (w64 > hi[:, :64]).any() and torch.equal(short[w64 >= lo64], w64[w64 >= lo64])
    # the same through the sampler's exponent tables (row-constant times, short rows)
    proc = KacProcess(1.0, 1.0)
    s = lam[1:, None].expand(5, 64).contiguous()
    uu = torch.rand(4, 5, 64, dtype=F64, generator=torch.Generator().manual_seed(1))
    uu[0] = u[1:, :64]
    x = proc.sample_from_uniforms(s, uu)
    assert torch.isfinite(x).all() and (x.abs() <= s).all()


@pytest.mark.parametrize("a,c,s", [(9.0, 3.0, 1.0), (25.0, 2.0, 1.0), (25.0, 2.0, 0.05), (1000.0, 1.0, 1.0)])
def test_sample_from_uniforms_has_the_exact_law_and_is_a_function_of_u(a, c, s):
    proc = KacProcess(a, c)
    u = torch.rand(4, 60_000, dtype=F64, generator=torch.Generator().manual_seed(4))
    x = proc.sample_from_uniforms(s, u)
    st = torch.tensor(s, dtype=F64)
    assert x.dtype == F64 and (x.abs() <= c * s).all()
    assert ks_distance(x, lambda v: proc.cdf(v, st)) < ks_bound_99(x.numel())
    assert torch.equal(proc.sample_from_uniforms(torch.full((60_000,), s, dtype=F64), u), x)
    x32 = proc.sample_from_uniforms(s, u, dtype=torch.float32)
    assert x32.dtype == torch.float32 and (x32.double() - x).abs().max() < 1e-5 * c * s


@pytest.mark.parametrize("how", ["uniforms (mode walk)", "generator (rejection)"])
def test_sampling_with_times_varying_per_element(how):
    proc = KacProcess(25.0, 2.0)
    g = torch.Generator().manual_seed(5)
    s = torch.rand(60_000, dtype=F64, generator=g)  # rates up to 25: neither constant nor < 10
    if how.startswith("uniforms"):
        x = proc.sample_from_uniforms(s, torch.rand(4, 60_000, dtype=F64, generator=g))
    else:
        x = proc.sample(s, generator=g)
    assert (x.abs() <= 2.0 * s).all()
    # conditional law: X/(c s) at rates in a narrow band, against the CDF at the band's middle
    band = (s > 0.6) & (s < 0.6 + 1e-3)
    assert band.sum() > 30
    w = x[band] / (2.0 * s[band])
    ref = lambda v: proc.cdf(v * 2.0 * 0.6005, torch.tensor(0.6005, dtype=F64))  # noqa: E731
    assert ks_distance(w, ref) < 1.63 / math.sqrt(band.sum().item()) + 0.01
    assert ks_distance(x[s > 0.99], lambda v: proc.cdf(v, torch.tensor(0.995, dtype=F64))) < 0.06


def test_sampler_with_row_constant_times_matches_the_law_of_every_row():
    """The training shape: one time per image, constant over its pixels (per-row CDF tables)."""
    proc = KacProcess(9.0, 3.0)
    times = torch.tensor([0.0, 0.01, 0.3, 1.0, 2.0], dtype=F64)
    s = times.view(-1, 1, 1).expand(5, 100, 400).contiguous()
    x = proc.sample(s, generator=torch.Generator().manual_seed(8))
    assert torch.equal(x[0], torch.zeros_like(x[0]))
    for b in range(1, 5):
        st = times[b]
        assert ks_distance(x[b], lambda v: proc.cdf(v, st)) < ks_bound_99(40_000)  # noqa: B023 (called at once)
        mass = math.exp(-9.0 * st.item())
        frac = (x[b].abs() == 3.0 * st).double().mean().item()
        assert abs(frac - mass) < 4 * math.sqrt(mass * (1 - mass) / 40_000) + 1e-12


def test_sample_from_uniforms_rejects_bad_input():
    proc = KacProcess(9.0, 3.0)
    with pytest.raises(ValueError, match="u must"):
        proc.sample_from_uniforms(1.0, torch.rand(3, 10))
    with pytest.raises(ValueError, match="does not broadcast"):
        proc.sample_from_uniforms(torch.ones(7), torch.rand(4, 10))
    with pytest.raises(ValueError, match="s must"):
        proc.sample_from_uniforms(-1.0, torch.rand(4, 10))


@pytest.mark.parametrize("a", [9.0, 25.0])  # elementwise inversion: sequential (rates < 10) / mode walk
def test_elementwise_and_table_paths_are_the_same_function_of_the_uniforms(a):
    proc = KacProcess(a, 2.0)
    n = 20_000
    u = torch.rand(4, n, dtype=F64, generator=torch.Generator().manual_seed(6))
    even = torch.arange(n) % 2 == 0
    s = torch.where(
        even, torch.tensor(0.3, dtype=F64), torch.tensor(0.9, dtype=F64)
    )  # not constant: no table
    x = proc.sample_from_uniforms(s, u)
    assert torch.equal(x[even], proc.sample_from_uniforms(0.3, u[:, even]))
    assert torch.equal(x[~even], proc.sample_from_uniforms(0.9, u[:, ~even]))


@pytest.mark.parametrize("per_row", [64, 4000])  # branchless binary search / guide with one comparison
def test_row_tables_are_the_same_function_of_the_uniforms_as_one_rate(per_row):
    proc = KacProcess(25.0, 2.0)
    times = torch.tensor([0.05, 0.3, 1.0, 8.0], dtype=F64)
    s = times[:, None].expand(4, per_row).contiguous()
    u = torch.rand(4, 4, per_row, dtype=F64, generator=torch.Generator().manual_seed(7))
    x = proc.sample_from_uniforms(s, u)
    for b, t in enumerate(times.tolist()):
        assert torch.equal(x[b], proc.sample_from_uniforms(t, u[:, b]))
