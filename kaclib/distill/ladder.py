"""The distillation ladder: stages chained so that each student becomes the next teacher.

:func:`run_ladder` distils a teacher run down ``config.ladder`` (the stages of
:func:`kaclib.distill.config.ladder_schedule`); at every boundary
:func:`kaclib.distill.teacher.hand_off` turns the finished student (its EMA weights) into the next
frozen teacher plus a fresh student copy with a fresh optimizer and a fresh EMA.

:func:`run_ladder` writes ``run_dir/config.json`` and, per stage,
``run_dir/stage-<i>-<M>steps/`` with ``config.json`` (``"model"`` and ``"path"`` so that
:func:`kaclib.train.load_run` opens it, plus a ``"distilled"`` section: ``steps``, ``sampler``
(``"euler"``), ``w`` (the guidance weight BAKED IN; sample with ``sample_w = 1``), ``teacher``),
``model.safetensors``, ``ema.safetensors`` (the student), ``state.pt``, ``metrics.jsonl`` and
``result.json`` once the stage is finished.  Every random draw of iteration ``j`` of stage ``i``
comes from generators seeded with ``step_seed(seed, i, j, stream)``; together with the checkpointed
optimizer, EMA and roll-out population an interrupted ladder resumes bit for bit (on CPU).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .. import runs
from .config import MUTABLE_FIELDS, DistillConfig, StageSpec, stage_dir_name
from .gate import GateFactory
from .stage import RESULT_FILE, load_finished_stage, train_stage, write_stage_result
from .teacher import TeacherField, hand_off


@dataclass
class LadderResult:
    """The outcome of a distillation ladder.

    ``stages``: one :class:`StageResult` per stage (stages finished before a resume are loaded,
    with empty ``losses``); ``student``: the last stage's EMA student; ``path``; ``config``;
    ``teacher``: the flow teacher's :class:`kaclib.train.LoadedRun`; ``seconds``: wall time.
    """

    run_dir: Path
    config: DistillConfig
    stages: list
    student: nn.Module
    path: object
    teacher: object
    seconds: float

    def stage_dirs(self) -> list[Path]:
        """The run folder of each stage, in ladder order."""
        return [s.run_dir for s in self.stages]


def _relative(path: Path, ladder_dir: Path) -> str:
    """``path`` relative to the ladder directory.

    Configs hold no absolute paths: a ladder moved or copied together with its teacher resumes.
    """
    return os.path.relpath(os.path.abspath(path), os.path.abspath(ladder_dir))


def _teacher_info(loaded, teacher_run_dir: Path, ladder_dir: Path) -> dict:
    raw = runs.read_config(teacher_run_dir)
    distilled = raw.get("distilled")
    ema = runs.read_checkpoint(teacher_run_dir, names=(runs.EMA_FILE,)).manifest["files"][runs.EMA_FILE]
    return {
        "run_dir": _relative(teacher_run_dir, ladder_dir),
        "ema_sha256": ema["sha256"],  # the teacher's identity (its location may change)
        "model": raw["model"],
        "path": raw["path"],
        "dataset": raw.get("dataset"),
        "step": loaded.step,
        "distilled": distilled,
    }


def _stage_config(
    config: DistillConfig, spec: StageSpec, tinfo: dict, dataset: str, teacher_dir: str
) -> dict:
    return {
        "model": tinfo["model"],
        "path": tinfo["path"],
        "dataset": dataset,
        "distilled": {
            "steps": spec.student_steps,
            "sampler": "euler",
            "w": config.w,
            "guidance_baked_in": True,
            "sample_w": 1.0,
            "teacher": teacher_dir,
            "teacher_steps": spec.teacher_steps,
            "substeps": spec.substeps,
            "stage": spec.index,
            "ladder": list(config.ladder),
            "flow_teacher": tinfo["run_dir"],
        },
        "stage": spec.to_dict(),
        "distill": config.to_dict(),
    }


def run_ladder(
    teacher_run_dir: str | os.PathLike,
    run_dir: str | os.PathLike,
    config: DistillConfig | None = None,
    device="cpu",
    resume: bool = False,
    progress: bool = True,
    callback: Callable[[int, dict], None] | None = None,
    data_root: str | os.PathLike | None = None,
    gate: GateFactory | None = None,
) -> LadderResult:
    """Distil the teacher of ``teacher_run_dir`` down ``config.ladder`` into ``run_dir``.

    The teacher run is opened with :func:`kaclib.train.load_run` (EMA weights).  A flow-matching
    teacher is sampled guided (``config.w``); a teacher that is itself a distilled run (its config
    has a ``"distilled"`` section) is an Euler stepper, and ``config.ladder[0]`` must equal its
    step count.  ``resume=True`` continues an interrupted ladder (finished stages are loaded, the
    interrupted one resumes from its checkpoint; on a new directory it simply starts);
    ``resume=False`` refuses a directory that already holds a ladder.  ``callback(iteration,
    info)`` runs after every iteration (``info["stage"]`` names the stage).

    ``gate``: the quality gate's factory ``gate(config, dataset, path, num_classes) -> gate_fn``
    (:mod:`kaclib.distill.gate`; :func:`kaclib.cli.ladder_gate` builds it from
    :mod:`kaclib.evaluation`).  It is called once the teacher is open when ``config.gate`` is set,
    which then requires it, and is ignored otherwise.
    """
    config = config or DistillConfig()
    if not isinstance(config, DistillConfig):
        raise ValueError(f"config must be a DistillConfig, got {type(config).__name__}")
    _check_gate(config, gate)
    t_start = time.perf_counter()
    device = torch.device(device)
    teacher_run_dir, run_dir = runs.check_run_path(teacher_run_dir), runs.check_run_path(run_dir)
    loaded, tinfo, num_classes, dataset = _open_teacher(config, teacher_run_dir, run_dir, device)
    acc = config.accel.resolve(device)
    # recorded as run on this device: a changed arithmetic is a config mismatch
    config = config.replace(accel=acc)
    top = {"distill": config.to_dict(), "teacher": tinfo, "dataset": dataset}
    if (run_dir / runs.CONFIG_FILE).is_file() and not resume:
        raise FileExistsError(
            f"{run_dir} already holds a distillation ladder: pass resume=True to continue it, "
            "or use another run directory"
        )
    # everything that can fail on bad input (teacher, data, gate) comes before the first write
    data = _load_data(config, dataset, tinfo, data_root)
    path = loaded.path
    gate_fn = gate(config, dataset, path, num_classes) if config.gate else None
    with runs.writer(run_dir):
        runs.prepare_run_dir(
            run_dir, top, resume=resume, mutable=MUTABLE_FIELDS + ("teacher.run_dir",), rewrite=True
        )
        ctx = _LadderRun(
            config=config,
            run_dir=run_dir,
            teacher_run_dir=teacher_run_dir,
            loaded=loaded,
            tinfo=tinfo,
            dataset=dataset,
            data=data,
            num_classes=num_classes,
            accel=acc,
            device=device,
            progress=progress,
            callback=callback,
            gate_fn=gate_fn,
        )
        results, current = _run_stages(ctx)
    return LadderResult(
        run_dir=run_dir,
        config=config,
        stages=results,
        student=current,
        path=path,
        teacher=loaded,
        seconds=time.perf_counter() - t_start,
    )


def _check_gate(config: DistillConfig, gate) -> None:
    """``gate`` must be a callable (a gate factory) or ``None``, and is needed when ``config.gate``."""
    if gate is not None and not callable(gate):
        raise ValueError(f"gate must be None or a gate factory (a callable), got {type(gate).__name__}")
    if config.gate and gate is None:
        raise ValueError(
            "config.gate is set but no gate was passed: pass gate=kaclib.cli.ladder_gate "
            "(or another factory gate(config, dataset, path, num_classes), see kaclib.distill.gate)"
        )


def _open_teacher(config: DistillConfig, teacher_run_dir: Path, run_dir: Path, device):
    """``(loaded, tinfo, num_classes, dataset)`` of the teacher run.

    They are the teacher run (verified; a non-finite teacher is refused), its :func:`_teacher_info`,
    its number of classes and the data set of forward states.
    """
    from ..train import load_run

    loaded = load_run(teacher_run_dir, ema=True, device=device)  # verified; refuses a non-finite teacher
    tinfo = _teacher_info(loaded, teacher_run_dir, run_dir)
    num_classes = int(tinfo["model"]["num_classes"])
    dataset = config.dataset or tinfo["dataset"]
    if dataset is None:
        raise ValueError("the teacher's config names no data set: set DistillConfig.dataset")
    if tinfo["distilled"] is not None:
        if int(tinfo["distilled"]["steps"]) != config.ladder[0]:
            raise ValueError(
                f"the teacher is a distilled {tinfo['distilled']['steps']}-step model, "
                f"but the ladder starts at {config.ladder[0]} steps"
            )
    return loaded, tinfo, num_classes, dataset


def _load_data(config: DistillConfig, dataset: str, tinfo: dict, data_root):
    """The training split of ``dataset``, checked against the teacher's image shape."""
    from ..data import load_dataset

    data = load_dataset(dataset, "train", root=data_root, seed=config.data_seed)
    m = tinfo["model"]
    want = (m.get("in_channels"), m.get("image_size"), m.get("image_size"))
    if None not in want and tuple(data.images.shape[1:]) != want:
        raise ValueError(
            f"data set {dataset} has images of shape {tuple(data.images.shape[1:])}, the teacher makes {want}"
        )
    return data


