"""The optional quality gate of a ladder's stages (``DistillConfig.gate``).

Quality gate (``gate=True``): after a stage's budget the student (``M`` Euler steps) and its
teacher sampled with ``M`` steps (the flow teacher guided with ``gate_solver``; a distilled teacher
with Euler) are scored on ``gate_n`` samples; while the student's FID is worse than
``(1 + gate_tol)`` times the teacher's, training continues in chunks of ``gate_chunk`` iterations,
at most ``gate_max_extra`` extra iterations.

Sampling and scoring (:mod:`kaclib.evaluation`) lie above this package, so the caller of
:func:`kaclib.distill.run_ladder` passes the gate in, as a factory
``gate(config, dataset, path, num_classes) -> gate_fn`` (a :data:`GateFactory`) that the ladder
calls once it has opened the teacher; ``gate_fn(student, teacher, spec) -> dict`` (a
:data:`GateFn`, the ``gate_fn`` of :func:`kaclib.distill.train_stage`) scores one stage.
:func:`fid_gate` builds ``gate_fn`` from a sampler and a scorer; :func:`kaclib.cli.ladder_gate`
is the factory that hands it :func:`kaclib.evaluation.generate` and
:meth:`kaclib.evaluation.Evaluator.score` of the ladder's data set.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .config import DistillConfig, StageSpec
from .teacher import TeacherField

GateFn = Callable[[nn.Module, TeacherField, StageSpec], dict]
GateFactory = Callable[[DistillConfig, str, object, int], GateFn]


def fid_gate(config: DistillConfig, path, num_classes: int, *, generate: Callable, score: Callable) -> GateFn:
    """The quality gate: FID of the student (M Euler steps) against its teacher at M steps.

    ``generate(model, path, labels, steps, method=, w=, num_classes=, seed=, progress=)`` samples
    (returning ``.images`` and ``.labels``, as :func:`kaclib.evaluation.generate`);
    ``score(images, labels)`` scores them (returning ``.fid``, ``.accuracy`` and ``.metric_name``,
    as :meth:`kaclib.evaluation.Evaluator.score`).  ``config``'s ``gate_n``, ``gate_seed``,
    ``gate_solver`` and ``gate_tol`` configure it.
    """
    labels = torch.arange(config.gate_n) % num_classes

    def sample(model, M: int, method: str, w: float):
        return generate(
            model,
            path,
            labels,
            M,
            method=method,
            w=w,
            num_classes=num_classes,
            seed=config.gate_seed,
            progress=False,
        )

    def gate(student, teacher: TeacherField, spec: StageSpec) -> dict:
        M = spec.student_steps
        s = sample(student, M, "euler", 1.0)
        if teacher.guided:
            tg = sample(teacher.model, M, config.gate_solver, teacher.w)
        else:
            tg = sample(teacher.model, M, "euler", 1.0)
        fs, ft = score(s.images, s.labels), score(tg.images, tg.labels)
        return {
            "student_fid": fs.fid,
            "teacher_fid": ft.fid,
            "student_accuracy": fs.accuracy,
            "teacher_accuracy": ft.accuracy,
            "metric": fs.metric_name,
            "n": config.gate_n,
            "pass": bool(fs.fid <= ft.fid * (1 + config.gate_tol)),
        }

    return gate
