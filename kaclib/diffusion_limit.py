"""The diffusion limit at the level of laws and of trained models (issue 12, section 2).

At a fixed diffusivity ``D = c^2 / xi`` (``xi = 2a``, the telegrapher's damping) the Kac process
tends to Brownian motion as ``xi -> inf``: ``K_s -> N(0, 2 D s)``.  This module measures how far a
Kac path of finite ``xi`` is from that limit:

* :func:`kac_family`: the ``(a, c)`` of the Kac paths with damping ``xi`` at diffusivity ``D``;
* :func:`law_distance`: the Kolmogorov distance of the law of ``K_s`` (exact CDF, atoms included)
  to the matched normal ``N(0, Var K_s)`` and to the diffusion's ``N(0, 2 D s)``;
* :func:`straightness`: end-to-end distance over path length of sampling trajectories;
* :func:`few_step_error`: the paired RMSE of an ``S``-step sample to a fine reference drawn from the
  same latents.

The variance-matched Gaussian twin of a Kac path is :class:`kaclib.paths.VarianceMatchedGaussianPath`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .kac import KacProcess, check_finite_param

__all__ = ["LawDistance", "FewStepError", "kac_family", "law_distance", "straightness", "few_step_error"]


def kac_family(D: float, xis) -> list[tuple[float, float]]:
    """Kac processes ``(a, c)`` of one diffusivity ``D``, one per damping ``xi``.

    ``[(a, c), ...]`` with ``a = xi/2`` and ``c = sqrt(D xi)`` for each damping ``xi`` of ``xis``:
    the Kac processes of diffusivity ``c^2 / (2a) = D``.
    """
    D = check_finite_param("D", D, positive=True)
    out = []
    for xi in xis:
        xi = check_finite_param("xi", xi, positive=True)
        out.append((xi / 2, math.sqrt(D * xi)))
    if not out:
        raise ValueError("xis must hold at least one damping")
    return out


@dataclass(frozen=True)
class LawDistance:
    """Kolmogorov distances of the law of ``K_s`` at each time of ``s``.

    ``to_matched[i] = sup_x |F_{K_s}(x) - Phi(x / sqrt(Var K_s))|`` (the shape's distance from a
    normal) and ``to_diffusion[i] = sup_x |F_{K_s}(x) - Phi(x / sqrt(2 D s))|`` (the distance from
    the diffusion limit, shape and variance), ``D = c^2/(2a)``; tuples of floats.
    """

    a: float
    c: float
    s: tuple
    to_matched: tuple
    to_diffusion: tuple

    @property
    def D(self) -> float:
        """Diffusivity ``c^2 / (2a)``."""
        return self.c**2 / (2 * self.a)

    def to_dict(self) -> dict:
        """JSON-ready fields, with ``xi`` and ``D``."""
        return {
            "a": self.a,
            "c": self.c,
            "xi": 2 * self.a,
            "D": self.D,
            "s": list(self.s),
            "to_matched": list(self.to_matched),
            "to_diffusion": list(self.to_diffusion),
        }


def _normal_cdf(x: torch.Tensor, std: float) -> torch.Tensor:
    return 0.5 * torch.erfc(-x / (std * math.sqrt(2.0)))


def _kolmogorov_one(proc: KacProcess, s: float, stds: tuple, grid: int) -> list[float]:
    """``sup_x |F_{K_s} - Phi(./std)|`` for each ``std``, ``s > 0``.

    ``F`` is continuous on ``(-cs, cs)`` and constant outside; the normal CDF is monotone, so the
    supremum is the maximum over a fine grid of ``(-cs, cs)`` and the one-sided limits at the two
    fronts (``F(-cs-) = 0``, ``F(-cs) = exp(-as)/2``, ``F(cs-) = 1 - exp(-as)/2``, ``F(cs) = 1``).
    """
    front = proc.c * s
    x = torch.linspace(-front, front, grid + 2, dtype=torch.float64)[1:-1]
    F = proc.cdf(x, torch.tensor(s, dtype=torch.float64))
    atom = 0.5 * math.exp(-proc.a * s)
    fronts = torch.tensor([-front, -front, front, front], dtype=torch.float64)
    F_fronts = torch.tensor([0.0, atom, 1.0 - atom, 1.0], dtype=torch.float64)
    out = []
    for std in stds:
        d_in = (F - _normal_cdf(x, std)).abs().max()
        d_front = (F_fronts - _normal_cdf(fronts, std)).abs().max()
        out.append(float(torch.maximum(d_in, d_front)))
    return out


def law_distance(a: float, c: float, s, grid: int = 4001) -> LawDistance:
    """Kolmogorov distances of the law of the Kac process ``K_s`` to two normals, for each ``s``.

    Parameters
    ----------
    a, c:
        Flip rate (``xi = 2a``) and speed of :class:`~kaclib.kac.KacProcess`; ``a > 0``.
    s:
        A time ``> 0`` or a 1-D sequence of them (e.g. ``g(t)`` along a path).
    grid:
        Points of the ``x`` grid inside ``(-cs, cs)`` (the fronts' one-sided limits are added).
        The grid maximum is a lower bound of the supremum, within ``sup |F'| cs / grid``.

    Returns
    -------
    LawDistance
        ``to_matched`` (normal of variance ``Var K_s``) and ``to_diffusion`` (``N(0, 2 D s)``,
        ``D = c^2/(2a)``), one value per time.
    """
    a = check_finite_param("a", a, positive=True)
    c = check_finite_param("c", c, positive=True)
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 3:
        raise ValueError(f"grid must be an int >= 3, got {grid!r}")
    times = torch.as_tensor(s, dtype=torch.float64).reshape(-1)
    if times.numel() == 0 or not torch.isfinite(times).all() or (times <= 0).any():
        raise ValueError(f"s must hold finite times > 0, got {s!r}")
    proc = KacProcess(a, c)
    D = c * c / (2 * a)
    matched, diffusion = [], []
    for si in times.tolist():
        m, d = _kolmogorov_one(
            proc,
            si,
            (math.sqrt(float(proc.var(torch.tensor(si, dtype=torch.float64)))), math.sqrt(2 * D * si)),
            grid,
        )
        matched.append(m)
        diffusion.append(d)
    return LawDistance(a, c, tuple(times.tolist()), tuple(matched), tuple(diffusion))


def straightness(trajectory: torch.Tensor) -> torch.Tensor:
    """Per-sample straightness ``||x_S - x_0|| / sum_k ||x_{k+1} - x_k||`` of a trajectory.

    Parameters
    ----------
    trajectory:
        ``(S + 1, N, ...)`` states (as :func:`kaclib.evaluation.generate` returns with
        ``return_trajectory=True``), ``S >= 1``.

    Returns
    -------
    torch.Tensor
        ``(N,)`` float64 in ``[0, 1]``: 1 for a straight, monotone path; less for a bent one.  A
        path that does not move (length 0) counts as straight (1).
    """
    if not isinstance(trajectory, torch.Tensor) or trajectory.ndim < 2 or trajectory.shape[0] < 2:
        raise ValueError("trajectory must be a tensor of shape (S + 1, N, ...) with S >= 1")
    x = trajectory.double().flatten(2)
    if not torch.isfinite(x).all():
        raise ValueError("trajectory must be finite")
    length = (x[1:] - x[:-1]).norm(dim=-1).sum(0)
    chord = (x[-1] - x[0]).norm(dim=-1)
    pos = length > 0
    return torch.where(
        pos, chord / torch.where(pos, length, torch.ones_like(length)), torch.ones_like(length)
    )


@dataclass(frozen=True)
class FewStepError:
    """Paired RMSE of few-step samples to a many-step reference.

    Paired RMSE of ``steps``-step samples to ``reference_steps``-step samples from the same
    latents and labels: ``rmse`` per image (tuple), ``mean`` its mean.
    """

    steps: int
    reference_steps: int
    method: str
    rmse: tuple

    @property
    def mean(self) -> float:
        """Mean of the per-image RMSE."""
        return float(sum(self.rmse) / len(self.rmse))

    def to_dict(self) -> dict:
        """JSON-ready fields."""
        return {
            "steps": self.steps,
            "reference_steps": self.reference_steps,
            "method": self.method,
            "rmse_mean": self.mean,
            "n": len(self.rmse),
        }


def few_step_error(
    model,
    path,
    steps: int,
    reference_steps: int,
    n: int = 64,
    seed: int = 0,
    method: str = "euler",
    reference_method: str | None = None,
    w: float | None = 1.0,
    image_shape=None,
    reference=None,
) -> FewStepError:
    """Paired RMSE of an ``steps``-step sample to a fine reference from the same latents.

    Parameters
    ----------
    model, path:
        A velocity model and its path (anything :func:`kaclib.evaluation.generate` takes).
    steps, reference_steps:
        The coarse and the fine step counts (``reference_steps > steps``).
    n, seed:
        Images (balanced labels) and latent seed, shared by both draws.
    method, reference_method:
        Solvers of the coarse and the fine draw (the fine one defaults to ``method``).
    reference:
        Optional ``(N, ...)`` images of an earlier fine draw with the same ``n``, ``seed`` and
        labels, to score several step counts against one reference.

    Returns
    -------
    FewStepError
        The per-image RMSE (:func:`kaclib.sample_quality.paired_rmse`).
    """
    from .evaluation import generate
    from .sample_quality import paired_rmse

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if isinstance(reference_steps, bool) or not isinstance(reference_steps, int) or reference_steps <= steps:
        raise ValueError(f"reference_steps must be an int > steps = {steps}, got {reference_steps!r}")
    kw = {"w": w, "seed": seed, "image_shape": image_shape}
    coarse = generate(model, path, n, steps, method=method, **kw).images
    if reference is None:
        reference = generate(model, path, n, reference_steps, method=reference_method or method, **kw).images
    rmse = paired_rmse(coarse, reference)
    return FewStepError(steps, reference_steps, method, tuple(rmse.tolist()))
