"""The guided Kac-flow teacher on digits, against the Gaussian-path peer (same network, budget, seed).

Trains (or loads from the artifact cache, :func:`kaclib.evaluation.get_teacher`) the ``cpu``
profile's Kac teacher config (:func:`kaclib.evaluation.teacher_config`: ``kac_a``, ``kac_c``,
``kac_g``, ``head``) and its Gaussian-path peer for each seed -- by default with a reduced budget
(1200 steps, EMA 0.995) that fits a busy 2-core machine; ``--train-steps 0 --ema-decay 0`` uses the
profile's own budget (the teachers the book trains) -- then measures with FID-digits
(the feature-net FID: NOT comparable with Inception FIDs) and class accuracy:

1. guidance sweep: AB-2, 100 steps, ``w`` in {0, 1, 1.2, 1.5, 2, 3} for the Kac teacher; the best
   mean ``w*`` is the guided teacher.  The peer is scored at ``w`` in {0, 1, w*};
2. headline: Euler, midpoint and AB-2 at 100 steps and ``w*`` (true NFE and network passes);
3. steps without distillation: AB-2 at 1, 2, 4, 20, 100 steps and ``w*``;
4. the learned Kac velocity against the finite-speed bounds (``c sqrt(d)`` and per coordinate
   ``|f'| + g' c``), conditional and guided (the exact guided field's bound is ``(2w - 1)`` times
   that for ``w >= 1``);
5. training and sampling time.

Headline numbers are the mean and the spread (half the range) over the seeds, with the metric's
floor (real val images against the same train statistics) beside them.  Teachers are cached by
their resolved config, so runs with the same budget (the book, the ladder benchmark) reuse them.

    python benchmarks/teacher.py                 # default: 2 seeds, 1200 training steps, n = 400 per FID
    python benchmarks/teacher.py --train-steps 0 --ema-decay 0   # the profile's own budget (4000 steps)
    python benchmarks/teacher.py --quick         # a smoke run of the script (tiny budget, no JSON)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import format_table, write_results  # noqa: E402

from kaclib import runs  # noqa: E402
from kaclib.data import load_dataset  # noqa: E402
from kaclib.evaluation import Evaluator, generate, get_teacher, teacher_config, teacher_dir  # noqa: E402
from kaclib.guidance import GuidedVelocity, guided_bound  # noqa: E402
from kaclib.metrics import velocity_norm_stats  # noqa: E402
from kaclib.profiles import get_profile  # noqa: E402
from kaclib.train import load_run  # noqa: E402

WS = (0.0, 1.0, 1.2, 1.5, 2.0, 3.0)
STEPS = (1, 2, 4, 20, 100)
SOLVERS = ("euler", "midpoint", "ab2")
VEL_TIMES = (0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0)


def mean_spread(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (max(values) - min(values)) / 2


def pm(values, digits=3):
    m, s = mean_spread(values)
    if m is None:
        return "-"
    return f"{m:.{digits}f}" if len(values) < 2 else f"{m:.{digits}f} ± {s:.{digits}f}"


class Bench:
    def __init__(self, evaluator, n, sample_seed, teacher_steps, progress):
        self.evaluator, self.n, self.sample_seed = evaluator, n, sample_seed
        self.teacher_steps, self.progress = teacher_steps, progress
        self.rows = []

    def score(self, name, seed, run, steps, method, w):
        for r in self.rows:
            if (r["path"], r["seed"], r["steps"], r["method"], r["w"]) == (name, seed, steps, method, w):
                return r
        gen = generate(run.model, run.path, self.n, steps, method=method, w=w, seed=self.sample_seed,
                       progress=self.progress)
        sc = self.evaluator.score(gen.images, gen.labels)
        row = {"path": name, "seed": seed, "fid": sc.fid, "accuracy": sc.accuracy, **gen.summary()}
        self.rows.append(row)
        return row

    def get(self, name, steps, method, w, key="fid"):
        return [r[key] for r in self.rows if (r["path"], r["steps"], r["method"], r["w"]) == (name, steps, method, w)]


def train_info(run_dir: Path, wall: float, cached: bool) -> dict:
    log = runs.read_jsonl(run_dir / runs.METRICS_FILE)
    last = log[-1] if log else {}
    return {"train_seconds": last.get("elapsed_s"), "seconds_per_step": (last.get("elapsed_s") or 0) / max(last.get("step", 1), 1),
            "final_loss": last.get("loss"), "wall_this_call": wall, "cached": cached, "run_dir": str(run_dir)}


def velocity_rows(run, data, w_star, seed):
    gen = torch.Generator().manual_seed(seed)
    cond = velocity_norm_stats(run.model, run.path, data, VEL_TIMES, n=256, generator=gen, y="data")
    guided_field = GuidedVelocity(run.model, w_star, 10)
    gen = torch.Generator().manual_seed(seed)
    guided = velocity_norm_stats(guided_field, run.path, data, VEL_TIMES, n=256, generator=gen, y="data")
    out = []
    for i, t in enumerate(VEL_TIMES):
        out.append({
            "t": t, "speed_bound": cond.speed_bound, "norm_bound": cond.norm_bound[i],
            "model_norm_mean": cond.model_norm_mean[i], "model_norm_max": cond.model_norm_max[i],
            "target_norm_max": cond.target_norm_max[i],
            "coord_ratio_max": cond.coord_ratio_max[i], "violation_fraction": cond.violation_fraction[i],
            "target_coord_ratio_max": cond.target_coord_ratio_max[i],
            "guided_w": w_star, "guided_norm_max": guided.model_norm_max[i],
            "guided_coord_ratio_max": guided.coord_ratio_max[i],
            "guided_bound_factor": guided_bound(w_star, 1.0),
        })
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    ap.add_argument("--profile", default="cpu", help="profile whose teacher is benchmarked (default cpu)")
    ap.add_argument("--seeds", default=None, help="comma-separated training seeds (default 0,1)")
    ap.add_argument("--n-eval", type=int, default=400, help="generated images per FID (default 400)")
    ap.add_argument("--train-steps", type=int, default=1200,
                    help="training steps of every teacher (default 1200: a reduced budget that fits this shared "
                         "machine; 0 = the profile's train_steps)")
    ap.add_argument("--ema-decay", type=float, default=0.995,
                    help="EMA decay (default 0.995 for the reduced budget; 0 = TrainConfig's default 0.999)")
    ap.add_argument("--train-only", default=None, metavar="PATHS",
                    help="only train (or find cached) the teachers of these paths (kac,gaussian), then exit")
    ap.add_argument("--sample-seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="tiny budget to check the script (writes no JSON)")
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    prof = get_profile(args.profile)
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [0, 1]
    changes = {}
    if args.train_steps:
        changes["steps"] = args.train_steps
    if args.ema_decay:
        changes["ema_decay"] = args.ema_decay
    n = args.n_eval
    if args.quick:
        changes, n, seeds, args.no_save = {"steps": 20}, 40, seeds[:1], True
    teacher_steps = prof.teacher_steps

    if args.train_only:
        for name in args.train_only.split(","):
            for seed in seeds:
                t0 = time.perf_counter()
                run_dir = get_teacher(teacher_config(prof, path=name, seed=seed, **changes), progress=args.progress)
                print(f"teacher {name} seed {seed}: {run_dir} ({time.perf_counter() - t0:.0f} s)", flush=True)
        return 0

    evaluator = Evaluator(prof.dataset)
    floor = evaluator.floor_scores()
    data = load_dataset(prof.dataset, "train")
    bench = Bench(evaluator, n, args.sample_seed, teacher_steps, args.progress)
    models, training, configs = {}, [], {}

    def save(status):
        if args.no_save:
            return
        write_results("teacher", {"status": status, "rows": bench.rows, "training": training,
                                  "configs": configs}, command="python " + " ".join(sys.argv))

    # ---- train (or load) every teacher
    for name in ("kac", "gaussian"):
        for seed in seeds:
            cfg = teacher_config(prof, path=name, seed=seed, **changes)
            configs[f"{name}-{seed}"] = cfg.resolved().to_dict()
            cached = (teacher_dir(cfg) / "config.json").is_file()
            t0 = time.perf_counter()
            run_dir = get_teacher(cfg, progress=args.progress)
            info = {"path": name, "seed": seed, **train_info(run_dir, time.perf_counter() - t0, cached)}
            training.append(info)
            models[(name, seed)] = load_run(run_dir)
            print(f"teacher {name} seed {seed}: {run_dir} (train {info['train_seconds']:.0f} s"
                  f"{', cached' if info['cached'] else ''}; {time.perf_counter() - t_start:.0f} s so far)", flush=True)
    save("partial")

    # ---- 1. guidance sweep (AB-2, 100 steps)
    for seed in seeds:
        for w in WS:
            bench.score("kac", seed, models[("kac", seed)], teacher_steps, "ab2", w)
        save("partial")
    w_star = min(WS, key=lambda w: statistics.fmean(bench.get("kac", teacher_steps, "ab2", w)))
    for seed in seeds:
        for w in sorted({0.0, 1.0, w_star}):
            bench.score("gaussian", seed, models[("gaussian", seed)], teacher_steps, "ab2", w)
    print(f"guidance sweep done: w* = {w_star} ({time.perf_counter() - t_start:.0f} s so far)", flush=True)
    save("partial")

    # ---- 2. headline solvers at 100 steps and w*; 3. steps without distillation
    for name in ("kac", "gaussian"):
        for seed in seeds:
            for method in SOLVERS:
                bench.score(name, seed, models[(name, seed)], teacher_steps, method, w_star)
            for steps in STEPS:
                bench.score(name, seed, models[(name, seed)], steps, "ab2", w_star)
        save("partial")
    print(f"solvers and steps done ({time.perf_counter() - t_start:.0f} s so far)", flush=True)

    # ---- 4. velocity bounds (Kac)
    velocity = {seed: velocity_rows(models[("kac", seed)], data, w_star, seed) for seed in seeds}

    # ---- tables
    metric = evaluator.metric_name
    guided_fid = bench.get("kac", teacher_steps, "ab2", w_star)
    unguided_fid = bench.get("kac", teacher_steps, "ab2", 0.0)
    target_met = max(guided_fid) < min(unguided_fid)

    head_rows = []
    for name in ("kac", "gaussian"):
        for method in SOLVERS:
            rs = [r for r in bench.rows if (r["path"], r["steps"], r["method"], r["w"]) == (name, teacher_steps, method, w_star)]
            head_rows.append([name, method, teacher_steps, w_star, rs[0]["nfe"], rs[0]["network_passes"],
                              pm([r["fid"] for r in rs]), pm([r["accuracy"] for r in rs]), floor.fid,
                              pm([r["seconds_per_image"] * 1e3 for r in rs], 2)])
    t_head = format_table(["path", "solver", "steps", "w", "NFE", "passes", f"{metric} (mean ± spread)", "accuracy",
                           "floor", "ms/image"], head_rows)
    w_rows = []
    for w in WS:
        w_rows.append([w, pm(bench.get("kac", teacher_steps, "ab2", w)), pm(bench.get("kac", teacher_steps, "ab2", w, "accuracy")),
                       pm(bench.get("gaussian", teacher_steps, "ab2", w)) if bench.get("gaussian", teacher_steps, "ab2", w) else "-",
                       bench.get("kac", teacher_steps, "ab2", w, "network_passes")[0]])
    t_w = format_table(["w", f"Kac {metric}", "Kac accuracy", f"Gaussian {metric}", "passes"], w_rows)
    s_rows = []
    for steps in STEPS:
        kr = [r for r in bench.rows if (r["path"], r["steps"], r["method"], r["w"]) == ("kac", steps, "ab2", w_star)]
        s_rows.append([steps, kr[0]["nfe"], kr[0]["network_passes"], pm(bench.get("kac", steps, "ab2", w_star)),
                       pm(bench.get("gaussian", steps, "ab2", w_star))])
    t_steps = format_table(["AB-2 steps", "NFE", "passes", f"Kac {metric}", f"Gaussian {metric}"], s_rows)
    v_rows = []
    for i, t in enumerate(VEL_TIMES):
        vs = [velocity[s][i] for s in seeds]
        v_rows.append([t, max(v["model_norm_max"] for v in vs), vs[0]["speed_bound"], vs[0]["norm_bound"],
                       max(v["coord_ratio_max"] for v in vs), max(v["violation_fraction"] for v in vs),
                       max(v["guided_coord_ratio_max"] for v in vs), vs[0]["guided_bound_factor"]])
    t_vel = format_table(["t", "max ||u_model||", "c sqrt(d)", "(|f'|+g'c) sqrt(d)", "max |u|/coord bound",
                          "violating coords", f"max |u_w|/coord bound (w={w_star})", "(2w-1) (exact guided)"], v_rows)
    t_train = format_table(["path", "seed", "train s", "s/step", "final loss", "cached"],
                           [[r["path"], r["seed"], r["train_seconds"], r["seconds_per_step"], r["final_loss"], r["cached"]]
                            for r in training])
    for title, tab in (("headline (100 steps, guided)", t_head), ("guidance sweep (AB-2, 100 steps)", t_w),
                       ("steps without distillation (AB-2, w*)", t_steps), ("velocity vs the finite-speed bounds (Kac)", t_vel),
                       ("training", t_train)):
        print(f"\n## {title}\n{tab}")
    total = time.perf_counter() - t_start
    print(f"\nfloor: {metric} {floor.fid:.3f} (real val n = {floor.n}), accuracy {floor.accuracy:.3f}")
    print(f"target: guided AB-2 (w* = {w_star}) {pm(guided_fid)} vs unguided (w = 0) {pm(unguided_fid)}: "
          f"{'met' if target_met else 'MISSED'}; total {total:.0f} s")

    if not args.no_save:
        out = write_results("teacher", {
            "status": "complete",
            "settings": {"profile": prof.name, "seeds": seeds, "n_eval": n, "sample_seed": args.sample_seed,
                         "teacher_steps": teacher_steps, "threads": args.threads, "ws": list(WS), "steps": list(STEPS),
                         "train_steps": configs[f"kac-{seeds[0]}"]["steps"]},
            "metric_name": metric, "floor": floor.to_dict(), "w_star": w_star,
            "target_guided_beats_unguided": {"guided_w": w_star, "guided_fid": guided_fid, "unguided_fid": unguided_fid,
                                             "met": target_met},
            "spread": "half the range over the seeds",
            "tables": {"headline": t_head, "guidance": t_w, "steps": t_steps, "velocity": t_vel, "training": t_train},
            "rows": bench.rows, "velocity": velocity, "training": training, "configs": configs,
            "total_seconds": total,
        }, command="python " + " ".join(sys.argv))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
