"""Independent checks of :class:`kaclib.kac.KacProcess`.

The Kac process simulated from its definition, and the telegraph PDE its law solves:

* :func:`simulate_kac`: whole sample paths of the Kac process (a particle at speed ``c`` that
  reverses at the jumps of a Poisson clock of rate ``a``), evaluated exactly at any times.  It is
  the process's *definition* simulated directly, so it checks :class:`kaclib.kac.KacProcess`
  (whose sampler uses the Beta representation of the law) independently;
  :func:`kolmogorov_to_law` and :func:`kolmogorov_to_heat` measure the distance of the simulated
  law to the exact one and to its diffusion limit.
* The PDE: :func:`telegraph_fd` (a finite-difference solver of the telegraph equation),
  :func:`smoothed_kac_law`, and the residuals :func:`pde_residual` (the telegraph equation) and
  :func:`continuity_residual` (the continuity equation of the conditional velocity).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .kac import KacProcess, check_finite_param

__all__ = [
    "KacTrajectories",
    "simulate_kac",
    "kolmogorov_to_law",
    "kolmogorov_to_heat",
    "telegraph_fd",
    "smoothed_kac_law",
    "pde_residual",
    "continuity_residual",
]


# =============================================================================== Kac sample paths


@dataclass
class KacTrajectories:
    """``n`` Kac paths on ``[0, s_max]``: initial directions (+-1) and the clock's jump times.

    ``flips`` is ``(n, K)``, sorted along each row; entries beyond ``s_max`` are unused.
    """

    a: float
    c: float
    s_max: float
    direction: torch.Tensor  # (n,)
    flips: torch.Tensor  # (n, K)

    @property
    def n(self) -> int:
        """Number of paths."""
        return self.direction.shape[0]

    def position(self, s) -> torch.Tensor:
        """Exact positions ``X_s``, shape ``(n, len(s))`` (``s``: a number or a 1D tensor in [0, s_max])."""
        s = torch.as_tensor(s, dtype=self.flips.dtype).reshape(-1)
        if (s < 0).any() or (s > self.s_max * (1 + 1e-12)).any():
            raise ValueError(f"times must lie in [0, s_max] = [0, {self.s_max}]")
        t, x = self.corners()  # (n, K + 2)
        # segment k (k reversals so far) starts at corner k: X_s = x_k + c dir (-1)^k (s - t_k)
        k = torch.searchsorted(
            self.flips.contiguous(), s.expand(self.n, -1).contiguous(), right=True
        )  # (n, m)
        k = k.clamp(max=t.shape[1] - 2)
        tk, xk = t.gather(1, k), x.gather(1, k)
        sign = 1.0 - 2.0 * (k % 2).to(t.dtype)
        return xk + self.c * self.direction[:, None] * sign * (s[None, :] - tk)

    def corners(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The corners ``(times, positions)`` of every path, both ``(n, K + 2)``.

        Every path at 0, at each reversal and at ``s_max`` (reversals after ``s_max`` are clamped to
        ``s_max``).  Cost ``O(n K)``.
        """
        zero = torch.zeros(self.n, 1, dtype=self.flips.dtype)
        t = torch.cat([zero, self.flips.clamp(max=self.s_max), torch.full_like(zero, self.s_max)], dim=1)
        signs = 1.0 - 2.0 * (torch.arange(t.shape[1] - 1) % 2).to(t.dtype)
        steps = (t[:, 1:] - t[:, :-1]) * signs
        x = self.c * self.direction[:, None] * torch.cat([zero, steps.cumsum(1)], dim=1)
        return t, x

    def max_speed_ratio(self) -> float:
        """``max |X_s| / (c s)`` over all paths and ``0 < s <= s_max``.

        Between reversals ``|X_s| - c s`` is convex in ``s`` (the absolute value of a linear function
        minus a linear one), so its maximum on each segment is at a corner: checking the corners
        checks every time.
        """
        t, x = self.corners()
        pos = t > 0
        return float((x.abs()[pos] / (self.c * t[pos])).max())

    def n_flips(self, s: float) -> torch.Tensor:
        """Number of reversals before time ``s`` for each path."""
        return (self.flips <= s).sum(1)

    def polyline(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Times and positions of path ``i``'s corners (0, its reversals, ``s_max``).

        The path is the straight line between consecutive corners.
        """
        f = self.flips[i]
        times = torch.cat(
            [torch.zeros(1, dtype=f.dtype), f[f < self.s_max], torch.tensor([self.s_max], dtype=f.dtype)]
        )
        full = KacTrajectories(self.a, self.c, self.s_max, self.direction[i : i + 1], self.flips[i : i + 1])
        return times, full.position(times)[0]


def simulate_kac(
    process: KacProcess,
    n_paths: int,
    s_max: float,
    generator: torch.Generator | None = None,
    dtype=torch.float64,
) -> KacTrajectories:
    """Simulate ``n_paths`` paths of ``process`` on ``[0, s_max]`` from its definition.

    The initial direction is +-1 with probability 1/2; the reversal times are the partial sums of
    independent ``Exp(a)`` waiting times.  Enough waiting times are drawn that every path's clock
    passes ``s_max``.
    """
    if not isinstance(n_paths, int) or n_paths < 1:
        raise ValueError(f"n_paths must be a positive int, got {n_paths!r}")
    s_max = check_finite_param("s_max", s_max, positive=True)
    a = process.a
    direction = torch.where(torch.rand(n_paths, generator=generator, dtype=dtype) < 0.5, -1.0, 1.0).to(dtype)
    lam = a * s_max
    k = int(lam + 10 * math.sqrt(lam) + 20)
    if a == 0:
        flips = torch.full((n_paths, 1), math.inf, dtype=dtype)
    else:
        while True:
            waits = -torch.log1p(-torch.rand(n_paths, k, generator=generator, dtype=dtype)) / a
            flips = waits.cumsum(1)
            if bool((flips[:, -1] > s_max).all()):
                break
            k *= 2
    return KacTrajectories(a=a, c=process.c, s_max=s_max, direction=direction, flips=flips)


def kolmogorov_to_law(process: KacProcess, s: float, samples: torch.Tensor, n_grid: int = 8001) -> float:
    """Kolmogorov distance ``sup_x |F_n(x) - F(x)|`` between draws of ``X_s`` and the exact law.

    Atoms are included: both one-sided limits are compared at every sample, so the jumps of ``F``
    at the fronts are handled exactly.

    The exact CDF is computed on ``n_grid`` points of ``[-c s, c s]`` (``KacProcess.cdf``) and
    interpolated linearly in between: the interpolation error, at most ``h^2 max|p'| / 8`` with
    ``h = 2 c s / (n_grid - 1)``, is far below the sampling error of any feasible ``n``.
    """
    xs = samples.double().reshape(-1).sort().values
    n = len(xs)
    front = process.c * s
    atom = float(process.atom_mass(torch.tensor(float(s), dtype=torch.float64))) / 2
    grid = torch.linspace(-front, front, n_grid, dtype=torch.float64)
    Fg = process.cdf(grid, torch.full_like(grid, float(s))).double()
    Fg[0], Fg[-1] = atom, 1.0 - atom  # one-sided limits inside the fronts
    F = torch.from_numpy(np.interp(xs.numpy(), grid.numpy(), Fg.numpy()))
    on_left = xs <= -front * (1 - 1e-12)
    on_right = xs >= front * (1 - 1e-12)
    F = torch.where(on_right, torch.ones_like(F), F)
    F = torch.where(on_left, torch.full_like(F, atom), F)
    on_front = on_left | on_right
    F_left = F - torch.where(on_front, torch.full_like(F, atom), torch.zeros_like(F))
    emp_hi = torch.searchsorted(xs, xs, right=True).double() / n
    emp_lo = torch.searchsorted(xs, xs, right=False).double() / n
    return float(torch.maximum((emp_hi - F).abs(), (emp_lo - F_left).abs()).max())


def kolmogorov_to_heat(process: KacProcess, s: float, D: float | None = None, n_x: int = 2001) -> float:
    """``sup_x |F_Kac(x) - F_heat(x)|`` between the law of ``X_s`` and ``N(0, 2 D s)``.

    ``D`` defaults to the process's ``c^2/(2a)``.  The supremum is taken on a grid of ``n_x`` points
    over ``[-c s, c s]`` plus both sides of each front (where the Kac CDF jumps).
    """
    D = process.diffusivity if D is None else check_finite_param("D", D, positive=True)
    front = process.c * s
    x = torch.linspace(-front, front, n_x, dtype=torch.float64)
    eps = front * 1e-9
    x = torch.cat([x, torch.tensor([-front - eps, front - eps], dtype=torch.float64)])
    F = process.cdf(x, torch.full_like(x, float(s))).double()
    heat = 0.5 * (1 + torch.erf(x / math.sqrt(4 * D * s)))
    return float((F - heat).abs().max())


# =============================================================================== the PDE


def telegraph_fd(a: float, c: float, x, p0, s_end: float, n_out: int, cfl: float = 0.9):
    """Explicit finite differences for ``p_ss + 2a p_s = c^2 p_xx`` with ``p(x, 0) = p0``, ``p_s(x, 0) = 0``.

    Centred second differences in ``x`` and ``s`` (second order), the damping term centred too::

        (1 + a k) p^{n+1} = c^2 k^2 D_xx p^n + 2 p^n - (1 - a k) p^{n-1},

    first step ``p^1 = p^0 + (c k)^2/2 D_xx p^0`` (from ``p_s(0) = 0``), ``p = 0`` at both ends of
    the uniform grid ``x``.  Output at the times ``s_end * j / n_out``, ``j = 0..n_out``; the time step
    ``k`` divides ``s_end / n_out`` and keeps ``c k / h <= cfl``.  Returns ``(times, p)`` with ``p`` of
    shape ``(n_out + 1, len(x))`` (float64).

    The initial condition ``p_s = 0`` is the Kac process's: started from ``p0`` with a random
    direction, the law of ``x0 + X_s`` solves this problem (its density is ``p0`` convolved with the
    law of ``X_s``, :func:`smoothed_kac_law`).
    """
    a = check_finite_param("a", a, nonneg=True)
    c = check_finite_param("c", c, positive=True)
    s_end = check_finite_param("s_end", s_end, positive=True)
    if not isinstance(n_out, int) or n_out < 1:
        raise ValueError(f"n_out must be a positive int, got {n_out!r}")
    x = np.asarray(x, dtype=np.float64)
    h = float(x[1] - x[0])
    ds = s_end / n_out
    m = math.ceil(ds / (cfl * h / c))
    k = ds / m
    r2 = (c * k / h) ** 2

    def lap(p):
        out = np.zeros_like(p)
        out[1:-1] = p[2:] - 2 * p[1:-1] + p[:-2]
        return out

    p_prev = np.asarray(p0, dtype=np.float64).copy()
    p_prev[0] = p_prev[-1] = 0.0
    out = [p_prev.copy()]
    p_cur = p_prev + 0.5 * r2 * lap(p_prev)
    for n in range(1, n_out * m + 1):
        if n > 1:
            p_prev, p_cur = p_cur, (r2 * lap(p_cur) + 2 * p_cur - (1 - a * k) * p_prev) / (1 + a * k)
        if n % m == 0:
            out.append(p_cur.copy())
    return ds * np.arange(n_out + 1), np.stack(out)


def smoothed_kac_law(process: KacProcess, x, s: float, sigma: float, nodes: int = 8) -> np.ndarray:
    """Density of ``Z + X_s`` with ``Z ~ N(0, sigma^2)``.

    It is the closed-form solution of the telegrapher's problem of :func:`telegraph_fd` started from
    a Gaussian bump::

        e^{-a s}/2 (phi(x - c s) + phi(x + c s)) + int_{-cs}^{cs} phi(x - y) p(y, s) dy

    (atoms plus continuous part), integrated by composite Gauss-Legendre quadrature on panels no
    wider than ``sigma/2``, in float64.
    """
    x = np.asarray(x, dtype=np.float64)
    sigma = check_finite_param("sigma", sigma, positive=True)

    def phi(u):
        return np.exp(-(u**2) / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))

    front = process.c * s
    atoms = math.exp(-process.a * s) / 2 * (phi(x - front) + phi(x + front))
    if front == 0:
        return atoms
    panels = max(4, math.ceil(2 * front / (sigma / 2)))
    gx, gw = np.polynomial.legendre.leggauss(nodes)
    edges = np.linspace(-front, front, panels + 1)
    half = (edges[1:] - edges[:-1]) / 2
    mid = (edges[1:] + edges[:-1]) / 2
    y = (mid[:, None] + half[:, None] * gx[None, :]).reshape(-1)
    w = (half[:, None] * gw[None, :]).reshape(-1)
    py = process.density(torch.from_numpy(y), torch.full((len(y),), float(s), dtype=torch.float64)).numpy()
    return atoms + phi(x[:, None] - y[None, :]) @ (w * py)


def pde_residual(
    process: KacProcess, s: float, n_x: int = 200, h: float = 1e-3, margin: float = 0.05
) -> float:
    """Relative residual of ``p_ss + 2a p_s - c^2 p_xx`` for the closed-form density at time ``s``.

    ``max |residual| / max(|p_ss| + |2a p_s| + |c^2 p_xx|)`` over ``n_x`` points with
    ``|x| <= (1 - margin) c s`` (central differences of step ``h`` in float64).
    """
    a, c = process.a, process.c
    x = torch.linspace(-(1 - margin) * c * s, (1 - margin) * c * s, n_x, dtype=torch.float64)

    def p(xx, ss):
        return process.density(xx, torch.full_like(xx, ss))

    p0 = p(x, s)
    p_ss = (p(x, s + h) - 2 * p0 + p(x, s - h)) / h**2
    p_s = (p(x, s + h) - p(x, s - h)) / (2 * h)
    p_xx = (p(x + h, s) - 2 * p0 + p(x - h, s)) / h**2
    res = p_ss + 2 * a * p_s - c * c * p_xx
    scale = (p_ss.abs() + (2 * a * p_s).abs() + (c * c * p_xx).abs()).max()
    return float(res.abs().max() / scale)


def continuity_residual(
    process: KacProcess, s: float, n_x: int = 200, h: float = 1e-4, margin: float = 0.05
) -> float:
    """Relative residual of the continuity equation ``p_s + (p v)_x = 0``.

    For the closed-form density and conditional velocity: ``max |p_s + (p v)_x| / max |p_s|`` on
    ``|x| <= (1 - margin) c s``.
    """
    c = process.c
    x = torch.linspace(-(1 - margin) * c * s, (1 - margin) * c * s, n_x, dtype=torch.float64)

    def p(xx, ss):
        return process.density(xx, torch.full_like(xx, ss))

    def flux(xx, ss):
        return p(xx, ss) * process.velocity(xx, torch.full_like(xx, ss))

    p_s = (p(x, s + h) - p(x, s - h)) / (2 * h)
    j_x = (flux(x + h, s) - flux(x - h, s)) / (2 * h)
    return float((p_s + j_x).abs().max() / p_s.abs().max())
