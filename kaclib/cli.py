"""The command line: ``python -m kaclib <command> [options]``.

Commands
--------
``train``     train a (Kac or Gaussian-path) teacher into a run directory (resumable);
``sample``    draw images from a run: an image-grid PNG and an ``.npz`` of images and labels;
``evaluate``  FID-<dataset>, class accuracy, NFE, network passes and time per image of a run
              (one row per steps x method x w); prints a table and merges the rows into
              ``<run-dir>/evaluation.json``;
``distill``   the endpoint-only distillation ladder (:func:`kaclib.distill.run_ladder`).

Defaults come from a *profile* (``--profile smoke|cpu|gpu``, default: ``$KACLIB_PROFILE``, else
``gpu`` with CUDA, else ``cpu``; see :mod:`kaclib.profiles`).  ``sample``/``evaluate`` open any run
directory :func:`kaclib.train.load_run` opens; a distilled student (its ``config.json`` has a
``"distilled"`` section) defaults to its own step count, Euler and ``w = 1`` (guidance is baked in).

Bad input (an unknown preset or data set, a negative step count, ``w = nan``, a missing data
folder, a run directory holding another config, a damaged or foreign artifact, a run directory in
use by another process, training that turns non-finite...) exits with status 2 and ONE line on
stderr, ``kaclib: error: ...`` naming the file or field, and leaves any existing run directory as
it was.  Outputs are never written over inputs: ``--out`` refuses a path inside a run directory
(other than the default one) and an existing file that is not an output of the same kind.

Examples::

    python -m kaclib train --profile smoke --run-dir runs/smoke
    python -m kaclib evaluate --run-dir runs/smoke --steps 4,8 --method euler,ab2
    python -m kaclib sample --run-dir runs/smoke --n 40 --w 1.5
    python -m kaclib distill --teacher runs/teacher --run-dir runs/ladder --ladder 100,20,4,2,1 --set iters=300
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

from . import runs
from .runs import apply_overrides
from .tables import format_table

__all__ = ["main", "build_parser", "CLIError"]

PROG = "kaclib"
EXIT_ERROR = 2


class CLIError(Exception):
    """A user error: reported as one line on stderr, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block) and the same exit status as other errors."""

    def error(self, message):
        words = self.prog.split()
        sub = words[-1] if len(words) > 3 else None  # "python -m kaclib train" -> "train"
        raise CLIError(f"{sub}: {message}" if sub else message)


# =============================================================================== argument types


def _int_at_least(minimum: int, what: str, maximum: int | None = None):
    """An argparse type: an integer ``>= minimum`` (and ``<= maximum``; ``what`` names it in the error)."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = None
        if v is None or v < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        if maximum is not None and v > maximum:
            raise argparse.ArgumentTypeError(f"expected {what} <= {maximum}, got {text!r} (an absurd value)")
        return v

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_nonneg_int = _int_at_least(0, "an integer >= 0")
_MAX_STEPS, _MAX_BATCH, _MAX_IMAGES = 10**9, 16384, 100_000  # 100k CIFAR images: 1.2 GB
_steps_int = _int_at_least(1, "a positive integer", _MAX_STEPS)
_batch_int = _int_at_least(1, "a positive integer", _MAX_BATCH)
_images_int = _int_at_least(1, "a positive integer", _MAX_IMAGES)


def _finite_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return v


def _list_of(kind, name: str):
    def parse(text: str) -> list:
        items = [s.strip() for s in text.split(",") if s.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {name}, got {text!r}")
        return [kind(s) for s in items]

    return parse


def _method(text: str) -> str:
    from .solvers import SOLVERS

    if text not in SOLVERS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(SOLVERS)}, got {text!r}")
    return text


UNCOND = "none"


def _weight(text: str) -> float | str:
    """A finite weight, or ``"none"`` (unconditional sampling, converted to ``w=None`` later)."""
    if text.lower() in ("none", "uncond"):
        return UNCOND
    return _finite_float(text)


def _w_value(w):
    return None if w == UNCOND else w


# =============================================================================== parser


def _add_profile(p):
    p.add_argument(
        "--profile",
        choices=("smoke", "cpu", "gpu"),
        default=None,
        help="defaults for budgets, model and sampling (default: $KACLIB_PROFILE, else gpu with CUDA, else cpu)",
    )


def _add_device(p):
    p.add_argument(
        "--device",
        default="auto",
        help="torch device, e.g. cpu, cuda, cuda:1 (default auto: cuda if available)",
    )


