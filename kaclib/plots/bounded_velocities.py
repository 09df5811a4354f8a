"""Figures of chapter 2 (bounded velocities).

The conditional velocity of the Kac path, velocity magnitudes against their bounds, the 2D toy (mixture,
losses, trajectories) and quality against the number of steps.
"""

from __future__ import annotations

import numpy as np
import torch

from .common import COLORS, series_color, slider_spec, style, to_float32

__all__ = [
    "conditional_velocity_figure",
    "velocity_magnitude_figure",
    "mixture_figure",
    "loss_figure",
    "trajectory_animation",
    "velocity_bound_figure",
    "quality_vs_steps_figure",
]


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
                x=to_float32(x),
                y=to_float32(v),
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
    """Two panels, log-log in ``t``: typical and worst-case velocity magnitudes.

    The 99th percentile of ``|u(t, x_t | x0)|`` along the path, and the worst case over a window of
    states.  ``typical``/``worst``: ``name -> values``.
    """
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
                    line=dict(color=series_color(name), width=2.5),
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
    """Scatter of the toy's data samples ``x`` (and the component means ``centers``, when given)."""
    import plotly.graph_objects as go

    fig = go.Figure(
        go.Scattergl(
            x=to_float32(x[:, 0]),
            y=to_float32(x[:, 1]),
            mode="markers",
            marker=dict(size=3, color=COLORS["kac"], opacity=0.5),
            name="data samples",
        )
    )
    if centers is not None:
        fig.add_trace(
            go.Scatter(
                x=to_float32(centers[:, 0]),
                y=to_float32(centers[:, 1]),
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
                y=to_float32(smooth),
                mode="lines",
                name=name,
                line=dict(color=series_color(name), width=2.2),
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
    """Particles flowing from noise (``t = T``) to data (``t = 0``).

    One panel per model, a slider and a play button over the solver's steps.  ``trajs[name]`` is
    ``(steps + 1, n, 2)``.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = list(trajs)
    steps = next(iter(trajs.values())).shape[0] - 1
    idx = sorted(set(np.linspace(0, steps, min(n_frames, steps + 1)).round().astype(int).tolist()))
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, horizontal_spacing=0.06)
    n_bg = _add_data_panels(fig, data, len(names))
    for col, tr in enumerate(_particle_traces(trajs, names, idx[0]), start=1):
        fig.add_trace(tr, row=1, col=col)
    trace_ids = list(range(n_bg, n_bg + len(names)))
    fig.frames = [
        go.Frame(data=_particle_traces(trajs, names, k), name=str(k), traces=trace_ids) for k in idx
    ]
    _add_play_controls(fig, idx, np.asarray(times, dtype=np.float64))
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


def _add_data_panels(fig, data, n_panels: int) -> int:
    """The data points behind the particles of each of ``n_panels`` panels (legend once).

    Returns the number of traces added (0 without ``data``).
    """
    import plotly.graph_objects as go

    if data is None:
        return 0
    for col in range(1, n_panels + 1):
        fig.add_trace(
            go.Scattergl(
                x=to_float32(data[:, 0]),
                y=to_float32(data[:, 1]),
                mode="markers",
                showlegend=col == 1,
                marker=dict(size=3, color=COLORS["data"]),
                name="data",
                hoverinfo="skip",
            ),
            row=1,
            col=col,
        )
    return n_panels


def _particle_traces(trajs: dict, names: list, k: int) -> list:
    """The particles of every model at solver step ``k``, one trace per panel."""
    import plotly.graph_objects as go

    out = []
    for col, name in enumerate(names, start=1):
        x = trajs[name][k]
        out.append(
            go.Scatter(
                x=to_float32(x[:, 0]),
                y=to_float32(x[:, 1]),
                mode="markers",
                showlegend=False,
                marker=dict(size=4, color=series_color(name, COLORS["kac"])),
                name=name,
                xaxis=f"x{'' if col == 1 else col}",
                yaxis=f"y{'' if col == 1 else col}",
            )
        )
    return out


def _add_play_controls(fig, idx: list, t: np.ndarray) -> None:
    """A time slider over the frames ``idx`` (labelled with ``t``) and play / pause buttons."""
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
        sliders=[slider_spec(steps_, "t = ", 0, x=0.3, length=0.7)],
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


def velocity_bound_figure(times, stats: dict, bound=None, bound_label: str = "bound"):
    """Largest learned speed ``max ||u_theta(x, t)||`` along the sampling trajectories, per model.

    Plotted against the Kac bound.  ``stats[name] = (max_values, q99_values)``.
    """
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, (mx, q99) in stats.items():
        col = series_color(name)
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
                line=dict(color=series_color(name), width=2.5),
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
