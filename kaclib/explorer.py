"""A training-free explorer: sliders that move generation itself (issue 12, section 4).

For a small labelled 2D point set ``{x_i}`` (uniform weights) the Kac path
``x_t = f(t) x0 + K_{g(t)}`` (one Kac process per coordinate, :class:`kaclib.paths.KacPath`) has an
exact marginal velocity, the posterior average of the conditional targets::

    u(x, t) = sum_i p_t(x | x_i) u_t(x | x_i) / sum_i p_t(x | x_i),
    p_t(x | x_i) = prod_k p(x_k - f(t) x_ik, g(t)),     u_t(x | x_i) = f'(t) x_i + g'(t) v(x - f(t) x_i, g(t)),

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

import functools
import math
from dataclasses import dataclass

import torch

from .guidance import check_guidance_weight
from .paths import KacPath

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

F64 = torch.float64
_FRONT_TOL = 1e-12  # relative: |x| within cs (1 +- tol) counts as on the front


@dataclass(frozen=True)
class PointSet:
    """A small 2D data set: ``x`` ``(n, 2)`` float64 points and optional integer ``labels`` ``(n,)``."""

    x: torch.Tensor
    labels: torch.Tensor | None = None

    def __post_init__(self):
        x = torch.as_tensor(self.x, dtype=F64)
        if x.ndim != 2 or x.shape[1] != 2 or x.shape[0] < 1:
            raise ValueError(f"points must have shape (n, 2) with n >= 1, got {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError("points must be finite")
        object.__setattr__(self, "x", x)
        if self.labels is not None:
            y = torch.as_tensor(self.labels)
            if y.shape != (x.shape[0],) or y.is_floating_point() or (y < 0).any():
                raise ValueError(f"labels must be {x.shape[0]} integers >= 0, got {self.labels!r}")
            if torch.unique(y).numel() != int(y.max()) + 1:
                raise ValueError(
                    f"labels must use every class 0 .. K-1 (each needs a point), got {y.tolist()}"
                )
            object.__setattr__(self, "labels", y.long())

    @property
    def num_classes(self) -> int:
        return 0 if self.labels is None else int(self.labels.max()) + 1


def default_points() -> PointSet:
    """Eight points in ``[-1, 1]^2`` in two classes: class 0 on a left arc, class 1 on a right arc."""
    ang = torch.tensor([0.6, 1.4, 2.2, 3.0], dtype=F64)
    left = torch.stack([-0.35 - 0.55 * torch.sin(ang / 1.2), 0.8 * torch.cos(ang / 1.2)], 1)
    right = torch.stack([-left[:, 0], -left[:, 1]], 1)
    return PointSet(torch.cat([left, right]), torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]))


def explorer_path(c: float, xi: float, g: str = "t", f: str = "linear", T: float = 1.0) -> KacPath:
    """The Kac path of the sliders: speed ``c``, damping ``xi = 2a`` (so ``a = xi/2``), clock ``g``."""
    if not float(xi) > 0:
        raise ValueError(f"xi must be > 0, got {xi!r}")
    return KacPath(a=float(xi) / 2, c=c, f=f, g=g, T=T)


# =============================================================================== the exact field


@dataclass(frozen=True)
class _Terms:
    """What every weighting of the points shares at states ``x`` and time ``t``: per point and
    coordinate whether ``x`` is on the front (``on``) or beyond it (``out``) and the excess over it;
    per point the product of densities / atom masses (``factor``, ``(m, n)``) and the conditional
    targets ``u`` ``(m, n, 2)``."""

    on: torch.Tensor
    out: torch.Tensor
    excess: torch.Tensor
    factor: torch.Tensor
    u: torch.Tensor


def _terms(path: KacPath, points: PointSet, x: torch.Tensor, t: float) -> _Terms:
    t = float(t)
    if not 0 < t <= path.T:
        raise ValueError(f"t must lie in (0, T] = (0, {path.T}], got {t!r}")
    tt = torch.tensor(t, dtype=F64)
    s = float(path.g(tt))
    proc = path.process
    rel = torch.as_tensor(x, dtype=F64)[:, None, :] - float(path.f(tt)) * points.x[None]  # (m, n, 2)
    front, ab, st = proc.c * s, rel.abs(), torch.full_like(rel, s)
    on = (ab >= front * (1 - _FRONT_TOL)) & (ab <= front * (1 + _FRONT_TOL))
    out = ab > front * (1 + _FRONT_TOL)
    atom = math.exp(-proc.a * s) / 2
    factor = torch.where(on, torch.full_like(rel, atom), proc.density(rel, st)).prod(-1)
    u = float(path.df(tt)) * points.x[None] + float(path.dg(tt)) * proc.velocity(rel, st)
    return _Terms(on=on, out=out, excess=(ab - front).clamp(min=0).sum(-1), factor=factor, u=u)


def _posterior(terms: _Terms, mask: torch.Tensor | None = None):
    """Posterior weights ``(m, n)`` of the admissible points (``mask``; all by default) and the
    ``(m,)`` flags of the states outside every admissible support (see the module docstring)."""
    allowed = torch.ones_like(terms.factor, dtype=torch.bool) if mask is None else mask
    valid = ~terms.out.any(-1) & allowed
    k = torch.where(valid, terms.on.sum(-1), torch.full_like(terms.factor, -1, dtype=torch.long))
    w = torch.where(
        valid & (k == k.max(1, keepdim=True).values), terms.factor, torch.zeros_like(terms.factor)
    )
    lost = ~(w.sum(1) > 0)
    if bool(lost.any()):  # outside every support: the nearest admissible boxes
        excess = torch.where(allowed, terms.excess, torch.full_like(terms.excess, math.inf))
        near = excess <= excess.min(1, keepdim=True).values * (1 + 1e-9) + 1e-300
        w = torch.where(lost[:, None], near.to(w.dtype), w)
    return w, lost


def _average(terms: _Terms, w: torch.Tensor) -> torch.Tensor:
    return (w[..., None] * terms.u).sum(1) / w.sum(1, keepdim=True)


def marginal_velocity(
    path: KacPath,
    points: PointSet,
    x: torch.Tensor,
    t: float,
    mask: torch.Tensor | None = None,
    return_lost: bool = False,
):
    """The exact marginal velocity ``u(x, t)`` of the point set at states ``x`` ``(m, 2)``.

    Parameters
    ----------
    path : KacPath
        The path ``x_t = f x0 + K_{g(t)}``.
    points : PointSet
        The data; uniform weights.
    x : tensor (m, 2)
        States.
    t : float
        Time in ``(0, T]`` (at ``t = 0`` the law is the data itself and the field is undefined).
    mask : bool tensor (m, n), optional
        Which points each state averages over (the class-conditional field); all by default.
    return_lost : bool
        Also return the ``(m,)`` flags of the states outside every admissible support.

    Returns
    -------
    tensor (m, 2), float64 (and the flags if ``return_lost``)
    """
    terms = _terms(path, points, x, t)
    w, lost = _posterior(terms, mask)
    field = _average(terms, w)
    return (field, lost) if return_lost else field


def guided_velocity(
    path: KacPath,
    points: PointSet,
    x: torch.Tensor,
    t: float,
    w: float = 0.0,
    y: torch.Tensor | None = None,
    return_lost: bool = False,
):
    """``v_w = v_u + w (v_c - v_u)``: ``v_u`` the field of all points, ``v_c`` that of the points of
    class ``y[j]`` for state ``j`` (``y`` ``(m,)``; needed unless ``w = 0``).  The densities and
    conditional targets are computed once for both fields."""
    w = check_guidance_weight(w)
    terms = _terms(path, points, x, t)
    if w == 0:
        w_u, lost = _posterior(terms)
        v = _average(terms, w_u)
        return (v, lost) if return_lost else v
    if points.labels is None or y is None:
        raise ValueError("guidance (w != 0) needs labelled points and classes y")
    mask = points.labels[None, :] == torch.as_tensor(y).long()[:, None]
    w_c, lost = _posterior(terms, mask)
    v = _average(terms, w_c)
    if w != 1:
        w_u, lost_u = _posterior(terms)
        v_u = _average(terms, w_u)
        v, lost = v_u + w * (v - v_u), lost | lost_u
    return (v, lost) if return_lost else v


def euler_trajectories(
    path: KacPath,
    points: PointSet,
    latents: torch.Tensor,
    steps: int,
    w: float = 0.0,
    y: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Euler from ``t = T`` to 0 on ``steps`` uniform steps, ``x <- x - h v_w(x, t)``.

    Returns ``(trajectory (steps + 1, m, 2), times (steps + 1,), outside_fraction)``: the states
    after each step, their times ``T, T - h, ..., 0``, and the fraction of field evaluations made
    outside every support (see the module docstring).
    """
    steps = int(steps)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    x = torch.as_tensor(latents, dtype=F64)
    h = path.T / steps
    traj, lost_count = [x], 0
    for k in range(steps):
        v, lost = guided_velocity(path, points, x, path.T - k * h, w, y, return_lost=True)
        lost_count += int(lost.sum())
        x = x - h * v
        traj.append(x)
    times = torch.tensor([path.T - k * h for k in range(steps)] + [0.0], dtype=F64)
    return torch.stack(traj), times, lost_count / (steps * x.shape[0])


