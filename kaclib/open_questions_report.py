"""Chapter 8's plumbing: its figures and what it shows of the committed open-questions benchmarks.

The computations live in :mod:`kaclib.flights`, :mod:`kaclib.diffusion_limit`, :mod:`kaclib.rules`
and :mod:`kaclib.explorer`; this module only draws what the chapter computed and renders the
committed JSON of ``benchmarks/open_questions.py`` (sections ``limit`` and ``rules``) and of the
flights benchmark (a ``flights`` section there, or ``benchmarks/results/flights.json``).  A section
that has not been run yet is shown as a note with the command that runs it
(:func:`show_not_run`).
"""

from __future__ import annotations

import html
import json
import math

import torch

from . import plots
from .results import RESULTS_DIR, provenance
from .stats import fmt_ci
from .tables import COMPARISON_HEADER, comparison_rows

__all__ = [
    "COMMANDS",
    "ring_fraction",
    "radial_ks",
    "load_section",
    "section_provenance",
    "show_not_run",
    "rows_table",
    "show_rows",
    "show_section_comparisons",
    "show_committed",
    "rule_outcomes",
    "verdict_summary",
    "limit_claim",
    "rules_claim",
    "flights_claim",
    "flight_scatter_figure",
    "radial_cdf_figure",
    "velocity_regression_figure",
    "law_distance_figure",
    "noise_scale_figure",
]

COMMANDS = {
    "flights": "python benchmarks/open_questions.py --flights --profile cpu",
    "limit": "python benchmarks/open_questions.py --limit --profile cpu",
    "rules": "python benchmarks/open_questions.py --rules --profile cpu",
    "students": (
        "python benchmarks/open_questions_students.py --train-steps 300 --ema-decay 0.99 --n-eval 300"
    ),
}
"""The commands that produce each section of the committed JSON (the ``cpu`` profile)."""

_METRIC_ORDER = ("fid", "kid", "accuracy", "straightness", "energy", "mmd")


# =============================================================================== checks


def ring_fraction(x: torch.Tensor, front: float, tol: float = 1e-9) -> float:
    """The share of draws ``x`` ``(n, d)`` on the sphere ``|x| = front`` (no direction change yet)."""
    r = torch.linalg.vector_norm(x.double(), dim=-1)
    return float((r >= front * (1 - tol)).double().mean())


def radial_ks(r: torch.Tensor, cdf, grid: torch.Tensor) -> float:
    """The largest gap between the empirical CDF of the draws ``r`` and ``cdf`` over ``grid``.

    ``max |F_n(r) - F(r)|`` over the radii ``grid``: ``F_n`` the empirical CDF of the draws ``r``,
    ``cdf`` the closed form (a callable of a tensor).  A lower bound of the Kolmogorov distance that
    obeys the same DKW bound ``P(sup |F_n - F| > eps) <= 2 exp(-2 n eps^2)``.
    """
    r = r.double().sort().values
    emp = torch.searchsorted(r, grid.double(), right=True).double() / r.numel()
    return float((emp - cdf(grid.double())).abs().max())


# =============================================================================== committed results


def _read(name: str) -> dict | None:
    path = RESULTS_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def load_section(section: str) -> tuple[dict, dict] | None:
    """``(whole JSON, section)`` of a committed section, or ``None`` when not committed yet.

    Read from the committed ``open_questions.json`` (``limit``, ``rules`` or ``flights``), or from
    ``flights.json`` for ``flights``.
    """
    res = _read("open_questions")
    if res is not None and section in res:
        return res, res[section]
    if section == "flights":
        res = _read("flights")
        if res is not None:
            return res, res.get("flights", res)
    return None


def section_provenance(res: dict, section: str) -> str:
    """:func:`kaclib.results.provenance` of the command that produced ``section``.

    That is an earlier run's command when the section was carried over from it.
    """
    origin = res.get("earlier_sections", {}).get(section)
    return provenance({**res, **{k: v for k, v in (origin or {}).items() if v is not None}})


