"""The training-free explorer: the exact marginal field of a 2D point set on the Kac path, its
guidance, the Euler roll-outs and the figures the sliders show."""

import itertools
import math

import plotly.graph_objects as go
import pytest
import torch

from kaclib import explorer as ex
from kaclib.guidance import guided_bound
from kaclib.paths import KacPath

F64 = torch.float64
torch.set_num_threads(1)


def _states(m, lim, seed):
    return (2 * torch.rand(m, 2, generator=torch.Generator().manual_seed(seed), dtype=F64) - 1) * lim


@pytest.mark.parametrize("g", ["t", "t2"])
@pytest.mark.parametrize("t", [0.05, 0.4, 1.0])
def test_the_field_of_a_single_point_is_the_conditional_velocity(g, t):
    path = ex.explorer_path(c=2.0, xi=8.0, g=g)
    x0 = torch.tensor([[0.3, -0.7]], dtype=F64)
    pts = ex.PointSet(x0)
    x = _states(500, 2.5, 1)  # inside, on and outside the box of the point
    s = float(path.g(torch.tensor(t)))
    f = float(path.f(torch.tensor(t)))
    x = torch.cat([x, f * x0 + torch.tensor([[2.0 * s, 0.1 * s], [-2.0 * s, -2.0 * s]], dtype=F64)])  # fronts
    v = ex.marginal_velocity(path, pts, x, t)
    expect = path.conditional_velocity(x, x0.expand_as(x), torch.full((x.shape[0],), t, dtype=F64))
    assert torch.allclose(v, expect, atol=1e-12)


def test_the_field_is_bounded_by_the_per_coordinate_bound_and_guided_by_its_triangle_bound():
    pts = ex.default_points()
    assert pts.x.abs().max() <= 1
    path = ex.explorer_path(c=2.5, xi=6.0)
    x = _states(400, 3.0, 2)
    y = torch.arange(400) % 2
    for t in (0.02, 0.1, 0.3, 0.6, 1.0):
        B = float(path.velocity_bound(torch.tensor(t)))
        assert math.isclose(B, 1.0 + 2.5)
        for w in (0.0, 0.5, 1.0, 2.0):
            v = ex.guided_velocity(path, pts, x, t, w, y)
            assert torch.isfinite(v).all()
            assert (v.abs() <= guided_bound(w, B) + 1e-12).all()


def test_the_field_is_the_velocity_of_the_mixture_law():
    """Continuity equation p_t + div(p u) = 0 for the data set's law p = mean_i prod_k p_Kac,
    computed independently of the module (central differences, float64, away from the fronts)."""
    pts = ex.default_points()
    path = KacPath(a=3.0, c=1.5)
    proc = path.process
    h = 1e-5

    def density(x, t):
        t = torch.as_tensor(t, dtype=F64)
        rel = x[:, None, :] - path.f(t) * pts.x[None]
        return proc.density(rel, path.g(t).expand_as(rel)).prod(-1).mean(1)

    x = _states(300, 1.4, 3)
    for t in (0.3, 0.7):
        rel = x[:, None, :] - (1 - t) * pts.x[None]
        far = ((rel.abs() - 1.5 * t).abs() > 1e-3).all(-1).all(-1) & (density(x, t) > 1e-3)
        xs = x[far]
        flux = lambda z, t=t: density(z, t)[:, None] * ex.marginal_velocity(path, pts, z, t)
        p_t = (density(xs, t + h) - density(xs, t - h)) / (2 * h)
        div = sum(
            (flux(xs + h * e)[:, k] - flux(xs - h * e)[:, k]) / (2 * h)
            for k, e in enumerate(torch.eye(2, dtype=F64))
        )
        assert xs.shape[0] > 100
        assert ((p_t + div).abs() / (p_t.abs() + div.abs() + 1e-12)).max() < 1e-4


def test_a_state_on_a_front_follows_that_front():
    """Atoms: a coordinate on the front of one point puts the posterior on that point (a stratum
    of lower dimension), and the field moves the coordinate along the front: f' x_ik + g' c sign."""
    pts = ex.default_points()
    path = ex.explorer_path(c=2.0, xi=4.0)
    t, i = 0.5, 2
    s, f = 0.5, 0.5
    x = torch.tensor([[f * float(pts.x[i, 0]) + 2.0 * s, f * float(pts.x[i, 1]) + 0.1]], dtype=F64)
    v = ex.marginal_velocity(path, pts, x, t)
    assert math.isclose(float(v[0, 0]), -float(pts.x[i, 0]) + 2.0, rel_tol=0, abs_tol=1e-12)
    assert math.isclose(
        float(v[0, 1]), float(path.conditional_velocity(x, pts.x[i : i + 1], t)[0, 1]), abs_tol=1e-12
    )


def test_w_one_is_the_class_conditional_field_and_w_interpolates_linearly():
    pts = ex.default_points()
    path = ex.explorer_path(c=2.0, xi=8.0, g="t2")
    x = _states(300, 2.0, 4)
    for t in (0.2, 0.8):
        for cls in (0, 1):
            y = torch.full((300,), cls)
            only = ex.PointSet(pts.x[pts.labels == cls])
            v1 = ex.guided_velocity(path, pts, x, t, 1.0, y)
            assert torch.allclose(v1, ex.marginal_velocity(path, only, x, t), atol=1e-12)
            v0 = ex.guided_velocity(path, pts, x, t, 0.0, y)
            assert torch.allclose(v0, ex.marginal_velocity(path, pts, x, t), atol=1e-12)
            v2 = ex.guided_velocity(path, pts, x, t, 2.5, y)
            assert torch.allclose(v2, v0 + 2.5 * (v1 - v0), atol=1e-12)


