"""Probability paths between data (``t = 0``) and noise (``t = T``).

Convention (the official Kac-flow code's): time ``t`` runs in ``[0, T]``, ``t = 0`` is data and
``t = T`` is noise; the regression target is ``u = d x_t / dt`` and samplers integrate from ``T``
down to ``0`` (``x <- x - h u``).

* :class:`KacPath`: ``x_t = f(t) x0 + K_{g(t)}`` with an independent Kac process per coordinate,
  target ``f'(t) x0 + g'(t) v(x_t - f(t) x0, g(t))``.
* :class:`GaussianPath`: the peer, rectified flow ``x_t = (1 - t) x0 + t eps``, target ``eps - x0``.
* :class:`DiffusionPath`: the Kac path's diffusion limit (``a, c -> inf`` with ``D = c^2/(2a)``
  fixed), ``x_t = f x0 + sqrt(2 D g) eps``, target ``f' x0 + g' (x_t - f x0)/(2 g)``.
* :class:`VarianceMatchedGaussianPath`: the Kac path's Gaussian twin, ``x_t = f x0 + sigma(t) eps``
  with ``sigma(t)^2 = Var K_{g(t)}``, target ``f' x0 + sigma' eps``: the same schedule and per-``t``
  variance as the Kac path, without the finite speed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .kac import KacProcess, check_finite_param
from .latents import box_muller

__all__ = [
    "PathSample",
    "KacPath",
    "GaussianPath",
    "DiffusionPath",
    "VarianceMatchedGaussianPath",
    "PathConfig",
    "build_path",
]


@dataclass
class PathSample:
    """One draw from a path: the state, its regression target and the times (shape ``(B,)``)."""

    x_t: torch.Tensor
    target: torch.Tensor
    t: torch.Tensor
    x0: torch.Tensor
    noise: torch.Tensor


def _expand_t(t, x0: torch.Tensor) -> torch.Tensor:
    """Times as a tensor broadcastable to ``x0`` (``(B,)`` -> ``(B, 1, 1, ...)``)."""
    t = torch.as_tensor(t, dtype=x0.dtype, device=x0.device)
    if torch.isnan(t).any():
        raise ValueError("t must not contain NaN")
    if t.ndim == 0:
        t = t.expand(x0.shape[:1]) if x0.ndim > 0 else t
    if t.ndim == 1 and x0.ndim >= 1:
        if t.shape[0] != x0.shape[0]:
            raise ValueError(f"t has {t.shape[0]} times but x0 has batch size {x0.shape[0]}")
        return t.reshape(t.shape + (1,) * (x0.ndim - 1))
    return t


def _check_time_range(t: torch.Tensor, T: float) -> None:
    if (t < 0).any() or (t > T).any():
        raise ValueError(f"t must lie in [0, T] = [0, {T}]")


_F = {
    "linear": (lambda t, T: 1 - t / T, lambda t, T: torch.full_like(t, -1.0 / T)),
    "exp": (lambda t, T: torch.exp(-t), lambda t, T: -torch.exp(-t)),
}
_G = {
    "t": (lambda t, T: t, lambda t, T: torch.ones_like(t)),
    "t2": (lambda t, T: t * t / T, lambda t, T: 2 * t / T),
}


class _Schedule:
    """Mean schedule ``f`` and clock ``g`` shared by the Kac path and its diffusion limit."""

    def __init__(self, f: str, g: str, T: float):
        if f not in _F:
            raise ValueError(f"f must be one of {sorted(_F)}, got {f!r}")
        if g not in _G:
            raise ValueError(f"g must be one of {sorted(_G)}, got {g!r}")
        self.f_name, self.g_name = f, g
        self.T = check_finite_param("T", T, positive=True)

    def f(self, t):
        return _F[self.f_name][0](torch.as_tensor(t), self.T)

    def df(self, t):
        return _F[self.f_name][1](torch.as_tensor(t), self.T)

    def g(self, t):
        return _G[self.g_name][0](torch.as_tensor(t), self.T)

    def dg(self, t):
        return _G[self.g_name][1](torch.as_tensor(t), self.T)


class _KacSchedule(_Schedule):
    """A schedule ``(f, g, T)`` with the Kac process ``K`` of rate ``a`` and speed ``c`` beside it."""

    def __init__(self, a: float = 9.0, c: float = 3.0, f: str = "linear", g: str = "t", T: float = 1.0):
        # the defaults are the official Kac-flow code's, as in PathConfig; a recipe's teacher
        # path (kaclib.recipe) is the measured choice
        super().__init__(f, g, T)
        self.process = KacProcess(a, c)

    @property
    def a(self) -> float:
        return self.process.a

    @property
    def c(self) -> float:
        return self.process.c


class KacPath(_KacSchedule):
    """Kac-flow path ``x_t = f(t) x0 + K_{g(t)}``, one independent Kac process per coordinate.

    ``f`` is ``"linear"`` (``1 - t/T``, default) or ``"exp"`` (``exp(-t)``); ``g`` is ``"t"``
    (default) or ``"t2"`` (``t^2/T``).  With ``f = "linear"``, ``x_T = K_{g(T)}`` is independent of
    the data; with ``"exp"`` the latent drawn by :meth:`sample_latent` ignores the residual mean
    ``exp(-T) x0``.
    """

    name = "kac"

    def __repr__(self):
        return f"KacPath(a={self.a}, c={self.c}, f={self.f_name!r}, g={self.g_name!r}, T={self.T})"

    def sample(self, x0: torch.Tensor, t, generator: torch.Generator | None = None) -> PathSample:
        """Draw ``x_t = f(t) x0 + K_{g(t)}`` and its target at times ``t``."""
        tt = _expand_t(t, x0)
        _check_time_range(tt, self.T)
        s = self.g(tt).expand_as(x0).contiguous()
        noise = self.process.sample(s, generator=generator)
        x_t = self.f(tt) * x0 + noise
        target = self.df(tt) * x0 + self.dg(tt) * self.process.velocity(noise, s)
        return PathSample(
            x_t=x_t,
            target=target,
            t=torch.as_tensor(t, dtype=x0.dtype, device=x0.device).expand(x0.shape[:1]),
            x0=x0,
            noise=noise,
        )

    def conditional_velocity(self, x: torch.Tensor, x0: torch.Tensor, t) -> torch.Tensor:
        """``u(t, x | x0) = f' x0 + g' v(x - f x0, g)`` at an arbitrary state ``x``."""
        tt = _expand_t(t, x0)
        return self.df(tt) * x0 + self.dg(tt) * self.process.velocity(x - self.f(tt) * x0, self.g(tt))

    def sample_latent(
        self, shape, generator: torch.Generator | None = None, device=None, dtype=None
    ) -> torch.Tensor:
        """A draw of the latent ``K_{g(T)}`` with shape ``shape``."""
        s = torch.full(
            tuple(shape),
            float(self.g(torch.tensor(self.T))),
            device=device,
            dtype=dtype or torch.get_default_dtype(),
        )
        return self.process.sample(s, generator=generator)

    latent_uniforms = 4
    """Uniforms per coordinate of :meth:`latent_from_uniforms` (counter-based latents)."""

    def latent_from_uniforms(self, u: torch.Tensor, dtype=None) -> torch.Tensor:
        """The latent ``K_{g(T)}`` from independent uniforms ``u`` ``(4, *shape)``.

        It is drawn by the exact sampler :meth:`~kaclib.kac.KacProcess.sample_from_uniforms`
        (one CDF table, no per-element rates).
        """
        return self.process.sample_from_uniforms(float(self.g(torch.tensor(self.T))), u, dtype=dtype)

    def velocity_bound(self, t, data_bound: float = 1.0) -> torch.Tensor:
        """Per-coordinate bound on the target for data in ``[-data_bound, data_bound]``.

        The bound is ``|f'(t)| data_bound + g'(t) c``.
        """
        t = torch.as_tensor(t)
        return self.df(t).abs() * data_bound + self.dg(t) * self.c

    def config(self) -> dict:
        """The path's ``config()`` dict: ``{"kind": "kac", "a", "c", "f", "g", "T"}``."""
        return {"kind": "kac", "a": self.a, "c": self.c, "f": self.f_name, "g": self.g_name, "T": self.T}


