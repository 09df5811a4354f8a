"""Classifier-free guidance: the formula, the batching, pass counts, validation and the bound."""

import math

import pytest
import torch
from torch import nn

from kaclib.guidance import GuidedVelocity, guided_bound, passes_per_call
from kaclib.kac import KacProcess

torch.set_num_threads(1)


class KacClassField(nn.Module):
    """Exact Kac conditional velocity around one 'data point' per class: ``v(x - mu_y, s)``.

    Class ``K`` (the null label) has its own centre, so conditional and unconditional fields are
    two different exact Kac velocities.  Records the batch size of every call.
    """

    def __init__(self, centres, a=9.0, c=3.0):
        super().__init__()
        self.register_buffer("mu", torch.as_tensor(centres, dtype=torch.float64))
        self.process = KacProcess(a, c)
        self.calls = []

    def forward(self, x, t, y):
        self.calls.append(x.shape[0])
        mu = self.mu[y].reshape((-1,) + (1,) * (x.ndim - 1))
        s = t.reshape((-1,) + (1,) * (x.ndim - 1)).expand_as(x)
        return self.process.velocity(x - mu, s)


K = 3


def _field():
    return KacClassField([-1.0, 0.5, 2.0, -0.3])  # classes 0..2 and the null class 3


def _inputs(B=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = 3 * torch.randn(B, 2, 4, generator=g, dtype=torch.float64)
    t = 0.05 + 0.9 * torch.rand(B, generator=g, dtype=torch.float64)
    y = torch.randint(0, K, (B,), generator=g)
    return x, t, y


@pytest.mark.parametrize("w", [0.0, 1.0, 1.5, 3.0, -0.5, 0.25])
def test_formula_and_single_batched_call(w):
    field = _field()
    x, t, y = _inputs()
    null = torch.full_like(y, K)
    v_c, v_u = field(x, t, y), field(x, t, null)
    field.calls.clear()
    guided = GuidedVelocity(field, w, num_classes=K)
    out = guided(x, t, y)
    torch.testing.assert_close(out, v_u + w * (v_c - v_u), rtol=0, atol=1e-12)
    # the other convention (1 + w') v_c - w' v_u with w' = w - 1 is the same field
    wp = w - 1
    torch.testing.assert_close(out, (1 + wp) * v_c - wp * v_u, rtol=0, atol=1e-12)
    # exactly one network call; batch 2B unless w in {0, 1}
    expected_passes = 1 if w in (0.0, 1.0) else 2
    assert field.calls == [expected_passes * x.shape[0]]
    assert guided.passes_per_call() == expected_passes == passes_per_call(guided, t)


def test_w0_and_w1_are_the_plain_fields():
    field = _field()
    x, t, y = _inputs()
    torch.testing.assert_close(GuidedVelocity(field, 1.0, K)(x, t, y), field(x, t, y), rtol=0, atol=0)
    torch.testing.assert_close(
        GuidedVelocity(field, 0.0, K)(x, t, y), field(x, t, torch.full_like(y, K)), rtol=0, atol=0
    )
    # y=None means unconditional whatever w is
    torch.testing.assert_close(
        GuidedVelocity(field, 2.0, K)(x, t, None), field(x, t, torch.full_like(y, K)), rtol=0, atol=0
    )


def test_callable_weight_per_sample_and_schedule():
    field = _field()
    x, t, y = _inputs()
    null = torch.full_like(y, K)
    v_c, v_u = field(x, t, y), field(x, t, null)
    guided = GuidedVelocity(field, lambda tt: 1.0 + 2.0 * tt, num_classes=K)  # (B,) tensor
    w = (1.0 + 2.0 * t).reshape(-1, 1, 1)
    torch.testing.assert_close(guided(x, t, y), v_u + w * (v_c - v_u), rtol=0, atol=1e-12)
    assert guided.passes_per_call(t) == 2
    # a schedule that is 1 everywhere costs one pass, and a float-returning callable works
    ones = GuidedVelocity(field, lambda tt: torch.ones_like(tt), num_classes=K)
    assert ones.passes_per_call(t) == 1
    torch.testing.assert_close(ones(x, t, y), v_c, rtol=0, atol=0)
    const = GuidedVelocity(field, lambda tt: 2.0, num_classes=K)
    torch.testing.assert_close(const(x, t, y), v_u + 2.0 * (v_c - v_u), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="t is needed"):
        guided.passes_per_call()


def test_passes_of_a_bare_model_is_one():
    assert passes_per_call(_field()) == 1
    assert passes_per_call(lambda x, t, y: x) == 1


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), "two", None])
def test_bad_weight_raises_naming_w(bad):
    with pytest.raises(ValueError, match=r"\bw\b"):
        GuidedVelocity(_field(), bad, num_classes=K)
    with pytest.raises(ValueError, match=r"\bw\b"):
        guided_bound(bad, 1.0)


