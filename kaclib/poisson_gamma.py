"""Poisson and Gamma variates for :mod:`kaclib.kac`, written with tensor operations.

* :func:`poisson_walk_inversion`: Poisson counts by inversion of given uniforms, walking from the
  mode with the pmf recursion (any rates, elementwise);
* :func:`standard_gamma`: Marsaglia-Tsang Gamma variates honouring a ``torch.Generator``;
* :func:`poisson`: Poisson counts honouring a ``torch.Generator`` (sequential inversion for small
  rates, Hormann's transformed rejection (PTRS) for large ones).

The CDF-table inversion used for scalar or row-constant times stays in :mod:`kaclib.kac`.
"""

from __future__ import annotations

import torch

__all__ = ["poisson", "poisson_walk_inversion", "standard_gamma"]


def poisson_walk_inversion(lam: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Poisson counts by inversion: ``N = #{k : F(k) < u}`` elementwise, for any rates.

    ``N = #{k : F(k) < u}`` elementwise for any rates (float64 inside, result in ``u``'s dtype):
    start at the mode ``floor(lam)``, where ``F`` is the regularised incomplete gamma function, and
    walk up or down with the pmf recursion; ``O(sqrt(lam))`` passes over the elements still moving.
    """
    shape, dtype = u.shape, u.dtype
    lam, u = lam.double().reshape(-1), u.double().reshape(-1)
    k = torch.floor(lam)
    p = torch.exp(torch.special.xlogy(k, lam) - lam - torch.lgamma(k + 1))
    F = torch.special.gammaincc(k + 1, lam)  # P(N <= k)
    # up: while F(k) < u, step up
    idx = (u > F).nonzero().squeeze(1)
    kk, pp, FF = k[idx], p[idx], F[idx]
    while idx.numel():
        kk = kk + 1
        pp = pp * lam[idx] / kk
        FF = FF + pp
        k[idx] = kk
        go = (u[idx] > FF) & (pp > 0)
        idx, kk, pp, FF = idx[go], kk[go], pp[go], FF[go]
    # down: while F(k - 1) = F(k) - p(k) >= u, step down
    idx = ((u <= F - p) & (k > 0)).nonzero().squeeze(1)
    kk, pp, FF = k[idx], p[idx], F[idx]
    while idx.numel():
        FF = FF - pp
        pp = pp * kk / lam[idx]
        kk = kk - 1
        k[idx] = kk
        go = (u[idx] <= FF - pp) & (kk > 0)
        idx, kk, pp, FF = idx[go], kk[go], pp[go], FF[go]
    return k.to(dtype).reshape(shape)


def _rejection_loop(propose, n: int, like: torch.Tensor) -> torch.Tensor:
    """Rejection sampling, vectorised: redraw the rejected elements until none is left.

    Run ``propose(index) -> (values, accepted)`` on all ``n`` elements, then again on the rejected
    ones until none is left (the first pass touches no index tensor: it is the fast path).
    """
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
    """Exact ``Gamma(alpha, 1)`` draws for ``alpha >= 1`` (Marsaglia and Tsang, 2000).

    Exact ``Gamma(alpha, 1)`` draws for ``alpha >= 1`` (Marsaglia and Tsang, 2000), vectorised:
    every element is proposed at once and only the rejected ones (2 to 5 percent) are redrawn.
    """
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
