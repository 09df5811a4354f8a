"""The ladder benchmark's summaries, paired comparisons and tables (``benchmarks/ladder.py``)."""

from __future__ import annotations

from common import format_table

from kaclib.paper import ladder_fid, ladder_ratio
from kaclib.stats import compare, mean_ci

METRICS = (
    "fid",
    "kid",
    "precision",
    "recall",
    "accuracy",
    "memorisation_ratio",
    "paired_rmse_to_teacher",
    "n_nonfinite",
    "out_of_range",
)


def aggregate_rows(rows: dict) -> dict:
    """``{row: {steps: summary}}`` of the per-seed score dicts ``{(row, steps): [score, ...]}``."""
    agg = {}
    for (row, steps), lst in rows.items():
        agg.setdefault(row, {})[steps] = {
            **{m: {"values": [r[m] for r in lst], **mean_ci([r[m] for r in lst]).to_dict()} for m in METRICS},
            "nfe": lst[0]["nfe"],
            "network_passes": lst[0]["network_passes"],
            "sample_s_per_1000": min(r["sample_s_per_1000"] for r in lst),
            "latent_s_per_1000": min(r["latent_s_per_1000"] for r in lst),
        }
    return agg


def floor_summary(floors: list, n_eval: int, dataset: str) -> dict:
    """The unseen-real floor over the seeds' subsets."""
    return {
        "fid": mean_ci([f.fid for f in floors]).mean,
        "kid": mean_ci([f.kid for f in floors]).mean,
        "values": {
            m: [getattr(f, m) for f in floors] for m in ("fid", "kid", "precision", "recall", "accuracy")
        },
        "n": n_eval,
        "what": f"unseen real {dataset} ('test' split), class-balanced, n = {n_eval}, one subset per seed",
    }


def ladder_targets(agg: dict, ladder, total_s: float) -> dict:
    """The best 1-step student's FID over the top teacher's, and the benchmark's minutes."""
    best1 = agg.get("kac_ladder", {}).get(1)
    kt = agg["kac_teacher"][ladder[0]]["fid"]["mean"]
    targets = {}
    if best1:
        targets["best_1step_fid_over_teacher100"] = (
            min(x["fid"]["mean"] for x in (best1, agg.get("kac_single", {}).get(1)) if x) / kt
        )
        targets["best_1step_within_1.5x"] = targets["best_1step_fid_over_teacher100"] <= 1.5
    targets["benchmark_minutes"] = total_s / 60
    return targets


def _cmp(agg, claim, metric, a, b, floor=None, direction="<") -> dict:
    av = agg[a[0]][a[1]][metric]["values"]
    bv = floor["values"][metric] if b == "floor" else agg[b[0]][b[1]][metric]["values"]
    name = lambda r: "unseen real (floor)" if r == "floor" else f"{r[0]} @ {r[1]} steps"  # noqa: E731
    return compare(claim, metric, name(a), av, name(b), bv, direction=direction).to_dict()


def _ladder_pairs(ladder) -> list[tuple]:
    """``(claim, a, b, direction)`` of the fixed claims of the ladder table."""
    top = ladder[0]
    pairs = [
        (
            "the distilled 1-step student beats the undistilled teacher at 1 step",
            ("kac_ladder", 1),
            ("kac_teacher", 1),
            "<",
        ),
        (
            f"the {top}-step teacher beats the distilled 1-step student",
            ("kac_teacher", top),
            ("kac_ladder", 1),
            "<",
        ),
        (
            f"the {top}-step teacher is still worse than unseen real images",
            ("kac_teacher", top),
            "floor",
            ">",
        ),
        (
            "the ladder beats a single stage at equal budget (1 step)",
            ("kac_ladder", 1),
            ("kac_single", 1),
            "<",
        ),
        (
            "the Kac 1-step student beats the Gaussian-path 1-step student",
            ("kac_ladder", 1),
            ("gaussian_ladder", 1),
            "<",
        ),
        (
            f"the Kac {top}-step teacher beats the Gaussian-path teacher",
            ("kac_teacher", top),
            ("gaussian_teacher", top),
            "<",
        ),
    ]
    pairs += [
        (
            f"the {m}-step student beats the undistilled teacher at {m} steps",
            ("kac_ladder", m),
            ("kac_teacher", m),
            "<",
        )
        for m in ladder[1:-1]
    ]
    pairs.append(
        (
            f"the {top}-step teacher beats the undistilled teacher at 1 step",
            ("kac_teacher", top),
            ("kac_teacher", 1),
            "<",
        )
    )
    return pairs


