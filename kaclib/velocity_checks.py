"""The finite-speed bound checked where a sampler actually goes: along its trajectories.

For the Kac path ``x_t = f(t) x0 + K_{g(t)}`` with data in ``[-1, 1]`` every coordinate of the
conditional target obeys ``|u| <= |f'(t)| + g'(t) c`` (so ``||u|| <= (|f'(t)| + g'(t) c) sqrt(d)``),
and the marginal field, an average of targets, obeys the same bound.  ``c sqrt(d)`` alone is the
bound on the *noise* velocity and is dominated by the ``-x0`` part of the target: it is the wrong
yardstick.  :func:`trajectory_bound_stats` evaluates a learned (possibly guided) velocity at the
states of sampling trajectories and reports, per solver time, how far it exceeds the right bound.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

__all__ = ["TrajectoryBound", "coordinate_bound", "trajectory_bound_stats"]


def coordinate_bound(path, t: float) -> float:
    """``|f'(t)| + g'(t) c``: the per-coordinate bound of the Kac path's target at time ``t``."""
    tt = torch.tensor(float(t), dtype=torch.float64)
    return float(path.df(tt).abs() + path.dg(tt) * path.c)


@dataclass(frozen=True)
class TrajectoryBound:
    """The velocity ``u`` against the finite-speed bound, per solver time ``times[k]`` (``t > 0``).

    ``bound`` (per coordinate), ``ratio_max`` (max over images and coordinates of ``|u| / bound``),
    ``violation_fraction`` (coordinates with ratio > 1), ``norm_max`` / ``norm_q99`` /
    ``norm_bound`` (largest and 99th-percentile ``||u||`` against ``bound sqrt(d)``).
    """

    times: list
    bound: list
    ratio_max: list
    violation_fraction: list
    norm_max: list
    norm_q99: list
    norm_bound: list

    def to_dict(self) -> dict:
        """The fields as a plain dict."""
        return asdict(self)


@torch.no_grad()
def trajectory_bound_stats(
    velocity, path, trajectory: torch.Tensor, times, labels=None, batch_size: int = 500
) -> TrajectoryBound:
    """``velocity(x, t, y)`` along a sampling trajectory, against :func:`coordinate_bound`.

    Evaluated at the states ``trajectory[k]`` (``(S + 1, N, ...)`` from
    :func:`kaclib.evaluation.generate` with ``return_trajectory=True``) and times ``times[k]``
    (``(S + 1,)``, from ``T`` down to 0); the final state (``t = 0``) is skipped.
    """
    if getattr(path, "name", None) != "kac":
        raise ValueError("the finite-speed bound is a property of the Kac path")
    times = [float(t) for t in times]
    if trajectory.shape[0] != len(times):
        raise ValueError(f"trajectory has {trajectory.shape[0]} states, times {len(times)}")
    d = math.prod(trajectory.shape[2:])
    out = {
        k: []
        for k in ("times", "bound", "ratio_max", "violation_fraction", "norm_max", "norm_q99", "norm_bound")
    }
    for x, t in zip(trajectory[:-1], times[:-1]):
        b = coordinate_bound(path, t)
        u = torch.cat(
            [
                velocity(
                    x[i : i + batch_size],
                    torch.full((len(x[i : i + batch_size]),), t),
                    None if labels is None else labels[i : i + batch_size],
                ).float()
                for i in range(0, x.shape[0], batch_size)
            ]
        )
        ratio = u.abs() / b
        out["times"].append(t)
        out["bound"].append(b)
        out["ratio_max"].append(float(ratio.max()))
        out["violation_fraction"].append(float((ratio > 1).float().mean()))
        norms = u.flatten(1).norm(dim=1)
        out["norm_max"].append(float(norms.max()))
        out["norm_q99"].append(float(norms.quantile(0.99)))
        out["norm_bound"].append(b * math.sqrt(d))
    return TrajectoryBound(**out)
