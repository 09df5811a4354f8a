"""The paper-scale recipes as commands, checks and costs (chapter 6).

:func:`recipe_commands` turns a recipe of :mod:`kaclib.recipe` (``cifar10-paper``,
``celeba64-paper``) into the ``python -m kaclib`` commands that run it; :func:`check_command`
parses a command with the command line's own parser and builds the configuration the command
would run with the command line's own code (and, given the recipe, checks that the training
command reproduces the recipe's teacher exactly); :func:`bash_script` prints commands as a bash
block; :func:`planned_flops` is the FLOP count of each job of a recipe from the FLOPs of one
forward pass; :func:`find_evaluation_rows` collects results of such runs where the commands
write them; :func:`inception_row` scores a sample file with Inception FID and files the row.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

__all__ = [
    "TRAIN_STEP_FORWARDS",
    "bash_script",
    "check_command",
    "find_evaluation_rows",
    "inception_row",
    "ladder_flops",
    "planned_flops",
    "recipe_commands",
    "result_roots",
    "wrap_command",
]

_SOLVER_NAMES = {"euler": "Euler", "midpoint": "midpoint", "ab2": "AB-2"}

TRAIN_STEP_FORWARDS = 3
"""Forward-pass equivalents of one training step per image (the forward, a backward of twice its cost)."""


def _train_args(recipe, run_dir: str) -> str:
    t, p = recipe.teacher, recipe.path
    return (
        f"train --dataset {recipe.dataset} --preset {t.model_preset} --steps {t.train_steps} "
        f"--run-dir {run_dir} --set batch_size={t.batch_size} --set lr={t.lr:g} "
        f"--set ema_decay={t.ema_decay} --set path.a={p.a:g} --set path.c={p.c:g} --set path.g={p.g} "
        "--set checkpoint_every=10000"
    )


def _distill_args(recipe, teacher: str, run_dir: str, ladder, iters: int, extra: str = "") -> str:
    s, d = recipe.sampling, recipe.distill
    return (
        f"distill --teacher {teacher} --run-dir {run_dir} --ladder {','.join(map(str, ladder))} "
        f"--set w={s.w:g} --set teacher_solver={s.method} --set iters={iters} "
        f"--set batch_size={d.batch_size} --set checkpoint_every=1000{extra}"
    )


def recipe_commands(recipe, gpus: int = 8, root: str = "runs") -> dict[str, str]:
    """The ``python -m kaclib`` commands that run a recipe: ``{what: command}``.

    ``{what: command}``: train the recipe's teacher (one GPU, ``gpus`` GPUs, resume), distil its
    ladder, the single-stage ablation at the same student iterations (on a pool of teacher end
    points), samples of the teacher and the 1-step student, and (for a data set with classes)
    the quick feature-net check.
    """
    from .data import DATASETS

    ds, s, d = recipe.dataset, recipe.sampling, recipe.distill
    teacher, ladder = f"{root}/{ds}-teacher", f"{root}/{ds}-ladder"
    train = _train_args(recipe, teacher)
    stages = len(d.ladder) - 1
    steps = " -> ".join(map(str, d.ladder))
    pool = f" --set targets=pool --set pool_size={d.pool_size}"
    cmds = {
        "one GPU: train the teacher": f"python -m kaclib {train}",
        f"{gpus} GPUs: train the teacher (global batch split across ranks)": (
            f"torchrun --standalone --nproc_per_node={gpus} -m kaclib {train}"
        ),
        "resume after an interruption (same command + --resume)": f"python -m kaclib {train} --resume",
        f"distil: the ladder {steps} (one GPU)": (
            f"python -m kaclib {_distill_args(recipe, teacher, ladder, d.ladder, d.iters)}"
        ),
        f"ablation: one stage {d.ladder[0]} -> 1, the same student iterations, "
        "a pool of teacher end points": (
            "python -m kaclib "
            + _distill_args(
                recipe, teacher, f"{root}/{ds}-single-stage", (d.ladder[0], 1), d.iters * stages, pool
            )
        ),
        f"samples for Inception FID ({recipe.evaluation.n:,}, balanced labels)": (
            f"python -m kaclib sample --run-dir {teacher} --steps {s.steps} --method {s.method} "
            f"--w {s.w:g} --n {recipe.evaluation.n}"
        ),
        "samples of the 1-step student": (
            f"python -m kaclib sample --run-dir {ladder}/stage-{stages}-1steps --n {recipe.evaluation.n}"
        ),
    }
    if DATASETS[ds].num_classes > 1:  # the feature-net FID needs class labels to train its classifier
        cmds[f"quick check: FID-{ds}, solvers at {s.steps} steps"] = (
            f"python -m kaclib evaluate --run-dir {teacher} --steps {s.steps} "
            f"--method euler,midpoint,ab2 --w {s.w:g}"
        )
    return cmds


def check_command(cmd: str, recipe=None):
    """Check a command with the command line's own parser and configuration code.

    Parse ``cmd`` (a ``python -m kaclib`` or ``torchrun ... -m kaclib`` line) with the command
    line's own parser and build the configuration it would run with the command line's own code
    (:func:`kaclib.cli.train_config_from_args`, :func:`kaclib.cli.distill_config_from_args`);
    raises on any problem.  With ``recipe``, a ``train`` command must build the recipe's teacher
    exactly (checkpoint frequency aside).  Returns the parsed arguments.
    """
    from .cli import build_parser, distill_config_from_args, train_config_from_args
    from .cli.common import _profile

    argv = shlex.split(cmd)
    args = build_parser().parse_args(argv[argv.index("kaclib") + 1 :])
    if args.command == "train":
        cfg = train_config_from_args(args, _profile(args.profile))
        if recipe is not None and cfg.replace(checkpoint_every=1000) != recipe.teacher_config().resolved():
            raise ValueError(f"the command does not build the {recipe.name} teacher: {cmd}")
    elif args.command == "distill":
        distill_config_from_args(args, _profile(args.profile))
    return args


def wrap_command(cmd: str, width: int = 56) -> str:
    """A long command as bash lines continued with a backslash, broken before options."""
    lines, cur = [], ""
    for word in map(shlex.quote, shlex.split(cmd)):
        if word.startswith("--") and len(cur) > width:
            lines.append(cur)
            cur = "    " + word
        else:
            cur = f"{cur} {word}" if cur else word
    return " \\\n".join(lines + [cur])


def bash_script(cmds: dict[str, str], header: str = "") -> str:
    """Markdown of a bash block: ``header``, then each command under its ``# what`` comment."""
    body = "\n".join(f"# {what}\n{wrap_command(cmd)}\n" for what, cmd in cmds.items())
    return "```bash\n" + header + body + "```"


