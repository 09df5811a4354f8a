"""Random flights: finite-speed motion with coupled coordinates (issue 12, section 1).

A particle starts at 0 in a direction drawn uniformly on the sphere ``S^{dim-1}``, moves at speed
``c`` and redraws its direction uniformly at the jumps of a Poisson clock of rate ``a`` (Stadje
1987; Orsingher, Kolesnik and De Gregorio for the planar laws).  Unlike the coordinate-wise product
of 1D Kac processes (whose velocity has norm ``c sqrt(d)``), the flight's velocity has norm ``c``.

Relation to the Kac process
---------------------------
In ``dim = 1`` a redraw picks ``+1`` or ``-1`` with probability 1/2 each, so only half of the jumps
reverse the direction: the reversals form a thinned Poisson process of rate ``a/2``.  **The 1D
random flight with rate a is the Kac process with rate a/2 in law** (as processes, not only at
fixed times), ``RandomFlight(a, c, 1) = KacProcess(a / 2, c)``; see :meth:`RandomFlight.kac_equivalent`.
Both have velocity autocorrelation ``E[V_0 . V_u] = c^2 exp(-a u)``, hence (any ``dim``)::

    E|X_s|^2 = 2 c^2 (s/a - (1 - exp(-a s))/a^2)                          (:meth:`RandomFlight.mean_square`)

The planar law (``dim = 2``)
----------------------------
A singular part of mass ``exp(-a s)`` uniform on the circle ``|x| = c s`` (no jump yet) and, inside
the disc, the density (Stadje 1987; Kolesnik and Orsingher 2005)::

    p(x, s) = a / (2 pi c) * exp(-a s + (a/c) rho) / rho,     rho = sqrt(c^2 s^2 - |x|^2).

Its mass is ``1 - exp(-a s)`` (integrate in polar coordinates with ``r dr = -rho d rho``), and the
radial CDF has a closed form, ``P(|X_s| <= r) = 1 - exp(-a s + (a/c) sqrt(c^2 s^2 - r^2))`` for
``r < c s`` (:meth:`RandomFlight.planar_radial_cdf`).

Does the telegrapher equation hold for the flight's law?
--------------------------------------------------------
Measured by :func:`telegraph_residual_2d` (central differences in float64 on the closed-form
density, ``tests/test_flights.py`` pins the numbers):

* **Inside the disc, yes**: the density solves ``u_ss + 2a u_s = c^2 Lap u`` (the 1D flight with
  the same rate, i.e. Kac with rate ``a/2``, has damping ``a`` instead).  Largest relative residual
  1e-6 to 6e-5 on the 15 x 15 grids of the tests, the finite-difference error.  Analytically:
  ``u = exp(-a s) F(rho)`` with ``F = exp(k rho)/rho``, ``k = a/c``; in 2+1 dimensions the wave
  operator acts on functions of ``rho`` as ``c^2 (F'' + 2F'/rho) = c^2 G''/rho`` for ``F = G/rho``,
  so ``F_ss - c^2 Lap F = a^2 F`` (Klein-Gordon) and
  ``u_ss + 2a u_s - c^2 Lap u = exp(-a s)(F_ss - a^2 F - c^2 Lap F) = 0``.  The form
  ``u_ss + a u_s = (c^2/2) Lap u`` (the same diffusion limit, ``D = c^2/(2a)`` per coordinate) is
  wrong there: its largest relative residual is 0.29 to 0.33.  A least-squares fit of
  ``u_ss + alpha u_s = beta Lap u`` on the interior recovers ``(alpha, beta) = (2a, c^2)``: it is
  the only equation of that family the interior obeys.
* **For the law as a whole, no**: any compactly supported distributional solution of
  ``u_ss + 2a u_s = c^2 Lap u`` in the plane has ``m'' + 2a m' = 4 c^2`` for ``m(s) = E|X_s|^2``
  (integrate against ``|x|^2``, ``Lap |x|^2 = 4``), whatever its initial data; the flight gives
  ``m'' + 2a m' = 4 c^2 - 2 c^2 exp(-a s)``: the ring of mass ``exp(-a s)`` at the front does not
  obey the equation that the interior obeys.  (The moments obey the other form,
  ``m'' + a m' = 2 c^2``, which fails pointwise.)  So, unlike in 1D, no equation
  ``u_ss + alpha u_s = beta Lap u`` governs the planar flight's law.  For the open question this
  means a coupled finite-speed process need not come with a PDE: a generative model built on it
  cannot borrow the telegrapher machinery of the 1D Kac flow (closed-form conditional velocity
  from the equation's solution) and uses the simulation-based regression on ``V_s`` instead
  (``E[V_s | X_s]`` is the probability-flow velocity, checked in 1D by
  :func:`flight_velocity_regression`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .kac import KacProcess, check_finite_param, poisson
from .paths import PathSample, _check_time_range, _expand_t, _Schedule

__all__ = [
    "RandomFlight",
    "RandomFlightPath",
    "TelegraphResidual",
    "VelocityRegression",
    "flight_velocity_regression",
    "telegraph_residual_2d",
]


def _times(s) -> torch.Tensor:
    s = s if isinstance(s, torch.Tensor) else torch.as_tensor(s, dtype=torch.get_default_dtype())
    if not s.is_floating_point():
        s = s.to(torch.get_default_dtype())
    if s.ndim != 1:
        raise ValueError(f"s must have shape (n,), got {tuple(s.shape)}")
    if torch.isnan(s).any() or (s < 0).any():
        raise ValueError("s must be >= 0 and not NaN")
    return s


@dataclass(frozen=True)
class RandomFlight:
    """Random flight in ``R^dim`` with direction-redraw rate ``a >= 0`` and speed ``c > 0``.

    Parameters
    ----------
    a : float
        Rate of the Poisson clock at whose jumps the direction is redrawn uniformly on the sphere.
    c : float
        Speed; ``|V_s| = c`` always and ``|X_s| <= c s``.
    dim : int
        Dimension (``>= 1``).  ``dim = 1`` is the Kac process with rate ``a/2`` in law.
    """

    a: float
    c: float
    dim: int

    def __post_init__(self):
        object.__setattr__(self, "a", check_finite_param("a", self.a, nonneg=True))
        object.__setattr__(self, "c", check_finite_param("c", self.c, positive=True))
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim < 1:
            raise ValueError(f"dim must be an int >= 1, got {self.dim!r}")

    def kac_equivalent(self) -> KacProcess:
        """The Kac process with the same law as the 1D flight: ``KacProcess(a / 2, c)``."""
        if self.dim != 1:
            raise ValueError(f"only the 1D flight is a Kac process, this one has dim = {self.dim}")
        return KacProcess(self.a / 2, self.c)

    @classmethod
    def matching_kac(cls, a: float, c: float, dim: int) -> RandomFlight:
        """The flight in ``R^dim`` matching ``dim`` Kac processes: rate ``2a``, speed ``c sqrt(dim)``.

        Its coordinates have the covariance function of the product of ``dim`` Kac processes with rate
        ``a`` and speed ``c``.

        Per coordinate the flight's velocity autocorrelation is ``(c_f^2/dim) exp(-a_f u)``, the Kac
        process's ``c^2 exp(-2 a u)``; so every second moment matches at every time (and ``|V|`` is
        ``c sqrt(dim)``, the Kac product's norm), while the coordinates stay dependent.  In 1D this is
        the Kac process itself.  A flight with the Kac pair ``(a, c)`` unchanged is much narrower in
        high dimension: in ``R^64`` with ``(25, 2)`` the per-coordinate standard deviation at ``s = 1``
        is 0.069 against 0.396 (:meth:`mean_square`, :meth:`kaclib.kac.KacProcess.var`).
        """
        return cls(2.0 * check_finite_param("a", a, nonneg=True), c * math.sqrt(int(dim)), int(dim))

    def mean_square(self, s) -> torch.Tensor:
        """``E|X_s|^2 = 2 c^2 (s/a - (1 - exp(-a s))/a^2)`` (``c^2 s^2`` when ``a = 0``), any ``dim``."""
        s = torch.as_tensor(s, dtype=torch.float64)
        if self.a == 0:
            return (self.c * s) ** 2
        lam = self.a * s
        return 2 * (self.c / self.a) ** 2 * (lam + torch.expm1(-lam))

    def _directions(self, shape, generator, dtype, device) -> torch.Tensor:
        z = torch.randn(tuple(shape) + (self.dim,), generator=generator, dtype=dtype, device=device)
        return z / torch.linalg.vector_norm(z, dim=-1, keepdim=True)

    def sample(self, s, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact draws ``(X_s, V_s)``, each of shape ``(n, dim)``, for times ``s`` of shape ``(n,)``.

        ``N ~ Poisson(a s)`` jumps; given ``N`` the jump times are sorted uniforms on ``[0, s]`` and
        the ``N + 1`` directions are i.i.d. uniform on the sphere.  Particles are padded to the
        largest ``N`` (padded jumps at time ``s`` keep the last direction), and the position is
        summed by parts, ``X = c (s d_N - sum_k t_k (d_k - d_{k-1}))``, so a particle that never
        changes direction sits exactly on ``c s d_0``.  Vectorised; no loop over particles.
        """
        s = _times(s)
        n, dt, dev = s.shape[0], s.dtype, s.device
        N = (
            poisson(self.a * s, generator=generator).long()
            if self.a > 0
            else torch.zeros(n, dtype=torch.long, device=dev)
        )
        m = int(N.max()) if n else 0
        u = torch.rand((n, m), generator=generator, dtype=dt, device=dev) * s[:, None]
        k = torch.arange(m, device=dev)
        t = torch.where(k[None] < N[:, None], u, s[:, None]).sort(dim=1).values  # (n, m), padded with s
        d = self._directions((n, m + 1), generator, dt, dev)
        idx = torch.minimum(torch.arange(m + 1, device=dev)[None], N[:, None])  # forward-fill d_N
        d = d.gather(1, idx[..., None].expand(n, m + 1, self.dim))
        last = d[:, -1]
        x = s[:, None] * last - (t[..., None] * (d[:, 1:] - d[:, :-1])).sum(1)
        x = self.c * x
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        front = (self.c * s)[:, None]
        x = torch.where(norm > front, x * (front / norm.clamp(min=torch.finfo(dt).tiny)), x)
        return x, self.c * last

    # ------------------------------------------------------------------ the planar law
    def _planar(self):
        if self.dim != 2:
            raise ValueError(f"the closed-form planar law needs dim = 2, got {self.dim}")

    def planar_density(self, x, s) -> torch.Tensor:
        """Density of the absolutely continuous part of the law of ``X_s`` (``dim = 2``).

        ``a/(2 pi c) exp(-a s + (a/c) rho)/rho`` with ``rho = sqrt(c^2 s^2 - |x|^2)`` on the open
        disc ``|x| < c s``, zero elsewhere; ``x`` has shape ``(..., 2)``, ``s`` broadcasts to ``(...)``.
        """
        self._planar()
        x = torch.as_tensor(x, dtype=torch.float64)
        s = torch.as_tensor(s, dtype=x.dtype)
        r2 = (x * x).sum(-1)
        front = self.c * s
        inside = r2 < front * front
        rho = torch.sqrt(torch.where(inside, (front - r2.sqrt()) * (front + r2.sqrt()), torch.ones_like(r2)))
        log_p = -self.a * s + (self.a / self.c) * rho - torch.log(rho)
        p = self.a / (2 * math.pi * self.c) * torch.exp(log_p)
        return torch.where(inside, p, torch.zeros_like(p))

    def planar_radial_cdf(self, r, s) -> torch.Tensor:
        """``P(|X_s| <= r)`` for ``dim = 2``, the ring of mass ``exp(-a s)`` at ``r = c s`` included.

        It is ``1 - exp(-a s + (a/c) sqrt(c^2 s^2 - r^2))`` on ``0 <= r < c s``, 1 from ``c s`` on.
        """
        self._planar()
        r = torch.as_tensor(r, dtype=torch.float64)
        s = torch.as_tensor(s, dtype=r.dtype)
        front = self.c * s
        inside = r < front
        rho = torch.sqrt(torch.where(inside, (front - r) * (front + r), torch.zeros_like(r)))
        cdf = -torch.expm1(-self.a * s + (self.a / self.c) * rho)
        cdf = torch.where(inside, cdf, torch.ones_like(cdf))
        return torch.where(r < 0, torch.zeros_like(cdf), cdf)


