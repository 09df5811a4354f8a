"""Figures of The Kac Flow Book, and how they are displayed.

Display (:func:`show`)
----------------------
* In the static book (``jupyter-book build``; ``book/_ext/kacbook.py`` sets ``KACLIB_BOOK_BUILD=1``)
  a figure is displayed as ``text/html`` from ``plotly.io.to_html(fig, full_html=False,
  include_plotlyjs=False)`` (plus ``text/plain``); the page loads plotly.js from the book's own
  ``_static`` folder (no network).  The bundle deliberately has no
  ``application/vnd.plotly.v1+json``: myst-nb renders every mime type of a bundle when it reads a
  page and warns "skipping unknown output mime type" for that one, which fails a ``-W`` build.  The
  upside: a raw ``fig.show()`` in a chapter (JSON only, which myst-nb would silently drop) fails the
  build with that same warning instead of leaving an empty spot.
* Anywhere else (JupyterLab, nbval) the figure is displayed normally (plotly's JSON mime type).

Sliders
-------
* Static sliders (the book): plotly sliders over frames computed at build time.  Two sliders over
  a grid of values (``c`` and ``xi``) are combined by a few lines of JavaScript added to the page
  (:func:`two_slider_figure`).
* Live sliders (JupyterLab): ipywidgets whose callbacks are the plain functions below
  (:func:`kac_law_traces`, :func:`kac_law_single_figure`), which the tests call.  In the book
  build the widget functions only print a note (a widget needs a kernel).

Every builder returns a ``plotly.graph_objects.Figure``; none of them trains or samples a model
(the chapters pass in what they computed).
"""

from __future__ import annotations

import math
import os
import uuid

import numpy as np
import torch

__all__ = [
    "COLORS",
    "in_book_build",
    "style",
    "to_html",
    "show",
    "time_slider_figure",
    "two_slider_figure",
    "kac_paths_figure",
    "kac_law_frames",
    "kac_law_figure",
    "telegraph_fd_figure",
    "finite_speed_figure",
    "diffusion_limit_figure",
    "kolmogorov_figure",
    "kac_law_traces",
    "kac_law_single_figure",
    "kac_law_grid_figure",
    "kac_law_widget",
    "conditional_velocity_figure",
    "velocity_magnitude_figure",
    "mixture_figure",
    "loss_figure",
    "trajectory_animation",
    "velocity_bound_figure",
    "quality_vs_steps_figure",
    "html_table",
    "show_table",
]

COLORS = {
    "kac": "#1f5fa8",
    "gaussian": "#e07b00",
    "diffusion": "#2a9d3f",
    "exact": "#111111",
    "mc": "rgba(31,95,168,0.35)",
    "bound": "#c0392b",
    "data": "rgba(120,120,120,0.35)",
    "kac bounded": "#8e44ad",
}


def _color(name: str, default: str | None = None) -> str | None:
    """Colour of a series named like ``"Kac"``, ``"Kac bounded"``, ``"Gaussian (exact field)"``."""
    key = name.lower()
    for k in sorted(COLORS, key=len, reverse=True):
        if key.startswith(k):
            return COLORS[k]
    return default


FONT = dict(family="Helvetica, Arial, sans-serif", size=14)


# =============================================================================== display


def in_book_build() -> bool:
    """True while ``jupyter-book build`` executes the notebooks (set by ``book/_ext/kacbook.py``)."""
    return os.environ.get("KACLIB_BOOK_BUILD", "") not in ("", "0")


CONTENT_WIDTH = 720  # px: the plot width in the book's content column (for legend layout)


def _legend_rows(fig) -> int:
    """Rows a horizontal legend needs at the book's width (greedy packing of the entries)."""
    names, seen = [], set()
    for tr in fig.data:
        # some trace types (go.Image, ...) have no legend properties at all
        if getattr(tr, "showlegend", False) is False or not getattr(tr, "name", None):
            continue
        key = getattr(tr, "legendgroup", None) or tr.name
        if key in seen:
            continue
        seen.add(key)
        names.append(tr.name)
    if len(names) < 2 and not any(getattr(tr, "showlegend", False) for tr in fig.data):
        return 0
    rows, used = 1, 0
    for n in names:
        w = 46 + 7.4 * len(n)
        if used and used + w > CONTENT_WIDTH - 60:
            rows, used = rows + 1, 0
        used += w
    return rows


def _wrap_title(title: str | None, width: int = 68) -> tuple[str | None, int]:
    """Break a long title once (at ': ' if possible, else at a space) so that it clears the
    modebar; returns the title and the number of extra lines."""
    if not title or len(title) <= width or "<br>" in title:
        return title, 0
    cut = title.rfind(": ", 0, width + 1)
    if cut > 20:
        return title[: cut + 1] + "<br>" + title[cut + 2 :], 1
    cut = title.rfind(" ", 0, width + 1)
    if cut <= 0:
        return title, 0
    return title[:cut] + "<br>" + title[cut + 1 :], 1


def style(
    fig,
    title: str | None = None,
    x: str | None = None,
    y: str | None = None,
    height: int = 440,
    legend: str = "top",
    legend_below: bool = False,
):
    """Shared look: white template, readable fonts, axis titles, and a vertical layout computed in
    pixels so that title, legend, plot, axis title and sliders never overlap.

    ``height``: the figure's height in pixels, not counting the room added below for sliders
    (about 100 px).  ``legend``: ``"top"`` (a horizontal legend between the title and the plot, the
    default), ``"bottom"`` (below the x-axis title; ``legend_below=True`` is the same) or
    ``"none"``.
    """
    if legend_below:
        legend = "bottom"
    if legend not in ("top", "bottom", "none"):
        raise ValueError(f"legend must be 'top', 'bottom' or 'none', got {legend!r}")
    has_slider = bool(fig.layout.sliders)
    title, extra_lines = _wrap_title(title)
    rows = _legend_rows(fig) if legend in ("top", "bottom") else 0
    leg_h = 24 * rows + (6 if rows else 0)
    t = (56 if title else 16) + 22 * extra_lines + (leg_h if legend == "top" else 0)
    axis_h = 64 if x is not None or any(ax.title.text for ax in fig.select_xaxes()) else 40
    b = axis_h + (leg_h if legend == "bottom" else 0)
    plot_h = max(height - t - b, 160)
    b += 100 if has_slider else 0
    total = plot_h + t + b
    fig.update_layout(
        template="plotly_white",
        font=FONT,
        title=dict(
            text=title,
            x=0.01,
            xanchor="left",
            y=1 - 14 / total,
            yanchor="top",
            yref="container",
            font=dict(size=16),
        )
        if title
        else dict(text=None),
        height=total,
        margin=dict(l=72, r=30, t=t, b=b),
        hoverlabel=dict(font_size=13),
        showlegend=bool(rows),
    )
    if legend == "top" and rows:
        fig.update_layout(
            legend=dict(
                orientation="h", x=0, xanchor="left", y=1 + 6 / plot_h, yanchor="bottom", font=dict(size=13)
            )
        )
    elif legend == "bottom" and rows:
        fig.update_layout(
            legend=dict(
                orientation="h",
                x=0,
                xanchor="left",
                y=-(axis_h - 4) / plot_h,
                yanchor="top",
                font=dict(size=13),
            )
        )
    if has_slider:
        y_sl = -(axis_h + (leg_h if legend == "bottom" else 0)) / plot_h
        for sl in fig.layout.sliders:
            sl.y, sl.yanchor, sl.pad = y_sl, "top", dict(t=34, b=0)
        for um in fig.layout.updatemenus or ():
            um.y, um.yanchor, um.pad = y_sl, "top", dict(t=40, r=10)
    if x is not None:
        fig.update_xaxes(title_text=x)
    if y is not None:
        if _has_secondary(fig):
            fig.update_layout(yaxis_title_text=y)
        else:
            fig.update_yaxes(title_text=y)
    fig.update_xaxes(showline=True, linecolor="#888", mirror=False, ticks="outside", zeroline=False)
    fig.update_yaxes(showline=True, linecolor="#888", ticks="outside", zeroline=False)
    return fig


def _has_secondary(fig) -> bool:
    return getattr(fig.layout, "yaxis2", None) is not None and fig.layout.yaxis2.overlaying == "y"


