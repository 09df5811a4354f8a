"""kaclib.stats: the one mean-and-CI definition, paired comparisons and verdicts from the interval."""

import math

import pytest
import torch

from kaclib.stats import compare, fmt_ci, mean_ci, verdict


def test_mean_ci_matches_the_student_t_formula():
    v = [1.0, 2.0, 4.0]
    ci = mean_ci(v)
    sd = math.sqrt(sum((x - 7 / 3) ** 2 for x in v) / 2)
    h = 4.302652729911275 * sd / math.sqrt(3)  # t_{0.975, 2}
    assert ci.mean == pytest.approx(7 / 3) and ci.half_width == pytest.approx(h) and ci.n == 3
    assert ci.lo == pytest.approx(7 / 3 - h) and ci.hi == pytest.approx(7 / 3 + h)
    one = mean_ci([5.0])
    assert one.mean == 5 and math.isnan(one.lo) and verdict(one, "<") == "inconclusive"
    assert fmt_ci([5.0]) == "5.000 (n=1)" and fmt_ci(v, 2) == f"2.33 ± {h:.2f} (n=3)"


def test_coverage_of_the_95_interval_by_monte_carlo():
    # normal samples of 5: the interval covers the true mean about 95% of the time
    g = torch.Generator().manual_seed(0)
    x = 3.0 + 2.0 * torch.randn(4000, 5, generator=g, dtype=torch.float64)
    covered = sum(mean_ci(row.tolist()).lo <= 3.0 <= mean_ci(row.tolist()).hi for row in x)
    assert abs(covered / 4000 - 0.95) < 0.015  # 3 binomial standard deviations


def test_verdicts_follow_the_interval_only():
    a = [1.0, 1.1, 0.9, 1.05, 0.95]
    better = compare("A has the lower FID", "fid", "A", a, "B", [x + 0.5 for x in a])
    assert (
        better.verdict == "holds" and better.diff_mean == pytest.approx(-0.5) and len(better.diff_values) == 5
    )
    worse = compare("A has the lower FID", "fid", "A", [x + 0.5 for x in a], "B", a)
    assert worse.verdict == "fails" and worse.ci95[0] > 0
    tie = compare("A has the lower FID", "fid", "A", a, "B", [1.02, 1.0, 0.97, 1.1, 0.9])
    assert tie.verdict == "inconclusive" and tie.ci95[0] < 0 < tie.ci95[1]
    up = compare(
        "A has the higher accuracy", "accuracy", "A", [0.9, 0.91, 0.92], "B", [0.8, 0.8, 0.83], direction=">"
    )
    assert up.verdict == "holds"
    d = better.to_dict()
    assert set(d) >= {"claim", "metric", "a", "b", "diff_values", "diff_mean", "ci95", "verdict"}
    assert isinstance(d["ci95"], list) and len(d["ci95"]) == 2


def test_bad_inputs():
    with pytest.raises(ValueError, match="one per seed"):
        compare("c", "m", "A", [1, 2, 3], "B", [1, 2])
    with pytest.raises(ValueError, match="finite"):
        mean_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="at least one"):
        mean_ci([])
    with pytest.raises(ValueError, match="direction"):
        verdict(mean_ci([1.0, 2.0]), "=")


def test_claims_take_their_verdict_from_the_interval():
    from kaclib import claims

    c = compare("A beats B", "fid", "A", [1.0, 1.1, 0.9], "B", [2.0, 2.1, 1.9])
    row = claims.Claim.from_comparison("A beats B", c, source="paper", where="benchmarks/results/x.json")
    assert (
        row.verdict == "holds"
        and row.holds is True
        and "95% CI" in row.measured
        and "3 paired seeds" in row.measured
    )
    tie = claims.Claim.from_comparison(
        "A beats B", compare("t", "fid", "A", [1.0, 2.0, 0.5], "B", [1.2, 1.0, 1.1]).to_dict()
    )
    assert tie.verdict == "inconclusive" and tie.holds is None
    assert claims.table_text(
        [{"chapter": "c", "status": "ok", "record": {"claims": [tie.__dict__]}}]
    ).endswith("[inconclusive]")
    with pytest.raises(ValueError, match="verdict"):
        claims.Claim("x", "y", verdict="probably")