@dataclass
class _LadderRun:
    """What every stage of one :func:`run_ladder` call shares.

    The config and directories, the opened teacher (``loaded``, its ``tinfo``), the data of forward
    states, and the run options.
    """

    config: DistillConfig
    run_dir: Path
    teacher_run_dir: Path
    loaded: object
    tinfo: dict
    dataset: str
    data: object
    num_classes: int
    accel: object
    device: torch.device
    progress: bool
    callback: Callable[[int, dict], None] | None
    gate_fn: Callable | None


def _run_stages(ctx: _LadderRun):
    """Run (or load) every stage in turn, each distilled from the previous student."""
    current = ctx.loaded.model
    results = []
    teacher_dir = _relative(ctx.teacher_run_dir, ctx.run_dir)
    for spec in ctx.config.stages():
        sdir = ctx.run_dir / stage_dir_name(spec)
        res = _one_stage(ctx, spec, current, sdir, teacher_dir)
        results.append(res)
        current = res.student
        teacher_dir = _relative(sdir, ctx.run_dir)
    return results, current


def _one_stage(ctx: _LadderRun, spec, current, sdir: Path, teacher_dir: str):
    """Stage ``spec`` distilled from the model ``current`` into ``sdir``.

    Loaded when finished, else trained (resuming from its checkpoint).
    """
    config = ctx.config
    first_flow = spec.index == 1 and ctx.tinfo["distilled"] is None
    handed = hand_off(
        current, lr=spec.lr, ema_decay=config.ema_decay, ema_warmup=config.ema_warmup, accel=ctx.accel
    )
    teacher_field = TeacherField(
        handed.teacher,
        guided=first_flow,
        w=config.w,
        num_classes=ctx.num_classes,
        solver=config.teacher_solver if first_flow else "euler",
    )
    stage_config = _stage_config(config, spec, ctx.tinfo, ctx.dataset, teacher_dir)
    stage_mutable = MUTABLE_FIELDS + ("distilled.teacher", "distilled.flow_teacher")
    with runs.writer(sdir):
        runs.prepare_run_dir(sdir, stage_config, resume=True, mutable=stage_mutable)
    if (sdir / RESULT_FILE).is_file():
        return load_finished_stage(spec, sdir, handed)
    res = train_stage(
        teacher_field,
        handed,
        ctx.loaded.path,
        spec,
        config,
        ctx.data.images,
        ctx.data.labels,
        ctx.num_classes,
        device=ctx.device,
        run_dir=sdir,
        resume=True,
        progress=ctx.progress,
        callback=ctx.callback,
        gate_fn=ctx.gate_fn,
        run_config=stage_config,
    )
    write_stage_result(res, spec, sdir)
    return res


