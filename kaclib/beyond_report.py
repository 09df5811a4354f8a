"""Chapter 7's plumbing: committed results turned into tables, comparisons and figures.

The results are those of ``benchmarks/beyond.py`` and of the section 3 and 4 benchmarks.

Every number comes from a committed JSON (``benchmarks/results/*.json``) or from code the chapter
runs; verdicts are read from confidence intervals (:func:`kaclib.stats.compare`), never typed.
"""

from __future__ import annotations

import datetime as _dt
import os

import numpy as np

from . import results as committed
from .stats import compare, mean_ci

__all__ = [
    "this_machine",
    "committed_or_note",
    "cached_ladder_dir",
    "comparison_claims",
    "show_committed",
    "verdict_counts",
    "scatter_agreement",
    "family_ladders",
    "stage_rows",
    "STAGE_HEADER",
    "trajectory_comparisons",
    "deviation_scatter_figure",
    "known_answer_figure",
    "known_answer_maps_figure",
    "stress_figure",
]


def this_machine() -> str:
    """``"<cpu>, N cores, torch X, <UTC time>"``: the provenance of a figure computed in this build."""
    import torch

    cpu = committed.cpu_name()
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    threads = torch.get_num_threads()
    return (
        f"this build: {cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({threads} thread(s)), {now}"
    )


def committed_or_note(name: str, command: str, require: str | None = None) -> dict | None:
    """``benchmarks/results/<name>.json``, or ``None`` after printing ``not yet run: <command>``."""
    res = committed.load(name, require=require)
    if res is None:
        print(f"benchmarks/results/{name}.json: not yet run: {command}")
    return res


def show_committed(res: dict) -> list[dict]:
    """Display a committed benchmark with its provenance and paired comparisons.

    Display a committed benchmark: its ``"table_markdown"`` (else its ``"table"``), the command,
    machine and commit that produced it, and all its paired comparisons (every metric); returns them.
    """
    from IPython.display import Markdown, display

    from .plots import show_table

    if res.get("table_markdown"):
        display(Markdown(res["table_markdown"]))
    elif res.get("table"):
        show_table(res["table"]["header"], res["table"]["rows"])
    print(committed.provenance(res))
    comps = res.get("comparisons", [])
    if comps:
        committed.show_comparisons(res, metrics=tuple(dict.fromkeys(c["metric"] for c in comps)))
    return comps


def verdict_counts(comparisons: list) -> str:
    """``"3 holds, 1 fails, 2 inconclusive"`` (``"none"`` for no comparison)."""
    if not comparisons:
        return "none"
    return ", ".join(
        f"{sum(c['verdict'] == v for c in comparisons)} {v}" for v in ("holds", "fails", "inconclusive")
    )


def method_findings(res: dict | None, metric: str = "fid") -> dict:
    """What section 4's committed benchmark says, as text for the chapter's prose.

    ``{"best": "kac: ... ; gaussian: ...", "tally": "progressive 0 holds / ...", "n": k}``: per
    teacher and step count the method of lowest mean ``metric``, and per method the verdicts of its
    ``metric`` comparisons with the DistillKac ladder ("holds" = the method beats the ladder);
    ``{"best": "not yet run", "tally": "not yet run", "n": 0}`` without results.
    """
    if not res or not res.get("rows"):
        return {"best": "not yet run", "tally": "not yet run", "n": 0}
    rows, fams = res["rows"], res["settings"]["families"]
    seeds = res["settings"]["seeds"]
    best = []
    for fam in fams:
        per_k = []
        for k in map(str, res["settings"]["steps"]):
            means = {
                m: float(np.mean([rows[f"{fam}-seed{s}"][m][k][metric] for s in seeds]))
                for m in rows[f"{fam}-seed{seeds[0]}"]
                if m not in ("budget", "train_s", "teacher") and k in rows[f"{fam}-seed{seeds[0]}"][m]
            }
            m = min(means, key=means.get)
            per_k.append(f"{k} step{'s' * (k != '1')}: {m} ({means[m]:.2f})")
        best.append(f"{fam} teacher, " + ", ".join(per_k))
    comps = [c for c in res.get("comparisons", []) if c["metric"] == metric]
    methods = dict.fromkeys(c["a"].split(" ")[1] for c in comps)
    tally = "; ".join(
        f"{m}: " + verdict_counts([c for c in comps if c["a"].split(" ")[1] == m]) for m in methods
    )
    return {"best": "; ".join(best), "tally": tally, "n": len(comps)}


