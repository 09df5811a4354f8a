"""Rules that choose the Kac path's ``(a, c)`` from the training data (issue 12, section 3).

The paper picks the speed ``c`` and the damping ``xi = 2a`` by a grid search.  Each rule here
is one defining equation (or two) computed from the *training* images only, for a given schedule
``(f, g, T)`` (:class:`kaclib.paths.KacPath`); the latent is ``K_{g(T)}`` whatever ``f`` (the
path's :meth:`~kaclib.paths.KacPath.sample_latent`), so ``f`` only enters through validation.

* **R1, light cone** (:func:`light_cone_rule`): ``c g(T) = r``, ``r`` the ``quantile`` of ``|x|``
  over all pixels of the data (1: the maximum), so that the latent's support ``[-c g(T), c g(T)]``
  just covers the data range; then ``a`` from the variance equation of R2 at that ``c``.
* **R2, variance matching** (:func:`variance_rule`): ``Var K_{g(T)}(a, c) = v``, ``v`` the data's
  per-coordinate variance averaged over coordinates, solved for ``c`` at a given ``a``.
* **R3, reversals** (:func:`reversal_rule`): ``a g(T) = k`` reversals expected on the way to the
  latent, then ``c`` from the variance equation at that ``a``.

Every rule returns a frozen :class:`RuleChoice` with the equation it solved, so a test can check
the equation on the output.  The variance equation is solved with :func:`scipy.optimize.brentq`
on the closed form :meth:`kaclib.kac.KacProcess.var` (:func:`solve_variance`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from .kac import KacProcess, check_finite_param

__all__ = [
    "RuleChoice",
    "RULES",
    "data_variance",
    "data_range",
    "kac_variance",
    "solve_variance",
    "light_cone_rule",
    "variance_rule",
    "reversal_rule",
    "apply_rules",
]


@dataclass(frozen=True)
class RuleChoice:
    """The ``(a, c)`` a rule chose for the schedule ``(f, g, T)``, with what it was computed from."""

    rule: str
    a: float
    c: float
    f: str
    g: str
    T: float
    equation: str
    data_variance: float
    data_range: float

    @property
    def xi(self) -> float:
        """The damping ``xi = 2a``."""
        return 2 * self.a

    def path_config(self) -> dict:
        """The Kac path's config dict (:func:`kaclib.paths.build_path`)."""
        return {"kind": "kac", "a": self.a, "c": self.c, "f": self.f, "g": self.g, "T": self.T}

    def to_dict(self) -> dict:
        """The fields as a dict, plus ``xi``."""
        return {**asdict(self), "xi": self.xi}


def _schedule(f: str, g: str, T: float):
    from .paths import _Schedule

    return _Schedule(f, g, T)


def _final_time(f: str, g: str, T: float) -> float:
    """``g(T)``, after validating the schedule."""
    sched = _schedule(f, g, T)
    return float(sched.g(torch.tensor(sched.T, dtype=torch.float64)))


def _check_data(data) -> torch.Tensor:
    x = torch.as_tensor(data)
    if x.ndim < 2 or x.shape[0] < 2 or x[0].numel() < 1:
        raise ValueError(f"data must have shape (N, ...) with N >= 2, got {tuple(x.shape)}")
    x = x.double().flatten(1)
    if not torch.isfinite(x).all():
        raise ValueError("data must be finite")
    return x


def data_variance(data) -> float:
    """Per-coordinate variance of ``data`` ``(N, ...)``, averaged over coordinates.

    With ``1/N`` normalisation: the one variance a coordinate-wise path with shared ``(a, c)`` can
    match.
    """
    return float(_check_data(data).var(dim=0, unbiased=False).mean())


def data_range(data, quantile: float = 1.0) -> float:
    """The ``quantile`` of ``|x|`` over all pixels of ``data`` (``1``: ``max |x|``)."""
    q = check_finite_param("quantile", quantile, positive=True)
    if q > 1:
        raise ValueError(f"quantile must lie in (0, 1], got {quantile!r}")
    ax = _check_data(data).abs().flatten()
    return float(ax.max()) if q == 1 else float(torch.quantile(ax, q))


def kac_variance(a: float, c: float, s: float) -> float:
    """``Var K_s`` of ``KacProcess(a, c)`` (closed form, float64)."""
    return float(KacProcess(a, c).var(torch.tensor(float(s), dtype=torch.float64)))