class DiffusionPath(_Schedule):
    """The Kac path's heat-equation limit: ``x_t = f x0 + sqrt(2 D g(t)) eps``."""

    name = "diffusion"

    def __init__(self, D: float = 0.5, f: str = "linear", g: str = "t", T: float = 1.0):
        super().__init__(f, g, T)
        self.D = check_finite_param("D", D, positive=True)

    def sample(self, x0: torch.Tensor, t, generator: torch.Generator | None = None) -> PathSample:
        """Draw ``x_t = f(t) x0 + sqrt(2 D g(t)) eps`` and its target at times ``t``."""
        tt = _expand_t(t, x0)
        _check_time_range(tt, self.T)
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        noise = torch.sqrt(2 * self.D * self.g(tt)) * eps
        x_t = self.f(tt) * x0 + noise
        return PathSample(
            x_t=x_t,
            target=self.conditional_velocity(x_t, x0, t),
            t=torch.as_tensor(t, dtype=x0.dtype, device=x0.device).expand(x0.shape[:1]),
            x0=x0,
            noise=noise,
        )

    def conditional_velocity(self, x: torch.Tensor, x0: torch.Tensor, t) -> torch.Tensor:
        """``f' x0 + g' (x - f x0)/(2 g)``.

        Where ``g(t) = 0`` (``t = 0``, which ``torch.rand`` does draw) the state is ``f x0`` exactly
        and the noise term is ``0/0``: it is replaced by its conditional mean, 0 (for ``g = t^2``
        the term is ``sqrt(2D/T) eps`` with mean 0; for ``g = t`` it has mean 0 and diverges), so
        the target stays finite: ``f'(0) x0``.
        """
        tt = _expand_t(t, x0)
        g = self.g(tt)
        pos = g > 0
        noise_term = torch.where(
            pos, (x - self.f(tt) * x0) / (2 * torch.where(pos, g, torch.ones_like(g))), 0.0
        )
        return self.df(tt) * x0 + self.dg(tt) * noise_term

    def sample_latent(self, shape, generator=None, device=None, dtype=None) -> torch.Tensor:
        """A draw of the latent ``sqrt(2 D g(T)) eps`` with shape ``shape``."""
        std = math.sqrt(2 * self.D * float(self.g(torch.tensor(self.T))))
        return std * torch.randn(
            tuple(shape), generator=generator, device=device, dtype=dtype or torch.get_default_dtype()
        )

    latent_uniforms = 2

    def latent_from_uniforms(self, u: torch.Tensor, dtype=None) -> torch.Tensor:
        """The latent ``sqrt(2 D g(T)) eps`` from uniforms ``u`` ``(2, *shape)`` (Box-Muller)."""
        return math.sqrt(2 * self.D * float(self.g(torch.tensor(self.T)))) * box_muller(u, dtype)

    def config(self) -> dict:
        """The path's ``config()`` dict: ``{"kind": "diffusion", "D", "f", "g", "T"}``."""
        return {"kind": "diffusion", "D": self.D, "f": self.f_name, "g": self.g_name, "T": self.T}


