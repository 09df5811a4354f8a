"""The computation behind the explorer of :mod:`kaclib.explorer`.

The exact marginal and guided velocities of a small labelled 2D point set on a Kac path, their Euler
trajectories from Kac latents, and the few-step errors against a fine solution (the model is
described in :mod:`kaclib.explorer`).
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
    "explorer_path",
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
        """Number of classes, ``max(labels) + 1``; 0 without labels."""
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
    """What every weighting of the points shares at states ``x`` and time ``t``.

    Per point and coordinate: whether ``x`` is on the front (``on``) or beyond it (``out``) and the
    excess over it; per point: the product of densities / atom masses (``factor``, ``(m, n)``) and
    the conditional targets ``u`` ``(m, n, 2)``.
    """

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
    """Posterior weights ``(m, n)`` of the admissible points, and the flags of the lost states.

    The admissible points are those of ``mask`` (all by default); the ``(m,)`` flags mark the states
    outside every admissible support (see the module docstring).
    """
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
    """The guided field ``v_w = v_u + w (v_c - v_u)`` at states ``x`` and time ``t``.

    ``v_u`` is the field of all points, ``v_c`` that of the points of class ``y[j]`` for state ``j``
    (``y`` ``(m,)``; needed unless ``w = 0``).  The densities and conditional targets are computed
    once for both fields.
    """
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
        """The end points, ``trajectory[-1]`` (``t = 0``)."""
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
    """Integrate the exact (guided) field from ``n`` Kac latents with ``steps`` Euler steps.

    The field is that of ``points``; the same latents are also integrated with ``fine_steps`` steps
    (cached per parameter set, so moving only the steps slider costs the few-step run alone).  Plain
    function: the live sliders call it.
    """
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
    """Few-step errors over a grid of ``(c, xi, steps)``.

    ``errors[i, j, k]`` (and ``outside[i, j, k]``) for ``cs[i]``, ``xis[j]`` and ``steps[k]``, with
    the clock ``g`` and weight ``w`` of ``config``.
    """

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
    """:func:`explore`'s few-step error for every ``(c, xi, steps)`` of a grid.

    One fine run per ``(c, xi)``, shared by the step counts.
    """
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
