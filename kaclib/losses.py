"""Training losses as callables (in the manner of EDM's ``training/loss.py``).

:class:`FlowMatchingLoss` is the teacher's objective; the distillation losses live beside their
stage loop (:class:`kaclib.distill.EndpointLoss`, and the few-step methods' losses in
:mod:`kaclib.fewstep`).  A loss owns every random draw of its step from the generator it is given,
so a training step replays bit for bit from its seed; the loops that call them (teacher training,
distillation stages) share their step, seeding, logging and checkpoints in :mod:`kaclib.loop`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from . import accel as _accel

__all__ = ["FlowMatchingLoss"]


@dataclass(frozen=True)
class FlowMatchingLoss:
    """Conditional flow matching on a path (Lipman et al. 2023; the Kac version: DistillKac, eq. 3).

    For data ``x0`` with labels ``y``: ``t ~ U[0, T)``, ``(x_t, target) = path.sample(x0, t)`` (the
    conditional velocity as target), each label replaced by the null class ``num_classes`` with
    probability ``p_uncond`` (classifier-free guidance training), and

        loss = mean || v_theta(x_t, t, y) - target ||^2

    in the data's dtype (the forward pass may run in bf16 under ``acc``).  The draws come from
    ``generator`` in this order: ``t``, the path's noise, the label drop.
    """

    path: object
    p_uncond: float = 0.1
    num_classes: int | None = None

    def __call__(
        self, net: nn.Module, x0: torch.Tensor, y: torch.Tensor | None, generator: torch.Generator, acc=None
    ) -> torch.Tensor:
        """The loss of one training step on the batch ``x0`` (labels ``y``), drawing from ``generator``."""
        b, device = x0.shape[0], x0.device
        t = torch.rand(b, generator=generator, device=device, dtype=x0.dtype) * float(self.path.T)
        ps = self.path.sample(x0, t, generator=generator)
        if y is not None:
            drop = torch.rand(b, generator=generator, device=device) < self.p_uncond
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)
        with _accel.autocast(device, acc):  # bf16 forward when asked; the loss in the data's dtype
            pred = net(_accel.format_input(ps.x_t, acc), t, y)
        return torch.mean((pred.to(ps.target.dtype) - ps.target) ** 2)