# =============================================================================== one exploration


@dataclass(frozen=True)
class ExplorerResult:
    """One run of the explorer.

    ``trajectory`` ``(steps + 1, n, 2)`` from the latents (index 0, ``t = T``) to the end points
    (index ``steps``, ``t = 0``); ``times``; ``fine_end`` the end points of ``fine_steps`` Euler steps
    from the same latents; ``few_step_error`` the mean Euclidean distance between the two end points;
    ``outside_fraction`` the share of field evaluations outside every support; ``classes`` the
    particles' classes (guidance targets); ``points``; ``config`` the slider values.
    """

    trajectory: torch.Tensor
    times: torch.Tensor
    fine_end: torch.Tensor
    few_step_error: float
    outside_fraction: float
    classes: torch.Tensor | None
    points: PointSet
    config: dict

    @property
    def end(self) -> torch.Tensor:
        return self.trajectory[-1]


def _latents(path: KacPath, n: int, seed: int) -> torch.Tensor:
    return path.sample_latent((int(n), 2), generator=torch.Generator().manual_seed(int(seed)), dtype=F64)


def _classes(points: PointSet, n: int) -> torch.Tensor | None:
    return None if points.labels is None else torch.arange(int(n)) % points.num_classes


@functools.lru_cache(maxsize=64)
def _fine_end_cached(
    c, xi, g, f, T, w, n, seed, fine_steps, pts: tuple, labels: tuple | None
) -> torch.Tensor:
    points = PointSet(torch.tensor(pts, dtype=F64), None if labels is None else torch.tensor(labels))
    path = explorer_path(c, xi, g, f, T)
    traj, _, _ = euler_trajectories(path, points, _latents(path, n, seed), fine_steps, w, _classes(points, n))
    return traj[-1]


