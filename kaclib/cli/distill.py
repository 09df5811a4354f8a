"""``python -m kaclib distill``: the endpoint-only distillation ladder, and its quality gate."""

from __future__ import annotations

from .. import runs
from ..runs import apply_overrides
from ..tables import format_table
from .common import _device, _profile
from .parser import CLIError


def ladder_gate(config, dataset: str, path, num_classes: int):
    """The quality gate of a distillation ladder, scored with :mod:`kaclib.evaluation`.

    It is the ``gate`` factory of :func:`kaclib.distill.run_ladder` (see
    :mod:`kaclib.distill.gate`); FID-``dataset`` of the student against its teacher, configured by
    ``config.gate_*``.
    """
    from ..distill.gate import fid_gate
    from ..evaluation import Evaluator, generate

    return fid_gate(config, path, num_classes, generate=generate, score=Evaluator(dataset).score)


def distill_config_from_args(args, prof):
    """The :class:`~kaclib.distill.DistillConfig` a ``distill`` command runs.

    It is the recipe's (:meth:`kaclib.recipe.Recipe.distill_config`) with ``--ladder``, ``--seed``,
    ``--dataset`` and ``--set`` applied (validated).
    """
    from ..distill import DistillConfig

    base = prof.distill_config().to_dict()  # the recipe's ladder, iterations, guidance weight, batch
    if args.ladder is not None:
        base["ladder"] = args.ladder
    if args.seed is not None:
        base["seed"] = args.seed
    if args.dataset is not None:
        base["dataset"] = args.dataset
    return DistillConfig.from_dict(apply_overrides(base, args.set))


def cmd_distill(args) -> int:
    """Run ``distill``: distil a ladder from the ``--teacher`` run, print its stages; returns 0."""
    try:
        from ..distill import run_ladder
    except ImportError as e:
        raise CLIError(f"distillation is not available: kaclib.distill could not be imported ({e})") from None

    prof = _profile(args.profile)
    device = _device(args.device)
    teacher = runs.check_run_path(args.teacher)
    runs.check_run_path(args.run_dir)
    if not (teacher / "config.json").is_file():
        raise CLIError(f"--teacher {teacher}: not a run directory (no config.json)")
    cfg = distill_config_from_args(args, prof)
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