def comparison_claims(
    res: dict | None, claim: str, command: str, where: str, source: str, limit: int = 8
) -> list:
    """Claims-table rows of a committed benchmark.

    The claims-table rows of a committed benchmark: one :class:`~kaclib.claims.Claim` per paired
    comparison (verdict from its CI) when there are at most ``limit``, else one row ``claim`` with
    the counts of verdicts; ``"not yet run: <command>"`` when ``res`` has no comparison.
    """
    from .claims import Claim

    comps = (res or {}).get("comparisons", [])
    if not comps:
        return [Claim(claim, f"not yet run: {command}", holds=None, source=source)]
    if len(comps) <= limit:
        return [Claim.from_comparison(c["claim"], c, source=source, where=where) for c in comps]
    return [
        Claim(
            claim,
            f"{len(comps)} paired comparisons: {verdict_counts(comps)} ({where})",
            holds=None,
            source=source,
        )
    ]


# =============================================================================== section 1


def cached_ladder_dir(profile, path: str = "kac"):
    """Chapter 5's cached ladder directory, or ``None`` when not cached.

    The ladder directory that chapter 5 (and ``benchmarks/beyond.py``, seed 0) distils for
    ``profile`` on ``path``, or ``None`` when its teacher or any of its stages is not cached: the
    chapter then trains nothing.
    """
    from .teachers import ladder_dirs

    cached = ladder_dirs(profile, path)
    return cached.ladder if cached.complete else None


def scatter_agreement(study, traj: dict, family: str) -> float:
    """Largest difference between a live deviation study and the committed scatter.

    Largest absolute difference between a live :class:`~kaclib.trajectory_checks.DeviationStudy`
    (latent seed 1000, ``n`` images) and the committed per-image scatter of ``family`` (its first
    ``n`` images; the committed values are rounded to 6 decimals).
    """
    scatter = traj["per_family"][family]["scatter"]
    worst = 0.0
    for st in study.stages:
        ref = scatter[str(st.spec.student_steps)]
        n = len(st.deviation.sup_endpoint)
        for live, key in (
            (st.deviation.sup_endpoint, "sup_endpoint_error"),
            (st.deviation.sup_interior, "sup_interior_deviation"),
        ):
            worst = max(worst, float(np.abs(np.asarray(live) - np.asarray(ref[key][:n])).max()))
    return worst


def family_ladders(traj: dict) -> dict:
    """``{family: [per-ladder dict, one per seed]}`` of ``beyond.json``'s ``"trajectories"``."""
    out: dict = {}
    for name in sorted(traj["per_ladder"], key=lambda k: (traj["per_ladder"][k]["label"] != "kac", k)):
        lad = traj["per_ladder"][name]
        out.setdefault(lad["label"], []).append(lad)
    return out


STAGE_HEADER = [
    "path",
    "stage",
    "Delta",
    "largest end-point error",
    "largest interior deviation",
    "interior / end point",
    "Spearman (per sample)",
]


def _ci_text(values, digits: int = 3) -> str:
    ci = mean_ci(values)
    if ci.n < 2:
        return f"{ci.mean:.{digits}g}"
    return f"{ci.mean:.{digits}g} [{ci.lo:.{digits}g}, {ci.hi:.{digits}g}]"


def stage_rows(traj: dict) -> list[list]:
    """Per-(path, stage) table of end-point error against interior deviation.

    One row per (path, stage): mean over samples of the per-sample largest end-point error and
    interior deviation, their ratio and the per-sample Spearman correlation, each as mean [95% CI]
    over the seeds (ladders) of the path.
    """
    rows = []
    for fam, ladders in family_ladders(traj).items():
        for k, st in enumerate(ladders[0]["stages"]):
            per = [lad["stages"][k] for lad in ladders]
            ep = [s["sup_endpoint_error"]["mean"] for s in per]
            it = [s["sup_interior_deviation"]["mean"] for s in per]
            sp = [s["per_sample"]["spearman"] for s in per if s.get("per_sample")]
            rows.append(
                [
                    fam,
                    f"{st['teacher_steps']} -> {st['student_steps']}",
                    f"{st['delta']:.3g}",
                    _ci_text(ep),
                    _ci_text(it),
                    _ci_text([b / a for a, b in zip(ep, it)]),
                    _ci_text(sp, 2) if sp else "-",
                ]
            )
    return rows