def _add_progress(p):
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_data_root(p):
    p.add_argument(
        "--data-root",
        default=None,
        metavar="DIR",
        help="folder of the data files (default: $KACLIB_DATA_DIR, else ~/.cache/kaclib/data)",
    )


def _add_set(p, what: str):
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a {what} field; dotted keys reach nested dicts (model.head=bounded); "
        "values are parsed as JSON when possible (repeatable)",
    )


def _add_sampling(p, many: bool):
    lst = "comma-separated list; " if many else ""
    p.add_argument(
        "--steps",
        type=_list_of(_steps_int, "positive integers") if many else _steps_int,
        default=None,
        help=f"solver steps ({lst}default: the profile's teacher_steps; a distilled student: its own steps)",
    )
    p.add_argument(
        "--method",
        type=_list_of(_method, "solvers") if many else _method,
        default=None,
        help=f"solver: euler, midpoint or ab2 ({lst}default: ab2; a distilled student: euler)",
    )
    p.add_argument(
        "--w",
        type=_list_of(_weight, "weights") if many else _weight,
        default=None,
        help=f"guidance weight v_u + w (v_c - v_u): 0 unconditional, 1 conditional, >1 guided, 'none' "
        f"without labels ({lst}default: the profile's guidance_w; a distilled student: 1)",
    )
    p.add_argument(
        "--seed", type=_nonneg_int, default=0, help="sampling seed: image i uses seed (SEED, i) (default 0)"
    )
    p.add_argument(
        "--batch-size",
        type=_batch_int,
        default=500,
        help=f"images per solver batch (default 500, at most {_MAX_BATCH})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m kaclib",
        description="kaclib: Kac-flow teachers with velocity-space guidance and endpoint-only distillation "
        "(train, sample, evaluate, distill).",
        epilog="Run 'python -m kaclib <command> --help' for a command's options.",
    )
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="torch CPU threads (default: torch's choice; 1 is best on a shared machine)",
    )
    sub = parser.add_subparsers(
        dest="command", metavar="{train,sample,evaluate,distill}", parser_class=_Parser
    )

    p = sub.add_parser(
        "train",
        help="train a teacher into a run directory",
        description="Train a class-conditional velocity model (label dropout for guidance) on a "
        "Kac-flow or Gaussian path. Defaults: the profile's teacher (kaclib.evaluation.teacher_config).",
    )
    p.add_argument(
        "--run-dir",
        required=True,
        metavar="DIR",
        help="run directory (created; an existing run needs --resume)",
    )
    _add_profile(p)
    p.add_argument(
        "--preset",
        default=None,
        help="UNet preset (default: the profile's model_preset), e.g. smoke, digits-tiny",
    )
    p.add_argument(
        "--dataset",
        default=None,
        help="data set: digits, mnist5k, cifar10, celeba64 (default: the profile's)",
    )
    p.add_argument(
        "--path", choices=("kac", "gaussian"), default="kac", help="probability path (default kac)"
    )
    p.add_argument(
        "--steps", type=_steps_int, default=None, help="training steps (default: the profile's train_steps)"
    )
    p.add_argument(
        "--seed", type=_nonneg_int, default=None, help="training seed (default: the profile's first seed)"
    )
    _add_set(p, "TrainConfig")
    _add_device(p)
    p.add_argument("--resume", action="store_true", help="continue the run found in --run-dir (same config)")
    _add_data_root(p)
    _add_progress(p)

    p = sub.add_parser(
        "sample",
        help="write an image grid PNG and an .npz of samples",
        description="Draw images from a run (a teacher or a distilled student) and write "
        "OUT.png (a grid, one row per class cycle) and OUT.npz (images, labels, settings).",
    )
    p.add_argument("--run-dir", required=True, metavar="DIR", help="run directory to sample from")
    _add_profile(p)
    _add_sampling(p, many=False)
    p.add_argument(
        "--n", type=_images_int, default=100, help="number of images (default 100, balanced labels)"
    )
    p.add_argument(
        "--labels",
        default=None,
        metavar="LIST",
        help="comma-separated class labels, repeated to --n images (default: 0, 1, ..., K-1, 0, ...)",
    )
    p.add_argument(
        "--nrow",
        type=_positive_int,
        default=None,
        help="images per grid row (default: the class count, else 10)",
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="PREFIX",
        help="output prefix (default: DIR/samples/<method>-<steps>steps-w<w>-seed<seed>)",
    )
    _add_device(p)
    _add_progress(p)

    p = sub.add_parser(
        "evaluate",
        help="FID-<dataset>, accuracy, NFE and time per image of a run",
        description="Score a run: one row per combination of --steps, --method and --w. Prints a "
        "table and merges the rows into DIR/evaluation.json.",
    )
    p.add_argument("--run-dir", required=True, metavar="DIR", help="run directory to evaluate")
    _add_profile(p)
    _add_sampling(p, many=True)
    p.add_argument(
        "--n", type=_images_int, default=None, help="generated images per row (default: the profile's n_eval)"
    )
    p.add_argument("--dataset", default=None, help="data set of the metric (default: the run's)")
    p.add_argument(
        "--out",
        default=None,
        metavar="FILE",
        help="JSON file to merge the rows into (default DIR/evaluation.json)",
    )
    _add_device(p)
    _add_data_root(p)
    _add_progress(p)

    p = sub.add_parser(
        "distill",
        help="endpoint-only distillation ladder (kaclib.distill.run_ladder)",
        description="Distil a teacher run down a ladder of step counts; each stage's student "
        "becomes the next stage's teacher. Stage runs go to DIR/stage-<i>-<M>steps/.",
    )
    p.add_argument("--teacher", required=True, metavar="RUN", help="the teacher's run directory")
    p.add_argument(
        "--run-dir",
        required=True,
        metavar="DIR",
        help="ladder directory (created; an existing ladder needs --resume)",
    )
    p.add_argument(
        "--ladder",
        type=_list_of(_positive_int, "step counts"),
        default=None,
        help="comma-separated step counts, each divisible by the next (default: the profile's "
        "distill_ladder, e.g. 100,20,4,2,1)",
    )
    _add_profile(p)
    p.add_argument(
        "--dataset", default=None, help="data set of forward-noised states (default: the teacher's)"
    )
    p.add_argument("--seed", type=_nonneg_int, default=None, help="distillation seed (default 0)")
    _add_set(p, "DistillConfig")
    _add_device(p)
    p.add_argument("--resume", action="store_true", help="continue the ladder found in --run-dir")
    _add_data_root(p)
    _add_progress(p)
    return parser


