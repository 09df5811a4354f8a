"""Two of DistillKac's open questions, by experiment (issue 12, sections 2 and 3).

``--limit``: **the diffusion limit at the level of trained models.**  At the ``cpu`` profile's
diffusivity ``D = c^2 / xi`` (``(a, c) = (25, 2)``: ``D = 0.08``) the Kac paths with damping
``xi`` in ``--xis`` (:func:`kaclib.diffusion_limit.kac_family`), their limit the diffusion path
(:class:`kaclib.paths.DiffusionPath`), the profile's own Kac path and its variance-matched Gaussian
twin (:class:`kaclib.paths.VarianceMatchedGaussianPath`: same ``f``, ``g`` and per-``t`` variance,
Gaussian noise) train alike (the profile's network, budget and seeds) and are measured by

* (i) the Kolmogorov distance of the 1D law of ``K_{g(t)}`` to its matched normal and to the
  diffusion's ``N(0, 2 D g(t))`` along the path (:func:`kaclib.diffusion_limit.law_distance`);
* (ii) the teachers' quality (:class:`kaclib.evaluation.Evaluator`, ``teacher_steps`` AB-2 steps,
  the profile's guidance weight, latents ``1000 + seed``);
* (iii) the straightness of their sampling trajectories and the few-step error (paired RMSE of
  ``S``-step Euler samples to the ``teacher_steps``-step AB-2 sample from the same latents), with the
  few-step FID beside it.

Paired comparisons over seeds (:func:`kaclib.stats.compare`): each Kac path against the diffusion
path, and the profile's Kac path against its twin (finite speed against the noise schedule).
(The 1-step students of item (ii): ``benchmarks/open_questions_students.py``, on these same teachers.)

``--rules``: **choosing c and xi by a rule.**  On each of ``--datasets`` (``digits`` and
``mnist5k-14``, MNIST-5k 2x2-pooled to 14x14), the rules of :mod:`kaclib.rules`, computed from
the training split only, at the profile's clock ``g`` (``--rule-gs`` for more), train alike with
the grid of ``benchmarks/teacher_search.py`` (``(a, c)`` in {(9, 3), (25, 2)} x ``g`` in {t, t2},
the profile's head); the grid's best is the lowest mean FID at ``teacher_steps`` steps, and each
rule is compared with it by the paired 95% CI of the FID difference: "tied" (the CI contains 0:
the rule lands within the CI of the grid's best), "better" or "worse".

``--flights``: **coupled motion (section 1).**  On the profile's data set, the profile's Kac path
(coordinate-wise) against the random flight in ``R^d`` with the same second moments
(:meth:`kaclib.flights.RandomFlight.matching_kac`), same network, budget, seeds and latent seeds;
quality at ``teacher_steps`` AB-2 steps and at ``--few-steps`` Euler steps, paired CIs.
``--grid-from results/teacher_search.json`` reuses that search's 3-seed grid on digits (checked to
have this run's budget: ``--train-steps 300 --ema-decay 0.99 --n-eval 300``) instead of retraining it.

    python benchmarks/open_questions.py --profile smoke          # every code path, < 2 min, writes nothing
    python benchmarks/open_questions.py --flights --train-steps 300 --ema-decay 0.99 --n-eval 300
    python benchmarks/open_questions.py --limit --profile cpu    # 21 digits teachers
    python benchmarks/open_questions.py --rules --profile cpu    # 21 teachers per data set
    python benchmarks/open_questions.py --limit --rules --profile cpu   # both, one JSON

A run of one section keeps the other section of an earlier ``results/open_questions.json`` of the
same profile (under ``earlier_sections``, the command that made it).
Teachers are cached (:func:`kaclib.evaluation.get_teacher`), so an interrupted run resumes.  The
smoke profile trains into a temporary ``KACLIB_CACHE_DIR`` (the metric's feature nets are read
from, and if missing trained into, the usual cache: they are the same artifacts a real run uses)
and never writes ``results/open_questions.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, throwaway_cache, write_results  # noqa: E402
from open_questions_core import (  # noqa: E402, F401  (re-exported: open_questions_students.py)
    Settings,
    measure,
    summarise,
    tables,
    teacher_dir,
    train_and_measure,
    train_teacher,
)

from kaclib.data import load_dataset  # noqa: E402
from kaclib.diffusion_limit import kac_family, law_distance  # noqa: E402
from kaclib.evaluation import Evaluator  # noqa: E402
from kaclib.flights import RandomFlight  # noqa: E402
from kaclib.paths import build_path  # noqa: E402
from kaclib.profiles import get_profile  # noqa: E402
from kaclib.rules import apply_rules  # noqa: E402
from kaclib.stats import compare, fmt_ci, mean_ci  # noqa: E402

GRID_AC = ((9.0, 3.0), (25.0, 2.0))  # benchmarks/teacher_search.py's grid
GRID_GS = ("t", "t2")
METRICS = ("fid", "kid", "accuracy", "straightness")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", action="store_true", help="section 2: the xi sweep, diffusion path and twin")
    ap.add_argument("--rules", action="store_true", help="section 3: the rules against the grid search")
    ap.add_argument("--profile", default="cpu", help="smoke, cpu or gpu (smoke: both sections, tiny)")
    ap.add_argument(
        "--seeds", type=int, nargs="+", default=None, help="training seeds (default 0 1 2; smoke 0 1)"
    )
    ap.add_argument("--xis", type=float, nargs="+", default=None, help="dampings (default 2 8 32 128)")
    ap.add_argument("--datasets", nargs="+", default=["digits", "mnist5k-14"], help="data sets of --rules")
    ap.add_argument(
        "--rule-gs",
        nargs="+",
        default=None,
        choices=GRID_GS,
        help="clocks of the rules (default: the profile's)",
    )
    ap.add_argument(
        "--n-eval", type=int, default=None, help="images per score (default: the profile's n_eval)"
    )
    ap.add_argument("--n-traj", type=int, default=64, help="trajectories per straightness estimate")
    ap.add_argument("--few-steps", type=int, nargs="+", default=[1, 2, 4, 8], help="Euler step counts")
    ap.add_argument("--train-steps", type=int, default=None, help="override the profile's training steps")
    ap.add_argument("--ema-decay", type=float, default=None, help="override the profile's EMA decay")
    ap.add_argument("--flights", action="store_true", help="section 1: random flight against the Kac product")
    ap.add_argument(
        "--grid-from",
        default=None,
        help="a teacher_search.py JSON whose rows (same budget) stand for the grid on digits",
    )
    ap.add_argument("--notes", default="", help="a note on the budget, stored in the JSON")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    smoke = args.profile == "smoke"
    if smoke:
        args.limit = args.rules = args.flights = True
    if not (args.limit or args.rules or args.flights):
        ap.error("choose --limit, --rules and/or --flights (or --profile smoke)")
    args.seeds = tuple(args.seeds or ((0, 1) if smoke else (0, 1, 2)))
    args.xis = tuple(args.xis or ((2.0, 128.0) if smoke else (2.0, 8.0, 32.0, 128.0)))
    if smoke:
        args.few_steps, args.n_traj = [1, 4], min(args.n_traj, 16)
    return args


# ----------------------------------------------------------------------------- section 2


def limit_paths(prof, xis) -> dict:
    """``{name: path config}``: the Kac family at the profile's ``D``, its limit, the profile's
    Kac path and its Gaussian twin (all with the profile's ``f`` and ``g``)."""
    D = prof.path.c**2 / (2 * prof.path.a)
    sched = {"f": prof.path.f, "g": prof.path.g, "T": 1.0}
    paths = {f"kac xi={2 * a:g}": {"kind": "kac", "a": a, "c": c, **sched} for a, c in kac_family(D, xis)}
    paths["diffusion"] = {"kind": "diffusion", "D": D, **sched}
    profile_kac = {"a": float(prof.path.a), "c": float(prof.path.c), **sched}
    paths[f"kac xi={2 * prof.path.a:g} (profile)"] = {"kind": "kac", **profile_kac}
    paths["gaussian twin (profile)"] = {"kind": "gaussian-twin", **profile_kac}
    return paths


def law_section(paths: dict, n_t: int = 20) -> dict:
    """(i): the Kolmogorov distances along ``t`` in ``(0, 1]`` of every Kac path of ``paths``."""
    out = {}
    for name, cfg in paths.items():
        if cfg["kind"] != "kac":
            continue
        t = torch.linspace(1.0 / n_t, 1.0, n_t, dtype=torch.float64)
        s = build_path(cfg).g(t)
        d = law_distance(cfg["a"], cfg["c"], s, grid=2001).to_dict()
        out[name] = {
            **d,
            "t": t.tolist(),
            "max_to_matched": max(d["to_matched"]),
            "max_to_diffusion": max(d["to_diffusion"]),
            "at_T_to_matched": d["to_matched"][-1],
            "at_T_to_diffusion": d["to_diffusion"][-1],
        }
    return out


def limit_comparisons(rows: dict, few_steps) -> list[dict]:
    """Each Kac path against the diffusion path, and the profile's Kac path against its twin."""
    metrics = [
        ("fid", "<"),
        (f"rmse_{max(few_steps)}", "<"),
        (f"rmse_{min(few_steps)}", "<"),
        ("straightness", ">"),
    ]
    twin = "gaussian twin (profile)"
    kac_prof = next(k for k in rows if k.endswith("(profile)") and k != twin)
    pairs = [(k, "diffusion") for k in rows if k.startswith("kac")] + [(kac_prof, twin)]
    out = []
    for a, b in pairs:
        for m, direction in metrics:
            word = "higher" if direction == ">" else "lower"
            out.append(
                compare(
                    f"{a} has {word} {m} than {b}",
                    m,
                    a,
                    rows[a][f"{m}_values"],
                    b,
                    rows[b][f"{m}_values"],
                    direction=direction,
                ).to_dict()
            )
    return out


def run_limit(st: Settings, xis) -> dict:
    prof = st.profile
    paths = limit_paths(prof, xis)
    laws = law_section(paths)
    ev = Evaluator(prof.dataset, cache_dir=st.feature_cache)
    st = replace(st, n=min(st.n, ev.max_n))
    rows = {}
    for name, cfg in paths.items():
        t0 = time.perf_counter()
        rows[name] = train_and_measure(st, cfg, ev)
        print(
            f"[limit] {name}: FID {fmt_ci(rows[name]['fid_values'])}, straightness "
            f"{rows[name]['straightness']:.3f} ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    return {
        "D": prof.path.c**2 / (2 * prof.path.a),
        "xis": list(xis),
        "metric_name": ev.metric_name,
        "n_eval": st.n,
        "floor": ev.floor(st.n).to_dict(),
        "law_distance": laws,
        "rows": rows,
        "comparisons": limit_comparisons(rows, st.few_steps),
        **limit_table(rows, laws, st.few_steps),
    }


def limit_table(rows: dict, laws: dict, few_steps) -> dict:
    S = max(few_steps)
    headers = [
        "path",
        "KS to N(0, Var) at T",
        "KS to N(0, 2Dg) at T",
        "FID",
        f"FID {S} Euler",
        f"RMSE {S} Euler",
        "straightness",
    ]
    body = []
    for name, r in rows.items():
        law = laws.get(name)
        body.append(
            [
                name,
                law["at_T_to_matched"] if law else "-",
                law["at_T_to_diffusion"] if law else "-",
                fmt_ci(r["fid_values"]),
                fmt_ci(r[f"fid_{S}_values"]),
                fmt_ci(r[f"rmse_{S}_values"]),
                fmt_ci(r["straightness_values"]),
            ]
        )
    return tables(headers, body)


# ----------------------------------------------------------------------------- section 3


def rule_candidates(prof, dataset: str, gs) -> tuple[dict, dict]:
    """``(grid, rules)``: ``{name: path config}`` of the grid and of every rule at each clock of
    ``gs``, the rules computed from ``dataset``'s training split only."""
    f = prof.path.f
    grid = {
        f"grid a={a:g} c={c:g} g={g}": {"kind": "kac", "a": a, "c": c, "f": f, "g": g, "T": 1.0}
        for a, c in GRID_AC
        for g in GRID_GS
    }
    data = load_dataset(dataset, "train").images
    rules = {}
    for g in gs:
        for name, choice in apply_rules(
            data, f, g, 1.0, options={"variance": {"a": float(prof.path.a)}}
        ).items():
            rules[f"rule {name} g={g}"] = {**choice.path_config(), "rule": choice.to_dict()}
    return grid, rules


def _strip(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k != "rule"}


def rule_verdicts(grid_rows: dict, rule_rows: dict) -> tuple[str, list[dict]]:
    """The grid's best (lowest mean FID) and each rule's paired comparison with it."""
    best = min(grid_rows, key=lambda k: grid_rows[k]["fid"])
    b = grid_rows[best]
    ci = mean_ci(b["fid_values"])
    out = []
    for name, r in rule_rows.items():
        c = compare(
            f"{name} scores lower FID than the grid's best ({best})",
            "fid",
            name,
            r["fid_values"],
            best,
            b["fid_values"],
            direction="<",
        ).to_dict()
        c["outcome"] = {"holds": "better", "fails": "worse", "inconclusive": "tied"}[c["verdict"]]
        c["mean_within_best_ci"] = bool(math.isfinite(ci.lo) and ci.lo <= r["fid"] <= ci.hi)
        out.append(c)
    return best, out


def grid_from_search(path: str, st: Settings, grid: dict) -> dict:
    """``{name: row}`` of the grid read from a ``teacher_search.py`` JSON (digits, its 100-step AB-2
    FIDs on latents ``1000 + seed``), after checking that its budget is this run's."""
    old = json.loads(Path(path).read_text())
    s, prof = old["settings"], st.profile
    want = {
        "train_steps": st.train_steps or prof.teacher.train_steps,
        "n_eval": st.n,
        "seeds": list(st.seeds),
        "ema_decay": st.ema_decay or prof.teacher.ema_decay,
        "preset": prof.teacher.model_preset,
        "batch_size": prof.teacher.batch_size,
        "guidance_w": prof.sampling.w,
    }
    diff = {k: (s.get(k), v) for k, v in want.items() if s.get(k) != v}
    if diff or prof.sampling.steps != 100:
        raise SystemExit(f"--grid-from {path}: its settings differ from this run's: {diff}")
    rows = {}
    for name, cfg in grid.items():
        r = next(
            r
            for r in old["rows"]
            if (r["a"], r["c"], r["g"], r["head"]) == (cfg["a"], cfg["c"], cfg["g"], prof.teacher.head)
        )
        vals = r["fid_100_values"]
        rows[name] = {
            "path": cfg,
            "seeds": r["seeds"],
            "source": path,
            **summarise([{"fid": v} for v in vals]),
        }
    return rows


def run_rules_dataset(st: Settings, dataset: str, gs, grid_from: str | None = None) -> dict:
    grid, rules = rule_candidates(st.profile, dataset, gs)
    if st.profile.name == "smoke":  # every code path, fewer teachers
        grid = dict(list(grid.items())[:1])
    ev = Evaluator(dataset, cache_dir=st.feature_cache)
    st = replace(st, n=min(st.n, ev.max_n))
    rows = grid_from_search(grid_from, st, grid) if grid_from and dataset == "digits" else {}
    for name, cfg in {**grid, **rules}.items():
        if name in rows:
            continue
        t0 = time.perf_counter()
        rows[name] = train_and_measure(st, _strip(cfg), ev, dataset=dataset, few=False)
        if "rule" in cfg:
            rows[name]["rule"] = cfg["rule"]
        print(
            f"[rules {dataset}] {name} (a={cfg['a']:.3g}, c={cfg['c']:.3g}): FID {fmt_ci(rows[name]['fid_values'])} "
            f"({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    best, verdicts = rule_verdicts({k: rows[k] for k in grid}, {k: rows[k] for k in rules})
    table = tables(
        ["config", "a", "c", "g", "FID", "vs grid's best"],
        [
            [
                k,
                r["path"]["a"],
                r["path"]["c"],
                r["path"]["g"],
                fmt_ci(r["fid_values"]),
                next((v["outcome"] for v in verdicts if v["a"] == k), "best" if k == best else ""),
            ]
            for k, r in rows.items()
        ],
    )
    return {
        "dataset": dataset,
        "metric_name": ev.metric_name,
        "n_eval": st.n,
        "floor": ev.floor(st.n).to_dict(),
        "rows": rows,
        "grid_best": best,
        "comparisons": verdicts,
        "grid_source": grid_from if rows[best].get("source") else "trained here",
        **table,
    }


def run_rules(st: Settings, datasets, gs, grid_from: str | None = None) -> dict:
    return {
        "grid": {"ac": [list(x) for x in GRID_AC], "g": list(GRID_GS), "head": st.profile.teacher.head},
        "rule_gs": list(gs),
        "datasets": {d: run_rules_dataset(st, d, gs, grid_from) for d in datasets},
    }


# ----------------------------------------------------------------------------- section 1


def flight_paths(prof, dim: int) -> dict:
    """The profile's Kac path (coordinate-wise) and the random flight in ``R^dim`` with the same
    second moments (:meth:`kaclib.flights.RandomFlight.matching_kac`: rate ``2a``, speed ``c sqrt(dim)``)."""
    sched = {"f": prof.path.f, "g": prof.path.g, "T": 1.0}
    a, c = float(prof.path.a), float(prof.path.c)
    fl = RandomFlight.matching_kac(a, c, dim)
    return {
        f"kac a={a:g} c={c:g} (coordinate-wise)": {"kind": "kac", "a": a, "c": c, **sched},
        f"flight a={fl.a:g} c={fl.c:g} in R^{dim}": {"kind": "flight", "a": fl.a, "c": fl.c, **sched},
    }


def run_flights(st: Settings) -> dict:
    """Section 1 on the profile's data set: the flight teacher against the Kac teacher, same network,
    budget, seeds and latent seeds; quality at ``teacher_steps`` AB-2 steps and at few Euler steps."""
    prof = st.profile
    ev = Evaluator(prof.dataset, cache_dir=st.feature_cache)
    st = replace(st, n=min(st.n, ev.max_n))
    dim = math.prod(ev.image_shape)
    paths = flight_paths(prof, dim)
    rows = {}
    for name, cfg in paths.items():
        t0 = time.perf_counter()
        rows[name] = train_and_measure(st, cfg, ev)
        print(f"[flights] {name}: FID {fmt_ci(rows[name]['fid_values'])} ({time.perf_counter() - t0:.0f} s)")
    kac, flight = list(rows)
    metrics = ["fid", *(f"fid_{S}" for S in st.few_steps), *(f"rmse_{S}" for S in st.few_steps)]
    comparisons = [
        compare(
            f"{flight} has lower {m} than {kac}",
            m,
            flight,
            rows[flight][f"{m}_values"],
            kac,
            rows[kac][f"{m}_values"],
            direction="<",
        ).to_dict()
        for m in metrics
    ] + [
        compare(
            f"{flight} has higher straightness than {kac}",
            "straightness",
            flight,
            rows[flight]["straightness_values"],
            kac,
            rows[kac]["straightness_values"],
            direction=">",
        ).to_dict()
    ]
    headers = ["path", f"FID {prof.sampling.steps} AB-2", *(f"FID {S} Euler" for S in st.few_steps)]
    headers += [f"RMSE {S} Euler" for S in st.few_steps] + ["straightness"]
    body = [
        [k, *(fmt_ci(r[f"{m}_values"]) for m in metrics), fmt_ci(r["straightness_values"])]
        for k, r in rows.items()
    ]
    return {
        "dataset": prof.dataset,
        "dim": dim,
        "metric_name": ev.metric_name,
        "n_eval": st.n,
        "floor": ev.floor(st.n).to_dict(),
        "rows": rows,
        "comparisons": comparisons,
        **tables(headers, body),
    }


# ----------------------------------------------------------------------------- main


def keep_earlier_sections(payload: dict) -> dict:
    """Carry over a section (``limit`` or ``rules``) that this run did not compute from an earlier
    ``results/open_questions.json`` of the same profile, with its own command and settings."""
    previous = RESULTS / "open_questions.json"
    if not previous.is_file():
        return payload
    old = json.loads(previous.read_text())
    if old.get("profile") != payload["profile"]:
        return payload
    for section in ("flights", "limit", "rules"):
        if section not in payload and section in old:
            payload[section] = old[section]
            origin = old.get("earlier_sections", {}).get(section) or {
                "command": old.get("command"),
                "settings": old.get("settings"),
                "machine": old.get("machine"),
            }
            payload.setdefault("earlier_sections", {})[section] = origin
    return payload


def _settings(args, prof, feature_cache) -> Settings:
    if max(args.few_steps) >= prof.sampling.steps or min(args.few_steps) < 1:
        raise SystemExit(f"open_questions.py: error: --few-steps must lie in [1, {prof.sampling.steps})")
    n = args.n_eval or prof.evaluation.n
    return Settings(
        profile=prof,
        seeds=args.seeds,
        n=n,
        n_traj=args.n_traj,
        few_steps=tuple(args.few_steps),
        train_steps=args.train_steps,
        ema_decay=args.ema_decay,
        feature_cache=feature_cache,
        progress=args.progress,
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    prof = get_profile(args.profile)
    smoke = prof.name == "smoke"
    t_all = time.perf_counter()
    feature_cache = None
    if smoke:  # a throw-away cache for the teachers; the feature nets come from the usual one
        from kaclib.artifacts import cache_root

        feature_cache = str(cache_root())
    with throwaway_cache(smoke, "kaclib-open-questions-smoke-"):
        st = _settings(args, prof, feature_cache)
        payload = {
            "profile": prof.name,
            "settings": {
                "seeds": list(st.seeds),
                "n_eval": st.n,
                "n_traj": st.n_traj,
                "few_steps": list(st.few_steps),
                "teacher_steps": prof.sampling.steps,
                "guidance_w": prof.sampling.w,
                "train_steps": args.train_steps or prof.teacher.train_steps,
                "ema_decay": args.ema_decay or prof.teacher.ema_decay,
                "threads": args.threads,
            },
            "budget": {
                "profile_train_steps": prof.teacher.train_steps,
                "train_steps": args.train_steps or prof.teacher.train_steps,
                "profile_n_eval": prof.evaluation.n,
                "n_eval": st.n,
                "seeds": list(st.seeds),
                "xis": list(args.xis),
                "datasets": list(args.datasets),
                "grid_from": args.grid_from,
            },
            "notes": args.notes,
        }
        if args.flights:
            payload["flights"] = run_flights(st)
            print(payload["flights"]["table"])
        if args.limit:
            payload["limit"] = run_limit(st, args.xis)
            print(payload["limit"]["table"])
        if args.rules:
            gs = tuple(args.rule_gs or (prof.path.g,))
            payload["rules"] = run_rules(st, args.datasets, gs, args.grid_from)
            for d in payload["rules"]["datasets"].values():
                print(f"{d['dataset']} (grid's best: {d['grid_best']})\n{d['table']}")
    payload["total_seconds"] = time.perf_counter() - t_all
    json.dumps(payload)  # JSON-ready whatever is written
    print(f"total {payload['total_seconds']:.0f} s")
    if smoke:
        print("(not written: smoke profile)")
        return 0
    out = write_results(
        "open_questions", keep_earlier_sections(payload), command="python " + " ".join(sys.argv)
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