def ladder_flops(cfg, flops: float, guided_passes: int) -> float:
    """FLOPs of a distillation ladder (a :class:`~kaclib.distill.DistillConfig`).

    Per stage: the teacher's substeps (``guided_passes`` network passes per evaluation for the
    guided flow teacher, 1 for a distilled one) for every sample of every batch (online targets)
    or once per pool sample (pooled targets), plus :data:`TRAIN_STEP_FORWARDS` passes per student
    sample; ``flops`` is one forward pass of one image.
    """
    total = 0.0
    for spec in cfg.stages():
        teacher = spec.substeps * (guided_passes if spec.index == 1 else 1)
        samples = cfg.pool_size if cfg.targets == "pool" else spec.iters * cfg.batch_size
        total += flops * (teacher * samples + TRAIN_STEP_FORWARDS * spec.iters * cfg.batch_size)
    return total


def planned_flops(recipe, flops: float) -> dict[str, float]:
    """The FLOPs of each job of a recipe: ``{job: FLOPs}``.

    ``{job: FLOPs}`` of a recipe from ``flops``, one forward pass of one image: teacher training,
    the ladder (online targets), the single stage (pooled targets), and the evaluation samples of
    the teacher and of the 1-step student.
    """
    s, d, n = recipe.sampling, recipe.distill, recipe.evaluation.n
    guided = 1 if s.w in (None, 0.0, 1.0) else 2
    ladder = recipe.distill_config()
    single = ladder.replace(
        ladder=(d.ladder[0], 1), iters=d.iters * len(ladder.stages()), targets="pool", pool_size=d.pool_size
    )
    return {
        "teacher training": TRAIN_STEP_FORWARDS
        * flops
        * recipe.teacher.batch_size
        * recipe.teacher.train_steps,
        f"ladder ({len(ladder.stages())} stages, online targets)": ladder_flops(ladder, flops, guided),
        f"single stage {d.ladder[0]} -> 1 (pooled targets)": ladder_flops(single, flops, guided),
        f"{n // 1000}k samples, teacher {s.steps} {_SOLVER_NAMES[s.method]} steps": flops
        * n
        * s.steps
        * guided,
        f"{n // 1000}k samples, 1-step student": flops * n,
    }


