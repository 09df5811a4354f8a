"""Strong guidance and very few steps (issue 11, section 3): Kac against the Gaussian peer.

Guidance weights ``w`` in {1, 2, 4, 8, 16} x Euler steps {1, 2, 4, 8}, on the undistilled
teachers of both paths (free head; ``--teacher-steps`` training steps, seeds ``--seeds``, the
shared latents ``1000 + seed``): non-finite images, pixels outside ``[-1, 1]``, the largest ``|x|``
and ``||v_w||`` along the trajectories (:mod:`kaclib.guidance_stress`), and the held-out scores
(:class:`kaclib.evaluation.Evaluator`).  Each cell compares Kac with the Gaussian peer over seeds
(:func:`kaclib.stats.compare`; verdicts from the 95% CI of the paired difference).

    python benchmarks/guidance_stress.py                        # cpu profile, 3 seeds (minutes)
    python benchmarks/guidance_stress.py --profile smoke --no-write
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import markdown_table, throwaway_cache, write_results  # noqa: E402

from kaclib.evaluation import Evaluator, get_teacher, teacher_config  # noqa: E402
from kaclib.guidance_stress import STEPS, WEIGHTS, stress_grid  # noqa: E402
from kaclib.stats import compare, fmt_ci  # noqa: E402
from kaclib.train import load_run  # noqa: E402

FAMILIES = ("kac", "gaussian")


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--teacher-steps", type=int, default=600, help="training steps of each teacher")
    ap.add_argument("--n", type=int, default=300, help="images per setting")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-write", action="store_true")
    return ap.parse_args(argv)


def teachers(args) -> dict:
    """``{(family, seed): run_dir}``, trained once and cached (:func:`kaclib.evaluation.get_teacher`)."""
    out = {}
    for fam in FAMILIES:
        for s in args.seeds:
            cfg = teacher_config(args.profile, path=fam, seed=s, steps=args.teacher_steps)
            out[fam, s] = get_teacher(cfg, progress=False)
    return out


def run(args) -> dict:
    ev = Evaluator("digits")
    n = min(args.n, ev.max_n)
    rows = {}
    for (fam, s), run_dir in teachers(args).items():
        loaded = load_run(run_dir)
        rows[f"{fam}-seed{s}"] = stress_grid(loaded.model, loaded.path, n, seed=1000 + s, score=ev.score)
    return {"n": n, "rows": rows}


def cell(rows, fam, seeds, k, key):
    vals = [rows[f"{fam}-seed{s}"][k] for s in seeds]
    return [
        v["scores"][key] if key in ("fid", "kid", "precision", "recall", "accuracy") else v[key] for v in vals
    ]


def summarise(res: dict, seeds) -> tuple[list, list, str]:
    """Per cell: means with CIs and the paired comparisons Kac vs Gaussian (FID, range)."""
    first = res["rows"][f"kac-seed{seeds[0]}"]
    comparisons, table = [], []
    for k, r in enumerate(first):
        w, steps = r["w"], r["steps"]
        line = [f"{w:g}", steps]
        for key in ("fid", "frac_out_of_range", "max_velocity_norm"):
            for fam in FAMILIES:
                line.append(fmt_ci(cell(res["rows"], fam, seeds, k, key), 3))
        line.append(sum(sum(cell(res["rows"], fam, seeds, k, "n_nonfinite")) for fam in FAMILIES))
        for key, what in (("fid", "FID-digits"), ("frac_out_of_range", "fraction of pixels outside [-1, 1]")):
            c = compare(
                f"Kac is better than the Gaussian peer at w = {w:g}, {steps} Euler steps ({what})",
                key,
                "kac",
                cell(res["rows"], "kac", seeds, k, key),
                "gaussian",
                cell(res["rows"], "gaussian", seeds, k, key),
                "<",
            )
            comparisons.append({**c.to_dict(), "w": w, "steps": steps})
            line.append(c.verdict)
        table.append(line)
    head = ["w", "steps", "FID Kac", "FID Gauss", "out Kac", "out Gauss", "max|v| Kac", "max|v| Gauss",
            "non-finite", "FID: Kac better", "range: Kac better"]  # fmt: skip
    return comparisons, table, markdown_table(head, table)


def tally(comparisons: list) -> dict:
    out = {}
    for c in comparisons:
        d = out.setdefault(c["metric"], {"holds": 0, "fails": 0, "inconclusive": 0})
        d[c["verdict"]] += 1
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    smoke = args.profile == "smoke"
    if smoke:
        args.seeds, args.teacher_steps, args.n = args.seeds[:2], 20, 32
    with throwaway_cache(smoke):
        res = run(args)
    comparisons, table, md = summarise(res, args.seeds)
    payload = {
        "profile": args.profile,
        "settings": {
            "weights": list(WEIGHTS),
            "steps": list(STEPS),
            "solver": "euler",
            "n": res["n"],
            "seeds": args.seeds,
            "latent_seed": "1000 + seed",
            "teacher_train_steps": args.teacher_steps,
        },  # fmt: skip
        "budget": (
            f"reduced: teachers of {args.teacher_steps} training steps (the cpu profile trains 1500), free head "
            "only, no diffusion path and no distilled students in this grid (see notes)"
        ),
        "notes": (
            "Scores and range count every image; non-finite images are counted, then clamped by the "
            "evaluator.  ||v_w|| is read off the Euler steps, (x_k - x_k+1)/dt: its scale differs between "
            "the paths (the Kac latent is narrower), so only FID and the out-of-range fraction are compared."
        ),
        "rows": res["rows"],
        "comparisons": comparisons,
        "tally": tally(comparisons),
        "table_markdown": md,
        "seconds": time.time() - t0,
    }
    print(md)
    print(payload["tally"], f"{payload['seconds']:.0f} s")
    if not (args.no_write or smoke):
        write_results("guidance_stress", payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
