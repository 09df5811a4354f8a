"""Other few-step methods at the same budget (issue 11, section 4): DistillKac against progressive
distillation, rectified-flow reflow and consistency distillation, on the Kac and the Gaussian teacher.

Against the SAME teacher (the reduced teachers of ``benchmarks/guidance_stress.py``:
``teacher_config(profile, path=family, seed=s, steps=--teacher-steps)``, sampled with AB-2 and
``w = 1``), every method starts its student from the teacher's weights (the same network) and
spends the same number of student iterations (``--iters``, Adam, batch ``--batch-size``, EMA 0.99,
seed ``s``):

* ``ladder``: DistillKac's ladder shaped like the paper's ``100 -> 20 -> 4 -> 2 -> 1`` (a large
  first jump, then halvings): ``16 -> 4 -> 2 -> 1`` (:func:`kaclib.distill.run_ladder`,
  ``--iters / 3`` per stage);
* ``single``: DistillKac's single stage ``16 -> 1`` on a pool of teacher end points whose teacher
  passes equal the whole ladder's (as ``benchmarks/ladder.py``);
* ``progressive``: progressive distillation (Salimans & Ho 2022), the halving ladder
  ``16 -> 8 -> 4 -> 2 -> 1`` with its own target, ``--iters / 4`` per stage
  (:mod:`kaclib.fewstep.progressive`).  With Euler students its target equals DistillKac's end-point
  loss at two substeps (``tests/test_fewstep.py``): DistillKac on a halving ladder IS progressive
  distillation, so the rows differ by the ladder's shape, not by the loss;
* ``consistency``: consistency distillation (Song et al. 2023), ``N = 16``, one teacher step per
  sample and iteration (:mod:`kaclib.fewstep.consistency`);
* ``reflow``: 2-rectified flow (Liu et al. 2023) on couplings whose flow-teacher passes equal the
  ladder's first stage (``n_pairs x 16`` steps), half the iterations, then the other half distilling
  it to one step with the DistillKac end-point loss (:mod:`kaclib.fewstep.reflow`).

Each method is sampled at 1, 2 and 4 steps with its own sampler: the ladder's and progressive's
stage students with Euler; consistency with multistep consistency sampling
(:func:`kaclib.fewstep.consistency_sample`); reflow's 2-rectified flow with Euler at 2 and 4 steps
and its distilled student at 1; the single stage at 1 step only.  Scores: held-out FID / KID /
precision / recall / class accuracy (:class:`kaclib.evaluation.Evaluator`) and the paired RMSE to
the teacher's 16-step images, all from the shared latents ``1000 + seed``; every method is compared
with the ladder over seeds (:func:`kaclib.stats.compare`, verdicts from the 95% CI).

    python benchmarks/fewstep_methods.py                           # 3 seeds, both teachers (about 1 h, 1 thread)
    python benchmarks/fewstep_methods.py --profile smoke --no-write   # < 2 min, temporary cache
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import markdown_table, throwaway_cache, write_results  # noqa: E402

from kaclib import fewstep as fs  # noqa: E402
from kaclib.artifacts import derived_run_dir  # noqa: E402
from kaclib.data import load_dataset  # noqa: E402
from kaclib.distill import DistillConfig, TeacherField  # noqa: E402
from kaclib.evaluation import (  # noqa: E402
    Evaluator,
    balanced_labels,
    evaluate_run,
    get_teacher,
    image_latents,
    score_fields,
    teacher_config,
)
from kaclib.sample_quality import paired_rmse  # noqa: E402
from kaclib.stats import compare, fmt_ci  # noqa: E402
from kaclib.teachers import get_ladder  # noqa: E402
from kaclib.train import load_run  # noqa: E402

FAMILIES = ("kac", "gaussian")
METHODS = ("ladder", "single", "progressive", "consistency", "reflow")
STEPS = (1, 2, 4)
TOP = 16  # the teacher's steps at the top of every ladder, and the paired-RMSE reference
METRICS = ("fid", "kid", "precision", "recall", "paired_rmse_to_teacher")
LOWER_IS_BETTER = {
    "fid": True,
    "kid": True,
    "precision": False,
    "recall": False,
    "paired_rmse_to_teacher": True,
}


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    ap.add_argument("--teacher-steps", type=int, default=600, help="training steps of each teacher")
    ap.add_argument(
        "--iters", type=int, default=600, help="student iterations of every method (multiple of 4)"
    )
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--n", type=int, default=300, help="images per score")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    if args.iters < 12 or args.iters % 12:
        ap.error(f"--iters must be a positive multiple of 12 (3 and 4 stages), got {args.iters}")
    return args


def method_configs(args, seed: int) -> dict:
    """The frozen config of every method for one seed; budgets matched as the module docstring says."""
    b = args.batch_size
    common = {"batch_size": b, "seed": seed, "lr": 3e-4, "ema_decay": 0.99, "log_every": 50}
    ladder = DistillConfig(
        ladder=(TOP, 4, 2, 1), iters=args.iters // 3, batch_size=b, seed=seed, w=1.0, teacher_solver="ab2"
    )
    first = ladder.stages()[0]
    return {
        "ladder": ladder,
        "single": ladder.single_stage(),
        "progressive": fs.ProgressiveConfig(start_steps=TOP, end_steps=1, iters=args.iters // 4, **common),
        "consistency": fs.ConsistencyConfig(N=TOP, iters=args.iters, **common),
        "reflow": fs.ReflowConfig(
            n_pairs=first.iters * first.substeps * b // TOP,
            coupling_steps=TOP,
            reflow_iters=args.iters // 2,
            distill_iters=args.iters // 2,
            distill_teacher_steps=8,
            **common,
        ),
    }


def train_method(method: str, cfg, tdir: Path, teacher: TeacherField, path, data) -> tuple[dict, dict]:
    """Run (or resume from the cache) one method; returns ``({steps: (model, sampler)}, budget)``."""
    if method in ("ladder", "single"):
        res = get_ladder(tdir, cfg)
        models = {st.spec.student_steps: (st.student, "euler") for st in res.stages}
        passes = sum(st.teacher_passes for st in res.stages)
        flow = res.stages[0].teacher_passes
        budget = {"student_iters": sum(st.iters for st in res.stages), "teacher_passes": passes}
        return {k: models[k] for k in STEPS if k in models}, {**budget, "flow_teacher_passes": flow}
    run = {"progressive": fs.run_progressive, "consistency": fs.run_consistency, "reflow": fs.run_reflow}
    run_dir = derived_run_dir(f"fewstep-{method}", tdir, cfg=cfg.to_dict())
    res = run[method](teacher, path, data.images, data.labels, cfg, run_dir=run_dir, resume=True)
    if method == "progressive":
        models = {st.spec.student_steps: (st.student, "euler") for st in res.stages}
    elif method == "consistency":
        models = {k: (res.student, "consistency") for k in STEPS}
    else:  # the 2-rectified flow at 2 and 4 Euler steps, its distilled student at 1
        models = {
            1: (res.student, "euler"),
            2: (res.stages[0].student, "euler"),
            4: (res.stages[0].student, "euler"),
        }
    budget = res.budget()
    budget.pop("method")
    return {k: models[k] for k in STEPS if k in models}, budget


def consistency_images(model, path, n: int, steps: int, nc: int, seed: int) -> torch.Tensor:
    """``n`` images of a consistency model from the shared latents ``seed`` (image ``i``'s latent and
    label fixed, as in :func:`kaclib.evaluation.generate`)."""
    cfg = model.cfg
    x_T = image_latents(path, n, (cfg.in_channels, cfg.image_size, cfg.image_size), seed=seed)
    g = torch.Generator().manual_seed(seed)
    return fs.consistency_sample(model, path, x_T, steps, balanced_labels(n, nc), generator=g)


def one_teacher(args, fam: str, seed: int, ev: Evaluator, data) -> dict:
    """Scores of the teacher and of every method, for one family and seed."""
    tdir = get_teacher(
        teacher_config(args.profile, path=fam, seed=seed, steps=args.teacher_steps), progress=False
    )
    run = load_run(tdir)
    nc = run.num_classes
    teacher = TeacherField(run.model, guided=True, w=1.0, num_classes=nc, solver="ab2")
    latent_seed, n = 1000 + seed, args.n
    ref = evaluate_run(run, TOP, "ab2", 1.0, n=n, seed=latent_seed, evaluator=ev, return_images=True)

    def scores(row: dict) -> dict:
        """The table's scores of an ``evaluate_run`` row (with its images)."""
        sc = score_fields(row)
        return {**sc, "paired_rmse_to_teacher": float(paired_rmse(row["images"], ref["images"]).mean())}

    def score(model, how: str, k: int) -> dict:
        """A model's scores at ``k`` steps: Euler through ``evaluate_run``, else consistency sampling."""
        if how == "euler":
            pair = (model, run.path)
            row = evaluate_run(pair, k, "euler", 1.0, n=n, seed=latent_seed, evaluator=ev, return_images=True)
        else:
            images = consistency_images(model, run.path, n, k, nc, latent_seed)
            row = {**ev.score(images, ref["labels"]).to_dict(), "images": images}
        return scores(row)

    out = {"teacher": {TOP: scores(ref)}, "budget": {}, "train_s": {}}
    for k in STEPS:
        out["teacher"][k] = score(run.model, "euler", k)
    for method, cfg in method_configs(args, seed).items():
        t0 = time.perf_counter()
        models, out["budget"][method] = train_method(method, cfg, tdir, teacher, run.path, data)
        out["train_s"][method] = time.perf_counter() - t0
        out[method] = {k: score(m, how, k) for k, (m, how) in models.items()}
        print(
            f"{fam} seed {seed} {method}: FID@1 {out[method][1]['fid']:.2f} ({out['train_s'][method]:.0f} s)"
        )
    return out