def solve_variance(
    target: float, s: float, a: float | None = None, c: float | None = None
) -> tuple[float, float]:
    """``(a, c)`` with ``Var K_s(a, c) = target``, solving for the one of ``a``, ``c`` not given.

    At fixed ``a``, ``Var`` is ``c^2`` times a positive factor: ``c`` in closed form.  At fixed
    ``c``, ``Var`` falls strictly from ``(c s)^2`` (``a = 0``) to 0 (``a -> inf``), so a root
    exists iff ``0 < target < (c s)^2``; it is found by :func:`scipy.optimize.brentq` in
    ``log a``.  Raises ``ValueError`` when there is no solution.
    """
    from scipy.optimize import brentq

    target = check_finite_param("target", target, positive=True)
    s = check_finite_param("s", s, positive=True)
    if (a is None) == (c is None):
        raise ValueError("give exactly one of a and c")
    if c is None:
        a = check_finite_param("a", a, nonneg=True)
        return a, math.sqrt(target / kac_variance(a, 1.0, s))
    c = check_finite_param("c", c, positive=True)
    if not target < (c * s) ** 2:
        raise ValueError(f"no a gives Var K_s = {target:.6g}: it must be below (c s)^2 = {(c * s) ** 2:.6g}")

    def excess(log_a: float) -> float:
        return kac_variance(math.exp(log_a), c, s) - target

    lo, hi = math.log(1e-12 / s), math.log(1.0 / s)
    while excess(hi) > 0:  # Var ~ c^2 s / a for large a s: widen until the root is bracketed
        hi += math.log(10.0)
    log_a = brentq(excess, lo, hi, xtol=1e-14, rtol=1e-13, maxiter=500)
    return math.exp(log_a), c


def light_cone_rule(
    data, f: str = "linear", g: str = "t", T: float = 1.0, quantile: float = 1.0
) -> RuleChoice:
    """R1: ``c g(T) = r``, then ``a`` such that ``Var K_{g(T)}(a, c) = v``.

    ``r`` is :func:`data_range` at ``quantile``, ``v`` is :func:`data_variance`.

    With ``quantile = 1`` a root exists for any non-constant data (``v <= E x^2 <= r^2``, equal only
    if every pixel is ``+-r`` with mean 0).
    """
    s = _final_time(f, g, T)
    v, r = data_variance(data), data_range(data, quantile)
    c = r / s
    a, c = solve_variance(v, s, c=c)
    return RuleChoice(
        "light-cone", a, c, f, g, float(T), "c g(T) = range; Var K_g(T)(a, c) = data variance", v, r
    )


def variance_rule(data, f: str = "linear", g: str = "t", T: float = 1.0, a: float = 25.0) -> RuleChoice:
    """R2: ``Var K_{g(T)}(a, c) = v`` (:func:`data_variance`) solved for ``c`` at the given ``a``.

    ``a`` defaults to 25, the ``cpu`` profile's: the rule then only rescales the speed.
    """
    s = _final_time(f, g, T)
    v = data_variance(data)
    a, c = solve_variance(v, s, a=a)
    return RuleChoice(
        "variance", a, c, f, g, float(T), "Var K_g(T)(a, c) = data variance at fixed a", v, data_range(data)
    )


def reversal_rule(data, f: str = "linear", g: str = "t", T: float = 1.0, k: float = 4.0) -> RuleChoice:
    """R3: ``a g(T) = k`` expected reversals before the latent, then ``c`` by variance matching.

    The atoms at the fronts then hold mass ``exp(-k)``; ``c`` solves ``Var K_{g(T)}(a, c) = v``
    (:func:`data_variance`).
    """
    k = check_finite_param("k", k, positive=True)
    s = _final_time(f, g, T)
    v = data_variance(data)
    a, c = solve_variance(v, s, a=k / s)
    return RuleChoice(
        "reversals", a, c, f, g, float(T), "a g(T) = k; Var K_g(T)(a, c) = data variance", v, data_range(data)
    )


RULES = {"light-cone": light_cone_rule, "variance": variance_rule, "reversals": reversal_rule}
"""The rules by name: ``RULES[name](data, f, g, T, **options)`` -> :class:`RuleChoice`."""


def apply_rules(data, f: str = "linear", g: str = "t", T: float = 1.0, options: dict | None = None) -> dict:
    """``{name: RuleChoice}`` of every rule of :data:`RULES` on ``data``.

    ``options`` maps a rule's name to its keyword arguments (e.g. ``{"reversals": {"k": 8}}``).
    """
    options = options or {}
    unknown = sorted(set(options) - set(RULES))
    if unknown:
        raise ValueError(f"unknown rule(s) {unknown}; known: {sorted(RULES)}")
    return {name: rule(data, f, g, T, **options.get(name, {})) for name, rule in RULES.items()}
