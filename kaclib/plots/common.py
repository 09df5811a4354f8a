"""Shared look and display of the book's figures.

Colours, :func:`style`, :func:`show` and :func:`to_html`, the static slider builders and the HTML
tables.

Figures of The Kac Flow Book, and how they are displayed.

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

import os
import uuid

import numpy as np
import torch

__all__ = [
    "COLORS",
    "series_color",
    "show_source",
    "in_book_build",
    "style",
    "to_html",
    "show",
    "to_float32",
    "slider_spec",
    "time_slider_figure",
    "two_slider_figure",
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


def series_color(name: str, default: str | None = None) -> str | None:
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
    """Break a long title once so that it clears the modebar.

    The break is at ': ' if possible, else at a space; returns the title and the number of extra
    lines.
    """
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
    """Shared look: white template, readable fonts, axis titles, and a vertical layout.

    The vertical layout is computed in pixels so that title, legend, plot, axis title and sliders
    never overlap.

    Parameters
    ----------
    height : int
        The figure's height in pixels, not counting the room added below for sliders (about 100 px).
    legend : str
        ``"top"`` (a horizontal legend between the title and the plot, the default), ``"bottom"``
        (below the x-axis title) or ``"none"``.
    legend_below : bool
        ``True`` is the same as ``legend="bottom"``.
    """
    if legend_below:
        legend = "bottom"
    if legend not in ("top", "bottom", "none"):
        raise ValueError(f"legend must be 'top', 'bottom' or 'none', got {legend!r}")
    has_slider = bool(fig.layout.sliders)
    title, extra_lines = _wrap_title(title)
    rows = _legend_rows(fig) if legend in ("top", "bottom") else 0
    legend_h = 24 * rows + (6 if rows else 0)
    top = (56 if title else 16) + 22 * extra_lines + (legend_h if legend == "top" else 0)
    axis_h = 64 if x is not None or any(ax.title.text for ax in fig.select_xaxes()) else 40
    bottom = axis_h + (legend_h if legend == "bottom" else 0)
    plot_h = max(height - top - bottom, 160)
    bottom += 100 if has_slider else 0
    total = plot_h + top + bottom
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
        margin=dict(l=72, r=30, t=top, b=bottom),
        hoverlabel=dict(font_size=13),
        showlegend=bool(rows),
    )
    if rows:
        _place_legend(fig, legend, plot_h, axis_h)
    if has_slider:
        _place_sliders(fig, -(axis_h + (legend_h if legend == "bottom" else 0)) / plot_h)
    _label_axes(fig, x, y)
    return fig


def _place_legend(fig, legend: str, plot_h: int, axis_h: int) -> None:
    """A horizontal legend just above the plot (``"top"``) or below the x-axis title (``"bottom"``).

    Positions in plot heights, from pixels.
    """
    if legend == "top":
        fig.update_layout(
            legend=dict(
                orientation="h", x=0, xanchor="left", y=1 + 6 / plot_h, yanchor="bottom", font=dict(size=13)
            )
        )
    elif legend == "bottom":
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


def _place_sliders(fig, slider_y: float) -> None:
    """Every slider and button menu anchored at ``slider_y`` (in plot heights, below the axis)."""
    for slider in fig.layout.sliders:
        slider.y, slider.yanchor, slider.pad = slider_y, "top", dict(t=34, b=0)
    for menu in fig.layout.updatemenus or ():
        menu.y, menu.yanchor, menu.pad = slider_y, "top", dict(t=40, r=10)


def _label_axes(fig, x: str | None, y: str | None) -> None:
    """Axis titles (``y`` on the primary axis only with a secondary one) and the shared axis lines."""
    if x is not None:
        fig.update_xaxes(title_text=x)
    if y is not None:
        if _has_secondary(fig):
            fig.update_layout(yaxis_title_text=y)
        else:
            fig.update_yaxes(title_text=y)
    fig.update_xaxes(showline=True, linecolor="#888", mirror=False, ticks="outside", zeroline=False)
    fig.update_yaxes(showline=True, linecolor="#888", ticks="outside", zeroline=False)


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


def to_float32(a) -> np.ndarray:
    """``a`` (tensor, array or sequence) as a float32 NumPy array (tensors detached, on the CPU)."""
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float32)


def slider_spec(steps, prefix: str, active: int = 0, y: float = -0.16, x: float = 0.0, length: float = 1.0):
    """A plotly slider (a dict) over ``steps``, its current value shown after ``prefix``."""
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
    fig.update_layout(sliders=[slider_spec(steps, prefix, active)])
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
    """Two sliders over a grid of cells, each cell a list of traces.

    ``cells[i * n2 + j]`` shows when slider 1 is on ``labels1[i]`` and slider 2 on ``labels2[j]``,
    with title ``titles[i * n2 + j]`` and the layout changes ``cell_layouts[i * n2 + j]`` (e.g.
    ``{"yaxis.range": [0, 2]}``).

    Each slider's steps restyle the visibility for the other slider at its *initial* position (so
    plain plotly, e.g. JupyterLab, moves one parameter at a time); in the book a small script
    (:data:`_GRID_SCRIPT`) re-applies the visibility of the combined position after every move.
    """
    n1, n2 = shape
    traces_per_cell = _check_grid(cells, shape, labels1, labels2, titles)
    n_static = len(static_traces)
    a1, a2 = active
    fig = _grid_figure(cells, static_traces, a1 * n2 + a2)
    layouts = [
        dict((cell_layouts or [{}] * len(cells))[k], **{"title.text": titles[k]}) for k in range(len(cells))
    ]

    def step(label, cell):
        visible = [True] * n_static + [k // traces_per_cell == cell for k in range(n1 * n2 * traces_per_cell)]
        return dict(method="update", label=label, args=[{"visible": visible}, layouts[cell]])

    steps1 = [step(labels1[i], i * n2 + a2) for i in range(n1)]
    steps2 = [step(labels2[j], a1 * n2 + j) for j in range(n2)]
    fig.update_layout(
        sliders=[
            slider_spec(steps1, prefix1, a1, x=0.0, length=0.47),
            slider_spec(steps2, prefix2, a2, x=0.53, length=0.47),
        ],
        meta={
            "kaclib_grid": {
                "n1": n1,
                "n2": n2,
                "per_cell": traces_per_cell,
                "n_static": n_static,
                "layouts": layouts,
            }
        },
        title=dict(text=titles[a1 * n2 + a2]),
    )
    for key, value in layouts[a1 * n2 + a2].items():
        if key != "title.text":
            fig.update_layout(**{key.replace(".", "_"): value})
    return fig


def _check_grid(cells: list[list], shape: tuple[int, int], labels1, labels2, titles) -> int:
    """Check the cells, labels and titles of :func:`two_slider_figure` against the grid ``shape``.

    Also checks that every cell has as many traces; returns that number.
    """
    n1, n2 = shape
    if len(cells) != n1 * n2 or len(labels1) != n1 or len(labels2) != n2 or len(titles) != n1 * n2:
        raise ValueError("cells, labels and titles must match the grid shape")
    traces_per_cell = len(cells[0])
    if any(len(c) != traces_per_cell for c in cells):
        raise ValueError("every cell needs the same number of traces")
    return traces_per_cell


def _grid_figure(cells: list[list], static_traces, visible_cell: int):
    """A figure with the static traces, then every cell's traces (only ``visible_cell``'s shown)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for tr in static_traces:
        fig.add_trace(tr)
    for k, cell in enumerate(cells):
        for tr in cell:
            tr.visible = k == visible_cell
            fig.add_trace(tr)
    return fig