# =============================================================================== helpers


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise CLIError(f"--device: not a torch device: {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {name}: CUDA is not available here")
    return str(dev)


def _profile(name: str | None):
    from .profiles import get_profile

    return get_profile(name)


def _read_run(run_dir: str) -> dict:
    p = runs.check_run_path(run_dir)
    if not p.is_dir():
        raise CLIError(f"--run-dir {run_dir}: no such directory")
    cfg = runs.read_config(p)
    if "model" not in cfg or "path" not in cfg:
        raise CLIError(
            f"{run_dir} is not a model run (its config.json lacks 'model' or 'path'); "
            "for a distillation ladder pass one of its stage-* directories"
        )
    return cfg


def _sampling_defaults(raw: dict, profile) -> dict:
    """steps / method / w defaults for a run: its own for a distilled student, the profile's else."""
    dist = raw.get("distilled")
    if isinstance(dist, dict):
        return {
            "steps": int(dist.get("steps", 1)),
            "method": dist.get("sampler", "euler"),
            "w": float(dist.get("sample_w", 1.0)),
            "student": True,
        }
    return {"steps": profile.teacher_steps, "method": "ab2", "w": profile.guidance_w, "student": False}


def _w_tag(w) -> str:
    return "none" if w is None else f"{w:g}"


def _same_path(a: Path, b: Path) -> bool:
    return os.path.abspath(a) == os.path.abspath(b)


def _refuse_inside_run(out: Path, allowed: Path | None = None) -> None:
    """``--out`` may not lie inside a run directory (its inputs), except under ``allowed``."""
    root = runs.find_run_root(out.parent)
    if root is None:
        return
    if allowed is not None and os.path.abspath(out).startswith(os.path.abspath(allowed) + os.sep):
        return
    raise CLIError(
        f"--out {out}: lies inside the run directory {root}: refusing to write over a run's files "
        "(leave --out out for the default, or write outside run directories)"
    )


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