def show_not_run(what: str, command: str) -> None:
    """Display a note that ``what`` has not been run and committed yet, with the command."""
    from IPython.display import display

    text = f"Not yet run: {what}. Run `{command}` and commit benchmarks/results/."
    body = (
        f"<div class='admonition warning'><p class='admonition-title'>Not yet run</p>"
        f"<p>{html.escape(what)}: run <code>{html.escape(command)}</code> and commit "
        f"<code>benchmarks/results/</code>.</p></div>"
    )
    display({"text/html": body, "text/plain": text}, raw=True)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def rows_table(rows: dict, metrics=None, extra=None) -> tuple[list, list]:
    """``(header, body)`` of a benchmark's ``rows``, one line per row.

    Parameters
    ----------
    rows : dict
        ``{name: {metric: mean, metric_values: [...]}}``.
    metrics : list, optional
        The metrics shown, each as ``mean ± 95% CI`` over seeds; default: every metric with per-seed
        values, in a fixed order.
    extra : dict, optional
        Further columns, ``{title: fn(row)}``.
    """
    extra = extra or {}
    if metrics is None:
        found = {k[: -len("_values")] for r in rows.values() for k in r if k.endswith("_values")}
        metrics = [m for m in _METRIC_ORDER if m in found] + sorted(found - set(_METRIC_ORDER))
    header = ["config"] + list(extra) + list(metrics)
    body = []
    for name, r in rows.items():
        line = [name] + [_fmt(fn(r)) for fn in extra.values()]
        line += [fmt_ci(r[f"{m}_values"]) if f"{m}_values" in r else "-" for m in metrics]
        body.append(line)
    return header, body


def show_rows(rows: dict, caption: str, metrics=None, extra=None) -> None:
    """Display :func:`rows_table`."""
    plots.show_table(*rows_table(rows, metrics, extra), caption=caption)


def show_section_comparisons(res: dict, section: str, comparisons: list, contains: str = "", metrics=None):
    """Display the paired comparisons of a section; returns them.

    Shown are those whose claim contains ``contains`` and, if ``metrics`` is given, whose metric is
    in ``metrics``.
    """
    rows = [c for c in comparisons if contains in c["claim"] and (metrics is None or c["metric"] in metrics)]
    header, body = list(COMPARISON_HEADER), comparison_rows(rows)
    if rows and "outcome" in rows[0]:
        header.append("vs grid's best")
        body = [b + [c.get("outcome", "")] for b, c in zip(body, rows)]
    plots.show_table(header, body, caption=f"paired over seeds; {section_provenance(res, section)}")
    return rows


def _metrics(rows: dict, few_steps) -> list:
    """The columns of a section's table (those present).

    Quality at the teacher's steps, at the fewest and the most Euler steps, the few-step RMSE there,
    and the straightness.
    """
    few = sorted(few_steps or [])
    want = ["fid", "accuracy"]
    if few:
        want += [f"fid_{few[0]}", f"fid_{few[-1]}", f"rmse_{few[0]}", f"rmse_{few[-1]}"]
    want.append("straightness")
    present = {k[: -len("_values")] for r in rows.values() for k in r if k.endswith("_values")}
    return [m for m in want if m in present]


def _caption(res: dict, sec: dict, section: str, what: str) -> str:
    origin = res.get("earlier_sections", {}).get(section) or {}
    settings = origin.get("settings") or res.get("settings") or {}
    budget = res.get("budget", {})  # the profile's budget is the same for every section
    steps = ""
    if "train_steps" in settings:
        steps = f", {settings['train_steps']} training steps"
        if budget.get("profile_train_steps", settings["train_steps"]) != settings["train_steps"]:
            steps += f" (profile: {budget['profile_train_steps']}; a reduced budget)"
    return (
        f"{what}: {sec.get('metric_name', 'FID')} (and the other metrics), n = {sec.get('n_eval', '?')}, "
        f"mean ± 95% CI over seeds {settings.get('seeds', '?')}{steps}; {section_provenance(res, section)}"
    )


_METRIC_TITLES = {"fid": "FID (teacher steps, AB-2)", "accuracy": "accuracy", "straightness": "straightness"}


def _titled(header: list) -> list:
    out = []
    for h in header:
        if h.startswith("fid_"):
            h = f"FID {h[4:]} Euler"
        elif h.startswith("rmse_"):
            h = f"RMSE {h[5:]} Euler"
        out.append(_METRIC_TITLES.get(h, h))
    return out


def _show_block(res: dict, sec: dict, section: str, what: str, extra=None) -> list:
    few = res.get("settings", {}).get("few_steps")
    header, body = rows_table(sec["rows"], _metrics(sec["rows"], few), extra)
    plots.show_table(_titled(header), body, caption=_caption(res, sec, section, what))
    comps = sec.get("comparisons", [])
    if comps:
        show_section_comparisons(res, section, comps, metrics=None)
    return comps


def show_committed(res: dict, sec: dict, section: str) -> list:
    """Display a committed section (``flights``, ``limit`` or ``rules``); returns its comparisons.

    Shows its rows with CIs and its paired comparisons.  Returns the comparisons (for ``rules``, of
    every data set).
    """
    if section == "rules":
        comps = []
        path_cols = {
            "a": lambda r: r["path"]["a"],
            "c": lambda r: r["path"]["c"],
            "g": lambda r: r["path"]["g"],
        }
        for name, d in sec["datasets"].items():
            src = d.get("grid_source")
            grid = f" (grid rows from {src}, same budget)" if src and src != "trained here" else ""
            comps += _show_block(res, d, section, f"{name}, grid's best {d['grid_best']}{grid}", path_cols)
        return comps
    extra = None
    if section == "limit" and "law_distance" in sec:
        laws = sec["law_distance"]
        extra = {"KS to N(0, 2Dg) at T": lambda r, laws=laws: _law_at_T(r, laws)}
    what = {
        "flights": f"{sec.get('dataset', '')} teachers",
        "limit": f"the Kac paths at D = {sec.get('D', '?')}",
    }
    return _show_block(res, sec, section, what.get(section, section), extra)


