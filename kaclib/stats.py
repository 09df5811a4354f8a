"""Seeds, means and 95% confidence intervals: the one definition every table of the project uses.

* :func:`mean_ci` summarises per-seed values as a mean with a Student-t 95% confidence interval
  (``mean +/- t_{0.975, n-1} s / sqrt(n)``), ``s`` the sample standard deviation.  With one value
  the interval is undefined and given as ``(nan, nan)``: a single seed never carries a verdict.
* :func:`compare` is the A-versus-B claim: the *paired* per-seed differences ``a_i - b_i`` (the
  same seed and the same latents on both sides), their mean and 95% CI, and a verdict that follows
  from the interval alone (:func:`verdict`): ``"holds"`` when the CI excludes 0 in the claimed
  direction, ``"fails"`` when it excludes 0 the other way, ``"inconclusive"`` otherwise.  No
  hand-set tolerance appears anywhere.

``"±"`` in every table means the half-width of this 95% interval, nothing else.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

__all__ = ["Interval", "Comparison", "mean_ci", "compare", "verdict", "fmt_ci", "VERDICTS"]

VERDICTS = ("holds", "fails", "inconclusive")


def _t_quantile(df: int, level: float) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, df))


@dataclass(frozen=True)
class Interval:
    """``mean`` of ``values`` with its confidence interval ``(lo, hi)`` at ``level``."""

    mean: float
    lo: float
    hi: float
    n: int
    level: float = 0.95

    @property
    def half_width(self) -> float:
        """Half the interval's width, ``(hi - lo) / 2``."""
        return (self.hi - self.lo) / 2

    def excludes_zero(self) -> bool:
        """Whether the interval lies strictly on one side of 0."""
        return self.lo > 0 or self.hi < 0

    def to_dict(self) -> dict:
        """The fields as a dict, plus ``half_width``."""
        return {**asdict(self), "half_width": self.half_width}


def _as_floats(values: Sequence[float], name: str) -> list[float]:
    out = [float(v) for v in values]
    if not out:
        raise ValueError(f"{name} must hold at least one value")
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"{name} must be finite, got {out}")
    return out


def mean_ci(values: Sequence[float], level: float = 0.95) -> Interval:
    """Mean and Student-t confidence interval of ``values`` (one per seed)."""
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    xs = _as_floats(values, "values")
    n = len(xs)
    mean = sum(xs) / n
    if n < 2:
        return Interval(mean, math.nan, math.nan, n, level)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    h = _t_quantile(n - 1, level) * sd / math.sqrt(n)
    return Interval(mean, mean - h, mean + h, n, level)


def verdict(interval: Interval, direction: str) -> str:
    """``"holds"`` / ``"fails"`` / ``"inconclusive"`` for a claim, read from the interval alone.

    The claim is "the difference is ``direction`` zero" (``direction``: ``"<"`` or ``">"``).
    """
    if direction not in ("<", ">"):
        raise ValueError(f"direction must be '<' or '>', got {direction!r}")
    if not (math.isfinite(interval.lo) and math.isfinite(interval.hi)) or not interval.excludes_zero():
        return "inconclusive"
    below = interval.hi < 0
    return "holds" if below == (direction == "<") else "fails"


@dataclass(frozen=True)
class Comparison:
    """A paired A-versus-B claim: ``diff_values[i] = a_i - b_i`` over shared seeds, with its CI."""

    claim: str
    metric: str
    a: str
    b: str
    direction: str
    diff_values: tuple
    diff_mean: float
    ci95: tuple
    verdict: str

    def to_dict(self) -> dict:
        """The fields as a dict (``diff_values`` and ``ci95`` as lists)."""
        d = asdict(self)
        d["diff_values"], d["ci95"] = list(self.diff_values), list(self.ci95)
        return d


def compare(
    claim: str,
    metric: str,
    a: str,
    a_values: Sequence[float],
    b: str,
    b_values: Sequence[float],
    direction: str = "<",
) -> Comparison:
    """The paired comparison of ``a`` against ``b`` (values listed in one shared seed order).

    ``direction="<"`` claims ``a < b`` (e.g. a lower FID), ``">"`` claims ``a > b``.
    """
    av, bv = _as_floats(a_values, a), _as_floats(b_values, b)
    if len(av) != len(bv):
        raise ValueError(
            f"paired values need one per seed on both sides: {a} has {len(av)}, {b} has {len(bv)}"
        )
    diffs = [x - y for x, y in zip(av, bv)]
    ci = mean_ci(diffs)
    return Comparison(
        claim, metric, a, b, direction, tuple(diffs), ci.mean, (ci.lo, ci.hi), verdict(ci, direction)
    )


def fmt_ci(values: Sequence[float], digits: int = 3) -> str:
    """``"mean ± half-width (n=k)"``, the table format of a per-seed summary."""
    ci = mean_ci(values)
    if ci.n < 2:
        return f"{ci.mean:.{digits}f} (n=1)"
    return f"{ci.mean:.{digits}f} ± {ci.half_width:.{digits}f} (n={ci.n})"


def ks_distance(samples, cdf) -> float:
    """Kolmogorov-Smirnov distance between samples and an exact law that may have atoms.

    Compares the empirical and the exact CDF both at and just left of every distinct sample value
    (right- and left-limits), so atoms (the Kac law's at ``+-c s``) are handled.  ``samples``: a
    tensor; ``cdf``: a callable on a float64 tensor.
    """
    import torch

    x = samples.double().flatten()
    n = x.numel()
    vals, counts = torch.unique(x, sorted=True, return_counts=True)
    ecdf_right = torch.cumsum(counts, 0).double() / n
    ecdf_left = ecdf_right - counts.double() / n
    f_right = cdf(vals)
    f_left = cdf(torch.nextafter(vals, torch.full_like(vals, -math.inf)))
    return max((ecdf_right - f_right).abs().max().item(), (ecdf_left - f_left).abs().max().item())


def ks_bound_99(n: int) -> float:
    """Asymptotic 99% critical value of the one-sample KS statistic (conservative with atoms)."""
    return math.sqrt(-0.5 * math.log(0.005)) / math.sqrt(n)
