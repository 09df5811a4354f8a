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

    python benchmarks/ladder.py --seeds 0 1 2        # cpu profile, writes results/ladder.json
    python benchmarks/ladder.py --profile smoke --seeds 0 --no-write
    python benchmarks/ladder.py ... --train-only     # a helper process: trains the same cached ladders
    python benchmarks/ladder.py --ema-study --n-eval 500   # the g = t^2 EMA study, merged as "ema_study"
    python benchmarks/ladder.py --timing --n-eval 500      # back-to-back sampling times, merged as "timing"

The recorded run (results/ladder.json) is ``--seeds 0 1 2`` at the cpu profile's budget (300
iterations per stage, batch 128), trained by two processes (one with ``--train-only``), then
evaluated; seed s has its own teachers (``teacher_config(profile, seed=s)``), its own ladders and
single stage, and latents ``1000 + s`` shared by every row.  ``--timing`` adds the back-to-back
sampling times (latents included) on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import write_results  # noqa: E402
from ladder_report import (  # noqa: E402, F401  (ladder_comparisons, ladder_table: re-exported)
    aggregate_rows,
    floor_summary,
    ladder_comparisons,
    ladder_table,
    ladder_targets,
    print_report,
)

from kaclib.paper import LADDER_FID  # noqa: E402
from kaclib.runs import RunBusyError  # noqa: E402
from kaclib.sample_quality import paired_rmse  # noqa: E402
from kaclib.stats import mean_ci  # noqa: E402