def load_ladder(run_dir: str | os.PathLike, device="cpu") -> dict:
    """``{student_steps: LoadedRun}`` of every finished stage of a ladder directory."""
    from ..train import load_run

    run_dir = Path(run_dir)
    cfg = DistillConfig.from_dict(runs.read_config(run_dir)["distill"])
    out = {}
    for spec in cfg.stages():
        sdir = run_dir / stage_dir_name(spec)
        if (sdir / RESULT_FILE).is_file():
            out[spec.student_steps] = load_run(sdir, ema=True, device=device)
    return out


def ladder_cache_dir(teacher_dir: str | os.PathLike, config: DistillConfig, root=None) -> Path:
    """Where the benchmarks cache the ladder of ``config`` distilled from the run ``teacher_dir``.

    The folder is ``<root>/ladder-<hash>``, the hash of the teacher directory's NAME (teacher runs
    are named by their config hash, so a moved cache still matches) and ``config.to_dict()``.
    ``root`` defaults to :func:`kaclib.artifacts.cache_root`.
    """
    from ..artifacts import derived_run_dir

    if not isinstance(config, DistillConfig):
        raise ValueError(f"config must be a DistillConfig, got {type(config).__name__}")
    return derived_run_dir("ladder", teacher_dir, root, distill=config.to_dict())