_GRID_SCRIPT = """
(function () {
  var gd = document.getElementById('{plot_id}');
  if (!gd || !gd.layout || !gd.layout.meta || !gd.layout.meta.kaclib_grid) { return; }
  var spec = gd.layout.meta.kaclib_grid;
  function apply() {
    var i = (gd.layout.sliders[0] && gd.layout.sliders[0].active) || 0;
    var j = (gd.layout.sliders[1] && gd.layout.sliders[1].active) || 0;
    var cell = i * spec.n2 + j, vis = [];
    for (var k = 0; k < gd.data.length; k++) {
      vis.push(k < spec.n_static ? true : Math.floor((k - spec.n_static) / spec.per_cell) === cell);
    }
    Plotly.update(gd, {visible: vis}, spec.layouts[cell]);
  }
  gd.kaclibApply = apply;
  gd.on('plotly_sliderchange', function () { setTimeout(apply, 0); });
})();
"""


def to_html(fig) -> str:
    """The figure as an HTML fragment that needs plotly.js already on the page."""
    import plotly.io as pio

    meta = fig.layout.meta
    post = _GRID_SCRIPT if isinstance(meta, dict) and "kaclib_grid" in meta else None
    return pio.to_html(
        fig,
        full_html=False,
        include_plotlyjs=False,
        auto_play=False,
        post_script=post,
        config={"displaylogo": False, "responsive": True},
        default_height=f"{int(fig.layout.height or 450)}px",
        div_id=f"kac-{uuid.uuid4().hex[:12]}",
    )


def show(fig) -> None:
    """Display ``fig``: HTML for the static book, the normal plotly display elsewhere."""
    from IPython.display import display

    if in_book_build():
        bundle = {
            "text/html": to_html(fig),
            "text/plain": f"<plotly figure: {fig.layout.title.text or 'untitled'}>",
        }
        display(bundle, raw=True)
    else:
        display(fig)


# =============================================================================== slider helpers


def _f32(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float32)


def _slider(steps, prefix: str, active: int = 0, y: float = -0.16, x: float = 0.0, length: float = 1.0):
    return dict(
        active=active,
        steps=steps,
        x=x,
        len=length,
        y=y,
        yanchor="top",
        pad=dict(t=30, b=10),
        currentvalue=dict(prefix=prefix, font=dict(size=14)),
        font=dict(size=12),
    )


def time_slider_figure(frames_data: list[list], labels: list[str], prefix: str, base=None, active: int = 0):
    """A figure whose traces are replaced by ``frames_data[k]`` when the slider is on ``labels[k]``.

    ``base``: an optional figure (subplots, secondary axes) holding traces of the right types; its
    trace data are set to frame ``active``.
    """
    import plotly.graph_objects as go

    fig = base if base is not None else go.Figure()
    if base is None:
        for tr in frames_data[active]:
            fig.add_trace(tr)
    else:
        for k, tr in enumerate(frames_data[active]):
            fig.data[k].update(tr)
    fig.frames = [go.Frame(data=d, name=str(k)) for k, d in enumerate(frames_data)]
    steps = [
        dict(
            method="animate",
            label=lab,
            args=[
                [str(k)],
                dict(mode="immediate", frame=dict(duration=0, redraw=True), transition=dict(duration=0)),
            ],
        )
        for k, lab in enumerate(labels)
    ]
    fig.update_layout(sliders=[_slider(steps, prefix, active)])
    return fig