def _check_sample_out(out: Path) -> None:
    """An existing ``OUT.npz`` must be a kaclib sample file, and an existing ``OUT.png`` needs one."""
    import numpy as np

    png, npz = out.with_name(out.name + ".png"), out.with_name(out.name + ".npz")
    ours = False
    if npz.exists():
        try:
            with np.load(npz, allow_pickle=False) as f:
                ours = {"images", "labels", "settings"} <= set(f.files)
        except Exception:  # not an npz at all
            ours = False
        if not ours:
            raise CLIError(
                f"--out {out}: {npz} exists and is not a kaclib sample file: refusing to overwrite it"
            )
    if png.exists() and not ours:
        raise CLIError(f"--out {out}: {png} exists without its kaclib .npz: refusing to overwrite it")


def _check_images(images, what: str) -> None:
    import torch

    if not bool(torch.isfinite(images).all()):
        raise CLIError(
            f"{what} gave non-finite images (NaN or inf): nothing was written "
            "(a guidance weight too large, or a damaged model?)"
        )


# =============================================================================== commands


def cmd_train(args) -> int:
    from .evaluation import teacher_config
    from .train import TrainConfig, train

    prof = _profile(args.profile)
    device = _device(args.device)
    cfg = teacher_config(prof, path=args.path, seed=args.seed)
    d = cfg.to_dict()
    if args.dataset is not None:
        d["dataset"] = args.dataset
    if args.preset is not None:
        d["model"] = {"preset": args.preset, "head": d["model"].get("head", "free")}
    if args.steps is not None:
        d["steps"] = args.steps
    d = apply_overrides(d, args.set)
    cfg = TrainConfig.from_dict(d).resolved()  # validates data set, preset, path, every field
    run_dir = runs.check_run_path(args.run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise CLIError(f"--run-dir {run_dir} exists and is not a directory")
    res = train(
        cfg,
        run_dir,
        device=device,
        resume=args.resume,
        progress=not args.no_progress,
        data_root=args.data_root,
    )
    losses = res.losses
    tail = float(losses[-min(len(losses), 50) :].mean()) if len(losses) else None
    print(
        format_table(
            ["run dir", "dataset", "path", "steps", "s/step", "loss (last 50)"],
            [[str(run_dir), cfg.dataset, cfg.path["kind"], res.step, res.seconds_per_step, tail]],
        )
    )
    return 0


def _labels_arg(text: str | None, n: int, num_classes: int):
    import torch

    from .evaluation import balanced_labels

    if num_classes == 0:
        if text is not None:
            raise CLIError("--labels: this model has no classes")
        return n
    if text is None:
        return balanced_labels(n, num_classes)
    try:
        base = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise CLIError(f"--labels: expected comma-separated integers, got {text!r}") from None
    if not base or min(base) < 0 or max(base) >= num_classes:
        raise CLIError(f"--labels: labels must lie in [0, {num_classes}), got {text!r}")
    return torch.tensor([base[i % len(base)] for i in range(n)], dtype=torch.long)


def save_grid(images, path: Path, nrow: int, cell: int = 32) -> None:
    """Save ``images`` ``(N, C, H, W)`` in ``[-1, 1]`` as a PNG grid (nearest upscaling to ``cell`` px)."""
    import numpy as np
    from PIL import Image

    x = ((images.clamp(-1, 1) + 1) * 127.5).round().to("cpu").numpy().astype(np.uint8)
    n, c, h, w = x.shape
    scale = max(1, cell // max(h, w))
    ncol = min(nrow, n)
    nrows = math.ceil(n / ncol)
    pad = 2
    H, W = h * scale, w * scale
    grid = np.full((nrows * (H + pad) + pad, ncol * (W + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, k = divmod(i, ncol)
        img = x[i].transpose(1, 2, 0).repeat(scale, 0).repeat(scale, 1)
        grid[pad + r * (H + pad) : pad + r * (H + pad) + H, pad + k * (W + pad) : pad + k * (W + pad) + W] = (
            img
        )
    img = Image.fromarray(grid[..., 0] if c == 1 else grid, mode="L" if c == 1 else "RGB")
    img.save(path)


def cmd_sample(args) -> int:
    import numpy as np

    from . import runs
    from .evaluation import generate, model_num_classes
    from .train import load_run

    prof = _profile(args.profile)
    device = _device(args.device)
    raw = _read_run(args.run_dir)
    dflt = _sampling_defaults(raw, prof)
    steps = args.steps or dflt["steps"]
    method = args.method or dflt["method"]
    w = _w_value(args.w) if args.w is not None else dflt["w"]
    run = load_run(args.run_dir, device=device)
    K = model_num_classes(run.model)
    labels = _labels_arg(args.labels, args.n, K)
    if K == 0:
        w = None
    samples = Path(args.run_dir) / "samples"
    out = Path(args.out) if args.out else samples / f"{method}-{steps}steps-w{_w_tag(w)}-seed{args.seed}"
    if args.out:
        _refuse_inside_run(out, allowed=samples)
    _check_sample_out(out)
    gen = generate(
        run.model,
        run.path,
        labels,
        steps,
        method=method,
        w=w,
        seed=args.seed,
        batch_size=args.batch_size,
        device=device,
        progress=not args.no_progress,
    )
    _check_images(gen.images, f"sampling {args.run_dir}")
    out.parent.mkdir(parents=True, exist_ok=True)
    png, npz = out.with_name(out.name + ".png"), out.with_name(out.name + ".npz")
    save_grid(gen.images, png, args.nrow or (K if K > 1 else 10))

    def write_npz(fh):
        np.savez_compressed(
            fh,
            images=gen.images.numpy(),
            labels=(gen.labels.numpy() if gen.labels is not None else np.zeros(0, np.int64)),
            settings=json.dumps(gen.summary()),
        )

    runs.atomic_write(npz, write_npz)
    s = gen.summary()
    print(
        format_table(
            ["images", "steps", "method", "w", "NFE", "passes", "s/image", "png", "npz"],
            [
                [
                    s["n"],
                    s["steps"],
                    s["method"],
                    _w_tag(s["w"]),
                    s["nfe"],
                    s["network_passes"],
                    s["seconds_per_image"],
                    str(png),
                    str(npz),
                ]
            ],
        )
    )
    return 0


def cmd_evaluate(args) -> int:
    from . import runs
    from .evaluation import Evaluator, generate, model_num_classes
    from .train import load_run

    prof = _profile(args.profile)
    device = _device(args.device)
    raw = _read_run(args.run_dir)
    dflt = _sampling_defaults(raw, prof)
    steps_list = args.steps or [dflt["steps"]]
    methods = args.method or [dflt["method"]]
    ws = [_w_value(w) for w in args.w] if args.w else [dflt["w"]]
    n = args.n or prof.n_eval
    if n < 2:
        raise CLIError("--n: FID needs at least 2 images")
    dataset = args.dataset or raw.get("dataset")
    if dataset is None:
        raise CLIError(f"{args.run_dir}: the run names no data set; pass --dataset")
    from .data import DATASETS

    if dataset not in DATASETS:
        raise CLIError(f"unknown dataset {dataset!r}; known: {sorted(DATASETS)}")
    m = raw["model"]
    shape = (m.get("in_channels"), m.get("image_size"), m.get("image_size"))
    if tuple(DATASETS[dataset].image_shape) != shape:
        raise CLIError(
            f"--dataset {dataset} has images of shape {DATASETS[dataset].image_shape}, "
            f"the model makes {shape}"
        )
    default_out = Path(args.run_dir) / "evaluation.json"
    out = Path(args.out) if args.out else default_out
    if not _same_path(out, default_out):
        _refuse_inside_run(out)
    _read_results(out)  # refuses a file that is not a results file, before any work
    run_tag = os.path.relpath(os.path.abspath(args.run_dir), os.path.abspath(out.parent))
    run = load_run(args.run_dir, device=device)
    evaluator = Evaluator(dataset, device=device, root=args.data_root)
    K = model_num_classes(run.model)
    # the floor: unseen real images at the same n and class balance (None above the held-out size)
    floor = evaluator.floor(n) if n <= evaluator.max_n else None
    rows = []
    for steps in steps_list:
        for method in methods:
            for w in ws:
                gen = generate(
                    run.model,
                    run.path,
                    n,
                    steps,
                    method=method,
                    w=(None if K == 0 else w),
                    seed=args.seed,
                    batch_size=args.batch_size,
                    device=device,
                    progress=not args.no_progress,
                )
                _check_images(gen.images, f"sampling {args.run_dir}")
                sc = evaluator.score(gen.images, gen.labels)
                rows.append(
                    {
                        "run": run_tag,
                        **sc.to_dict(),
                        "floor": floor and floor.fid,
                        "floor_kid": floor and floor.kid,
                        **gen.summary(),
                        "student": dflt["student"],
                        "checkpoint_step": run.step,
                        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                    }
                )
    print(
        format_table(
            [
                "steps",
                "method",
                "w",
                "NFE",
                "passes",
                evaluator.metric_name,
                "floor",
                "accuracy",
                "s/image",
                "n",
            ],
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
    old = _read_results(out)  # re-read: merge with what is there now
    # the merge key includes the run (its path relative to the results file), so a file shared by
    # several runs keeps every run's rows
    key = lambda r: (
        r.get("run"),
        r.get("metric_name"),
        r.get("steps"),
        r.get("method"),
        r.get("w"),
        r.get("n"),  # noqa: E731
        r.get("seed"),
    )
    new_keys = {key(r) for r in rows}
    merged = [r for r in old if key(r) not in new_keys] + rows
    out.parent.mkdir(parents=True, exist_ok=True)
    runs.atomic_write_json(out, {"kind": _RESULTS_KIND, "run_dir": str(Path(args.run_dir)), "rows": merged})
    print(f"wrote {out}")
    return 0


def ladder_gate(config, dataset: str, path, num_classes: int):
    """The quality gate of a distillation ladder, scored with :mod:`kaclib.evaluation`: the
    ``gate`` factory of :func:`kaclib.distill.run_ladder` (see :mod:`kaclib.distill.gate`); FID-
    ``dataset`` of the student against its teacher, configured by ``config.gate_*``."""
    from .distill.gate import fid_gate
    from .evaluation import Evaluator, generate

    return fid_gate(config, path, num_classes, generate=generate, score=Evaluator(dataset).score)


def cmd_distill(args) -> int:
    try:
        from .distill import DistillConfig, run_ladder
    except ImportError as e:
        raise CLIError(f"distillation is not available: kaclib.distill could not be imported ({e})") from None
    prof = _profile(args.profile)
    device = _device(args.device)
    teacher = runs.check_run_path(args.teacher)
    runs.check_run_path(args.run_dir)
    if not (teacher / "config.json").is_file():
        raise CLIError(f"--teacher {teacher}: not a run directory (no config.json)")
    try:
        from .distill import config_for_profile
    except ImportError:  # an older kaclib.distill: the profile's iterations and weight only
        base = DistillConfig(iters=prof.distill_iters, w=prof.guidance_w).to_dict()
    else:  # the profile's ladder, iterations, guidance weight and batch size
        base = config_for_profile(prof).to_dict()
    if args.ladder is not None:
        base["ladder"] = args.ladder
    if args.seed is not None:
        base["seed"] = args.seed
    if args.dataset is not None:
        base["dataset"] = args.dataset
    cfg = DistillConfig.from_dict(apply_overrides(base, args.set))
    res = run_ladder(
        teacher,
        args.run_dir,
        cfg,
        device=device,
        resume=args.resume,
        progress=not args.no_progress,
        gate=ladder_gate,  # used when the config sets gate (--set gate=true)
        **({"data_root": args.data_root} if args.data_root else {}),
    )
    rows = []
    for s in res.stages:
        rows.append(
            [
                s.spec.index,
                f"{s.spec.teacher_steps} -> {s.spec.student_steps}",
                s.spec.substeps,
                s.iters,
                s.seconds,
                str(s.run_dir),
            ]
        )
    print(format_table(["stage", "steps", "substeps", "iters", "seconds", "run dir"], rows))
    return 0


COMMANDS = {"train": cmd_train, "sample": cmd_sample, "evaluate": cmd_evaluate, "distill": cmd_distill}


def _one_line(e: BaseException) -> str:
    msg = str(e) or type(e).__name__
    if isinstance(e, KeyError):
        msg = f"missing key {msg}"
    parts = [p.strip() for p in msg.splitlines() if p.strip()]
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0, or 2 after a one-line error on stderr)."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            raise CLIError(
                "a command is required: train, sample, evaluate or distill (see python -m kaclib --help)"
            )
        if args.threads is not None:
            import torch

            torch.set_num_threads(args.threads)
        return COMMANDS[args.command](args)
    except CLIError as e:
        print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted (the last checkpoint is kept; --resume continues)", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001
        # Input problems surface as ValueError (RunDirError names the damaged file, NonFiniteError
        # the step), TypeError, KeyError or OSError (missing files, a run in use...); whatever else
        # a bad artifact raises deep inside a library is still one line, with its type.  The run
        # directory is left as the last checkpoint wrote it.  KACLIB_DEBUG=1 shows the traceback.
        if os.environ.get("KACLIB_DEBUG"):
            raise
        expected = isinstance(e, (ValueError, TypeError, KeyError, OSError))
        print(
            f"{PROG}: error: {_one_line(e) if expected else type(e).__name__ + ': ' + _one_line(e)}",
            file=sys.stderr,
        )
    return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