@torch.no_grad()
def conditioning_check(run, n: int = 64) -> dict:
    """How much the teacher's output moves when only the label, or only the time, changes (relative
    to its size): a network that ignores its embeddings scores ~0 on both."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, *run.image_shape, generator=g)
    t = torch.full((n,), 0.5)
    y = torch.arange(n) % run.num_classes
    base = run.model(x, t, y)
    size = float(base.abs().mean())
    label = float((run.model(x, t, (y + 1) % run.num_classes) - base).abs().mean()) / size
    time_ = float((run.model(x, torch.full((n,), 0.3), y) - base).abs().mean()) / size
    return {"label_sensitivity": label, "time_sensitivity": time_}


def ema_study(prof, n: int, progress: bool, only: str | None = None) -> dict:
    """Why did a prototype's ladder break?  The g = t^2 Kac teacher (1,500 steps) distilled
    100 -> 20 -> 4 with 500 iterations per stage, (a) prototype-like: lr 5e-4, EMA 0.999 (no
    warm-up), (b) this module's defaults: lr 3e-4, EMA 0.99 with warm-up.  Per stage: FID of the EMA
    student, of the raw student and of the stage's teacher sampled with the student's step count."""
    from kaclib.distill import DistillConfig, ladder_cache_dir, run_ladder
    from kaclib.evaluation import Evaluator, evaluate_run, get_teacher, teacher_config
    from kaclib.train import load_run

    tcfg = teacher_config(prof, steps=1500, ema_decay=0.995).replace(
        path={"kind": "kac", "a": 9.0, "c": 3.0, "f": "linear", "g": "t2", "T": 1.0}
    )
    tdir = get_teacher(tcfg, progress=progress)
    ev = Evaluator(prof.dataset)
    teacher = load_run(tdir)
    variants = {
        "prototype_lr5e-4_ema0.999": dict(lr=5e-4, ema_decay=0.999, ema_warmup=False),
        "default_lr3e-4_ema0.99_warmup": dict(lr=3e-4, ema_decay=0.99, ema_warmup=True),
    }
    out = {
        "teacher": str(tdir),
        "teacher_config": tcfg.to_dict(),
        "n": n,
        "metric": ev.metric_name,
        "variants": {},
    }

    def fid(model, steps, method="euler"):
        r = evaluate_run((model, teacher.path), steps, method, 1.0, n=n, seed=7, evaluator=ev)
        return {"fid": r["fid"], "accuracy": r["accuracy"]}

    for name, kw in variants.items():
        if only and not name.startswith(only):
            continue
        cfg = DistillConfig(ladder=(100, 20, 4), iters=500, batch_size=64, checkpoint_every=0, **kw)
        d = ladder_cache_dir(tdir, cfg)
        res = run_ladder(tdir, d, cfg, resume=True, progress=progress)
        rows = {}
        for st in res.stages:
            M = st.spec.student_steps
            rows[M] = {
                "ema_student": fid(st.student, M),
                "raw_student": fid(load_run(st.run_dir, ema=False).model, M),
                "teacher_at_student_steps": fid(teacher.model, M, "ab2")
                if st.spec.index == 1
                else fid(st.teacher, M),
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
    from kaclib.train import load_run

    out = {"n": n, "repeats": repeats, "sample_s_per_1000": {}, "training_s": {}}
    kac = load_run(results["teachers"][f"kac-seed{results['seeds'][0]}"])
    w = results["distill_config"]["w"]
    lad = Path(results["training"]["kac_ladder"][0]["run_dir"])
    gauss = results["training"].get("gaussian_ladder")

    def best(run, steps, method, ww):
        times = []
        for r in range(repeats):
            g = run.generate(n, steps, method, ww, seed=r)
            times.append(1000 * g.end_to_end_seconds_per_image)
        return min(times)

    for stage in sorted(lad.glob("stage-*")):
        M = int(stage.name.split("-")[2].replace("steps", ""))
        out["sample_s_per_1000"][f"student_{M}"] = best(load_run(stage), M, "euler", 1.0)
    if gauss:  # the Gaussian-path 1-step student: same network, Gaussian latents
        last = sorted(Path(gauss[0]["run_dir"]).glob("stage-*"))[-1]
        out["sample_s_per_1000"]["gaussian_student_1"] = best(load_run(last), 1, "euler", 1.0)
    for M in results["distill_config"]["ladder"]:
        out["sample_s_per_1000"][f"teacher_{M}"] = best(kac, M, "ab2", w)
    ladder0 = results["distill_config"]["ladder"][0]
    out["speedup_1step_vs_teacher"] = (
        out["sample_s_per_1000"][f"teacher_{ladder0}"] / out["sample_s_per_1000"]["student_1"]
    )
    for kind, lst in results["training"].items():
        secs = []
        for rec in lst:
            total = 0.0
            for stage in sorted(Path(rec["run_dir"]).glob("stage-*")):
                recs = [
                    json.loads(line)
                    for line in (stage / "metrics.jsonl").read_text().splitlines()
                    if line.strip()
                ]
                total += max((r.get("elapsed_s", 0.0) for r in recs if "elapsed_s" in r), default=0.0)
            secs.append(total)
        out["training_s"][kind] = {"values": secs, **mean_ci(secs).to_dict()}
    return out


RESULTS_FILE = Path(__file__).resolve().parent / "results" / "ladder.json"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="distillation seeds (default: profile's, at least 2)",
    )
    ap.add_argument(
        "--gaussian-seeds",
        type=int,
        nargs="+",
        default=None,
        help="seeds of the Gaussian ladder (default: --seeds)",
    )
    ap.add_argument(
        "--n-eval", type=int, default=None, help="generated images per FID (default: profile n_eval)"
    )
    ap.add_argument(
        "--iters",
        type=str,
        default=None,
        help="iterations per stage, e.g. 800,400,200,200 (default: profile)",
    )
    ap.add_argument(
        "--teacher-model",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field of the teachers' UNet config (e.g. norm_groups=8)",
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a DistillConfig field (JSON value), e.g. states='\"rollout\"'",
    )
    ap.add_argument("--no-single", action="store_true")
    ap.add_argument(
        "--train-only",
        action="store_true",
        help="only train the cached ladders (reverse order), for a helper process",
    )
    ap.add_argument(
        "--timing",
        action="store_true",
        help="only time sampling back to back and read training seconds; merged into results/ladder.json as 'timing'",
    )
    ap.add_argument("--study-only", default=None, help="run one variant of the EMA study (a helper process)")
    ap.add_argument(
        "--ema-study",
        action="store_true",
        help="only run the g = t^2 EMA study and merge it into results/ladder.json as 'ema_study'",
    )
    ap.add_argument("--no-gaussian", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    return ap.parse_args(argv)


def run_timing(args, results_file: Path) -> int:
    """``--timing``: the back-to-back sampling times, merged into the results as ``timing``."""
    res = json.loads(results_file.read_text())
    timing = timing_study(res, args.n_eval or 500, 2)
    timing["command"] = "python " + " ".join(sys.argv)
    print(json.dumps(timing, indent=1))
    if not args.no_write:
        res = json.loads(results_file.read_text())
        res["timing"] = timing
        results_file.write_text(json.dumps(res, indent=2) + "\n")
    return 0


def run_ema_study(args, prof, progress: bool, results_file: Path, t_all: float) -> int:
    """``--ema-study``: the g = t^2 EMA study, merged into the results as ``ema_study``."""
    study = ema_study(prof, args.n_eval or 500, progress, args.study_only)
    study["seconds"] = time.perf_counter() - t_all
    study["command"] = "python " + " ".join(sys.argv)
    if not args.no_write and not args.study_only:
        payload = json.loads(results_file.read_text()) if results_file.is_file() else {"benchmark": "ladder"}
        payload["ema_study"] = study
        results_file.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"merged ema_study into {results_file}")
    return 0


def ladder_setup(args, prof) -> tuple:
    """``(seeds, gaussian seeds, n_eval, base DistillConfig, teachers' model config)`` of a run."""
    from kaclib.distill import config_for_profile

    seeds = (
        args.seeds
        if args.seeds is not None
        else list(prof.evaluation.seeds)
        if len(prof.evaluation.seeds) > 1
        else [0, 1]
    )
    gseeds = args.gaussian_seeds if args.gaussian_seeds is not None else seeds
    n_eval = getattr(args, "n_eval", None) or prof.evaluation.n
    changes = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    if args.iters:
        changes["iters"] = tuple(int(s) for s in args.iters.split(","))
    base = config_for_profile(prof, **changes)
    if any(seeds.count(x) > 1 for x in seeds):
        raise ValueError("seeds must be distinct")
    model_over = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.teacher_model)}
    model_cfg = {"preset": prof.teacher.model_preset, "head": prof.teacher.head, **model_over}
    return seeds, gseeds, n_eval, base, model_cfg


