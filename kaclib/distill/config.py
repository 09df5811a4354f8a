"""The stage schedule and the configuration of a distillation ladder.

:func:`ladder_schedule` turns a ladder of step counts into :class:`StageSpec` s (a pure function);
consecutive counts must divide (``N = ladder[i] / ladder[i+1]``).  A single stage ``100 -> 1`` is
the ladder ``(100, 1)``.  :class:`DistillConfig` holds everything that determines a ladder;
:func:`config_for_profile` is the one of a run profile.

Defaults, and why (measured on 8x8 digits, ``benchmarks/ladder.py``)
----------------------------------------------------------------------
* ``teacher_solver="ab2"``: at the same cost as Euler, its end point over a 100 -> 20 interval
  (``N = 5``) is about 2x closer to a 16x finer midpoint reference (relative error 0.37% against
  0.84% of the interval's displacement); midpoint is closer still but costs 2 evaluations.
* ``ema_decay=0.99`` with ``ema_warmup``: a stage is short (hundreds of iterations).  An EMA of
  0.999 started at the teacher's weights still holds ``0.999^500 = 61%`` of them after 500
  iterations: the saved student is a weight-space blend of teacher and trained student, which
  scored WORSE than both (a 20-step student worse than the teacher at 20 steps, a 4-step student
  worse than its teacher at 4 steps) and was handed on down the ladder.  This, not the clock
  ``g = t^2``, reproduced a prototype's "ladder breaks at 20 -> 4" (see ``ema_study`` in
  ``benchmarks/results/ladder.json``).
* ``states="forward"``, ``targets="online"``: students trained on forward-noised states had
  per-time end-point errors on the teacher's own roll-out states of the same size as on forward
  states (ratios 0.9-1.6, ``g = t^2`` study), so the state distribution was not what limited them;
  forward states need no teacher roll-out.  (A student TRAINED on roll-outs was not compared at
  scale for lack of CPU time.)  Pools trade teacher compute for reuse (the single-stage
  100 -> 1 student needs one: 100 guided substeps per sample and iteration).

The ``gate*`` fields configure the optional quality gate (:mod:`kaclib.distill.gate`), which the
caller builds and hands to :func:`kaclib.distill.run_ladder`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Sequence

from .. import accel as _accel
from ..accel import AccelConfig
from ..configs import JSONConfig
from ..guidance import check_guidance_weight, guided_passes
from ..kac import check_finite_param
from ..solvers import NFE_PER_STEP, SOLVERS

STATES = ("forward", "rollout")
TARGETS = ("online", "pool")
MAX_BATCH = 16384  # as kaclib.train.MAX_BATCH
MAX_POOL = 10**6  # a 10^6-tuple CIFAR-10 pool already holds 23 GiB
MUTABLE_FIELDS = ("distill.checkpoint_every", "distill.log_every") + tuple(
    f"distill.accel.{k}" for k in _accel.MUTABLE_ON_RESUME
)


# =============================================================================== schedule


def check_ladder(ladder) -> tuple:
    """Validate a ladder of step counts; returns it as a tuple of ints.

    A ladder is a strictly decreasing sequence of at least two positive ints in which every count
    is divisible by the next one (the student's step must cover a whole number of teacher steps).
    """
    if isinstance(ladder, (str, bytes)) or not isinstance(ladder, Sequence):
        raise ValueError(
            f"ladder must be a sequence of step counts such as (100, 20, 4, 2, 1), got {ladder!r}"
        )
    ladder = tuple(ladder)
    if len(ladder) < 2:
        raise ValueError(f"ladder needs at least two step counts (teacher, student), got {ladder!r}")
    for s in ladder:
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise ValueError(f"ladder step counts must be positive ints, got {s!r} in {ladder!r}")
    for a, b in zip(ladder, ladder[1:]):
        if b >= a:
            raise ValueError(f"ladder must be strictly decreasing, got {a} -> {b} in {ladder!r}")
        if a % b:
            raise ValueError(
                f"ladder steps must divide: {b} does not divide {a} in {ladder!r} "
                f"(a {b}-step student cannot cover whole {a}-step teacher steps)"
            )
    return ladder


def _per_stage(name: str, value, n: int, kind) -> tuple:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} entries but the ladder has {n} stages")
        return tuple(kind(name, v) for v in value)
    return (kind(name, value),) * n


def _int_ge0(name, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"{name} must be an int >= 0 (or one per stage), got {v!r}")
    return v


def _pos_float(name, v) -> float:
    return check_finite_param(name, v, positive=True)


@dataclass(frozen=True)
class StageSpec:
    """One stage of a ladder: ``teacher_steps -> student_steps``.

    ``substeps = teacher_steps/student_steps`` teacher steps per student step, learning rate ``lr``
    and ``iters`` iterations (before the gate).
    """

    index: int
    teacher_steps: int
    student_steps: int
    substeps: int
    lr: float
    iters: int

    def to_dict(self) -> dict:
        """The stage's fields as a plain dict (``dataclasses.asdict``)."""
        return dataclasses.asdict(self)


def ladder_schedule(ladder=(100, 20, 4, 2, 1), iters=500, lr=3e-4) -> list[StageSpec]:
    """The stages of a ladder (pure function).

    ``iters`` and ``lr`` are one value for every stage or one per stage.  Stage ``i`` (1-based)
    distils ``ladder[i-1]`` into ``ladder[i]`` steps with ``substeps = ladder[i-1] // ladder[i]``.
    Raises ``ValueError`` for a ladder that is not strictly decreasing with dividing steps.
    """
    ladder = check_ladder(ladder)
    n = len(ladder) - 1
    iters_t = _per_stage("iters", iters, n, _int_ge0)
    lr_t = _per_stage("lr", lr, n, _pos_float)
    return [
        StageSpec(
            index=i + 1, teacher_steps=a, student_steps=b, substeps=a // b, lr=lr_t[i], iters=iters_t[i]
        )
        for i, (a, b) in enumerate(zip(ladder, ladder[1:]))
    ]


def stage_dir_name(spec: StageSpec) -> str:
    """The folder name of a stage: ``stage-<index>-<student_steps>steps``."""
    return f"stage-{spec.index}-{spec.student_steps}steps"


# =============================================================================== configuration


def _tuple_or_scalar(v):
    return tuple(v) if isinstance(v, list) else v


@dataclass(frozen=True)
class DistillConfig(JSONConfig):
    """Everything that determines a distillation ladder (JSON round trip: ``to_dict``/``from_dict``).

    ``ladder``/``iters``/``lr``: see :func:`ladder_schedule`.  ``w``: guidance weight of the first
    (flow-matching) teacher, baked into the students.  ``teacher_solver``: integrator of the flow
    teacher's substeps.  ``states``/``targets``/``pool_size``: see :mod:`kaclib.distill.sources`.
    ``ema_decay``/``ema_warmup``: EMA of each stage's student (fresh per stage; the EMA weights
    are the student that is saved, evaluated and handed on); with ``ema_warmup`` the decay after
    ``n`` updates is ``min(ema_decay, (1 + n)/(10 + n))``, so no share of the initial (teacher)
    weights lingers at the end of a short stage.  ``warmup_iters``: linear learning-rate warm-up of
    each stage's fresh Adam.  ``dataset``: data for forward states (default: the teacher's).
    ``gate*``: the optional quality gate (:mod:`kaclib.distill.gate`; built by the caller of
    :func:`kaclib.distill.run_ladder` when ``gate`` is set).  ``accel``: the accelerator switches
    (:class:`kaclib.accel.AccelConfig`: bf16 autocast of student and teacher passes, fused Adam,
    channels-last weights, TF32; the default decides per device); :func:`run_ladder` records them
    resolved, and :meth:`to_dict` leaves the default out (configs serialise as before the field).
    """

    ladder: tuple = (100, 20, 4, 2, 1)
    iters: int | tuple = 500
    lr: float | tuple = 3e-4
    w: float = 1.0
    teacher_solver: str = "ab2"
    states: str = "forward"
    targets: str = "online"
    pool_size: int = 4096
    batch_size: int = 128
    grad_clip: float | None = 1.0
    ema_decay: float = 0.99
    ema_warmup: bool = True
    warmup_iters: int = 0
    seed: int = 0
    data_seed: int = 0
    dataset: str | None = None
    gate: bool = False
    gate_n: int = 512
    gate_tol: float = 0.1
    gate_chunk: int = 250
    gate_max_extra: int = 1000
    gate_solver: str = "ab2"
    gate_seed: int = 1234
    checkpoint_every: int = 250
    log_every: int = 50
    accel: AccelConfig = field(default_factory=AccelConfig)

    def __post_init__(self):
        object.__setattr__(self, "accel", AccelConfig.from_dict(self.accel))
        object.__setattr__(self, "ladder", check_ladder(_tuple_or_scalar(self.ladder)))
        object.__setattr__(self, "iters", _tuple_or_scalar(self.iters))
        object.__setattr__(self, "lr", _tuple_or_scalar(self.lr))
        ladder_schedule(self.ladder, self.iters, self.lr)  # validates iters and lr
        object.__setattr__(self, "w", check_guidance_weight(self.w))
        for name, value, allowed in (
            ("teacher_solver", self.teacher_solver, SOLVERS),
            ("gate_solver", self.gate_solver, SOLVERS),
            ("states", self.states, STATES),
            ("targets", self.targets, TARGETS),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        self._check_ints()
        if self.grad_clip is not None:
            object.__setattr__(
                self, "grad_clip", check_finite_param("grad_clip", self.grad_clip, positive=True)
            )
        d = check_finite_param("ema_decay", self.ema_decay, nonneg=True)
        if d >= 1:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay!r}")
        object.__setattr__(self, "ema_decay", d)
        object.__setattr__(self, "gate_tol", check_finite_param("gate_tol", self.gate_tol, nonneg=True))
        for name in ("gate", "ema_warmup"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.dataset is not None and (not isinstance(self.dataset, str) or not self.dataset):
            raise ValueError(f"dataset must be None or a data set name, got {self.dataset!r}")

    def _check_ints(self) -> None:
        """The int fields: their minima, and the maxima of ``batch_size`` and ``pool_size``."""
        for name, minimum in (
            ("pool_size", 1),
            ("batch_size", 1),
            ("warmup_iters", 0),
            ("seed", 0),
            ("data_seed", 0),
            ("gate_n", 2),
            ("gate_chunk", 1),
            ("gate_max_extra", 0),
            ("gate_seed", 0),
            ("checkpoint_every", 0),
            ("log_every", 1),
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {v!r}")
        # a pool holds states and targets: 2 x 3 x 32 x 32 float32 = 24.6 kB per CIFAR tuple
        for name, maximum in (("batch_size", MAX_BATCH), ("pool_size", MAX_POOL)):
            v = getattr(self, name)
            if v > maximum:
                raise ValueError(
                    f"{name} must be <= {maximum}, got {v!r} (about {v * 24576 / 2**30:.3g} GiB of "
                    "32x32 RGB states and targets: an absurd value that would exhaust memory)"
                )

    def stages(self) -> list[StageSpec]:
        """The ladder's stages (:func:`ladder_schedule` of ``ladder``, ``iters`` and ``lr``)."""
        return ladder_schedule(self.ladder, self.iters, self.lr)

    @property
    def total_iters(self) -> int:
        """Iterations of all stages (before any gate extension)."""
        return sum(s.iters for s in self.stages())

    def flow_passes_per_substep(self) -> int:
        """Network passes per sample of one substep of the flow teacher.

        They are the solver's evaluations per step times the guided field's passes per evaluation
        (2 for ``w`` not in {0, 1}).
        """
        return NFE_PER_STEP[self.teacher_solver] * guided_passes(self.w)

    def planned_teacher_passes(self) -> int:
        """Teacher passes x samples the ladder spends with online targets and no gate extension.

        They are ``iters x substeps x batch_size`` per stage, times :meth:`flow_passes_per_substep`
        in the first stage (later teachers are distilled students: one pass per substep).
        """
        first = self.flow_passes_per_substep()
        return sum(
            st.iters * st.substeps * self.batch_size * (first if st.index == 1 else 1) for st in self.stages()
        )

    def single_stage(self, teacher_passes: int | None = None) -> "DistillConfig":
        """DistillKac's single stage at this ladder's budget: ``ladder[0] -> 1``.

        It has as many student iterations as the whole ladder (learning rate: the last stage's) and
        a pool of teacher end points whose teacher passes match ``teacher_passes`` (default
        :meth:`planned_teacher_passes`): ``pool_size = passes / (ladder[0] x passes per substep)``.
        """
        passes = self.planned_teacher_passes() if teacher_passes is None else int(teacher_passes)
        per_target = self.ladder[0] * self.flow_passes_per_substep()
        return self.replace(
            ladder=(self.ladder[0], 1),
            iters=self.total_iters,
            lr=self.lr if isinstance(self.lr, float) else self.lr[-1],
            targets="pool",
            pool_size=max(self.batch_size, round(passes / per_target)),
        )


def config_for_profile(profile=None, **changes) -> DistillConfig:
    """The :class:`DistillConfig` of a recipe (:meth:`kaclib.recipe.Recipe.distill_config`).

    ``profile``: a :class:`~kaclib.recipe.Recipe` or its name (default: the current profile);
    ``changes`` replace fields.
    """
    from ..recipe import Recipe, get_recipe

    recipe = profile if isinstance(profile, Recipe) else get_recipe(profile)
    return recipe.distill_config(**changes)
