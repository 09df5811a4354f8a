"""``python -m kaclib train``: train a teacher into a run directory (resumable)."""

from __future__ import annotations

from .. import runs
from ..runs import apply_overrides
from ..tables import format_table
from .common import _device, _profile
from .parser import CLIError


def cmd_train(args) -> int:
    from ..evaluation import teacher_config
    from ..train import TrainConfig, train

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
