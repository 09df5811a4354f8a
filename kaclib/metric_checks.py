"""Checks that the quality metric works: controls with a known ordering, scored on the protocol.

A metric that cannot tell good generation from copying, or from damaged images, cannot carry a
verdict.  :func:`sanity_check` scores, over several seeds (independent subsets and noise draws):

* ``unseen real``: class-balanced real images of the ``test`` split (the floor);
* ``memoriser``: class-balanced *training* images, what a generator that copies its data returns;
  it must score no better than unseen real images (paired CI of the difference);
* known degradations of the unseen real images, each at increasing strength: Gaussian pixel
  noise, blur, a dropped class (its images replaced by another class's), mode collapse (a fraction
  of the set replaced by copies of one image per class).  Each must score monotonically worse on
  FID and KID as the strength grows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .data import ImageData, balanced_subset
from .stats import compare, mean_ci

__all__ = ["DEGRADATIONS", "degrade", "sanity_check", "SanityResult"]

DEGRADATIONS = {
    "noise": (0.05, 0.1, 0.2, 0.4),  # pixel noise standard deviation
    "blur": (0.5, 1.0, 2.0),  # Gaussian blur standard deviation (pixels)
    "dropped_class": (1, 2, 4),  # number of classes replaced by the next class
    "mode_collapse": (0.25, 0.5, 0.9),  # fraction of images replaced by one image of their class
}


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = max(1, int(round(3 * sigma)))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=x.dtype) / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(
        F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c
    )


def degrade(data: ImageData, kind: str, level: float, generator: torch.Generator) -> torch.Tensor:
    """The images of ``data`` damaged by ``kind`` (a key of :data:`DEGRADATIONS`) at ``level``.

    Labels stay those of ``data`` (the intended classes).
    """
    x, y = data.images, data.labels
    if kind == "noise":
        return x + level * torch.randn(x.shape, generator=generator)
    if kind == "blur":
        return _blur(x, float(level))
    if kind == "dropped_class":
        out = x.clone()
        for c in range(int(level)):  # class c's images become images of class (int(level)), cycling its pool
            pool = x[y == int(level)]
            idx = torch.nonzero(y == c).flatten()
            out[idx] = pool[torch.arange(len(idx)) % len(pool)]
        return out
    if kind == "mode_collapse":
        out = x.clone()
        for c in torch.unique(y).tolist():
            idx = torch.nonzero(y == c).flatten()
            k = int(round(level * len(idx)))
            out[idx[:k]] = x[idx[-1]]
        return out
    raise ValueError(f"kind must be one of {sorted(DEGRADATIONS)}, got {kind!r}")


@dataclass(frozen=True)
class SanityResult:
    """What :func:`sanity_check` found: scores, paired comparisons and monotonicity.

    Per-seed scores of every control (``rows[name][metric] -> values``), the paired comparisons and
    whether each degradation is monotone in each metric (means over seeds).
    """

    n: int
    seeds: tuple
    rows: dict
    comparisons: list
    monotone: dict

    def to_dict(self) -> dict:
        """A JSON-ready dict: per-seed values with mean and CI, the comparisons, ``monotone``."""
        summary = {
            name: {m: {"values": v, **mean_ci(v).to_dict()} for m, v in row.items()}
            for name, row in self.rows.items()
        }
        return {
            "n": self.n,
            "seeds": list(self.seeds),
            "results": summary,
            "comparisons": [c.to_dict() for c in self.comparisons],
            "monotone": self.monotone,
        }


METRICS = ("fid", "kid", "precision", "recall", "memorisation_ratio")


def sanity_check(evaluator, n: int, seeds=(0, 1, 2, 3, 4), degradations: dict | None = None) -> SanityResult:
    """Score the controls (see the module docstring) with ``evaluator`` at ``n`` images per set."""
    degradations = DEGRADATIONS if degradations is None else degradations
    rows: dict[str, dict[str, list]] = {}

    def add(name, scores):
        row = rows.setdefault(name, {m: [] for m in METRICS})
        for m in METRICS:
            row[m].append(float(getattr(scores, m)))

    for seed in seeds:
        real = balanced_subset(evaluator.test, n, seed=seed)
        add("unseen real", evaluator.score(real.images, real.labels))
        memo = balanced_subset(evaluator.train, n, seed=seed)
        add("memoriser", evaluator.score(memo.images, memo.labels))
        for kind, levels in degradations.items():
            for level in levels:
                g = torch.Generator().manual_seed(1000 * seed + 7)
                add(f"{kind} {level:g}", evaluator.score(degrade(real, kind, level, g), real.labels))
    comparisons = [
        compare(
            f"the metric rewards copying: a memoriser beats unseen real images ({m})",
            m,
            "memoriser",
            rows["memoriser"][m],
            "unseen real",
            rows["unseen real"][m],
            direction="<",
        )
        for m in ("fid", "kid")
    ]
    for kind, levels in degradations.items():
        first = f"{kind} {levels[0]:g}"
        comparisons += [
            compare(
                f"{first} scores worse than unseen real images ({m})",
                m,
                first,
                rows[first][m],
                "unseen real",
                rows["unseen real"][m],
                direction=">",
            )
            for m in ("fid", "kid")
        ]
    monotone = {}
    for kind, levels in degradations.items():
        names = ["unseen real"] + [f"{kind} {lv:g}" for lv in levels]
        for m in ("fid", "kid"):
            means = [mean_ci(rows[nm][m]).mean for nm in names]
            monotone[f"{kind}/{m}"] = all(b > a for a, b in zip(means, means[1:]))
    return SanityResult(n, tuple(seeds), rows, comparisons, monotone)