def two_slider_figure(
    cells: list[list],
    shape: tuple[int, int],
    labels1: list[str],
    labels2: list[str],
    prefix1: str,
    prefix2: str,
    titles: list[str],
    static_traces=(),
    active=(0, 0),
    cell_layouts: list[dict] | None = None,
):
    """Two sliders over a grid: ``cells[i * n2 + j]`` (a list of traces) shows when slider 1 is on
    ``labels1[i]`` and slider 2 on ``labels2[j]``, with title ``titles[i * n2 + j]`` and the layout
    changes ``cell_layouts[i * n2 + j]`` (e.g. ``{"yaxis.range": [0, 2]}``).

    Each slider's steps restyle the visibility for the other slider at its *initial* position (so
    plain plotly, e.g. JupyterLab, moves one parameter at a time); in the book a small script
    (:data:`_GRID_SCRIPT`) re-applies the visibility of the combined position after every move.
    """
    import plotly.graph_objects as go

    n1, n2 = shape
    if len(cells) != n1 * n2 or len(labels1) != n1 or len(labels2) != n2 or len(titles) != n1 * n2:
        raise ValueError("cells, labels and titles must match the grid shape")
    per = len(cells[0])
    if any(len(c) != per for c in cells):
        raise ValueError("every cell needs the same number of traces")
    fig = go.Figure()
    for tr in static_traces:
        fig.add_trace(tr)
    n_static = len(static_traces)
    a1, a2 = active
    for k, cell in enumerate(cells):
        for tr in cell:
            tr.visible = k == a1 * n2 + a2
            fig.add_trace(tr)

    layouts = [
        dict((cell_layouts or [{}] * len(cells))[k], **{"title.text": titles[k]}) for k in range(len(cells))
    ]

    def vis(cell):
        return [True] * n_static + [k // per == cell for k in range(n1 * n2 * per)]

    steps1 = [
        dict(method="update", label=labels1[i], args=[{"visible": vis(i * n2 + a2)}, layouts[i * n2 + a2]])
        for i in range(n1)
    ]
    steps2 = [
        dict(method="update", label=labels2[j], args=[{"visible": vis(a1 * n2 + j)}, layouts[a1 * n2 + j]])
        for j in range(n2)
    ]
    fig.update_layout(
        sliders=[
            _slider(steps1, prefix1, a1, x=0.0, length=0.47),
            _slider(steps2, prefix2, a2, x=0.53, length=0.47),
        ],
        meta={"kaclib_grid": {"n1": n1, "n2": n2, "per_cell": per, "n_static": n_static, "layouts": layouts}},
        title=dict(text=titles[a1 * n2 + a2]),
    )
    for key, value in layouts[a1 * n2 + a2].items():
        if key != "title.text":
            fig.update_layout(**{key.replace(".", "_"): value})
    return fig


# =============================================================================== chapter 1


def kac_paths_figure(traj, n_show: int = 8, title: str | None = None):
    """A few sample paths (straight segments between reversals) inside the light cone ``|x| <= c s``."""
    import plotly.graph_objects as go

    fig = go.Figure()
    s = np.array([0.0, traj.s_max])
    cone = dict(color=COLORS["bound"], dash="dash", width=2)
    fig.add_trace(go.Scatter(x=s, y=traj.c * s, mode="lines", line=cone, name="front x = +c s"))
    fig.add_trace(
        go.Scatter(x=s, y=-traj.c * s, mode="lines", line=cone, name="front x = -c s", showlegend=False)
    )
    palette = [
        "#1f5fa8",
        "#e07b00",
        "#2a9d3f",
        "#8e44ad",
        "#16a085",
        "#d35400",
        "#2c3e50",
        "#c2185b",
        "#7f8c8d",
        "#b7950b",
    ]
    for i in range(min(n_show, traj.n)):
        t, x = traj.polyline(i)
        fig.add_trace(
            go.Scatter(
                x=_f32(t),
                y=_f32(x),
                mode="lines+markers",
                marker=dict(size=4),
                line=dict(width=1.8, color=palette[i % len(palette)]),
                name=f"path {i + 1}",
                showlegend=False,
                hovertemplate="s = %{x:.3f}<br>x = %{y:.3f}<extra>path " + str(i + 1) + "</extra>",
            )
        )
    title = (
        title or f"Kac sample paths: speed c = {traj.c:g}, reversal rate a = {traj.a:g} (xi = {2 * traj.a:g})"
    )
    return style(fig, title, "time s", "position x")


def _law_curve(process, s: float, n_x: int = 400):
    front = process.c * s
    x = torch.linspace(-front, front, n_x, dtype=torch.float64)[1:-1]
    return x, process.density(x, torch.full_like(x, s))


def kac_law_frames(process, times, samples: dict, bins: int = 60):
    """Per time: MC histogram of the interior samples (density units), exact density, exact and
    MC atom masses.  ``samples[s]`` holds draws of ``X_s``.  Returns ``(frames_data, y_max)``."""
    import plotly.graph_objects as go

    frames, y_max = [], 0.0
    for s in times:
        xs = samples[s].double()
        front = process.c * s
        inside = xs.abs() < front * (1 - 1e-9)
        edges = np.linspace(-front, front, bins + 1)
        counts, _ = np.histogram(xs[inside].numpy(), bins=edges)
        width = edges[1] - edges[0]
        hist = counts / (len(xs) * width)
        x, p = _law_curve(process, s)
        atom_exact = float(process.atom_mass(torch.tensor(s, dtype=torch.float64))) / 2
        atom_mc = [
            float((xs <= -front * (1 - 1e-9)).double().mean()),
            float((xs >= front * (1 - 1e-9)).double().mean()),
        ]
        y_max = max(y_max, float(p.max()), float(hist.max()))
        frames.append(
            [
                go.Bar(
                    x=_f32((edges[:-1] + edges[1:]) / 2),
                    y=_f32(hist),
                    width=width,
                    marker_color=COLORS["mc"],
                    name="Monte Carlo histogram (interior)",
                    hovertemplate="x = %{x:.3f}<br>density = %{y:.3f}<extra>MC</extra>",
                ),
                go.Scatter(
                    x=_f32(x),
                    y=_f32(p),
                    mode="lines",
                    line=dict(color=COLORS["exact"], width=2.5),
                    name="exact density p(x, s)",
                    hovertemplate="x = %{x:.3f}<br>p = %{y:.3f}<extra>exact</extra>",
                ),
                go.Scatter(
                    x=[-front, front],
                    y=[atom_exact, atom_exact],
                    mode="markers",
                    marker=dict(symbol="diamond", size=13, color=COLORS["bound"]),
                    name="atom mass e^(-a s)/2 (exact)",
                    yaxis="y2",
                    hovertemplate="x = %{x:.3f}<br>mass = %{y:.4f}<extra>exact atom</extra>",
                ),
                go.Scatter(
                    x=[-front, front],
                    y=atom_mc,
                    mode="markers",
                    marker=dict(symbol="circle-open", size=17, line=dict(width=2.5), color=COLORS["kac"]),
                    name="atom mass (Monte Carlo)",
                    yaxis="y2",
                    hovertemplate="x = %{x:.3f}<br>mass = %{y:.4f}<extra>MC atom</extra>",
                ),
            ]
        )
    return frames, y_max


def kac_law_figure(process, times, samples: dict, s_max: float | None = None, active: int | None = None):
    """The law of ``X_s`` over time (static slider): exact density and atoms against Monte Carlo."""
    times = list(times)
    frames, y_max = kac_law_frames(process, times, samples)
    labels = [f"{s:.2f}" for s in times]
    fig = time_slider_figure(frames, labels, "s = ", active=active if active is not None else len(times) // 2)
    s_max = s_max or max(times)
    fig.update_layout(
        yaxis=dict(range=[0, y_max * 1.1], title="density of the continuous part"),
        yaxis2=dict(range=[0, 0.52], overlaying="y", side="right", title="atom mass", showgrid=False),
        xaxis=dict(range=[-process.c * s_max * 1.05, process.c * s_max * 1.05]),
        barmode="overlay",
    )
    return style(
        fig,
        f"Law of the Kac process X_s (a = {process.a:g}, c = {process.c:g}): exact vs Monte Carlo",
        "position x",
        None,
    )


def telegraph_fd_figure(x, times, fd, exact, a: float, c: float, active: int | None = None):
    """Finite-difference solution of the telegrapher's equation against the closed form (slider over s)."""
    import plotly.graph_objects as go

    x = _f32(x)
    frames = []
    for k in range(len(times)):
        frames.append(
            [
                go.Scatter(
                    x=x,
                    y=_f32(exact[k]),
                    mode="lines",
                    line=dict(color=COLORS["exact"], width=4),
                    opacity=0.45,
                    name="closed form (smoothed Kac law)",
                ),
                go.Scatter(
                    x=x,
                    y=_f32(fd[k]),
                    mode="lines",
                    line=dict(color=COLORS["kac"], width=1.8, dash="dot"),
                    name="finite differences",
                ),
            ]
        )
    labels = [f"{s:.2f}" for s in times]
    fig = time_slider_figure(frames, labels, "s = ", active=active if active is not None else len(times) - 1)
    y_max = float(max(np.max(fd), np.max(exact)))
    fig.update_layout(yaxis=dict(range=[0, y_max * 1.05]))
    return style(
        fig,
        f"Telegrapher's equation p_ss + {2 * a:g} p_s = {c * c:g} p_xx: finite differences vs closed form",
        "position x",
        "density p(x, s)",
    )


def finite_speed_figure(process, s: float, n_x: int = 600):
    """The Kac law against the Gaussian of the same variance, on a log scale: zero beyond ``|x| = c s``."""
    import plotly.graph_objects as go

    front = process.c * s
    var = float(process.var(torch.tensor(s, dtype=torch.float64)))
    x, p = _law_curve(process, s, n_x)
    xg = np.linspace(-2.2 * front, 2.2 * front, n_x)
    g = np.exp(-(xg**2) / (2 * var)) / math.sqrt(2 * math.pi * var)
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=_f32(xg),
            y=_f32(g),
            mode="lines",
            line=dict(color=COLORS["gaussian"], width=2.5),
            name=f"Gaussian, same variance ({var:.3f})",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=_f32(x),
            y=_f32(p),
            mode="lines",
            line=dict(color=COLORS["kac"], width=2.5),
            name="Kac law (continuous part)",
        )
    )
    for sign in (-1, 1):
        fig.add_vline(x=sign * front, line=dict(color=COLORS["bound"], dash="dash"))
    fig.add_vrect(x0=front, x1=2.2 * front, fillcolor="rgba(192,57,43,0.07)", line_width=0)
    fig.add_vrect(x0=-2.2 * front, x1=-front, fillcolor="rgba(192,57,43,0.07)", line_width=0)
    fig.add_annotation(
        x=front, y=1, yref="paper", text="front x = c s", showarrow=False, xanchor="left", yanchor="top"
    )
    floor = max(float(g.min()), 1e-12)
    fig.update_yaxes(
        type="log", range=[math.log10(floor), math.log10(max(float(p.max()), float(g.max())) * 3)]
    )
    return style(
        fig,
        f"Finite speed: the Kac law vanishes beyond |x| = c s (s = {s:g}); a Gaussian never does",
        "position x",
        "density (log scale)",
    )


def diffusion_limit_figure(D: float, s: float, xis, active: int | None = None, n_x: int = 500):
    """Kac laws with ``c^2/xi = D`` fixed against the heat kernel ``N(0, 2 D s)`` (slider over xi)."""
    import plotly.graph_objects as go

    from .kac import KacProcess

    sd = math.sqrt(2 * D * s)
    xg = np.linspace(-4 * sd, 4 * sd, n_x)
    heat = np.exp(-(xg**2) / (2 * sd**2)) / (sd * math.sqrt(2 * math.pi))
    frames, labels, y_max = [], [], float(heat.max())
    for xi in xis:
        proc = KacProcess(a=xi / 2, c=math.sqrt(D * xi))
        front = proc.c * s
        x = torch.linspace(-min(front, 4 * sd), min(front, 4 * sd), n_x, dtype=torch.float64)
        x = x[(x.abs() < front)]
        p = proc.density(x, torch.full_like(x, s))
        atom = float(proc.atom_mass(torch.tensor(s, dtype=torch.float64))) / 2
        y_max = max(y_max, float(p.max()))
        fx = [-front, front] if front <= 4 * sd else []
        frames.append(
            [
                go.Scatter(
                    x=_f32(xg),
                    y=_f32(heat),
                    mode="lines",
                    line=dict(color=COLORS["diffusion"], width=4),
                    opacity=0.5,
                    name=f"heat kernel N(0, 2 D s), D = {D:g}",
                ),
                go.Scatter(
                    x=_f32(x),
                    y=_f32(p),
                    mode="lines",
                    line=dict(color=COLORS["kac"], width=2),
                    name="Kac law (continuous part)",
                ),
                go.Scatter(
                    x=fx,
                    y=[atom] * len(fx),
                    mode="markers",
                    marker=dict(symbol="diamond", size=12, color=COLORS["bound"]),
                    name="atom mass at the fronts",
                ),
            ]
        )
        labels.append(f"{xi:g} (a = {xi / 2:g}, c = {math.sqrt(D * xi):.3g})")
    fig = time_slider_figure(frames, labels, "xi = ", active=active if active is not None else 0)
    fig.update_layout(xaxis=dict(range=[-4 * sd, 4 * sd]), yaxis=dict(range=[0, y_max * 1.1]))
    return style(
        fig,
        f"Diffusion limit: xi -> infinity with c^2/xi = D = {D:g} fixed (s = {s:g})",
        "position x",
        "density / atom mass",
    )


