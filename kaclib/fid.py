"""Frechet distances between image sets: on a given feature net, and the real Inception FID.

:class:`FIDReference` keeps the statistics of a real set for scoring many generated sets,
:func:`frechet_distance` scores one pair, and :func:`inception_fid` computes the Inception FID when
its weights file is available locally (:data:`INCEPTION_ENV`).  The feature net and its training
are in :mod:`kaclib.metrics`.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import torch
from torch import nn

from .sample_quality import _Features

__all__ = ["FIDReference", "INCEPTION_ENV", "frechet_distance", "inception_fid"]


def _check_images(images: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(f"{name} must be a tensor of shape (N, C, H, W)")
    if images.shape[0] < 2:
        raise ValueError(f"{name}: FID needs at least 2 images, got {images.shape[0]}")
    if not torch.isfinite(images).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    return images


class FIDReference:
    """Real-set statistics computed once; ``score(fake)`` is the FID of each fake set against them.

    A torchmetrics ``FrechetInceptionDistance(feature=<feature net>, reset_real_features=False)``
    keeps the real sums across ``reset()``; a copy of ``feature_net`` is used (never moved).
    """

    def __init__(self, real_images: torch.Tensor, feature_net: nn.Module, batch_size: int = 500, device=None):
        from torchmetrics.image.fid import FrechetInceptionDistance

        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        real_images = _check_images(real_images, "real_images")
        if device is None:
            params = list(feature_net.parameters())
            device = params[0].device if params else real_images.device
        self.device, self.batch_size = torch.device(device), batch_size
        self.image_shape = tuple(real_images.shape[1:])
        self.num_real = real_images.shape[0]
        self.metric = FrechetInceptionDistance(feature=_Features(feature_net), reset_real_features=False).to(
            self.device
        )
        self._update(real_images, real=True)

    @torch.no_grad()
    def _update(self, images: torch.Tensor, real: bool) -> None:
        for i in range(0, images.shape[0], self.batch_size):
            self.metric.update(images[i : i + self.batch_size].to(self.device, torch.float32), real=real)

    def score(self, fake_images: torch.Tensor) -> float:
        """FID between the reference set and ``fake_images`` (same image shape, in [-1, 1])."""
        fake_images = _check_images(fake_images, "fake_images")
        if tuple(fake_images.shape[1:]) != self.image_shape:
            raise ValueError(
                f"fake_images have shape {tuple(fake_images.shape[1:])}, the real ones {self.image_shape}"
            )
        self.metric.reset()
        self._update(fake_images, real=False)
        return float(self.metric.compute())


def frechet_distance(
    real_images: torch.Tensor,
    fake_images: torch.Tensor,
    feature_net: nn.Module,
    batch_size: int = 500,
    device=None,
) -> float:
    """FID between two image sets on ``feature_net``'s features (one-off :class:`FIDReference`)."""
    return FIDReference(real_images, feature_net, batch_size=batch_size, device=device).score(fake_images)


INCEPTION_ENV = "KACLIB_INCEPTION_WEIGHTS"


def _to_uint8_rgb(x: torch.Tensor) -> torch.Tensor:
    """``[-1, 1]`` floats to ``uint8`` in ``[0, 255]``, grey images repeated to 3 channels."""
    x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def inception_fid(
    real: torch.Tensor,
    fake: torch.Tensor,
    weights_path: str | os.PathLike | None = None,
    batch_size: int = 100,
    device=None,
) -> float:
    """Standard Inception-v3 FID (2048-d pool features), comparable with published numbers.

    Needs the FID Inception weights (``pt_inception-2015-12-05-6726825d.pth``) as a local file:
    ``weights_path`` or ``$KACLIB_INCEPTION_WEIGHTS``; they cannot be downloaded offline.  Uses
    torchmetrics' ``FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=...)``
    (which needs torch-fidelity).  Images in ``[-1, 1]`` are quantised to uint8 as usual.
    """
    path = weights_path if weights_path is not None else os.environ.get(INCEPTION_ENV)
    if path is None or not Path(path).expanduser().is_file():
        where = f"no file at {Path(path).expanduser()}" if path is not None else f"{INCEPTION_ENV} is not set"
        raise FileNotFoundError(
            f"Inception weights are unavailable offline ({where}): download "
            "pt_inception-2015-12-05-6726825d.pth (torch-fidelity's FID Inception) elsewhere and pass "
            f"weights_path= or set {INCEPTION_ENV} to its path; otherwise use the feature-net FID "
            "(get_feature_net / frechet_distance)"
        )
    from torchmetrics.image.fid import FrechetInceptionDistance

    if (
        "feature_extractor_weights_path"
        not in inspect.signature(FrechetInceptionDistance.__init__).parameters
    ):
        raise ImportError(
            "this torchmetrics has no feature_extractor_weights_path: install torchmetrics>=1.4"
        )
    try:
        import torch_fidelity  # noqa: F401
    except ImportError as e:
        raise ImportError("inception_fid needs torch-fidelity (pip install torch-fidelity)") from e
    real, fake = _check_images(real, "real"), _check_images(fake, "fake")
    device = torch.device(device or "cpu")
    metric = FrechetInceptionDistance(
        feature=2048, feature_extractor_weights_path=str(Path(path).expanduser())
    ).to(device)
    with torch.no_grad():
        for images, is_real in ((real, True), (fake, False)):
            for i in range(0, images.shape[0], batch_size):
                metric.update(_to_uint8_rgb(images[i : i + batch_size]).to(device), real=is_real)
    return float(metric.compute())
