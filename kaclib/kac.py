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

The Betas are drawn without rejection from uniforms (see :meth:`KacProcess.sample_from_uniforms`:
four uniforms per value), the Poisson count by inversion (a per-call CDF table of a few dozen
entries when the time is a scalar or constant along rows, as for a latent or a path's times), or
transformed rejection where rates vary elementwise (:mod:`kaclib.poisson_gamma`); everything is
written with tensor operations, so it honours a ``torch.Generator`` (or given uniforms:
counter-based latents, :mod:`kaclib.latents`) and runs on any device.  There is no set-up
beyond that per-call CDF (``lam + 12 sqrt(lam) + 20`` terms for a rate ``lam = a s``, fewer
than ``24 sqrt(lam) + 26`` above ``lam ~ 180``; a single rate's, with its bucket index of 2^14
entries, is kept in a small cache for the next call):
``a`` and ``c`` may change between calls.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from .poisson_gamma import _poisson_inversion, poisson, poisson_walk_inversion, standard_gamma

__all__ = [
    "KacProcess",
    "check_finite_param",
    "poisson",
    "poisson_table_inversion",
    "poisson_walk_inversion",
    "standard_gamma",
]


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
    if s.numel() == 0 or bool(s.min() >= 0):  # one pass: min propagates NaN
        return
    if torch.isnan(s).any():
        raise ValueError("s must not contain NaN")
    raise ValueError(f"s must be >= 0, got min(s) = {s.min().item()!r}")


def _i1e_over_z(z: torch.Tensor) -> torch.Tensor:
    """``exp(-z) I1(z) / z`` for ``z >= 0``, accurate at and near ``z = 0`` (limit 1/2).

    ``i1e(z)/z`` keeps full relative accuracy down to ``z = 1e-30``; below ``1e-6`` the series
    ``(1 - z)/2`` (relative error under 1e-12) avoids ``0/0`` and subnormals.
    """
    small = z < 1e-6
    zs = torch.where(small, torch.ones_like(z), z)
    return torch.where(small, 0.5 - 0.5 * z, torch.special.i1e(zs) / zs)


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
        if (
            x.numel() and bool(torch.isnan(x.sum())) and bool(torch.isnan(x).any())
        ):  # one pass unless NaN or +-inf
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
        log_w = torch.where(
            inside, -a * x * x / torch.where(inside, denom, torch.ones_like(denom)), torch.zeros_like(x)
        )
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
        front = c * s
        ax = x.abs()
        gap = torch.clamp(front - ax, min=0)  # 0 on and beyond the fronts, where z = 0 keeps h finite
        z = torch.sqrt(gap * (front + ax)).mul_(a / c)  # a r / c, r = sqrt((cs-|x|)(cs+|x|))
        # (r/c) I0/I1 = (1/a) * h(z), h(z) = z I0(z)/I1(z) = i0e(z) / (i1e(z)/z), h(0) = 2
        h = torch.special.i0e(z).div_(_i1e_over_z(z))
        v_in = (a * x).div_(h.add_(a * s))
        return torch.where(ax < front, v_in, torch.sign(x) * c)

    # ------------------------------------------------------------------ sampling
    def sample(self, s, generator: torch.Generator | None = None) -> torch.Tensor:
        """One exact draw of ``X_s`` per element of ``s`` (same shape, dtype and device).

        Four uniforms per element (one ``torch.rand`` call) go through :meth:`sample_from_uniforms`;
        only where the rates ``a s`` vary inside rows and reach 10 is the count drawn by transformed
        rejection (:func:`poisson`) with further uniforms from ``generator``.
        """
        s = _as_tensor(s)
        _check_times(s)
        u = torch.rand((4,) + tuple(s.shape), dtype=s.dtype, device=s.device, generator=generator)
        return self._from_uniforms(s, u, s.dtype, generator)

    def sample_from_uniforms(self, s, u: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Exact draws of ``X_s`` from four independent ``Uniform(0, 1)`` per element.

        ``u`` has shape ``(4, *shape)`` and ``s`` is a scalar or broadcasts to ``shape``; the result has
        ``shape`` and ``dtype`` (default ``u.dtype``).  A deterministic function of ``(s, u)``, exact in
        law up to the rounding of the uniforms (``u[0]`` is compared with the Poisson CDF in
        ``u.dtype``).

        ``N = #{k : F(k) < u[0]}`` is the number of reversals (inversion of the ``Poisson(a s)``
        CDF ``F``).  Given ``N``, ``W = (1 + X/(c s))/2`` (the fraction of time spent in the initial
        direction) is 1 for ``N = 0`` (an atom) and ``Beta(floor(N/2) + 1, ceil(N/2))`` otherwise,
        drawn without rejection.  With ``w = u[2] - 1/2``:

        * ``Y ~ Beta(m, m)`` on ``[-1, 1]`` (``m = ceil(N/2)``) by Ulrich's (1984) method:
          ``Y = sqrt(1 - u[1]^(2/(2m-1))) cos(2 pi w)``, and ``sign(w)``, independent of ``Y``, is the
          initial direction;
        * ``X/(c s) = sign(w) - B (sign(w) - Y)`` with ``B = u[3]^(1/N)`` for even ``N``
          (``Beta(k + 1, k) = B Beta(k, k) + 1 - B``, ``B ~ Beta(2k, 1)``, a Gamma-ratio identity; ``Y``
          is symmetric and independent of the direction), ``B = 1`` for odd ``N`` and ``B = 0`` for
          ``N = 0``.

        The inversion uses a CDF table per distinct rate (:func:`poisson_table_inversion`) when ``s``
        is a scalar or constant along each row ``s[i]`` of at least 16 elements (a path's times), and
        sequential inversion otherwise.
        """
        u = torch.as_tensor(u)
        if not u.is_floating_point() or u.ndim < 1 or u.shape[0] != 4:
            raise ValueError(
                f"u must be a floating (4, *shape) tensor of uniforms, got shape {tuple(u.shape)}"
            )
        dtype = dtype or u.dtype
        s = _as_tensor(s, torch.empty(0, dtype=dtype)).to(device=u.device)
        _check_times(s)
        if s.ndim and s.shape != u.shape[1:]:
            try:
                s = s.expand(u.shape[1:]).contiguous()
            except RuntimeError:
                raise ValueError(
                    f"s of shape {tuple(s.shape)} does not broadcast to u's {tuple(u.shape[1:])}"
                ) from None
        return self._from_uniforms(s.to(dtype), u, dtype, None)

    def _from_uniforms(self, s: torch.Tensor, u: torch.Tensor, dtype, generator) -> torch.Tensor:
        shape = u.shape[1:]
        u1, v, u2 = u[1:].to(dtype).unbind(0)
        w = v - 0.5
        sign = torch.copysign(torch.ones((), dtype=dtype, device=u.device), w)  # independent of cos(2 pi w)
        rows = _constant_rows(s) if u[0].numel() else None
        if rows is not None:  # 2-D layout (rows, elements per row)
            B = rows.numel()
            front = (self.c * rows).reshape(B, 1)
            u1, w, u2, sign = (z.reshape(B, -1) for z in (u1, w, u2, sign))
        else:
            front = self.c * s
        if self.a == 0 or u[0].numel() == 0:
            return (front * sign).reshape(shape)
        if rows is not None:
            e1, e2 = _table_exponents(self.a * rows.double(), u[0].reshape(B, -1), dtype)
        else:
            e1, e2 = _beta_exponents(self._flips(s, u[0], generator).to(dtype))
        y = torch.sqrt(torch.expm1(torch.log(u1) * e1).neg_())
        y *= torch.cos((2 * math.pi) * w)  # Y ~ Beta(m, m) on [-1, 1]
        fin = torch.finfo(dtype)
        b = torch.exp(torch.log(torch.clamp(u2, fin.tiny, 1 - fin.eps / 2)).mul_(e2))  # u2^e2
        x = sign - b * (sign - y)  # in [-1, 1] whatever the rounding
        return x.mul_(front).reshape(shape)

    def _flips(self, s: torch.Tensor, u: torch.Tensor, generator) -> torch.Tensor:
        """``N ~ Poisson(a s)`` elementwise by inversion of ``u``.

        With rates >= 10 and a ``generator``: by transformed rejection instead.
        """
        lam = (self.a * s).expand(u.shape)
        if bool((lam < 10).all()):
            return _poisson_inversion(lam.reshape(-1), generator, u=u.reshape(-1)).reshape(u.shape)
        if generator is not None:
            return poisson(lam, generator=generator)
        return poisson_walk_inversion(lam, u)


def _beta_exponents(flips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The exponents of :meth:`KacProcess.sample_from_uniforms` for counts ``N``.

    They are ``2/(2m - 1)`` (``m = ceil(N/2)``, any finite value at ``N = 0``) and ``1/N`` (even), ``0``
    (odd), ``inf`` (0).
    """
    odd = flips - 2 * torch.floor(0.5 * flips)
    return 2 / torch.clamp(flips - 1 + odd, min=1), (1 - odd) / flips


def _constant_rows(s: torch.Tensor) -> torch.Tensor | None:
    """The times of the rows ``s[i]`` as a ``(B,)`` tensor when every row is constant; else ``None``.

    ``B = 1`` for a scalar or a constant tensor; otherwise every row needs at least 16 elements (else
    ``None``).
    """
    if s.ndim == 0:
        return s.reshape(1)
    if s.numel() == 0:
        return None
    q = s.reshape(s.shape[0], -1) if s.ndim >= 2 else s.reshape(1, -1)
    if not torch.equal(q, q[:, :1].expand_as(q)):
        return None
    r = q[:, 0]
    if bool((r == r[0]).all()):
        return r[:1]
    return r if q.shape[1] >= 16 else None


TABLE_SIGMAS = 12.0
"""Half width of a Poisson CDF table in standard deviations (plus 20 terms above the mean): the
mass below the table is below 1e-30 (it is included in the CDF, and such draws get the table's first
count); draws beyond the table's end continue sequentially."""


@dataclass(frozen=True)
class _CdfTable:
    """Per-row Poisson CDF on ``lo + i``, ``i < W``, and how to search it.

    Column 0 of ``F`` is a sentinel (2.0) and column ``i + 1`` holds ``F(lo + i)``.  With a guide
    (``G`` buckets): ``start[b, j] = 1 + #{i : F(lo + i) < j/G}`` where bucket ``j`` holds at most
    one CDF value (none if not ``compare``) and lies below the bucket of the table's last value,
    else 0 (the element needs a binary search); the count is ``start`` plus, with ``compare``, one
    comparison with the bucket's CDF value.  Without a guide (short rows: its set-up would cost
    more than the search) a branchless binary search over ``F`` padded to a power of two.
    """

    lam: torch.Tensor
    lo: torch.Tensor
    pmf: torch.Tensor
    F64: torch.Tensor
    F: torch.Tensor
    start: torch.Tensor | None
    G: int
    compare: bool

    @property
    def W(self) -> int:
        return self.pmf.shape[1]

    @staticmethod
    def build(lam: torch.Tensor, dtype, per_row: int | None = None) -> "_CdfTable":
        """Tables for rates ``lam`` ``(B,)`` (float64) and uniforms of ``dtype``.

        ``per_row``: the number of draws per row (``None``: many), which decides whether a guide pays.
        """
        B, dev = lam.numel(), lam.device
        sd = torch.sqrt(lam)
        lo = torch.floor(torch.clamp(lam - TABLE_SIGMAS * sd - 5, min=0))
        W = int(torch.ceil((lam + TABLE_SIGMAS * sd + 20 - lo).max()).item()) + 1
        if bool((lo == 0).all()) and float(lam.max()) < 700:  # pmf(k) = e^-lam lam^k / k!, as a product
            ratio = lam[:, None] / torch.arange(1, W, dtype=torch.float64, device=dev)
            pmf = (
                torch.cumprod(torch.cat([torch.ones_like(lam[:, None]), ratio], 1), 1)
                * torch.exp(-lam)[:, None]
            )
            F64 = torch.cumsum(pmf, 1)
        else:
            k = lo[:, None] + torch.arange(W, dtype=torch.float64, device=dev)
            pmf = torch.exp(torch.special.xlogy(k, lam[:, None]) - lam[:, None] - torch.lgamma(k + 1))
            below = torch.where(lo > 0, torch.special.gammaincc(lo.clamp(min=1), lam), torch.zeros_like(lam))
            F64 = below[:, None] + torch.cumsum(pmf, 1)
        F = torch.cat([torch.full((B, 1), 2.0, dtype=dtype, device=dev), F64.to(dtype)], 1)
        compare = B > 1
        if per_row is not None and per_row < 8 * W:
            return _CdfTable(lam, lo, pmf, F64, F, None, 0, compare)
        # one rate: 2^14 or more buckets, those holding a CDF value are searched (a fraction W/G of
        # the draws); several rates: ~4 W buckets per row and one comparison
        G = 1 << max(6 if compare else 14, (4 * W - 1).bit_length())
        bucket = torch.clamp((F[:, 1:] * G).long(), 0, G)  # F(k) < j/G  <=>  bucket(k) < j  (G = 2^m)
        counts = torch.zeros(B, G + 1, dtype=torch.long, device=dev)
        counts.scatter_add_(1, bucket, torch.ones_like(bucket))
        first = torch.cumsum(counts, 1) - counts  # #{i : F(lo + i) < j/G}, j <= G (u = 1 included)
        slow = (counts > (1 if compare else 0)) | (torch.arange(G + 1, device=dev) >= bucket[:, -1:])
        start = torch.where(slow, torch.zeros_like(first), first + 1).contiguous()
        return _CdfTable(lam, lo, pmf, F64, F, start, G, compare)

    def _count(self, u: torch.Tensor) -> torch.Tensor:
        """``#{i : F(lo + i) < u}`` by a branchless binary search (``log2 W`` gathers)."""
        B = self.F.shape[0]
        width = 1 << self.W.bit_length()  # > W
        Fp = torch.cat([self.F[:, 1:], self.F.new_full((B, width - self.W), 2.0)], 1)
        c = torch.zeros(u.shape, dtype=torch.long, device=u.device)
        step = width // 2
        while step:
            c.add_(Fp.gather(1, c + (step - 1)) < u, alpha=step)
            step //= 2
        return c

    def search(self, u: torch.Tensor):
        """``(n, slow)``: for the fast elements ``N = lo + n - 1``.

        ``slow`` = ``(rows, cols, N)`` of the others, found by binary search (and sequential
        continuation beyond the table).
        """
        if self.start is None:
            c = self._count(u)
            slow = c == self.W  # beyond the table
            n = c.add_(1).clamp_(max=self.W)  # a valid column for every element
        else:
            j = (u * self.G).long()  # u in [0, 1]: j in [0, G]
            n = self.start.gather(1, j)
            if self.compare:
                n += u > self.F.gather(1, n)
            slow = n == 0
        rows, cols = slow.nonzero(as_tuple=True)
        return n, (self.slow_counts(u, rows, cols) if rows.numel() else None)

    def slow_counts(self, u: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor):
        """``(rows, cols, N)``: the counts of the elements ``u[rows, cols]``.

        Found by binary search, and sequential continuation beyond the table (float64).
        """
        uu = u[rows, cols]
        F = self.F[:, 1:]  # nn = #{i : F(lo + i) < u}
        if F.shape[0] == 1:
            nn = torch.searchsorted(F[0], uu)
        else:
            nn = torch.searchsorted(F[rows], uu[:, None]).squeeze(1)
        N = self.lo[rows] + nn.double()
        tail = nn == self.W
        if bool(tail.any()):
            t = tail.nonzero().squeeze(1)
            r = rows[t]
            N[t] = _continue_inversion(
                self.lam[r], uu[t].double(), self.lo[r] + self.W - 1, self.pmf[r, -1], self.F64[r, -1]
            )
        return rows, cols, N


def _exponent_tables(table: "_CdfTable", dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_beta_exponents` of every count of the table, in its columns (column 0: a placeholder).

    One 1-D row, shared by all rows, when every row's table starts at 0.
    """
    lo = table.lo[:, None] if bool((table.lo > 0).any()) else table.lo[:1]
    k = lo + torch.arange(-1, table.W, dtype=torch.float64, device=table.lo.device)
    return tuple(e.to(dtype) for e in _beta_exponents(k.clamp(min=0)))


@functools.lru_cache(maxsize=32)
def _single_rate_tables(lam: float, udtype, dtype, device: str):
    """One rate's (a latent's) table and its exponents per guide bucket, ``(1, G + 1)``.

    The exponents are those of the bucket's count, NaN where the bucket needs a search; kept for the
    next call.
    """
    table = _CdfTable.build(torch.tensor([lam], dtype=torch.float64, device=device), udtype)
    E1, E2 = (e.reshape(1, -1) for e in _exponent_tables(table, dtype))
    E1 = torch.cat([torch.full((1, 1), math.nan, dtype=dtype, device=device), E1[:, 1:]], 1)
    return table, E1.gather(1, table.start), E2.gather(1, table.start)


def _table_exponents(lam: torch.Tensor, u: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The Beta exponents of :func:`_beta_exponents` for ``N`` drawn by table inversion of ``u``.

    ``u`` is ``(B, P)`` (rates ``lam`` ``(B,)``); the exponents are gathered from per-row tables without
    forming ``N``.
    """
    if lam.numel() == 1:  # one gather per exponent, by guide bucket
        table, E1b, E2b = _single_rate_tables(float(lam), u.dtype, dtype, str(u.device))
        j = (u * table.G).long()
        e1, e2 = E1b.gather(1, j), E2b.gather(1, j)
        rows, cols = torch.isnan(e1).nonzero(as_tuple=True)
        slow = table.slow_counts(u, rows, cols) if rows.numel() else None
    else:
        table = _CdfTable.build(lam, u.dtype, per_row=u.shape[1])
        E1, E2 = _exponent_tables(table, dtype)
        n, slow = table.search(u)
        if E1.ndim == 1:
            E1, E2 = E1.expand(n.shape[0], -1), E2.expand(n.shape[0], -1)
        e1, e2 = E1.gather(1, n), E2.gather(1, n)
    if slow is not None:
        rows, cols, N = slow
        s1, s2 = _beta_exponents(N.to(dtype))
        e1[rows, cols], e2[rows, cols] = s1, s2
    return e1, e2


def poisson_table_inversion(lam: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``N = #{k : F(k) < u}`` row by row, by table inversion.

    ``lam`` ``(B,)`` rates, ``u`` ``(B, P)`` uniforms; returns the counts as floats of ``u``'s dtype.

    Exact inversion up to float64 rounding of the CDF (then rounding to ``u``'s dtype), no stored
    table: each row's CDF is tabulated on ``lo <= k < lo + W`` (``lo = max(0, lam - 12 sqrt(lam) -
    5)``, ``W ~ 24 sqrt(lam) + 25``; the mass below ``lo``, under 1e-30, enters through the
    regularised incomplete gamma function), a guide table of ``G >= 4 W`` buckets gives the count
    with at most one comparison where a bucket holds at most one CDF value, the others by binary
    search (short rows: a branchless binary search for all), and a draw beyond the table continues
    with ``p(k) = p(k - 1) lam / k``.
    """
    lam = lam.double().reshape(-1)
    table = _CdfTable.build(lam, u.dtype, per_row=u.shape[1])
    n, slow = table.search(u)
    out = (table.lo[:, None] + (n - 1).double()).to(u.dtype)
    if slow is not None:
        rows, cols, N = slow
        out[rows, cols] = N.to(u.dtype)
    return out


def _continue_inversion(lam, u, k, p, F, max_terms: int = 100_000) -> torch.Tensor:
    """Sequential inversion beyond ``k`` (where the CDF is ``F`` and the pmf ``p``).

    Returns ``k + 1 + #{j > k : F(j) < u}`` (float64; ``u > F`` on entry).
    """
    n = k + 1
    for _ in range(max_terms):
        k = k + 1
        p = p * lam / k
        F = F + p
        more = u > F
        if not bool(more.any()) or not bool((p > 0).any()):
            break
        n = n + more
    return n


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
