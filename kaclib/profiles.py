"""Run profiles: one code path at three scales.

* ``smoke``: seconds per chapter; what ``pytest --nbval`` runs.
* ``cpu``: the default without a GPU; a real (small) result in minutes on a 2-core machine.
* ``gpu``: the default when CUDA is present; larger settings for real hardware.

The profile is chosen by the ``KACLIB_PROFILE`` environment variable, else ``gpu`` when CUDA is
available, else ``cpu``.  Fields are read by chapters, benchmarks and the command line.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace

import torch

__all__ = ["Profile", "PROFILES", "get_profile", "current_profile_name"]


@dataclass(frozen=True)
class Profile:
    name: str
    device: str
    dataset: str
    model_preset: str
    train_steps: int
    batch_size: int
    n_eval: (
        int  # generated images per estimate: at most the class-balanced unseen real images (Evaluator.max_n)
    )
    teacher_steps: int  # teacher sampling steps (the paper: 100)
    toy_train_steps: int  # 2D toy (chapter 2)
    toy_samples: int
    mc_samples: int  # Monte Carlo draws in chapter 1
    distill_iters: int  # iterations per ladder stage
    seeds: tuple = (0,)
    # The Kac teacher (kaclib.evaluation.teacher_config).  Chosen on digits by
    # benchmarks/teacher_search.py (results/teacher_search.json): of (a, c) in {(9, 3), (25, 2)} x
    # g in {t, t2} x head in {free, bounded}, (25, 2, t2, free) had the best 100-step and 4-step
    # AB-2 FID-digits (one seed, 500 steps; the eight 100-step FIDs lay within 0.3, the 4-step ones
    # within 0.45 of each other: a weak preference).
    kac_a: float = 25.0
    kac_c: float = 2.0
    kac_f: str = "linear"
    kac_g: str = "t2"
    head: str = "free"  # "free" or "bounded" (kaclib.models)
    p_uncond: float = 0.1  # label dropout for classifier-free guidance
    # EMA decay of the teacher's weights: 0.999 suits long runs; for a budget of ~1,000 steps an EMA of
    # 0.999 still holds 0.999^1000 = 37% of the initial weights (benchmarks/teacher.py uses 0.995)
    ema_decay: float = 0.999
    # teacher sampling weight (v_u + w (v_c - v_u)): benchmarks/teacher.py's sweep over
    # {0, 1, 1.2, 1.5, 2, 3} found w = 1 best by FID-digits (w = 0 about 8x worse; w > 1 reaches
    # 100% class accuracy at a higher FID), 2 seeds, results/teacher.json
    guidance_w: float = 1.0
    # distillation (kaclib.distill): the ladder of step counts; starts at teacher_steps
    distill_ladder: tuple = (100, 20, 4, 2, 1)

    def to_dict(self) -> dict:
        return asdict(self)


PROFILES = {
    "smoke": Profile(
        name="smoke",
        device="cpu",
        dataset="digits",
        model_preset="smoke",
        train_steps=30,
        batch_size=32,
        ema_decay=0.9,
        n_eval=128,
        teacher_steps=8,
        toy_train_steps=100,
        toy_samples=256,
        mc_samples=20_000,
        distill_iters=5,
        distill_ladder=(8, 4, 2, 1),
    ),
    "cpu": Profile(
        name="cpu",
        device="cpu",
        dataset="digits",
        model_preset="digits-tiny",
        train_steps=1500,
        batch_size=128,
        ema_decay=0.995,
        n_eval=300,
        teacher_steps=100,
        toy_train_steps=3000,
        toy_samples=2000,
        mc_samples=200_000,
        distill_iters=300,
    ),
    "gpu": Profile(
        name="gpu",
        device="cuda",
        dataset="mnist5k",
        model_preset="mnist-small",
        train_steps=40_000,
        batch_size=256,
        n_eval=750,
        teacher_steps=100,
        toy_train_steps=10_000,
        toy_samples=10_000,
        mc_samples=1_000_000,
        distill_iters=4000,
        seeds=(0, 1, 2),
    ),
}


def current_profile_name() -> str:
    name = os.environ.get("KACLIB_PROFILE")
    if name:
        return name
    return "gpu" if torch.cuda.is_available() else "cpu"


def get_profile(name: str | None = None, **overrides) -> Profile:
    """The named profile (default: :func:`current_profile_name`), with optional field overrides."""
    name = name or current_profile_name()
    if name not in PROFILES:
        raise ValueError(f"profile must be one of {sorted(PROFILES)}, got {name!r}")
    prof = PROFILES[name]
    if prof.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("profile 'gpu' needs CUDA, which is not available here; use 'cpu' or 'smoke'")
    return replace(prof, **overrides) if overrides else prof
