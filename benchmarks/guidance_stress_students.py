"""Strong guidance in distilled students (issue 11, section 3, the students' half).

A student bakes in the guidance weight it was distilled at.  For ``w`` in ``--weights`` the
teachers of ``benchmarks/guidance_stress.py`` (Kac and the Gaussian peer, ``--teacher-steps``
training steps, seeds ``--seeds``) are distilled with DistillKac's ladder ``16 -> 4 -> 2 -> 1``
(``--iters`` per stage, batch ``--batch-size``, the teacher's AB-2 substeps at weight ``w``; the
``w = 1`` ladders are those of ``benchmarks/fewstep_methods.py``, shared through the cache), and
each stage's student is sampled with its own Euler steps (4, 2, 1) from the shared latents
``1000 + seed``: non-finite images, pixels outside ``[-1, 1]``, the largest ``|x|`` and ``||v||``
along the trajectories (:mod:`kaclib.guidance_stress`) and the held-out scores.  Each cell
compares the Kac student with the Gaussian student over seeds (:func:`kaclib.stats.compare`).

    python benchmarks/guidance_stress_students.py                      # cpu, 3 seeds
    python benchmarks/guidance_stress_students.py --families kac       # one family per process ...
    python benchmarks/guidance_stress_students.py --profile smoke --no-write
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import markdown_table, throwaway_cache, write_results  # noqa: E402
from guidance_stress import family_config, tally  # noqa: E402

from kaclib.distill import DistillConfig  # noqa: E402
from kaclib.evaluation import Evaluator, get_teacher  # noqa: E402
from kaclib.guidance_stress import stress  # noqa: E402
from kaclib.stats import compare, fmt_ci  # noqa: E402
from kaclib.teachers import get_ladder  # noqa: E402

FAMILIES = ("kac", "gaussian")
LADDER = (16, 4, 2, 1)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--weights", type=float, nargs="+", default=[1.0, 4.0, 16.0])
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    ap.add_argument("--teacher-steps", type=int, default=600)
    ap.add_argument("--iters", type=int, default=200, help="student iterations per ladder stage")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--train-only", action="store_true", help="train the ladders, score nothing, write nothing"
    )
    ap.add_argument("--no-write", action="store_true")
    return ap.parse_args(argv)


def student_rows(args, fam: str, seed: int, w: float, ev: Evaluator | None) -> list[dict]:
    """Distil (or load) one ladder at weight ``w``; the stress rows of its students (none with ``ev=None``)."""
    tdir = get_teacher(family_config(args.profile, fam, seed, args.teacher_steps), progress=False)
    cfg = DistillConfig(ladder=LADDER, iters=args.iters, batch_size=args.batch_size, seed=seed, w=w,
                        teacher_solver="ab2")  # fmt: skip
    res = get_ladder(tdir, cfg)
    if ev is None:
        return []
    rows = []
    for st in res.stages:
        out, g = stress(st.student, res.path, args.n, st.spec.student_steps, 1.0, seed=1000 + seed)
        rows.append({**out.to_dict(), "w": w, "scores": ev.score(g.images, g.labels).to_dict()})
    return rows


def summarise(rows: dict, args) -> tuple[list, list]:
    """Per (w, steps): FID and out-of-range per family, and Kac-vs-Gaussian comparisons."""
    seeds, comparisons, table = args.seeds, [], []
    first = rows[f"{args.families[0]}-seed{seeds[0]}"]
    for k, r in enumerate(first):
        w, steps = r["w"], r["steps"]

        def vals(fam, key, k=k):
            got = [rows[f"{fam}-seed{s}"][k] for s in seeds]
            return [v["scores"][key] if key == "fid" else v[key] for v in got]

        line = [f"{w:g}", steps]
        line += [fmt_ci(vals(f, "fid"), 2) for f in args.families]
        line += [fmt_ci(vals(f, "frac_out_of_range"), 3) for f in args.families]
        line.append(sum(sum(vals(f, "n_nonfinite")) for f in args.families))
        if set(FAMILIES) <= set(args.families):
            for key, what in (
                ("fid", "FID-digits"),
                ("frac_out_of_range", "fraction of pixels outside [-1, 1]"),
            ):
                c = compare(
                    f"The Kac student is better than the Gaussian student at w = {w:g}, {steps} step(s) ({what})",
                    key, "kac", vals("kac", key), "gaussian", vals("gaussian", key), "<",
                )  # fmt: skip
                comparisons.append({**c.to_dict(), "w": w, "steps": steps})
                line.append(c.verdict)
        table.append(line)
    return comparisons, table


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t0, smoke = time.time(), args.profile == "smoke"
    if smoke:
        args.seeds, args.teacher_steps, args.n, args.iters, args.batch_size = args.seeds[:2], 20, 32, 2, 16
    with throwaway_cache(smoke):
        ev = None if args.train_only else Evaluator("digits")
        if ev is not None:
            args.n = min(args.n, ev.max_n)
        rows = {}
        for fam in args.families:
            for s in args.seeds:
                rows[f"{fam}-seed{s}"] = [r for w in args.weights for r in student_rows(args, fam, s, w, ev)]
                print(f"{fam} seed {s}: {len(args.weights)} ladders ({time.time() - t0:.0f} s)", flush=True)
    if args.train_only:
        return 0
    comparisons, table = summarise(rows, args)
    head = [
        "w (baked in)",
        "steps",
        *(f"FID {f}" for f in args.families),
        *(f"out {f}" for f in args.families),
    ]
    head += ["non-finite"] + (["FID: Kac better", "range: Kac better"] if comparisons else [])
    payload = {
        "profile": args.profile,
        "settings": {
            "weights": args.weights,
            "ladder": list(LADDER),
            "iters_per_stage": args.iters,
            "batch_size": args.batch_size,
            "n": args.n,
            "seeds": args.seeds,
            "latent_seed": "1000 + seed",
            "teacher_train_steps": args.teacher_steps,
            "families": args.families,
        },  # fmt: skip
        "rows": rows,
        "comparisons": comparisons,
        "tally": tally(comparisons),
        "table_markdown": markdown_table(head, table),
        "seconds": time.time() - t0,
    }
    print(payload["table_markdown"])
    print(payload["tally"], f"{payload['seconds']:.0f} s")
    if not (args.no_write or smoke):
        write_results("guidance_stress_students", payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
