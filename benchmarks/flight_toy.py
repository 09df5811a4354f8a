"""Coordinate-wise Kac, the planar random flight and the Gaussian path on the 2D toy (issue 12, section 1).

The three paths train alike (:mod:`kaclib.flight_toy`: chapter 2's network, 3000 training steps,
batch 512, one seed per run, the flight matched to the Kac path's second moments), are sampled with
1, 2, 4, 8 Euler steps and 100 AB-2 steps from the same latent seed, and are compared over seeds
(:func:`kaclib.stats.compare`, verdicts from the 95% CI of the paired difference): the flight
against coordinate-wise Kac, and Kac against the Gaussian path, per metric and step count.

    python benchmarks/flight_toy.py                          # seeds 0 1 2, a few minutes, one thread
    python benchmarks/flight_toy.py --profile smoke --no-write
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import markdown_table, throwaway_cache, verdict_tally, write_results  # noqa: E402

from kaclib.flight_toy import PATHS, FlightToyConfig, held_out, run  # noqa: E402
from kaclib.stats import compare, fmt_ci  # noqa: E402

PAIRS = (("flight", "kac"), ("kac", "gaussian"))
LABELS = {"kac": "Kac (coordinate-wise)", "flight": "random flight", "gaussian": "Gaussian"}
DIRECTIONS = {"energy": "<", "near": ">", "rmse": "<", "straightness": ">"}
WORDS = {
    "energy": "lower energy distance",
    "near": "more samples near a mode",
    "rmse": "lower few-step error",
    "straightness": "straighter trajectories",
}


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="cpu", choices=["cpu", "smoke"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--train-steps", type=int, default=3000)
    ap.add_argument("--n-eval", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-write", action="store_true")
    return ap.parse_args(argv)


def metric_keys(cfg: FlightToyConfig) -> list:
    """Every compared metric: energy, near and RMSE at each Euler step count, the reference's energy
    and near, and the straightness."""
    keys = [f"{m}_{S}" for S in cfg.steps for m in ("energy", "near", "rmse")]
    return keys + ["energy_ref", "near_ref", "straightness"]


def collect(results: list, cfg: FlightToyConfig) -> dict:
    """``{path: {"path": config, "<metric>_values": [per seed], "modes_<S>_values": ...}}``."""
    rows = {}
    for name in PATHS:
        row = {"path": results[0].paths[name].path}
        for key in metric_keys(cfg) + [f"modes_{S}" for S in cfg.steps] + ["modes_ref"]:
            row[f"{key}_values"] = [r.metric(name, key) for r in results]
        row["train_seconds_values"] = [r.paths[name].train_seconds for r in results]
        row["final_loss_values"] = [r.paths[name].final_loss for r in results]
        rows[name] = row
    return rows


def comparisons(rows: dict, cfg: FlightToyConfig) -> list:
    """Paired comparisons (flight vs Kac, Kac vs Gaussian) for every metric of :func:`metric_keys`."""
    out = []
    for a, b in PAIRS:
        for key in metric_keys(cfg):
            m, _, which = key.rpartition("_") if key != "straightness" else (key, "", "ref")
            where = "the reference" if which == "ref" else f"{which} Euler step{'s' * (which != '1')}"
            c = compare(
                f"{LABELS[a]} has {WORDS[m]} than {LABELS[b]} ({where})",
                key,
                a,
                rows[a][f"{key}_values"],
                b,
                rows[b][f"{key}_values"],
                DIRECTIONS[m],
            )
            out.append({**c.to_dict(), "steps": which})
    return out


def tables(rows: dict, comps: list, cfg: FlightToyConfig) -> tuple[str, str]:
    """Markdown: per path and step count, means ± 95% CI; and the paired comparisons."""
    head = [
        "path",
        "steps",
        "energy distance",
        "near a mode",
        "modes (min)",
        "RMSE to reference",
        "straightness",
    ]
    body = []
    for name, r in rows.items():
        for which in [*cfg.steps, "ref"]:
            steps = which if which != "ref" else f"{cfg.reference_steps} AB-2"
            body.append([LABELS[name], steps, fmt_ci(r[f"energy_{which}_values"], 4),
                         fmt_ci(r[f"near_{which}_values"], 3), min(r[f"modes_{which}_values"]),
                         fmt_ci(r[f"rmse_{which}_values"], 4) if which != "ref" else "-",
                         fmt_ci(r["straightness_values"], 4) if which == "ref" else "-"])  # fmt: skip
    comp_md = markdown_table(
        ["claim", "metric", "a - b", "95% CI", "verdict"],
        [[c["claim"], c["metric"], f"{c['diff_mean']:+.3g}",
          f"[{c['ci95'][0]:+.3g}, {c['ci95'][1]:+.3g}]", c["verdict"]] for c in comps],
    )  # fmt: skip
    return markdown_table(head, body), comp_md


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    smoke = args.profile == "smoke"
    base = FlightToyConfig(train_steps=args.train_steps, n_eval=args.n_eval)
    if smoke:
        args.seeds = args.seeds[:2]
        base = replace(base, train_steps=60, n_eval=200, reference_steps=16, n_traj=20, traj_frames=5)
    with throwaway_cache(smoke, "kaclib-flight-toy-smoke-"):
        results = [run(replace(base, seed=s), progress=True) for s in args.seeds]
    rows = collect(results, base)
    comps = comparisons(rows, base)
    md, comp_md = tables(rows, comps, base)
    first = results[0]
    payload = {
        "profile": args.profile,
        "settings": {
            **base.to_dict(),
            "seed": None,
            "seeds": args.seeds,
            "latent_seed": "1000 + seed",
            "held_out_seed": "20000 + seed",
            "threads": args.threads,
        },  # fmt: skip
        "notes": (
            "Matched settings: Kac (a, c) = (9, 3) as in chapter 2; flight = RandomFlight.matching_kac(9, 3, 2), "
            "rate 18 and speed 3 sqrt(2): the same per-coordinate covariance at every time (the digits "
            "comparison's choice); Gaussian: rectified flow.  Same MLP, training steps, batch, lr, seed, "
            "data and EMA (kaclib.toy.train_toy).  RMSE: S-step Euler end points against the path's own "
            "100-step AB-2 end points from the same latents (consistency, not quality).  Straightness: of "
            "the 100-step AB-2 trajectories.  modes: centres hit (min over seeds), not compared.  Training "
            f"steps: {base.train_steps} (chapter 2's cpu profile), not reduced.  figure: seed "
            "0's reference trajectories (thinned) and fresh data, stored as compact JSON strings."
        ),
        "floor": {"energy_data_vs_data_values": [r.floor for r in results]},
        "rows": rows,
        "comparisons": comps,
        "tally": verdict_tally(comps, lambda c: f"{c['a']} vs {c['b']}"),
        "table_markdown": md,
        "comparisons_markdown": comp_md,
        "figure": figure(first, base),
        "seconds": time.time() - t0,
    }
    print(md)
    print(comp_md)
    print(payload["tally"], f"{payload['seconds']:.0f} s")
    if not (args.no_write or smoke):
        print(f"wrote {write_results('flight_toy', payload)}")
    return 0


def figure(first, cfg: FlightToyConfig, n_data: int = 300) -> dict:
    """The first seed's reference trajectories (thinned) and fresh data points for the chapter's figure,
    as compact JSON strings (``json.loads``) so that the indented results file stays small."""
    data = held_out(min(n_data, cfg.n_eval), first.config.seed, offset=40_000)
    trajs = {k: p.to_dict(with_trajectory=True) for k, p in first.paths.items()}
    return {
        "seed": first.config.seed,
        "times": trajs["kac"]["times"],
        "data_json": json.dumps(data.double().round(decimals=3).tolist(), separators=(",", ":")),
        "trajectories_json": json.dumps(
            {k: t["trajectory"] for k, t in trajs.items()}, separators=(",", ":")
        ),
    }


if __name__ == "__main__":
    raise SystemExit(main())
