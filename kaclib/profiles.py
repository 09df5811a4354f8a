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
    n_eval: int  # generated samples per FID estimate
    teacher_steps: int  # teacher sampling steps (the paper: 100)
    toy_train_steps: int  # 2D toy (chapter 2)
    toy_samples: int
    mc_samples: int  # Monte Carlo draws in chapter 1
    distill_iters: int  # iterations per ladder stage
    seeds: tuple = (0,)

    def to_dict(self) -> dict:
        return asdict(self)


PROFILES = {
    "smoke": Profile(
        name="smoke", device="cpu", dataset="digits", model_preset="smoke", train_steps=30, batch_size=32,
        n_eval=128, teacher_steps=8, toy_train_steps=100, toy_samples=256, mc_samples=20_000,
        distill_iters=5,
    ),
    "cpu": Profile(
        name="cpu", device="cpu", dataset="digits", model_preset="digits-tiny", train_steps=4000, batch_size=128,
        n_eval=1797, teacher_steps=100, toy_train_steps=3000, toy_samples=2000, mc_samples=200_000,
        distill_iters=500,
    ),
    "gpu": Profile(
        name="gpu", device="cuda", dataset="mnist5k", model_preset="mnist-small", train_steps=40_000, batch_size=256,
        n_eval=5000, teacher_steps=100, toy_train_steps=10_000, toy_samples=10_000, mc_samples=1_000_000,
        distill_iters=4000, seeds=(0, 1, 2),
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
