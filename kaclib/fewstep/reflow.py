"""Rectified-flow reflow (Liu, Gong & Liu 2023) on the teacher's couplings.

Rectified-flow reflow (Liu, Gong & Liu, "Flow Straight and Fast: Learning to Generate and
Transfer Data with Rectified Flow", ICLR 2023, arXiv:2209.03003), on the teacher's couplings.

Three phases, in the project's time convention (data at ``t = 0``, latent at ``t = T``, sampling
from ``T`` down to 0, ``x <- x - h u``):

1. Couplings (:func:`sample_couplings`): ``n_pairs`` latents ``x_T`` drawn from the PATH's own
   latent law (``path.sample_latent``: Kac latents for a Kac teacher, not Gaussian ones), labels
   uniform, and ``x_0 = Phi_teacher(x_T; T -> 0)`` with ``coupling_steps`` teacher steps (its
   solver), computed once and saved as ``couplings.safetensors`` in the run directory.
2. Reflow (the "2-rectified flow"): the student learns the straight interpolation between the
   coupled end points::

       x_t = (1 - t/T) x_0 + (t/T) x_T,     t ~ U[0, T]
       loss = mean || u_phi(x_t, t, y) - (x_T - x_0)/T ||^2                  (ReflowLoss)

   (``d x_t / dt = (x_T - x_0)/T``; for ``T = 1`` the target is ``x_T - x_0``.)  The target is
   constant along each interpolation line; the batches (:func:`reflow_batch`) re-draw pairs and
   times every iteration from the per-iteration generator.
3. One step: the 2-rectified flow's 1-step Euler map ``x_T - T u_phi(x_T, T)``; with
   ``distill_iters > 0`` a final DistillKac endpoint stage (:class:`kaclib.distill.EndpointLoss`)
   distils the 2-rectified flow, integrated with ``distill_teacher_steps`` Euler steps, into a
   1-step student (Liu et al.'s "distillation" after reflow, here with the project's own loss).

Budget: the couplings cost ``n_pairs * coupling_steps`` teacher evaluations (``flow_teacher_passes``,
reported in ``extra["coupling_passes"]``); the reflow phase spends no teacher pass; the final stage
spends passes of the frozen 2-rectified flow.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .. import runs
from ..distill import StageSpec, TeacherField, segment_endpoint
from ..train import step_seed
from .common import (
    FewStepResult,
    TrainFields,
    as_path,
    check_inputs,
    check_int,
    open_run_dir,
    run_stage,
    stage_config,
    student_handoff,
    teacher_evals_per_step,
)

__all__ = [
    "ReflowConfig",
    "ReflowLoss",
    "reflow_batch",
    "run_reflow",
    "sample_couplings",
    "straight_interpolation",
]

METHOD = "reflow"
COUPLINGS_FILE = "couplings.safetensors"
_S_COUPLINGS = 7  # step_seed stream of the couplings' latents and labels


@dataclass(frozen=True)
class ReflowConfig(TrainFields):
    """Configuration of a reflow run.

    A reflow run: ``n_pairs`` couplings from ``coupling_steps`` teacher steps; ``reflow_iters``
    iterations of the 2-rectified flow; ``distill_iters`` iterations of the optional final 1-step
    endpoint stage, whose teacher is the 2-rectified flow with ``distill_teacher_steps`` Euler
    steps.  Other fields: :class:`TrainFields`.
    """

    n_pairs: int = 4096
    coupling_steps: int = 64
    reflow_iters: int = 2000
    distill_iters: int = 0
    distill_teacher_steps: int = 8

    def __post_init__(self):
        super().__post_init__()
        for name, lo in (
            ("n_pairs", 1),
            ("coupling_steps", 1),
            ("reflow_iters", 0),
            ("distill_iters", 0),
            ("distill_teacher_steps", 2),
        ):
            check_int(name, getattr(self, name), lo)

    @property
    def total_iters(self) -> int:
        """Student iterations over both phases."""
        return self.reflow_iters + self.distill_iters

    def planned_budget(self, evals_per_step: int = 1) -> dict:
        """Planned evaluation budget: couplings plus the optional final stage.

        Couplings ``n_pairs * coupling_steps`` flow-teacher steps; the final stage
        ``distill_iters * batch_size * distill_teacher_steps`` Euler steps of the 2-rectified flow
        (:meth:`TrainFields.planned_budget`).
        """
        flow = self.n_pairs * self.coupling_steps * check_int("evals_per_step", evals_per_step, 1)
        final = self.distill_iters * self.batch_size * self.distill_teacher_steps
        return {
            "student_iters": self.total_iters,
            "teacher_passes": flow + final,
            "flow_teacher_passes": flow,
        }


@torch.no_grad()
def sample_couplings(
    teacher: TeacherField,
    path,
    shape: tuple,
    n: int,
    steps: int,
    num_classes: int,
    seed: int = 0,
    chunk: int = 1024,
    device="cpu",
    dtype=torch.float32,
) -> dict:
    """Teacher couplings ``(x_T, x_0, y)``, deterministic in ``seed``.

    ``{"x_T", "x_0", "y"}``: ``n`` latents of ``path``, uniform labels and the teacher's ODE
    solutions ``x_0 = Phi_teacher(x_T; T -> 0)`` with ``steps`` steps of ``teacher.solver``
    (:func:`kaclib.distill.segment_endpoint` over the whole of ``[0, T]``).  Deterministic in ``seed``.
    """
    check_int("n", n, 1)
    g = torch.Generator(device=device).manual_seed(step_seed(seed, 0, -2, _S_COUPLINGS))
    x_T = path.sample_latent((n,) + tuple(shape), generator=g, device=device, dtype=dtype)
    y = torch.randint(num_classes, (n,), generator=g, device=device)
    x_0 = torch.cat(
        [
            segment_endpoint(
                teacher.velocity,
                x_T[i : i + chunk],
                torch.zeros(min(chunk, n - i), dtype=torch.long, device=device),
                y[i : i + chunk],
                1,
                steps,
                float(path.T),
                teacher.solver,
            )
            for i in range(0, n, chunk)
        ]
    )
    return {"x_T": x_T, "x_0": x_0, "y": y}


def straight_interpolation(x_0: torch.Tensor, x_T: torch.Tensor, t: torch.Tensor, T: float = 1.0):
    """``(x_t, u)``: ``x_t = (1 - t/T) x_0 + (t/T) x_T`` and its constant velocity ``(x_T - x_0)/T``."""
    s = (t / T).reshape(t.shape + (1,) * (x_0.ndim - 1)).to(x_0.dtype)
    return (1 - s) * x_0 + s * x_T, (x_T - x_0) / T


def reflow_batch(couplings: dict, batch_size: int, T: float = 1.0):
    """Batch hook of the reflow phase: pairs and uniform times.

    The ``batch_fn(it, g)`` hook of :func:`kaclib.distill.train_stage` for the reflow phase:
    ``batch_size`` pairs and times ``t ~ U[0, T]`` drawn from ``g``; returns ``(x_t, t, y, u)`` (the
    loop hands them to :class:`ReflowLoss`, ``t`` in the place of the grid index).
    """
    n = couplings["x_T"].shape[0]

    def batch(it: int, g: torch.Generator):
        idx = torch.randint(n, (batch_size,), generator=g, device=g.device)
        x_0, x_T = couplings["x_0"][idx], couplings["x_T"][idx]
        t = torch.rand(batch_size, generator=g, device=g.device, dtype=torch.float64) * T
        x_t, u = straight_interpolation(x_0, x_T, t, T)
        return x_t, t.to(x_0.dtype), couplings["y"][idx], u

    return batch


@dataclass(frozen=True)
class ReflowLoss:
    """Reflow's loss: student velocity against the straight-line velocity of a pair.

    ``mean || u_phi(x_t, t, y) - u ||^2`` with ``t`` (continuous times) in the place of the grid
    index and ``target = u = (x_T - x_0)/T`` (:func:`reflow_batch`).
    """

    def __call__(
        self, student: nn.Module, x: torch.Tensor, t: torch.Tensor, y, target: torch.Tensor
    ) -> torch.Tensor:
        """Loss of ``student`` on a batch at continuous times ``t``."""
        return torch.mean((student(x, t, y).to(target.dtype) - target) ** 2)


def _couplings(run_dir: Path | None, teacher, path, data, config, num_classes, device) -> dict:
    """The couplings, read from ``run_dir`` when saved there (a resumed run spends no teacher pass)."""
    f = run_dir / COUPLINGS_FILE if run_dir is not None else None
    if f is not None and f.is_file():
        blob = f.read_bytes()
        meta = run_dir / "couplings.json"
        if (
            not meta.is_file()
            or runs.read_json_object(meta).get("sha256") != hashlib.sha256(blob).hexdigest()
        ):
            raise runs.RunDirError(f"{f} does not match its fingerprint in {meta} (damaged or replaced)")
        return {k: v.to(device) for k, v in runs.load_tensors(blob, f).items()}
    c = sample_couplings(
        teacher,
        path,
        tuple(data.shape[1:]),
        config.n_pairs,
        config.coupling_steps,
        num_classes,
        seed=config.seed,
        device=device,
        dtype=data.dtype,
    )
    if f is not None:
        from safetensors.torch import save

        blob = save({k: v.cpu().contiguous() for k, v in c.items()})
        runs.atomic_write_bytes(f, blob)
        runs.atomic_write_json(
            run_dir / "couplings.json",
            {
                "sha256": hashlib.sha256(blob).hexdigest(),
                "n_pairs": config.n_pairs,
                "steps": config.coupling_steps,
            },
        )
    return c


def _reflow_specs(config: ReflowConfig) -> tuple[StageSpec, StageSpec]:
    reflow = StageSpec(
        index=1,
        teacher_steps=config.coupling_steps,
        student_steps=1,
        substeps=config.coupling_steps,
        lr=config.lr,
        iters=config.reflow_iters,
    )
    final = StageSpec(
        index=2,
        teacher_steps=config.distill_teacher_steps,
        student_steps=1,
        substeps=config.distill_teacher_steps,
        lr=config.lr,
        iters=config.distill_iters,
    )
    return reflow, final


def run_reflow(
    teacher: TeacherField,
    path,
    data: torch.Tensor,
    labels: torch.Tensor | None = None,
    config: ReflowConfig | None = None,
    *,
    student: nn.Module | None = None,
    num_classes: int | None = None,
    run_dir=None,
    resume: bool = False,
    info: dict | None = None,
    device="cpu",
    progress: bool = False,
    callback=None,
) -> FewStepResult:
    """Reflow of ``teacher`` (module docstring), then its 1-step map (optionally distilled).

    Arguments as :func:`kaclib.fewstep.run_progressive` (``data``/``labels`` only give the state
    shape and the final stage's forward states); the student (default: a copy of the teacher's
    model) samples with ONE Euler step.  ``extra``: ``coupling_passes`` and the couplings.
    """
    config = config or ReflowConfig()
    if not isinstance(config, ReflowConfig):
        raise ValueError(f"config must be a ReflowConfig, got {type(config).__name__}")
    labels, num_classes = check_inputs(teacher, path, data, labels, num_classes)
    t0, T = time.perf_counter(), float(path.T)
    device = torch.device(device)
    run_dir = as_path(run_dir)
    if run_dir is not None:
        open_run_dir(
            run_dir,
            {**(info or {}), "method": METHOD, "fewstep": config.to_dict(), "path": path.config()},
            resume,
        )
    couplings = _couplings(run_dir, teacher, path, data.to(device), config, num_classes, device)
    coupling_passes = config.n_pairs * config.coupling_steps * teacher_evals_per_step(teacher)
    spec, final = _reflow_specs(config)
    w = teacher.w if teacher.guided else 1.0
    handoff = student_handoff(
        student if student is not None else teacher.model, teacher.model, config, device
    )
    res = run_stage(
        "stage-1-reflow",
        teacher,
        handoff,
        path,
        spec,
        config,
        data,
        labels,
        num_classes,
        run_dir=run_dir,
        run_config=stage_config(METHOD, config, spec, path, info, 1, w),
        device=device,
        progress=progress,
        callback=callback,
        loss_fn=ReflowLoss(),
        batch_fn=reflow_batch(couplings, config.batch_size, T),
    )
    stages = [res]
    if config.distill_iters > 0:
        run = dict(run_dir=run_dir, device=device, progress=progress, callback=callback)
        stages.append(
            _distill_to_one_step(res, teacher, path, final, config, data, labels, num_classes, info, w, run)
        )
    return FewStepResult(
        method=METHOD,
        config=config,
        student=stages[-1].student,
        student_steps=1,
        stages=tuple(stages),
        student_iters=sum(s.iters for s in stages),
        teacher_passes=coupling_passes + sum(s.teacher_passes for s in stages),
        flow_teacher_passes=coupling_passes,
        seconds=time.perf_counter() - t0,
        run_dir=run_dir,
        extra={"coupling_passes": coupling_passes, "couplings": couplings},
    )


def _distill_to_one_step(res, teacher, path, final, config, data, labels, num_classes, info, w, run: dict):
    """Distil the reflowed student into a 1-step student (the optional last stage).

    The optional last stage of :func:`run_reflow`: the reflowed student ``res.student`` as an
    unguided Euler teacher, distilled into a 1-step student (``run``: ``run_dir``, ``device``,
    ``progress``, ``callback`` of :func:`~kaclib.fewstep.common.run_stage`).
    """
    ho2 = student_handoff(res.student, res.student, config, run["device"])
    tf2 = TeacherField(ho2.teacher, guided=False, num_classes=teacher.num_classes, solver="euler")
    return run_stage(
        "stage-2-1steps",
        tf2,
        ho2,
        path,
        final,
        config,
        data,
        labels,
        num_classes,
        run_dir=run["run_dir"],
        run_config=stage_config(METHOD, config, final, path, info, 1, w),
        device=run["device"],
        progress=run["progress"],
        callback=run["callback"],
    )
