"""The book's run profiles: the ``smoke``, ``cpu`` and ``gpu`` recipes of :mod:`kaclib.recipe`.

* ``smoke``: seconds per chapter; what ``pytest --nbval`` runs.
* ``cpu``: the default without a GPU; a real (small) result in minutes on a 2-core machine.
* ``gpu``: the default when CUDA is present; larger settings for real hardware.

The profile is chosen by the ``KACLIB_PROFILE`` environment variable, else ``gpu`` when CUDA is
available, else ``cpu``.  A profile is a :class:`kaclib.recipe.Recipe` (``Profile`` is its
name here): ``profile.teacher.train_steps``, ``profile.path.a``, ``profile.sampling.steps``,
``profile.evaluation.n``, ...; the paper-scale recipes live beside them in
:data:`kaclib.recipe.RECIPES`.
"""

from __future__ import annotations

from .recipe import BOOK_RECIPES, RECIPES, Recipe, current_recipe_name, get_recipe

__all__ = ["Profile", "PROFILES", "get_profile", "current_profile_name"]

Profile = Recipe
PROFILES = {name: RECIPES[name] for name in BOOK_RECIPES}
current_profile_name = current_recipe_name


def get_profile(name: str | None = None) -> Recipe:
    """The named book profile (default: :func:`current_profile_name`): a :class:`~kaclib.recipe.Recipe`."""
    name = name or current_profile_name()
    if name not in PROFILES:
        raise ValueError(f"profile must be one of {sorted(PROFILES)}, got {name!r}")
    return get_recipe(name)
