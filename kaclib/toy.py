"""The 2D toy of chapter 2 (as in the Kac-flow paper).

A 3 x 3 grid of Gaussians (:func:`sample_mixture`), a sample-quality metric
(:func:`energy_distance`) and :func:`train_toy`, a load-or-train
:class:`kaclib.models.MLPVelocity` trained with the shared loop :func:`kaclib.train.fit` (cached by
:func:`kaclib.artifacts.load_or_compute`).

The Kac path simulator and the PDE checks of chapter 1 live in :mod:`kaclib.kac_checks`; they are
re-exported here so that ``toy.simulate_kac`` and friends keep working.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from .kac import check_finite_param
from .kac_checks import (
    KacTrajectories,
    continuity_residual,
    kolmogorov_to_heat,
    kolmogorov_to_law,
    pde_residual,
    simulate_kac,
    smoothed_kac_law,
    telegraph_fd,
)

__all__ = [
    "KacTrajectories",
    "simulate_kac",
    "kolmogorov_to_law",
    "kolmogorov_to_heat",
    "telegraph_fd",
    "smoothed_kac_law",
    "pde_residual",
    "continuity_residual",
    "MIXTURE",
    "mixture_centers",
    "sample_mixture",
    "mixture_density",
    "energy_distance",
    "gaussian_marginal_velocity",
    "mode_stats",
    "ToyModel",
    "train_toy",
]


# =============================================================================== 2D toy data

MIXTURE = {"grid": 3, "spacing": 0.8, "std": 0.08}
"""The toy: equal-weight Gaussians of standard deviation ``std`` centred on the ``grid x grid``
points ``{-spacing, 0, spacing}^2``; almost all mass lies in ``[-1, 1]^2``."""


def mixture_centers(grid: int = MIXTURE["grid"], spacing: float = MIXTURE["spacing"]) -> torch.Tensor:
    """``(grid^2, 2)`` component means, row by row."""
    if not isinstance(grid, int) or grid < 1:
        raise ValueError(f"grid must be a positive int, got {grid!r}")
    spacing = check_finite_param("spacing", spacing, positive=True)
    ticks = (torch.arange(grid, dtype=torch.float32) - (grid - 1) / 2) * spacing
    gy, gx = torch.meshgrid(ticks, ticks, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)


def sample_mixture(
    n: int,
    generator: torch.Generator | None = None,
    grid: int = MIXTURE["grid"],
    spacing: float = MIXTURE["spacing"],
    std: float = MIXTURE["std"],
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` draws ``(x (n, 2), component (n,))`` of the 3 x 3 mixture."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    std = check_finite_param("std", std, positive=True)
    centers = mixture_centers(grid, spacing)
    comp = torch.randint(len(centers), (n,), generator=generator)
    x = centers[comp] + std * torch.randn(n, 2, generator=generator)
    return x, comp


def mixture_density(
    x: torch.Tensor,
    grid: int = MIXTURE["grid"],
    spacing: float = MIXTURE["spacing"],
    std: float = MIXTURE["std"],
) -> torch.Tensor:
    """Density of the mixture at points ``x (..., 2)``."""
    centers = mixture_centers(grid, spacing).to(x.dtype)
    d2 = ((x[..., None, :] - centers) ** 2).sum(-1)
    return torch.exp(-d2 / (2 * std**2)).mean(-1) / (2 * math.pi * std**2)


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Energy distance ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` between the empirical laws of two samples.

    Always >= 0, 0 iff the laws agree (Székely and Rizzo 2013).  These are V-statistics (diagonal
    included), so two samples of the same law give a small positive value of order ``1/n``: compare
    against that floor.  Computed in float64.
    """
    x, y = x.double().reshape(len(x), -1), y.double().reshape(len(y), -1)
    if len(x) < 2 or len(y) < 2:
        raise ValueError("energy_distance needs at least 2 points per sample")
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        return math.inf
    xy = torch.cdist(x, y).mean()
    xx = torch.cdist(x, x).mean()
    yy = torch.cdist(y, y).mean()
    return float(max(2 * xy - xx - yy, 0.0))


def gaussian_marginal_velocity(
    x: torch.Tensor,
    t: float,
    grid: int = MIXTURE["grid"],
    spacing: float = MIXTURE["spacing"],
    std: float = MIXTURE["std"],
) -> torch.Tensor:
    """Exact marginal velocity ``E[eps - x0 | x_t = x]`` of the Gaussian path for the mixture data.

    The path is ``x_t = (1 - t) x0 + t eps``; the velocity is evaluated at points ``x (n, 2)`` and time
    ``0 < t <= 1``.

    Per component ``k`` (mean ``mu_k``): ``x_t ~ N((1 - t) mu_k, S I)`` with ``S = (1 - t)^2 std^2 + t^2``
    and ``E[eps - x0 | x_t = x, k] = (t - (1 - t) std^2)/S (x - (1 - t) mu_k) - mu_k``; the components
    are weighted by their posterior probabilities (equal priors, common ``S``).
    """
    x = x.double()
    mu = mixture_centers(grid, spacing).double()
    m = (1 - t) * mu
    S = (1 - t) ** 2 * std**2 + t**2
    diff = x[:, None, :] - m[None]  # (n, K, 2)
    logw = -(diff**2).sum(-1) / (2 * S)
    w = torch.softmax(logw, dim=1)
    u_k = (t - (1 - t) * std**2) / S * diff - mu[None]
    return (w[..., None] * u_k).sum(1)


