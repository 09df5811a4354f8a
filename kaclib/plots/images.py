"""Image grids (chapters 3 to 6).

Tiling ``(N, C, H, W)`` images into one array, a grid figure and a static slider over several grids
(e.g. one per guidance weight or per distillation stage).
"""

from __future__ import annotations

import math

import numpy as np

from .common import slider_spec, style, to_float32

__all__ = [
    "image_tile",
    "image_grid_figure",
    "image_grid_slider_figure",
]


def image_tile(images, ncol: int, pad: int = 1, pad_value: float = -0.55) -> np.ndarray:
    """``(N, C, H, W)`` images in ``[-1, 1]`` tiled row by row into one array.

    The array is ``(C, rows*(H+pad)+pad, ncol*(W+pad)+pad)``; missing cells and the padding get
    ``pad_value``.
    """
    x = to_float32(images)
    if x.ndim != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got {x.shape}")
    if not isinstance(ncol, int) or ncol < 1:
        raise ValueError(f"ncol must be a positive int, got {ncol!r}")
    n, ch, h, w = x.shape
    rows = max(1, math.ceil(n / ncol))
    out = np.full((ch, rows * (h + pad) + pad, ncol * (w + pad) + pad), pad_value, dtype=np.float32)
    for k in range(n):
        row, column = divmod(k, ncol)
        out[
            :,
            pad + row * (h + pad) : pad + row * (h + pad) + h,
            pad + column * (w + pad) : pad + column * (w + pad) + w,
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
    _image_axes(fig, row_labels, to_float32(images).shape[2])  # after style: no axis lines on an image
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
    """Static slider over several image grids: ``image_sets[k]`` shows at ``labels[k]``.

    For example samples per class for each guidance weight, or one grid per distillation stage for
    the same latents.

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
    fig.update_layout(sliders=[slider_spec(steps, prefix, active, y=-0.02)])
    style(fig, titles[active], None, None, height=_grid_height(tiles[0].shape), legend="none")
    _image_axes(fig, row_labels, to_float32(image_sets[0]).shape[2])  # after style: no axis lines on an image
    return fig
