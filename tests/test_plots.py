"""Figure builders and the display helper of kaclib.plots (the live-widget callbacks included)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("plotly")

from kaclib import plots, toy  # noqa: E402
from kaclib.kac import KacProcess  # noqa: E402


@pytest.fixture
def book_build(monkeypatch):
    monkeypatch.setenv("KACLIB_BOOK_BUILD", "1")


@pytest.fixture
def no_book_build(monkeypatch):
    monkeypatch.delenv("KACLIB_BOOK_BUILD", raising=False)


def _capture_display(monkeypatch):
    shown = []
    import IPython.display

    monkeypatch.setattr(IPython.display, "display", lambda obj, raw=False, **kw: shown.append((obj, raw)))
    return shown


# ----------------------------------------------------------------------------- display


def test_show_in_book_build_emits_html_bundle(book_build, monkeypatch):
    shown = _capture_display(monkeypatch)
    fig = plots.kac_law_single_figure(1.0, 4.0, 1.0)
    plots.show(fig)
    ((bundle, raw),) = shown
    assert raw and set(bundle) == {"text/html", "text/plain"}
    html = bundle["text/html"]
    assert "plotly-graph-div" in html and "Plotly.newPlot" in html
    assert "<script src" not in html and "cdn" not in html.lower()  # plotly.js comes from the page


def test_show_elsewhere_displays_the_figure(no_book_build, monkeypatch):
    shown = _capture_display(monkeypatch)
    fig = plots.kac_law_single_figure(1.0, 4.0, 1.0)
    plots.show(fig)
    assert shown[0][0] is fig


def test_in_book_build(monkeypatch):
    monkeypatch.setenv("KACLIB_BOOK_BUILD", "0")
    assert not plots.in_book_build()
    monkeypatch.setenv("KACLIB_BOOK_BUILD", "1")
    assert plots.in_book_build()


def test_style_layout_has_room_for_legend_axis_and_slider():
    fig = plots.kac_law_figure(
        KacProcess(2.0, 1.0),
        [0.5, 1.0],
        {s: KacProcess(2.0, 1.0).sample(torch.full((2000,), s)) for s in (0.5, 1.0)},
    )
    lay = fig.layout
    plot_h = lay.height - lay.margin.t - lay.margin.b
    assert plot_h >= 160
    assert lay.legend.yanchor == "bottom" and lay.legend.y > 1  # legend above the plot, under the title
    assert lay.sliders[0].y < 0  # slider below the x-axis title
    assert lay.title.text and lay.xaxis.title.text == "position x"
    with pytest.raises(ValueError):
        plots.style(fig, legend="left")
    # the legacy keyword
    f2 = plots.style(plots.kac_law_single_figure(1.0, 4.0), legend_below=True)
    assert f2.layout.legend.yanchor == "top" and f2.layout.legend.y < 0


# ----------------------------------------------------------------------------- chapter 1


def test_kac_law_traces_callback():
    d = plots.kac_law_traces(c=1.5, xi=4.0, s=1.0)
    assert d["front"] == 1.5
    assert np.allclose(d["atom_mass"], math.exp(-2.0) / 2)
    assert np.all(np.abs(d["x"]) < d["front"])
    # density + atoms carry mass ~1 (trapezoid on the open interval misses a sliver at the ends)
    mass = np.trapezoid(d["density"], d["x"]) + 2 * d["atom_mass"][0]
    assert abs(mass - 1) < 0.02
    var = KacProcess(2.0, 1.5).var(torch.tensor(1.0, dtype=torch.float64))
    assert d["var"] == pytest.approx(float(var))
    with pytest.raises(ValueError):
        plots.kac_law_traces(c=-1, xi=1)


def test_kac_law_grid_figure_two_sliders():
    cs, xis = [0.5, 1.0, 2.0], [1.0, 4.0]
    fig = plots.kac_law_grid_figure(cs, xis, s=1.0, active=(1, 0))
    spec = fig.layout.meta["kaclib_grid"]
    assert (spec["n1"], spec["n2"], spec["per_cell"]) == (3, 2, 3)
    assert len(fig.data) == 3 * 2 * 3 and len(fig.layout.sliders) == 2
    visible = [k for k, tr in enumerate(fig.data) if tr.visible]
    cell = 1 * 2 + 0
    assert visible == [cell * 3 + j for j in range(3)]
    # each step shows exactly one cell and sets that cell's title and y range
    for sl in fig.layout.sliders:
        for step in sl.steps:
            vis, layout = step.args
            assert sum(vis["visible"]) == 3 and "title.text" in layout and "yaxis.range" in layout
    html = plots.to_html(fig)
    assert "plotly_sliderchange" in html and "kaclibApply" in html


def test_kac_law_widget(no_book_build, monkeypatch):
    pytest.importorskip("ipywidgets")
    _capture_display(monkeypatch)
    box = plots.kac_law_widget(c=1.0, xi=4.0, s=0.5)
    assert box is not None and len(box.children) == 2
    box.update(2.0, 8.0, 1.0)  # the slider callback


def test_kac_law_widget_in_book_build(book_build, capsys):
    assert plots.kac_law_widget() is None
    assert "JupyterLab" in capsys.readouterr().out


def test_chapter1_figures():
    proc = KacProcess(2.0, 1.0)
    g = torch.Generator().manual_seed(0)
    traj = toy.simulate_kac(proc, 20, 2.0, generator=g)
    fig = plots.kac_paths_figure(traj, n_show=5)
    assert len(fig.data) == 2 + 5
    times = [0.25, 1.0]
    samples = {s: proc.sample(torch.full((5000,), s, dtype=torch.float64), generator=g) for s in times}
    fig = plots.kac_law_figure(proc, times, samples)
    assert len(fig.frames) == 2 and len(fig.layout.sliders[0].steps) == 2
    assert fig.layout.yaxis2.overlaying == "y"
    x = np.linspace(-3, 3, 101)
    fd = np.random.rand(3, 101)
    fig = plots.telegraph_fd_figure(x, [0, 0.5, 1.0], fd, fd, 2.0, 1.0)
    assert len(fig.frames) == 3
    assert len(plots.finite_speed_figure(proc, 1.0).data) == 2
    fig = plots.diffusion_limit_figure(0.5, 1.0, [2, 18])
    assert len(fig.frames) == 2
    assert len(plots.kolmogorov_figure([1, 2], [0.1, 0.05], [0.5, 0.3]).data) == 2


# ----------------------------------------------------------------------------- chapter 2


def test_chapter2_figures():
    proc = KacProcess(9.0, 3.0)
    fig = plots.conditional_velocity_figure(proc, [0.1, 0.5])
    v = np.concatenate(
        [np.asarray(tr.y, dtype=float) for tr in fig.data if tr.name and tr.name.startswith("s =")]
    )
    assert np.all(np.abs(v) <= 3.0 + 1e-6)
    ts = [1e-3, 1e-2, 1e-1]
    fig = plots.velocity_magnitude_figure(
        ts,
        {"Kac": [1, 1, 1], "Gaussian": [2, 2, 2]},
        {"Kac": [3, 3, 3], "Gaussian": [1000, 100, 10]},
        bound=3.5,
    )
    assert fig.layout.xaxis.type == "log"
    x, _ = toy.sample_mixture(100)
    assert len(plots.mixture_figure(x, toy.mixture_centers()).data) == 2
    assert len(plots.loss_figure({"Kac": list(np.linspace(1, 0.1, 100)), "Gaussian": [0.5] * 100}).data) == 2
    traj = {"Kac": torch.randn(11, 30, 2), "Gaussian": torch.randn(11, 30, 2)}
    fig = plots.trajectory_animation(traj, torch.linspace(1, 0, 11), data=x, n_frames=6)
    assert len(fig.frames) == 6 and fig.layout.updatemenus[0].buttons[0].method == "animate"
    assert all(len(fr.data) == 2 for fr in fig.frames)
    fig = plots.velocity_bound_figure([1.0, 0.5, 0.0], {"Kac": ([1, 2, 3], [1, 1, 2])}, bound=5.0)
    assert len(fig.data) == 3
    fig = plots.quality_vs_steps_figure([1, 4, 16], {"Kac": [0.1, 0.01, 0.001]}, floor=0.0005)
    assert len(fig.data) == 2


def test_colors_by_series_name():
    assert plots.series_color("Kac") == plots.COLORS["kac"]
    assert plots.series_color("Kac bounded") == plots.COLORS["kac bounded"]
    assert plots.series_color("Gaussian (exact field)") == plots.COLORS["gaussian"]
    assert plots.series_color("other") is None


def test_html_table_escapes():
    html = plots.html_table(["a", "b<"], [[1, "<x>"]], caption="cap")
    assert "&lt;x&gt;" in html and "b&lt;" in html and "cap" in html


def test_style_accepts_traces_without_legend_properties():
    """go.Image has no showlegend/legendgroup: styling a figure of RGB tiles must not crash."""
    import numpy as np
    import plotly.graph_objects as go

    fig = go.Figure(go.Image(z=np.zeros((4, 4, 3), dtype=np.uint8)))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], name="line"))
    assert plots.style(fig) is not None
