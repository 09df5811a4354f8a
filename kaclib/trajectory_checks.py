"""End points and whole trajectories: whether matching end points keeps the student's path close.

A distilled stage (:mod:`kaclib.distill`) trains the student's ONE Euler step over
``[t_{k+1}, t_k]`` (``Delta = T / M``) to land on the teacher's end point after ``N`` substeps of
size ``h = Delta / N``; nothing between the end points is supervised.  For a state ``x = x_{t_k}``
this module compares, at every teacher substep time ``t_k - s_j`` (``s_j = j h``, ``j = 0..N``):

* the student's straight Euler line ``x - s_j u_phi(x, t_k, y)`` and
* the teacher's substep trajectory ``Phi_j`` from the same ``x`` (:func:`kaclib.distill.segment_endpoint`
  with ``return_path=True``: the very integrator, guidance and solver of the stage's target),

as the Euclidean norm over all pixels of one sample: ``d_j = ||x - s_j u_phi - Phi_j||``.  The
**end-point error** is ``d_N`` (what the loss sees); the **interior deviation** is
``max_{0 < j < N} d_j`` (what it does not see).  The states ``x_{t_k}`` are those the teacher's
own sampler visits: its trajectory from shared latents (:func:`kaclib.evaluation.image_latents`),
read every ``N`` teacher steps.

Theorem 8 / Corollary 9 of the paper bound the whole-path distance by the end-point error for
Lipschitz fields.  The exact Kac field is not Lipschitz (it jumps at the front), but it has a
finite speed: both the line and the teacher path move at bounded speed, so their distance inside
one interval is ``O(Delta)`` (a jump at relative position ``theta`` of the interval gives exactly
``|jump| Delta theta (1 - theta)``), while a field that is smooth in time gives ``O(Delta^2)``
(``|a'| Delta^2 / 8`` for ``u = a t``).  :func:`deviation_slope` fits the exponent with a 95% CI.

* :func:`interval_deviation`: one interval, per sample;
* :func:`sampler_states`, :func:`path_deviation`: all intervals of a stage along the sampler's path;
* :func:`deviation_study` (stages given), :func:`stage_deviation_study` (a ladder run directory):
  per-stage summaries, correlations, and the slope of the deviation against ``Delta``;
* :func:`deviation_figure`: the scatter of end-point error against interior deviation.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .distill import StageSpec, TeacherField, segment_endpoint
from .solvers import grid_times, sample
from .stats import _t_quantile, mean_ci

__all__ = [
    "IntervalDeviation",
    "PathDeviation",
    "StageDeviation",
    "SlopeFit",
    "DeviationStudy",
    "interval_deviation",
    "sampler_states",
    "path_deviation",
    "deviation_slope",
    "correlations",
    "deviation_study",
    "load_ladder_stages",
    "stage_deviation_study",
    "deviation_figure",
    "scatter_panels_figure",
]


# =============================================================================== one interval


@dataclass(frozen=True)
class IntervalDeviation:
    """Student line against teacher substeps over one student interval (numpy arrays, ``B`` samples).

    Attributes
    ----------
    student_steps, substeps, delta:
        ``M``, ``N`` and ``Delta = T / M``.
    k:
        ``(B,)`` student grid index of each sample's interval.
    offsets:
        ``(N + 1,)`` elapsed times ``s_j = j Delta / N`` of the teacher substeps.
    deviations:
        ``(B, N + 1)`` ``||x - s_j u_phi - Phi_j||`` (column 0 is 0).
    endpoint_error:
        ``(B,)`` ``deviations[:, N]``.
    interior_deviation:
        ``(B,)`` ``max_{0 < j < N} deviations[:, j]`` (``nan`` when ``N = 1``: no interior substep).
    """

    student_steps: int
    substeps: int
    delta: float
    k: np.ndarray
    offsets: np.ndarray
    deviations: np.ndarray
    endpoint_error: np.ndarray
    interior_deviation: np.ndarray


def _check_spec(spec) -> StageSpec:
    if not isinstance(spec, StageSpec):
        raise ValueError(f"spec must be a kaclib.distill.StageSpec, got {type(spec).__name__}")
    return spec


def _check_state(x, y):
    if not isinstance(x, torch.Tensor) or x.ndim < 2 or not x.is_floating_point():
        raise ValueError(
            f"x must be a floating-point (B, ...) tensor with B samples, got {getattr(x, 'shape', x)!r}"
        )
    if y is not None and (not isinstance(y, torch.Tensor) or tuple(y.shape) != (x.shape[0],)):
        raise ValueError(f"y must be None or a ({x.shape[0]},) label tensor, got {getattr(y, 'shape', y)!r}")


def _check_k(k, batch: int, steps: int, device) -> torch.Tensor:
    if isinstance(k, bool):
        raise ValueError(f"k must be an int or a (B,) int tensor, got {k!r}")
    if isinstance(k, int):
        k = torch.full((batch,), k, dtype=torch.long)
    if not isinstance(k, torch.Tensor) or k.is_floating_point() or tuple(k.shape) != (batch,):
        raise ValueError(f"k must be an int or a ({batch},) int tensor, got {getattr(k, 'shape', k)!r}")
    if int(k.min()) < 0 or int(k.max()) >= steps:
        raise ValueError(
            f"k must lie in [0, student_steps) = [0, {steps}), got values in [{int(k.min())}, {int(k.max())}]"
        )
    return k.long().to(device)


@torch.no_grad()
def interval_deviation(
    teacher_field: TeacherField, student, path, x: torch.Tensor, k, y, spec: StageSpec
) -> IntervalDeviation:
    """Deviation of the student's Euler line from the teacher's substeps inside interval ``k``.

    Parameters
    ----------
    teacher_field:
        The stage's :class:`~kaclib.distill.TeacherField` (its velocity and solver define ``Phi``).
    student:
        The stage's student ``u_phi(x, t, y)`` (called once, under ``no_grad``, in ``eval()``).
    path:
        The probability path (its ``T``).
    x:
        ``(B, ...)`` states at ``t_k``.
    k:
        An int or a ``(B,)`` int tensor of student grid indices in ``[0, M)``.
    y:
        ``(B,)`` labels or ``None``.
    spec:
        The stage's :class:`~kaclib.distill.StageSpec` (``M = student_steps``, ``N = substeps``).

    Returns
    -------
    IntervalDeviation
    """
    spec = _check_spec(spec)
    _check_state(x, y)
    M, N, T = spec.student_steps, spec.substeps, float(path.T)
    kk = _check_k(k, x.shape[0], M, x.device)
    _, phi = segment_endpoint(
        teacher_field.velocity, x, kk, y, M, N, T=T, method=teacher_field.solver, return_path=True
    )
    was_training = student.training
    student.eval()
    try:
        u = student(x, grid_times(kk, M, T, x.dtype), y)
    finally:
        student.train(was_training)
    delta = T / M
    offsets = delta * (
        torch.arange(N + 1, dtype=torch.float64) / N
    )  # s_N = Delta exactly (student_step's Delta)
    line = x.unsqueeze(0) - offsets.to(x.dtype).to(x.device).view((-1,) + (1,) * x.ndim) * u.unsqueeze(0)
    dev = (line - phi).flatten(2).double().norm(dim=2).T.cpu().numpy()  # (B, N + 1)
    interior = dev[:, 1:N].max(axis=1) if N > 1 else np.full(x.shape[0], np.nan)
    return IntervalDeviation(
        student_steps=M,
        substeps=N,
        delta=delta,
        k=kk.cpu().numpy(),
        offsets=offsets.numpy(),
        deviations=dev,
        endpoint_error=dev[:, N].copy(),
        interior_deviation=interior,
    )


# ========================================================================= a stage along the sampler's path


@torch.no_grad()
def sampler_states(teacher_field: TeacherField, path, spec: StageSpec, x_T: torch.Tensor, y) -> torch.Tensor:
    """``(M, B, ...)`` states ``x_{t_k}``, ``k = 0..M-1``, of the teacher's own sampler from ``x_T``.

    The teacher is sampled with its ``S = M N`` steps, its solver and guidance
    (:func:`kaclib.solvers.sample`); every ``N``-th state is the start of a student interval.
    """
    spec = _check_spec(spec)
    _check_state(x_T, y)
    res = sample(
        teacher_field.velocity,
        x_T,
        spec.teacher_steps,
        teacher_field.solver,
        T=float(path.T),
        y=y,
        return_trajectory=True,
    )
    return res.trajectory[0 : spec.teacher_steps : spec.substeps]


@dataclass(frozen=True)
class PathDeviation:
    """All intervals of one stage along the sampler's path: ``(B, M)`` arrays, interval k in column k."""

    spec: StageSpec
    delta: float
    endpoint_error: np.ndarray
    interior_deviation: np.ndarray

    @property
    def sup_endpoint(self) -> np.ndarray:
        """``(B,)`` the largest end-point error along each sample's path."""
        return self.endpoint_error.max(axis=1)

    @property
    def sup_interior(self) -> np.ndarray:
        """``(B,)`` the largest interior deviation along each sample's path."""
        return self.interior_deviation.max(axis=1)


