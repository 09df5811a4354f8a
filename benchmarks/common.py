"""Shared helpers of the benchmark scripts: machine description, tables, JSON results."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from kaclib.results import machine_info
from kaclib.tables import format_table, markdown_table  # noqa: F401  (re-exported for the scripts)

RESULTS = Path(__file__).resolve().parent / "results"


def write_results(name: str, payload: dict, command: str | None = None) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "command": command or "python " + " ".join(sys.argv),
        "machine": machine_info(),
        **payload,
    }
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    return out


def best_time(fn, repeats: int = 7, warmup: int = 1) -> float:
    """Minimum wall time of ``fn()`` over ``repeats`` runs (robust to a busy machine)."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def verdict_tally(comparisons: list, key) -> dict:
    """``{key(c): {"holds": k, "fails": k, "inconclusive": k}}`` over paired comparisons (dicts of
    :meth:`kaclib.stats.Comparison.to_dict`), grouped by ``key``."""
    out = {}
    for c in comparisons:
        d = out.setdefault(key(c), {"holds": 0, "fails": 0, "inconclusive": 0})
        d[c["verdict"]] += 1
    return out


@contextlib.contextmanager
def throwaway_cache(active: bool, prefix: str = "kaclib-smoke-"):
    """With ``active``, point ``KACLIB_CACHE_DIR`` at a new temporary folder for the block (so smoke
    runs never mix with real artifacts), then restore the variable and delete the folder.  Yields
    the folder (``None`` when not ``active``)."""
    if not active:
        yield None
        return
    saved = os.environ.get("KACLIB_CACHE_DIR")
    tmp = tempfile.mkdtemp(prefix=prefix)
    os.environ["KACLIB_CACHE_DIR"] = tmp
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if saved is None:
            os.environ.pop("KACLIB_CACHE_DIR", None)
        else:
            os.environ["KACLIB_CACHE_DIR"] = saved
