"""Figures of chapter 3 (guidance).

Figures of chapter 3 (guidance): the guided field against its bound, the guided speed ratio
against the triangle-inequality bound, and sample quality and class accuracy against ``w``.
"""

from __future__ import annotations

import numpy as np

from .common import COLORS, style, time_slider_figure, to_float32

__all__ = [
    "guided_field_figure",
    "guidance_ratio_figure",
    "metric_vs_w_figure",
]


def guided_field_figure(
    x, v_u, v_c, v_w: dict, bounds: dict, title: str, active: int | None = None, class_label: str = "y"
):
    """The guided field along a line of states, one slider position per ``w``.

    The guided field ``v_w = v_u + w (v_c - v_u)`` along a line of states, one slider position per
    ``w`` (keys of ``v_w``), with the band ``|v| <= bounds[w]``.  Arrays are 1D over ``x``.
    """
    import plotly.graph_objects as go

    ws = list(v_w)
    xs = to_float32(x)
    frames = []
    for w in ws:
        b = float(bounds[w])
        frames.append(
            [
                go.Scatter(
                    x=xs,
                    y=to_float32(v_u),
                    mode="lines",
                    line=dict(color="#888", width=2),
                    name="unconditional v(x, t)",
                ),
                go.Scatter(
                    x=xs,
                    y=to_float32(v_c),
                    mode="lines",
                    line=dict(color=COLORS["kac"], width=2),
                    name=f"conditional v(x, t; {class_label})",
                ),
                go.Scatter(
                    x=xs,
                    y=to_float32(v_w[w]),
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
    """``max |v_w| / B`` against ``w`` for several fields, beside its bound.

    ``max |v_w| / B`` against ``w`` for several fields (``ratios[name]`` aligned with ``ws``) beside
    the bound ``|1 - w| + |w|`` (``B``: the per-coordinate bound of the unguided fields).
    """
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
    _mark_weights(fig, paper_w, best_w)
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


def _mark_weights(fig, paper_w: float | None, best_w: float | None) -> None:
    """Dotted vertical lines, annotated, at the paper's optimal weight and at the best one here."""
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
