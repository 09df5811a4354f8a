"""``python -m kaclib train``: train a teacher into a run directory (resumable)."""

from __future__ import annotations

import os

from .. import runs
from ..runs import apply_overrides
from ..tables import format_table
from .common import _device, _profile
from .parser import CLIError


def train_config_from_args(args, prof):
    """The resolved :class:`~kaclib.train.TrainConfig` a ``train`` command runs.

    It is the recipe's teacher on ``--path`` (:meth:`kaclib.recipe.Recipe.teacher_config`), or the
    ``--config`` JSON file, with ``--dataset``, ``--preset``, ``--steps`` and ``--set`` applied
    (validated: data set, preset, path, every field).
    """
    from ..train import TrainConfig

    if args.config is not None:
        if args.path is not None:
            raise CLIError(f'--path cannot change the path of --config {args.config}: edit its "path" field')
        d = _read_config(args.config)
        if args.seed is not None:
            d["seed"] = args.seed
    else:
        d = prof.teacher_config(path=args.path or "kac", seed=args.seed).to_dict()
    if args.dataset is not None:
        d["dataset"] = args.dataset
    if args.preset is not None:
        d["model"] = {"preset": args.preset, "head": d["model"].get("head", "free")}
    if args.steps is not None:
        d["steps"] = args.steps
    return TrainConfig.from_dict(apply_overrides(d, args.set)).resolved()


def _read_config(file) -> dict:
    """The dict of the TrainConfig JSON ``file``; a one-line :class:`CLIError` naming the flag."""
    try:
        return runs.read_json_object(file)
    except (OSError, runs.RunDirError) as e:
        raise CLIError(f"--config {file}: cannot read a TrainConfig JSON ({e})") from None


def cmd_train(args) -> int:
    """Run ``train``: train a teacher into ``--run-dir``; rank 0 prints a summary table; returns 0.

    Under ``torchrun`` every process runs this command and joins the process group
    (:func:`kaclib.train.init_distributed`); only rank 0 reports.
    """
    from ..train import train

    prof = _profile(args.profile)
    device = _device(args.device)
    cfg = train_config_from_args(args, prof)
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
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    losses = res.losses
    tail = float(losses[-min(len(losses), 50) :].mean()) if len(losses) else None
    print(
        format_table(
            ["run dir", "dataset", "path", "steps", "s/step", "loss (last 50)"],
            [[str(run_dir), cfg.dataset, cfg.path.kind, res.step, res.seconds_per_step, tail]],
        )
    )
    return 0
