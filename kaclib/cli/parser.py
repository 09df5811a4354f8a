"""The argument parser of ``python -m kaclib``.

Argument types, shared options, one sub-parser per command (:func:`build_parser`), and
:class:`CLIError`, the one-line user error.
"""

from __future__ import annotations

import argparse
import math

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
    from ..solvers import SOLVERS

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
        help="defaults for budgets, model and sampling "
        "(default: $KACLIB_PROFILE, else gpu with CUDA, else cpu)",
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
    """The parser of ``python -m kaclib``: ``--threads`` and the sub-parser of each command."""
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
    _add_train_command(sub)
    _add_sample_command(sub)
    _add_evaluate_command(sub)
    _add_distill_command(sub)
    return parser


def _add_train_command(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a teacher into a run directory",
        description="Train a class-conditional velocity model (label dropout for guidance) on a "
        "Kac-flow or Gaussian path. Defaults: the profile's teacher (kaclib.recipe.Recipe.teacher_config), "
        "or --config. Under torchrun every process joins the run (DDP); rank 0 reports.",
    )
    p.add_argument(
        "--run-dir",
        required=True,
        metavar="DIR",
        help="run directory (created; an existing run needs --resume)",
    )
    _add_profile(p)
    p.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="a TrainConfig JSON (e.g. a run's config.json) instead of the profile's teacher; "
        "the options below still apply",
    )
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
        "--path",
        choices=("kac", "gaussian"),
        default=None,
        help="probability path (default kac; not with --config)",
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


def _add_sample_command(sub) -> None:
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


def _add_evaluate_command(sub) -> None:
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


def _add_distill_command(sub) -> None:
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