# =============================================================================== E[V | X]


@dataclass(frozen=True)
class VelocityRegression:
    """Binned regression of ``V_s`` on ``X_s`` for a 1D flight.

    ``centres``, ``counts``: bin centres and interior draws per bin; ``mean_v``: the average of
    ``V`` per bin; ``mean_field``: the average of the closed-form Kac field ``v(X, s)`` over the same
    draws; ``se``: the standard error of ``mean_v - mean_field`` (from the per-bin spread of
    ``V - v(X)``); ``z``: ``(mean_v - mean_field)/se``; ``atoms_exact``: whether every draw on a
    front has ``V = sign(X) c`` (the field's value there); ``n_atoms``: their number.
    """

    centres: torch.Tensor
    counts: torch.Tensor
    mean_v: torch.Tensor
    mean_field: torch.Tensor
    se: torch.Tensor
    z: torch.Tensor
    atoms_exact: bool
    n_atoms: int


def flight_velocity_regression(
    process: RandomFlight,
    s: float,
    n: int = 200_000,
    bins: int = 24,
    generator: torch.Generator | None = None,
    min_count: int = 200,
    field: KacProcess | None = None,
) -> VelocityRegression:
    """Check ``E[V_s | X_s = x] = v(x, s)``, the probability-flow velocity, on the 1D flight.

    Draws ``n`` exact ``(X_s, V_s)``, bins the interior draws ``|X| < c s`` on ``bins`` equal bins,
    and compares the bin average of ``V`` with the bin average of the closed-form field of
    ``process.kac_equivalent()`` evaluated at the same draws (so binning introduces no bias: under
    the claim the difference has mean exactly 0).  Bins with fewer than ``min_count`` draws are
    dropped.  ``field``: another Kac process whose field to compare with (a power check: the field
    of ``KacProcess(a, c)`` must be rejected).  Returns a :class:`VelocityRegression`.
    """
    kac = field if field is not None else process.kac_equivalent()
    st = torch.full((n,), float(s), dtype=torch.float64)
    x, v = process.sample(st, generator=generator)
    x, v = x[:, 0], v[:, 0]
    front = process.c * float(s)
    on_front = x.abs() >= front * (1 - 1e-12)
    atoms_exact = bool((v[on_front] == torch.sign(x[on_front]) * process.c).all())
    xi, vi = x[~on_front], v[~on_front]
    resid = vi - kac.velocity(xi, st[: xi.numel()])
    edges = torch.linspace(-front, front, bins + 1, dtype=torch.float64)
    b = torch.bucketize(xi, edges[1:-1])
    counts = torch.bincount(b, minlength=bins).double()
    sum_v = torch.zeros(bins, dtype=torch.float64).index_add_(0, b, vi)
    sum_r = torch.zeros(bins, dtype=torch.float64).index_add_(0, b, resid)
    sum_r2 = torch.zeros(bins, dtype=torch.float64).index_add_(0, b, resid * resid)
    keep = counts >= min_count
    cnt = counts[keep]
    mean_r = sum_r[keep] / cnt
    var_r = (sum_r2[keep] / cnt - mean_r**2) * cnt / (cnt - 1)
    se = torch.sqrt(var_r / cnt)
    mean_v = sum_v[keep] / cnt
    return VelocityRegression(
        centres=((edges[:-1] + edges[1:]) / 2)[keep],
        counts=cnt,
        mean_v=mean_v,
        mean_field=mean_v - mean_r,
        se=se,
        z=mean_r / se,
        atoms_exact=atoms_exact,
        n_atoms=int(on_front.sum()),
    )