def _twin_sigma(process: KacProcess, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sigma, dsigma/ds)`` of ``sigma(s) = sqrt(Var K_s)`` in float64, without cancellation.

    With ``lam = a s``: ``Var K_s = c^2 s^2 q(lam)``, ``q = (lam + expm1(-2 lam)/2) / lam^2``
    (series ``1 - 2 lam/3 + lam^2/3 - 2 lam^3/15`` below ``lam = 1e-3``), so ``sigma = c s sqrt(q)``;
    ``d Var/ds = c^2 s r(lam)``, ``r = -expm1(-2 lam)/lam``, so ``dsigma/ds = c r / (2 sqrt(q))``,
    which tends to ``c`` (ballistic start) as ``s -> 0``.  ``a = 0`` gives ``sigma = c s``.
    """
    s = s.double()
    lam = process.a * s
    small = lam < 1e-3
    safe = torch.where(small, torch.ones_like(lam), lam)
    q = torch.where(
        small, 1 - 2 * lam / 3 + lam**2 / 3 - 2 * lam**3 / 15, (safe + 0.5 * torch.expm1(-2 * safe)) / safe**2
    )
    r = torch.where(small, 2 - 2 * lam + 4 * lam**2 / 3 - 2 * lam**3 / 3, -torch.expm1(-2 * safe) / safe)
    return process.c * s * q.sqrt(), process.c * r / (2 * q.sqrt())


class VarianceMatchedGaussianPath(_KacSchedule):
    """The Kac path's Gaussian twin: ``x_t = f(t) x0 + sigma(t) eps``, ``eps ~ N(0, I)``.

    ``sigma(t)^2 = Var K_{g(t)}`` (:meth:`kaclib.kac.KacProcess.var` of ``KacProcess(a, c)``) and
    the same ``f`` and ``g`` as :class:`KacPath` ``(a, c, f, g, T)``: every coordinate has, at
    every ``t``, the mean and variance of the Kac path's, but Gaussian noise of unbounded speed.
    Comparing the two separates the effect of finite speed from that of the noise schedule.
    Target ``u = f'(t) x0 + sigma'(t) eps`` with ``sigma' = g'(t) dsigma/ds`` at ``s = g(t)``
    (chain rule of the closed-form variance, see :func:`_twin_sigma`); latent ``N(0, sigma(T)^2)``
    (like the Kac path's, it ignores a residual mean ``f(T) x0`` when ``f = "exp"``).
    """

    name = "gaussian-twin"

    def __repr__(self):
        return (
            f"VarianceMatchedGaussianPath(a={self.a}, c={self.c}, f={self.f_name!r}, g={self.g_name!r}, "
            f"T={self.T})"
        )

    def sigma(self, t) -> torch.Tensor:
        """``sigma(t) = sqrt(Var K_{g(t)})`` (float64 for float64 input, else the input's dtype)."""
        t = torch.as_tensor(t)
        return _twin_sigma(self.process, self.g(t))[0].to(t.dtype if t.is_floating_point() else torch.float64)

    def dsigma(self, t) -> torch.Tensor:
        """``sigma'(t) = g'(t) (dsigma/ds)(g(t))``."""
        t = torch.as_tensor(t)
        out = self.dg(t).double() * _twin_sigma(self.process, self.g(t))[1]
        return out.to(t.dtype if t.is_floating_point() else torch.float64)

    def sample(self, x0: torch.Tensor, t, generator: torch.Generator | None = None) -> PathSample:
        """Draw ``x_t = f(t) x0 + sigma(t) eps`` and its target ``f' x0 + sigma' eps``."""
        tt = _expand_t(t, x0)
        _check_time_range(tt, self.T)
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        noise = self.sigma(tt) * eps
        target = self.df(tt) * x0 + self.dsigma(tt) * eps
        return PathSample(
            x_t=self.f(tt) * x0 + noise,
            target=target,
            t=torch.as_tensor(t, dtype=x0.dtype, device=x0.device).expand(x0.shape[:1]),
            x0=x0,
            noise=noise,
        )

    def conditional_velocity(self, x: torch.Tensor, x0: torch.Tensor, t) -> torch.Tensor:
        """``f' x0 + sigma' (x - f x0)/sigma``.

        Where ``sigma = 0`` (``t = 0``) the noise ``eps`` is replaced by its conditional mean 0, so
        the target is ``f'(0) x0``.
        """
        tt = _expand_t(t, x0)
        sig = self.sigma(tt)
        pos = sig > 0
        eps = torch.where(pos, (x - self.f(tt) * x0) / torch.where(pos, sig, torch.ones_like(sig)), 0.0)
        return self.df(tt) * x0 + self.dsigma(tt) * eps

    def latent_std(self) -> float:
        """``sigma(T) = sqrt(Var K_{g(T)})``."""
        return float(self.sigma(torch.tensor(self.T, dtype=torch.float64)))

    def sample_latent(self, shape, generator=None, device=None, dtype=None) -> torch.Tensor:
        """A draw of the latent ``sigma(T) eps`` (``eps ~ N(0, 1)``) with shape ``shape``."""
        return self.latent_std() * torch.randn(
            tuple(shape), generator=generator, device=device, dtype=dtype or torch.get_default_dtype()
        )

    latent_uniforms = 2

    def latent_from_uniforms(self, u: torch.Tensor, dtype=None) -> torch.Tensor:
        """The latent ``sigma(T) eps`` from uniforms ``u`` ``(2, *shape)`` (Box-Muller)."""
        return self.latent_std() * box_muller(u, dtype)

    def config(self) -> dict:
        """The path's ``config()`` dict: ``{"kind": "gaussian-twin", "a", "c", "f", "g", "T"}``."""
        return {
            "kind": "gaussian-twin",
            "a": self.a,
            "c": self.c,
            "f": self.f_name,
            "g": self.g_name,
            "T": self.T,
        }


class GaussianPath:
    """Rectified flow / Gaussian flow matching: ``x_t = (1 - t) x0 + t eps`` on ``[0, 1]``."""

    name = "gaussian"
    T = 1.0

    def __repr__(self):
        return "GaussianPath()"

    def sample(self, x0: torch.Tensor, t, generator: torch.Generator | None = None) -> PathSample:
        """Draw ``x_t = (1 - t) x0 + t eps`` and its target ``eps - x0`` (a :class:`PathSample`)."""
        tt = _expand_t(t, x0)
        _check_time_range(tt, self.T)
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        x_t = (1 - tt) * x0 + tt * eps
        return PathSample(
            x_t=x_t,
            target=eps - x0,
            t=torch.as_tensor(t, dtype=x0.dtype, device=x0.device).expand(x0.shape[:1]),
            x0=x0,
            noise=eps,
        )

    def conditional_velocity(self, x: torch.Tensor, x0: torch.Tensor, t) -> torch.Tensor:
        """``(x - x0)/t``: the velocity of the straight line through ``x0`` and ``x``."""
        tt = _expand_t(t, x0)
        return (x - x0) / tt

    def sample_latent(self, shape, generator=None, device=None, dtype=None) -> torch.Tensor:
        """A draw of the latent ``eps ~ N(0, 1)`` with shape ``shape``."""
        return torch.randn(
            tuple(shape), generator=generator, device=device, dtype=dtype or torch.get_default_dtype()
        )

    latent_uniforms = 2

    def latent_from_uniforms(self, u: torch.Tensor, dtype=None) -> torch.Tensor:
        """The latent ``eps ~ N(0, 1)`` from uniforms ``u`` ``(2, *shape)`` (Box-Muller)."""
        return box_muller(u, dtype)

    def config(self) -> dict:
        """The path's ``config()`` dict: ``{"kind": "gaussian", "T": 1.0}``."""
        return {"kind": "gaussian", "T": 1.0}


#: the fields of each path kind, in the order of its ``config()`` dict (the form saved in run JSON)
PATH_FIELDS = {
    "kac": ("a", "c", "f", "g", "T"),
    "gaussian": ("T",),
    "diffusion": ("D", "f", "g", "T"),
    "gaussian-twin": ("a", "c", "f", "g", "T"),
    "flight": ("a", "c", "f", "g", "T"),
}


@dataclass(frozen=True)
class PathConfig:
    """A probability path's configuration: one frozen value from a recipe to a run's JSON.

    ``kind`` is one of :data:`PATH_FIELDS`; the other fields are the path's parameters (``a`` flip
    rate, ``c`` speed, ``D`` diffusion coefficient, ``f`` mean schedule, ``g`` clock, ``T``
    horizon); a field the kind does not use must stay ``None`` (or its default).  The defaults are
    the official Kac-flow code's (``a, c = 9, 3``, ``g = t``); a recipe's teacher path is chosen
    by measurement (:mod:`kaclib.recipe`).  Validated once, on construction, by building the path.
    :meth:`to_dict` is the path's ``config()`` dict, the form saved beside every checkpoint, and
    :meth:`build` the path object.
    """

    kind: str = "kac"
    a: float | None = None
    c: float | None = None
    D: float | None = None
    f: str = "linear"
    g: str = "t"
    T: float = 1.0

    _DEFAULTS = {
        "kac": {"a": 9.0, "c": 3.0},
        "gaussian-twin": {"a": 9.0, "c": 3.0},
        "flight": {"a": 9.0, "c": 3.0},
        "diffusion": {"D": 0.5},
    }

    def __post_init__(self):
        if self.kind not in PATH_FIELDS:
            raise ValueError(
                f"path kind must be one of {', '.join(map(repr, PATH_FIELDS))}, got {self.kind!r}"
            )
        used = PATH_FIELDS[self.kind]
        for name in ("a", "c", "D"):
            value = getattr(self, name)
            if name not in used:
                if value is not None:
                    raise ValueError(f"a {self.kind!r} path has no parameter {name!r}")
            elif value is None:
                object.__setattr__(self, name, self._DEFAULTS[self.kind][name])
            else:
                object.__setattr__(self, name, check_finite_param(name, value))  # ranges: the path's own
        if self.kind == "gaussian":
            if self.T != 1.0 or (self.f, self.g) != ("linear", "t"):
                raise ValueError("the gaussian path has T = 1 and no schedule parameters")
        object.__setattr__(self, "T", float(self.T))
        self.build()  # validates the schedule names and every parameter

    @classmethod
    def from_dict(cls, d) -> "PathConfig":
        """From a ``config()`` dict (or a :class:`PathConfig`); one-line errors on unknown fields."""
        if isinstance(d, PathConfig):
            return d
        if not isinstance(d, dict) or "kind" not in d:
            raise ValueError(f"path must be a PathConfig or a dict with a 'kind', got {d!r}")
        d = dict(d)
        kind = d.pop("kind")
        allowed = PATH_FIELDS.get(kind, ())
        unknown = sorted(set(d) - set(allowed))
        if kind in PATH_FIELDS and unknown:
            raise ValueError(f"a {kind!r} path has no parameter(s) {', '.join(unknown)}")
        return cls(kind=kind, **d)

    def to_dict(self) -> dict:
        """The path's ``config()`` dict: ``{"kind", <its fields>}``."""
        return {"kind": self.kind, **{name: getattr(self, name) for name in PATH_FIELDS[self.kind]}}

    def replace(self, **changes) -> "PathConfig":
        """The same path with fields changed (validated again)."""
        return PathConfig.from_dict({**self.to_dict(), **changes})

    def build(self):
        """The path object (:class:`KacPath`, :class:`GaussianPath`, ...)."""
        args = {
            name: getattr(self, name)
            for name in PATH_FIELDS[self.kind]
            if name != "T" or self.kind != "gaussian"
        }
        if self.kind == "kac":
            return KacPath(**args)
        if self.kind == "gaussian":
            return GaussianPath()
        if self.kind == "diffusion":
            return DiffusionPath(**args)
        if self.kind == "gaussian-twin":
            return VarianceMatchedGaussianPath(**args)
        from .flights import RandomFlightPath  # flights imports this module

        return RandomFlightPath(**args)


def build_path(cfg):
    """Path from a :class:`PathConfig` or its ``config()`` dictionary.

    The dictionary is the form saved beside every checkpoint.
    """
    return PathConfig.from_dict(cfg).build()