def trajectory_comparisons(traj: dict) -> list[dict]:
    """Paired comparisons (over seeds) read from the committed trajectories.

    * per path, the slope of the whole-path deviation against ``Delta`` minus 1 (``> 0``: the
      deviation shrinks at least as fast as ``Delta``, the ``O(Delta)`` of the finite-speed argument);
    * Kac against Gaussian (seed ``i`` against seed ``i``): the slope, the largest interior
      deviation of the last stage and its ratio to the end-point error there.
    """
    fams = family_ladders(traj)
    slopes = {f: [lad["slope_sup_interior_vs_delta"]["slope"] for lad in v] for f, v in fams.items()}
    out = [
        compare(
            f"{f}: whole-path deviation shrinks at least linearly in Delta (slope - 1 > 0)",
            "log-log slope",
            f"{f} slope",
            s,
            "1",
            [1.0] * len(s),
            direction=">",
        ).to_dict()
        for f, s in slopes.items()
    ]
    if {"kac", "gaussian"} <= set(fams) and len(fams["kac"]) == len(fams["gaussian"]):
        last = {f: [lad["stages"][-1] for lad in fams[f]] for f in ("kac", "gaussian")}
        steps = last["kac"][0]["student_steps"]
        interior = {f: [s["sup_interior_deviation"]["mean"] for s in v] for f, v in last.items()}
        ratio = {
            f: [s["sup_interior_deviation"]["mean"] / s["sup_endpoint_error"]["mean"] for s in v]
            for f, v in last.items()
        }
        for claim, metric, vals in (
            (
                f"Kac's {steps}-step student stays closer to its teacher's path",
                "interior deviation",
                interior,
            ),
            (
                f"Kac's {steps}-step interior deviation is a smaller multiple of its end-point error",
                "interior / end point",
                ratio,
            ),
        ):
            out.append(compare(claim, metric, "kac", vals["kac"], "gaussian", vals["gaussian"]).to_dict())
    return out


_PALETTE = ["#1f5fa8", "#e07b00", "#2a9d3f", "#c0392b", "#8e44ad", "#555555"]


def deviation_scatter_figure(traj: dict, title: str | None = None, max_points: int = 256):
    """Figure of the committed end-point error against interior deviation scatter.

    The committed scatter (``per_family[...]["scatter"]``: one seed's per-sample largest end-point
    error against largest interior deviation, per stage): one panel per path, one colour per stage,
    log axes, the diagonal ``interior = end point``
    (:func:`kaclib.trajectory_checks.scatter_panels_figure`).
    """
    from .trajectory_checks import scatter_panels_figure

    panels = {
        f"{f} (seed {v.get('scatter_seed', '?')})": [
            (int(s), f"{s}-step student (Delta = {pts['delta']:.3g})",
             np.asarray(pts["sup_endpoint_error"][:max_points], dtype=np.float32),
             np.asarray(pts["sup_interior_deviation"][:max_points], dtype=np.float32))
            for s, pts in sorted(v["scatter"].items(), key=lambda kv: -int(kv[0]))
        ]
        for f, v in traj["per_family"].items()
    }  # fmt: skip
    return scatter_panels_figure(panels, title, "largest end-point error", opacity=0.55)


# =============================================================================== section 5


def known_answer_figure(errors: dict, title: str | None = None):
    """Figure of each method's distance to the exact flow map against its budget.

    Mean distance of each method's 1-step map to the exact flow map against the student-iteration
    budget (``errors``: ``{method: {budget: error}}``), log-log.
    """
    import plotly.graph_objects as go

    from .plots import style

    fig = go.Figure()
    for k, (method, by_budget) in enumerate(errors.items()):
        b = sorted(by_budget)
        fig.add_trace(
            go.Scatter(
                x=b,
                y=[by_budget[i] for i in b],
                mode="lines+markers",
                name=method,
                line=dict(color=_PALETTE[k % len(_PALETTE)]),
                hovertemplate="%{x} iterations<br>error %{y:.3g}<extra>" + method + "</extra>",
            )
        )
    fig.update_xaxes(type="log")
    fig.update_yaxes(type="log")
    return style(
        fig,
        title=title or "1-step map against the exact flow map",
        x="student iterations (log)",
        y="mean |student 1-step - exact map| (log)",
    )


