"""The committed benchmark results (``benchmarks/results/*.json``), as the chapters show them.

A chapter's own build trains what fits its budget (one seed); the verdicts of the claims table come
from the committed multi-seed benchmarks.  :func:`load` reads one, :func:`provenance` says which
command, machine and commit produced it, :func:`show_comparisons` renders its paired comparisons
and :func:`find_comparison` picks one for :meth:`kaclib.claims.Claim.from_comparison`.
"""

from __future__ import annotations

import json
from pathlib import Path

from .tables import COMPARISON_HEADER, comparison_rows

__all__ = ["RESULTS_DIR", "load", "provenance", "find_comparison", "show_comparisons"]

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


def show_comparisons(res: dict, contains: str = "", metrics=("fid", "kid")) -> list[dict]:
    """Display the paired comparisons of ``res`` whose claim contains ``contains``; returns them.

    Only those whose metric is in ``metrics``, as an HTML table with the provenance as caption.
    """
    from .plots import show_table

    rows = [c for c in res.get("comparisons", []) if contains in c["claim"] and c["metric"] in metrics]
    show_table(COMPARISON_HEADER, comparison_rows(rows), caption=f"paired over seeds; {provenance(res)}")
    return rows
