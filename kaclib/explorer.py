"""A training-free explorer: sliders that move generation itself (issue 12, section 4).

For a small labelled 2D point set ``{x_i}`` (uniform weights) the Kac path
``x_t = f(t) x0 + K_{g(t)}`` (one Kac process per coordinate, :class:`kaclib.paths.KacPath`) has an
exact marginal velocity, the posterior average of the conditional targets::

    u(x, t) = sum_i p_t(x | x_i) u_t(x | x_i) / sum_i p_t(x | x_i),
    p_t(x | x_i) = prod_k p(x_k - f(t) x_ik, g(t)),
    u_t(x | x_i) = f'(t) x_i + g'(t) v(x - f(t) x_i, g(t)),

with the Kac density ``p`` and field ``v`` of :mod:`kaclib.kac` (chapter 3 builds the same field in
1D).  Integrating it from the Kac latent ``K_{g(T)}`` with a few Euler steps shows how ``c``, the
damping ``xi = 2a``, the clock ``g`` and the guidance weight ``w`` bend or straighten the
trajectories and change the few-step error (the distance to a fine solution from the same latents).

The law of ``K_s`` has atoms at the fronts ``+-c s``; the posterior there is exact, not smoothed:
a state ``x`` with coordinate ``k`` on the front of point ``i`` lies on a stratum of lower dimension,
which the continuous parts of the other points do not charge.  So the points whose fronts contain
the most coordinates of ``x`` take all the weight, each weighted by its atom masses
``exp(-a s)/2`` times its densities in the other coordinates, and the field there is
``sign c`` in the front coordinates.  A latent coordinate drawn on a front (probability
``exp(-a g(T))``) is such a state.  The backward flow itself drives states onto fronts: going from
``T`` to 0 the atoms' mass ``exp(-a s)/2`` grows, fed by the interior, and the interior field just
inside a front, ``c s/(s + 2/a)``, is slower than the front (``c``), so the exact trajectory
reaches the front in finite time and then rides on it.  An Euler step overshoots the front
instead of landing on it; where the state then lies outside the support of every (admissible)
point (the union of the boxes ``f x_i + [-c s, c s]^2``), the field is undefined and the explorer
uses the points whose box is nearest (smallest total excess over the fronts), whose fields there
are ``sign c`` in the outside coordinates: the particle rides along that front, as the exact one
would.  The share of such evaluations is ``ExplorerResult.outside_fraction``; overshooting into
another point's box is part of the few-step error.

Guidance (as :mod:`kaclib.guidance`): ``v_w = v_u + w (v_c - v_u)`` with ``v_c`` the field of the
points of the particle's class; ``w = 0`` unconditional, ``w = 1`` class-conditional.
"""

from __future__ import annotations

import torch

from .explorer_flow import (
    ExplorerResult,
    FewStepErrors,
    PointSet,
    default_points,
    euler_trajectories,
    explore,
    explorer_path,
    few_step_errors,
    guided_velocity,
    marginal_velocity,
)

__all__ = [
    "ExplorerResult",
    "FewStepErrors",
    "PointSet",
    "default_points",
    "euler_trajectories",
    "explore",
    "explorer_figure",
    "explorer_path",
    "explorer_slider_figure",
    "explorer_traces",
    "explorer_widget",
    "few_step_error_figure",
    "few_step_errors",
    "guided_velocity",
    "marginal_velocity",
]

# =============================================================================== figures

_CLASS_COLORS = ["#1f5fa8", "#c0392b", "#2a9d3f", "#8e44ad", "#e07b00"]


def _lines(traj: torch.Tensor, k: int):
    """X and y of the first ``k`` trajectories as one polyline with ``None`` separators."""
    import numpy as np

    tr = traj[:, :k].double().numpy()  # (S + 1, k, 2)
    pad = np.full((1, tr.shape[1], 2), np.nan)
    seq = np.concatenate([tr, pad], 0).transpose(1, 0, 2).reshape(-1, 2)
    return [None if np.isnan(v) else float(v) for v in seq[:, 0]], [
        None if np.isnan(v) else float(v) for v in seq[:, 1]
    ]


def explorer_traces(result: ExplorerResult, n_lines: int = 60) -> list:
    """The moving traces of one result: trajectories (first ``n_lines``), fine end points, end points."""
    import plotly.graph_objects as go

    from .plots import COLORS, to_float32

    lx, ly = _lines(result.trajectory, n_lines)
    end, fine = result.end, result.fine_end
    color = "#1f5fa8" if result.classes is None else [_CLASS_COLORS[int(k) % 5] for k in result.classes]
    return [
        go.Scatter(
            x=lx,
            y=ly,
            mode="lines",
            line={"color": "rgba(31,95,168,0.35)", "width": 1},
            name="trajectories",
            hoverinfo="skip",
        ),
        go.Scatter(
            x=to_float32(fine[:, 0]),
            y=to_float32(fine[:, 1]),
            mode="markers",
            name=f"{result.config['fine_steps']} steps",
            marker={"size": 5, "color": "rgba(0,0,0,0)", "line": {"color": COLORS["exact"], "width": 1}},
        ),
        go.Scatter(
            x=to_float32(end[:, 0]),
            y=to_float32(end[:, 1]),
            mode="markers",
            name=f"{result.config['steps']} Euler steps",
            marker={"size": 5, "color": color, "opacity": 0.8},
        ),
    ]