def kolmogorov_figure(xis, distances, var_gaps=None):
    """Kolmogorov distance between the Kac law and the heat kernel against xi (log-log)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=list(xis),
            y=list(distances),
            mode="lines+markers",
            line=dict(color=COLORS["kac"], width=2.5),
            name="sup_x |F_Kac(x) - F_heat(x)|",
        )
    )
    if var_gaps is not None:
        fig.add_trace(
            go.Scatter(
                x=list(xis),
                y=list(var_gaps),
                mode="lines+markers",
                line=dict(color=COLORS["gaussian"], dash="dot", width=2),
                name="|Var X_s - 2 D s| / (2 D s)",
            )
        )
    fig.update_xaxes(type="log")
    fig.update_yaxes(type="log", exponentformat="power")
    return style(
        fig,
        "Distance to the diffusion limit shrinks as xi grows (c^2/xi fixed)",
        "damping xi = 2a (log scale)",
        "distance (log scale)",
    )


def kac_law_traces(c: float, xi: float, s: float = 1.0, n_x: int = 300) -> dict:
    """The law of ``X_s`` for speed ``c`` and damping ``xi`` (``a = xi/2``), as plain arrays.

    Returns ``{"x", "density", "atom_x", "atom_mass", "gauss_x", "gauss", "var", "front"}``; the
    callback of the live widget and of the static grid figure.
    """
    from .kac import KacProcess, check_finite_param

    c = check_finite_param("c", c, positive=True)
    xi = check_finite_param("xi", xi, nonneg=True)
    s = check_finite_param("s", s, positive=True)
    proc = KacProcess(a=xi / 2, c=c)
    x, p = _law_curve(proc, s, n_x)
    var = float(proc.var(torch.tensor(s, dtype=torch.float64)))
    front = c * s
    gx = np.linspace(-front * 1.6, front * 1.6, n_x)
    gauss = np.exp(-(gx**2) / (2 * var)) / math.sqrt(2 * math.pi * var)
    mass = float(proc.atom_mass(torch.tensor(s, dtype=torch.float64))) / 2
    return {
        "x": x.numpy(),
        "density": p.numpy(),
        "atom_x": np.array([-front, front]),
        "atom_mass": np.array([mass, mass]),
        "gauss_x": gx,
        "gauss": gauss,
        "var": var,
        "front": front,
    }


def _law_cell_traces(d: dict, show_legend: bool = True):
    import plotly.graph_objects as go

    return [
        go.Scatter(
            x=_f32(d["gauss_x"]),
            y=_f32(d["gauss"]),
            mode="lines",
            line=dict(color=COLORS["gaussian"], dash="dot", width=2),
            name="Gaussian, same variance",
            showlegend=show_legend,
        ),
        go.Scatter(
            x=_f32(d["x"]),
            y=_f32(d["density"]),
            mode="lines",
            line=dict(color=COLORS["kac"], width=2.5),
            name="Kac density",
            showlegend=show_legend,
        ),
        go.Scatter(
            x=_f32(d["atom_x"]),
            y=_f32(d["atom_mass"]),
            mode="markers+text",
            marker=dict(symbol="diamond", size=12, color=COLORS["bound"]),
            text=[f"{d['atom_mass'][0]:.3f}"] * 2,
            textposition="top center",
            name="atom mass (each front)",
            showlegend=show_legend,
        ),
    ]


def kac_law_single_figure(
    c: float, xi: float, s: float = 1.0, x_max: float | None = None, y_max: float | None = None
):
    """The law of ``X_s`` for one ``(c, xi)`` (what the live widget draws)."""
    import plotly.graph_objects as go

    d = kac_law_traces(c, xi, s)
    fig = go.Figure(_law_cell_traces(d))
    x_max = x_max or d["front"] * 1.6
    fig.update_xaxes(range=[-x_max, x_max])
    if y_max:
        fig.update_yaxes(range=[0, y_max])
    return style(
        fig,
        f"Law of X_s at s = {s:g}: c = {c:g}, xi = {xi:g} (a = {xi / 2:g}), Var = {d['var']:.3f}",
        "position x",
        "density / atom mass",
    )


def kac_law_grid_figure(cs, xis, s: float = 1.0, active=None):
    """Static sliders for ``c`` and ``xi``: the law at time ``s`` over the grid ``cs x xis``."""
    cs, xis = list(cs), list(xis)
    cells, titles, ranges = [], [], []
    for c in cs:
        for xi in xis:
            d = kac_law_traces(c, xi, s)
            top = max(float(np.max(d["density"])), float(np.max(d["gauss"])), float(d["atom_mass"][0]) + 0.08)
            cells.append(_law_cell_traces(d, show_legend=True))
            titles.append(
                f"Law of X_s at s = {s:g}: c = {c:g}, xi = {xi:g} (a = {xi / 2:g}); Var X_s = {d['var']:.3f}"
            )
            ranges.append({"yaxis.range": [0, round(top * 1.12, 4)]})
    if active is None:
        active = (len(cs) // 2, len(xis) // 2)
    fig = two_slider_figure(
        cells,
        (len(cs), len(xis)),
        [f"{c:g}" for c in cs],
        [f"{xi:g}" for xi in xis],
        "c = ",
        "xi = ",
        titles,
        active=active,
        cell_layouts=ranges,
    )
    x_max = max(cs) * s * 1.15
    fig.update_xaxes(range=[-x_max, x_max])
    style(fig, titles[active[0] * len(xis) + active[1]], "position x", "density / atom mass")
    return fig


def kac_law_widget(c: float = 1.0, xi: float = 4.0, s: float = 1.0):
    """Live sliders for ``c``, ``xi`` and ``s`` (ipywidgets; JupyterLab).  In the book build a note
    is printed and ``None`` returned."""
    if in_book_build():
        print("Live sliders: open this notebook in JupyterLab.")
        return None
    import ipywidgets as W
    from IPython.display import display

    sliders = {
        "c": W.FloatSlider(value=c, min=0.25, max=4.0, step=0.05, description="c"),
        "xi": W.FloatLogSlider(value=xi, base=10, min=-1, max=3, step=0.05, description="xi"),
        "s": W.FloatSlider(value=s, min=0.05, max=2.0, step=0.05, description="s"),
    }
    out = W.Output()

    def update(c, xi, s):
        with out:
            out.clear_output(wait=True)
            show(kac_law_single_figure(c, xi, s, x_max=4.0 * 2.0 * 1.1))

    W.interactive_output(update, sliders)
    box = W.VBox([W.HBox(list(sliders.values())), out])
    box.update = update  # the callback, for tests
    display(box)
    return box


# =============================================================================== chapter 2


def conditional_velocity_figure(process, times, n_x: int = 400):
    """``v(x, s)`` on ``|x| < c s`` for several ``s``, the fronts' ``+-c`` and the bound ``|v| <= c``."""
    import plotly.graph_objects as go
    from plotly.colors import sample_colorscale

    fig = go.Figure()
    cols = sample_colorscale("Viridis", [k / max(len(times) - 1, 1) * 0.9 for k in range(len(times))])
    for k, s in enumerate(times):
        front = process.c * s
        x = torch.linspace(-front, front, n_x, dtype=torch.float64)[1:-1]
        v = process.velocity(x, torch.full_like(x, s))
        fig.add_trace(
            go.Scatter(
                x=_f32(x),
                y=_f32(v),
                mode="lines",
                line=dict(color=cols[k], width=2.2),
                name=f"s = {s:g}",
                legendgroup=str(k),
            )
        )
        fig.add_trace(
            go.Scatter(
                x=[-front, front],
                y=[-process.c, process.c],
                mode="markers",
                legendgroup=str(k),
                marker=dict(color=cols[k], size=9, symbol="diamond"),
                showlegend=False,
                hovertemplate="front x = %{x:.3f}<br>v = %{y:.2f} (atom)<extra></extra>",
            )
        )
    x_max = process.c * max(times) * 1.05
    for sign in (-1, 1):
        fig.add_trace(
            go.Scatter(
                x=[-x_max, x_max],
                y=[sign * process.c] * 2,
                mode="lines",
                showlegend=sign > 0,
                line=dict(color=COLORS["bound"], dash="dash"),
                name="|v| = c",
            )
        )
    return style(
        fig,
        f"Conditional velocity v(x, s) = E[dX/ds | X_s = x] (a = {process.a:g}, c = {process.c:g})",
        "position x",
        "velocity v(x, s)",
    )


