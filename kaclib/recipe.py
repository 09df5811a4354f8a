"""Recipes: everything a scale decides, as typed nested configs, in one place.

A :class:`Recipe` holds a data set and five frozen parts:

* :class:`TeacherRecipe`: the teacher's network and training (``train_steps``, batch, EMA, ...);
* ``path``: the teacher's probability path, a :class:`kaclib.paths.PathConfig` (the one frozen value
  that reaches the run's ``config.json`` unchanged);
* :class:`SamplingConfig`: how the teacher is sampled (steps, integrator, guidance weight);
* :class:`DistillRecipe`: the distillation ladder and its budget;
* :class:`EvalBudget`: images per estimate and seeds; :class:`BookBudget`: the toy and Monte
  Carlo budgets of chapters 1-2.

:data:`RECIPES` holds five: ``smoke`` (seconds per chapter: what ``pytest --nbval`` runs), ``cpu``
(the default without a GPU), ``gpu`` (the default with CUDA) and the paper presets
``cifar10-paper`` and ``celeba64-paper`` (the settings chapter 6 turns into commands; DistillKac's
quoted numbers stay in :mod:`kaclib.paper`).  :meth:`Recipe.teacher_config` and
:meth:`Recipe.distill_config` turn a recipe into the run configs.  The three book profiles
(:data:`kaclib.profiles.PROFILES`) are the first three, chosen by ``KACLIB_PROFILE``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, replace

from .guidance import check_guidance_weight
from .paths import PathConfig

__all__ = [
    "BookBudget",
    "DistillRecipe",
    "EvalBudget",
    "Recipe",
    "RECIPES",
    "SamplingConfig",
    "TeacherRecipe",
    "current_recipe_name",
    "get_recipe",
]

SOLVER_NAMES = ("euler", "midpoint", "ab2")


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


@dataclass(frozen=True)
class SamplingConfig:
    """How a model is sampled: ``steps`` of ``method`` with guidance weight ``w``.

    ``w`` is in the convention ``v_u + w (v_c - v_u)``: ``1`` the plain conditional field, ``None``
    unconditional.  A distilled student's own defaults (``euler``, its step count, ``w = 1``: the
    teacher's guidance is baked in) are read from its run by :func:`kaclib.train.load_run`.
    """

    steps: int = 100
    method: str = "ab2"
    w: float | None = 1.0

    def __post_init__(self):
        _positive_int("steps", self.steps)
        if self.method not in SOLVER_NAMES:
            raise ValueError(f"method must be one of {SOLVER_NAMES}, got {self.method!r}")
        if self.w is not None:
            object.__setattr__(self, "w", check_guidance_weight(self.w))

    def to_dict(self) -> dict:
        """``{"steps", "method", "w"}``."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TeacherRecipe:
    """The teacher: network preset, head, and the training budget of :class:`kaclib.train.TrainConfig`.

    ``ema_decay``: 0.999 suits long runs; for ~1,000 steps it still holds 0.999^1000 = 37% of the
    initial weights, so the ``cpu`` recipe uses 0.995 (``benchmarks/teacher.py``).  ``p_uncond``:
    label dropout for classifier-free guidance.  ``head``: ``"free"`` or ``"bounded"``
    (:mod:`kaclib.models`; the bounded head is used only on Kac paths).
    """

    model_preset: str
    train_steps: int
    batch_size: int
    lr: float = 5e-4
    ema_decay: float = 0.999
    p_uncond: float = 0.1
    head: str = "free"


@dataclass(frozen=True)
class DistillRecipe:
    """The distillation ladder of a recipe and its budget.

    The distillation ladder: step counts (from the teacher's), iterations per stage, batch, and
    the pool of teacher end points of the single-stage ablation (``pool_size``).
    """

    ladder: tuple = (100, 20, 4, 2, 1)
    iters: int = 500
    batch_size: int = 128
    pool_size: int = 4096


@dataclass(frozen=True)
class EvalBudget:
    """Generated images per estimate (at most the class-balanced held-out images) and seeds."""

    n: int
    seeds: tuple = (0,)


@dataclass(frozen=True)
class BookBudget:
    """Budgets of the chapters' small experiments: the 2D toy (chapter 2), Monte Carlo (chapter 1)."""

    toy_train_steps: int
    toy_samples: int
    mc_samples: int


_MOVED = {
    "device": "needs_cuda",
    "model_preset": "teacher.model_preset",
    "train_steps": "teacher.train_steps",
    "batch_size": "teacher.batch_size (distill.batch_size for distillation)",
    "ema_decay": "teacher.ema_decay",
    "p_uncond": "teacher.p_uncond",
    "head": "teacher.head",
    "kac_a": "path.a",
    "kac_c": "path.c",
    "kac_f": "path.f",
    "kac_g": "path.g",
    "teacher_steps": "sampling.steps",
    "guidance_w": "sampling.w",
    "distill_ladder": "distill.ladder",
    "distill_iters": "distill.iters",
    "n_eval": "evaluation.n",
    "seeds": "evaluation.seeds",
    "toy_train_steps": "book.toy_train_steps",
    "toy_samples": "book.toy_samples",
    "mc_samples": "book.mc_samples",
}


