"""The numbers DistillKac reports, quoted once (Inception FID on 50,000 samples).

Every chapter, benchmark and table that sets a result of this project beside the paper's reads
them from here, with one key scheme: a student's number of sampling steps (an ``int``), or
``"teacher"`` (the guided 100-step AB-2 teacher) or ``"single_stage"`` (one 100 -> 1 stage).
They were read through the secondary sources named in ``shared/design/kac-math.md``; they are
data, not measurements of this project.
"""

from __future__ import annotations

#: DistillKac's ladder, Inception FID: the 100-step guided teacher and its 20-, 4-, 2- and 1-step students
LADDER_FID = {
    "cifar10": {"teacher": 3.58, 20: 3.72, 4: 4.14, 2: 4.68, 1: 5.66, "single_stage": 9.71},
    "celeba64": {"teacher": 3.50, 20: 3.42, 4: 4.36, 2: 5.66, 1: 7.45},
}

#: the CIFAR-10 teacher (w = 1.2) with three integrators at 100 steps
SOLVER_FID_CIFAR10 = {"midpoint": 3.54, "ab2": 3.58, "euler": 4.00}

#: baselines as quoted beside DistillKac (CIFAR-10)
BASELINE_FID_CIFAR10 = {
    "DDIM, 100 steps": 4.16,
    "DDIM, 20 steps": 6.84,
    "Progressive Distillation, 4 steps": 3.00,
    "iCT, 2 steps": 2.46,
    "EDM (35 NFE)": 1.79,
    "Kac flow, 100 Euler steps, no guidance (Telegrapher paper)": 6.42,
}

TEACHER_STEPS = 100


def ladder_fid(dataset: str, key) -> float | None:
    """The paper's FID of ``key`` on ``dataset``.

    The paper's FID of ``key`` (steps, ``"teacher"`` or ``"single_stage"``; a step count of
    :data:`TEACHER_STEPS` is the teacher) on ``dataset``, or ``None`` where it reports none.
    """
    if dataset not in LADDER_FID:
        raise ValueError(f"dataset must be one of {sorted(LADDER_FID)}, got {dataset!r}")
    if key == TEACHER_STEPS:
        key = "teacher"
    return LADDER_FID[dataset].get(key)


def ladder_ratio(dataset: str, key) -> float | None:
    """FID of ``key`` divided by the teacher's: 1 means no loss from distillation."""
    fid = ladder_fid(dataset, key)
    return None if fid is None else fid / LADDER_FID[dataset]["teacher"]


def key_label(key) -> str:
    """What a key of :data:`LADDER_FID` names: ``"teacher, 100 AB-2 steps, guided"``, ..."""
    labels = {
        "teacher": f"teacher, {TEACHER_STEPS} AB-2 steps, guided",
        "single_stage": f"single stage {TEACHER_STEPS} -> 1",
    }
    return labels.get(key, f"student, {key} steps")


def fid_text(dataset: str, key) -> str:
    """The paper's FID of ``key`` on ``dataset`` as text (``"-"`` where it reports none)."""
    fid = ladder_fid(dataset, key)
    return "-" if fid is None else f"{fid:.2f}"


def describe_ladder(dataset: str) -> str:
    """``"3.58 / 3.72 / 4.14 / 4.68 / 5.66 (100 / 20 / 4 / 2 / 1 steps)"``: the ladder in one line."""
    row = LADDER_FID[dataset]
    steps = [TEACHER_STEPS] + [k for k in row if isinstance(k, int)]
    fids = [row["teacher"]] + [row[k] for k in steps[1:]]
    return " / ".join(f"{v:.2f}" for v in fids) + " (" + " / ".join(str(s) for s in steps) + " steps)"


def describe_solvers() -> str:
    """``"midpoint 3.54, AB-2 3.58, Euler 4.00"``: the CIFAR-10 integrator comparison in one line."""
    names = {"midpoint": "midpoint", "ab2": "AB-2", "euler": "Euler"}
    return ", ".join(f"{names[k]} {v:.2f}" for k, v in SOLVER_FID_CIFAR10.items())
