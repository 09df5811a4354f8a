"""Strong guidance and very few steps (issue 11, section 3): Kac against the Gaussian peer, the
diffusion path, and with its bounded head.

Guidance weights ``w`` in {1, 2, 4, 8, 16} x Euler steps {1, 2, 4, 8}, on the undistilled
teachers of ``--families`` (``kac``: the profile's Kac path, free head; ``gaussian``: the Gaussian
peer; ``diffusion``: the diffusion limit of the Kac path at the same ``D = c^2 / 2a``, ``f`` and
``g``; ``kac_bounded``: the Kac path with the bounded head of chapter 2, whose velocity cannot
exceed the finite-speed bound; ``--teacher-steps`` training steps, seeds ``--seeds``, the shared
latents ``1000 + seed``): non-finite images, pixels outside ``[-1, 1]``, the largest ``|x|`` and
``||v_w||`` along the trajectories (:mod:`kaclib.guidance_stress`), and the held-out scores
(:class:`kaclib.evaluation.Evaluator`).  Each cell compares Kac with every other family over seeds
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
from common import markdown_table, throwaway_cache, verdict_tally, write_results  # noqa: E402

from kaclib.evaluation import Evaluator, get_teacher, teacher_config  # noqa: E402
from kaclib.guidance_stress import STEPS, WEIGHTS, stress_grid  # noqa: E402
from kaclib.profiles import get_profile  # noqa: E402
from kaclib.stats import compare, fmt_ci  # noqa: E402
from kaclib.train import load_run  # noqa: E402

FAMILIES = ("kac", "gaussian", "diffusion", "kac_bounded")
NAMES = {"kac": "Kac", "gaussian": "Gauss", "diffusion": "diffusion", "kac_bounded": "Kac bounded"}


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--teacher-steps", type=int, default=600, help="training steps of each teacher")
    ap.add_argument("--n", type=int, default=300, help="images per setting")
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-write", action="store_true")
    return ap.parse_args(argv)


def family_config(profile: str, fam: str, seed: int, steps: int):
    """The TrainConfig of one family's teacher (module docstring)."""
    prof = get_profile(profile)
    if fam in ("kac", "gaussian"):
        return teacher_config(prof, path=fam, seed=seed, steps=steps)
    if fam == "diffusion":
        path = {
            "kind": "diffusion",
            "D": prof.path.c**2 / (2 * prof.path.a),
            "f": prof.path.f,
            "g": prof.path.g,
            "T": 1.0,
        }
        return teacher_config(prof, path=path, seed=seed, steps=steps)
    base = teacher_config(prof, path="kac", seed=seed, steps=steps)
    return base.replace(model={**base.model, "head": "bounded"})


def teachers(args) -> dict:
    """``{(family, seed): run_dir}``, trained once and cached (:func:`kaclib.evaluation.get_teacher`)."""
    return {
        (fam, s): get_teacher(family_config(args.profile, fam, s, args.teacher_steps), progress=False)
        for fam in args.families
        for s in args.seeds
    }


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


def summarise(res: dict, seeds, families) -> tuple[list, list, str]:
    """Per cell: means with CIs and the paired comparisons of Kac with every other family (FID, range)."""
    first = res["rows"][f"kac-seed{seeds[0]}"]
    others = [f for f in families if f != "kac"]
    comparisons, table = [], []
    for k, r in enumerate(first):
        w, steps = r["w"], r["steps"]
        line = [f"{w:g}", steps]
        for key in ("fid", "frac_out_of_range"):
            for fam in families:
                line.append(
                    fmt_ci(cell(res["rows"], fam, seeds, k, key), 3 if key == "frac_out_of_range" else 2)
                )
        line.append(sum(sum(cell(res["rows"], fam, seeds, k, "n_nonfinite")) for fam in families))
        for key, what in (("fid", "FID-digits"), ("frac_out_of_range", "fraction of pixels outside [-1, 1]")):
            for other in others:
                c = compare(
                    f"Kac is better than {NAMES[other]} at w = {w:g}, {steps} Euler steps ({what})",
                    key,
                    "kac",
                    cell(res["rows"], "kac", seeds, k, key),
                    other,
                    cell(res["rows"], other, seeds, k, key),
                    "<",
                )
                comparisons.append({**c.to_dict(), "w": w, "steps": steps})
                if key == "fid":
                    line.append(c.verdict)
        table.append(line)
    head = ["w", "steps", *(f"FID {NAMES[f]}" for f in families), *(f"out {NAMES[f]}" for f in families)]
    head += ["non-finite"] + [f"FID: Kac better than {NAMES[o]}" for o in others]
    return comparisons, table, markdown_table(head, table)


def tally(comparisons: list) -> dict:
    """``{"<metric> vs <family>": {"holds": k, "fails": k, "inconclusive": k}}``."""
    return verdict_tally(comparisons, lambda c: f"{c['metric']} vs {c['b']}")


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    smoke = args.profile == "smoke"
    if smoke:
        args.seeds, args.teacher_steps, args.n = args.seeds[:2], 20, 32
    with throwaway_cache(smoke):
        res = run(args)
    comparisons, table, md = summarise(res, args.seeds, args.families)
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
            "families": args.families,
        },  # fmt: skip
        "budget": (
            f"reduced: teachers of {args.teacher_steps} training steps (the cpu profile trains 1500); "
            "no distilled students in this grid (a student bakes in one w: a ladder per w and path)"
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
