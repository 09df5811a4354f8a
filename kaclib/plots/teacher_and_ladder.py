"""Figures of chapters 4 to 6 (the teacher and the distillation ladder).

Figures of chapters 4 to 6 (the teacher and the distillation ladder): quality against cost, the
ladder diagram, grouped ratio bars, sampling time, training curves and labelled scatter plots.

Every builder returns a figure built from what the chapter computed; nothing here trains or
samples a model.
"""

from __future__ import annotations

import numpy as np

from .common import COLORS, style

__all__ = [
    "quality_vs_nfe_figure",
    "ladder_diagram_figure",
    "ratio_bars_figure",
    "timing_figure",
    "training_log_figure",
    "labelled_scatter_figure",
]


def quality_vs_nfe_figure(
    series: dict,
    metric: str,
    floor: float | None = None,
    title: str | None = None,
    x_title: str = "network passes per sample (NFE)",
    paper: dict | None = None,
):
    """Sample quality against cost, log-log.

    Sample quality against cost, log-log: ``series[name] = (costs, values)`` or ``(costs, values,
    labels)`` (labels show on hover, e.g. the step counts).
    """
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


def ladder_diagram_figure(stages: list, teacher_steps: int, single_stage: tuple | None = None):
    """The ladder as a picture.

    The ladder as a picture.  Top: the chain teacher -> students (``stages`` is a list of
    ``(student_steps, substeps)``); bottom: one stage on the time axis, the teacher's ``N`` substeps
    between two student grid points and the student's single step, matched only at the end point.
    """
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
    _draw_ladder_chain(fig, stages, teacher_steps, single_stage)
    _draw_one_stage(fig, substeps=stages[0][1])
    return style(fig, "Endpoint-only distillation", None, None, height=640, legend="bottom")


def _draw_ladder_chain(fig, stages: list, teacher_steps: int, single_stage: tuple | None) -> None:
    """Top panel of :func:`ladder_diagram_figure`: teacher -> students, one box per stage."""
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


def _draw_one_stage(fig, substeps: int) -> None:
    """Bottom panel of :func:`ladder_diagram_figure`: one student step against the teacher's substeps."""
    import plotly.graph_objects as go

    # bottom panel: a sketch of one student step from t_k to t_{k+1} = t_k - T/M against the frozen
    # teacher's N substeps (not to scale: the interval is stretched so the substeps are visible)
    n = substeps
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
    """Logged training curves, log y axis.

    Logged training curves: ``logs[name] = (steps, values)`` (e.g. the ``loss`` records of a run's
    ``metrics.jsonl``, each a mean over the steps since the previous record), log y axis.
    """
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
