"""Strong guidance and very few steps (issue 11, section 3): what breaks, and where.

DistillKac's thesis is that finite speed keeps guided Kac flows well behaved where Gaussian flows
are not.  :func:`stress` samples one setting (guidance weight ``w``, number of Euler steps) and
reports what a reader would check first: non-finite images, the fraction of pixels outside
``[-1, 1]``, the largest ``|x|`` and the largest guided velocity ``||v_w||`` met along the
trajectories.  With Euler steps the guided velocity of step ``k`` is exactly
``(x_k - x_{k+1}) / dt``, so no extra network pass is spent on it.  :func:`stress_grid` runs a
grid of settings for one model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .evaluation import generate

#: the grid of the issue: guidance weights and Euler step counts
WEIGHTS = (1.0, 2.0, 4.0, 8.0, 16.0)
STEPS = (1, 2, 4, 8)


@dataclass(frozen=True)
class StressResult:
    """One setting of one model.

    ``n_nonfinite``: images with a NaN or an infinity; ``frac_out_of_range``: pixels of the finite
    images outside ``[-1, 1]``; ``max_abs_x``: the largest finite ``|x|`` over all states of the
    trajectories; ``max_velocity_norm``: the largest finite per-image ``||v_w||`` over the Euler steps;
    ``velocity_norm_q99``: its 99th percentile.
    """

    w: float
    steps: int
    n: int
    n_nonfinite: int
    frac_out_of_range: float
    max_abs_x: float
    max_velocity_norm: float
    velocity_norm_q99: float
    network_passes: int

    def to_dict(self) -> dict:
        """The fields as a dict."""
        return asdict(self)


def trajectory_stats(trajectory: torch.Tensor, T: float = 1.0) -> dict:
    """The statistics of :class:`StressResult` from an Euler trajectory ``(S + 1, N, ...)``.

    The trajectory runs on the uniform grid from ``T`` to 0; non-finite values are counted, then left
    out of the maxima.
    """
    steps = trajectory.shape[0] - 1
    if steps < 1:
        raise ValueError("a trajectory needs at least two states")
    flat = trajectory.double().flatten(2)  # (S + 1, N, D)
    final = flat[-1]
    finite_image = torch.isfinite(final).all(dim=1)
    finite = torch.isfinite(flat)
    abs_x = flat.abs().masked_fill(~finite, 0.0)
    speed = ((flat[:-1] - flat[1:]) / (T / steps)).norm(dim=2)  # (S, N)
    speed = speed[torch.isfinite(speed)]
    kept = final[finite_image]
    return {
        "n": int(final.shape[0]),
        "n_nonfinite": int((~finite_image).sum()),
        "frac_out_of_range": float((kept.abs() > 1).double().mean()) if kept.numel() else 1.0,
        "max_abs_x": float(abs_x.max()),
        "max_velocity_norm": float(speed.max()) if speed.numel() else float("inf"),
        "velocity_norm_q99": float(speed.quantile(0.99)) if speed.numel() else float("inf"),
    }


@torch.no_grad()
def stress(model, path, n: int, steps: int, w: float, seed: int = 0, image_shape=None):
    """Sample ``n`` class-balanced images with ``steps`` Euler steps at guidance weight ``w``.

    Latents of ``seed``: one per image, shared by every setting; ``image_shape`` for a model without a
    UNet config.  Returns ``(StressResult, Generated)``.
    """
    g = generate(
        model, path, n, steps, "euler", w=w, seed=seed, return_trajectory=True, image_shape=image_shape
    )
    stats = trajectory_stats(g.trajectory, T=float(getattr(path, "T", 1.0)))
    return StressResult(w=float(w), steps=int(steps), network_passes=g.network_passes, **stats), g


def stress_grid(model, path, n: int, seed: int = 0, weights=WEIGHTS, steps=STEPS, score=None) -> list[dict]:
    """:func:`stress` on every ``(w, steps)``.

    ``score(images, labels)`` (e.g. ``Evaluator.score``), when given, adds the quality of each set under
    ``"scores"``.
    """
    rows = []
    for w in weights:
        for s in steps:
            res, g = stress(model, path, n, s, w, seed=seed)
            row = res.to_dict()
            if score is not None:
                row["scores"] = score(g.images, g.labels).to_dict()
            rows.append(row)
    return rows
