"""Rules choosing the Kac path's (a, c) from data (kaclib.rules): each rule's defining equation
holds for its output."""

import math

import pytest
import torch

from kaclib.kac import KacProcess
from kaclib.paths import build_path
from kaclib.rules import (
    RULES,
    apply_rules,
    data_range,
    data_variance,
    kac_variance,
    light_cone_rule,
    reversal_rule,
    solve_variance,
    variance_rule,
)


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    return (torch.rand(300, 1, 4, 4, generator=g) * 2 - 1) * torch.linspace(0.2, 0.9, 16).reshape(1, 1, 4, 4)


def _var_at_T(choice):
    path = build_path(choice.path_config())
    return float(KacProcess(choice.a, choice.c).var(path.g(torch.tensor(path.T, dtype=torch.float64))))


def test_data_statistics(data):
    flat = data.double().flatten(1)
    assert data_variance(data) == pytest.approx(float(flat.var(0, unbiased=False).mean()), rel=1e-12)
    assert data_range(data) == pytest.approx(float(flat.abs().max()))
    assert data_range(data, 0.5) == pytest.approx(float(flat.abs().flatten().median()), rel=1e-2)
    # uniform on [-w, w] per pixel: variance w^2 / 3 averaged over the 16 widths
    widths = torch.linspace(0.2, 0.9, 16, dtype=torch.float64)
    assert data_variance(data) == pytest.approx(float((widths**2 / 3).mean()), rel=0.05)


@pytest.mark.parametrize("g,T", [("t", 1.0), ("t2", 1.0), ("t", 2.0)])
def test_light_cone_rule_solves_its_equations(data, g, T):
    r = light_cone_rule(data, "linear", g, T)
    sT = float(build_path(r.path_config()).g(torch.tensor(T)))
    assert r.c * sT == pytest.approx(data_range(data), rel=1e-12)
    assert _var_at_T(r) == pytest.approx(data_variance(data), rel=1e-9)
    assert r.rule == "light-cone" and r.a > 0


@pytest.mark.parametrize("a", [0.0, 9.0, 25.0])
def test_variance_rule_solves_its_equation(data, a):
    r = variance_rule(data, "linear", "t2", 1.0, a=a)
    assert r.a == a
    assert _var_at_T(r) == pytest.approx(data_variance(data), rel=1e-12)


@pytest.mark.parametrize("k", [1.0, 4.0, 20.0])
def test_reversal_rule_solves_its_equations(data, k):
    r = reversal_rule(data, "exp", "t", 2.0, k=k)
    assert r.a * 2.0 == pytest.approx(k, rel=1e-12)  # g(T) = T = 2
    assert _var_at_T(r) == pytest.approx(data_variance(data), rel=1e-12)


def test_solve_variance_both_ways_and_no_solution():
    a, c = solve_variance(0.3, 1.0, c=1.0)
    assert kac_variance(a, c, 1.0) == pytest.approx(0.3, rel=1e-10)
    _, c2 = solve_variance(0.3, 1.0, a=a)
    assert c2 == pytest.approx(1.0, rel=1e-9)
    a3, _ = solve_variance(1e-4, 1.0, c=3.0)  # far in the diffusive regime: Var ~ c^2 s / a
    assert a3 == pytest.approx(9.0 / 1e-4, rel=1e-3)
    with pytest.raises(ValueError, match="below"):
        solve_variance(1.0, 1.0, c=1.0)  # Var <= (c s)^2
    with pytest.raises(ValueError, match="exactly one"):
        solve_variance(0.3, 1.0)
    with pytest.raises(ValueError, match="exactly one"):
        solve_variance(0.3, 1.0, a=1.0, c=1.0)


def test_apply_rules_and_bad_input(data):
    out = apply_rules(data, "linear", "t2", 1.0, options={"reversals": {"k": 8.0}})
    assert set(out) == set(RULES) and out["reversals"].a == pytest.approx(8.0)
    assert all(math.isfinite(r.c) and r.to_dict()["xi"] == 2 * r.a for r in out.values())
    with pytest.raises(ValueError, match="unknown rule"):
        apply_rules(data, options={"nope": {}})
    with pytest.raises(ValueError, match="data must"):
        variance_rule(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="g must"):
        variance_rule(data, g="t3")
    with pytest.raises(ValueError, match="quantile"):
        data_range(data, 1.5)


def test_mnist5k_14_is_mnist5k_pooled_with_the_same_split():
    """The second data set of the rules benchmark: kaclib.data's ``mnist5k-14``."""
    from kaclib.data import load_dataset

    small, full = load_dataset("mnist5k-14", "ref"), load_dataset("mnist5k", "ref")
    assert small.image_shape == (1, 14, 14) and torch.equal(small.labels, full.labels)
    assert torch.allclose(small.images, torch.nn.functional.avg_pool2d(full.images, 2))
    r = light_cone_rule(load_dataset("mnist5k-14", "train").images, "linear", "t2", 1.0)
    assert r.c == pytest.approx(1.0, rel=1e-6) and _var_at_T(r) == pytest.approx(r.data_variance, rel=1e-9)