# =============================================================================== telegrapher residual


@dataclass(frozen=True)
class TelegraphResidual:
    """Residuals of two candidate damped-wave equations on the planar flight's interior density.

    ``points``: the ``(m, 2)`` evaluation points; ``rel_half``: ``|u_ss + a u_s - (c^2/2) Lap u|``
    over ``|u_ss| + a|u_s| + (c^2/2)|Lap u|``; ``rel_full``: the same for ``u_ss + 2a u_s - c^2 Lap u``;
    ``max_rel_half``, ``max_rel_full``: their maxima; ``fit``: the least-squares ``(alpha, beta)`` of
    ``u_ss + alpha u_s = beta Lap u`` over the points; ``fit_rel``: its largest relative residual.
    """

    points: torch.Tensor
    rel_half: torch.Tensor
    rel_full: torch.Tensor
    max_rel_half: float
    max_rel_full: float
    fit: tuple[float, float]
    fit_rel: float


def _grid_points(grid, front: float) -> torch.Tensor:
    if isinstance(grid, int):
        if grid < 2:
            raise ValueError(f"grid must be >= 2 points per axis, got {grid}")
        g = torch.linspace(-0.85 * front, 0.85 * front, grid, dtype=torch.float64)
        pts = torch.cartesian_prod(g, g)
        return pts[(pts * pts).sum(1).sqrt() <= 0.85 * front]
    pts = torch.as_tensor(grid, dtype=torch.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"grid must be an int or (m, 2) points, got shape {tuple(pts.shape)}")
    return pts


