"""Classifier-free guidance in velocity space.

A velocity model trained with label dropout (the null class is ``num_classes``) gives both the
conditional field ``v(x, t; y)`` and the unconditional one ``v(x, t) = v(x, t; NULL)``.  The guided
field is::

    v_w(x, t; y) = v(x, t) + w * (v(x, t; y) - v(x, t))  =  (1 - w) v(x, t) + w v(x, t; y)

so ``w = 0`` is unconditional, ``w = 1`` plain conditional and ``w > 1`` guided (the seed notes'
convention).  The other common convention writes ``(1 + w') v(x, t; y) - w' v(x, t)``: the two agree
for ``w' = w - 1`` (so the reported CIFAR-10 optimum ``w = 1.2`` is ``w' = 0.2``).

Bound: if both fields are bounded by ``c`` per coordinate (as the exact Kac conditional velocities
are), the triangle inequality gives ``|v_w| <= (|1 - w| + |w|) c``, i.e. ``c`` for ``0 <= w <= 1``,
``(2w - 1) c`` for ``w >= 1`` and ``(1 - 2w) c`` for ``w < 0``; see :func:`guided_bound`.  The bound
is attained where the two fields sit on opposite wave fronts (``v(x,t;y) = +c``, ``v(x,t) = -c``).
"""

from __future__ import annotations

import math
from typing import Callable, Union

import torch
from torch import nn

from .solvers import passes_per_call  # the protocol a velocity reports its cost by (re-exported)

__all__ = ["GuidedVelocity", "guided_bound", "guided_passes", "passes_per_call", "check_guidance_weight"]

Weight = Union[float, Callable[[torch.Tensor], Union[float, torch.Tensor]]]


def check_guidance_weight(w) -> float:
    """Validate a constant guidance weight: a finite real number (``ValueError`` naming ``w``)."""
    if isinstance(w, bool):
        raise ValueError(f"w must be a real number, got {w!r}")
    try:
        value = float(w)
    except (TypeError, ValueError):
        raise ValueError(f"w must be a real number or a callable w(t), got {w!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"w must be finite, got {w!r}")
    return value


def guided_bound(w: float, c: float) -> float:
    """Per-coordinate bound on the exact guided field ``(1 - w) v_u + w v_c`` when ``|v_u|, |v_c| <= c``.

    ``(|1 - w| + |w|) c``: ``c`` for ``0 <= w <= 1``, ``(2w - 1) c`` for ``w >= 1`` and
    ``(1 - 2w) c`` for ``w < 0`` (extrapolating away from the conditional field).  The bound is
    sharp: it is attained where ``v_c = c sign(w)`` and ``v_u = -c sign(w)`` (for ``w >= 1``).
    """
    w = check_guidance_weight(w)
    try:
        c = float(c)
    except (TypeError, ValueError):
        raise ValueError(f"c must be a real number, got {c!r}") from None
    if not math.isfinite(c) or c < 0:
        raise ValueError(f"c must be finite and >= 0, got {c!r}")
    return (abs(1.0 - w) + abs(w)) * c


def guided_passes(w: torch.Tensor | float) -> int:
    """Network passes per sample of one guided evaluation with weight(s) ``w``.

    Network passes per sample of one guided evaluation with weight(s) ``w``: 1 when every weight
    is 0 or 1 (one field suffices), else 2 (conditional and unconditional).
    """
    if isinstance(w, torch.Tensor):
        return 1 if bool((w == 0).all()) or bool((w == 1).all()) else 2
    return 1 if w in (0.0, 1.0) else 2


class GuidedVelocity(nn.Module):
    """``v_w = v(x, t) + w (v(x, t; y) - v(x, t))`` with the two passes batched into one call.

    Parameters
    ----------
    model:
        Velocity network ``model(x, t, y) -> u`` with ``y`` in ``[0, num_classes]``; label
        ``num_classes`` is the reserved null (unconditional) class.
    w:
        Guidance weight: a finite float, or a callable ``w(t)`` returning a float or a ``(B,)``
        tensor (a schedule over time, or one weight per sample).
    num_classes:
        Number of real classes (the null label's index).

    When ``w`` is 0 (or ``y`` is ``None``) only the unconditional pass runs, when ``w`` is 1 only
    the conditional one; otherwise conditional and unconditional inputs are concatenated along the
    batch and evaluated in ONE network call of batch ``2B`` (2 forward passes per sample).
    """

    def __init__(self, model: nn.Module, w: Weight, num_classes: int):
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.model = model
        self.num_classes = num_classes
        self.w = w if callable(w) else check_guidance_weight(w)

    def extra_repr(self) -> str:
        """``w`` and the number of classes, for ``repr``."""
        return f"w={self.w!r}, num_classes={self.num_classes}"

    # ------------------------------------------------------------------ weights
    def weight(self, t: torch.Tensor) -> float | torch.Tensor:
        """The weight at times ``t`` (a float, or a ``(B,)`` tensor for a per-sample schedule)."""
        if not callable(self.w):
            return self.w
        w = self.w(t)
        if isinstance(w, torch.Tensor):
            if w.ndim > 1 or (w.ndim == 1 and w.shape[0] != t.shape[0]):
                raise ValueError(f"w(t) must return a float or a (B,) tensor, got shape {tuple(w.shape)}")
            if not torch.isfinite(w).all():
                raise ValueError("w(t) must be finite, got NaN or inf")
            return w.to(device=t.device) if w.ndim == 1 else check_guidance_weight(w.item())
        return check_guidance_weight(w)

    def passes_per_call(self, t: torch.Tensor | None = None) -> int:
        """Forward passes per sample of one call at times ``t`` (1 for w in {0, 1}, else 2)."""
        if callable(self.w):
            if t is None:
                raise ValueError("t is needed to count the passes of a time-dependent w")
            return guided_passes(self.weight(t))
        return guided_passes(self.w)

    # ------------------------------------------------------------------ forward
    def _null(self, t: torch.Tensor) -> torch.Tensor:
        return torch.full((t.shape[0],), self.num_classes, dtype=torch.long, device=t.device)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The guided velocity ``v_u + w (v_c - v_u)`` at ``(x, t)`` for labels ``y``."""
        if t.ndim != 1 or t.shape[0] != x.shape[0]:
            raise ValueError(f"t must have shape ({x.shape[0]},), got {tuple(t.shape)}")
        null = self._null(t)
        if y is None:
            return self.model(x, t, null)
        if y.shape != (x.shape[0],):
            raise ValueError(f"y must have shape ({x.shape[0]},), got {tuple(y.shape)}")
        w = self.weight(t)
        passes = guided_passes(w)
        if passes == 1:
            w0 = float(w.reshape(-1)[0]) if isinstance(w, torch.Tensor) else w
            return self.model(x, t, null if w0 == 0.0 else y)
        out = self.model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y.to(null.dtype), null]))
        v_c, v_u = out.chunk(2)
        if isinstance(w, torch.Tensor):
            w = w.to(v_c.dtype).reshape((-1,) + (1,) * (v_c.ndim - 1))
        return v_u + w * (v_c - v_u)
