"""What a generated image set is scored on, against held-out real data: one :class:`Scores`.

* ``fid``: the Frechet distance of feature-net features (torchmetrics
  ``FrechetInceptionDistance(feature=<module>)``), labelled ``FID-<dataset>``.  Biased upwards at
  small ``n``: compare sets only at equal ``n`` (the floor is computed at the generated ``n``).
* ``kid`` / ``kid_std``: the kernel distance of the same features (torchmetrics
  ``KernelInceptionDistance``: unbiased MMD^2 with the cubic polynomial kernel, averaged over
  random subsets; ``kid_std`` its spread over subsets).  Unbiased at small ``n``.
* ``precision`` / ``recall``: k-nearest-neighbour manifolds of the features (Kynkaanniemi et al.
  2019, via the ``prdc`` package, ``k = 5``): the fraction of generated samples inside the real
  manifold, and of real samples inside the generated one.
* ``accuracy``: the feature net's class accuracy against the intended labels.
* ``memorisation_ratio``: median nearest-neighbour pixel distance from the generated images to the
  training set, over the same for unseen real images: about 1 for a generator that does not copy,
  0 for one that returns training images.
* ``n_nonfinite`` (images with a NaN/inf pixel) and ``out_of_range`` (fraction of finite pixels
  outside ``[-1, 1]``) are counted, not raised; images are made finite (non-finite pixels set to 0)
  and clamped to ``[-1, 1]`` before scoring.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["Scores", "QualityReference", "sanitise", "memorisation_ratio", "paired_rmse", "PRDC_K"]

PRDC_K = 5
KID_SUBSETS = 100


@dataclass(frozen=True)
class Scores:
    """The scores of one image set (see the module docstring); ``None`` where not computed."""

    fid: float
    accuracy: float | None
    metric_name: str
    n: int
    kid: float | None = None
    kid_std: float | None = None
    precision: float | None = None
    recall: float | None = None
    memorisation_ratio: float | None = None
    n_nonfinite: int = 0
    out_of_range: float = 0.0

    def to_dict(self) -> dict:
        """The scores as a dict."""
        return dataclasses.asdict(self)


def sanitise(images: torch.Tensor) -> tuple[torch.Tensor, int, float]:
    """``(clean, n_nonfinite, out_of_range)``: non-finite pixels set to 0, then clamped to [-1, 1]."""
    x = images.detach().float()
    finite = torch.isfinite(x)
    n_bad = int((~finite.flatten(1).all(1)).sum())
    n_finite = int(finite.sum())
    outside = float(((x.abs() > 1) & finite).sum()) / max(n_finite, 1)
    return torch.where(finite, x, torch.zeros_like(x)).clamp(-1, 1), n_bad, outside


class _Features(nn.Module):
    """Adapter for torchmetrics: ``forward(images) -> (N, d)`` and a ``num_features`` attribute."""

    def __init__(self, net: nn.Module):
        super().__init__()
        if not isinstance(getattr(net, "num_features", None), int):
            raise ValueError("feature_net must have an int attribute num_features")
        self.net = copy.deepcopy(net).eval().requires_grad_(False)
        self.num_features = net.num_features

    def forward(self, x):
        return self.net.features(x) if hasattr(self.net, "features") else self.net(x)


def _nn_dist(a: torch.Tensor, b: torch.Tensor, exclude_self: bool = False, chunk: int = 1024) -> torch.Tensor:
    """Distance from each row of ``a`` to its nearest row of ``b`` (flattened, Euclidean)."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    out = []
    for i in range(0, a.shape[0], chunk):
        d = torch.cdist(a[i : i + chunk], b)
        if exclude_self:
            d[torch.arange(d.shape[0]), torch.arange(i, i + d.shape[0])] = float("inf")
        out.append(d.min(1).values)
    return torch.cat(out)


def memorisation_ratio(images: torch.Tensor, train: torch.Tensor, unseen: torch.Tensor) -> float:
    """Median NN distance generated -> train over median NN distance unseen real -> train (pixels)."""
    return float(_nn_dist(images, train).median() / _nn_dist(unseen, train).median())