def _best_student_pairs(agg, top) -> list[tuple]:
    """The three that must be told apart: the top teacher, undistilled 1 step, best 1-step student."""
    ones = [r for r in ("kac_ladder", "kac_single") if 1 in agg.get(r, {})]
    if len(ones) <= 1:
        return []
    best = min(ones, key=lambda r: agg[r][1]["fid"]["mean"])
    return [
        (
            f"the {top}-step teacher beats the best 1-step student ({best})",
            ("kac_teacher", top),
            (best, 1),
            "<",
        ),
        (
            f"the best 1-step student ({best}) beats the undistilled teacher at 1 step",
            (best, 1),
            ("kac_teacher", 1),
            "<",
        ),
    ]


def ladder_comparisons(agg, floor, ladder) -> list[dict]:
    """The paired A-versus-B claims of the ladder table (FID and KID each), verdicts from the CIs."""
    out = []
    for claim, a, b, direction in _ladder_pairs(ladder) + _best_student_pairs(agg, ladder[0]):
        if a[0] not in agg or (b != "floor" and b[0] not in agg):
            continue
        for metric in ("fid", "kid"):
            out.append(_cmp(agg, claim, metric, a, b, floor, direction))
    return out


def ladder_table(agg, floor, ladder) -> tuple[list, list]:
    """Header and rows of the headline table: mean ± 95% CI half-width of FID and KID per row."""

    def cell(row, steps, m="fid", d=3):
        r = agg.get(row, {}).get(steps)
        return "-" if r is None else f"{r[m]['mean']:.{d}f} ± {r[m]['half_width']:.{d}f}"

    header = [
        "steps",
        "paper CIFAR-10 (ratio)",
        "Kac ladder",
        "Kac teacher (AB-2)",
        f"single {ladder[0]}->1",
        "Gaussian ladder",
        "Gaussian teacher",
        "KID Kac ladder",
        "RMSE to teacher",
        "passes ladder / teacher",
    ]
    rows = []
    for steps in ladder:
        key = "teacher" if steps == ladder[0] else steps
        paper, paper_ratio = ladder_fid("cifar10", key), ladder_ratio("cifar10", key)
        lad = None if steps == ladder[0] else "kac_ladder"
        rows.append(
            [
                steps,
                f"{paper} ({paper_ratio:.2f})" if paper else "-",
                cell(lad, steps) if lad else "(teacher)",
                cell("kac_teacher", steps),
                cell("kac_single", steps),
                cell("gaussian_ladder", steps) if lad else "(teacher)",
                cell("gaussian_teacher", steps),
                cell(lad or "kac_teacher", steps, "kid"),
                cell(lad, steps, "paired_rmse_to_teacher") if lad else "0",
                f"{agg[lad][steps]['network_passes'] if lad else '-'} / "
                f"{agg['kac_teacher'][steps]['network_passes']}",
            ]
        )
    rows.append(
        ["real", "-", "-", f"floor {floor['fid']:.3f}", "-", "-", "-", f"{floor['kid']:.3f}", "-", "-"]
    )
    return header, rows


def print_report(metric_name, dataset, n_eval, seeds, header, table, comparisons, targets, timings) -> None:
    """The headline table, the paired comparisons, the targets and the timings, on stdout."""
    print(
        f"\n{metric_name} on {dataset}, n = {n_eval} per estimate, seeds {seeds} (mean ± 95% CI half-width)"
    )
    print(format_table(header, table))
    print("\npaired comparisons (a - b, 95% CI, verdict):")
    for c in comparisons:
        print(
            f"  {c['verdict']:12s} {c['claim']} [{c['metric']}]: {c['diff_mean']:+.4g} "
            f"[{c['ci95'][0]:+.4g}, {c['ci95'][1]:+.4g}]"
        )
    print("\ntargets:", targets)
    print("timings:", {k: round(v, 1) for k, v in timings.items()})
