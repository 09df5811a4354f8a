"""The distillation ladder's measured trade-off: 100 -> 20 -> 4 -> 2 -> 1 steps.

For every step count of the ladder this measures FID-<dataset>, class accuracy, NFE / network
passes and sampling wall time per 1,000 images of

  (i)   the Kac-flow students of the ladder (Euler, 1 pass per step: guidance is baked in);
  (ii)  the Kac teacher sampled with that many steps, no distillation (guided AB-2, 2 passes/step);
  (iii) the single-stage 100 -> 1 student, trained with the SAME number of student iterations as
        the whole ladder and (through its pool size) the same number of teacher network passes;
  (iv)  the Gaussian-path teacher distilled with the same ladder and budget,

beside the paper's CIFAR-10 column as ratios to the 100-step teacher.  Headline rows are over
``--seeds`` (distillation seed s, evaluation latents seed 1000 + s; the teachers are the shared
``kaclib.evaluation.get_teacher`` artifacts, trained once).  Every ladder is a cached, resumable run
directory (``<cache>/ladder-<hash>``): re-running the script reuses finished work.

    python benchmarks/ladder.py                      # cpu profile, seeds 0 1, writes results/ladder.json
    python benchmarks/ladder.py --profile smoke --seeds 0 --no-write
    python benchmarks/ladder.py ... --train-only     # a helper process: trains the same cached ladders
    python benchmarks/ladder.py --ema-study --n-eval 500   # the g = t^2 EMA study, merged as "ema_study"
    python benchmarks/ladder.py --timing --n-eval 500      # back-to-back sampling times, merged as "timing"

The recorded run (results/ladder.json) used
``--seeds 0 1 --gaussian-seeds 0 1 --n-eval 1000 --iters 100,200,250,250 --set batch_size=64`` with a
``--train-only`` helper beside it (same arguments), to fit the machine's CPU budget.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from common import format_table, write_results  # noqa: E402

PAPER_CIFAR10 = {"teacher_100": 3.58, 20: 3.72, 4: 4.14, 2: 4.68, 1: 5.66, "single_stage": 9.71}
"""DistillKac's CIFAR-10 FIDs (kac-math.md section 8): teacher (100 AB-2 steps, guided), ladder
students, and the single-stage 100 -> 1 student."""


def _stats(values: list[float]) -> dict:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None, "min": None, "max": None, "values": []}
    return {
        "mean": statistics.fmean(vals),
        "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
        "min": min(vals), "max": max(vals), "values": vals,
    }


def _pm(s: dict, digits: int = 2) -> str:
    if s["mean"] is None:
        return "-"
    if len(s["values"]) > 1:
        return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"
    return f"{s['mean']:.{digits}f}"


@torch.no_grad()
def conditioning_check(run, n: int = 64) -> dict:
    """How much the teacher's output moves when only the label, or only the time, changes (relative
    to its size): a network that ignores its embeddings scores ~0 on both."""
    g = torch.Generator().manual_seed(0)
    cfg = run.model.cfg
    x = torch.randn(n, cfg.in_channels, cfg.image_size, cfg.image_size, generator=g)
    t = torch.full((n,), 0.5)
    y = torch.arange(n) % cfg.num_classes
    base = run.model(x, t, y)
    size = float(base.abs().mean())
    label = float((run.model(x, t, (y + 1) % cfg.num_classes) - base).abs().mean()) / size
    time_ = float((run.model(x, torch.full((n,), 0.3), y) - base).abs().mean()) / size
    return {"label_sensitivity": label, "time_sensitivity": time_}


def ema_study(prof, n: int, progress: bool, only: str | None = None) -> dict:
    """Why did a prototype's ladder break?  The g = t^2 Kac teacher (1,500 steps) distilled
    100 -> 20 -> 4 with 500 iterations per stage, (a) prototype-like: lr 5e-4, EMA 0.999 (no
    warm-up), (b) this module's defaults: lr 3e-4, EMA 0.99 with warm-up.  Per stage: FID of the EMA
    student, of the raw student and of the stage's teacher sampled with the student's step count."""
    from kaclib.artifacts import cache_root, config_hash
    from kaclib.distill import DistillConfig, run_ladder
    from kaclib.evaluation import Evaluator, generate, get_teacher, teacher_config
    from kaclib.train import load_run

    tcfg = teacher_config(prof, steps=1500, ema_decay=0.995).replace(
        path={"kind": "kac", "a": 9.0, "c": 3.0, "f": "linear", "g": "t2", "T": 1.0})
    tdir = get_teacher(tcfg, progress=progress)
    ev = Evaluator(prof.dataset)
    teacher = load_run(tdir)
    variants = {
        "prototype_lr5e-4_ema0.999": dict(lr=5e-4, ema_decay=0.999, ema_warmup=False),
        "default_lr3e-4_ema0.99_warmup": dict(lr=3e-4, ema_decay=0.99, ema_warmup=True),
    }
    out = {"teacher": str(tdir), "teacher_config": tcfg.to_dict(), "n": n, "metric": ev.metric_name, "variants": {}}

    def fid(model, steps, method="euler"):
        g = generate(model, teacher.path, n, steps, method=method, w=1.0, num_classes=10, seed=7)
        sc = ev.score(g.images, g.labels)
        return {"fid": sc.fid, "accuracy": sc.accuracy}

    for name, kw in variants.items():
        if only and not name.startswith(only):
            continue
        cfg = DistillConfig(ladder=(100, 20, 4), iters=500, batch_size=64, checkpoint_every=0, **kw)
        d = cache_root() / f"ladder-{config_hash({'teacher': tdir.name, 'distill': cfg.to_dict()})}"
        res = run_ladder(tdir, d, cfg, resume=True, progress=progress)
        rows = {}
        for st in res.stages:
            M = st.spec.student_steps
            rows[M] = {
                "ema_student": fid(st.student, M),
                "raw_student": fid(load_run(st.run_dir, ema=False).model, M),
                "teacher_at_student_steps": fid(teacher.model, M, "ab2") if st.spec.index == 1 else fid(st.teacher, M),
                "final_loss": json.loads((st.run_dir / "result.json").read_text())["final_loss"],
            }
        out["variants"][name] = {"config": cfg.to_dict(), "stages": rows, "run_dir": str(d)}
        print(name, json.dumps(rows), flush=True)
    return out


def timing_study(results: dict, n: int, repeats: int) -> dict:
    """Sampling wall time back to back (best of ``repeats``, ``n`` images): the guided teacher with
    AB-2 at every step count against the Kac ladder's seed-0 students (Euler).  Also the training
    seconds of every cached run, read from its stages' metrics (``elapsed_s``), whichever process
    trained it."""
    from kaclib.evaluation import generate
    from kaclib.train import load_run

    out = {"n": n, "repeats": repeats, "sample_s_per_1000": {}, "training_s": {}}
    kac = load_run(results["teachers"]["kac"])
    w = results["distill_config"]["w"]
    lad = Path(results["training"]["kac_ladder"][0]["run_dir"])

    def best(model, steps, method, ww):
        times = []
        for r in range(repeats):
            g = generate(model, kac.path, n, steps, method=method, w=ww, num_classes=10, seed=r)
            times.append(1000 * g.seconds_per_image)
        return min(times)

    for stage in sorted(lad.glob("stage-*")):
        M = int(stage.name.split("-")[2].replace("steps", ""))
        out["sample_s_per_1000"][f"student_{M}"] = best(load_run(stage).model, M, "euler", 1.0)
    for M in results["distill_config"]["ladder"]:
        out["sample_s_per_1000"][f"teacher_{M}"] = best(kac.model, M, "ab2", w)
    ladder0 = results["distill_config"]["ladder"][0]
    out["speedup_1step_vs_teacher"] = out["sample_s_per_1000"][f"teacher_{ladder0}"] / out["sample_s_per_1000"]["student_1"]
    for kind, lst in results["training"].items():
        secs = []
        for rec in lst:
            total = 0.0
            for stage in sorted(Path(rec["run_dir"]).glob("stage-*")):
                recs = [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines() if line.strip()]
                total += max((r.get("elapsed_s", 0.0) for r in recs if "elapsed_s" in r), default=0.0)
            secs.append(total)
        out["training_s"][kind] = _stats(secs)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="distillation seeds (default: profile's, at least 2)")
    ap.add_argument("--gaussian-seeds", type=int, nargs="+", default=None, help="seeds of the Gaussian ladder (default: --seeds)")
    ap.add_argument("--n-eval", type=int, default=None, help="generated images per FID (default: profile n_eval)")
    ap.add_argument("--iters", type=str, default=None, help="iterations per stage, e.g. 800,400,200,200 (default: profile)")
    ap.add_argument("--teacher-model", action="append", default=[], metavar="KEY=VALUE",
                    help="override a field of the teachers' UNet config (e.g. norm_groups=8)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a DistillConfig field (JSON value), e.g. states='\"rollout\"'")
    ap.add_argument("--no-single", action="store_true")
    ap.add_argument("--train-only", action="store_true", help="only train the cached ladders (reverse order), for a helper process")
    ap.add_argument("--timing", action="store_true",
                    help="only time sampling back to back and read training seconds; merged into results/ladder.json as 'timing'")
    ap.add_argument("--study-only", default=None, help="run one variant of the EMA study (a helper process)")
    ap.add_argument("--ema-study", action="store_true",
                    help="only run the g = t^2 EMA study and merge it into results/ladder.json as 'ema_study'")
    ap.add_argument("--no-gaussian", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from kaclib.artifacts import cache_root, config_hash
    from kaclib.distill import config_for_profile, run_ladder
    from kaclib.evaluation import Evaluator, generate, get_teacher, teacher_config
    from kaclib.profiles import get_profile
    from kaclib.train import load_run

    t_all = time.perf_counter()
    prof = get_profile(args.profile)
    progress = not args.quiet
    results_file = Path(__file__).resolve().parent / "results" / "ladder.json"
    if args.timing:
        res = json.loads(results_file.read_text())
        timing = timing_study(res, args.n_eval or 500, 2)
        timing["command"] = "python " + " ".join(sys.argv)
        print(json.dumps(timing, indent=1))
        if not args.no_write:
            res = json.loads(results_file.read_text())
            res["timing"] = timing
            results_file.write_text(json.dumps(res, indent=2) + "\n")
        return 0
    if args.ema_study:
        study = ema_study(prof, args.n_eval or 500, progress, args.study_only)
        study["seconds"] = time.perf_counter() - t_all
        study["command"] = "python " + " ".join(sys.argv)
        if not args.no_write and not args.study_only:
            payload = json.loads(results_file.read_text()) if results_file.is_file() else {"benchmark": "ladder"}
            payload["ema_study"] = study
            results_file.write_text(json.dumps(payload, indent=2) + "\n")
            print(f"merged ema_study into {results_file}")
        return 0
    seeds = args.seeds if args.seeds is not None else list(prof.seeds) if len(prof.seeds) > 1 else [0, 1]
    gseeds = args.gaussian_seeds if args.gaussian_seeds is not None else seeds
    n_eval = args.n_eval or prof.n_eval
    changes = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    if args.iters:
        changes["iters"] = tuple(int(s) for s in args.iters.split(","))
    base = config_for_profile(prof, **changes)
    ladder = base.ladder
    if any(seeds.count(x) > 1 for x in seeds):
        raise ValueError("seeds must be distinct")
    model_over = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.teacher_model)}
    model_cfg = {"preset": prof.model_preset, "head": prof.head, **model_over}
    timings = {}

    # ------------------------------------------------------------------ teachers and the metric
    t0 = time.perf_counter()
    teachers = {"kac": get_teacher(teacher_config(prof, model=model_cfg), progress=progress)}
    if not args.no_gaussian:
        teachers["gaussian"] = get_teacher(teacher_config(prof, path="gaussian", model={**model_cfg, "head": "free"}),
                                           progress=progress)
    timings["teachers_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ev = Evaluator(prof.dataset)
    floor = ev.floor_scores()
    timings["evaluator_s"] = time.perf_counter() - t0
    num_classes = load_run(teachers["kac"]).model.cfg.num_classes
    conditioning = {fam: conditioning_check(load_run(d)) for fam, d in teachers.items()}

    def score(model, path, steps, method, w, seed):
        g = generate(model, path, n_eval, steps, method=method, w=w, num_classes=num_classes, seed=seed)
        s = ev.score(g.images, g.labels)
        return {"fid": s.fid, "accuracy": s.accuracy, "nfe": g.nfe, "network_passes": g.network_passes,
                "sample_s_per_1000": 1000 * g.seconds_per_image,
                "latent_s_per_1000": 1000 * g.latent_seconds / g.images.shape[0]}

    def ladder_dir(teacher_dir: Path, cfg: DistillConfig) -> Path:
        return cache_root() / f"ladder-{config_hash({'teacher': teacher_dir.name, 'distill': cfg.to_dict()})}"

    def distil(teacher_dir: Path, cfg: DistillConfig):
        """Train (or load: resume=True on a finished ladder) one cached ladder; a lock file lets a
        second process (--train-only) share the work without two writers on one directory."""
        t = time.perf_counter()
        d = ladder_dir(teacher_dir, cfg)
        d.parent.mkdir(parents=True, exist_ok=True)
        with open(str(d) + ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                res = run_ladder(teacher_dir, d, cfg, resume=True, progress=progress)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        trained = sum(s.seconds for s in res.stages)
        return res, trained, time.perf_counter() - t

    def single_config(cfg: DistillConfig, passes: int) -> tuple[DistillConfig, int]:
        # equal budgets: as many student iterations as the whole ladder, and a pool whose teacher
        # passes (pool_size x ladder[0] substeps x passes per substep) match the ladder's
        per_sample = (ladder[0] * (2 if base.w not in (0.0, 1.0) else 1)
                      * (2 if base.teacher_solver == "midpoint" else 1))
        pool = max(base.batch_size, round(passes / per_sample))
        lr1 = base.lr if isinstance(base.lr, float) else base.lr[-1]
        return cfg.replace(ladder=(ladder[0], 1), iters=base.total_iters, lr=lr1, targets="pool", pool_size=pool), pool

    def ladder_passes(cfg: DistillConfig) -> int:
        evals = 2 if cfg.teacher_solver == "midpoint" else 1
        first = cfg.batch_size * (2 if cfg.w not in (0.0, 1.0) else 1) * evals
        return sum(st.iters * st.substeps * (first if st.index == 1 else cfg.batch_size) for st in cfg.stages())

    if args.train_only:  # helper process: train the cached ladders in reverse order, then exit
        jobs = []
        for fam, tdir in teachers.items():
            for s in (seeds if fam == "kac" else gseeds):
                cfg = base.replace(seed=s)
                jobs.append((tdir, cfg))
                if fam == "kac" and not args.no_single:
                    jobs.append((tdir, single_config(cfg, ladder_passes(cfg))[0]))
        for tdir, cfg in reversed(jobs):
            distil(tdir, cfg)
        print("trained", len(jobs), "runs in", round(time.perf_counter() - t_all, 1), "s")
        return 0

    # ------------------------------------------------------------------ (ii) teachers without distillation
    rows = {}  # (family, steps) -> list of per-seed score dicts
    t0 = time.perf_counter()
    for fam, tdir in teachers.items():
        run = load_run(tdir)
        fam_seeds = seeds if fam == "kac" else gseeds
        for steps in ladder:
            for s in fam_seeds:
                rows.setdefault((f"{fam}_teacher", steps), []).append(
                    score(run.model, run.path, steps, "ab2", base.w, 1000 + s))
    timings["teacher_eval_s"] = time.perf_counter() - t0

    # ------------------------------------------------------------------ (i) + (iv) ladders, (iii) single stage
    train_info = {}
    budget = {}
    for fam, tdir in teachers.items():
        fam_seeds = seeds if fam == "kac" else gseeds
        for s in fam_seeds:
            cfg = base.replace(seed=s)
            res, trained_s, wall_s = distil(tdir, cfg)
            passes = sum(st.teacher_passes for st in res.stages)
            train_info.setdefault(f"{fam}_ladder", []).append(
                {"seed": s, "train_s": trained_s, "wall_s": wall_s, "teacher_passes": passes,
                 "iters": [st.iters for st in res.stages], "run_dir": str(res.run_dir)})
            budget[fam] = {"iters": sum(st.iters for st in res.stages), "teacher_passes": passes}
            t0 = time.perf_counter()
            for st in res.stages:
                rows.setdefault((f"{fam}_ladder", st.spec.student_steps), []).append(
                    score(st.student, res.path, st.spec.student_steps, "euler", 1.0, 1000 + s))
            timings[f"{fam}_ladder_eval_s"] = timings.get(f"{fam}_ladder_eval_s", 0) + time.perf_counter() - t0
            if fam == "kac" and not args.no_single:
                assert passes == ladder_passes(cfg), (passes, ladder_passes(cfg))
                cfg1, pool = single_config(cfg, passes)
                r1, trained1, wall1 = distil(tdir, cfg1)
                train_info.setdefault("kac_single", []).append(
                    {"seed": s, "train_s": trained1, "wall_s": wall1, "teacher_passes": r1.stages[0].teacher_passes,
                     "iters": [r1.stages[0].iters], "pool_size": pool, "run_dir": str(r1.run_dir)})
                rows.setdefault(("kac_single", 1), []).append(score(r1.student, r1.path, 1, "euler", 1.0, 1000 + s))
    timings["total_s"] = time.perf_counter() - t_all

    # ------------------------------------------------------------------ tables
    agg = {}
    for (fam, steps), lst in rows.items():
        agg.setdefault(fam, {})[steps] = {
            "fid": _stats([r["fid"] for r in lst]),
            "accuracy": _stats([r["accuracy"] for r in lst]),
            "nfe": lst[0]["nfe"], "network_passes": lst[0]["network_passes"],
            "sample_s_per_1000": min(r["sample_s_per_1000"] for r in lst),
            "latent_s_per_1000": min(r["latent_s_per_1000"] for r in lst),
            "per_seed": lst,
        }
    kt = agg["kac_teacher"][ladder[0]]["fid"]["mean"]
    header = ["steps", "paper CIFAR-10 (ratio)", "Kac ladder", "Kac teacher (AB-2)", f"single {ladder[0]}->1",
              "Gaussian ladder", "Gaussian teacher", "acc ladder", "passes ladder / teacher", "s/1000 ladder / teacher"]
    table = []
    for steps in ladder:
        paper = PAPER_CIFAR10["teacher_100"] if steps == ladder[0] else PAPER_CIFAR10.get(steps)
        paper_txt = f"{paper} ({paper / PAPER_CIFAR10['teacher_100']:.2f})" if paper is not None else "-"
        lad = agg.get("kac_ladder", {}).get(steps)
        tea = agg["kac_teacher"][steps]
        if steps == ladder[0]:
            lad = None
        single = agg.get("kac_single", {}).get(steps)
        gl = agg.get("gaussian_ladder", {}).get(steps)
        gt = agg.get("gaussian_teacher", {}).get(steps)
        table.append([
            steps, paper_txt,
            _pm(lad["fid"]) if lad else "(teacher)", _pm(tea["fid"]),
            _pm(single["fid"]) if single else "-",
            _pm(gl["fid"]) if gl else "-", _pm(gt["fid"]) if gt else "-",
            _pm(lad["accuracy"], 3) if lad else _pm(tea["accuracy"], 3),
            f"{lad['network_passes'] if lad else '-'} / {tea['network_passes']}",
            f"{lad['sample_s_per_1000']:.3f} / {tea['sample_s_per_1000']:.2f}" if lad else f"- / {tea['sample_s_per_1000']:.2f}",
        ])
    ratio_rows = []
    for steps in ladder[1:]:
        lad = agg.get("kac_ladder", {}).get(steps)
        if lad:
            ratio_rows.append([steps, f"{PAPER_CIFAR10[steps] / PAPER_CIFAR10['teacher_100']:.2f}",
                               f"{lad['fid']['mean'] / kt:.2f}",
                               f"{agg['gaussian_ladder'][steps]['fid']['mean'] / agg['gaussian_teacher'][ladder[0]]['fid']['mean']:.2f}"
                               if "gaussian_ladder" in agg else "-"])
    if "kac_single" in agg:
        ratio_rows.append([f"single {ladder[0]}->1", f"{PAPER_CIFAR10['single_stage'] / PAPER_CIFAR10['teacher_100']:.2f}",
                           f"{agg['kac_single'][1]['fid']['mean'] / kt:.2f}", "-"])

    best1 = agg.get("kac_ladder", {}).get(1)
    candidates = [x for x in (best1, agg.get("kac_single", {}).get(1)) if x]
    targets = {}
    if candidates:
        best = min(candidates, key=lambda r: r["fid"]["mean"])
        targets["best_1step_fid_over_teacher100"] = best["fid"]["mean"] / kt
        targets["best_1step_within_1.5x"] = targets["best_1step_fid_over_teacher100"] <= 1.5
        targets["speedup_1step_vs_guided_teacher100"] = (
            agg["kac_teacher"][ladder[0]]["sample_s_per_1000"] / best1["sample_s_per_1000"] if best1 else None)
        targets["speedup_at_least_100x"] = bool(targets["speedup_1step_vs_guided_teacher100"]
                                                and targets["speedup_1step_vs_guided_teacher100"] >= 100)
    targets["benchmark_minutes"] = timings["total_s"] / 60
    targets["under_30_minutes"] = timings["total_s"] < 1800

    print("teacher conditioning (relative output change for a new label / time):", conditioning)
    print(f"\n{ev.metric_name} on {prof.dataset}, n = {n_eval} per estimate, seeds {seeds}; "
          f"floor (real val vs train) {floor.fid:.3f}, accuracy {floor.accuracy:.3f}")
    print(format_table(header, table))
    print("\nratios to the 100-step teacher (paper CIFAR-10 / Kac digits / Gaussian digits)")
    print(format_table(["steps", "paper", "Kac", "Gaussian"], ratio_rows))
    eq = [[k, _pm(_stats([x["train_s"] for x in v]), 1), v[0]["iters"], v[0]["teacher_passes"]] for k, v in train_info.items()]
    print("\nbudgets (student iterations, teacher network passes x samples, training seconds)")
    print(format_table(["run", "train s", "iters", "teacher passes"], eq))
    print("\ntargets:", targets)
    print("timings:", {k: round(v, 1) for k, v in timings.items()})

    payload = {
        "profile": prof.name, "dataset": prof.dataset, "metric": ev.metric_name, "n_eval": n_eval,
        "seeds": seeds, "gaussian_seeds": gseeds,
        "floor": {"fid": floor.fid, "accuracy": floor.accuracy, "what": "real val split vs train statistics"},
        "distill_config": base.to_dict(),
        "teachers": {k: str(v) for k, v in teachers.items()},
        "teacher_model": model_cfg, "teacher_conditioning": conditioning,
        "paper_cifar10": {str(k): v for k, v in PAPER_CIFAR10.items()},
        "results": {fam: {str(k): v for k, v in d.items()} for fam, d in agg.items()},
        "training": train_info, "budget": budget, "targets": targets, "timings": timings,
        "table": {"header": header, "rows": table}, "ratios": ratio_rows,
    }
    if results_file.is_file():  # keep a separately computed EMA study
        previous = json.loads(results_file.read_text())
        for key in ("ema_study",):
            if key in previous:
                payload[key] = previous[key]
    if not args.no_write:
        out = write_results("ladder", payload)
        print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