def telegraph_residual_2d(a: float, c: float, s: float, grid=15, h: float | None = None) -> TelegraphResidual:
    """Residuals of two telegraph equations on the closed-form planar density at time ``s``.

    The equations are ``u_ss + a u_s - (c^2/2) Lap u`` and ``u_ss + 2a u_s - c^2 Lap u``; the density is
    :meth:`RandomFlight.planar_density`.

    Parameters
    ----------
    a, c, s : float
        Rate, speed and time (``s > 0``).
    grid : int or (m, 2) array
        Points: an int ``n`` takes the ``n x n`` grid on ``[-0.85 c s, 0.85 c s]^2`` inside the disc
        of radius ``0.85 c s``.
    h : float, optional
        Finite-difference step in ``s`` and ``x`` (default ``1e-3 * max(s, c s)``); central second
        differences in float64, truncation error ``O(h^2)``.

    Returns
    -------
    TelegraphResidual
    """
    flight = RandomFlight(a, c, 2)
    s = check_finite_param("s", s, positive=True)
    pts = _grid_points(grid, c * s)
    h = float(h) if h is not None else 1e-3 * max(s, c * s)
    p = lambda dx, dy, ds: flight.planar_density(pts + torch.tensor([dx, dy], dtype=torch.float64), s + ds)
    p0 = p(0, 0, 0)
    u_s = (p(0, 0, h) - p(0, 0, -h)) / (2 * h)
    u_ss = (p(0, 0, h) - 2 * p0 + p(0, 0, -h)) / h**2
    lap = (p(h, 0, 0) + p(-h, 0, 0) + p(0, h, 0) + p(0, -h, 0) - 4 * p0) / h**2
    rel_half = (u_ss + a * u_s - c**2 / 2 * lap).abs() / (u_ss.abs() + a * u_s.abs() + c**2 / 2 * lap.abs())
    rel_full = (u_ss + 2 * a * u_s - c**2 * lap).abs() / (u_ss.abs() + 2 * a * u_s.abs() + c**2 * lap.abs())
    A = torch.stack([u_s, -lap], 1)  # u_ss + alpha u_s - beta lap = 0
    sol = torch.linalg.lstsq(A, -u_ss[:, None]).solution[:, 0]
    alpha, beta = float(sol[0]), float(sol[1])
    fit_rel = (u_ss + alpha * u_s - beta * lap).abs() / (
        u_ss.abs() + abs(alpha) * u_s.abs() + abs(beta) * lap.abs()
    )
    return TelegraphResidual(
        points=pts,
        rel_half=rel_half,
        rel_full=rel_full,
        max_rel_half=float(rel_half.max()),
        max_rel_full=float(rel_full.max()),
        fit=(alpha, beta),
        fit_rel=float(fit_rel.max()),
    )


