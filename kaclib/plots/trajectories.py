"""Figures of chapter 7's first study: end points against whole trajectories.

:func:`deviation_figure` draws a live :class:`kaclib.trajectory_checks.DeviationStudy`,
:func:`scatter_panels_figure` the scatter itself, whatever holds the points (a live study or a
committed benchmark).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["deviation_figure", "scatter_panels_figure"]


def deviation_figure(studies: dict, title: str | None = None, max_points: int = 400):
    """Scatter of the per-sample largest end-point error (x) against the largest interior deviation (y).

    One colour per stage, one panel per study (e.g. ``{"Kac": study, "Gaussian": study}``), log axes,
    with the diagonal ``y = x``.  ``max_points`` per stage (the first ones) keep the page light.
    """
    if not isinstance(studies, dict) or not studies:
        raise ValueError("studies must be a non-empty {panel name: DeviationStudy} dict")
    panels = {
        name: [
            (s.spec.student_steps,
             f"{s.spec.teacher_steps} -> {s.spec.student_steps} steps (Delta = {s.deviation.delta:.3g})",
             s.deviation.sup_endpoint[:max_points], s.deviation.sup_interior[:max_points])
            for s in st.stages
        ]
        for name, st in studies.items()
    }  # fmt: skip
    return scatter_panels_figure(
        panels, title, "largest end-point error ||x - Delta u - Phi_N||", opacity=0.6
    )


def scatter_panels_figure(panels: dict, title: str | None, x_title: str, opacity: float = 0.6):
    """The end-point / interior-deviation scatter itself, whatever holds the points.

    The points come from a live :class:`~kaclib.trajectory_checks.DeviationStudy` or a committed
    benchmark: ``panels`` maps a panel title to its stages
    ``[(student_steps, trace name, end-point errors, interior deviations), ...]``; one colour per
    student step count (shared across panels), log axes, the diagonal ``interior = end point``.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from .common import style

    palette = ["#1f5fa8", "#e07b00", "#2a9d3f", "#c0392b", "#8e44ad", "#555555", "#17becf"]
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=list(panels), horizontal_spacing=0.1)
    steps = sorted({k for stages in panels.values() for k, *_ in stages}, reverse=True)
    for col, stages in enumerate(panels.values(), start=1):
        lo, hi = math.inf, 0.0
        for k, name, xe, yi in stages:
            xe, yi = np.asarray(xe), np.asarray(yi)
            ok = (xe > 0) & (yi > 0) & np.isfinite(yi)
            if ok.any():
                lo, hi = min(lo, xe[ok].min(), yi[ok].min()), max(hi, xe[ok].max(), yi[ok].max())
            fig.add_trace(
                go.Scatter(
                    x=xe[ok].astype(np.float32),
                    y=yi[ok].astype(np.float32),
                    mode="markers",
                    marker=dict(color=palette[steps.index(k) % len(palette)], size=5, opacity=opacity),
                    legendgroup=str(k),
                    showlegend=col == 1,
                    name=name,
                    hovertemplate="end point %{x:.3g}<br>interior %{y:.3g}<extra></extra>",
                ),
                row=1,
                col=col,
            )
        if hi > 0:
            fig.add_trace(
                go.Scatter(
                    x=[lo, hi],
                    y=[lo, hi],
                    mode="lines",
                    line=dict(color="#111", dash="dot", width=1),
                    name="interior = end point",
                    legendgroup="diag",
                    showlegend=col == 1,
                    hoverinfo="skip",
                ),
                row=1,
                col=col,
            )
    fig.update_xaxes(type="log", title_text=x_title)
    fig.update_yaxes(type="log")
    fig.update_yaxes(title_text="largest interior deviation", row=1, col=1)
    return style(fig, title=title or "End points against whole trajectories, per stage", height=480)
