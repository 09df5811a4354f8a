"""The one-dimensional Kac (telegraph) process.

A particle starts at 0, moves at speed ``c`` in a random direction and reverses direction at the
jumps of a Poisson clock of rate ``a``.  Its law at time ``s`` solves the damped wave
(telegrapher's) equation ``p_ss + 2a p_s = c^2 p_xx``, so the damping of the book's sliders is
``xi = 2a``.  The law has

* two atoms of mass ``exp(-a s)/2`` each at the wave fronts ``x = +-c s`` (no reversal yet), and
* a continuous part on ``|x| < c s``::

      p(x, s) = exp(-a s)/(2c) * (a I0(z) + a c s I1(z)/r),  r = sqrt(c^2 s^2 - x^2),  z = a r / c.

Everything below is computed with exponentially scaled Bessel functions, so ``a s`` may be as
large as 1e4 without overflow, and every method is finite for every finite input.

Sampling is exact and table-free: given ``N ~ Poisson(a s)`` reversals the reversal times are
uniform order statistics, so the time spent moving in the initial direction is a sum of
Dirichlet(1, ..., 1) spacings, i.e. Beta distributed:

* ``N = 0``: the particle sits on a front;
* ``N = 2k + 1``: ``(1 + X/(c s))/2 ~ Beta(k + 1, k + 1)``;
* ``N = 2k, k >= 1``: ``(1 + X/(c s))/2 ~ Beta(k + 1, k)`` for one initial direction and the
  mirror image for the other.

The Betas are drawn without rejection from uniforms (see :meth:`KacProcess.sample`), the Poisson
count by vectorised inversion or transformed rejection; everything is written with tensor
operations, so it honours a ``torch.Generator`` and runs on any device.  There is no set-up at all:
``a`` and ``c`` may change between calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["KacProcess", "check_finite_param", "poisson", "standard_gamma"]


def check_finite_param(name: str, value: float, *, positive: bool = False, nonneg: bool = False) -> float:
    """Validate a scalar hyper-parameter and return it as a Python float.

    Raises ``ValueError`` naming ``name`` when the value is not a finite real number, or violates
    the requested sign constraint.
    """
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if positive and not v > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    if nonneg and not v >= 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return v


def _as_tensor(v, like: torch.Tensor | None = None) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        t = v
    else:
        t = torch.as_tensor(v, dtype=torch.get_default_dtype() if like is None else like.dtype)
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    return t


def _check_times(s: torch.Tensor) -> None:
    if torch.isnan(s).any():
        raise ValueError("s must not contain NaN")
    if (s < 0).any():
        raise ValueError(f"s must be >= 0, got min(s) = {s.min().item()!r}")


def _i1e_over_z(z: torch.Tensor) -> torch.Tensor:
    """``exp(-z) I1(z) / z`` for ``z >= 0``, accurate at and near ``z = 0`` (limit 1/2)."""
    small = z < 1e-2
    zs = torch.where(small, torch.ones_like(z), z)
    z2 = z * z
    series = torch.exp(-z) * (0.5 + z2 / 16 + z2 * z2 / 384)
    return torch.where(small, series, torch.special.i1e(zs) / zs)


@dataclass(frozen=True)
class KacProcess:
    """The Kac process with flip rate ``a >= 0`` and speed ``c > 0``.

    All methods take tensors (or numbers) ``x`` and ``s`` that broadcast against each other, of any
    floating dtype and on any device, and return tensors of the broadcast shape.
    """

    a: float
    c: float

    def __post_init__(self):
        object.__setattr__(self, "a", check_finite_param("a", self.a, nonneg=True))
        object.__setattr__(self, "c", check_finite_param("c", self.c, positive=True))

    # ------------------------------------------------------------------ helpers
    @property
    def xi(self) -> float:
        """Damping coefficient of the telegrapher's equation, ``xi = 2a``."""
        return 2.0 * self.a

    @property
    def diffusivity(self) -> float:
        """``D = c^2 / (2a)``: the heat-equation limit's diffusion constant (inf when a = 0)."""
        return math.inf if self.a == 0 else self.c**2 / (2 * self.a)

    def _prep(self, x, s):
        s = _as_tensor(s, x if isinstance(x, torch.Tensor) else None)
        x = _as_tensor(x, s)
        x, s = torch.broadcast_tensors(x, s)
        dtype = torch.promote_types(x.dtype, s.dtype)
        x, s = x.to(dtype), s.to(dtype)
        _check_times(s)
        if torch.isnan(x).any():
            raise ValueError("x must not contain NaN")
        return x, s

    def _interior(self, x: torch.Tensor, s: torch.Tensor):
        """``(inside, r, z, log_w)`` with ``log_w = z - a s`` computed without cancellation."""
        a, c = self.a, self.c
        front = c * s
        ax = x.abs()
        inside = ax < front
        gap = torch.where(inside, front - ax, torch.zeros_like(ax))
        r = torch.sqrt(gap * (front + ax))  # sqrt((cs-|x|)(cs+|x|)) without cancellation
        z = a * r / c
        # z - a s = a (r - c s)/c = -a x^2 / (c (r + c s))
        denom = c * (r + front)
        log_w = torch.where(inside, -a * x * x / torch.where(inside, denom, torch.ones_like(denom)), torch.zeros_like(x))
        return inside, r, z, log_w

    def var(self, s) -> torch.Tensor:
        """``Var X_s = (c^2/a) s - (c^2/(2a^2)) (1 - exp(-2 a s))`` (``c^2 s^2`` when ``a = 0``)."""
        s = _as_tensor(s)
        _check_times(s)
        a, c = self.a, self.c
        if a == 0:
            return (c * s) ** 2
        lam = a * s
        # (c^2/a^2) (lam - (1 - e^{-2 lam})/2), with expm1 for small lam
        return (c / a) ** 2 * (lam + 0.5 * torch.expm1(-2 * lam))

    # ------------------------------------------------------------------ law
    def atom_mass(self, s) -> torch.Tensor:
        """Total mass ``exp(-a s)`` of the two atoms at ``x = +-c s`` (half each)."""
        s = _as_tensor(s)
        _check_times(s)
        return torch.exp(-self.a * s)

    def density(self, x, s) -> torch.Tensor:
        """Density of the continuous part of the law of ``X_s`` (zero on and outside the fronts)."""
        x, s = self._prep(x, s)
        a, c = self.a, self.c
        inside, r, z, log_w = self._interior(x, s)
        w = torch.exp(log_w)  # exp(z - a s)
        p = w / (2 * c) * (a * torch.special.i0e(z) + a * a * s * _i1e_over_z(z))
        return torch.where(inside, p, torch.zeros_like(p))

    def cdf(self, x, s) -> torch.Tensor:
        """``P(X_s <= x)``, atoms included (right-continuous).

        The continuous part is integrated by composite Gauss-Legendre quadrature in float64 (the
        density is an entire function of ``x`` on the open interval, so this converges
        geometrically); the integration range is cut where the Gaussian-dominated tail is below
        1e-30.  The result has the dtype of the inputs.
        """
        x, s = self._prep(x, s)
        out_dtype = x.dtype
        xd, sd = x.double(), s.double()
        a, c = self.a, self.c
        front = c * sd
        ax = xd.abs()
        # tail cut: p(x) <= prefactor * exp(-a x^2 / (2 c^2 s)); 12 "sigmas" of c sqrt(s/a)
        if a > 0:
            sigma = c * torch.sqrt(sd / a)
            upper = torch.minimum(ax, torch.minimum(front, 12.0 * sigma))
        else:
            upper = torch.zeros_like(ax)
        upper = torch.minimum(upper, front)
        nodes, weights = _gauss_legendre(16, panels=8, device=x.device)
        # integrate p(u) on [0, upper] for each element
        u = upper.unsqueeze(-1) * nodes  # (..., n)
        pu = self.density(u, sd.unsqueeze(-1))
        half_cont = (pu * weights).sum(-1) * upper
        inner = 0.5 + torch.sign(xd) * half_cont
        out = torch.where(xd >= front, torch.ones_like(xd), inner)
        out = torch.where(xd < -front, torch.zeros_like(xd), out)
        # exactly at the left front (including s = 0, x = 0 handled by the line above)
        out = torch.where((xd == -front) & (front > 0), 0.5 * torch.exp(-a * sd), out)
        return out.clamp(0.0, 1.0).to(out_dtype)

    def velocity(self, x, s) -> torch.Tensor:
        """Conditional velocity ``v(x, s) = E[dX/ds | X_s = x]``.

        On ``|x| < c s``: ``x / (s + (r/c) I0(z)/I1(z))``; on and beyond the fronts:
        ``sign(x) c``.  Always ``|v| <= c``.
        """
        x, s = self._prep(x, s)
        a, c = self.a, self.c
        inside, r, z, _ = self._interior(x, s)
        # (r/c) I0/I1 = (1/a) * h(z), h(z) = z I0(z)/I1(z) = i0e(z) / (i1e(z)/z), h(0) = 2
        h = torch.special.i0e(z) / _i1e_over_z(z)
        v_in = a * x / (a * s + h)
        v_out = torch.sign(x) * c
        return torch.where(inside, v_in, v_out)

    # ------------------------------------------------------------------ sampling
    def sample(self, s, generator: torch.Generator | None = None) -> torch.Tensor:
        """One exact draw of ``X_s`` per element of ``s`` (same shape, dtype and device).

        With ``N ~ Poisson(a s)`` reversals, ``W = (1 + X/(c s))/2`` (the fraction of time spent in
        the initial direction) is 1 for ``N = 0`` (an atom) and ``Beta(floor(N/2) + 1, ceil(N/2))``
        otherwise.  Both Betas are drawn without rejection from uniforms:

        * ``Beta(m, m)`` by Ulrich's (1984) method: ``2W - 1 = sqrt(1 - U^(2/(2m-1))) cos(2 pi V)``;
        * ``Beta(k + 1, k) = B W0 + (1 - B)`` with ``W0 ~ Beta(k, k)`` and ``B = U'^(1/(2k)) ~ Beta(2k, 1)``
          independent (a Gamma-ratio identity: add one exponential spacing to the first part).
        """
        s = _as_tensor(s)
        _check_times(s)
        shape = s.shape
        s = s.reshape(-1)
        front = self.c * s
        u = torch.rand(s.shape, dtype=s.dtype, device=s.device, generator=generator)
        # one uniform gives the initial direction and, rescaled, the uniform of the Poisson inversion
        signed_front = torch.where(u < 0.5, -front, front)
        if self.a == 0:
            return signed_front.reshape(shape)
        lam = self.a * s
        if bool((lam < 10).all()):
            flips = _poisson_inversion(lam, generator, u=torch.abs(2 * u - 1))
        else:
            flips = poisson(lam, generator=generator)
        k = torch.floor(flips * 0.5)
        odd = flips - 2 * k  # 1 for odd N, 0 for even N
        m = torch.clamp(k + odd, min=1)  # symmetric Beta(m, m): m = k + 1 (odd) or k (even)
        u1, v, u2 = torch.rand((3,) + s.shape, dtype=s.dtype, device=s.device, generator=generator)
        y = torch.sqrt(_one_minus_exp(torch.log(u1) * (2 / (2 * m - 1)))) * torch.cos((2 * math.pi) * v)
        # even N: y <- B y + (1 - B), B = u2^(1/(2k)); odd N: exponent 0, so 1 - B = 0
        expo = (1 - odd) / (2 * torch.clamp(k, min=1))
        one_minus_b = _one_minus_exp(torch.log(torch.clamp(u2, min=torch.finfo(s.dtype).tiny)) * expo)
        y = y + one_minus_b * (1 - y)
        y = torch.where(flips > 0, y, 1.0)
        return (signed_front * y).reshape(shape)