def explore(
    c: float = 2.0,
    xi: float = 8.0,
    g: str = "t",
    steps: int = 4,
    w: float = 0.0,
    points: PointSet | None = None,
    n: int = 200,
    seed: int = 0,
    fine_steps: int = 256,
    f: str = "linear",
    T: float = 1.0,
) -> ExplorerResult:
    """Integrate the exact (guided) field of ``points`` from ``n`` Kac latents with ``steps`` Euler
    steps, and the same latents with ``fine_steps`` steps (cached per parameter set, so moving only
    the steps slider costs the few-step run alone).  Plain function: the live sliders call it."""
    points = points if points is not None else default_points()
    path = explorer_path(c, xi, g, f, T)
    w = check_guidance_weight(w)
    classes = _classes(points, n)
    if w != 0 and classes is None:
        raise ValueError("guidance (w != 0) needs labelled points")
    traj, times, outside = euler_trajectories(path, points, _latents(path, n, seed), steps, w, classes)
    labels = None if points.labels is None else tuple(points.labels.tolist())
    fine = _fine_end_cached(
        float(c),
        float(xi),
        g,
        f,
        float(T),
        w,
        int(n),
        int(seed),
        int(fine_steps),
        tuple(map(tuple, points.x.tolist())),
        labels,
    ).clone()
    err = float(torch.linalg.vector_norm(traj[-1] - fine, dim=1).mean())
    config = {
        "c": float(c),
        "xi": float(xi),
        "a": float(xi) / 2,
        "g": g,
        "f": f,
        "T": float(T),
        "steps": int(steps),
        "w": w,
        "n": int(n),
        "seed": int(seed),
        "fine_steps": int(fine_steps),
    }
    return ExplorerResult(
        trajectory=traj,
        times=times,
        fine_end=fine,
        few_step_error=err,
        outside_fraction=outside,
        classes=classes,
        points=points,
        config=config,
    )