def path_deviation(
    teacher_field: TeacherField, student, path, spec: StageSpec, x_T: torch.Tensor, y, batch_size: int = 256
) -> PathDeviation:
    """:func:`interval_deviation` of every interval ``k = 0..M-1`` from the latents ``x_T``.

    At the states of :func:`sampler_states`, in batches of ``batch_size`` samples.
    """
    spec = _check_spec(spec)
    _check_state(x_T, y)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    ends, inner = [], []
    for a in range(0, x_T.shape[0], batch_size):
        xb, yb = x_T[a : a + batch_size], None if y is None else y[a : a + batch_size]
        states = sampler_states(teacher_field, path, spec, xb, yb)
        rows = [
            interval_deviation(teacher_field, student, path, states[k], k, yb, spec)
            for k in range(spec.student_steps)
        ]
        ends.append(np.stack([r.endpoint_error for r in rows], axis=1))
        inner.append(np.stack([r.interior_deviation for r in rows], axis=1))
    return PathDeviation(
        spec=spec,
        delta=float(path.T) / spec.student_steps,
        endpoint_error=np.concatenate(ends),
        interior_deviation=np.concatenate(inner),
    )


# =============================================================================== statistics


def correlations(a, b) -> dict:
    """Pearson and Spearman correlation of two equal-length samples (``nan`` when either is constant)."""
    from scipy.stats import pearsonr, spearmanr

    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape or a.size < 3:
        raise ValueError(f"correlations need two samples of equal length >= 3, got {a.size} and {b.size}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("correlations need finite values")
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return {
            "pearson": math.nan,
            "pearson_p": math.nan,
            "spearman": math.nan,
            "spearman_p": math.nan,
            "n": int(a.size),
        }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p, s = pearsonr(a, b), spearmanr(a, b)
    return {
        "pearson": float(p.statistic),
        "pearson_p": float(p.pvalue),
        "spearman": float(s.statistic),
        "spearman_p": float(s.pvalue),
        "n": int(a.size),
    }


@dataclass(frozen=True)
class SlopeFit:
    """Least-squares slope of ``log(deviation)`` on ``log(Delta)`` with its CI at ``level``.

    The CI is ``slope +/- t_{(1+level)/2, n-2} stderr``; ``nan`` bounds with fewer than 3 points, as
    :func:`kaclib.stats.mean_ci` gives ``nan`` for one value.
    """

    slope: float
    lo: float
    hi: float
    stderr: float
    intercept: float
    n: int
    level: float = 0.95

    @property
    def half_width(self) -> float:
        """Half the width of the CI, ``(hi - lo) / 2``."""
        return (self.hi - self.lo) / 2

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies in the interval (False for an undefined interval)."""
        return bool(self.lo <= value <= self.hi)

    def to_dict(self) -> dict:
        """The fit as a JSON-ready dict (with ``half_width``)."""
        return {
            "slope": self.slope,
            "lo": self.lo,
            "hi": self.hi,
            "stderr": self.stderr,
            "intercept": self.intercept,
            "n": self.n,
            "level": self.level,
            "half_width": self.half_width,
        }


def deviation_slope(deltas, deviations, level: float = 0.95) -> SlopeFit:
    """Exponent ``p`` of ``deviation ~ C Delta^p``: the slope of ``log(deviation)`` against ``log(Delta)``.

    Parameters
    ----------
    deltas, deviations:
        Equal-length positive finite values (one point per stage, or per sample and stage), with
        at least two distinct ``Delta``.
    level:
        Confidence level of the interval (``scipy.stats.linregress``'s ``stderr`` times the
        Student-t quantile with ``n - 2`` degrees of freedom).
    """
    from scipy.stats import linregress

    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    d, v = np.asarray(deltas, dtype=np.float64).ravel(), np.asarray(deviations, dtype=np.float64).ravel()
    if d.shape != v.shape or d.size < 2:
        raise ValueError(f"deltas and deviations must have equal length >= 2, got {d.size} and {v.size}")
    if not (np.isfinite(d).all() and np.isfinite(v).all()) or (d <= 0).any() or (v <= 0).any():
        raise ValueError("deltas and deviations must be finite and > 0 (their logarithms are fitted)")
    if np.unique(d).size < 2:
        raise ValueError("deltas must hold at least two distinct step sizes")
    fit = linregress(np.log(d), np.log(v))
    n = int(d.size)
    if n < 3:
        lo = hi = se = math.nan
    else:
        se = float(fit.stderr)
        h = _t_quantile(n - 2, level) * se
        lo, hi = float(fit.slope) - h, float(fit.slope) + h
    return SlopeFit(
        slope=float(fit.slope), lo=lo, hi=hi, stderr=se, intercept=float(fit.intercept), n=n, level=level
    )


# =============================================================================== studies


@dataclass(frozen=True)
class StageDeviation:
    """One stage's :class:`PathDeviation` and its summary (see :meth:`summary`)."""

    deviation: PathDeviation

    @property
    def spec(self) -> StageSpec:
        """The stage's :class:`StageSpec` (that of its deviation)."""
        return self.deviation.spec

    def summary(self) -> dict:
        """JSON-ready summary of the stage's end-point errors and interior deviations.

        The stage, ``Delta``, ``n``; mean and 95% CI over samples of the mean and of the largest (over
        intervals) end-point error and interior deviation; Pearson / Spearman of the per-sample largest
        values (``per_sample``) and of all (sample, interval) pairs (``per_interval``).
        """
        d = self.deviation
        s = self.spec
        ci = lambda a: mean_ci(a.tolist()).to_dict() if np.isfinite(a).all() else None  # noqa: E731
        interior = (
            s.substeps > 1 and d.endpoint_error.shape[0] >= 3
        )  # correlations need an interior and 3 samples
        return {
            "stage": s.index,
            "teacher_steps": s.teacher_steps,
            "student_steps": s.student_steps,
            "substeps": s.substeps,
            "delta": d.delta,
            "n": int(d.endpoint_error.shape[0]),
            "endpoint_error": ci(d.endpoint_error.mean(axis=1)),
            "interior_deviation": ci(d.interior_deviation.mean(axis=1)),
            "sup_endpoint_error": ci(d.sup_endpoint),
            "sup_interior_deviation": ci(d.sup_interior),
            "interior_over_endpoint": (
                float(d.interior_deviation.mean() / d.endpoint_error.mean())
                if d.endpoint_error.mean() > 0
                else math.nan
            ),
            "per_sample": correlations(d.sup_endpoint, d.sup_interior) if interior else None,
            "per_interval": correlations(d.endpoint_error, d.interior_deviation) if interior else None,
        }


@dataclass(frozen=True)
class DeviationStudy:
    """Every stage of a ladder.

    Attributes
    ----------
    stages:
        One :class:`StageDeviation` per stage.
    slope:
        Exponent of the whole-path deviation against ``Delta`` (one point per stage: the mean over
        samples of the largest interior deviation along the path): what the finite-speed argument
        predicts to be ``O(Delta)``.
    slope_mean:
        The same for the mean interior deviation over all intervals (a jump met in ONE of the ``M``
        intervals adds ``O(Delta) / M = O(Delta^2)`` to this mean).
    pooled:
        Correlations of the per-sample largest values over all stages.
    label:
        E.g. the path.
    """

    stages: tuple
    slope: SlopeFit | None
    slope_mean: SlopeFit | None
    pooled: dict | None
    label: str = ""

    def to_dict(self) -> dict:
        """JSON-ready: the label, each stage's summary, the two slopes and the pooled correlations."""
        return {
            "label": self.label,
            "stages": [s.summary() for s in self.stages],
            "slope_sup_interior_vs_delta": None if self.slope is None else self.slope.to_dict(),
            "slope_mean_interior_vs_delta": None if self.slope_mean is None else self.slope_mean.to_dict(),
            "pooled_per_sample": self.pooled,
        }


def deviation_study(
    stages, path, x_T: torch.Tensor, y, label: str = "", batch_size: int = 256
) -> DeviationStudy:
    """:func:`path_deviation` of every ``(spec, teacher_field, student)`` in ``stages``.

    All from the SAME latents ``x_T`` (and labels ``y``), with the slopes of the interior deviation
    against ``Delta`` (when at least two stages have different ``Delta``) and the pooled correlations.
    """
    out = []
    for item in stages:
        if not (isinstance(item, tuple) and len(item) == 3):
            raise ValueError("stages must be (spec, teacher_field, student) triples")
        spec, teacher_field, student = item
        out.append(
            StageDeviation(path_deviation(teacher_field, student, path, spec, x_T, y, batch_size=batch_size))
        )
    if not out:
        raise ValueError("stages must not be empty")
    deltas = [s.deviation.delta for s in out]
    slope = slope_mean = None
    if len(set(deltas)) >= 2 and all(s.spec.substeps > 1 for s in out):
        slope = deviation_slope(deltas, [float(s.deviation.sup_interior.mean()) for s in out])
        slope_mean = deviation_slope(deltas, [float(s.deviation.interior_deviation.mean()) for s in out])
    pooled = None
    if x_T.shape[0] * len(out) >= 3 and all(s.spec.substeps > 1 for s in out):
        pooled = correlations(
            np.concatenate([s.deviation.sup_endpoint for s in out]),
            np.concatenate([s.deviation.sup_interior for s in out]),
        )
    return DeviationStudy(stages=tuple(out), slope=slope, slope_mean=slope_mean, pooled=pooled, label=label)


def load_ladder_stages(ladder, device="cpu"):
    """``(path, stages, num_classes, image_shape)`` of a finished ladder.

    ``ladder`` is a run directory of :func:`kaclib.distill.run_ladder`, or its
    :class:`~kaclib.distill.LadderResult`.  ``stages`` are the ``(spec, teacher_field, student)``
    triples, built as :func:`kaclib.distill.run_ladder` builds them (the flow teacher guided with the
    ladder's ``w`` and ``teacher_solver``; later teachers the previous students, Euler, unguided).
    Unfinished stages are left out.
    """
    from . import runs
    from .distill import DistillConfig, load_ladder
    from .evaluation import model_num_classes
    from .train import load_run

    if not isinstance(ladder, (str, os.PathLike)) and not hasattr(ladder, "run_dir"):
        raise ValueError(
            f"ladder must be a ladder run directory or a LadderResult, got {type(ladder).__name__}"
        )
    run_dir = Path(getattr(ladder, "run_dir", ladder))
    raw = runs.read_config(run_dir)
    cfg = DistillConfig.from_dict(raw["distill"])
    tinfo = raw["teacher"]
    flow = load_run((run_dir / tinfo["run_dir"]).resolve(), device=device)
    num_classes = model_num_classes(flow.model)
    mc = flow.model.cfg
    students = load_ladder(run_dir, device=device)
    stages, teacher = [], flow.model
    for spec in cfg.stages():
        if spec.student_steps not in students:
            break
        first_flow = spec.index == 1 and tinfo.get("distilled") is None
        teacher_field = TeacherField(
            teacher,
            guided=first_flow,
            w=cfg.w,
            num_classes=num_classes,
            solver=cfg.teacher_solver if first_flow else "euler",
        )
        student = students[spec.student_steps].model
        stages.append((spec, teacher_field, student))
        teacher = student
    return flow.path, stages, num_classes, (mc.in_channels, mc.image_size, mc.image_size)


def stage_deviation_study(
    ladder, n: int = 256, seed: int = 0, device="cpu", batch_size: int = 256, label: str | None = None
) -> DeviationStudy:
    """:func:`deviation_study` of every finished stage of ``ladder`` on ``n`` shared latents.

    ``ladder`` is a run directory or a :class:`~kaclib.distill.LadderResult`.  Image ``i``'s latent is
    :func:`kaclib.evaluation.image_latents` of ``(seed, i)`` and its label ``i mod num_classes``, the
    same for every stage.  ``label`` defaults to the path's kind.
    """
    from .evaluation import balanced_labels, image_latents

    if isinstance(n, bool) or not isinstance(n, int) or n < 3:
        raise ValueError(f"n must be an int >= 3, got {n!r}")
    path, stages, num_classes, shape = load_ladder_stages(ladder, device=device)
    if not stages:
        raise ValueError(f"{getattr(ladder, 'run_dir', ladder)}: no finished stage")
    x_T = image_latents(path, n, shape, seed=seed).to(device)
    y = balanced_labels(n, num_classes).to(device) if num_classes > 0 else None
    name = label if label is not None else str(path.config().get("kind", ""))
    return deviation_study(stages, path, x_T, y, label=name, batch_size=batch_size)


# the figures of these studies live in kaclib.plots.trajectories (re-exported here)
from .plots.trajectories import deviation_figure, scatter_panels_figure  # noqa: E402