def mode_stats(
    x: torch.Tensor,
    grid: int = MIXTURE["grid"],
    spacing: float = MIXTURE["spacing"],
    std: float = MIXTURE["std"],
    radius: float = 3.0,
) -> dict:
    """Mode coverage of ``x``: ``{"near": fraction, "modes": count}``.

    ``near``: the fraction of points within radius*std of a centre; ``modes``: the number of centres
    with at least one such point.
    """
    centers = mixture_centers(grid, spacing).to(x.dtype)
    d = torch.cdist(x, centers)
    near = d.min(1).values <= radius * std
    hit = (d <= radius * std).any(0)
    return {"near": float(near.float().mean()), "modes": int(hit.sum())}


# =============================================================================== toy training


@dataclass
class ToyModel:
    """A trained toy model.

    ``model`` (EMA weights, eval mode), its ``path``, the artifact folder, the per-step ``losses`` and
    ``seconds_per_step`` of the training run.
    """

    model: torch.nn.Module
    path: object
    folder: Path
    losses: list
    seconds_per_step: float
    config: dict

    def training_data(self) -> torch.Tensor:
        """The training set (regenerated from its seed)."""
        d = self.config["data"]
        g = torch.Generator().manual_seed(d["seed"])
        return sample_mixture(d["n"], generator=g, grid=d["grid"], spacing=d["spacing"], std=d["std"])[0]


def train_toy(
    path,
    *,
    steps: int,
    batch_size: int = 256,
    hidden: int = 128,
    depth: int = 3,
    lr: float = 1e-3,
    seed: int = 0,
    n_data: int = 20_000,
    head: str = "free",
    progress: bool = False,
) -> ToyModel:
    """Train (or load) an :class:`~kaclib.models.MLPVelocity` on the 3 x 3 mixture with ``path``.

    The model, its training hyper-parameters, the path and the data are the artifact's key; the
    EMA weights are what is kept (``kaclib.train.fit``'s ``ema``).
    """
    from . import runs
    from .artifacts import load_or_compute

    config = _toy_config(path, steps, batch_size, hidden, depth, lr, seed, n_data, head)

    def compute(tmp: Path):
        _fit_toy(tmp, path, config, progress)

    folder = load_or_compute("toy-velocity", config, compute)
    model = _toy_mlp(path, config["model"])
    runs.load_weights(model, folder / "ema.safetensors")
    model.eval()
    info = json.loads((folder / "train.json").read_text())
    return ToyModel(
        model=model,
        path=path,
        folder=folder,
        losses=info["losses"],
        seconds_per_step=info["seconds_per_step"],
        config=config,
    )


def _toy_config(path, steps, batch_size, hidden, depth, lr, seed, n_data, head) -> dict:
    """The artifact key of :func:`train_toy`: the model, its training, the path and the data."""
    model_cfg = {"dim": 2, "hidden": hidden, "depth": depth, "head": head}
    return {
        "kind": "toy-mlp",
        "version": 1,
        "path": path.config(),
        "model": model_cfg,
        "fit": {
            "steps": steps,
            "batch_size": batch_size,
            "lr": lr,
            "seed": seed,
            "ema_decay": 0.999,
            "grad_clip": 1.0,
        },
        "data": {**MIXTURE, "n": n_data, "seed": 10_000 + seed},
    }


def _toy_mlp(path, model_cfg: dict):
    """A fresh :class:`~kaclib.models.MLPVelocity` of ``model_cfg`` (the bounded head on ``path``)."""
    from .models import MLPVelocity

    head = model_cfg["head"]
    return MLPVelocity(
        dim=2,
        hidden=model_cfg["hidden"],
        depth=model_cfg["depth"],
        head=head,
        path=path if head == "bounded" else None,
    )


def _fit_toy(tmp: Path, path, config: dict, progress: bool) -> None:
    """Train the model of ``config`` on its mixture data and write its outputs into ``tmp``.

    Its EMA weights go to ``ema.safetensors``, its losses to ``train.json``.
    """
    from . import runs
    from .train import fit

    d, f = config["data"], config["fit"]
    g = torch.Generator().manual_seed(d["seed"])
    data, _ = sample_mixture(d["n"], generator=g, grid=d["grid"], spacing=d["spacing"], std=d["std"])
    torch.manual_seed(f["seed"])
    res = fit(
        _toy_mlp(path, config["model"]),
        path,
        data,
        steps=f["steps"],
        batch_size=f["batch_size"],
        lr=f["lr"],
        seed=f["seed"],
        ema_decay=0.999,
        grad_clip=1.0,
        progress=progress,
    )
    (tmp / "ema.safetensors").write_bytes(runs.weights_bytes(res.ema))
    (tmp / "train.json").write_text(
        json.dumps(
            {
                "losses": [round(float(v), 6) for v in res.losses],
                "seconds_per_step": res.seconds_per_step,
            }
        )
    )