# =============================================================================== the generative path


class RandomFlightPath(_Schedule):
    """Flow-matching path ``x_t = f(t) x0 + X_{g(t)}`` with a random flight in ``R^d``.

    ``d`` is the number of coordinates of one data point (``x0[i].numel()``).

    Same interface as :class:`kaclib.paths.KacPath` (``sample``, ``sample_latent``, ``config``,
    ``velocity_bound``); ``f`` in ``{"linear", "exp"}``, ``g`` in ``{"t", "t2"}``.  The flight's
    conditional velocity has no closed form, so the regression target is the simulated
    ``f'(t) x0 + g'(t) V_{g(t)}`` with ``|V| = c``: its conditional mean given ``x_t`` is the
    marginal probability-flow velocity, which is what flow matching regresses on.  There are no
    counter-based latents (``latent_from_uniforms``): the number of uniforms per image is random.
    For a comparison with a Kac path ``(a, c)`` on data with ``d`` coordinates at equal second
    moments, use ``RandomFlightPath(2a, c sqrt(d))`` (:meth:`RandomFlight.matching_kac`).
    """

    name = "flight"

    def __init__(self, a: float = 9.0, c: float = 3.0, f: str = "linear", g: str = "t", T: float = 1.0):
        super().__init__(f, g, T)
        RandomFlight(a, c, 1)  # validates a and c
        self.a, self.c = float(a), float(c)

    def __repr__(self):
        return f"RandomFlightPath(a={self.a}, c={self.c}, f={self.f_name!r}, g={self.g_name!r}, T={self.T})"

    def flight(self, dim: int) -> RandomFlight:
        """The random flight in ``R^dim`` of this path."""
        return RandomFlight(self.a, self.c, int(dim))

    def sample(self, x0: torch.Tensor, t, generator: torch.Generator | None = None) -> PathSample:
        """``x_t``, the target ``f' x0 + g' V_{g(t)}`` and the noise ``X_{g(t)}`` for a batch ``x0``.

        ``x0`` has shape ``(B, ...)``; the times ``t`` are a scalar or ``(B,)``.
        """
        if x0.ndim < 2:
            raise ValueError(
                f"x0 must have shape (B, ...) with at least one coordinate, got {tuple(x0.shape)}"
            )
        tt = _expand_t(t, x0)
        _check_time_range(tt, self.T)
        B, d = x0.shape[0], x0[0].numel()
        s = self.g(tt).reshape(-1).expand(B) if tt.numel() == 1 else self.g(tt).reshape(B)
        X, V = self.flight(d).sample(s.to(x0.dtype).contiguous(), generator=generator)
        noise, vel = X.reshape(x0.shape), V.reshape(x0.shape)
        x_t = self.f(tt) * x0 + noise
        target = self.df(tt) * x0 + self.dg(tt) * vel
        times = torch.as_tensor(t, dtype=x0.dtype, device=x0.device).expand(x0.shape[:1])
        return PathSample(x_t=x_t, target=target, t=times, x0=x0, noise=noise)

    def sample_latent(
        self, shape, generator: torch.Generator | None = None, device=None, dtype=None
    ) -> torch.Tensor:
        """``X_{g(T)}`` for ``shape = (n, ...)``: one flight in ``R^d``, ``d = prod(shape[1:])``, per row."""
        shape = tuple(int(v) for v in shape)
        if len(shape) < 2:
            raise ValueError(f"shape must be (n, ...) with at least one coordinate, got {shape}")
        d = math.prod(shape[1:])
        s = torch.full(
            (shape[0],),
            float(self.g(torch.tensor(self.T))),
            dtype=dtype or torch.get_default_dtype(),
            device=device,
        )
        return self.flight(d).sample(s, generator=generator)[0].reshape(shape)

    def velocity_bound(self, t, data_bound: float = 1.0) -> torch.Tensor:
        """Per-coordinate bound ``|f'(t)| data_bound + g'(t) c`` (each ``|V_k| <= |V| = c``).

        The per-image norm of the target is at most ``|f'| ||x0|| + g' c``.
        """
        t = torch.as_tensor(t)
        return self.df(t).abs() * data_bound + self.dg(t) * self.c

    def config(self) -> dict:
        """The path's JSON config: ``kind``, ``a``, ``c``, ``f``, ``g`` and ``T``."""
        return {"kind": "flight", "a": self.a, "c": self.c, "f": self.f_name, "g": self.g_name, "T": self.T}
