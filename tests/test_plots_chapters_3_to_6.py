"""The figure builders of chapters 3 to 6 (kaclib.plots.images, .guidance, .teacher_and_ladder):
shapes, sliders, validation and serialisation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kaclib import plots

torch.set_num_threads(1)


def _images(n=12, c=1, h=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, h, h, generator=g) * 2 - 1


def _roundtrip(fig):
    """The figure must serialise (the book embeds it as JSON and HTML)."""
    json.loads(fig.to_json())
    assert "<div" in plots.to_html(fig)


# ----------------------------------------------------------------------------- image grids


def test_image_tile_places_every_image_and_pads():
    x = _images(5, h=4)
    tile = plots.image_tile(x, ncol=3, pad=1, pad_value=-0.5)
    assert tile.shape == (1, 2 * 5 + 1, 3 * 5 + 1)
    np.testing.assert_allclose(tile[0, 1:5, 1:5], x[0, 0].numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        tile[0, 6:10, 6:10], x[4, 0].numpy(), rtol=0, atol=1e-6
    )  # image 4: row 1, col 1
    assert tile[0, 0, 0] == pytest.approx(-0.5) and tile[0, 6, 11] == pytest.approx(
        -0.5
    )  # padding, empty cell


@pytest.mark.parametrize(
    "bad", [dict(images=torch.zeros(3, 8, 8), ncol=2), dict(images=torch.zeros(3, 1, 8, 8), ncol=0)]
)
def test_image_tile_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        plots.image_tile(**bad)


def test_image_grid_figure_grey_and_rgb():
    fig = plots.image_grid_figure(_images(20), 10, "grid", row_labels=["a", "b"])
    assert len(fig.data) == 1 and fig.data[0].type == "heatmap"
    assert list(fig.layout.yaxis.ticktext) == ["a", "b"]
    rgb = plots.image_grid_figure(_images(4, c=3), 2, "rgb")
    assert rgb.data[0].type == "image" and np.asarray(rgb.data[0].z).dtype == np.uint8
    _roundtrip(fig)


def test_image_grid_slider_switches_visibility():
    sets = [_images(6, seed=k) for k in range(3)]
    fig = plots.image_grid_slider_figure(sets, ["0", "1", "2"], "w = ", 3, ["t0", "t1", "t2"], active=1)
    assert [tr.visible for tr in fig.data] == [False, True, False]
    steps = fig.layout.sliders[0].steps
    assert len(steps) == 3 and fig.layout.sliders[0].active == 1
    assert steps[2].args[0]["visible"] == [False, False, True] and steps[2].args[1]["title.text"] == "t2"
    assert fig.layout.title.text == "t1"
    with pytest.raises(ValueError):
        plots.image_grid_slider_figure(sets, ["0", "1"], "w = ", 3, ["t0", "t1", "t2"])
    _roundtrip(fig)


# ----------------------------------------------------------------------------- guidance


def test_guided_field_figure_has_one_frame_per_weight():
    x = torch.linspace(-1, 1, 11)
    v_u, v_c = torch.zeros(11), torch.ones(11)
    ws = [0.0, 1.0, 2.0]
    fig = plots.guided_field_figure(
        x, v_u, v_c, {w: v_u + w * (v_c - v_u) for w in ws}, {w: 2 * w + 1 for w in ws}, "title", active=2
    )
    assert len(fig.frames) == 3 and [s.label for s in fig.layout.sliders[0].steps] == ["0", "1", "2"]
    guided = fig.frames[2].data[2]
    np.testing.assert_allclose(guided.y, np.full(11, 2.0))
    assert max(fig.frames[2].data[3].y[:2]) == pytest.approx(5.0)  # the bound band of w = 2
    assert fig.layout.yaxis.range[1] == pytest.approx(1.1 * 5.0)  # the active weight's bound sets the axis
    assert [f.layout.yaxis.range[1] for f in fig.frames] == pytest.approx([1.1, 3.3, 5.5])
    _roundtrip(fig)


def test_guidance_ratio_figure_draws_the_bound():
    fig = plots.guidance_ratio_figure([0, 1, 2], {"exact": [1, 1, 1], "net": [0.5, 0.7, 0.9]})
    bound = fig.data[0]
    np.testing.assert_allclose(bound.y, np.abs(1 - bound.x) + np.abs(bound.x))
    assert [tr.name for tr in fig.data[1:]] == ["exact", "net"]


def test_metric_vs_w_figure_axes():
    fig = plots.metric_vs_w_figure(
        [0, 1, 2], [10, 1, 3], [0.1, 0.9, 1.0], "FID-digits", floor=0.5, paper_w=1.2, best_w=1
    )
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis2.type == "linear"
    assert fig.data[1].yaxis == "y2" and list(fig.data[1].y) == [10.0, 90.0, 100.0]  # accuracy in percent
    assert len(fig.layout.shapes) == 2  # the paper's w and the best w


# ----------------------------------------------------------------------------- teacher, ladder


def test_quality_vs_nfe_figure_log_axes_and_labels():
    fig = plots.quality_vs_nfe_figure(
        {"a": ([1, 2, 4], [9, 5, 3], ["1 steps", "2 steps", "4 steps"]), "b": ([2, 8], [4, 2])},
        "FID-digits",
        floor=1.0,
    )
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"
    assert list(fig.data[0].text) == ["1 steps", "2 steps", "4 steps"] and fig.data[1].text is None
    floor = fig.data[-1]
    assert list(floor.x) == [1.0, 8.0] and list(floor.y) == [1.0, 1.0]


def test_ladder_diagram_and_bars_and_timing():
    fig = plots.ladder_diagram_figure([(20, 5), (4, 5), (2, 2), (1, 2)], 100, single_stage=(1, 100))
    texts = [a.text for a in fig.layout.annotations]
    assert "N = 5" in texts and "N = 2" in texts and any("student<br>1 step" == t for t in texts)
    assert len([s for s in fig.layout.shapes if s.type == "rect"]) == 5
    bars = plots.ratio_bars_figure(
        ["20", "1"], {"paper": [1.04, 1.58], "ours": [1.2, None]}, "ratios", "ratio"
    )
    assert len(bars.data) == 2 and bars.data[1].y[1] is None
    timing = plots.timing_figure(["teacher", "student"], [10.0, 0.05])
    assert timing.layout.xaxis.type == "log" and list(timing.data[0].x) == [10.0, 0.05]
    for f in (fig, bars, timing):
        _roundtrip(f)


def test_training_log_and_scatter():
    fig = plots.training_log_figure({"Kac": ([100, 200], [1.0, 0.8]), "Gaussian": ([100, 200], [0.5, 0.4])})
    assert list(fig.data[0].x) == [100, 200] and fig.layout.yaxis.type == "log"
    sc = plots.labelled_scatter_figure(
        [(1, 2, "p", "free"), (2, 3, "q", "bounded"), (3, 1, "r", "free")], "t", "x", "y"
    )
    assert [tr.name for tr in sc.data] == ["free", "bounded"] and list(sc.data[0].text) == ["p", "r"]