def known_answer_maps_figure(exact_map, maps: dict, budget: int | None = None, max_points: int = 400):
    """Figure of each method's 1-step end points beside the exact flow map's.

    One panel per method: the exact flow map's end points (grey) and the method's 1-step end points
    from the same latents (colour); ``maps``: ``{method: (n, 2) tensor}``.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from .plots import style

    ex = np.asarray(exact_map[:max_points], dtype=np.float32)
    fig = make_subplots(rows=1, cols=len(maps), subplot_titles=list(maps), horizontal_spacing=0.06)
    for col, (method, pts) in enumerate(maps.items(), start=1):
        p = np.asarray(pts[:max_points], dtype=np.float32)
        for xy, name, color in ((ex, "exact flow map", "#9a9a9a"), (p, "1-step map", _PALETTE[col - 1])):
            fig.add_trace(
                go.Scatter(
                    x=xy[:, 0],
                    y=xy[:, 1],
                    mode="markers",
                    marker=dict(color=color, size=4, opacity=0.6),
                    name=name if name == "exact flow map" else f"{method}: 1-step map",
                    showlegend=name != "exact flow map" or col == 1,
                    hoverinfo="skip",
                ),
                row=1,
                col=col,
            )
    fig.update_xaxes(range=[-2, 2])
    fig.update_yaxes(range=[-2, 2])
    suffix = f" after {budget:,} iterations" if budget is not None else ""
    return style(
        fig, title=f"End points from the same latents: exact map and 1-step maps{suffix}", height=420
    )


STRESS_NAMES = {
    "kac": "Kac",
    "gaussian": "Gaussian peer",
    "diffusion": "diffusion path",
    "kac_bounded": "Kac, bounded head",
}


def stress_findings(res: dict | None) -> str:
    """Section 3's verdict counts per compared family, as one sentence.

    Section 3's verdicts per family Kac is compared with: ``"against the Gaussian peer: FID 0
    holds, 2 fails, 18 inconclusive; range ..."``; ``"not yet run"`` without results.
    """
    comps = (res or {}).get("comparisons", [])
    if not comps:
        return "not yet run"
    parts = []
    for other in dict.fromkeys(c["b"] for c in comps):
        mine = [c for c in comps if c["b"] == other]
        by_metric = [
            f"{'FID' if m == 'fid' else 'range'} " + verdict_counts([c for c in mine if c["metric"] == m])
            for m in ("fid", "frac_out_of_range")
        ]
        parts.append(f"against the {STRESS_NAMES.get(other, other)}: " + "; ".join(by_metric))
    return ". ".join(parts)


def stress_figure(res: dict, w: float, quantity: str = "fid"):
    """Figure of one guidance weight of the committed guidance-stress benchmark.

    One guidance weight ``w`` of the committed ``guidance_stress`` benchmark: ``quantity`` (``"fid"``
    or a :class:`kaclib.guidance_stress.StressResult` field such as ``"frac_out_of_range"``) against
    the number of Euler steps, mean and 95% CI over seeds, Kac and the Gaussian peer.
    """
    import plotly.graph_objects as go

    from .plots import style

    fig = go.Figure()
    for k, fam in enumerate(res["settings"].get("families", ("kac", "gaussian"))):
        per_seed = [rows for name, rows in res["rows"].items() if name.startswith(fam + "-")]
        steps = [r["steps"] for r in per_seed[0] if r["w"] == float(w)]
        cis = []
        for s in steps:
            vals = [
                next(
                    r["scores"]["fid"] if quantity == "fid" else r[quantity]
                    for r in rows
                    if r["w"] == float(w) and r["steps"] == s
                )  # fmt: skip
                for rows in per_seed
            ]
            cis.append(mean_ci(vals))
        fig.add_trace(
            go.Scatter(
                x=steps,
                y=[c.mean for c in cis],
                error_y=dict(type="data", array=[c.hi - c.mean for c in cis], visible=True),
                mode="lines+markers",
                name=STRESS_NAMES.get(fam, fam),
                line=dict(color=_PALETTE[k % len(_PALETTE)]),
            )
        )
    fig.update_xaxes(type="log", tickvals=steps)
    label = "FID-digits" if quantity == "fid" else quantity.replace("_", " ")
    return style(
        fig, title=f"w = {w:g}: {label} against Euler steps (mean, 95% CI)", x="Euler steps", y=label
    )
