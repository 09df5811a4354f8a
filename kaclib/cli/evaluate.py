"""``python -m kaclib evaluate``: score a run's samples.

FID-<dataset>, class accuracy, NFE, network passes and time per image of a run, one row per
steps x method x w, merged into ``<run-dir>/evaluation.json``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .. import runs
from ..tables import format_table
from .common import (
    _check_images,
    _device,
    _profile,
    _read_run,
    _refuse_inside_run,
    _same_path,
    _w_tag,
)
from .parser import CLIError, _w_value

_RESULTS_KIND = "kaclib-evaluation"


def _read_results(out: Path) -> list:
    """Rows of an existing results file; anything else at ``out`` is refused (never overwritten)."""
    if not out.exists():
        return []
    refuse = f"--out {out}: exists and is not a kaclib evaluation results file: refusing to overwrite it"
    if not out.is_file():
        raise CLIError(refuse)
    try:
        obj = json.loads(out.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CLIError(refuse) from None
    if (
        not isinstance(obj, dict)
        or not isinstance(obj.get("rows"), list)
        or obj.get("kind", _RESULTS_KIND) != _RESULTS_KIND
        or not all(isinstance(r, dict) for r in obj["rows"])
    ):
        raise CLIError(refuse)
    legacy = obj.get("run_dir")  # rows written before rows named their run
    rows = []
    for r in obj["rows"]:
        if "run" not in r and isinstance(legacy, str):
            r = {**r, "run": os.path.relpath(os.path.abspath(legacy), os.path.abspath(out.parent))}
        rows.append(r)
    return rows


def cmd_evaluate(args) -> int:
    """Run ``evaluate``: score a run, print the rows and merge them into the results file; returns 0."""
    from ..evaluation import Evaluator, evaluate_grid
    from ..train import load_run, run_sampling_defaults

    prof = _profile(args.profile)
    device = _device(args.device)
    raw = _read_run(args.run_dir)
    dflt = run_sampling_defaults(raw, prof)
    ws = [_w_value(w) for w in args.w] if args.w else [dflt.w]
    n = args.n or prof.evaluation.n
    if n < 2:
        raise CLIError("--n: FID needs at least 2 images")
    dataset = _evaluation_dataset(args, raw)
    out = _results_path(args)
    run_tag = os.path.relpath(os.path.abspath(args.run_dir), os.path.abspath(out.parent))
    run = load_run(args.run_dir, device=device, recipe=prof)
    evaluator = Evaluator(dataset, device=device, root=args.data_root)
    # the floor: unseen real images at the same n and class balance (None above the held-out size)
    floor = evaluator.floor(n) if n <= evaluator.max_n else None
    rows = evaluate_grid(
        run,
        steps=args.steps or [dflt.steps],
        methods=args.method or [dflt.method],
        ws=ws,
        seeds=[args.seed],
        n=n,
        evaluator=evaluator,
        batch_size=args.batch_size,
        device=device,
        progress=not args.no_progress,
        check=lambda gen: _check_images(gen.images, f"sampling {args.run_dir}"),
    )
    stamp = {
        "student": run.is_student,
        "checkpoint_step": run.step,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    floors = {"floor": floor and floor.fid, "floor_kid": floor and floor.kid}
    rows = [{"run": run_tag, **r, **floors, **stamp} for r in rows]
    _print_rows(rows, evaluator.metric_name)
    _merge_results(out, rows, args.run_dir)
    print(f"wrote {out}")
    return 0


def _evaluation_dataset(args, raw: dict) -> str:
    """The data set of the metric: ``--dataset`` or the run's, known and of the model's image shape."""
    from ..data import DATASETS

    dataset = args.dataset or raw.get("dataset")
    if dataset is None:
        raise CLIError(f"{args.run_dir}: the run names no data set; pass --dataset")
    if dataset not in DATASETS:
        raise CLIError(f"unknown dataset {dataset!r}; known: {sorted(DATASETS)}")
    m = raw["model"]
    shape = (m.get("in_channels"), m.get("image_size"), m.get("image_size"))
    if tuple(DATASETS[dataset].image_shape) != shape:
        raise CLIError(
            f"--dataset {dataset} has images of shape {DATASETS[dataset].image_shape}, "
            f"the model makes {shape}"
        )
    return dataset


def _results_path(args) -> Path:
    """``--out`` (default ``DIR/evaluation.json``), checked before any work.

    It is refused when it lies inside a run directory (other than the default) or holds something
    other than a results file.
    """
    default_out = Path(args.run_dir) / "evaluation.json"
    out = Path(args.out) if args.out else default_out
    if not _same_path(out, default_out):
        _refuse_inside_run(out)
    _read_results(out)  # refuses a file that is not a results file, before any work
    return out


def _print_rows(rows: list[dict], metric_name: str) -> None:
    print(
        format_table(
            ["steps", "method", "w", "NFE", "passes", metric_name, "floor", "accuracy", "s/image", "n"],
            [
                [
                    r["steps"],
                    r["method"],
                    _w_tag(r["w"]),
                    r["nfe"],
                    r["network_passes"],
                    r["fid"],
                    r["floor"],
                    r["accuracy"],
                    r["seconds_per_image"],
                    r["n"],
                ]
                for r in rows
            ],
        )
    )


def _merge_key(r: dict) -> tuple:
    """The identity of a results row.

    It includes the run (its path relative to the results file), so a file shared by several runs
    keeps every run's rows.
    """
    return (
        r.get("run"),
        r.get("metric_name"),
        r.get("steps"),
        r.get("method"),
        r.get("w"),
        r.get("n"),
        r.get("seed"),
    )


def _merge_results(out: Path, rows: list[dict], run_dir: str) -> None:
    """Replace the rows of ``out`` with the same key by ``rows``, keep the others; written atomically."""
    old = _read_results(out)  # re-read: merge with what is there now
    new_keys = {_merge_key(r) for r in rows}
    merged = [r for r in old if _merge_key(r) not in new_keys] + rows
    out.parent.mkdir(parents=True, exist_ok=True)
    runs.atomic_write_json(out, {"kind": _RESULTS_KIND, "run_dir": str(Path(run_dir)), "rows": merged})
