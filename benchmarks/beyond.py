"""What the paper did not show (issue 11, sections 1 and 2), on the cached ladders of ladder.py.

``--trajectories``: for every stage of the Kac and the Gaussian ladders, the end-point error and
the largest deviation inside each student interval between the student's Euler line and the
teacher's substeps (:mod:`kaclib.trajectory_checks`), their correlations, and the exponent of the
interior deviation against the step size ``Delta`` (95% CI).  ``--cost``: for every row of the
ladder table, network passes and FLOPs per image, the training FLOPs of each student relative to
its teacher's training (:mod:`kaclib.cost`); with ``--timing`` also the end-to-end wall-clock per
1,000 images (latents included; take it on an idle machine only).

The ladders are found exactly as ``benchmarks/ladder.py`` caches them
(:func:`kaclib.distill.ladder_cache_dir` of the teacher and the distillation config): pass the
SAME ``--profile``, ``--seeds``, ``--gaussian-seeds``, ``--iters``, ``--set`` and ``--teacher-model``
as the ladder run.

    python benchmarks/beyond.py --iters 100,200,250,250 --set batch_size=64          # both studies
    python benchmarks/beyond.py ... --cost --timing                                 # idle machine
    python benchmarks/beyond.py --profile smoke --no-write                          # < 1 min, temp cache

``--profile smoke`` trains what it needs (smoke teachers and ladders) into a temporary cache
(``KACLIB_CACHE_DIR``) and never writes ``results/beyond.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import RESULTS, format_table, throwaway_cache, write_results  # noqa: E402

from kaclib.stats import mean_ci  # noqa: E402


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--trajectories", action="store_true", help="section 1: end points against whole trajectories"
    )
    ap.add_argument(
        "--cost", action="store_true", help="section 2: passes, FLOPs, training cost (wall-clock: --timing)"
    )
    ap.add_argument(
        "--timing", action="store_true", help="with --cost: wall-clock per 1,000 images (idle machine only)"
    )
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--seeds", type=int, nargs="+", default=None, help="as ladder.py (default: profile's, at least 2)"
    )
    ap.add_argument(
        "--gaussian-seeds", type=int, nargs="+", default=None, help="as ladder.py (default: --seeds)"
    )
    ap.add_argument("--iters", type=str, default=None, help="as ladder.py, e.g. 100,200,250,250")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="as ladder.py")
    ap.add_argument("--teacher-model", action="append", default=[], metavar="KEY=VALUE", help="as ladder.py")
    ap.add_argument("--no-gaussian", action="store_true")
    ap.add_argument(
        "--n", type=int, default=None, help="latents per trajectory study (default 256; smoke 16)"
    )
    ap.add_argument(
        "--n-timing", type=int, default=None, help="images per timed draw (default 1000; smoke 16)"
    )
    ap.add_argument("--repeats", type=int, default=3, help="timed draws per row (the best is kept)")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if not (args.trajectories or args.cost):
        args.trajectories = args.cost = True
    if args.timing and not args.cost:
        ap.error("--timing needs --cost")
    return args


def find_ladders(args, prof, smoke: bool) -> tuple:
    """``(base config, {(family, seed): (teacher_dir, ladder_dir)})``: the ladders ladder.py caches for
    these flags (trained here in the smoke profile; otherwise they must exist)."""
    from ladder import ladder_setup, teacher_cfg

    from kaclib.distill import ladder_cache_dir
    from kaclib.evaluation import get_teacher, teacher_dir
    from kaclib.teachers import CachedLadder, get_ladder

    if smoke and args.seeds is None:
        args = argparse.Namespace(**{**vars(args), "seeds": [0]})
    seeds, gseeds, _, base, model_cfg = ladder_setup(args, prof)
    out, missing = {}, []
    for fam in ["kac"] + ([] if args.no_gaussian else ["gaussian"]):
        for s in seeds if fam == "kac" else gseeds:
            tcfg, cfg = teacher_cfg(prof, fam, s, model_cfg), base.replace(seed=s)
            if smoke:
                get_ladder(get_teacher(tcfg, progress=not args.quiet), cfg, progress=not args.quiet)
            tdir = teacher_dir(tcfg)
            cached = CachedLadder(teacher=tdir, ladder=ladder_cache_dir(tdir, cfg), config=cfg)
            if not cached.complete:
                missing.append(f"{fam} seed {s}: {cached.ladder}")
            out[(fam, s)] = (tdir, cached.ladder)
    if missing:
        raise SystemExit(
            "beyond.py: error: these ladders are not (fully) trained; run benchmarks/ladder.py with the "
            "same flags first:\n  " + "\n  ".join(missing)
        )
    return base, out


def trajectories(ladders: dict, n: int, progress: bool) -> dict:
    """Section 1: per ladder the stage summaries and slopes; per family the slopes over seeds and a
    pooled fit over all (seed, stage) points; the per-sample scatter of the first seed."""
    from kaclib.trajectory_checks import deviation_slope, stage_deviation_study

    per, fams = {}, {}
    for (fam, s), (_, ldir) in ladders.items():
        t0 = time.perf_counter()
        study = stage_deviation_study(ldir, n=n, seed=1000 + s, label=fam)
        d = study.to_dict()
        d["seconds"] = time.perf_counter() - t0
        per[f"{fam}-seed{s}"] = d
        fams.setdefault(fam, []).append((s, study))
        if progress and study.slope is not None:
            print(
                f"{fam} seed {s}: slope {study.slope.slope:.3f} [{study.slope.lo:.3f}, {study.slope.hi:.3f}] "
                f"in {d['seconds']:.1f} s",
                flush=True,
            )
    summary = {}
    for fam, lst in fams.items():
        pts = [
            (st.deviation.delta, float(st.deviation.sup_interior.mean())) for _, sd in lst for st in sd.stages
        ]
        first = lst[0][1]
        several = len({p[0] for p in pts}) >= 2  # a slope needs two step sizes
        summary[fam] = {
            "slopes_over_seeds": mean_ci([sd.slope.slope for _, sd in lst]).to_dict() if several else None,
            "pooled_slope": deviation_slope(*zip(*pts)).to_dict() if several else None,
            "scatter_seed": lst[0][0],
            "scatter": {
                str(st.spec.student_steps): {
                    "delta": st.deviation.delta,
                    "sup_endpoint_error": np.round(st.deviation.sup_endpoint, 6).tolist(),
                    "sup_interior_deviation": np.round(st.deviation.sup_interior, 6).tolist(),
                }
                for st in first.stages
            },
        }
    return {
        "n": n,
        "latent_seed": "1000 + seed",
        "per_ladder": per,
        "per_family": summary,
        "norm": "Euclidean norm over all pixels of one image; interior = max over the teacher substeps strictly "
        "inside the student interval; slope = d log(mean over samples of the largest interior "
        "deviation along the path) / d log(Delta), one point per stage, 95% CI (t, n - 2)",
    }


def _rows(base, ladders: dict, fam: str, seed: int) -> list:
    """``(row, steps, model, path, method, w)`` of one family: students (Euler, w = 1, guidance
    baked in) and the undistilled teacher (AB-2, guided with the ladder's w) at every step count."""
    from kaclib.distill import load_ladder
    from kaclib.train import load_run

    tdir, ldir = ladders[(fam, seed)]
    teacher = load_run(tdir)
    students = load_ladder(ldir)
    rows = [(f"{fam}_teacher", M, teacher.model, teacher.path, "ab2", base.w) for M in base.ladder]
    rows += [
        (f"{fam}_ladder", M, run.model, run.path, "euler", 1.0)
        for M, run in sorted(students.items(), reverse=True)
    ]
    return rows


def _ladder_fids(base, profile: str) -> dict:
    """``{(row, steps): FID mean}`` from results/ladder.json when it was run with this config."""
    f = RESULTS / "ladder.json"
    if not f.is_file():
        return {}
    res = json.loads(f.read_text())
    if res.get("distill_config") != base.to_dict() or res.get("profile") != profile:
        return {}
    return {
        (row, int(steps)): v["fid"]["mean"]
        for row, d in res.get("results", {}).items()
        for steps, v in d.items()
    }


def cost(base, ladders: dict, args, smoke: bool, profile: str) -> dict:
    """Section 2: training cost per ladder; passes, FLOPs (and wall-clock) per row; one table."""
    from kaclib.cost import distillation_training_cost, sampling_cost, wall_clock_per_1000

    training = {
        f"{fam}-seed{s}": distillation_training_cost(ldir).to_dict()
        for (fam, s), (_, ldir) in ladders.items()
    }
    fids = _ladder_fids(base, profile)
    n_time = args.n_timing or (16 if smoke else 1000)
    rows, table = [], []
    for fam in dict.fromkeys(f for f, _ in ladders):
        seed = min(s for f, s in ladders if f == fam)
        tc = training[f"{fam}-seed{seed}"]
        cum = np.cumsum([st["total_flops"] for st in tc["stages"]])
        cum_ratio = {
            st["student_steps"]: (c / tc["teacher_training_flops"] if tc["teacher_training_flops"] else None)
            for st, c in zip(tc["stages"], cum)
        }
        for row, M, model, path, method, w in _rows(base, ladders, fam, seed):
            sc = sampling_cost(model, path, M, method, w).to_dict()
            rec = {
                "row": row,
                **sc,
                "fid": fids.get((row, M)),
                "training_flops_ratio": cum_ratio.get(M) if row.endswith("_ladder") else None,
            }
            if args.timing:
                wc = wall_clock_per_1000(model, path, M, method, w, n=n_time, repeats=args.repeats, seed=0)
                rec["wall_clock"] = wc.to_dict()
            rows.append(rec)
            s1000 = f"{rec['wall_clock']['seconds_per_1000']:.3f}" if args.timing else "-"
            table.append(
                [
                    row,
                    M,
                    method,
                    rec["network_passes"],
                    f"{sc['flops_per_image'] / 1e6:.2f}",
                    s1000,
                    "-" if rec["fid"] is None else f"{rec['fid']:.3f}",
                    "-" if rec["training_flops_ratio"] is None else f"{rec['training_flops_ratio']:.4f}",
                ]
            )
    header = [
        "row",
        "steps",
        "sampler",
        "passes/image",
        "MFLOPs/image",
        "s per 1000 (end to end)",
        "FID (ladder.json)",
        "training FLOPs / teacher's",
    ]
    return {
        "training": training,
        "rows": rows,
        "table": {"header": header, "rows": table},
        "timing": {"n": n_time, "repeats": args.repeats} if args.timing else None,
        "conventions": "FLOPs: torch FlopCounterMode (2 per multiply-add of matmuls/convolutions/attention, "
        "element-wise work not counted), one pass at batch 1 times the passes; training FLOPs: "
        "teacher passes x F + student iterations x batch x 3 x F (forward + backward = 3 "
        "forwards); students' ratio is cumulative down the ladder (all stages up to the row)",
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from kaclib.profiles import get_profile

    t_all = time.perf_counter()
    prof = get_profile(args.profile)
    smoke = prof.name == "smoke"
    # smoke: a throw-away cache, so the smoke teachers and ladders never mix with real artifacts
    with throwaway_cache(smoke, "kaclib-beyond-smoke-"):
        base, ladders = find_ladders(args, prof, smoke)
        payload = {
            "profile": prof.name,
            "distill_config": base.to_dict(),
            "ladders": {f"{f}-seed{s}": str(d) for (f, s), (_, d) in ladders.items()},
        }
        if args.trajectories:
            payload["trajectories"] = trajectories(ladders, args.n or (16 if smoke else 256), not args.quiet)
        if args.cost:
            payload["cost"] = cost(base, ladders, args, smoke, prof.name)
    payload["seconds"] = time.perf_counter() - t_all
    report(payload)
    json.dumps(payload)  # JSON-ready whatever is written
    if smoke or args.no_write:
        print("\n(not written: " + ("smoke profile" if smoke else "--no-write") + ")")
        return 0
    previous = RESULTS / "beyond.json"
    if previous.is_file():  # keep a section computed by a separate run (same config only)
        old = json.loads(previous.read_text())
        if old.get("distill_config") == payload["distill_config"]:
            for key in ("trajectories", "cost"):
                payload.setdefault(key, old.get(key))
    print(f"\nwrote {write_results('beyond', payload)}")
    return 0


def report(payload: dict) -> None:
    tr = payload.get("trajectories")
    if tr:
        print("\nend points against whole trajectories (mean over samples, largest along the path):")
        for key, d in tr["per_ladder"].items():
            for s in d["stages"]:
                print(
                    f"  {key} {s['teacher_steps']:>3} -> {s['student_steps']:<3} Delta {s['delta']:.3g}: "
                    f"end point {s['sup_endpoint_error']['mean']:.4g}, interior {s['sup_interior_deviation']['mean']:.4g}, "
                    f"Spearman {s['per_sample']['spearman']:.3f}"
                )
        for fam, d in tr["per_family"].items():
            p = d["pooled_slope"]
            if p is None:
                continue
            print(
                f"  {fam}: slope of interior deviation vs Delta {p['slope']:.3f} [{p['lo']:.3f}, {p['hi']:.3f}] "
                f"(pooled over seeds and stages, n = {p['n']})"
            )
    c = payload.get("cost")
    if c:
        print("\ncost beside NFE:")
        print(format_table(c["table"]["header"], c["table"]["rows"]))
    print(f"\n{payload['seconds']:.1f} s")


if __name__ == "__main__":
    raise SystemExit(main())