def _one_minus_exp(t: torch.Tensor) -> torch.Tensor:
    """``1 - exp(t)`` for ``t <= 0`` without cancellation: with ``q = tanh(-t/2)``,
    ``1 - e^t = 2q/(1 + q)`` (exact identity; ``tanh`` is accurate near 0 and much faster than
    ``expm1`` on CPU)."""
    q = torch.tanh(-0.5 * t)
    return 2 * q / (1 + q)


def _rejection_loop(propose, n: int, like: torch.Tensor) -> torch.Tensor:
    """Run ``propose(index) -> (values, accepted)`` on all ``n`` elements, then again on the rejected
    ones until none is left (the first pass touches no index tensor: it is the fast path)."""
    values, ok = propose(None)
    if bool(ok.all()):
        return values
    out = values.clone()
    todo = (~ok).nonzero().squeeze(1)
    while todo.numel():
        v, ok = propose(todo)
        out[todo[ok]] = v[ok]
        todo = todo[~ok]
    return out


def standard_gamma(alpha: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Exact ``Gamma(alpha, 1)`` draws for ``alpha >= 1`` (Marsaglia and Tsang, 2000), vectorised:
    every element is proposed at once and only the rejected ones (2 to 5 percent) are redrawn."""
    if (alpha < 1).any():
        raise ValueError("standard_gamma needs alpha >= 1")
    d_all = alpha - 1.0 / 3.0
    c_all = torch.rsqrt(9.0 * d_all)
    tiny = torch.finfo(alpha.dtype).tiny

    def propose(idx):
        d, cc = (d_all, c_all) if idx is None else (d_all[idx], c_all[idx])
        x = torch.randn(d.shape, dtype=d.dtype, device=d.device, generator=generator)
        u = torch.rand(d.shape, dtype=d.dtype, device=d.device, generator=generator)
        v = (1 + cc * x) ** 3
        vpos = torch.clamp(v, min=tiny)
        ok = (v > 0) & (torch.log(u) < 0.5 * x * x + d - d * vpos + d * torch.log(vpos))
        return d * vpos, ok

    return _rejection_loop(propose, alpha.numel(), alpha)


def poisson(lam: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Exact Poisson draws (as floats of ``lam``'s dtype) for a tensor of rates, vectorised.

    Rates below 10 use inversion of the CDF (accumulated in float64); larger rates use Hormann's
    transformed rejection with squeeze, PTRS (1993), the algorithm of numpy's generator.
    """
    if torch.isnan(lam).any() or (lam < 0).any():
        raise ValueError("Poisson rates must be >= 0 and not NaN")
    flat = lam.reshape(-1)
    large = flat >= 10
    if not bool(large.any()):
        return _poisson_inversion(flat, generator).reshape(lam.shape)
    out = torch.zeros_like(flat)
    small_idx = (~large).nonzero().squeeze(1)
    large_idx = large.nonzero().squeeze(1)
    if small_idx.numel():
        out[small_idx] = _poisson_inversion(flat[small_idx], generator)
    out[large_idx] = _poisson_ptrs(flat[large_idx], generator)
    return out.reshape(lam.shape)


def _poisson_inversion(lam: torch.Tensor, generator, u: torch.Tensor | None = None) -> torch.Tensor:
    """Sequential search ``N = #{i >= 0 : F(i) < u}`` (rates < 10), vectorised.

    All elements advance together for 8 terms; then every 6 terms the elements already decided are
    dropped, so the work is a few passes over the tensor rather than ``max N``.
    """
    if u is None:
        u = torch.rand(lam.shape, dtype=lam.dtype, device=lam.device, generator=generator)
    p = torch.exp(-lam)
    cdf = p.clone()
    k = (u > cdf).to(lam.dtype)
    out = k
    idx = None  # None: the active set is every element
    lam_a, u_a = lam, u
    i = 0
    while i < 100:  # P(N > 60 | lam < 10) < 1e-25
        for _ in range(8 if i == 0 else 6):
            i += 1
            p = p * lam_a
            p.div_(i)
            cdf.add_(p)
            k.add_((u_a > cdf).to(k.dtype))
        live = u_a > cdf
        if idx is None:
            out = k
        else:
            out[idx] = k
        if not bool(live.any()):
            break
        keep = live.nonzero().squeeze(1)
        if idx is None:
            out = out.clone()
        idx = keep if idx is None else idx[keep]
        p, cdf, k, lam_a, u_a = p[keep], cdf[keep], k[keep], lam_a[keep], u_a[keep]
    return out


def _poisson_ptrs(lam: torch.Tensor, generator) -> torch.Tensor:
    lam64 = lam.double()

    def propose(idx):
        lm = lam64 if idx is None else lam64[idx]
        slam = torch.sqrt(lm)
        loglam = torch.log(lm)
        b = 0.931 + 2.53 * slam
        a = -0.059 + 0.02483 * b
        invalpha = 1.1239 + 1.1328 / (b - 3.4)
        vr = 0.9277 - 3.6224 / (b - 2)
        U = torch.rand(lm.shape, dtype=torch.float64, device=lm.device, generator=generator) - 0.5
        V = torch.rand(lm.shape, dtype=torch.float64, device=lm.device, generator=generator)
        us = 0.5 - U.abs()
        k = torch.floor((2 * a / us + b) * U + lm + 0.43)
        quick = (us >= 0.07) & (V <= vr)
        bad = (k < 0) | ((us < 0.013) & (V > us))
        log_accept = torch.log(V) + torch.log(invalpha) - torch.log(a / (us * us) + b)
        slow = log_accept <= -lm + k * loglam - torch.lgamma(k + 1)
        return k, quick | (~bad & slow)

    return _rejection_loop(propose, lam.numel(), lam64).to(lam.dtype)


_GL_CACHE: dict = {}


def _gauss_legendre(n: int, panels: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Composite Gauss-Legendre nodes and weights on [0, 1] (float64), cached per device."""
    key = (n, panels, str(device))
    if key not in _GL_CACHE:
        import numpy as np

        xg, wg = np.polynomial.legendre.leggauss(n)
        edges = np.linspace(0.0, 1.0, panels + 1)
        nodes, weights = [], []
        for lo, hi in zip(edges[:-1], edges[1:]):
            nodes.append(lo + (hi - lo) * (xg + 1) / 2)
            weights.append((hi - lo) * wg / 2)
        _GL_CACHE[key] = (
            torch.tensor(np.concatenate(nodes), dtype=torch.float64, device=device),
            torch.tensor(np.concatenate(weights), dtype=torch.float64, device=device),
        )
    return _GL_CACHE[key]