@dataclass(frozen=True)
class FewStepErrors:
    """Few-step errors over a grid: ``errors[i, j, k]`` (and ``outside[i, j, k]``) for ``cs[i]``,
    ``xis[j]`` and ``steps[k]``, with the clock ``g`` and weight ``w`` of ``config``."""

    cs: tuple
    xis: tuple
    steps: tuple
    errors: torch.Tensor
    outside: torch.Tensor
    config: dict


def few_step_errors(
    cs=(1.0, 2.0, 3.0),
    xis=(2.0, 8.0, 32.0),
    steps=(1, 2, 4, 8),
    g: str = "t",
    w: float = 0.0,
    points: PointSet | None = None,
    n: int = 150,
    seed: int = 0,
    fine_steps: int = 256,
) -> FewStepErrors:
    """:func:`explore`'s few-step error for every ``(c, xi, steps)`` of a grid (one fine run per
    ``(c, xi)``, shared by the step counts)."""
    errors = torch.zeros(len(cs), len(xis), len(steps), dtype=F64)
    outside = torch.zeros_like(errors)
    for i, c in enumerate(cs):
        for j, xi in enumerate(xis):
            for k, S in enumerate(steps):
                r = explore(c, xi, g, int(S), w, points, n, seed, fine_steps)
                errors[i, j, k], outside[i, j, k] = r.few_step_error, r.outside_fraction
    config = {"g": g, "w": float(w), "n": int(n), "seed": int(seed), "fine_steps": int(fine_steps)}
    return FewStepErrors(
        tuple(map(float, cs)), tuple(map(float, xis)), tuple(map(int, steps)), errors, outside, config
    )


# =============================================================================== figures

_CLASS_COLORS = ["#1f5fa8", "#c0392b", "#2a9d3f", "#8e44ad", "#e07b00"]


def _lines(traj: torch.Tensor, k: int):
    """x and y of the first ``k`` trajectories as one polyline with ``None`` separators."""
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
    """Trajectories, end points (coloured by class) and the fine solution's end points from the same
    latents, with the data points: the live sliders' callback (``explore`` + ``explorer_traces``)."""
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
    """Static sliders over a precomputed grid: slider 1 over the ``(c, xi)`` pairs, slider 2 over the
    number of Euler steps (:func:`kaclib.plots.two_slider_figure`).  The data points are static."""
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
    """Live sliders (JupyterLab) for ``c``, ``xi``, ``g``, the steps and ``w`` whose callback is
    :func:`explorer_figure` (:func:`kaclib.live.slider_widget`; ``None`` in the book build)."""
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