def velocity_magnitude_figure(ts, typical: dict, worst: dict, bound: float | None = None):
    """Two panels, log-log in ``t``: the 99th percentile of ``|u(t, x_t | x0)|`` along the path, and the
    worst case over a window of states.  ``typical``/``worst``: ``name -> values``."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("along the path: 99th percentile of |u|", "worst case over states |x - x0| <= 1"),
        horizontal_spacing=0.1,
    )
    for col, panel in ((1, typical), (2, worst)):
        for name, vals in panel.items():
            fig.add_trace(
                go.Scatter(
                    x=list(ts),
                    y=list(vals),
                    mode="lines",
                    name=name,
                    showlegend=col == 1,
                    line=dict(color=_color(name), width=2.5),
                ),
                row=1,
                col=col,
            )
        if bound is not None:
            fig.add_trace(
                go.Scatter(
                    x=[min(ts), max(ts)],
                    y=[bound, bound],
                    mode="lines",
                    showlegend=col == 1,
                    line=dict(color=COLORS["bound"], dash="dash"),
                    name="Kac bound |x0| + c",
                ),
                row=1,
                col=col,
            )
    fig.update_xaxes(type="log", title_text="time t (t = 0 is data; log scale)", exponentformat="power")
    fig.update_yaxes(type="log", exponentformat="power")
    fig.update_yaxes(title_text="|u(t, x | x0)| (log scale)", row=1, col=1)
    return style(
        fig,
        "Conditional target speeds near data time: Kac vs Gaussian vs diffusion paths",
        None,
        None,
        height=480,
        legend="bottom",
    )


def mixture_figure(x, centers=None, title: str = "The 2D toy: a 3 x 3 Gaussian mixture"):
    import plotly.graph_objects as go

    fig = go.Figure(
        go.Scattergl(
            x=_f32(x[:, 0]),
            y=_f32(x[:, 1]),
            mode="markers",
            marker=dict(size=3, color=COLORS["kac"], opacity=0.5),
            name="data samples",
        )
    )
    if centers is not None:
        fig.add_trace(
            go.Scatter(
                x=_f32(centers[:, 0]),
                y=_f32(centers[:, 1]),
                mode="markers",
                name="component means",
                marker=dict(symbol="x", size=10, color=COLORS["bound"]),
            )
        )
    fig.update_yaxes(scaleanchor="x", scaleratio=1)
    return style(fig, title, "x1", "x2", height=460)


def loss_figure(curves: dict, window: int = 50):
    """Training losses (moving average over ``window`` steps), one line per model."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, losses in curves.items():
        v = np.asarray(losses, dtype=np.float64)
        w = max(1, min(window, len(v)))
        smooth = np.convolve(v, np.ones(w) / w, mode="valid")
        fig.add_trace(
            go.Scatter(
                x=np.arange(w, len(v) + 1),
                y=_f32(smooth),
                mode="lines",
                name=name,
                line=dict(color=_color(name), width=2.2),
            )
        )
    fig.update_yaxes(type="log")
    return style(
        fig,
        f"Training loss (moving average over {window} steps)",
        "training step",
        "mean squared error (log scale)",
        height=380,
    )


def trajectory_animation(trajs: dict, times, data=None, n_frames: int = 26, lim: float = 3.2):
    """Particles flowing from noise (``t = T``) to data (``t = 0``): one panel per model, a slider
    and a play button over the solver's steps.  ``trajs[name]`` is ``(steps + 1, n, 2)``."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = list(trajs)
    steps = next(iter(trajs.values())).shape[0] - 1
    idx = sorted(set(np.linspace(0, steps, min(n_frames, steps + 1)).round().astype(int).tolist()))
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, horizontal_spacing=0.06)
    n_bg = 0
    if data is not None:
        for col in range(1, len(names) + 1):
            fig.add_trace(
                go.Scattergl(
                    x=_f32(data[:, 0]),
                    y=_f32(data[:, 1]),
                    mode="markers",
                    showlegend=col == 1,
                    marker=dict(size=3, color=COLORS["data"]),
                    name="data",
                    hoverinfo="skip",
                ),
                row=1,
                col=col,
            )
            n_bg += 1

    def frame_traces(k):
        out = []
        for col, name in enumerate(names, start=1):
            x = trajs[name][k]
            out.append(
                go.Scatter(
                    x=_f32(x[:, 0]),
                    y=_f32(x[:, 1]),
                    mode="markers",
                    showlegend=False,
                    marker=dict(size=4, color=_color(name, COLORS["kac"])),
                    name=name,
                    xaxis=f"x{'' if col == 1 else col}",
                    yaxis=f"y{'' if col == 1 else col}",
                )
            )
        return out

    for col, tr in enumerate(frame_traces(idx[0]), start=1):
        fig.add_trace(tr, row=1, col=col)
    trace_ids = list(range(n_bg, n_bg + len(names)))
    fig.frames = [go.Frame(data=frame_traces(k), name=str(k), traces=trace_ids) for k in idx]
    t = np.asarray(times, dtype=np.float64)
    anim = dict(mode="immediate", frame=dict(duration=180, redraw=False), transition=dict(duration=0))
    steps_ = [
        dict(
            method="animate",
            label=f"{t[k]:.2f}",
            args=[[str(k)], dict(anim, frame=dict(duration=0, redraw=False))],
        )
        for k in idx
    ]
    fig.update_layout(
        sliders=[_slider(steps_, "t = ", 0, x=0.3, length=0.7)],
        updatemenus=[
            dict(
                type="buttons",
                direction="left",
                x=0.0,
                y=0.0,
                xanchor="left",
                yanchor="top",
                showactive=False,
                buttons=[
                    dict(label="▶ play", method="animate", args=[None, dict(anim, fromcurrent=True)]),
                    dict(label="❚❚ pause", method="animate", args=[[None], dict(anim, mode="immediate")]),
                ],
            )
        ],
    )
    for col in range(1, len(names) + 1):
        fig.update_xaxes(range=[-lim, lim], row=1, col=col, title_text="x1")
        fig.update_yaxes(
            range=[-lim, lim], row=1, col=col, scaleanchor=f"x{'' if col == 1 else col}", scaleratio=1
        )
    fig.update_yaxes(title_text="x2", row=1, col=1)
    return style(
        fig,
        "Sampling trajectories from noise (t = 1) to data (t = 0), Euler steps",
        None,
        None,
        height=500,
        legend="none",
    )


def velocity_bound_figure(times, stats: dict, bound=None, bound_label: str = "bound"):
    """Largest learned speed ``max ||u_theta(x, t)||`` along the sampling trajectories, per model,
    against the Kac bound.  ``stats[name] = (max_values, q99_values)``."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, (mx, q99) in stats.items():
        col = _color(name)
        fig.add_trace(
            go.Scatter(
                x=list(times), y=list(mx), mode="lines", line=dict(color=col, width=2.5), name=f"{name}: max"
            )
        )
        fig.add_trace(
            go.Scatter(
                x=list(times),
                y=list(q99),
                mode="lines",
                line=dict(color=col, width=1.5, dash="dot"),
                name=f"{name}: 99th percentile",
            )
        )
    if bound is not None:
        b = np.broadcast_to(np.asarray(bound, dtype=np.float64), (len(times),))
        fig.add_trace(
            go.Scatter(
                x=list(times),
                y=b.tolist(),
                mode="lines",
                line=dict(color=COLORS["bound"], dash="dash", width=2),
                name=bound_label,
            )
        )
    fig.update_xaxes(autorange="reversed")
    return style(
        fig,
        "Learned speeds along the sampling trajectories",
        "time t (sampling runs from t = 1 to t = 0)",
        "speed ||u_theta(x, t)||",
    )


