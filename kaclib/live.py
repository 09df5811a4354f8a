"""Live controls of the book (ipywidgets in JupyterLab / VS Code) and the plain callbacks they run.

Every chapter with parameters has at least one live control.  The control only wires sliders to a
plain function that takes the slider values and returns a figure; the unit tests call the same
functions (``tests/test_live.py``).  The callbacks are cheap: they sample a trained model for a
few dozen images or evaluate closed forms, never train.

==========================  ===========  ===============================================
callback                    chapter      slider(s)
==========================  ===========  ===============================================
``plots.kac_law_single_figure``  1       speed ``c``, damping ``xi``, time ``s``
``toy_steps_figure``        2            Euler steps of the 2D toy models
``teacher_samples_figure``  3, 4         guidance weight ``w`` (3), sampling steps (4)
``ladder_samples_figure``   5            student steps (teacher beside, same latents)
``cost_hours_figure``       6            assumed sustained TFLOP/s and number of GPUs
==========================  ===========  ===============================================

:func:`slider_widget` builds the control.  In the static book (``KACLIB_BOOK_BUILD=1``) it prints
a note and returns ``None``: a widget needs a kernel, and the static plotly sliders serve the page.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import plots

__all__ = [
    "Range",
    "Choice",
    "slider_widget",
    "toy_steps_figure",
    "teacher_samples_figure",
    "ladder_samples_figure",
    "cost_hours",
    "cost_hours_figure",
]

NOTE = "Live slider: run this notebook in JupyterLab or VS Code (the static sliders above work in the book)."


# =============================================================================== controls


@dataclass(frozen=True)
class Range:
    """A numeric slider from ``lo`` to ``hi`` in steps of ``step``, starting at ``value``.

    Integer bounds and step give an integer slider; ``log=True`` a log-scale slider (base 10).
    """

    lo: float
    hi: float
    step: float
    value: float
    log: bool = False

    def __post_init__(self):
        if not (self.lo < self.hi) or self.step <= 0:
            raise ValueError(f"Range needs lo < hi and step > 0, got {self}")
        if not (self.lo <= self.value <= self.hi):
            raise ValueError(f"Range value {self.value} lies outside [{self.lo}, {self.hi}]")
        if self.log and self.lo <= 0:
            raise ValueError("a log Range needs lo > 0")

    @property
    def is_int(self) -> bool:
        """Whether the slider moves in integers (integer bounds and step, linear scale)."""
        return not self.log and all(float(v).is_integer() for v in (self.lo, self.hi, self.step, self.value))


@dataclass(frozen=True)
class Choice:
    """A slider over a list of ``options`` (e.g. the step counts of the distillation ladder)."""

    options: tuple
    value: object = None

    def __post_init__(self):
        if not self.options:
            raise ValueError("Choice needs at least one option")
        object.__setattr__(self, "options", tuple(self.options))
        if self.value is None:
            object.__setattr__(self, "value", self.options[0])
        if self.value not in self.options:
            raise ValueError(f"Choice value {self.value!r} is not one of {self.options}")


def _make_slider(name: str, spec):
    import ipywidgets as W

    style = {"description_width": "initial"}
    layout = W.Layout(width="360px")
    common = dict(description=name, continuous_update=False, style=style, layout=layout)
    if isinstance(spec, Choice):
        return W.SelectionSlider(options=list(spec.options), value=spec.value, **common)
    if not isinstance(spec, Range):
        raise TypeError(f"control {name!r} must be a Range or a Choice, got {type(spec).__name__}")
    if spec.log:
        return W.FloatLogSlider(
            value=spec.value,
            base=10,
            min=math.log10(spec.lo),
            max=math.log10(spec.hi),
            step=spec.step,
            **common,
        )
    if spec.is_int:
        return W.IntSlider(
            value=int(spec.value), min=int(spec.lo), max=int(spec.hi), step=int(spec.step), **common
        )
    return W.FloatSlider(value=spec.value, min=spec.lo, max=spec.hi, step=spec.step, **common)


def slider_widget(callback, **controls):
    """Live sliders that redraw ``callback(**values) -> figure`` (ipywidgets).

    ``controls``: one :class:`Range` or :class:`Choice` per keyword argument of ``callback``.  The
    figure for the initial values is drawn at once.  Returns the widget box, whose ``update(**values)``
    draws one set of values (for tests), or ``None`` in the static book build (a note is printed).
    """
    if not controls:
        raise ValueError("slider_widget needs at least one control")
    if plots.in_book_build():
        print(NOTE)
        return None
    import ipywidgets as W
    from IPython.display import display

    sliders = {name: _make_slider(name, spec) for name, spec in controls.items()}
    out = W.Output()

    def update(**values):
        with out:
            out.clear_output(wait=True)
            plots.show(callback(**values))

    W.interactive_output(update, sliders)
    box = W.VBox([W.HBox(list(sliders.values())), out])
    box.update = update
    box.sliders = sliders
    display(box)
    return box


# =============================================================================== chapter 2


def toy_steps_figure(models: dict, steps: int, n: int = 400, seed: int = 6, data=None, lim: float = 3.2):
    """Samples of each 2D toy model after ``steps`` Euler steps from the same latents.

    Samples of each 2D toy model after ``steps`` Euler steps from the same latents (one panel per
    model; ``models[name]`` has ``.model`` and ``.path``, e.g. :class:`kaclib.toy.ToyModel`).
    ``data``: optional reference points drawn in grey.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from .solvers import sample

    steps = int(steps)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    names = list(models)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, horizontal_spacing=0.06)
    for col, name in enumerate(names, start=1):
        m = models[name]
        x_T = m.path.sample_latent((n, 2), generator=torch.Generator().manual_seed(seed))
        x = sample(m.model, x_T, steps=steps, method="euler").x
        if data is not None:
            fig.add_trace(
                go.Scattergl(
                    x=plots.to_float32(data[:, 0]),
                    y=plots.to_float32(data[:, 1]),
                    mode="markers",
                    marker=dict(size=3, color=plots.COLORS["data"]),
                    name="data",
                    showlegend=col == 1,
                    hoverinfo="skip",
                ),
                row=1,
                col=col,
            )
        fig.add_trace(
            go.Scattergl(
                x=plots.to_float32(x[:, 0]),
                y=plots.to_float32(x[:, 1]),
                mode="markers",
                marker=dict(size=4, color=plots.series_color(name, plots.COLORS["kac"]), opacity=0.7),
                name=name,
                showlegend=False,
            ),
            row=1,
            col=col,
        )
    fig.update_xaxes(range=[-lim, lim])
    fig.update_yaxes(range=[-lim, lim])
    plots.style(
        fig,
        f"Samples after {steps} Euler step{'s' if steps > 1 else ''} (same latents; grey: data)",
        "x1",
        "x2",
        height=420,
        legend="none",
    )
    for col in range(2, len(names) + 1):
        fig.update_yaxes(title_text=None, row=1, col=col)
    return fig