def comparisons(rows: dict, fam: str, seeds) -> list[dict]:
    """Every method against the ladder, at every step count both have, on every metric."""
    out = []
    for method in METHODS[1:]:
        for k in STEPS:
            if k not in rows[fam, seeds[0]][method] or k not in rows[fam, seeds[0]]["ladder"]:
                continue
            for m in METRICS:
                direction = "<" if LOWER_IS_BETTER[m] else ">"
                a = [rows[fam, s][method][k][m] for s in seeds]
                b = [rows[fam, s]["ladder"][k][m] for s in seeds]
                claim = f"{fam}: {method} beats the DistillKac ladder at {k} step(s) on {m}"
                c = compare(claim, m, f"{fam} {method} @{k}", a, f"{fam} ladder @{k}", b, direction)
                out.append(c.to_dict())
    return out


def table(rows: dict, fam: str, seeds) -> list[list[str]]:
    def cell(method, k, m="fid"):
        if k not in rows[fam, seeds[0]][method]:
            return "-"
        return fmt_ci([rows[fam, s][method][k][m] for s in seeds], 2 if m == "fid" else 3)

    budget = rows[fam, seeds[0]]["budget"]
    out = [
        [
            f"{fam} teacher (undistilled, Euler)",
            *[cell("teacher", k) for k in STEPS],
            cell("teacher", 1, "paired_rmse_to_teacher"),
            "-",
            "-",
        ]
    ]
    for method in METHODS:
        b = budget[method]
        out.append(
            [f"{fam} {method}", *[cell(method, k) for k in STEPS], cell(method, 1, "paired_rmse_to_teacher"),
             str(b["student_iters"]), f"{b['teacher_passes']:,} ({b['flow_teacher_passes']:,})"]
        )  # fmt: skip
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    smoke = args.profile == "smoke"
    if smoke:
        args.seeds, args.teacher_steps, args.n, args.iters, args.batch_size = args.seeds[:2], 20, 32, 12, 16
    with throwaway_cache(smoke):
        ev = Evaluator("digits")
        args.n = min(args.n, ev.max_n)
        data = load_dataset("digits", "train")
        rows = {(f, s): one_teacher(args, f, s, ev, data) for f in args.families for s in args.seeds}
    header = [
        "row",
        *[f"FID @{k}" for k in STEPS],
        "RMSE to teacher @1",
        "student iters",
        "teacher passes (flow)",
    ]
    body = [r for f in args.families for r in table(rows, f, args.seeds)]
    comps = [c for f in args.families for c in comparisons(rows, f, args.seeds)]
    md = markdown_table(header, body)
    payload = {
        "profile": args.profile,
        "settings": {
            "seeds": args.seeds,
            "families": args.families,
            "teacher_train_steps": args.teacher_steps,
            "student_iters": args.iters,
            "batch_size": args.batch_size,
            "n": args.n,
            "latent_seed": "1000 + seed",
            "teacher_top_steps": TOP,
            "steps": list(STEPS),
        },
        "configs": {m: c.to_dict() for m, c in method_configs(args, args.seeds[0]).items()},
        "rows": {f"{f}-seed{s}": v for (f, s), v in rows.items()},
        "comparisons": comps,
        "table": {"header": header, "rows": body},
        "table_markdown": md,
        "seconds": time.time() - t0,
    }
    print(md)
    if not (args.no_write or smoke):
        write_results("fewstep_methods", payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