@dataclass(frozen=True)
class Recipe:
    """One scale of the whole pipeline (see the module docstring).

    One scale of the whole pipeline (see the module docstring); ``needs_cuda`` refuses to run
    without a GPU.
    """

    name: str
    dataset: str
    teacher: TeacherRecipe
    path: PathConfig
    sampling: SamplingConfig
    distill: DistillRecipe
    evaluation: EvalBudget
    book: BookBudget
    needs_cuda: bool = False

    def __post_init__(self):
        if self.distill.ladder[0] != self.sampling.steps:
            raise ValueError(
                f"recipe {self.name!r}: the ladder starts at the teacher's sampling steps "
                f"({self.sampling.steps}), got {self.distill.ladder}"
            )

    def __getattr__(self, name):
        if name in _MOVED:
            raise AttributeError(f"Recipe.{name} moved to Recipe.{_MOVED[name]} (kaclib.recipe)")
        raise AttributeError(f"Recipe has no attribute {name!r}")

    def to_dict(self) -> dict:
        """The nested configuration as plain JSON-ready data."""
        d = dataclasses.asdict(self)
        d["path"] = self.path.to_dict()
        return d

    def flat(self) -> dict:
        """``{"teacher.train_steps": 1500, ...}``: one row per setting (the book's table)."""
        out = {}
        for key, value in self.to_dict().items():
            if isinstance(value, dict):
                out.update({f"{key}.{k}": v for k, v in value.items()})
            else:
                out[key] = value
        return out

    def replace(self, **changes) -> "Recipe":
        """The same recipe with top-level parts replaced (``recipe.replace(sampling=...)``)."""
        return replace(self, **changes)

    def teacher_path(self, path="kac") -> tuple[PathConfig, str]:
        """The ``(path config, head)`` of the teacher on ``path``.

        ``(path config, head)`` of the teacher on ``path``: ``"kac"`` (this recipe's path and
        head), ``"gaussian"`` (the Gaussian peer, free head), or a path config / dict (the recipe's
        head for a Kac path, else the free head).
        """
        if path == "kac":
            return self.path, self.teacher.head
        if path == "gaussian":
            return PathConfig(kind="gaussian"), "free"
        if isinstance(path, (dict, PathConfig)):
            cfg = PathConfig.from_dict(path)
            return cfg, (self.teacher.head if cfg.kind == "kac" else "free")
        raise ValueError(f"path must be 'kac', 'gaussian' or a path config dict with a 'kind', got {path!r}")

    def teacher_config(self, path="kac", seed: int | None = None, **changes):
        """The :class:`~kaclib.train.TrainConfig` of this recipe's teacher on ``path``.

        The :class:`~kaclib.train.TrainConfig` of this recipe's teacher on ``path`` (see
        :meth:`teacher_path`); ``seed`` defaults to the first evaluation seed; ``changes`` replace
        TrainConfig fields.
        """
        from .train_config import TrainConfig

        path_cfg, head = self.teacher_path(path)
        t = self.teacher
        cfg = TrainConfig(
            dataset=self.dataset,
            model={"preset": t.model_preset, "head": head},
            path=path_cfg,
            p_uncond=t.p_uncond,
            lr=t.lr,
            batch_size=t.batch_size,
            steps=t.train_steps,
            ema_decay=t.ema_decay,
            seed=self.evaluation.seeds[0] if seed is None else seed,
        )
        return cfg.replace(**changes) if changes else cfg

    def distill_config(self, **changes):
        """The :class:`~kaclib.distill.DistillConfig` of this recipe.

        The :class:`~kaclib.distill.DistillConfig` of this recipe: its ladder, iterations per stage,
        batch, pool size and the teacher's guidance weight; the other fields keep the defaults of
        :class:`~kaclib.distill.DistillConfig` (chosen by measurement, see the book).
        """
        from .distill.config import DistillConfig

        d = self.distill
        cfg = DistillConfig(
            ladder=tuple(d.ladder),
            iters=d.iters,
            w=1.0 if self.sampling.w is None else self.sampling.w,
            batch_size=d.batch_size,
            pool_size=d.pool_size,
        )
        return cfg.replace(**changes) if changes else cfg


def _book(toy_train_steps: int, toy_samples: int, mc_samples: int) -> BookBudget:
    return BookBudget(toy_train_steps=toy_train_steps, toy_samples=toy_samples, mc_samples=mc_samples)


#: The Kac teacher's path of the book's recipes.  Chosen on digits by benchmarks/teacher_search.py
#: (results/teacher_search.json): of (a, c) in {(9, 3), (25, 2)} x g in {t, t2} x head in {free,
#: bounded}, (25, 2, t2, free) had the best 100-step and 4-step AB-2 FID-digits (one seed, 500
#: steps; the eight 100-step FIDs lay within 0.3, the 4-step ones within 0.45: a weak preference).
BOOK_PATH = PathConfig(kind="kac", a=25.0, c=2.0, f="linear", g="t2")