def quality_vs_steps_figure(
    steps, results: dict, floor: float | None = None, metric: str = "energy distance"
):
    """Sample quality against the number of solver steps (log-log), one line per model."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, vals in results.items():
        fig.add_trace(
            go.Scatter(
                x=list(steps),
                y=list(vals),
                mode="lines+markers",
                name=name,
                line=dict(color=_color(name), width=2.5),
            )
        )
    if floor is not None:
        fig.add_trace(
            go.Scatter(
                x=[min(steps), max(steps)],
                y=[floor, floor],
                mode="lines",
                name="noise floor (data vs data)",
                line=dict(color="#777", dash="dash"),
            )
        )
    fig.update_xaxes(type="log", tickvals=list(steps))
    fig.update_yaxes(type="log", exponentformat="power")
    return style(
        fig,
        f"Sample quality against the number of Euler steps ({metric} to fresh data; lower is better)",
        "Euler steps (= network evaluations)",
        f"{metric} (log scale)",
    )


# =============================================================================== tables


def html_table(header: list[str], rows: list[list], caption: str | None = None) -> str:
    """A small HTML table (cells escaped; numbers formatted by the caller)."""
    import html as _html

    head = "".join(f"<th>{_html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_html.escape(str(v))}</td>" for v in r) + "</tr>" for r in rows)
    cap = f"<caption style='caption-side:top'>{_html.escape(caption)}</caption>" if caption else ""
    return (
        f"<div style='overflow-x:auto'><table class='table' style='font-size:0.9em'>{cap}<thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table></div>"
    )


def show_table(header: list[str], rows: list[list], caption: str | None = None) -> None:
    """Display :func:`html_table` (with a plain-text fallback)."""
    from IPython.display import display

    text = "\n".join(["\t".join(map(str, header))] + ["\t".join(map(str, r)) for r in rows])
    display({"text/html": html_table(header, rows, caption), "text/plain": text}, raw=True)


# --- part 2 figures
# Chapters 3 to 6 (guidance, the teacher, the distillation ladder, paper scale).  Same rules as
# above: every builder returns a figure built from what the chapter computed; nothing here trains
# or samples a model.  Widgets take a plain callback (``w -> figure``) that the tests call.

__all__ += [
    "image_tile",
    "image_grid_figure",
    "image_grid_slider_figure",
    "guided_field_figure",
    "guidance_ratio_figure",
    "metric_vs_w_figure",
    "quality_vs_nfe_figure",
    "velocity_norm_figure",
    "ladder_diagram_figure",
    "ratio_bars_figure",
    "timing_figure",
    "training_log_figure",
    "labelled_scatter_figure",
    "live_slider_widget",
]


def image_tile(images, ncol: int, pad: int = 1, pad_value: float = -0.55) -> np.ndarray:
    """``(N, C, H, W)`` images in ``[-1, 1]`` tiled row by row into one ``(C, rows*(H+pad)+pad,
    ncol*(W+pad)+pad)`` array (missing cells and the padding get ``pad_value``)."""
    x = _f32(images)
    if x.ndim != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got {x.shape}")
    if not isinstance(ncol, int) or ncol < 1:
        raise ValueError(f"ncol must be a positive int, got {ncol!r}")
    n, ch, h, w = x.shape
    rows = max(1, math.ceil(n / ncol))
    out = np.full((ch, rows * (h + pad) + pad, ncol * (w + pad) + pad), pad_value, dtype=np.float32)
    for k in range(n):
        r, q = divmod(k, ncol)
        out[
            :, pad + r * (h + pad) : pad + r * (h + pad) + h, pad + q * (w + pad) : pad + q * (w + pad) + w
        ] = x[k]
    return out


def _tile_trace(tile: np.ndarray, visible: bool = True, hover: str = "value %{z:.2f}"):
    import plotly.graph_objects as go

    if tile.shape[0] == 1:  # grey: a heatmap, white = +1 drawn dark like ink
        return go.Heatmap(
            z=tile[0],
            zmin=-1,
            zmax=1,
            colorscale="gray_r",
            showscale=False,
            visible=visible,
            hovertemplate=hover + "<extra></extra>",
        )
    rgb = ((np.clip(tile[:3], -1, 1) + 1) * 127.5).round().astype(np.uint8).transpose(1, 2, 0)
    return go.Image(z=rgb, visible=visible, hoverinfo="skip")


def _image_axes(fig, row_labels=None, h: int | None = None, pad: int = 1):
    fig.update_xaxes(visible=False, constrain="domain")
    fig.update_yaxes(
        autorange="reversed",
        scaleanchor="x",
        scaleratio=1,
        showgrid=False,
        zeroline=False,
        constrain="domain",
        showticklabels=bool(row_labels),
        ticks="",
        showline=False,
    )
    if row_labels:
        fig.update_yaxes(
            tickvals=[pad + k * (h + pad) + (h - 1) / 2 for k in range(len(row_labels))],
            ticktext=list(row_labels),
            visible=True,
            title_text=None,
        )


def _grid_height(tile_shape, width_px: int = 700, extra: int = 100) -> int:
    _, hh, ww = tile_shape
    return int(min(760, max(260, width_px * hh / ww + extra)))


def image_grid_figure(images, ncol: int, title: str, row_labels=None):
    """A grid of images (one heatmap; ``row_labels`` name the rows, e.g. the classes)."""
    import plotly.graph_objects as go

    tile = image_tile(images, ncol)
    fig = go.Figure(_tile_trace(tile))
    style(fig, title, None, None, height=_grid_height(tile.shape), legend="none")
    _image_axes(fig, row_labels, _f32(images).shape[2])  # after style: no axis lines on an image
    return fig


def image_grid_slider_figure(
    image_sets: list,
    labels: list[str],
    prefix: str,
    ncol: int,
    titles: list[str],
    row_labels=None,
    active: int = 0,
):
    """Static slider over several image grids (e.g. samples per class for each guidance weight, or
    one grid per distillation stage for the same latents): ``image_sets[k]`` shows at ``labels[k]``.

    The slider restyles the visibility of precomputed heatmaps, so it works in the static page.
    """
    import plotly.graph_objects as go

    if not (len(image_sets) == len(labels) == len(titles)) or not image_sets:
        raise ValueError("image_sets, labels and titles must be non-empty lists of the same length")
    tiles = [image_tile(im, ncol) for im in image_sets]
    fig = go.Figure([_tile_trace(t, visible=k == active) for k, t in enumerate(tiles)])
    steps = [
        dict(
            method="update",
            label=lab,
            args=[{"visible": [j == k for j in range(len(tiles))]}, {"title.text": titles[k]}],
        )
        for k, lab in enumerate(labels)
    ]
    fig.update_layout(sliders=[_slider(steps, prefix, active, y=-0.02)])
    style(fig, titles[active], None, None, height=_grid_height(tiles[0].shape), legend="none")
    _image_axes(fig, row_labels, _f32(image_sets[0]).shape[2])  # after style: no axis lines on an image
    return fig


def guided_field_figure(
    x, v_u, v_c, v_w: dict, bounds: dict, title: str, active: int | None = None, class_label: str = "y"
):
    """The guided field ``v_w = v_u + w (v_c - v_u)`` along a line of states, one slider position per
    ``w`` (keys of ``v_w``), with the band ``|v| <= bounds[w]``.  Arrays are 1D over ``x``."""
    import plotly.graph_objects as go

    ws = list(v_w)
    xs = _f32(x)
    frames = []
    for w in ws:
        b = float(bounds[w])
        frames.append(
            [
                go.Scatter(
                    x=xs,
                    y=_f32(v_u),
                    mode="lines",
                    line=dict(color="#888", width=2),
                    name="unconditional v(x, t)",
                ),
                go.Scatter(
                    x=xs,
                    y=_f32(v_c),
                    mode="lines",
                    line=dict(color=COLORS["kac"], width=2),
                    name=f"conditional v(x, t; {class_label})",
                ),
                go.Scatter(
                    x=xs,
                    y=_f32(v_w[w]),
                    mode="lines",
                    line=dict(color=COLORS["gaussian"], width=3.5),
                    name="guided v_w",
                ),
                go.Scatter(
                    x=[xs.min(), xs.max(), None, xs.min(), xs.max()],
                    y=[b, b, None, -b, -b],
                    mode="lines",
                    line=dict(color=COLORS["bound"], dash="dash", width=2),
                    name="bound (|1-w| + |w|) B_t",
                ),
            ]
        )
    active = len(ws) // 2 if active is None else active
    fig = time_slider_figure(frames, [f"{w:g}" for w in ws], "w = ", active=active)
    for frame, w in zip(fig.frames, ws):  # each weight gets the axis range of its own bound
        frame.layout = dict(yaxis=dict(range=[-1.1 * float(bounds[w]), 1.1 * float(bounds[w])]))
    fig.update_yaxes(range=[-1.1 * float(bounds[ws[active]]), 1.1 * float(bounds[ws[active]])])
    return style(fig, title, "state x", "velocity")


def guidance_ratio_figure(
    ws, ratios: dict, title: str = "Largest guided speed against the triangle-inequality bound"
):
    """``max |v_w| / B`` against ``w`` for several fields (``ratios[name]`` aligned with ``ws``) beside
    the bound ``|1 - w| + |w|`` (``B``: the per-coordinate bound of the unguided fields)."""
    import plotly.graph_objects as go

    ws = [float(w) for w in ws]
    dense = np.linspace(min(ws + [0.0]), max(ws), 200)
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=dense,
            y=np.abs(1 - dense) + np.abs(dense),
            mode="lines",
            name="bound |1 - w| + |w|",
            line=dict(color=COLORS["bound"], dash="dash", width=2.5),
        )
    )
    palette = [COLORS["exact"], COLORS["kac"], COLORS["gaussian"], COLORS["diffusion"], "#8e44ad"]
    for k, (name, vals) in enumerate(ratios.items()):
        fig.add_trace(
            go.Scatter(
                x=ws,
                y=[float(v) for v in vals],
                mode="lines+markers",
                name=name,
                line=dict(color=palette[k % len(palette)], width=2.2),
            )
        )
    return style(
        fig, title, "guidance weight w (0: unconditional, 1: conditional)", "max |v_w| / B", legend_below=True
    )


def metric_vs_w_figure(
    ws,
    fid,
    accuracy,
    metric: str,
    floor: float | None = None,
    paper_w: float | None = None,
    best_w: float | None = None,
):
    """Sample quality (left axis) and class accuracy (right axis) against the guidance weight."""
    import plotly.graph_objects as go

    ws = [float(w) for w in ws]
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=ws,
            y=[float(v) for v in fid],
            mode="lines+markers",
            name=f"{metric} (left, lower is better)",
            line=dict(color=COLORS["kac"], width=2.5),
        )
    )
    fig.add_trace(
        go.Scatter(
            x=ws,
            y=[100 * float(a) for a in accuracy],
            mode="lines+markers",
            yaxis="y2",
            name="class accuracy, % (right)",
            line=dict(color=COLORS["gaussian"], width=2.5, dash="dot"),
        )
    )
    if floor is not None:
        fig.add_trace(
            go.Scatter(
                x=[min(ws), max(ws)],
                y=[floor, floor],
                mode="lines",
                name=f"{metric} floor (real vs real)",
                line=dict(color="#777", dash="dash"),
            )
        )
    if paper_w is not None:
        fig.add_vline(x=paper_w, line=dict(color=COLORS["bound"], dash="dot"))
        fig.add_annotation(
            x=paper_w,
            y=1.0,
            yref="paper",
            text=f"paper's CIFAR-10 optimum w = {paper_w:g}",
            showarrow=False,
            xanchor="left",
            yanchor="bottom",
            font=dict(color=COLORS["bound"]),
        )
    if best_w is not None:
        fig.add_vline(x=best_w, line=dict(color=COLORS["kac"], dash="dot"))
        fig.add_annotation(
            x=best_w,
            y=0.92,
            yref="paper",
            text=f"best here w = {best_w:g}",
            showarrow=False,
            xanchor="left",
            font=dict(color=COLORS["kac"]),
        )
    fig.update_layout(
        yaxis2=dict(
            overlaying="y",
            side="right",
            range=[0, 105],
            title="class accuracy (%)",
            showgrid=False,
            tickmode="auto",
            type="linear",
        )
    )
    fig.update_layout(yaxis=dict(type="log"))
    return style(
        fig,
        f"Guidance weight: {metric} and class accuracy",
        "guidance weight w",
        f"{metric} (log scale)",
        legend_below=True,
    )


def quality_vs_nfe_figure(
    series: dict,
    metric: str,
    floor: float | None = None,
    title: str | None = None,
    x_title: str = "network passes per sample (NFE)",
    paper: dict | None = None,
):
    """Sample quality against cost, log-log: ``series[name] = (costs, values)`` or ``(costs, values,
    labels)`` (labels show on hover, e.g. the step counts)."""
    import plotly.graph_objects as go

    palette = [
        COLORS["kac"],
        COLORS["gaussian"],
        COLORS["diffusion"],
        "#8e44ad",
        COLORS["exact"],
        "#16a085",
        "#c2185b",
    ]
    fig = go.Figure()
    xs_all = []
    for k, (name, s) in enumerate(series.items()):
        xs, ys = [float(v) for v in s[0]], [float(v) for v in s[1]]
        xs_all += xs
        text = [str(v) for v in s[2]] if len(s) > 2 else None
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines+markers",
                name=name,
                text=text,
                line=dict(color=palette[k % len(palette)], width=2.4),
                hovertemplate=("%{text}<br>" if text else "")
                + "cost %{x}<br>"
                + metric
                + " %{y:.3g}<extra>"
                + name
                + "</extra>",
            )
        )
    if floor is not None and xs_all:
        fig.add_trace(
            go.Scatter(
                x=[min(xs_all), max(xs_all)],
                y=[floor, floor],
                mode="lines",
                name=f"{metric} floor (real vs real)",
                line=dict(color="#777", dash="dash"),
            )
        )
    fig.update_xaxes(type="log")
    fig.update_yaxes(type="log")
    return style(
        fig,
        title or f"{metric} against sampling cost (lower is better)",
        x_title,
        f"{metric} (log scale)",
        legend_below=True,
    )


def velocity_norm_figure(stats: dict, title: str = "Norm of the learned velocity along the path"):
    """``||u_theta(x_t, t)||`` (mean and max over samples) against ``t`` for each model
    (``stats[name]`` a :class:`kaclib.metrics.VelocityStats`), the target's max, and the Kac
    bounds ``c sqrt(d)`` and ``(|f'| + g' c) sqrt(d)`` of the first Kac model."""
    import plotly.graph_objects as go

    fig = go.Figure()
    palette = [COLORS["kac"], COLORS["gaussian"], COLORS["diffusion"], "#8e44ad"]
    kac = None
    for k, (name, st) in enumerate(stats.items()):
        col = palette[k % len(palette)]
        fig.add_trace(
            go.Scatter(
                x=list(st.times),
                y=list(st.model_norm_max),
                mode="lines+markers",
                name=f"{name}: max",
                line=dict(color=col, width=2.5),
            )
        )
        fig.add_trace(
            go.Scatter(
                x=list(st.times),
                y=list(st.model_norm_mean),
                mode="lines",
                name=f"{name}: mean",
                line=dict(color=col, width=1.5, dash="dot"),
            )
        )
        fig.add_trace(
            go.Scatter(
                x=list(st.times),
                y=list(st.target_norm_max),
                mode="lines",
                name=f"{name}: target max",
                line=dict(color=col, width=1, dash="dashdot"),
                opacity=0.7,
            )
        )
        if kac is None and st.speed_bound is not None:
            kac = st
    if kac is not None:
        fig.add_trace(
            go.Scatter(
                x=[min(kac.times), max(kac.times)],
                y=[kac.speed_bound] * 2,
                mode="lines",
                name="c sqrt(d) (Kac process speed)",
                line=dict(color=COLORS["bound"], dash="dash", width=2),
            )
        )
        fig.add_trace(
            go.Scatter(
                x=list(kac.times),
                y=list(kac.norm_bound),
                mode="lines",
                name="(|f'| + g' c) sqrt(d) (target bound)",
                line=dict(color=COLORS["bound"], dash="dot", width=2),
            )
        )
    fig.update_yaxes(type="log")
    return style(
        fig, title, "time t (0 = data, 1 = noise)", "velocity norm (log scale)", legend_below=True, height=480
    )


def ladder_diagram_figure(stages: list, teacher_steps: int, single_stage: tuple | None = None):
    """The ladder as a picture.  Top: the chain teacher -> students (``stages`` is a list of
    ``(student_steps, substeps)``); bottom: one stage on the time axis, the teacher's ``N`` substeps
    between two student grid points and the student's single step, matched only at the end point."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=2,
        cols=1,
        row_heights=[0.42, 0.58],
        vertical_spacing=0.12,
        subplot_titles=(
            "the ladder: each student becomes the next stage's teacher",
            f"one stage, sketched (M = {stages[0][0]}, N = {stages[0][1]}): only the end points are matched",
        ),
    )
    names = [f"teacher<br>{teacher_steps} steps"] + [
        f"student<br>{m} step{'s' if m > 1 else ''}" for m, _ in stages
    ]
    xs = np.arange(len(names)) * 2.0
    for k, (x, lab) in enumerate(zip(xs, names)):
        col = COLORS["kac"] if k == 0 else COLORS["gaussian"]
        fig.add_shape(
            type="rect",
            x0=x - 0.7,
            x1=x + 0.7,
            y0=-0.45,
            y1=0.45,
            line=dict(color=col, width=2),
            fillcolor="rgba(255,255,255,0.9)",
            row=1,
            col=1,
        )
        fig.add_annotation(x=x, y=0, text=lab, showarrow=False, font=dict(size=13), row=1, col=1)
    for k, (_m, n) in enumerate(stages):
        fig.add_annotation(
            x=xs[k + 1] - 0.72,
            y=0,
            ax=xs[k] + 0.72,
            ay=0,
            xref="x",
            yref="y",
            axref="x",
            ayref="y",
            showarrow=True,
            arrowhead=3,
            arrowsize=1.3,
            arrowwidth=2,
            arrowcolor="#444",
            text="",
        )
        fig.add_annotation(
            x=(xs[k] + xs[k + 1]) / 2,
            y=0.62,
            text=f"N = {n}",
            showarrow=False,
            font=dict(size=12),
            row=1,
            col=1,
        )
    if single_stage is not None:
        fig.add_annotation(
            x=xs[-1] + 0.7,
            y=-0.95,
            text=f"ablation: one stage {teacher_steps} -> {single_stage[0]} (N = {single_stage[1]})",
            showarrow=False,
            xanchor="right",
            font=dict(size=12, color="#555"),
            row=1,
            col=1,
        )
    fig.update_xaxes(visible=False, range=[xs[0] - 1, xs[-1] + 1], row=1, col=1)
    fig.update_yaxes(visible=False, range=[-1.2, 1.0], row=1, col=1)
    # bottom panel: a sketch of one student step from t_k to t_{k+1} = t_k - T/M against the frozen
    # teacher's N substeps (not to scale: the interval is stretched so the substeps are visible)
    m, n = stages[0]
    t = np.linspace(1.0, 0.0, 200)
    curve = lambda s: 0.6 * np.sin(3 * s) + 0.3 * s  # noqa: E731
    tk, tk1 = 0.85, 0.25
    sub = np.linspace(tk, tk1, n + 1)
    fig.add_trace(
        go.Scatter(
            x=t,
            y=curve(t),
            mode="lines",
            line=dict(color="#bbb", width=1.5),
            name="teacher trajectory (guided ODE)",
        ),
        row=2,
        col=1,
    )
    fig.add_trace(
        go.Scatter(
            x=sub,
            y=curve(sub),
            mode="lines+markers",
            line=dict(color=COLORS["kac"], width=2.5),
            marker=dict(size=8),
            name=f"frozen teacher: N = {n} substeps (no grad)",
        ),
        row=2,
        col=1,
    )
    slope = 0.6 * 3 * np.cos(3 * tk) + 0.3
    y_student = curve(tk) - (tk - tk1) * slope
    fig.add_trace(
        go.Scatter(
            x=[tk, tk1],
            y=[curve(tk), y_student],
            mode="lines+markers",
            line=dict(color=COLORS["gaussian"], width=3),
            marker=dict(size=10, symbol=["circle", "x"]),
            name="student: one Euler step x - (T/M) u_phi",
        ),
        row=2,
        col=1,
    )
    fig.add_trace(
        go.Scatter(
            x=[tk1, tk1],
            y=[y_student, curve(tk1)],
            mode="lines",
            line=dict(color=COLORS["bound"], width=3, dash="dot"),
            name="loss: || student end - teacher end ||^2",
        ),
        row=2,
        col=1,
    )
    fig.add_annotation(x=tk, y=curve(tk), text="x at t_k", showarrow=True, ax=-20, ay=-35, row=2, col=1)
    fig.add_annotation(
        x=tk1, y=curve(tk1), text="teacher end at t_k+1", showarrow=True, ax=40, ay=-35, row=2, col=1
    )
    fig.update_xaxes(title_text="time t (sampling runs from 1 to 0)", autorange="reversed", row=2, col=1)
    fig.update_yaxes(title_text="a coordinate of x", row=2, col=1)
    return style(fig, "Endpoint-only distillation", None, None, height=640, legend="bottom")


