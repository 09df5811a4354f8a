"""The 1-step students of the open questions' teachers (issue 12, sections 1 and 2, item ii).

``benchmarks/open_questions.py`` measures the TEACHERS of the random flight, of the Kac family at
fixed ``D = c^2 / xi`` (and its diffusion limit) and of the variance-matched Gaussian twin.  Here
each of those teachers (the same cached runs: same profile, ``--train-steps``, ``--ema-decay``,
seeds) is distilled into a 1-step student with DistillKac's ladder ``16 -> 4 -> 2 -> 1``
(:func:`kaclib.distill.run_ladder`, ``--iters`` per stage, the profile's guidance weight and batch
``--batch-size``), and the student is scored at 1 step (held-out FID, KID, class accuracy, and the
paired RMSE to its teacher's ``teacher_steps``-step AB-2 images from the same latents
``1000 + seed``).  Paired comparisons over seeds (:func:`kaclib.stats.compare`): the flight's
student against the coordinate-wise Kac student; each Kac student of the family against the
diffusion student; the profile's Kac student against its twin's.

    python benchmarks/open_questions_students.py --train-steps 300 --ema-decay 0.99 --n-eval 300
    python benchmarks/open_questions_students.py --profile smoke --no-write      # < 2 min
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import throwaway_cache, write_results  # noqa: E402
from open_questions import Settings, flight_paths, limit_paths, teacher_dir  # noqa: E402

from kaclib.artifacts import cache_root  # noqa: E402
from kaclib.distill import config_for_profile  # noqa: E402
from kaclib.evaluation import Evaluator, evaluate_run  # noqa: E402
from kaclib.profiles import get_profile  # noqa: E402
from kaclib.sample_quality import paired_rmse  # noqa: E402
from kaclib.stats import compare, fmt_ci, mean_ci  # noqa: E402
from kaclib.tables import markdown_table  # noqa: E402
from kaclib.teachers import get_ladder  # noqa: E402
from kaclib.train import load_run  # noqa: E402

LADDER = (16, 4, 2, 1)
METRICS = ("fid", "kid", "accuracy", "rmse_to_teacher")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--xis", type=float, nargs="+", default=[2.0, 8.0, 32.0, 128.0])
    ap.add_argument("--train-steps", type=int, default=None, help="as open_questions.py")
    ap.add_argument("--ema-decay", type=float, default=None, help="as open_questions.py")
    ap.add_argument("--n-eval", type=int, default=None, help="images per score (default: the profile's)")
    ap.add_argument("--iters", type=int, default=100, help="student iterations per ladder stage")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-write", action="store_true")
    return ap.parse_args(argv)


def student_row(st: Settings, path_cfg: dict, ev: Evaluator, args) -> dict:
    """Distil every seed's teacher of ``path_cfg`` and score its 1-step student; per-seed values
    and their means with 95% CI half-widths."""
    prof, per_seed = st.profile, {m: [] for m in METRICS}
    for s in st.seeds:
        tdir = teacher_dir(st, path_cfg, s)
        cfg = config_for_profile(prof, ladder=LADDER, iters=args.iters, batch_size=args.batch_size, seed=s)
        res = get_ladder(tdir, cfg)
        ref = load_run(tdir).generate(st.n, prof.sampling.steps, "ab2", prof.sampling.w, seed=1000 + s)
        one = evaluate_run((res.stages[-1].student, res.path), 1, "euler", 1.0, n=st.n, seed=1000 + s,
                           evaluator=ev, return_images=True)  # fmt: skip
        rmse = float(paired_rmse(one["images"], ref.images).mean())
        for m, v in zip(METRICS, (one["fid"], one["kid"], one["accuracy"], rmse)):
            per_seed[m].append(float(v))
    row = {"path": path_cfg, "seeds": list(st.seeds)}
    for m, vals in per_seed.items():
        ci = mean_ci(vals)
        row[m], row[f"{m}_values"], row[f"{m}_half_width"] = ci.mean, vals, ci.half_width
    return row


def pairs(rows: dict) -> list[tuple[str, str]]:
    """(a, b) pairs compared: flight vs Kac, each Kac of the family vs diffusion, profile Kac vs twin."""
    flight = next(k for k in rows if k.startswith("flight"))
    kac_cw = next(k for k in rows if k.endswith("(coordinate-wise)"))
    twin = "gaussian twin (profile)"
    kac_prof = next(k for k in rows if k.endswith("(profile)") and k != twin)
    family = [k for k in rows if k.startswith("kac xi=")]
    return [(flight, kac_cw), *((k, "diffusion") for k in family), (kac_prof, twin)]


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    prof = get_profile(args.profile)
    smoke = prof.name == "smoke"
    t0 = time.time()
    if smoke:
        args.seeds, args.xis, args.iters, args.batch_size = args.seeds[:2], [2.0, 128.0], 3, 16
    feature_cache = str(cache_root())  # the metric's feature nets: the usual cache, smoke or not
    with throwaway_cache(smoke, "kaclib-oq-students-smoke-"):
        ev = Evaluator(prof.dataset, cache_dir=feature_cache)
        n = min(args.n_eval or prof.evaluation.n, ev.max_n)
        st = Settings(prof, tuple(args.seeds), n, 0, (1,), args.train_steps, args.ema_decay, None, False)
        paths = {**flight_paths(prof, math.prod(ev.image_shape)), **limit_paths(prof, tuple(args.xis))}
        rows = {}
        for name, cfg in paths.items():
            t = time.perf_counter()
            rows[name] = student_row(st, cfg, ev, args)
            print(
                f"[students] {name}: 1-step FID {fmt_ci(rows[name]['fid_values'])} ({time.perf_counter() - t:.0f} s)"
            )
    comparisons = [
        compare(f"the 1-step student of {a} has lower {m} than that of {b}", m, a, rows[a][f"{m}_values"],
                b, rows[b][f"{m}_values"], direction="<").to_dict()
        for a, b in pairs(rows) for m in ("fid", "rmse_to_teacher")
    ]  # fmt: skip
    headers = ["teacher's path", "1-step FID", "1-step KID", "accuracy", "RMSE to teacher"]
    body = [[k, *(fmt_ci(r[f"{m}_values"]) for m in METRICS)] for k, r in rows.items()]
    payload = {
        "profile": prof.name,
        "settings": {
            "seeds": args.seeds,
            "xis": args.xis,
            "ladder": list(LADDER),
            "iters_per_stage": args.iters,
            "batch_size": args.batch_size,
            "teacher_train_steps": args.train_steps,
            "teacher_ema_decay": args.ema_decay,
            "n_eval": n,
            "latent_seed": "1000 + seed",
        },
        "metric_name": ev.metric_name,
        "rows": rows,
        "comparisons": comparisons,
        "table": {"header": headers, "rows": body},
        "table_markdown": markdown_table(headers, body),
        "seconds": time.time() - t0,
    }
    print(payload["table_markdown"])
    if not (args.no_write or smoke):
        write_results("open_questions_students", payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