#: DistillKac's reported CIFAR-10 choice (a, c) = (25, 2); whether its clock is g = t or t^2 could
#: not be confirmed, so the paper recipes keep g = t (chapter 6 says so).
PAPER_PATH = PathConfig(kind="kac", a=25.0, c=2.0, f="linear", g="t")

#: The teacher's sampling in the book: 100 AB-2 steps (the paper's) at w = 1.  benchmarks/teacher.py's
#: sweep over w in {0, 1, 1.2, 1.5, 2, 3} found w = 1 best by FID-digits (w = 0 about 8x worse;
#: w > 1 reaches 100% class accuracy at a higher FID), 2 seeds, results/teacher.json.
BOOK_SAMPLING = SamplingConfig(steps=100, method="ab2", w=1.0)


def _paper_recipe(dataset: str, train_steps: int, w: float) -> Recipe:
    """A paper preset.

    What DistillKac does not state (training steps, learning rate, EMA, stage budgets) is kaclib's
    choice, from the DDPM CIFAR-10 recipe (Ho et al. 2020) where one exists; ``w`` is DistillKac's
    guidance weight read in this book's convention (chapter 3).
    """
    return Recipe(
        name=f"{dataset}-paper",
        dataset=dataset,
        teacher=TeacherRecipe(
            model_preset=f"{dataset}-paper",
            train_steps=train_steps,
            batch_size=128,
            lr=2e-4,
            ema_decay=0.9999,
        ),
        path=PAPER_PATH,
        sampling=SamplingConfig(steps=100, method="ab2", w=w),
        distill=DistillRecipe(ladder=(100, 20, 4, 2, 1), iters=20_000, batch_size=128, pool_size=50_000),
        evaluation=EvalBudget(n=50_000),
        book=_book(10_000, 10_000, 1_000_000),
        needs_cuda=True,
    )


RECIPES = {
    "smoke": Recipe(
        name="smoke",
        dataset="digits",
        teacher=TeacherRecipe(model_preset="smoke", train_steps=30, batch_size=32, ema_decay=0.9),
        path=BOOK_PATH,
        sampling=replace(BOOK_SAMPLING, steps=8),
        distill=DistillRecipe(ladder=(8, 4, 2, 1), iters=5, batch_size=32),
        evaluation=EvalBudget(n=128),
        book=_book(100, 256, 20_000),
    ),
    "cpu": Recipe(
        name="cpu",
        dataset="digits",
        teacher=TeacherRecipe(model_preset="digits-tiny", train_steps=1500, batch_size=128, ema_decay=0.995),
        path=BOOK_PATH,
        sampling=BOOK_SAMPLING,
        distill=DistillRecipe(ladder=(100, 20, 4, 2, 1), iters=300, batch_size=128),
        evaluation=EvalBudget(n=300),
        book=_book(3000, 2000, 200_000),
    ),
    "gpu": Recipe(
        name="gpu",
        dataset="mnist5k",
        teacher=TeacherRecipe(model_preset="mnist-small", train_steps=40_000, batch_size=256),
        path=BOOK_PATH,
        sampling=BOOK_SAMPLING,
        distill=DistillRecipe(ladder=(100, 20, 4, 2, 1), iters=4000, batch_size=256),
        evaluation=EvalBudget(n=750, seeds=(0, 1, 2)),
        book=_book(10_000, 10_000, 1_000_000),
        needs_cuda=True,
    ),
    # the paper presets: CIFAR-10 with DistillKac's w = 1.2; CelebA-64 is unconditional here
    "cifar10-paper": _paper_recipe("cifar10", train_steps=800_000, w=1.2),
    "celeba64-paper": _paper_recipe("celeba64", train_steps=500_000, w=1.0),
}

#: the recipes that run the book (``KACLIB_PROFILE``)
BOOK_RECIPES = ("smoke", "cpu", "gpu")
#: the paper-scale recipes (chapter 6's commands)
PAPER_RECIPES = ("cifar10-paper", "celeba64-paper")


def current_recipe_name() -> str:
    """``KACLIB_PROFILE`` if set, else ``gpu`` when CUDA is available, else ``cpu``."""
    name = os.environ.get("KACLIB_PROFILE")
    if name:
        return name
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def get_recipe(name: str | None = None, check_cuda: bool = True) -> Recipe:
    """The named recipe (default: :func:`current_recipe_name`).

    The named recipe (default: :func:`current_recipe_name`); one-line errors for an unknown name
    and, with ``check_cuda``, for a GPU recipe without CUDA.
    """
    name = name or current_recipe_name()
    if name not in RECIPES:
        raise ValueError(f"recipe must be one of {sorted(RECIPES)}, got {name!r}")
    recipe = RECIPES[name]
    if check_cuda and recipe.needs_cuda:
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"recipe {name!r} needs CUDA, which is not available here; use 'cpu' or 'smoke'")
    return recipe