def ratio_bars_figure(
    labels: list[str], groups: dict, title: str, y_title: str, reference: float | None = 1.0
):
    """Grouped bars: ``groups[name]`` holds one value per label (``None`` leaves a gap)."""
    import plotly.graph_objects as go

    palette = [COLORS["exact"], COLORS["kac"], COLORS["gaussian"], COLORS["diffusion"], "#8e44ad"]
    fig = go.Figure()
    for k, (name, vals) in enumerate(groups.items()):
        fig.add_trace(
            go.Bar(
                x=list(labels),
                y=[None if v is None else float(v) for v in vals],
                name=name,
                marker_color=palette[k % len(palette)],
                hovertemplate="%{x}: %{y:.3g}<extra>" + name + "</extra>",
            )
        )
    if reference is not None:
        fig.add_hline(y=reference, line=dict(color="#777", dash="dash"))
    fig.update_layout(barmode="group")
    return style(fig, title, None, y_title)


def timing_figure(
    names: list[str],
    seconds: list[float],
    title: str = "Sampling time per image",
    unit: str = "milliseconds per image",
):
    """Horizontal bars (log scale) of a cost per sampler."""
    import plotly.graph_objects as go

    fig = go.Figure(
        go.Bar(
            y=list(names),
            x=[float(s) for s in seconds],
            orientation="h",
            marker_color=COLORS["kac"],
            text=[f"{float(s):.3g}" for s in seconds],
            textposition="outside",
        )
    )
    fig.update_xaxes(type="log")
    fig.update_yaxes(autorange="reversed")
    return style(fig, title, f"{unit} (log scale)", None, height=max(300, 60 + 38 * len(names)))


