"""Coordinate-wise Kac, the planar random flight and the Gaussian path on the 2D toy (issue 12, section 1).

The three paths train alike on the 3 x 3 mixture of chapter 2 (:func:`kaclib.toy.train_toy`: the
same :class:`~kaclib.models.MLPVelocity`, training steps, batch, learning rate, seed, data set and
EMA), and each is sampled from its own latent with 1, 2, 4 and 8 Euler steps and with a many-step
reference (100 AB-2 steps), as ``benchmarks/open_questions.py --flights`` does on the digits.

Matched settings
----------------
The Kac path is chapter 2's, ``(a, c) = (9, 3)``.  The flight is the one of the digits comparison,
:meth:`kaclib.flights.RandomFlight.matching_kac` with ``dim = 2``: rate ``2a = 18`` and speed
``c sqrt(2)``.  Per coordinate it then has the Kac process's covariance function at every time
(so the latents have the same per-coordinate spread, ``Var = 0.944`` at ``s = 1``), the velocity has
the Kac product's norm ``c sqrt(2)``, and only the coupling differs: the flight's noise fills the disc
``|x| <= c sqrt(2)``, the product's the square ``[-c, c]^2`` (in 1D a flight of rate ``2a`` *is* the
Kac process of rate ``a``).  The Gaussian path is rectified flow, latent ``N(0, I)``.

Measured per path and Euler step count ``S`` (:func:`run`): the energy distance to held-out toy
samples (:func:`kaclib.toy.energy_distance`), the mode coverage (:func:`kaclib.toy.mode_stats`), the
few-step error (RMSE of the ``S``-step end points to the reference's, from the same latents); per
path: the straightness of the reference trajectories (:func:`kaclib.diffusion_limit.straightness`)
and a few of them, thinned, for a figure.

Seeds: training uses ``seed`` (data ``10_000 + seed``, :func:`kaclib.toy.train_toy`); the latents
of every path are drawn from one generator seeded ``1000 + seed`` (:func:`latents`), the held-out
data from ``20_000 + seed``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, fields

import torch

from . import toy
from .diffusion_limit import straightness
from .flights import RandomFlight, RandomFlightPath
from .paths import GaussianPath, KacPath
from .solvers import sample

__all__ = [
    "PATHS",
    "FlightToyConfig",
    "StepMetrics",
    "PathResult",
    "FlightToyResult",
    "toy_paths",
    "latents",
    "held_out",
    "rmse",
    "measure_path",
    "run",
]

PATHS = ("kac", "flight", "gaussian")
"""The three paths, in table order."""


def _positive_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return v


@dataclass(frozen=True)
class FlightToyConfig:
    """Settings of one run (one seed): the Kac pair, training, sampling and evaluation.

    Parameters
    ----------
    a, c : float
        The Kac path's rate and speed; the flight takes ``(2a, c sqrt(2))`` (module docstring).
    train_steps, batch_size, hidden, depth : int
        Training steps, batch size and MLP width / depth, the same for every path.
    lr : float
        Adam learning rate (EMA 0.999 and gradient clipping 1 are :func:`kaclib.toy.train_toy`'s).
    seed : int
        Training seed; the latents use ``1000 + seed``, the held-out data ``20_000 + seed``.
    n_eval : int
        Latents (and held-out points) per path.
    steps : tuple of int
        Euler step counts, each below ``reference_steps``.
    reference_steps : int
        Steps of the AB-2 reference (the path's own many-step map).
    n_traj, traj_frames : int
        Trajectories kept for the figure and the states kept along each.
    """

    a: float = 9.0
    c: float = 3.0
    train_steps: int = 3000
    batch_size: int = 512
    hidden: int = 128
    depth: int = 3
    lr: float = 2e-3
    seed: int = 0
    n_eval: int = 2000
    steps: tuple = (1, 2, 4, 8)
    reference_steps: int = 100
    n_traj: int = 60
    traj_frames: int = 21

    def __post_init__(self):
        for name in ("a", "c", "lr"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
        for name in ("train_steps", "batch_size", "hidden", "depth", "n_eval", "reference_steps", "n_traj"):
            _positive_int(name, getattr(self, name))
        _positive_int("traj_frames", self.traj_frames)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")
        steps = tuple(self.steps) if isinstance(self.steps, (list, tuple)) else None
        if not steps or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in steps):
            raise ValueError(f"steps must be a non-empty sequence of positive ints, got {self.steps!r}")
        if max(steps) >= self.reference_steps:
            raise ValueError(f"steps must lie below reference_steps = {self.reference_steps}, got {steps}")
        if self.n_eval < 2 or self.n_traj > self.n_eval:
            raise ValueError(f"need 2 <= n_eval and n_traj <= n_eval, got {self.n_eval}, {self.n_traj}")
        object.__setattr__(self, "steps", steps)

    def to_dict(self) -> dict:
        """JSON-ready dictionary (``steps`` as a list)."""
        return {**asdict(self), "steps": list(self.steps)}

    @classmethod
    def from_dict(cls, d: dict) -> FlightToyConfig:
        """Inverse of :meth:`to_dict`; unknown keys are a ``ValueError``."""
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown FlightToyConfig keys: {sorted(unknown)}")
        return cls(**{**d, **({"steps": tuple(d["steps"])} if "steps" in d else {})})

    def to_json(self) -> str:
        """The config as JSON text."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> FlightToyConfig:
        """A config from JSON text."""
        return cls.from_dict(json.loads(text))


@dataclass
class StepMetrics:
    """Quality of one path at one number of Euler steps.

    One path at ``steps`` Euler steps: ``energy`` to held-out data, ``near`` (share within 3 std
    of a mode), ``modes`` (modes hit) and ``rmse`` to the reference end points (same latents).
    """

    steps: int
    energy: float
    near: float
    modes: int
    rmse: float


@dataclass
class PathResult:
    """One trained path of the flight toy and its measurements.

    One trained path: its config, the reference's quality, the straightness of its trajectories,
    the per-step metrics and ``trajectory`` ``(traj_frames, n_traj, 2)`` at ``times`` for a figure.
    """

    name: str
    path: dict
    reference: StepMetrics
    straightness: float
    per_step: list
    trajectory: torch.Tensor
    times: list
    train_seconds: float
    final_loss: float

    def to_dict(self, with_trajectory: bool = False) -> dict:
        """JSON-ready fields; the trajectory only when asked."""
        d = {k: v for k, v in asdict(self).items() if k not in ("trajectory", "times")}
        if with_trajectory:
            d["times"] = [round(t, 4) for t in self.times]
            d["trajectory"] = self.trajectory.double().round(decimals=3).tolist()
        return d


@dataclass
class FlightToyResult:
    """A run: its ``config``, the data-against-data energy ``floor`` and ``{name: PathResult}``."""

    config: FlightToyConfig
    floor: float
    paths: dict = field(default_factory=dict)

    def metric(self, name: str, key: str) -> float:
        """One measurement of one path, by name.

        ``key`` of path ``name``: ``"straightness"``, ``"<m>_ref"`` or ``"<m>_<S>"`` with ``m`` in
        ``energy``, ``near``, ``modes``, ``rmse``.
        """
        r = self.paths[name]
        if key == "straightness":
            return r.straightness
        m, _, which = key.rpartition("_")
        row = r.reference if which == "ref" else next(s for s in r.per_step if s.steps == int(which))
        return float(getattr(row, m))


def toy_paths(cfg: FlightToyConfig) -> dict:
    """``{"kac": KacPath(a, c), "flight": RandomFlightPath(2a, c sqrt 2), "gaussian": GaussianPath()}``."""
    fl = RandomFlight.matching_kac(cfg.a, cfg.c, 2)
    return {"kac": KacPath(cfg.a, cfg.c), "flight": RandomFlightPath(fl.a, fl.c), "gaussian": GaussianPath()}


def latents(path, n: int, seed: int) -> torch.Tensor:
    """``n`` latents ``(n, 2)`` of ``path`` from a generator seeded ``1000 + seed`` (every path)."""
    return path.sample_latent((n, 2), generator=torch.Generator().manual_seed(1000 + seed))


def held_out(n: int, seed: int, offset: int = 20_000) -> torch.Tensor:
    """``n`` fresh toy points from a generator seeded ``offset + seed`` (never the training set)."""
    return toy.sample_mixture(n, generator=torch.Generator().manual_seed(offset + seed))[0]


def rmse(x: torch.Tensor, ref: torch.Tensor) -> float:
    """``sqrt(mean ||x_i - ref_i||^2)``: paired end points from the same latents."""
    return float(((x.double() - ref.double()) ** 2).sum(-1).mean().sqrt())


def _metrics(x: torch.Tensor, ref: torch.Tensor, data: torch.Tensor, steps: int) -> StepMetrics:
    ms = toy.mode_stats(x)
    return StepMetrics(steps, toy.energy_distance(x, data), ms["near"], ms["modes"], rmse(x, ref))


def measure_path(name: str, model, path, cfg: FlightToyConfig, data: torch.Tensor) -> PathResult:
    """Sample ``model`` on ``path`` from :func:`latents` and measure it against ``data``.

    Parameters
    ----------
    name : str
        The path's name in :data:`PATHS`.
    model : torch.nn.Module
        The trained velocity ``model(x, t, y)``.
    path : KacPath, RandomFlightPath or GaussianPath
        Its path (the latents are drawn from it).
    cfg : FlightToyConfig
        Step counts, reference, ``n_eval`` latents, seed and the figure's trajectories.
    data : torch.Tensor
        ``(m, 2)`` held-out toy points (:func:`held_out`).

    Returns
    -------
    PathResult
        ``train_seconds`` and ``final_loss`` are left for :func:`run` to fill in.
    """
    x_T = latents(path, cfg.n_eval, cfg.seed)
    ref = sample(model, x_T, cfg.reference_steps, method="ab2", return_trajectory=True)
    per_step = [_metrics(sample(model, x_T, S).x, ref.x, data, S) for S in cfg.steps]
    idx = torch.linspace(0, cfg.reference_steps, min(cfg.traj_frames, cfg.reference_steps + 1)).round().long()
    return PathResult(
        name=name,
        path=path.config(),
        reference=_metrics(ref.x, ref.x, data, cfg.reference_steps),
        straightness=float(straightness(ref.trajectory).mean()),
        per_step=per_step,
        trajectory=ref.trajectory[idx, : cfg.n_traj].clone(),
        times=ref.times[idx].tolist(),
        train_seconds=0.0,
        final_loss=math.nan,
    )


def run(cfg: FlightToyConfig, progress: bool = False) -> FlightToyResult:
    """Train (or load, :func:`kaclib.toy.train_toy`) the three paths alike and measure each.

    Parameters
    ----------
    cfg : FlightToyConfig
        One seed's settings.
    progress : bool
        Print one line per path.

    Returns
    -------
    FlightToyResult
        The paths in :data:`PATHS` order, with the data-against-data energy floor (two held-out
        samples of ``n_eval`` points).
    """
    data = held_out(cfg.n_eval, cfg.seed)
    floor = toy.energy_distance(data, held_out(cfg.n_eval, cfg.seed, offset=30_000))
    out = FlightToyResult(cfg, floor)
    fit = dict(steps=cfg.train_steps, batch_size=cfg.batch_size, hidden=cfg.hidden, depth=cfg.depth)
    for name, path in toy_paths(cfg).items():
        t0 = time.perf_counter()
        m = toy.train_toy(path, lr=cfg.lr, seed=cfg.seed, **fit)
        res = measure_path(name, m.model, path, cfg, data)
        res.train_seconds = m.seconds_per_step * cfg.train_steps
        tail = m.losses[-max(1, len(m.losses) // 10) :]
        res.final_loss = float(sum(tail) / len(tail))
        out.paths[name] = res
        if progress:
            print(f"[flight_toy] {name}, seed {cfg.seed}: {time.perf_counter() - t0:.1f} s", flush=True)
    return out
