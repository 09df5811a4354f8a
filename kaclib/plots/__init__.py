"""Figures of The Kac Flow Book, and how they are displayed, split by topic.

* :mod:`.common`: colours, :func:`style`, :func:`show` / :func:`to_html` (static HTML in the book
  build, plotly's own display elsewhere), the static slider builders and HTML tables.
* :mod:`.kac_law`: chapter 1 (the Kac process, its law, the telegraph PDE, the diffusion limit).
* :mod:`.bounded_velocities`: chapter 2 (conditional velocities and their bounds, the 2D toy).
* :mod:`.images`: image grids and sliders over them (chapters 3 to 6).
* :mod:`.guidance`: chapter 3 (the guided field and the guidance weight).
* :mod:`.teacher_and_ladder`: chapters 4 to 6 (the teacher's training and the distillation ladder).
* :mod:`.trajectories`: chapter 7 (end points against whole trajectories).

Every builder returns a ``plotly.graph_objects.Figure``; none of them trains or samples a model
(the chapters pass in what they computed).  Every public name is re-exported here, so
``plots.show(...)`` and ``from kaclib.plots import image_tile`` keep working.
"""

from __future__ import annotations

from . import bounded_velocities, common, guidance, images, kac_law, teacher_and_ladder, trajectories
from .bounded_velocities import *  # noqa: F403
from .common import *  # noqa: F403
from .guidance import *  # noqa: F403
from .images import *  # noqa: F403
from .kac_law import *  # noqa: F403
from .teacher_and_ladder import *  # noqa: F403
from .trajectories import *  # noqa: F403

__all__ = (
    common.__all__
    + kac_law.__all__
    + bounded_velocities.__all__
    + images.__all__
    + guidance.__all__
    + teacher_and_ladder.__all__
    + trajectories.__all__
)
