"""Does the quality metric work?  Controls with a known ordering, scored on the held-out protocol.

    python benchmarks/metric_sanity.py [--datasets digits,mnist5k] [--seeds 5] [--threads 1]

For each data set: unseen real images (the floor), a perfect memoriser (training images) and known
degradations of the real images (pixel noise, blur, a dropped class, mode collapse) at increasing
strength, each over ``--seeds`` independent subsets, at the largest class-balanced ``n`` of the
``test`` split (see :mod:`kaclib.metric_checks`).  Writes ``benchmarks/results/metric_sanity.json``
with per-seed values, means with 95% CIs, the paired comparisons and the monotonicity checks.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from common import write_results  # noqa: E402

from kaclib.evaluation import Evaluator  # noqa: E402
from kaclib.metric_checks import sanity_check  # noqa: E402
from kaclib.metrics import feature_training_source  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", default="digits,mnist5k")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    out = {}
    for name in [s for s in args.datasets.split(",") if s]:
        ev = Evaluator(name)
        n = ev.max_n // 10 * 10
        res = sanity_check(ev, n, seeds=tuple(range(args.seeds))).to_dict()
        res["protocol"] = {
            "feature_net": feature_training_source(name),
            "feature_net_test_accuracy": ev.feature_accuracy,
            "reference": f"{name} 'ref' split, {ev.n_ref} images",
            "unseen_real": f"{name} 'test' split, class-balanced subsets of n = {n}",
            "memoriser": f"class-balanced subsets of the {name} 'train' split",
        }
        out[name] = res
        print(f"{name}: n = {n}, monotone: {res['monotone']}")
        for c in res["comparisons"]:
            print(
                f"  {c['verdict']:12s} {c['claim']}: {c['diff_mean']:+.4f} [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}]"
            )
    path = write_results("metric_sanity", {"datasets": out, "seconds": time.time() - t0})
    print(f"wrote {path} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
