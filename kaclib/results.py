"""The committed benchmark results (``benchmarks/results/*.json``), as the chapters show them.

A chapter's own build trains what fits its budget (one seed); the verdicts of the claims table come
from the committed multi-seed benchmarks.  :func:`load` reads one, :func:`provenance` says which
command, machine and commit produced it, :func:`show_comparisons` renders its paired comparisons
and :func:`find_comparison` picks one for :meth:`kaclib.claims.Claim.from_comparison`.
:func:`machine_info` describes the machine a result is computed on (every benchmark's ``"machine"``).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path

from .tables import COMPARISON_HEADER, comparison_rows

__all__ = [
    "RESULTS_DIR",
    "load",
    "provenance",
    "find_comparison",
    "verdict_text",
    "show_comparisons",
    "cpu_name",
    "machine_info",
]

RESULTS_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def load(name: str, require: str | None = "comparisons") -> dict | None:
    """The committed ``benchmarks/results/<name>.json``, or ``None``.

    ``None`` when it is absent or predates the key ``require`` (the held-out protocol's results all
    carry ``"comparisons"``).
    """
    path = RESULTS_DIR / f"{name}.json"
    if not path.is_file():
        return None
    res = json.loads(path.read_text())
    return res if require is None or require in res else None


def provenance(res: dict) -> str:
    """``"`command` on CPU, N cores, torch X, date (commit abc)"``."""
    m = res.get("machine", {})
    return (
        f"`{res.get('command', '?')}` on {m.get('cpu', '?')}, {m.get('cores', '?')} cores, torch "
        f"{m.get('torch', '?')}, {m.get('date', '?')} (commit {m.get('git_commit', '?')})"
    )


def find_comparison(res: dict | None, claim: str, metric: str = "fid") -> dict | None:
    """The comparison whose claim starts with ``claim`` and whose metric is ``metric``."""
    for c in (res or {}).get("comparisons", []):
        if c["claim"].startswith(claim) and c["metric"] == metric:
            return c
    return None


def verdict_text(res: dict | None, claim: str, metric: str = "fid") -> str:
    """``"holds (-0.12, CI [-0.20, -0.04])"`` for the comparison :func:`find_comparison` finds.

    ``"not measured"`` when ``res`` has no such comparison.
    """
    c = find_comparison(res, claim, metric)
    if c is None:
        return "not measured"
    lo, hi = c["ci95"]
    return f"{c['verdict']} ({c['diff_mean']:+.2f}, CI [{lo:+.2f}, {hi:+.2f}])"


def show_comparisons(res: dict, contains: str = "", metrics=("fid", "kid")) -> list[dict]:
    """Display the paired comparisons of ``res`` whose claim contains ``contains``; returns them.

    Only those whose metric is in ``metrics``, as an HTML table with the provenance as caption.
    """
    from .plots import show_table

    rows = [c for c in res.get("comparisons", []) if contains in c["claim"] and c["metric"] in metrics]
    show_table(COMPARISON_HEADER, comparison_rows(rows), caption=f"paired over seeds; {provenance(res)}")
    return rows


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else :func:`platform.processor` or the architecture."""
    try:
        with open("/proc/cpuinfo") as fh:
            name = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "")
    except OSError:
        name = ""
    return name or platform.processor() or platform.machine()


def _git_commit() -> str:
    """The short commit of the checkout this package lives in (``""`` outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def machine_info(device=None) -> dict:
    """The machine a result is computed on: CPU, cores, torch threads and versions, commit, date.

    With a CUDA ``device``, also its name, memory, CUDA version and compute capability.
    """
    import torch

    info = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "git_commit": _git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if device is not None:
        device = torch.device(device)
        info["device"] = str(device)
        if device.type == "cuda":
            p = torch.cuda.get_device_properties(device)
            info.update(
                gpu=p.name,
                gpu_memory_gib=round(p.total_memory / 2**30, 1),
                cuda_version=torch.version.cuda,
                capability=f"{p.major}.{p.minor}",
            )
    return info