def _law_at_T(row: dict, laws: dict):
    for law in laws.values():
        p = row["path"]
        if p.get("kind") == "kac" and abs(law["a"] - p["a"]) < 1e-12 and abs(law["c"] - p["c"]) < 1e-12:
            return f"{law['at_T_to_diffusion']:.2e}"
    return "-"


_VERDICT_WORDS = {"holds": "holds", "fails": "is reversed", "inconclusive": "is inconclusive"}


def verdict_summary(comparisons: list, section: str, contains: str = "", metrics=None) -> str:
    """One sentence per selected paired comparison, or a "not yet run" note with the command.

    Each sentence reads ``"<claim> (metric): holds / is reversed / is inconclusive, a - b = ...,
    95% CI [...]"``; the note comes when no comparison is selected.
    """
    rows = [c for c in comparisons if contains in c["claim"] and (metrics is None or c["metric"] in metrics)]
    if not rows:
        return f"not yet run ({COMMANDS[section]})"
    return "; ".join(
        f"'{c['claim']}' {_VERDICT_WORDS[c['verdict']]} (a - b = {c['diff_mean']:+.3g}, "
        f"95% CI [{c['ci95'][0]:+.3g}, {c['ci95'][1]:+.3g}])"
        for c in rows
    )


def rule_outcomes(sec: dict) -> dict:
    """``{data set: {rule: outcome}}`` of a committed ``rules`` section.

    An outcome is ``better``, ``tied`` or ``worse`` than the grid's best by the paired 95% CI of the
    FID difference.
    """
    return {d: {c["a"]: c["outcome"] for c in v["comparisons"]} for d, v in sec["datasets"].items()}


def _not_run_claim(claim: str, section: str, source: str):
    from .claims import Claim

    return Claim(claim, f"not yet run: {COMMANDS[section]}", holds=None, source=source)


def limit_claim(comparisons: list, profile):
    """Claim: the profile's Kac teacher beats its variance-matched Gaussian twin (FID).

    The verdict comes from the committed ``limit`` comparisons.
    """
    from .claims import Claim

    text = "Finite speed, not the noise schedule: the Kac teacher beats its variance-matched Gaussian twin"
    comp = next(
        (
            c
            for c in comparisons
            if "gaussian twin" in c["b"] and c["metric"] == "fid" and "lower" in c["claim"]
        ),
        None,
    )
    if comp is None:
        return _not_run_claim(text, "limit", "issue 12 (open question 2)")
    return Claim.from_comparison(
        text, comp, source="DistillKac (open question 2)", where="benchmarks/results/open_questions.json"
    )


def rules_claim(outcomes: dict, min_datasets: int = 2):
    """Claim: some rule lands within the CI of the grid's best (or beats it) on every data set.

    No verdict (``holds=None``) with fewer than ``min_datasets`` data sets (the question asks for
    two).
    """
    from .claims import Claim

    text = (
        "A rule computed from the data (c, xi) lands within the CI of the grid search's best "
        "on every data set"
    )
    if not outcomes:
        return _not_run_claim(text, "rules", "DistillKac (open question 3)")
    rules = set.intersection(*(set(o) for o in outcomes.values()))
    good = sorted(r for r in rules if all(o[r] in ("tied", "better") for o in outcomes.values()))
    measured = "; ".join(f"{d}: " + ", ".join(f"{r} {v}" for r, v in o.items()) for d, o in outcomes.items())
    measured += f" (paired 95% CI of the FID difference; within it everywhere: {', '.join(good) or 'none'}"
    if len(outcomes) < min_datasets:
        measured += f"; {len(outcomes)} of the {min_datasets} data sets run: no verdict)"
        return Claim(text, measured, holds=None, source="DistillKac (open question 3)")
    return Claim(text, measured + ")", holds=bool(good), source="DistillKac (open question 3)")


def flights_claim(comparisons: list):
    """Claim: the random-flight teacher beats the coordinate-wise Kac teacher.

    Measured by the FID at the teacher's steps, with the verdict of the committed ``flights``
    comparison.
    """
    from .claims import Claim

    text = "Coupled coordinates help: a random-flight teacher beats the coordinate-wise Kac teacher"
    comp = next((c for c in comparisons if c["metric"] == "fid"), None)
    if comp is None:
        return _not_run_claim(text, "flights", "DistillKac (open question 1)")
    return Claim.from_comparison(
        text, comp, source="DistillKac (open question 1)", where="benchmarks/results/open_questions.json"
    )


