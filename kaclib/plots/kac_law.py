"""Figures of chapter 1 (the Kac process).

Sample paths, the law against time (histograms, exact density and atoms), the telegraph PDE, the finite
speed, the diffusion limit and the law's dependence on the speed ``c`` and the flip rate ``xi``, static
sliders and live widgets.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .common import COLORS, in_book_build, show, style, time_slider_figure, to_float32, two_slider_figure

__all__ = [
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
]


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
                x=to_float32(t),
                y=to_float32(x),
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
    """Per time: MC histogram of the interior samples, exact density, exact and MC atom masses.

    The histogram is in density units.  ``samples[s]`` holds draws of ``X_s``.  Returns
    ``(frames_data, y_max)``.
    """
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
                    x=to_float32((edges[:-1] + edges[1:]) / 2),
                    y=to_float32(hist),
                    width=width,
                    marker_color=COLORS["mc"],
                    name="Monte Carlo histogram (interior)",
                    hovertemplate="x = %{x:.3f}<br>density = %{y:.3f}<extra>MC</extra>",
                ),
                go.Scatter(
                    x=to_float32(x),
                    y=to_float32(p),
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

    x = to_float32(x)
    frames = []
    for k in range(len(times)):
        frames.append(
            [
                go.Scatter(
                    x=x,
                    y=to_float32(exact[k]),
                    mode="lines",
                    line=dict(color=COLORS["exact"], width=4),
                    opacity=0.45,
                    name="closed form (smoothed Kac law)",
                ),
                go.Scatter(
                    x=x,
                    y=to_float32(fd[k]),
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
            x=to_float32(xg),
            y=to_float32(g),
            mode="lines",
            line=dict(color=COLORS["gaussian"], width=2.5),
            name=f"Gaussian, same variance ({var:.3f})",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=to_float32(x),
            y=to_float32(p),
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

    from ..kac import KacProcess

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
                    x=to_float32(xg),
                    y=to_float32(heat),
                    mode="lines",
                    line=dict(color=COLORS["diffusion"], width=4),
                    opacity=0.5,
                    name=f"heat kernel N(0, 2 D s), D = {D:g}",
                ),
                go.Scatter(
                    x=to_float32(x),
                    y=to_float32(p),
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
    from ..kac import KacProcess, check_finite_param

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
            x=to_float32(d["gauss_x"]),
            y=to_float32(d["gauss"]),
            mode="lines",
            line=dict(color=COLORS["gaussian"], dash="dot", width=2),
            name="Gaussian, same variance",
            showlegend=show_legend,
        ),
        go.Scatter(
            x=to_float32(d["x"]),
            y=to_float32(d["density"]),
            mode="lines",
            line=dict(color=COLORS["kac"], width=2.5),
            name="Kac density",
            showlegend=show_legend,
        ),
        go.Scatter(
            x=to_float32(d["atom_x"]),
            y=to_float32(d["atom_mass"]),
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
    """Live sliders for ``c``, ``xi`` and ``s`` (ipywidgets; JupyterLab).

    In the book build a note is printed and ``None`` returned.
    """
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