@pytest.mark.parametrize("c,xi,w", [(2.0, 8.0, 0.0), (1.0, 32.0, 0.0), (3.0, 32.0, 2.0)])
def test_the_few_step_error_decreases_as_steps_grow(c, xi, w):
    errs = [ex.explore(c, xi, "t", S, w, n=120, fine_steps=256).few_step_error for S in (1, 2, 4, 8, 32)]
    assert all(b < a for a, b in itertools.pairwise(errs)), errs  # 2 > 4 > 8 > 32
    assert errs[2] < errs[0] and errs[-1] < 0.5 * errs[0], errs


def test_explore_result_shapes_and_the_fine_run_is_its_own_reference():
    r = ex.explore(2.0, 8.0, "t", 3, 0.0, n=50, fine_steps=12)
    assert r.trajectory.shape == (4, 50, 2) and r.times.tolist() == pytest.approx([1.0, 2 / 3, 1 / 3, 0.0])
    assert torch.equal(r.end, r.trajectory[-1])
    path = ex.explorer_path(2.0, 8.0)
    assert torch.equal(
        r.trajectory[0], path.sample_latent((50, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    )
    assert 0 <= r.outside_fraction <= 1 and r.config["a"] == 4.0
    assert ex.explore(2.0, 8.0, "t", 12, 0.0, n=50, fine_steps=12).few_step_error == 0.0
    assert r.classes.tolist() == [k % 2 for k in range(50)]


def test_bad_input_raises():
    with pytest.raises(ValueError, match="points"):
        ex.PointSet(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="labels"):
        ex.PointSet(torch.zeros(3, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="every class"):
        ex.PointSet(torch.zeros(2, 2), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="xi"):
        ex.explorer_path(2.0, 0.0)
    with pytest.raises(ValueError, match="guidance"):
        ex.explore(w=1.0, points=ex.PointSet(torch.zeros(2, 2)), n=4, fine_steps=2)
    with pytest.raises(ValueError, match="t must lie"):
        ex.marginal_velocity(ex.explorer_path(2.0, 8.0), ex.default_points(), torch.zeros(1, 2), 0.0)
    with pytest.raises(ValueError, match="steps"):
        ex.explore(steps=0, n=4, fine_steps=2)


# ----------------------------------------------------------------------------- figures


def test_explorer_figure_draws_data_trajectories_and_end_points():
    fig = ex.explorer_figure(2.0, 8.0, "t", 2, 1.0, n=30, fine_steps=16, n_lines=10)
    assert isinstance(fig, go.Figure) and len(fig.data) == 4
    assert len(fig.data[0].x) == 8  # the data points
    assert len(fig.data[3].x) == 30 and len(fig.data[2].x) == 30
    assert sum(v is None for v in fig.data[1].x) == 10  # ten polylines, separated by None
    assert "2 Euler steps" in fig.layout.title.text


def test_explorer_slider_figure_has_one_cell_per_grid_value():
    fig = ex.explorer_slider_figure(
        cs=(1.0, 2.0), xis=(4.0, 16.0), steps=(1, 2, 4), n=20, fine_steps=16, n_lines=5
    )
    assert len(fig.layout.sliders) == 2
    assert len(fig.layout.sliders[0].steps) == 4 and len(fig.layout.sliders[1].steps) == 3
    assert len(fig.data) == 1 + 12 * 3  # static data points + 3 traces per cell
    assert sum(bool(tr.visible) for tr in fig.data[1:]) == 3
    assert fig.layout.sliders[0].steps[1].label == "c = 1, xi = 16"


def test_explorer_widget_redraws_and_is_a_note_in_the_book(monkeypatch, capsys):
    monkeypatch.setenv("KACLIB_BOOK_BUILD", "1")
    assert ex.explorer_widget(n=10, fine_steps=8) is None
    assert "JupyterLab" in capsys.readouterr().out
    monkeypatch.delenv("KACLIB_BOOK_BUILD")
    pytest.importorskip("ipywidgets")
    box = ex.explorer_widget(n=10, fine_steps=8)
    assert set(box.sliders) == {"c", "xi", "g", "steps", "w"}
    box.update(c=1.5, xi=4.0, g="t2", steps=3, w=0.5)


def test_few_step_error_grid_matches_explore_and_its_figure_has_one_line_per_pair():
    res = ex.few_step_errors(cs=(1.0, 2.0), xis=(8.0,), steps=(1, 4), n=20, fine_steps=16)
    assert res.errors.shape == (2, 1, 2) and (res.errors >= 0).all()
    one = ex.explore(2.0, 8.0, "t", 4, 0.0, n=20, fine_steps=16)
    assert (
        float(res.errors[1, 0, 1]) == one.few_step_error
        and float(res.outside[1, 0, 1]) == one.outside_fraction
    )
    fig = ex.few_step_error_figure(res)
    assert len(fig.data) == 2 and list(fig.data[0].x) == [1, 4]