# =============================================================================== chapters 3 and 4


def _class_rows(num_classes: int, per_class: int) -> torch.Tensor:
    return torch.arange(num_classes).repeat_interleave(per_class)


def teacher_samples_figure(
    model,
    path,
    w: float = 1.0,
    steps: int = 8,
    per_class: int = 6,
    num_classes: int = 10,
    method: str = "ab2",
    seed: int = 1,
):
    """Teacher samples, one row per class, from the same latents whatever ``w`` and ``steps``."""
    from .evaluation import generate

    gen = generate(
        model, path, _class_rows(num_classes, per_class), int(steps), method=method, w=float(w), seed=seed
    )
    return plots.image_grid_figure(
        gen.images.clamp(-1, 1),
        per_class,
        f"Teacher samples: w = {float(w):g}, {int(steps)} {method} steps",
        row_labels=[str(c) for c in range(num_classes)],
    )


# =============================================================================== chapter 5

GAP_VALUE = -0.55  # plots.image_tile's padding value


def ladder_samples_figure(
    teacher,
    path,
    students: dict,
    steps: int,
    per_class: int = 4,
    num_classes: int = 10,
    w: float = 1.0,
    seed: int = 1,
):
    """The ``steps``-step student beside the undistilled teacher at as many AB-2 steps.

    The ``steps``-step student (left half of each row) beside the undistilled teacher at the same
    number of AB-2 steps (right half, after an empty cell), the same latents for both.
    ``students[steps]`` is a model.
    """
    from .evaluation import generate

    steps = int(steps)
    if steps not in students:
        raise ValueError(f"no student with {steps} steps (have {sorted(students)})")
    labels = _class_rows(num_classes, per_class)
    stud = generate(students[steps], path, labels, steps, method="euler", w=1.0, seed=seed).images
    teach = generate(teacher, path, labels, steps, method="ab2", w=float(w), seed=seed).images
    gap = torch.full_like(stud[:1], GAP_VALUE)  # an empty cell between the halves, the colour of the padding
    rows = []
    for c in range(num_classes):
        sl = slice(c * per_class, (c + 1) * per_class)
        rows.append(torch.cat([stud[sl].clamp(-1, 1), gap, teach[sl].clamp(-1, 1)]))
    return plots.image_grid_figure(
        torch.cat(rows),
        2 * per_class + 1,
        f"{steps} step{'s' if steps > 1 else ''}: student (left) and teacher, no distillation (right)",
        row_labels=[str(c) for c in range(num_classes)],
    )


# =============================================================================== chapter 6


def cost_hours(flops: dict, tflops: float, gpus: int = 1) -> dict:
    """Wall-clock hours of each job at an assumed throughput on ``gpus`` GPUs.

    Wall-clock hours of each job (``flops[job]`` floating-point operations) at a sustained
    ``tflops`` TFLOP/s per GPU on ``gpus`` GPUs (perfect scaling assumed).
    """
    if tflops <= 0 or gpus < 1:
        raise ValueError(f"tflops must be > 0 and gpus >= 1, got {tflops}, {gpus}")
    return {job: f / (tflops * 1e12 * gpus) / 3600 for job, f in flops.items()}


def format_hours(h: float) -> str:
    """A duration in hours, written in the unit that reads best (``1.5 h``, ``12 min``, ``3.2 s``)."""
    if h >= 1:
        return f"{h:,.1f} h"
    if h * 60 >= 1:
        return f"{h * 60:.3g} min"
    return f"{h * 3600:.3g} s"


def cost_hours_figure(cost: dict, tflops: float = 50.0, gpus: int = 1):
    """Hours per job (log scale) for each data set: ``cost[dataset][job]`` in FLOPs."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for ds, flops in cost.items():
        hours = cost_hours(flops, tflops, gpus)
        fig.add_trace(
            go.Bar(
                y=list(hours),
                x=list(hours.values()),
                orientation="h",
                name=ds,
                text=[format_hours(h) for h in hours.values()],
                textposition="outside",
                cliponaxis=False,
                hovertemplate="%{y}: %{x:.3g} hours<extra>" + ds + "</extra>",
            )
        )
    fig.update_xaxes(type="log", exponentformat="power")
    fig.update_layout(barmode="group")
    fig.update_yaxes(autorange="reversed")
    return plots.style(
        fig,
        f"Hours at {tflops:g} TFLOP/s sustained on {gpus} GPU{'s' if gpus > 1 else ''} (assumed)",
        "hours (log scale)",
        None,
        height=440,
    )
