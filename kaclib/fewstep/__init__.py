"""Other few-step methods against the same teacher, on the stage loop of :mod:`kaclib.distill`.

* :mod:`~kaclib.fewstep.progressive`: progressive distillation (Salimans & Ho 2022), halving ladders;
* :mod:`~kaclib.fewstep.reflow`: rectified-flow reflow (Liu et al. 2023) on the teacher's couplings,
  then its 1-step map (optionally distilled);
* :mod:`~kaclib.fewstep.consistency`: consistency distillation (Song et al. 2023), the teacher as
  the ODE solver.

Every ``run_*`` function takes the teacher as a :class:`kaclib.distill.TeacherField`, the path,
training data and a frozen config dataclass (saved as JSON in the run directory) and returns a
:class:`FewStepResult` with the shared budget accounting (``student_iters``, ``teacher_passes``,
``flow_teacher_passes``; see :mod:`kaclib.fewstep.common`).
"""

from .common import FewStepResult, TrainFields, one_step_map, teacher_evals_per_step
from .consistency import (
    ConsistencyConfig,
    ConsistencyLoss,
    consistency_fn,
    consistency_sample,
    run_consistency,
)
from .progressive import (
    ProgressiveConfig,
    ProgressiveLoss,
    progressive_schedule,
    progressive_target,
    run_progressive,
)
from .reflow import (
    ReflowConfig,
    ReflowLoss,
    reflow_batch,
    run_reflow,
    sample_couplings,
    straight_interpolation,
)

__all__ = [
    "ConsistencyConfig",
    "ConsistencyLoss",
    "FewStepResult",
    "ProgressiveConfig",
    "ProgressiveLoss",
    "ReflowConfig",
    "ReflowLoss",
    "TrainFields",
    "consistency_fn",
    "consistency_sample",
    "one_step_map",
    "progressive_schedule",
    "progressive_target",
    "reflow_batch",
    "run_consistency",
    "run_progressive",
    "run_reflow",
    "sample_couplings",
    "straight_interpolation",
    "teacher_evals_per_step",
]