def test_callable_weight_returning_nan_raises():
    x, t, y = _inputs()
    with pytest.raises(ValueError, match="w"):
        GuidedVelocity(_field(), lambda tt: float("nan"), K)(x, t, y)
    with pytest.raises(ValueError, match="w"):
        GuidedVelocity(_field(), lambda tt: torch.full_like(tt, math.inf), K)(x, t, y)
    with pytest.raises(ValueError, match="shape"):
        GuidedVelocity(_field(), lambda tt: torch.ones(len(tt) + 1), K)(x, t, y)


def test_shape_validation():
    x, t, y = _inputs()
    g = GuidedVelocity(_field(), 1.5, K)
    with pytest.raises(ValueError, match="t must"):
        g(x, t[:-1], y)
    with pytest.raises(ValueError, match="y must"):
        g(x, t, y[:-1])
    with pytest.raises(ValueError, match="num_classes"):
        GuidedVelocity(_field(), 1.5, 0)


def test_guided_bound_closed_form():
    c = 2.0
    assert guided_bound(0.0, c) == c and guided_bound(1.0, c) == c and guided_bound(0.4, c) == c
    assert guided_bound(1.2, c) == pytest.approx(1.4 * c)
    assert guided_bound(3.0, c) == pytest.approx(5 * c)
    assert guided_bound(-0.5, c) == pytest.approx(2 * c)  # (1 - 2w) c for w < 0
    with pytest.raises(ValueError, match="c"):
        guided_bound(1.0, -1.0)


@pytest.mark.parametrize("w", [-0.5, 0.0, 0.3, 1.0, 1.2, 2.0, 3.0])
def test_bound_holds_and_is_attained_for_exact_kac_velocities(w):
    """Two exact Kac conditional velocities (different centres, the 'cond' and 'uncond' fields):
    the guided field never exceeds ``guided_bound(w, c)`` and reaches it."""
    a, c, s = 9.0, 3.0, 0.4
    field = KacClassField([-1.5, 1.5], a=a, c=c)  # class 0 (cond) and null class 1 (uncond)
    guided = GuidedVelocity(field, w, num_classes=1)
    x = torch.linspace(-6, 6, 4001, dtype=torch.float64).reshape(-1, 1)
    t = torch.full((x.shape[0],), s, dtype=torch.float64)
    v = guided(x, t, torch.zeros(x.shape[0], dtype=torch.long))
    bound = guided_bound(w, c)
    assert v.abs().max() <= bound * (1 + 1e-12)
    # attained (between the fronts' outer sides: v_c = -c, v_u = +c there, or both at +-c)
    assert v.abs().max() >= bound * (1 - 1e-9)
    # the individual fields obey |v| <= c and are genuinely different
    v_c = field(x, t, torch.zeros(x.shape[0], dtype=torch.long))
    v_u = field(x, t, torch.ones(x.shape[0], dtype=torch.long))
    assert v_c.abs().max() <= c and v_u.abs().max() <= c
    assert (v_c - v_u).abs().max() > c


def test_bound_holds_on_random_fields_and_interior_is_strict():
    """Random centres and times in many dimensions: the bound holds everywhere; restricted to the
    interiors of both laws (no atoms) it is strict, since the interior velocity stays below c."""
    a, c = 9.0, 3.0
    gen = torch.Generator().manual_seed(1)
    centres = 2 * torch.randn(6, dtype=torch.float64, generator=gen)
    field = KacClassField(centres, a=a, c=c)
    B = 512
    x = 4 * torch.randn(B, 8, dtype=torch.float64, generator=gen)
    t = torch.rand(B, dtype=torch.float64, generator=gen)
    y = torch.randint(0, 5, (B,), generator=gen)
    for w in (0.5, 1.2, 2.5):
        v = GuidedVelocity(field, w, num_classes=5)(x, t, y)
        assert v.abs().max() <= guided_bound(w, c) * (1 + 1e-12)
    # interior points only
    s = t.reshape(-1, 1)
    inside = ((x - centres[y].reshape(-1, 1)).abs() < c * s) & ((x - centres[5]).abs() < c * s)
    v = GuidedVelocity(field, 2.0, num_classes=5)(x, t, y)
    assert inside.sum() > 100
    assert v[inside].abs().max() < guided_bound(2.0, c)