def paired_rmse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image RMSE between two image sets drawn from the same latents, ``(N,)`` float64.

    The paired fidelity of a student to its teacher: what endpoint distillation optimises, free of
    feature-net noise.
    """
    if a.shape != b.shape:
        raise ValueError(f"paired sets must have one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return (a.double() - b.double()).flatten(1).pow(2).mean(1).sqrt()


class QualityReference:
    """Features of the reference set computed once; :meth:`score` scores a generated set against it.

    ``train`` and ``unseen`` (pixel tensors) feed the memorisation ratio; ``classify`` (images,
    labels) -> accuracy is optional.
    """

    def __init__(
        self,
        reference: torch.Tensor,
        feature_net: nn.Module,
        metric_name: str,
        train: torch.Tensor,
        unseen: torch.Tensor,
        batch_size: int = 500,
        device="cpu",
    ):
        from torchmetrics.image.fid import FrechetInceptionDistance

        self.device, self.batch_size, self.metric_name = torch.device(device), batch_size, metric_name
        self.image_shape = tuple(reference.shape[1:])
        self.features = _Features(feature_net).to(self.device)
        self.fid = FrechetInceptionDistance(feature=self.features, reset_real_features=False).to(self.device)
        self.train, self.unseen = train.float(), unseen.float()
        self._unseen_nn = float(_nn_dist(self.unseen, self.train).median())
        self.ref_features = self._feats(reference)
        self._update_fid(reference, real=True)

    @torch.no_grad()
    def _update_fid(self, images: torch.Tensor, real: bool) -> None:
        for i in range(0, images.shape[0], self.batch_size):
            self.fid.update(images[i : i + self.batch_size].to(self.device, torch.float32), real=real)

    @torch.no_grad()
    def _feats(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.features(images[i : i + self.batch_size].to(self.device, torch.float32)).double()
                for i in range(0, images.shape[0], self.batch_size)
            ]
        )

    def _kid(self, fake_feats: torch.Tensor) -> tuple[float, float]:
        # torchmetrics' poly_mmd on subsets drawn from a fixed generator (KernelInceptionDistance
        # draws them from the global RNG: the same set would score differently call to call)
        from torchmetrics.image.kid import poly_mmd

        m = min(len(fake_feats), len(self.ref_features)) // 2
        g = torch.Generator().manual_seed(0)  # fixed subsets: the same set always scores the same
        vals = []
        for _ in range(KID_SUBSETS):
            r = self.ref_features[torch.randperm(len(self.ref_features), generator=g)[:m]]
            f = fake_feats[torch.randperm(len(fake_feats), generator=g)[:m]]
            vals.append(float(poly_mmd(f, r, degree=3, gamma=None, coef=1.0)))
        v = torch.tensor(vals, dtype=torch.float64)
        return float(v.mean()), float(v.std())

    def _precision_recall(self, fake_feats: torch.Tensor) -> tuple[float, float]:
        from prdc import compute_prdc

        k = min(PRDC_K, len(fake_feats) - 2, len(self.ref_features) - 2)  # prdc needs k + 1 < n
        with contextlib.redirect_stdout(io.StringIO()):  # prdc prints the set sizes
            out = compute_prdc(self.ref_features.cpu().numpy(), fake_feats.cpu().numpy(), nearest_k=k)
        return float(out["precision"]), float(out["recall"])

    def score(self, images: torch.Tensor, accuracy: float | None = None) -> Scores:
        """All scores of ``images`` (``accuracy`` passed through from the caller's classifier)."""
        if (
            not isinstance(images, torch.Tensor)
            or images.ndim != 4
            or tuple(images.shape[1:]) != self.image_shape
        ):
            raise ValueError(
                f"images must have shape (N, {', '.join(map(str, self.image_shape))}), "
                f"got {tuple(getattr(images, 'shape', ()))}"
            )
        if images.shape[0] < 4:
            raise ValueError(f"scoring needs at least 4 images, got {images.shape[0]}")
        clean, n_bad, outside = sanitise(images)
        self.fid.reset()
        self._update_fid(clean, real=False)
        fid = float(self.fid.compute())
        feats = self._feats(clean)
        kid, kid_std = self._kid(feats)
        precision, recall = self._precision_recall(feats)
        mem = float(_nn_dist(clean, self.train).median()) / self._unseen_nn
        return Scores(
            fid=fid,
            accuracy=accuracy,
            metric_name=self.metric_name,
            n=int(images.shape[0]),
            kid=kid,
            kid_std=kid_std,
            precision=precision,
            recall=recall,
            memorisation_ratio=mem,
            n_nonfinite=n_bad,
            out_of_range=outside,
        )
