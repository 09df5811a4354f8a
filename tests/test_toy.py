"""kaclib.toy: the Kac path simulator, the telegrapher's equation helpers and the 2D toy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kaclib import toy
from kaclib.kac import KacProcess


def _brute_position(tr, s):
    k1 = tr.flips.shape[1] + 1
    signs = 1.0 - 2.0 * (torch.arange(k1) % 2).double()
    zero = torch.zeros(tr.n, 1, dtype=torch.float64)
    starts = torch.cat([zero, tr.flips], 1)
    ends = torch.cat([tr.flips, torch.full_like(zero, math.inf)], 1)
    seg = (torch.minimum(ends[..., None], s[None, None, :]) - starts[..., None]).clamp(min=0)
    return tr.c * tr.direction[:, None] * (signs[None, :, None] * seg).sum(1)


def test_simulated_paths_follow_the_exact_law():
    proc = KacProcess(2.0, 1.0)
    g = torch.Generator().manual_seed(0)
    tr = toy.simulate_kac(proc, 40_000, 2.0, generator=g)
    x = tr.position(torch.tensor([1.0], dtype=torch.float64))[:, 0]
    assert toy.kolmogorov_to_law(proc, 1.0, x) < 1.95 / math.sqrt(tr.n)
    atoms = float((x.abs() >= 1.0 - 1e-12).double().mean())
    assert abs(atoms - math.exp(-2.0)) < 5 * math.sqrt(math.exp(-2) / tr.n)
    assert tr.max_speed_ratio() <= 1 + 1e-12
    assert abs(float(tr.n_flips(1.0).double().mean()) - 2.0) < 0.05


def test_position_matches_segment_sum_and_corners():
    proc = KacProcess(3.0, 2.0)
    tr = toy.simulate_kac(proc, 50, 1.5, generator=torch.Generator().manual_seed(1))
    s = torch.linspace(0, 1.5, 37, dtype=torch.float64)
    assert torch.allclose(tr.position(s), _brute_position(tr, s), atol=1e-12)
    t, x = tr.corners()
    for i in range(5):
        times, pos = tr.polyline(i)
        k = len(times)
        assert torch.allclose(times, t[i, :k]) and torch.allclose(pos, x[i, :k], atol=1e-12)
    with pytest.raises(ValueError):
        tr.position(torch.tensor([2.0]))


def test_kolmogorov_distance_detects_a_wrong_law():
    proc = KacProcess(2.0, 1.0)
    wrong = KacProcess(2.0, 1.2).sample(
        torch.full((20_000,), 1.0, dtype=torch.float64), generator=torch.Generator().manual_seed(2)
    )
    assert toy.kolmogorov_to_law(proc, 1.0, wrong) > 0.05


def test_telegraph_fd_converges_to_the_smoothed_law():
    proc = KacProcess(2.0, 1.0)
    sigma = 0.1
    errs = []
    for h in (0.02, 0.01):
        x = np.arange(-3.5, 3.5 + h / 2, h)
        p0 = np.exp(-(x**2) / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))
        ts, fd = toy.telegraph_fd(2.0, 1.0, x, p0, s_end=1.0, n_out=2)
        assert np.allclose(ts, [0, 0.5, 1.0])
        ex = np.stack([toy.smoothed_kac_law(proc, x, s, sigma) for s in ts])
        errs.append(np.abs(fd - ex).max() / ex.max())
        assert np.abs(fd.sum(1) * h - 1).max() < 1e-8
    assert 1.7 < math.log2(errs[0] / errs[1]) < 2.3


def test_residuals_of_the_closed_forms_are_small():
    for proc in (KacProcess(2.0, 1.0), KacProcess(9.0, 3.0)):
        for s in (0.1, 1.0):
            assert toy.pde_residual(proc, s) < 1e-4
            assert toy.continuity_residual(proc, s) < 1e-5


def test_kolmogorov_to_heat_decreases_with_xi():
    d = [toy.kolmogorov_to_heat(KacProcess(xi / 2, math.sqrt(0.5 * xi)), 1.0, 0.5) for xi in (2, 18, 200)]
    assert d[0] > d[1] > d[2] and d[2] < 2e-3


def test_mixture_and_metrics():
    g = torch.Generator().manual_seed(0)
    x, comp = toy.sample_mixture(3000, generator=g)
    assert x.shape == (3000, 2) and comp.max() == 8
    assert toy.mixture_centers().shape == (9, 2)
    st = toy.mode_stats(x)
    assert st["modes"] == 9 and st["near"] > 0.98
    y, _ = toy.sample_mixture(3000, generator=g)
    floor = toy.energy_distance(x, y)
    far = toy.energy_distance(x, torch.randn(3000, 2, generator=g))
    assert 0 <= floor < 0.01 < far
    assert toy.energy_distance(x, x) == pytest.approx(0.0, abs=1e-12)
    dens = toy.mixture_density(toy.mixture_centers())
    assert torch.all(dens > 0)


def test_gaussian_marginal_velocity_matches_monte_carlo():
    g = torch.Generator().manual_seed(3)
    x0, _ = toy.sample_mixture(400_000, generator=g)
    eps = torch.randn(x0.shape, generator=g)
    t = 0.5
    xt = (1 - t) * x0 + t * eps
    q = torch.tensor([0.3, -0.2])
    near = ((xt - q) ** 2).sum(1) < 0.05**2
    mc = (eps - x0)[near].mean(0).double()
    exact = toy.gaussian_marginal_velocity(q[None].double(), t)[0]
    se = (eps - x0)[near].std(0).double() / math.sqrt(int(near.sum()))
    assert torch.all((mc - exact).abs() < 5 * se + 0.02)


def test_train_toy_is_load_or_train(tmp_path, monkeypatch):
    pytest.importorskip("safetensors")
    from kaclib.paths import GaussianPath, KacPath

    monkeypatch.setenv("KACLIB_CACHE_DIR", str(tmp_path))
    m1 = toy.train_toy(KacPath(9.0, 3.0), steps=5, batch_size=32, n_data=256)
    m2 = toy.train_toy(KacPath(9.0, 3.0), steps=5, batch_size=32, n_data=256)
    assert m1.folder == m2.folder and len(m1.losses) == 5
    for p1, p2 in zip(m1.model.parameters(), m2.model.parameters()):
        assert torch.equal(p1, p2)
    m3 = toy.train_toy(GaussianPath(), steps=5, batch_size=32, n_data=256)
    assert m3.folder != m1.folder
    mb = toy.train_toy(KacPath(9.0, 3.0), steps=5, batch_size=32, n_data=256, head="bounded")
    x = torch.randn(64, 2) * 3
    with torch.no_grad():
        u = mb.model(x, torch.rand(64))
    assert torch.all(u.abs() <= 1 + 3 + 1e-5)  # |f'| + g' c per coordinate
    assert m1.training_data().shape == (256, 2)
