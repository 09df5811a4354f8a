"""Cached teachers and ladders, named once.

:func:`teacher_config` is a recipe's teacher (:meth:`kaclib.recipe.Recipe.teacher_config`),
:func:`teacher_dir` names its run directory in the artifact cache (by the hash of the resolved
config), :func:`get_teacher` trains it once and returns that directory, and
:func:`ladder_dirs` names a recipe's teacher and its distillation ladder together (the ladder's
directory: :func:`kaclib.distill.ladder_cache_dir`), and :func:`get_ladder` distils (or resumes,
or loads) the cached ladder of a teacher.  The chapters, the benchmarks and the command
line reach cached runs only through these.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["CachedLadder", "get_ladder", "get_teacher", "ladder_dirs", "teacher_config", "teacher_dir"]


def teacher_config(profile=None, path="kac", seed: int | None = None, **changes):
    """The :class:`~kaclib.train.TrainConfig` of a recipe's teacher (``Recipe.teacher_config``).

    ``profile``: a :class:`~kaclib.recipe.Recipe` or its name (default: the current profile).
    ``path``: ``"kac"`` (the recipe's path and head), ``"gaussian"`` (the Gaussian peer, free head)
    or a path config (the recipe's head for a Kac path, else the free head).  ``seed`` defaults to
    the recipe's first seed; ``changes`` replace TrainConfig fields.
    """
    from .recipe import Recipe, get_recipe

    recipe = profile if isinstance(profile, Recipe) else get_recipe(profile)
    return recipe.teacher_config(path=path, seed=seed, **changes)


def teacher_dir(config, root=None) -> Path:
    """Where :func:`get_teacher` keeps (or will keep) the teacher of ``config``.

    Where :func:`get_teacher` keeps (or will keep) the teacher of ``config``; check
    ``(teacher_dir(cfg) / "config.json").exists()`` to know whether it is trained already.
    """
    from .artifacts import cache_root, config_hash
    from .train import TrainConfig

    if not isinstance(config, TrainConfig):
        raise ValueError(f"config must be a TrainConfig, got {type(config).__name__}")
    root = Path(root) if root is not None else cache_root()
    return root / f"teacher-{config_hash(config.resolved().to_dict())}"


def get_teacher(config, device=None, progress: bool = True, root=None, data_root=None) -> Path:
    """Run directory of a trained teacher for ``config`` (a TrainConfig): trained once, then cached.

    The directory is ``<cache>/teacher-<hash>/`` with ``<hash>`` the hash of the *resolved* config
    (full UNet config and path), via :func:`kaclib.artifacts.load_or_compute`: an interrupted
    training leaves nothing behind, a changed config never reuses a stale teacher.  Load it with
    :func:`kaclib.train.load_run`.  ``root`` overrides the cache root (default
    :func:`kaclib.artifacts.cache_root`).  Example::

        run_dir = get_teacher(teacher_config("cpu"))
        teacher = load_run(run_dir)
    """
    from .artifacts import load_or_compute
    from .train import TrainConfig, train

    if not isinstance(config, TrainConfig):
        raise ValueError(f"config must be a TrainConfig, got {type(config).__name__}")
    resolved = config.resolved()

    def compute(tmp: Path) -> None:
        train(resolved, tmp, device=device, progress=progress, data_root=data_root)

    return load_or_compute("teacher", resolved.to_dict(), compute, root=root)


@dataclass(frozen=True)
class CachedLadder:
    """Where a recipe's teacher on one path and its ladder live in the cache.

    ``teacher``: the teacher's run directory; ``ladder``: the ladder's; ``config``: the ladder's
    :class:`~kaclib.distill.DistillConfig`; :attr:`complete` says whether every stage is cached.
    """

    teacher: Path
    ladder: Path
    config: object

    @property
    def complete(self) -> bool:
        """Whether the teacher and every stage of the ladder are cached (nothing would be trained)."""
        from .distill import RESULT_FILE, stage_dir_name

        stages = self.config.stages()
        return self.teacher.is_dir() and all(
            (self.ladder / stage_dir_name(s) / RESULT_FILE).is_file() for s in stages
        )


def ladder_dirs(profile=None, path="kac", seed: int | None = None, root=None, **changes) -> CachedLadder:
    """The cached teacher of ``profile`` (a recipe or its name) on ``path`` and its ladder.

    ``seed`` is the teacher's and the ladder's seed (default: the recipe's first); ``changes``
    replace :class:`~kaclib.distill.DistillConfig` fields of :meth:`~kaclib.recipe.Recipe.distill_config`.
    """
    from .distill import ladder_cache_dir
    from .recipe import Recipe, get_recipe

    recipe = profile if isinstance(profile, Recipe) else get_recipe(profile)
    tdir = teacher_dir(recipe.teacher_config(path=path, seed=seed), root=root)
    if seed is not None:
        changes.setdefault("seed", seed)
    cfg = recipe.distill_config(**changes)
    return CachedLadder(teacher=tdir, ladder=ladder_cache_dir(tdir, cfg, root=root), config=cfg)


def get_ladder(teacher_run_dir, config, root=None, progress: bool = False, **kwargs):
    """The cached ladder of ``config`` distilled from the teacher run ``teacher_run_dir``.

    The ladder lives in :func:`kaclib.distill.ladder_cache_dir` (keyed by the teacher directory's
    name and the config); finished stages are loaded, an interrupted one resumes from its
    checkpoint, missing ones are trained.  ``kwargs`` go to :func:`kaclib.distill.run_ladder`
    (``device``, ``gate``, ``data_root``, ...).  Returns its :class:`~kaclib.distill.LadderResult`.
    """
    from .distill import ladder_cache_dir, run_ladder

    run_dir = ladder_cache_dir(teacher_run_dir, config, root=root)
    return run_ladder(teacher_run_dir, run_dir, config, resume=True, progress=progress, **kwargs)