def training_log_figure(logs: dict, title: str = "Training loss", y_title: str = "loss (log scale)"):
    """Logged training curves: ``logs[name] = (steps, values)`` (e.g. the ``loss`` records of a run's
    ``metrics.jsonl``, each a mean over the steps since the previous record), log y axis."""
    import plotly.graph_objects as go

    palette = [COLORS["kac"], COLORS["gaussian"], COLORS["diffusion"], "#8e44ad"]
    fig = go.Figure()
    for k, (name, (steps, vals)) in enumerate(logs.items()):
        fig.add_trace(
            go.Scatter(
                x=[int(s) for s in steps],
                y=[float(v) for v in vals],
                mode="lines+markers",
                name=name,
                line=dict(color=palette[k % len(palette)], width=2.4),
            )
        )
    fig.update_yaxes(type="log")
    return style(fig, title, "training step", y_title, height=400, legend_below=True)


def labelled_scatter_figure(points: list, title: str, x_title: str, y_title: str, log: bool = False):
    """Labelled points ``(x, y, label, group)``: one colour per group, the label beside each point."""
    import plotly.graph_objects as go

    palette = [COLORS["kac"], COLORS["gaussian"], COLORS["diffusion"], "#8e44ad", COLORS["exact"]]
    groups = list(dict.fromkeys(p[3] for p in points))
    fig = go.Figure()
    for k, grp in enumerate(groups):
        pts = [p for p in points if p[3] == grp]
        fig.add_trace(
            go.Scatter(
                x=[float(p[0]) for p in pts],
                y=[float(p[1]) for p in pts],
                mode="markers+text",
                text=[str(p[2]) for p in pts],
                textposition="top center",
                name=str(grp),
                marker=dict(size=11, color=palette[k % len(palette)]),
            )
        )
    if log:
        fig.update_xaxes(type="log")
        fig.update_yaxes(type="log")
    return style(fig, title, x_title, y_title, legend_below=True)


def live_slider_widget(callback, value: float, lo: float, hi: float, step: float, description: str):
    """A live float slider (ipywidgets, JupyterLab) that redraws ``callback(value) -> figure``.

    In the book build a note is printed and ``None`` returned (a widget needs a kernel; the static
    slider figures serve the page).  The returned box keeps ``box.update`` (draws one value), for tests.
    """
    if in_book_build():
        print("Live slider: run this notebook in JupyterLab (the static slider above works in the book).")
        return None
    import ipywidgets as W
    from IPython.display import display

    slider = W.FloatSlider(
        value=value, min=lo, max=hi, step=step, description=description, continuous_update=False
    )
    out = W.Output()

    def update(v):
        with out:
            out.clear_output(wait=True)
            show(callback(v))

    W.interactive_output(update, {"v": slider})
    box = W.VBox([slider, out])
    box.update = update
    display(box)
    return box