# =============================================================================== tables


def html_table(header: list[str], rows: list[list], caption: str | None = None) -> str:
    """A small HTML table (cells escaped; numbers formatted by the caller)."""
    import html as _html

    head = "".join(f"<th>{_html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_html.escape(str(v))}</td>" for v in r) + "</tr>" for r in rows)
    cap = f"<caption style='caption-side:top'>{_html.escape(caption)}</caption>" if caption else ""
    return (
        "<div style='overflow-x:auto'><table class='table' style='font-size:0.9em'>"
        f"{cap}<thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table></div>"
    )


def show_source(*objects) -> None:
    """Display the source code of library objects (functions, methods, classes).

    Each is shown under its qualified name: a chapter shows the code that teaches without copying
    it.
    """
    import inspect

    from IPython.display import Markdown, display

    for obj in objects:
        display(Markdown(f"`{obj.__module__}.{obj.__qualname__}`\n\n```python\n{inspect.getsource(obj)}```"))


def show_table(header: list[str], rows: list[list], caption: str | None = None) -> None:
    """Display :func:`html_table` (with a plain-text fallback)."""
    from IPython.display import display

    text = "\n".join(["\t".join(map(str, header))] + ["\t".join(map(str, r)) for r in rows])
    display({"text/html": html_table(header, rows, caption), "text/plain": text}, raw=True)