def _data_trace(points: PointSet):
    import plotly.graph_objects as go

    from .plots import to_float32

    color = "#111111" if points.labels is None else [_CLASS_COLORS[int(k) % 5] for k in points.labels]
    return go.Scatter(
        x=to_float32(points.x[:, 0]),
        y=to_float32(points.x[:, 1]),
        mode="markers",
        name="data points",
        marker={"size": 13, "symbol": "star", "color": color, "line": {"color": "#111", "width": 1}},
    )


def _title(r: ExplorerResult) -> str:
    cf = r.config
    return (
        f"c = {cf['c']:g}, xi = {cf['xi']:g}, g = {cf['g']}, w = {cf['w']:g}: {cf['steps']} Euler "
        f"step{'s' if cf['steps'] > 1 else ''}, few-step error {r.few_step_error:.3f}"
    )


def explorer_figure(
    c: float = 2.0,
    xi: float = 8.0,
    g: str = "t",
    steps: int = 4,
    w: float = 0.0,
    points: PointSet | None = None,
    n: int = 200,
    seed: int = 0,
    fine_steps: int = 256,
    n_lines: int = 60,
):
    """The figure of one setting: the live sliders' callback (``explore`` + ``explorer_traces``).

    Trajectories, end points (coloured by class) and the fine solution's end points from the same
    latents, with the data points.
    """
    import plotly.graph_objects as go

    from .plots import style

    r = explore(c, xi, g, steps, w, points, n, seed, fine_steps)
    fig = go.Figure([_data_trace(r.points)] + explorer_traces(r, n_lines))
    lim = _axis_limit(c)
    fig.update_xaxes(range=[-lim, lim])
    fig.update_yaxes(range=[-lim, lim], scaleanchor="x", scaleratio=1)
    return style(fig, _title(r), "x1", "x2", height=560)


def _axis_limit(c: float, T: float = 1.0) -> float:
    """Half-width of the axes: the latents' box ``c g(T)`` (``g(T) = T`` for both clocks) and the data."""
    return max(1.2, 1.05 * float(c) * T)


def explorer_slider_figure(
    cs=(1.0, 2.0, 3.0),
    xis=(2.0, 8.0, 32.0),
    steps=(1, 2, 4, 8),
    g: str = "t",
    w: float = 0.0,
    points: PointSet | None = None,
    n: int = 150,
    seed: int = 0,
    fine_steps: int = 256,
    n_lines: int = 40,
    active=None,
):
    """Static sliders over a precomputed grid (:func:`kaclib.plots.two_slider_figure`).

    Slider 1 runs over the ``(c, xi)`` pairs, slider 2 over the number of Euler steps.  The data points
    are static.
    """
    from .plots import style, two_slider_figure

    pts = points if points is not None else default_points()
    pairs = [(float(c), float(x)) for c in cs for x in xis]
    cells, titles, layouts = [], [], []
    for c, x in pairs:
        lim = _axis_limit(max(cs))
        for S in steps:
            r = explore(c, x, g, int(S), w, pts, n, seed, fine_steps)
            cells.append(explorer_traces(r, n_lines))
            titles.append(_title(r))
            layouts.append({"xaxis.range": [-lim, lim], "yaxis.range": [-lim, lim]})
    a1, a2 = active if active is not None else (len(pairs) // 2, min(1, len(steps) - 1))
    fig = two_slider_figure(
        cells,
        (len(pairs), len(steps)),
        [f"c = {c:g}, xi = {x:g}" for c, x in pairs],
        [str(int(S)) for S in steps],
        "",
        "Euler steps: ",
        titles,
        static_traces=[_data_trace(pts)],
        active=(a1, a2),
        cell_layouts=layouts,
    )
    fig.update_yaxes(scaleanchor="x", scaleratio=1)
    fig = style(fig, titles[a1 * len(steps) + a2], "x1", "x2", height=560)
    return fig


def few_step_error_figure(res: FewStepErrors):
    """Few-step error against the number of Euler steps, one line per ``(c, xi)`` (log-log)."""
    import plotly.graph_objects as go

    from .plots import style

    fig = go.Figure()
    for i, c in enumerate(res.cs):
        for j, xi in enumerate(res.xis):
            line = {"color": _CLASS_COLORS[i % 5], "dash": ["solid", "dash", "dot"][j % 3]}
            fig.add_trace(
                go.Scatter(
                    x=list(res.steps),
                    y=res.errors[i, j].tolist(),
                    mode="lines+markers",
                    name=f"c = {c:g}, xi = {xi:g}",
                    line=line,
                )
            )
    fig.update_xaxes(type="log", tickvals=list(res.steps))
    fig.update_yaxes(type="log")
    title = (
        f"Few-step error: mean distance to the {res.config['fine_steps']}-step end points "
        f"(g = {res.config['g']}, w = {res.config['w']:g})"
    )
    return style(fig, title, "Euler steps", "few-step error", height=480, legend="bottom")


def explorer_widget(points: PointSet | None = None, n: int = 200, seed: int = 0, fine_steps: int = 256):
    """Live sliders (JupyterLab) for ``c``, ``xi``, ``g``, the steps and ``w``.

    Their callback is :func:`explorer_figure` (:func:`kaclib.live.slider_widget`; ``None`` in the book
    build).
    """
    from . import live

    def callback(c, xi, g, steps, w):
        return explorer_figure(c, xi, g, steps, w, points=points, n=n, seed=seed, fine_steps=fine_steps)

    return live.slider_widget(
        callback,
        c=live.Range(0.5, 4.0, 0.25, 2.0),
        xi=live.Range(0.5, 64.0, 0.05, 8.0, log=True),
        g=live.Choice(("t", "t2"), "t"),
        steps=live.Range(1, 8, 1, 4),
        w=live.Range(0.0, 3.0, 0.25, 0.0),
    )
