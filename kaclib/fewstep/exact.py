"""A known answer for the few-step methods: a 2D Gaussian mixture on the Gaussian path.

On the rectified-flow path ``x_t = (1 - t) x0 + t eps`` with data from an equal-weight mixture
``sum_k N(mu_k, s^2 I)`` the marginal velocity is closed-form (:class:`MixtureField`), so the exact
flow map ``x_T -> x_0`` is that field integrated finely (:func:`exact_flow_map`).  A distilled
1-step map can then be scored by its mean distance to the exact map (:func:`endpoint_error`).
:func:`known_answer_case` builds the case the tests of ``tests/test_fewstep.py`` and chapter 7 use;
:func:`known_answer_config` the config of each method at a given student-iteration budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..distill import TeacherField
from ..paths import GaussianPath
from ..solvers import sample
from .common import one_step_map

__all__ = [
    "MEANS",
    "STD",
    "METHODS",
    "KnownAnswerCase",
    "MixtureField",
    "endpoint_error",
    "exact_flow_map",
    "known_answer_case",
    "known_answer_config",
    "mixture_log_density",
]

MEANS = ((1.0, 1.0), (-1.0, 1.0), (0.0, -1.2))
STD = 0.1
METHODS = ("progressive", "consistency", "reflow")


class MixtureField(nn.Module):
    """The exact marginal velocity ``E[eps - x0 | x_t = x]`` of the Gaussian path for mixture data.

    The data come from an equal-weight mixture ``sum_k N(mu_k, s^2 I)``.

    Given component ``k``, ``(x0, eps, x_t)`` are jointly Gaussian, ``x_t ~ N((1 - t) mu_k, sigma_t^2 I)``
    with ``sigma_t^2 = (1 - t)^2 s^2 + t^2`` and ``E[eps - x0 | x_t, k] = (t - (1 - t) s^2)/sigma_t^2
    (x - (1 - t) mu_k) - mu_k``; the field weights these by the posterior of ``k`` given ``x_t``.
    Computed in float64 and returned in the input's dtype; ``y`` is ignored.
    """

    def __init__(self, means=MEANS, s: float = STD):
        super().__init__()
        self.register_buffer("means", torch.as_tensor(means, dtype=torch.float64))
        self.s = float(s)

    def forward(self, x, t, y=None):
        """The exact velocity at ``x`` ``(B, D)`` and times ``t``, in ``x``'s dtype (``y`` is ignored)."""
        dtype, x = x.dtype, x.double()
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1, 1, 1)
        sig2 = (1 - t) ** 2 * self.s**2 + t**2  # (B, 1, 1)
        d = x[:, None, :] - (1 - t) * self.means[None]  # (B, K, D)
        logp = -0.5 * (d**2).sum(-1) / sig2[..., 0]  # equal weights, equal variances: constants cancel
        w = torch.softmax(logp, dim=1)[..., None]
        u_k = (t - (1 - t) * self.s**2) / sig2 * d - self.means[None]
        return (w * u_k).sum(1).to(dtype)


def mixture_log_density(x, t: float, means, s: float):
    """``log p_t(x)`` of the Gaussian path's marginal (up to a constant), differentiable in ``x``."""
    sig2 = (1 - t) ** 2 * s**2 + t**2
    d = x[:, None, :] - (1 - t) * means[None]
    return torch.logsumexp(-0.5 * (d**2).sum(-1) / sig2, dim=1) - x.shape[1] * 0.5 * math.log(sig2)


def exact_flow_map(field: nn.Module, x_T: torch.Tensor, steps: int = 512) -> torch.Tensor:
    """The flow map ``x_T -> x_0`` of ``field``.

    ``steps`` midpoint steps in float64, returned in ``x_T``'s dtype.
    """
    return sample(field, x_T.double(), steps, "midpoint").x.to(x_T.dtype)


@dataclass(frozen=True)
class KnownAnswerCase:
    """A known-answer case: the exact field, its data, latents and their exact end points.

    Its fields: the exact field, training data drawn from the mixture, latents ``x_T`` and their exact
    end points, the teacher (the exact field with midpoint substeps) and the path.
    """

    field: MixtureField
    data: torch.Tensor
    x_T: torch.Tensor
    exact: torch.Tensor
    teacher: TeacherField
    path: GaussianPath


def known_answer_case(
    n_data: int = 4096, n_latents: int = 2000, means=MEANS, s: float = STD, steps: int = 512
) -> KnownAnswerCase:
    """The mixture case: training points, latents and their exact end points.

    ``n_data`` training points (seed 0), ``n_latents`` latents (seed 1) and their exact end points
    (``steps`` midpoint steps).
    """
    field = MixtureField(means, s)
    g = torch.Generator().manual_seed(0)
    comp = torch.randint(len(means), (n_data,), generator=g)
    data = (torch.tensor(means)[comp] + s * torch.randn(n_data, 2, generator=g)).float()
    x_T = torch.randn(n_latents, 2, generator=torch.Generator().manual_seed(1))
    teacher = TeacherField(field, guided=True, w=1.0, num_classes=1, solver="midpoint")
    return KnownAnswerCase(field, data, x_T, exact_flow_map(field, x_T, steps), teacher, GaussianPath())


def endpoint_error(student: nn.Module, case: KnownAnswerCase) -> float:
    """Mean Euclidean distance between the student's 1-step map and the exact flow map."""
    return float((one_step_map(student, case.x_T, 1.0) - case.exact).norm(dim=1).mean())


def known_answer_config(method: str, budget: int, batch_size: int = 256):
    """The config of ``method`` (one of :data:`METHODS`) spending ``budget`` student iterations.

    On the mixture case, as ``tests/test_fewstep.py`` runs them: progressive 8 -> 4 -> 2 -> 1 (a third
    of the budget per stage); consistency with ``N = 8``; reflow on 2,048 couplings of 32 teacher steps
    for two thirds of the budget, then a 1-step end-point stage (8 Euler steps of the 2-rectified flow)
    for the rest.
    """
    from . import ConsistencyConfig, ProgressiveConfig, ReflowConfig

    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 3:
        raise ValueError(f"budget must be an int >= 3, got {budget!r}")
    if method == "progressive":
        return ProgressiveConfig(
            start_steps=8, end_steps=1, iters=budget // 3, batch_size=batch_size, lr=2e-3
        )
    if method == "consistency":
        return ConsistencyConfig(N=8, iters=budget, batch_size=batch_size, lr=2e-3, ema_decay=0.9)
    if method == "reflow":
        iters = 2 * budget // 3
        return ReflowConfig(
            n_pairs=2048,
            coupling_steps=32,
            reflow_iters=iters,
            distill_iters=iters // 2,
            distill_teacher_steps=8,
            batch_size=batch_size,
            lr=1e-3,
        )
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