def teacher_cfg(prof, fam: str, s: int, model_cfg: dict):
    """The teacher config of family ``fam`` (``"kac"`` or ``"gaussian"``, whose head is free), seed ``s``."""
    from kaclib.evaluation import teacher_config

    if fam == "kac":
        return teacher_config(prof, seed=s, model=model_cfg)
    return teacher_config(prof, path="gaussian", seed=s, model={**model_cfg, "head": "free"})


def train_teachers(prof, seeds, gseeds, model_cfg: dict, no_gaussian: bool, progress: bool) -> dict:
    """``{(family, seed): teacher run dir}``: seed s has teachers trained with seed s, ladders and
    single stage distilled with seed s, and every row of seed s sampled from the same latents
    (seed 1000 + s): paired differences across rows."""
    from kaclib.evaluation import get_teacher

    families = ["kac"] + ([] if no_gaussian else ["gaussian"])
    return {
        (fam, s): get_teacher(teacher_cfg(prof, fam, s, model_cfg), progress=progress)
        for s in seeds
        for fam in families
        if fam == "kac" or s in gseeds
    }


class Scorer:
    """Scores a generator at ``n_eval`` images on the latents of seed ``1000 + seed``; the first
    images scored per ``(family, seed)`` (the teacher at ``ladder[0]`` steps) are the paired-RMSE
    reference of every later row of that family and seed."""

    def __init__(self, ev, n_eval: int):
        self.ev, self.n_eval = ev, n_eval
        self.reference = {}

    def __call__(self, run, steps, method, w, seed, fam) -> dict:
        """``run``: a :class:`~kaclib.train.LoadedRun` or a ``(model, path)`` pair."""
        from kaclib.evaluation import evaluate_run, score_fields

        r = evaluate_run(
            run, steps, method, w, n=self.n_eval, seed=1000 + seed, evaluator=self.ev, return_images=True
        )
        ref = self.reference.setdefault((fam, seed), r["images"])
        return {
            **score_fields(r),
            "paired_rmse_to_teacher": float(paired_rmse(r["images"], ref).mean()),
            "nfe": r["nfe"],
            "network_passes": r["network_passes"],
            "sample_s_per_1000": 1000 * r["end_to_end_seconds_per_image"],
            "latent_s_per_1000": 1000 * r["latent_seconds"] / r["n"],
        }


