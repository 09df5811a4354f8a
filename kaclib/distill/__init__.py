"""Endpoint-only distillation (DistillKac): the 100 -> 20 -> 4 -> 2 -> 1 ladder.

A stage teaches a student to take ONE Euler step where its frozen teacher takes ``N``, supervised
only by where the teacher ends up; stages are chained into a ladder, each student becoming the
next teacher.  The package, by concern:

* :mod:`kaclib.distill.config`: the stage schedule as a pure function (:func:`ladder_schedule`,
  :class:`StageSpec`), :class:`DistillConfig` and :func:`config_for_profile`, and why the
  defaults are what they are;
* :mod:`kaclib.distill.teacher`: the frozen teacher field (:class:`TeacherField`, :func:`freeze`)
  and the hand-off between stages (:class:`Handoff`, :func:`hand_off`);
* :mod:`kaclib.distill.endpoint`: the two end points and the loss (:func:`segment_endpoint`,
  :func:`student_step`, :class:`EndpointLoss`);
* :mod:`kaclib.distill.sources`: the states a stage trains on (forward-noised data, teacher
  roll-outs, online targets or a pool);
* :mod:`kaclib.distill.stage`: the training loop of one stage (:func:`train_stage`,
  :class:`StageResult`, checkpoints and exact resume);
* :mod:`kaclib.distill.gate`: the optional quality gate (:func:`fid_gate`), built by the caller;
* :mod:`kaclib.distill.ladder`: the ladder runner (:func:`run_ladder`, :class:`LadderResult`,
  :func:`load_ladder`, :func:`ladder_cache_dir`) and its run directories.

Nothing here imports :mod:`kaclib.evaluation`: the quality gate's sampler and scorer are passed in
(``run_ladder(..., gate=kaclib.cli.ladder_gate)``).  Every name that callers import from
``kaclib.distill`` is re-exported here.
"""

from __future__ import annotations

from .config import (
    MAX_BATCH,
    MAX_POOL,
    MUTABLE_FIELDS,
    STATES,
    TARGETS,
    DistillConfig,
    StageSpec,
    check_ladder,
    config_for_profile,
    ladder_schedule,
    stage_dir_name,
)
from .endpoint import EndpointLoss, segment_endpoint, student_step
from .gate import GateFactory, GateFn, fid_gate
from .ladder import LadderResult, ladder_cache_dir, load_ladder, run_ladder
from .sources import POOL_FILE
from .stage import RESULT_FILE, StageResult, load_finished_stage, train_stage, write_stage_result
from .teacher import Handoff, TeacherField, freeze, hand_off

__all__ = [
    "StageSpec",
    "DistillConfig",
    "Handoff",
    "TeacherField",
    "StageResult",
    "LadderResult",
    "ladder_schedule",
    "check_ladder",
    "hand_off",
    "segment_endpoint",
    "student_step",
    "EndpointLoss",
    "train_stage",
    "load_finished_stage",
    "write_stage_result",
    "run_ladder",
    "load_ladder",
    "config_for_profile",
    "stage_dir_name",
    "ladder_cache_dir",
    "fid_gate",
    "freeze",
    "GateFactory",
    "GateFn",
    "MAX_BATCH",
    "MAX_POOL",
    "MUTABLE_FIELDS",
    "POOL_FILE",
    "RESULT_FILE",
    "STATES",
    "TARGETS",
]
