"""The Kac-flow teacher on digits, on the held-out protocol: guidance, solvers, finite speed.

For each training seed ``s`` this trains (or loads from the artifact cache,
:func:`kaclib.evaluation.get_teacher`) the profile's Kac teacher, its Gaussian-path peer (same
network, budget and seed) and an under-trained Kac teacher (``--under-steps``), samples every set
from the same latents (seed ``1000 + s``) and scores it with :class:`kaclib.evaluation.Evaluator`
(FID-<dataset> on the project's own feature net, KID, precision / recall, accuracy):

1. guidance: ``w`` on a grid that covers both readings of the paper's 1.2 (``v_u + w (v_c - v_u)``
   gives 1.2; ``(1 + w') v_c - w' v_u`` gives ``w = 1 + w' = 2.2``) and beyond, at 100 AB-2 steps,
   at 4 AB-2 steps and for the under-trained teacher;
2. solvers at equal NFE (4 - 20) against a 1,000-step AB-2 reference from the same latents:
   the paired per-image RMSE (free of feature-net noise) and FID;
3. the learned velocity against the right finite-speed bound ``|f'(t)| + g'(t) c`` per coordinate,
   along the sampling trajectories (:mod:`kaclib.velocity_checks`), conditional and guided;
4. the paired comparisons of the claims, with 95% CIs and verdicts (:mod:`kaclib.stats`).

    python benchmarks/teacher.py                    # cpu profile, seeds 0,1,2: results/teacher.json
    python benchmarks/teacher.py --quick            # a smoke run of the script (writes no JSON)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import format_table, write_results  # noqa: E402

from kaclib.evaluation import Evaluator, evaluate_run, get_teacher, teacher_config  # noqa: E402
from kaclib.guidance import GuidedVelocity  # noqa: E402
from kaclib.profiles import get_profile  # noqa: E402
from kaclib.sample_quality import paired_rmse  # noqa: E402
from kaclib.solvers import time_grid  # noqa: E402
from kaclib.stats import compare, mean_ci  # noqa: E402
from kaclib.train import load_run  # noqa: E402
from kaclib.velocity_checks import trajectory_bound_stats  # noqa: E402

WS = (0.0, 1.0, 1.2, 1.5, 2.0, 2.2, 3.0)
NFES = (4, 8, 12, 20)
SOLVER_STEPS = {"euler": 1, "midpoint": 2, "ab2": 1}  # NFE per step
METRICS = ("fid", "kid", "precision", "recall", "accuracy")


class Bench:
    """Scores of named rows, one value per seed in the order of ``seeds``."""

    def __init__(self, evaluator, n, seeds, progress):
        self.ev, self.n, self.seeds, self.progress = evaluator, n, seeds, progress
        self.values: dict[str, dict[str, list]] = {}
        self.meta: dict[str, dict] = {}

    def run(self, row, seed, run, steps, method, w, reference=None, **extra):
        r = evaluate_run(
            run,
            steps,
            method,
            w,
            n=self.n,
            seed=1000 + seed,
            evaluator=self.ev,
            progress=self.progress,
            return_images=reference is not None,
        )
        vals = {m: r[m] for m in METRICS}
        if reference is not None:
            vals["paired_rmse_to_reference"] = float(paired_rmse(r["images"], reference).mean())
        for m, v in vals.items():
            self.values.setdefault(row, {}).setdefault(m, []).append(v)
        self.meta[row] = {
            "steps": steps,
            "method": method,
            "w": w,
            "nfe": r["nfe"],
            "network_passes": r["network_passes"],
            **extra,
        }
        return r

    def summary(self) -> dict:
        return {
            row: {**self.meta[row], **{m: {"values": v, **mean_ci(v).to_dict()} for m, v in ms.items()}}
            for row, ms in self.values.items()
        }

    def cell(self, row, m="fid", d=3):
        if row not in self.values:
            return "-"
        ci = mean_ci(self.values[row][m])
        return f"{ci.mean:.{d}f} ± {ci.half_width:.{d}f}"


def comparisons(bench: Bench, steps: int) -> list[dict]:
    v, out = bench.values, []

    def add(claim, a, b, metrics=("fid", "kid"), direction="<"):
        for m in metrics:
            if a in v and b in v:
                out.append(compare(claim, m, a, v[a][m], b, v[b][m], direction=direction).to_dict())

    add(
        "guidance helps: the conditional field (w = 1) beats unconditional sampling (w = 0)",
        f"kac/w=1/{steps}",
        f"kac/w=0/{steps}",
    )
    for setting in (f"{steps}", "4", f"{steps}/under-trained"):
        for w in (1.2, 2.2, 2.0):
            add(
                f"w = {w:g} beats w = 1 ({setting} steps)"
                if "under" not in setting
                else f"w = {w:g} beats w = 1 (under-trained teacher, {steps} steps)",
                f"kac/w={w:g}/{setting}",
                f"kac/w=1/{setting}",
            )
    add(
        f"the Kac teacher beats the Gaussian-path peer ({steps} AB-2 steps, w = 1)",
        f"kac/w=1/{steps}",
        f"gaussian/w=1/{steps}",
    )
    for nfe in NFES:
        for s in ("ab2", "midpoint"):
            add(
                f"{s} is closer than Euler to the 1,000-step reference at NFE {nfe}",
                f"solver/{s}/nfe={nfe}",
                f"solver/euler/nfe={nfe}",
                metrics=("paired_rmse_to_reference",),
            )
    return out


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    ap.add_argument(
        "--n-eval",
        type=int,
        default=None,
        help="images per estimate (default: the profile's, capped at the unseen real images of the floor)",
    )
    ap.add_argument(
        "--under-steps", type=int, default=300, help="training steps of the under-trained teacher"
    )
    ap.add_argument("--quick", action="store_true", help="smoke profile, one seed, no JSON")
    ap.add_argument("--progress", action="store_true")
    return ap.parse_args(argv)


def run_seed(bench: Bench, prof, s: int, under: int, n: int, progress: bool) -> tuple[dict, dict]:
    """Seed ``s``: 1. guidance, 2. solvers at equal NFE, 3. finite speed along the trajectories.
    Returns ``(training run dirs, velocity statistics)`` of the seed."""
    S = prof.sampling.steps
    dirs = {
        name: get_teacher(cfg, progress=progress)
        for name, cfg in {
            "kac": teacher_config(prof, seed=s),
            "gaussian": teacher_config(prof, path="gaussian", seed=s),
            "under": teacher_config(prof, seed=s, steps=under),
        }.items()
    }
    training = {k: str(d) for k, d in dirs.items()}
    runs_ = {k: load_run(d) for k, d in dirs.items()}
    kac = runs_["kac"]
    for w in WS:  # 1. guidance
        bench.run(f"kac/w={w:g}/{S}", s, kac, S, "ab2", w)
        bench.run(f"kac/w={w:g}/4", s, kac, 4, "ab2", w)
        bench.run(f"kac/w={w:g}/{S}/under-trained", s, runs_["under"], S, "ab2", w, train_steps=under)
    for w in (0.0, 1.0):
        bench.run(f"gaussian/w={w:g}/{S}", s, runs_["gaussian"], S, "ab2", w)
    ref = kac.generate(n, 10 * S, "ab2", 1.0, seed=1000 + s).images  # 2. solvers
    for nfe in NFES:
        for method, per in SOLVER_STEPS.items():
            bench.run(f"solver/{method}/nfe={nfe}", s, kac, nfe // per, method, 1.0, reference=ref)
    velocity = {}  # 3. finite speed along the trajectories
    for w in (1.0, 2.0):
        g = kac.generate(n, S, "ab2", w, seed=1000 + s, return_trajectory=True)
        field = kac.model if w == 1.0 else GuidedVelocity(kac.model, w, kac.num_classes)
        velocity[f"w={w:g}"] = trajectory_bound_stats(
            field, kac.path, g.trajectory, time_grid(S), labels=g.labels
        ).to_dict()
    return training, velocity


def guidance_table(bench: Bench, metric: str, S: int, under: int) -> str:
    w_rows = [
        [
            f"{w:g}",
            f"{w - 1:g}",
            bench.cell(f"kac/w={w:g}/{S}"),
            bench.cell(f"kac/w={w:g}/{S}", "kid"),
            bench.cell(f"kac/w={w:g}/{S}", "precision"),
            bench.cell(f"kac/w={w:g}/{S}", "recall"),
            bench.cell(f"kac/w={w:g}/{S}", "accuracy"),
            bench.cell(f"kac/w={w:g}/4"),
            bench.cell(f"kac/w={w:g}/{S}/under-trained"),
        ]
        for w in WS
    ]
    return format_table(
        [
            "w",
            "w' = w - 1",
            f"{metric} ({S} steps)",
            "KID",
            "precision",
            "recall",
            "accuracy",
            f"{metric} (4 steps)",
            f"{metric} (under-trained, {under} training steps)",
        ],
        w_rows,
    )


def solver_table(bench: Bench, metric: str) -> str:
    s_rows = [
        [nfe]
        + [bench.cell(f"solver/{m}/nfe={nfe}", "paired_rmse_to_reference", 4) for m in SOLVER_STEPS]
        + [bench.cell(f"solver/{m}/nfe={nfe}") for m in SOLVER_STEPS]
        for nfe in NFES
    ]
    return format_table(
        ["NFE"] + [f"RMSE {m}" for m in SOLVER_STEPS] + [f"{metric} {m}" for m in SOLVER_STEPS], s_rows
    )


def velocity_table(velocity: dict, seeds, S: int) -> str:
    v_rows = []
    for k, t in enumerate(velocity[seeds[0]]["w=1"]["times"]):
        if k % max(1, S // 10) and k != len(velocity[seeds[0]]["w=1"]["times"]) - 1:
            continue
        v_rows.append(
            [f"{t:.2f}", f"{velocity[seeds[0]]['w=1']['bound'][k]:.3f}"]
            + [
                f"{max(velocity[s][w]['ratio_max'][k] for s in seeds):.3f} / "
                f"{max(velocity[s][w]['violation_fraction'][k] for s in seeds):.4f}"
                for w in ("w=1", "w=2")
            ]
        )
    return format_table(
        ["t", "|f'|+g'c", "w = 1: max ratio / violating", "w = 2: max ratio / violating"], v_rows
    )


def print_report(metric, n, seeds, mc, t_w, t_s, t_v, comps) -> None:
    print(
        f"\n{metric}, n = {n}, seeds {seeds}, mean ± 95% CI half-width; floor (unseen real) "
        f"{mc['fid'].mean:.3f} ± {mc['fid'].half_width:.3f}, KID {mc['kid'].mean:.3f}"
    )
    for title, tab in (
        ("guidance", t_w),
        ("solvers at equal NFE", t_s),
        ("finite speed along trajectories", t_v),
    ):
        print(f"\n## {title}\n{tab}")
    print("\n## comparisons")
    for c in comps:
        print(
            f"  {c['verdict']:12s} {c['claim']} [{c['metric']}]: {c['diff_mean']:+.4g} "
            f"[{c['ci95'][0]:+.4g}, {c['ci95'][1]:+.4g}]"
        )


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    prof = get_profile("smoke" if args.quick else args.profile)
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    ev = Evaluator(prof.dataset)
    n = min(args.n_eval or prof.evaluation.n, ev.max_n)
    S = prof.sampling.steps
    under = min(args.under_steps, prof.teacher.train_steps)
    bench = Bench(ev, n, seeds, args.progress)
    floors = [ev.floor(n, seed=s) for s in seeds]
    velocity, training = {}, {}
    for s in seeds:
        training[s], velocity[s] = run_seed(bench, prof, s, under, n, args.progress)
        print(f"seed {s} done ({time.perf_counter() - t_start:.0f} s)", flush=True)

    metric = ev.metric_name
    floor = {m: [getattr(f, m) for f in floors] for m in ("fid", "kid", "precision", "recall", "accuracy")}
    comps = comparisons(bench, S)
    t_w, t_s = guidance_table(bench, metric, S, under), solver_table(bench, metric)
    t_v = velocity_table(velocity, seeds, S)
    mc = {m: mean_ci(v) for m, v in floor.items()}
    print_report(metric, n, seeds, mc, t_w, t_s, t_v, comps)
    total = time.perf_counter() - t_start
    print(f"total {total:.0f} s")
    if args.quick:
        return 0
    settings = {
        "profile": prof.name,
        "seeds": seeds,
        "n_eval": n,
        "teacher_steps": S,
        "train_steps": prof.teacher.train_steps,
        "under_trained_steps": under,
        "threads": args.threads,
        "ws": list(WS),
        "nfes": list(NFES),
        "reference": f"AB-2, {10 * S} steps, w = 1",
    }
    out = write_results(
        "teacher",
        {
            "settings": settings,
            "protocol": "generators learn from 'train'; feature net from 'feature'; statistics from 'ref'; floor = "
            "unseen real 'test' images at the same n and class balance; latents 1000 + seed shared "
            "by every row of a seed; '±' = 95% CI half-width over seeds",
            "metric_name": metric,
            "floor": {"fid": mc["fid"].mean, "kid": mc["kid"].mean, "values": floor, "n": n},
            "results": bench.summary(),
            "comparisons": comps,
            "velocity_along_trajectories": velocity,
            "tables": {"guidance": t_w, "solvers": t_s, "velocity": t_v},
            "training": training,
            "total_seconds": total,
        },
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