def distil(teacher_dir: Path, cfg, progress: bool):
    """Train (or load: resume=True on a finished ladder) one cached ladder; a lock file lets a
    second process (--train-only) share the work without two writers on one directory."""
    from kaclib.distill import ladder_cache_dir, run_ladder

    t = time.perf_counter()
    d = ladder_cache_dir(teacher_dir, cfg)
    d.parent.mkdir(parents=True, exist_ok=True)
    with open(str(d) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            while True:
                try:
                    res = run_ladder(teacher_dir, d, cfg, resume=True, progress=progress)
                    break
                except RunBusyError:  # another writer (the book build) holds this ladder: wait for it
                    time.sleep(30)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    trained = sum(s.seconds for s in res.stages)
    return res, trained, time.perf_counter() - t


def train_only(teachers: dict, base, no_single: bool, progress: bool, t_all: float) -> int:
    """``--train-only`` (a helper process): train the cached ladders in reverse order, then exit."""
    jobs = []
    for (fam, s), tdir in teachers.items():
        cfg = base.replace(seed=s)
        jobs.append((tdir, cfg))
        if fam == "kac" and not no_single:
            jobs.append((tdir, cfg.single_stage()))
    for tdir, cfg in reversed(jobs):
        distil(tdir, cfg, progress)
    print("trained", len(jobs), "runs in", round(time.perf_counter() - t_all, 1), "s")
    return 0


def _train_record(seed, res, trained_s, wall_s, **extra) -> dict:
    return {
        "seed": seed,
        "train_s": trained_s,
        "wall_s": wall_s,
        "teacher_passes": sum(st.teacher_passes for st in res.stages),
        "iters": [st.iters for st in res.stages],
        **extra,
        "run_dir": str(res.run_dir),
    }


def evaluate_rows(teachers: dict, base, score: Scorer, no_single: bool, progress: bool, timings: dict):
    """``(rows, training records, budget)``: per teacher (ii) the undistilled teacher at every step
    count (``ladder[0]`` first: the RMSE reference), (i) + (iv) its ladder, and for Kac (iii) the
    single stage at the ladder's budget.  ``rows``: ``(row, steps) -> [score per seed]``."""
    from kaclib.train import load_run

    rows, train_info, budget = {}, {}, {}
    for (fam, s), tdir in teachers.items():
        run = load_run(tdir)
        t0 = time.perf_counter()
        for steps in base.ladder:
            rows.setdefault((f"{fam}_teacher", steps), []).append(score(run, steps, "ab2", base.w, s, fam))
        timings["teacher_eval_s"] = timings.get("teacher_eval_s", 0) + time.perf_counter() - t0
        cfg = base.replace(seed=s)
        res, trained_s, wall_s = distil(tdir, cfg, progress)
        passes = sum(st.teacher_passes for st in res.stages)
        train_info.setdefault(f"{fam}_ladder", []).append(_train_record(s, res, trained_s, wall_s))
        budget[fam] = {"iters": sum(st.iters for st in res.stages), "teacher_passes": passes}
        for st in res.stages:
            rows.setdefault((f"{fam}_ladder", st.spec.student_steps), []).append(
                score((st.student, res.path), st.spec.student_steps, "euler", 1.0, s, fam)
            )
        if fam == "kac" and not no_single:
            assert passes == cfg.planned_teacher_passes(), (passes, cfg.planned_teacher_passes())
            cfg1 = cfg.single_stage(passes)  # the ladder's iterations and teacher passes, one stage
            r1, trained1, wall1 = distil(tdir, cfg1, progress)
            record = _train_record(s, r1, trained1, wall1, pool_size=cfg1.pool_size)
            train_info.setdefault("kac_single", []).append(record)
            rows.setdefault(("kac_single", 1), []).append(
                score((r1.student, r1.path), 1, "euler", 1.0, s, fam)
            )
    return rows, train_info, budget


def build_payload(prof, ev, n_eval, seeds, gseeds, base, teachers, model_cfg, conditioning, report) -> dict:
    """The JSON of ``results/ladder.json`` (``report``: floor, comparisons, agg, training, budget,
    targets, timings, header, table)."""
    r = report
    return {
        "profile": prof.name,
        "dataset": prof.dataset,
        "metric": ev.metric_name,
        "n_eval": n_eval,
        "seeds": seeds,
        "gaussian_seeds": gseeds,
        "protocol": "generators learn from 'train'; the feature net from 'feature'; statistics from 'ref'; the floor "
        "is unseen real 'test' images at the same n and class balance; seed s = teachers, "
        "distillation and latents (1000 + s) of that seed; '±' = 95% CI half-width over seeds",
        "floor": r["floor"],
        "comparisons": r["comparisons"],
        "distill_config": base.to_dict(),
        "teachers": {f"{fam}-seed{s}": str(v) for (fam, s), v in teachers.items()},
        "teacher_model": model_cfg,
        "teacher_conditioning": conditioning,
        "paper_cifar10": {str(k): v for k, v in LADDER_FID["cifar10"].items()},
        "results": {fam: {str(k): v for k, v in d.items()} for fam, d in r["agg"].items()},
        "training": r["training"],
        "budget": r["budget"],
        "targets": r["targets"],
        "timings": r["timings"],
        "table": {"header": r["header"], "rows": r["table"]},
    }


def write_payload(payload: dict, results_file: Path, no_write: bool) -> None:
    """Keep a separately computed EMA study of an earlier ``results_file``; write unless ``no_write``."""
    if results_file.is_file():
        previous = json.loads(results_file.read_text())
        for key in ("ema_study",):
            if key in previous:
                payload[key] = previous[key]
    if not no_write:
        out = write_results("ladder", payload)
        print(f"\nwrote {out}")


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)

    from kaclib.evaluation import Evaluator
    from kaclib.profiles import get_profile
    from kaclib.train import load_run

    t_all = time.perf_counter()
    prof = get_profile(args.profile)
    progress = not args.quiet
    if args.timing:
        return run_timing(args, RESULTS_FILE)
    if args.ema_study:
        return run_ema_study(args, prof, progress, RESULTS_FILE, t_all)
    seeds, gseeds, n_eval, base, model_cfg = ladder_setup(args, prof)
    ladder, timings = base.ladder, {}

    t0 = time.perf_counter()
    teachers = train_teachers(prof, seeds, gseeds, model_cfg, args.no_gaussian, progress)
    timings["teachers_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ev = Evaluator(prof.dataset)
    n_eval = min(n_eval, ev.max_n)
    floors = [ev.floor(n_eval, seed=s) for s in seeds]
    timings["evaluator_s"] = time.perf_counter() - t0
    conditioning = {f"{fam}-seed{s}": conditioning_check(load_run(d)) for (fam, s), d in teachers.items()}
    if args.train_only:
        return train_only(teachers, base, args.no_single, progress, t_all)

    score = Scorer(ev, n_eval)
    rows, train_info, budget = evaluate_rows(teachers, base, score, args.no_single, progress, timings)
    timings["total_s"] = time.perf_counter() - t_all

    agg = aggregate_rows(rows)
    floor = floor_summary(floors, n_eval, prof.dataset)
    comparisons = ladder_comparisons(agg, floor, ladder)
    header, table = ladder_table(agg, floor, ladder)
    targets = ladder_targets(agg, ladder, timings["total_s"])
    print_report(ev.metric_name, prof.dataset, n_eval, seeds, header, table, comparisons, targets, timings)
    report = {
        "floor": floor,
        "comparisons": comparisons,
        "agg": agg,
        "training": train_info,
        "budget": budget,
        "targets": targets,
        "timings": timings,
        "header": header,
        "table": table,
    }
    payload = build_payload(prof, ev, n_eval, seeds, gseeds, base, teachers, model_cfg, conditioning, report)
    write_payload(payload, RESULTS_FILE, args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