def find_evaluation_rows(dataset: str, roots) -> list[dict]:
    """Evaluation rows of ``dataset`` found in the JSON files under ``roots``.

    Evaluation rows of ``dataset`` (metric ``FID-<dataset>`` or ``FID-Inception``) in every JSON
    file under ``roots`` (``config.json`` files and unreadable files skipped); each row gains a
    ``file`` key, its path relative to its root's parent.
    """
    found = []
    for root in map(Path, roots):
        for f in sorted(root.rglob("*.json")) if root.is_dir() else []:
            if f.name == "config.json":
                continue
            try:
                payload = json.loads(f.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError, OSError):
                continue
            rows = payload.get("rows") if isinstance(payload, dict) else None
            for r in rows if isinstance(rows, list) else []:
                if not isinstance(r, dict) or "fid" not in r:
                    continue
                metric = r.get("metric_name", "")
                if metric == f"FID-{dataset}" or (metric == "FID-Inception" and r.get("dataset") == dataset):
                    found.append(
                        {**r, "file": str(f.relative_to(root.parent) if root.parent in f.parents else f)}
                    )
    return found


def inception_row(run_dir, npz, dataset: str, data_root=None, weights_path=None, device="cuda") -> dict:
    """Score a sample file with Inception FID and file the row beside the run.

    Inception FID of a sample file (``python -m kaclib sample``'s ``.npz``) against the training
    set, appended as a row to ``run_dir/evaluation.json``; returns the row.
    """
    import numpy as np
    import torch

    from . import runs
    from .data import load_dataset
    from .metrics import inception_fid

    real = load_dataset(dataset, "train", root=data_root).images
    data = np.load(npz)
    fake = torch.from_numpy(data["images"])
    row = {
        **json.loads(str(data["settings"])),
        "metric_name": "FID-Inception",
        "dataset": dataset,
        "fid": inception_fid(real, fake, weights_path=weights_path, device=device),
        "n_ref": int(real.shape[0]),
    }
    out = Path(run_dir) / "evaluation.json"
    rows = json.loads(out.read_text())["rows"] if out.is_file() else []
    runs.atomic_write_json(out, {"run_dir": str(run_dir), "rows": rows + [row]})
    return row


def result_roots(repo_root=None) -> list[Path]:
    """Where results of paper-scale runs are looked for.

    ``runs/`` and ``benchmarks/results/`` of the repository (default: the one this ``kaclib``
    lies in), and ``$KACLIB_RESULTS`` when set.
    """
    repo_root = Path(repo_root) if repo_root is not None else Path(__file__).resolve().parents[1]
    roots = [repo_root / "runs", repo_root / "benchmarks" / "results"]
    if os.environ.get("KACLIB_RESULTS"):
        roots.append(Path(os.environ["KACLIB_RESULTS"]).expanduser())
    return roots