# =============================================================================== figures


def flight_scatter_figure(samples: dict, front: float, n_show: int = 3000):
    """Side-by-side scatter of 2D draws (``{title: (n, 2) tensor}``) with the light cone ``front``.

    Each panel also draws the circle ``|x| = front`` (the flight's light cone; the product's square
    fits inside it).
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = list(samples)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, horizontal_spacing=0.08)
    ang = torch.linspace(0, 2 * math.pi, 200)
    for k, name in enumerate(names, start=1):
        x = samples[name][:n_show].double()
        fig.add_trace(
            go.Scatter(
                x=plots.to_float32(x[:, 0]),
                y=plots.to_float32(x[:, 1]),
                mode="markers",
                marker={"size": 3, "color": plots.COLORS["kac"], "opacity": 0.45},
                name=name,
                showlegend=False,
            ),
            1,
            k,
        )
        fig.add_trace(
            go.Scatter(
                x=plots.to_float32(front * torch.cos(ang)),
                y=plots.to_float32(front * torch.sin(ang)),
                mode="lines",
                line={"color": plots.COLORS["bound"], "dash": "dot", "width": 1},
                name="|x| = c s" if k == 1 else None,
                showlegend=k == 1,
            ),
            1,
            k,
        )
        fig.update_xaxes(range=[-1.5 * front, 1.5 * front], row=1, col=k)
        fig.update_yaxes(
            range=[-1.5 * front, 1.5 * front], scaleanchor=f"x{k if k > 1 else ''}", row=1, col=k
        )
    return plots.style(
        fig, "Two finite-speed processes in the plane, same second moments", "x1", "x2", height=460
    )


def radial_cdf_figure(grid, empirical, exact, title: str):
    """Empirical against closed-form CDF of the radius ``|X_s|`` (the jump at the front is the ring)."""
    import plotly.graph_objects as go

    fig = go.Figure(
        [
            go.Scatter(
                x=plots.to_float32(grid),
                y=plots.to_float32(exact),
                mode="lines",
                name="closed form",
                line={"color": plots.COLORS["exact"], "width": 2},
            ),
            go.Scatter(
                x=plots.to_float32(grid),
                y=plots.to_float32(empirical),
                mode="lines",
                name="simulated flights",
                line={"color": plots.COLORS["kac"], "dash": "dash", "width": 2},
            ),
        ]
    )
    return plots.style(fig, title, "radius r", "P(|X_s| <= r)", height=400)


def velocity_regression_figure(reg, x, field, title: str):
    """Bin averages of the simulated ``V_s`` (±2 standard errors) against the closed-form Kac field.

    The closed-form field ``field`` is drawn at the points ``x``.
    """
    import plotly.graph_objects as go

    fig = go.Figure(
        [
            go.Scatter(
                x=plots.to_float32(x),
                y=plots.to_float32(field),
                mode="lines",
                name="closed-form Kac field v(x, s)",
                line={"color": plots.COLORS["exact"], "width": 2},
            ),
            go.Scatter(
                x=plots.to_float32(reg.centres),
                y=plots.to_float32(reg.mean_v),
                mode="markers",
                name="bin average of simulated V_s",
                error_y={"type": "data", "array": plots.to_float32(2 * reg.se), "visible": True},
                marker={"color": plots.COLORS["kac"], "size": 7},
            ),
        ]
    )
    return plots.style(fig, title, "x", "velocity", height=420)


def law_distance_figure(t, laws: dict, key: str, title: str):
    """Kolmogorov distances along the path, one line per Kac path (``{name: LawDistance}``).

    Drawn on a log axis; ``key`` is ``"to_diffusion"`` or ``"to_matched"``.
    """
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, law in laws.items():
        y = [max(v, 1e-16) for v in getattr(law, key)]
        fig.add_trace(go.Scatter(x=plots.to_float32(t), y=y, mode="lines+markers", name=name))
    fig.update_yaxes(type="log")
    return plots.style(fig, title, "t", "Kolmogorov distance", height=420)


def noise_scale_figure(t, scales: dict, title: str):
    """Per-coordinate noise standard deviation along the path, one line per path (``{name: tensor}``)."""
    import plotly.graph_objects as go

    fig = go.Figure(
        [
            go.Scatter(x=plots.to_float32(t), y=plots.to_float32(v), mode="lines", name=name)
            for name, v in scales.items()
        ]
    )
    return plots.style(fig, title, "t", "noise standard deviation", height=400)
