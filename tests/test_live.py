"""The live controls of the book (kaclib.live): the plain callbacks the sliders run, and the widget
wiring (a slider move redraws the callback's figure)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import ci_scripts
import numpy as np
import pytest
import torch

from kaclib import live
from kaclib.evaluation import generate
from kaclib.models import build_model, get_preset
from kaclib.paths import GaussianPath, KacPath


@pytest.fixture
def no_book_build(monkeypatch):
    monkeypatch.delenv("KACLIB_BOOK_BUILD", raising=False)


def _random_unet(path, seed):
    # random weights everywhere (a fresh UNet starts with a zero output layer: a zero field)
    torch.manual_seed(seed)
    model = build_model(get_preset("smoke"), path=path).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


@pytest.fixture(scope="module")
def unet():
    path = KacPath(9.0, 3.0)
    return _random_unet(path, 0), path


# ----------------------------------------------------------------------------- controls


def test_range_and_choice_validate():
    assert live.Range(1, 64, 1, 4).is_int and not live.Range(0.0, 4.0, 0.1, 1.0).is_int
    assert not live.Range(0.1, 10, 0.1, 1, log=True).is_int
    for bad in [(2, 1, 1, 1), (0, 1, 0, 0.5), (0, 1, 0.1, 2)]:
        with pytest.raises(ValueError):
            live.Range(*bad)
    with pytest.raises(ValueError):
        live.Range(0, 1, 0.1, 0.5, log=True)
    assert live.Choice((1, 2, 4)).value == 1
    with pytest.raises(ValueError):
        live.Choice((1, 2), 3)
    with pytest.raises(ValueError):
        live.Choice(())


def test_slider_widget_redraws_the_callback(no_book_build):
    W = pytest.importorskip("ipywidgets")
    seen = []

    def callback(tflops, gpus, steps):
        seen.append((tflops, gpus, steps))
        return live.cost_hours_figure({"d": {"job": 3.6e15}}, tflops, gpus)

    box = live.slider_widget(
        callback,
        tflops=live.Range(5, 400, 5, 50),
        gpus=live.Range(1, 8, 1, 1),
        steps=live.Choice((1, 2, 4), 2),
    )
    assert seen and seen[0] == (50, 1, 2)  # the initial figure is drawn at once
    assert isinstance(box.sliders["gpus"], W.IntSlider) and isinstance(
        box.sliders["steps"], W.SelectionSlider
    )
    box.sliders["gpus"].value = 4  # what a slider move does
    assert seen[-1] == (50, 4, 2)
    box.update(tflops=100, gpus=2, steps=4)
    assert seen[-1] == (100, 2, 4)


def test_slider_widget_in_the_book_build_prints_a_note(monkeypatch, capsys):
    monkeypatch.setenv("KACLIB_BOOK_BUILD", "1")
    assert live.slider_widget(lambda w: None, w=live.Range(0, 1, 0.1, 0.5)) is None
    assert "JupyterLab" in capsys.readouterr().out


def test_slider_widget_rejects_bad_controls(no_book_build):
    pytest.importorskip("ipywidgets")
    with pytest.raises(ValueError):
        live.slider_widget(lambda: None)
    with pytest.raises(TypeError):
        live.slider_widget(lambda w: None, w=(0, 1))


# ----------------------------------------------------------------------------- chapter 2


def test_toy_steps_figure_is_euler_on_a_known_field():
    # v(x, t) = x: each Euler step from t = 1 to 0 multiplies by (1 - 1/k), so k steps give (1 - 1/k)^k x_T
    path = GaussianPath()
    m = SimpleNamespace(model=lambda x, t, y=None: x, path=path)
    x_T = path.sample_latent((50, 2), generator=torch.Generator().manual_seed(6))
    for k in (1, 4, 64):
        fig = live.toy_steps_figure({"linear": m}, k, n=50, seed=6)
        got = np.stack([fig.data[0].x, fig.data[0].y], 1)
        np.testing.assert_allclose(got, (1 - 1 / k) ** k * x_T.numpy(), rtol=1e-5, atol=1e-6)
        assert f"{k} Euler step" in fig.layout.title.text
    assert np.allclose(
        live.toy_steps_figure({"linear": m}, 1, n=50, seed=6).data[0].x, 0
    )  # one step lands on 0
    with pytest.raises(ValueError):
        live.toy_steps_figure({"linear": m}, 0)


def test_toy_steps_figure_draws_data_and_one_panel_per_model():
    path = GaussianPath()
    models = {
        name: SimpleNamespace(model=lambda x, t, y=None: 0 * x, path=path) for name in ("Kac", "Gaussian")
    }
    data = torch.zeros(7, 2)
    fig = live.toy_steps_figure(models, 3, n=20, data=data)
    assert len(fig.data) == 4 and [len(tr.x) for tr in fig.data] == [7, 20, 7, 20]
    assert [a.text for a in fig.layout.annotations] == ["Kac", "Gaussian"]


# ----------------------------------------------------------------------------- chapters 3 to 5


def _tile(fig) -> np.ndarray:
    return np.asarray(fig.data[0].z, dtype=np.float64)


def test_teacher_samples_figure_matches_generate(unet):
    model, path = unet
    fig = live.teacher_samples_figure(model, path, w=1.5, steps=3, per_class=2, num_classes=10)
    labels = torch.arange(10).repeat_interleave(2)
    ref = generate(model, path, labels, 3, method="ab2", w=1.5, seed=1).images.clamp(-1, 1)
    from kaclib.plots import image_tile

    np.testing.assert_allclose(_tile(fig), np.squeeze(image_tile(ref, 2)), atol=2e-3)
    assert "w = 1.5" in fig.layout.title.text and "3 ab2 steps" in fig.layout.title.text
    # a slider move changes the picture: another w, another step count
    assert not np.allclose(
        _tile(fig), _tile(live.teacher_samples_figure(model, path, w=0.0, steps=3, per_class=2))
    )
    assert not np.allclose(
        _tile(fig), _tile(live.teacher_samples_figure(model, path, w=1.5, steps=1, per_class=2))
    )


def test_ladder_samples_figure_puts_student_beside_teacher(unet):
    model, path = unet
    student = _random_unet(path, 1)
    fig = live.ladder_samples_figure(model, path, {2: student}, 2, per_class=1, w=1.0)
    labels = torch.arange(10)
    stud = generate(student, path, labels, 2, method="euler", w=1.0, seed=1).images.clamp(-1, 1)
    teach = generate(model, path, labels, 2, method="ab2", w=1.0, seed=1).images.clamp(-1, 1)
    from kaclib.plots import image_tile

    gap = torch.full_like(stud, live.GAP_VALUE)
    inter = torch.stack([stud, gap, teach], 1).flatten(0, 1)  # row c: student c, a gap, teacher c
    np.testing.assert_allclose(_tile(fig), np.squeeze(image_tile(inter, 3)), atol=2e-3)
    with pytest.raises(ValueError, match="no student with 4 steps"):
        live.ladder_samples_figure(model, path, {2: student}, 4)


# ----------------------------------------------------------------------------- chapter 6


def test_cost_hours_known_answer():
    hours = live.cost_hours({"a": 3.6e15, "b": 7.2e16}, tflops=1.0)
    assert hours == pytest.approx({"a": 1.0, "b": 20.0})
    assert live.cost_hours({"a": 3.6e15}, tflops=2.0, gpus=4)["a"] == pytest.approx(1 / 8)
    for bad in [dict(tflops=0), dict(tflops=1, gpus=0)]:
        with pytest.raises(ValueError):
            live.cost_hours({"a": 1.0}, **bad)


def test_format_hours_picks_the_unit():
    assert [live.format_hours(h) for h in (1234.5, 1.0, 0.5, 1 / 60, 1 / 3600, 0.0)] == [
        "1,234.5 h",
        "1.0 h",
        "30 min",
        "1 min",
        "1 s",
        "0 s",
    ]


def test_cost_hours_figure_moves_with_the_sliders():
    cost = {"cifar10": {"train": 3.6e18, "sample": 3.6e15}, "celeba64": {"train": 7.2e18, "sample": 7.2e15}}
    fig = live.cost_hours_figure(cost, tflops=50, gpus=1)
    assert [tr.name for tr in fig.data] == ["cifar10", "celeba64"]
    assert list(fig.data[0].x) == pytest.approx([20.0, 0.02])
    fig8 = live.cost_hours_figure(cost, tflops=50, gpus=8)
    assert list(fig8.data[1].x) == pytest.approx([40.0 / 8, 0.04 / 8])
    assert "8 GPUs" in fig8.layout.title.text and math.isclose(fig.data[0].x[0] / fig8.data[0].x[0], 8)


# ----------------------------------------------------------------------------- the static-slider check


def _page_checker():
    return ci_scripts.load("check_book_html")


def _write_page(folder, figs):
    import shutil
    from pathlib import Path

    import plotly

    from kaclib import plots

    shutil.copy(Path(plotly.__file__).parent / "package_data" / "plotly.min.js", folder / "plotly.min.js")
    body = "\n".join(plots.to_html(f) for f in figs)
    (folder / "page.html").write_text(
        f'<html><head><meta charset="utf-8"><script src="plotly.min.js"></script>'
        f"</head><body>{body}</body></html>"
    )


@pytest.fixture
def chromium():
    import shutil

    binary = shutil.which("chromium")
    if not binary:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return binary


def test_page_checker_clicks_every_static_slider(tmp_path, chromium, capsys):
    # the book's three kinds of static slider: two sliders over a grid (c, xi), frames (time s),
    # restyled visibility (w); each click must move the slider and change the figure.  A fourth
    # figure's slider changes nothing the reader sees: the check must fail on it, and only on it.
    import plotly.graph_objects as go

    from kaclib import plots
    from kaclib.kac import KacProcess

    proc = KacProcess(a=2.0, c=1.0)
    times = [0.25, 0.5, 1.0]
    samples = {
        s: proc.sample(torch.full((500,), s, dtype=torch.float64), generator=torch.Generator().manual_seed(0))
        for s in times
    }
    dead = go.Figure(go.Scatter(x=[0, 1], y=[1, 2]))
    dead.update_layout(
        sliders=[
            dict(
                active=0,
                currentvalue=dict(prefix="dead = "),
                steps=[dict(method="restyle", label=str(k), args=[{"opacity": 1.0}]) for k in range(3)],
            )
        ]
    )
    _write_page(
        tmp_path,
        [
            plots.kac_law_grid_figure(cs=[0.5, 1.0, 2.0], xis=[1, 4, 18]),
            plots.kac_law_figure(proc, times, samples, active=2),
            plots.image_grid_slider_figure(
                [torch.rand(4, 1, 8, 8) * 2 - 1 for _ in range(3)],
                ["0", "1", "2"],
                "w = ",
                2,
                ["a", "b", "c"],
            ),
            dead,
        ],
    )
    assert _page_checker().main([str(tmp_path), "--chromium", chromium]) == 1
    out = capsys.readouterr().out
    assert "5 sliders clicked" in out
    problems = [line for line in out.splitlines() if line.startswith("  page.html:")]
    assert len(problems) == 1 and "slider 'dead ='" in problems[0] and "data did not change" in problems[0], (
        out
    )


# ----------------------------------------------------------------------------- the live-book check (no browser)


def _live_checker():
    return ci_scripts.load("check_live_book")


def test_live_checker_serves_copies_of_the_chapters(tmp_path):
    import json

    chk = _live_checker()
    book = tmp_path / "book"
    book.mkdir()
    for name in ("01_a.ipynb", "01_a.md", "02_b.ipynb", "intro.ipynb", "notes.ipynb"):
        (book / name).write_text("{}")
    found = chk.chapters(book, [])
    assert [p.name for p in found] == ["01_a.ipynb", "02_b.ipynb"]  # chapters only, not intro
    assert [p.name for p in chk.chapters(book, ["02_*"])] == ["02_b.ipynb"]
    root = chk.make_tree(tmp_path / "work", book, found)
    assert sorted(p.name for p in (root / "book").iterdir()) == ["01_a.ipynb", "01_a.md", "02_b.ipynb"]
    assert (root / "kaclib").is_symlink() and (root / "kaclib" / "live.py").is_file()
    settings = (
        tmp_path / "work" / "settings" / "@jupyterlab" / "docmanager-extension" / "plugin.jupyterlab-settings"
    )
    assert json.loads(settings.read_text()) == {"autosave": False}  # the session never writes the copies back


def test_live_checker_needs_chapters(tmp_path, capsys):
    assert _live_checker().main(["--book", str(tmp_path)]) == 1
    assert "no chapter notebooks" in capsys.readouterr().err


def test_every_chapter_has_a_live_control():
    # the browser check moves these sliders; here, cheaply: each chapter calls a library control
    import re
    from pathlib import Path

    book = Path(__file__).resolve().parents[1] / "book"
    chapters = sorted(book.glob("[0-9][0-9]_*.md"))
    assert chapters
    for md in chapters:
        cells = re.findall(r"```\{code-cell\}[^\n]*\n(.*?)```", md.read_text(), flags=re.S)
        assert any(
            re.search(r"\b(live\.slider_widget|plots\.kac_law_widget|explorer\.explorer_widget)\(", c)
            for c in cells
        ), md.name
