"""Kac core benchmark: our exact table-free sampler and closed-form velocity against the official
Kac-flow code's method (an inverse-CDF table over a grid of times with bilinear interpolation,
velocity in float64), implemented here from its description and run in the same process.

    python benchmarks/kac_core.py            # full run (about 2 minutes on 2 cores)
    python benchmarks/kac_core.py --quick    # small sizes, for a smoke check

Writes benchmarks/results/kac_core.json.
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from common import best_time, format_table, markdown_table, write_results  # noqa: E402
from test_kac import ks_bound_99, ks_distance  # noqa: E402

from kaclib.kac import KacProcess  # noqa: E402


class TableSampler:
    """The official method: ``M`` times on ``[0, s_max]`` x ``Q`` quantile levels of the exact law
    (atoms included), built from the density by a cumulative trapezoid rule on a fine grid, and
    sampled by bilinear interpolation in (time, quantile level)."""

    def __init__(self, proc: KacProcess, s_max: float = 1.0, M: int = 10_000, Q: int = 4096, grid: int = 4096,
                 chunk: int = 500):
        self.proc, self.s_max, self.M, self.Q = proc, s_max, M, Q
        times = torch.linspace(0.0, s_max, M, dtype=torch.float64)
        levels = torch.linspace(0.0, 1.0, Q, dtype=torch.float64)
        table = torch.empty(M, Q, dtype=torch.float32)
        u = torch.linspace(-1.0, 1.0, grid, dtype=torch.float64)  # x / (c s)
        for lo in range(0, M, chunk):
            s = times[lo : lo + chunk, None]
            x = u[None, :] * proc.c * s
            dens = proc.density(x, s.expand_as(x))
            dx = (x[:, 1:] - x[:, :-1])
            cum = torch.cat([torch.zeros_like(s), torch.cumsum(0.5 * (dens[:, 1:] + dens[:, :-1]) * dx, 1)], 1)
            atom = 0.5 * torch.exp(-proc.a * s)
            cdf = atom + cum  # on [-cs, cs); the right atom is the jump to 1 at x = cs
            cdf = cdf / (cdf[:, -1:] + atom)  # normalise the quadrature's small mass error
            # inverse CDF at the quantile levels: linear interpolation between grid points
            q = levels[None, :].expand(s.shape[0], Q).contiguous()
            j = torch.searchsorted(cdf.contiguous(), q).clamp(1, grid - 1)
            c0, c1 = cdf.gather(1, j - 1), cdf.gather(1, j)
            x0, x1 = x.gather(1, j - 1), x.gather(1, j)
            w = ((q - c0) / (c1 - c0).clamp(min=1e-300)).clamp(0, 1)
            inv = x0 + w * (x1 - x0)
            inv = torch.where(q <= atom, -proc.c * s, inv)
            inv = torch.where(q >= 1 - atom, proc.c * s, inv)
            inv = torch.minimum(torch.maximum(inv, -proc.c * s), proc.c * s)
            table[lo : lo + chunk] = inv.float()
        self.table = table.reshape(-1)

    @property
    def nbytes(self) -> int:
        return self.table.numel() * self.table.element_size()

    def sample(self, s: torch.Tensor, generator=None) -> torch.Tensor:
        flat = s.reshape(-1).float()
        u = torch.rand(flat.shape, generator=generator)
        fi = (flat / self.s_max) * (self.M - 1)
        i0 = fi.long().clamp(0, self.M - 2)
        wi = fi - i0
        fj = u * (self.Q - 1)
        j0 = fj.long().clamp(0, self.Q - 2)
        wj = fj - j0
        base = i0 * self.Q + j0
        t = self.table
        lo = (1 - wj) * t[base] + wj * t[base + 1]
        hi = (1 - wj) * t[base + self.Q] + wj * t[base + self.Q + 1]
        x = (1 - wi) * lo + wi * hi
        # keep float32 interpolation inside the fronts (it can round just outside them)
        front = self.proc.c * flat
        return torch.minimum(torch.maximum(x, -front), front).reshape(s.shape)

    def velocity(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """The official code evaluates the closed-form velocity in float64."""
        return self.proc.velocity(x.double(), s.double()).float()


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small table and sample sizes")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    a, c = 9.0, 3.0
    proc = KacProcess(a, c)
    M = 1000 if args.quick else 10_000
    n_ks = 20_000 if args.quick else 100_000
    repeats = 3 if args.quick else 9

    # ---- set-up: ours has none; the table is built once per (a, c)
    rss0 = max_rss_mb()
    t0 = time.perf_counter()
    table = TableSampler(proc, M=M)
    build_s = time.perf_counter() - t0
    setup = {
        "ours": {"build_seconds": 0.0, "bytes": 0, "note": "no set-up: exact Poisson/Gamma/Beta construction"},
        "table": {"build_seconds": build_s, "bytes": table.nbytes, "M": M, "Q": table.Q,
                  "peak_rss_increase_mb": max_rss_mb() - rss0},
    }

    # ---- throughput at the two training shapes, t ~ U[0, 1] per image
    gen = torch.Generator().manual_seed(0)
    shapes = {"cifar10 128x3x32x32": (128, 3, 32, 32), "digits 256x1x8x8": (256, 1, 8, 8)}
    speed = {}
    for label, shape in shapes.items():
        t = torch.rand(shape[0], generator=gen).view(-1, 1, 1, 1).expand(shape).contiguous()
        n = t.numel()
        x = proc.sample(t, generator=gen)
        row = {}
        row["ours_sample"] = n / best_time(lambda: proc.sample(t, generator=gen), repeats)
        row["table_sample"] = n / best_time(lambda: table.sample(t, generator=gen), repeats)
        row["ours_velocity"] = n / best_time(lambda: proc.velocity(x, t), repeats)
        row["table_velocity"] = n / best_time(lambda: table.velocity(x, t), repeats)
        row["sample_speedup"] = row["ours_sample"] / row["table_sample"]
        row["velocity_speedup"] = row["ours_velocity"] / row["table_velocity"]
        speed[label] = row

    # ---- accuracy: KS distance to the exact CDF at the test times
    ks = {}
    for s in [2.0**-10, 2.0**-6, 2.0**-3, 1.0]:
        st = torch.full((n_ks,), s)
        ref = lambda v: proc.cdf(v, torch.tensor(s, dtype=torch.float64))  # noqa: E731
        ks[f"{s:g}"] = {
            "ours": ks_distance(proc.sample(st, generator=gen), ref),
            "table": ks_distance(table.sample(st, generator=gen), ref),
            "bound_99": ks_bound_99(n_ks),
        }

    targets = {
        "sample_speedup_ge_2": all(r["sample_speedup"] >= 2 for r in speed.values()),
        "velocity_speedup_ge_2": all(r["velocity_speedup"] >= 2 for r in speed.values()),
        "ks_not_worse": all(v["ours"] <= max(v["table"], v["bound_99"]) for v in ks.values()),
        "setup_under_1s_64mb": setup["ours"]["build_seconds"] <= 1 and setup["ours"]["bytes"] <= 64 * 2**20,
    }

    print(f"Kac process (a, c) = ({a:g}, {c:g}); {torch.get_num_threads()} threads; values per second (best of {repeats})")
    print(format_table(
        ["shape", "sample ours", "sample table", "x", "velocity ours", "velocity table (f64)", "x"],
        [[k, r["ours_sample"], r["table_sample"], r["sample_speedup"], r["ours_velocity"], r["table_velocity"],
          r["velocity_speedup"]] for k, r in speed.items()]))
    print()
    print(format_table(["s", "KS ours", "KS table", "99% bound"],
                       [[k, v["ours"], v["table"], v["bound_99"]] for k, v in ks.items()]))
    print()
    print(f"set-up: ours none; table {M} x {table.Q} built in {build_s:.1f} s, {table.nbytes / 2**20:.0f} MB")
    print("targets:", targets)
    summary = "\n\n".join([
        f"Kac process `(a, c) = ({a:g}, {c:g})`, values per second (best of {repeats}), {torch.get_num_threads()} thread(s):",
        markdown_table(["shape", "sample: ours", "sample: table", "speed-up", "velocity: ours", "velocity: table (float64)", "speed-up"],
                       [[k, r["ours_sample"], r["table_sample"], round(r["sample_speedup"], 2), r["ours_velocity"],
                         r["table_velocity"], round(r["velocity_speedup"], 2)] for k, r in speed.items()]),
        f"Kolmogorov-Smirnov distance to the exact CDF ({n_ks:,} draws):",
        markdown_table(["s", "ours", "table", "99% bound"], [[k, v["ours"], v["table"], v["bound_99"]] for k, v in ks.items()]),
        f"Set-up: ours none; the table ({M:,} times x {table.Q} quantiles) took {build_s:.1f} s and "
        f"{table.nbytes / 2**20:.0f} MB. Targets: " + ", ".join(f"{k}: {'met' if v else 'missed'}" for k, v in targets.items()) + ".",
    ])
    payload = {"a": a, "c": c, "quick": args.quick, "summary_markdown": summary, "throughput_values_per_s": speed, "ks": ks, "setup": setup,
               "targets": targets}
    if not args.no_write and not args.quick:
        print("wrote", write_results("kac_core", payload))
    return payload


if __name__ == "__main__":
    main()
