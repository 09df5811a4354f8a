"""The scoring kit of a data set on the held-out protocol: :class:`Evaluator`.

Built once per data set (feature net, reference statistics, the unseen real set of the floor);
:func:`kaclib.evaluation.evaluate_run` and the benchmarks score generated sets with it.
"""

from __future__ import annotations

import torch

__all__ = ["Evaluator"]


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


class Evaluator:
    """A data set's scoring kit, built once, on the held-out protocol of :mod:`kaclib.data`.

    * the feature net learns from the ``feature`` split (:func:`kaclib.metrics.get_feature_net`);
    * the reference statistics come from the ``ref`` split;
    * the ``test`` split is the unseen real set beside the reference: :meth:`floor` scores it
      exactly like a generated set, at the same ``n`` and class balance;
    * the memorisation ratio compares nearest-neighbour distances to the ``train`` split.

    No generator, feature net or reference ever sees another's images.  ``score(images, labels)``
    returns :class:`~kaclib.sample_quality.Scores`.  ``root`` / ``cache_dir`` as in
    :func:`kaclib.data.load_dataset` and :func:`kaclib.metrics.get_feature_net`.
    """

    def __init__(
        self, dataset: str, device="cpu", root=None, cache_dir=None, seed: int = 0, batch_size: int = 500
    ):
        from .data import DATASETS, load_dataset
        from .metrics import get_feature_net, metric_name
        from .sample_quality import QualityReference

        if dataset not in DATASETS:
            raise ValueError(f"unknown dataset {dataset!r}; known: {sorted(DATASETS)}")
        self.dataset = dataset
        self.device = torch.device(device)
        self.root, self.batch_size = root, batch_size
        self.metric_name = metric_name(dataset)
        info = get_feature_net(dataset, cache_dir=cache_dir, seed=seed, device=self.device, root=root)
        self.feature_net = info.net
        self.feature_accuracy = info.accuracy
        ref = load_dataset(dataset, "ref", root=root)
        self.test = load_dataset(dataset, "test", root=root)
        self.train = load_dataset(dataset, "train", root=root)
        self.n_ref = ref.images.shape[0]
        self.image_shape = tuple(ref.image_shape)
        self.reference = QualityReference(
            ref.images,
            self.feature_net,
            self.metric_name,
            self.train.images,
            self.test.images,
            batch_size=batch_size,
            device=self.device,
        )
        self._floors: dict = {}

    @property
    def max_n(self) -> int:
        """The largest ``n`` whose floor exists (a class-balanced subset of the ``test`` split)."""
        from .data import max_balanced

        return max_balanced(self.test)

    def score(self, images: torch.Tensor, labels: torch.Tensor | None = None):
        """:class:`~kaclib.sample_quality.Scores` of ``images`` (and class accuracy against ``labels``)."""
        from .metrics import class_accuracy
        from .sample_quality import sanitise

        acc = None
        if labels is not None and isinstance(images, torch.Tensor) and images.ndim == 4:
            acc = class_accuracy(
                sanitise(images)[0].to(self.device), torch.as_tensor(labels).to(self.device), self.feature_net
            )
        return self.reference.score(images, accuracy=acc)

    def floor(self, n: int | None = None, seed: int = 0):
        """The scores of ``n`` unseen real images: what a perfect generator scores.

        :class:`~kaclib.sample_quality.Scores` of ``n`` unseen real images (the ``test`` split,
        labels ``[0, 1, ..., K-1, 0, ...]`` like a generated set): what a perfect generator scores
        at this ``n``.  ``n`` defaults to :attr:`max_n`; ``seed`` picks the subset.
        """
        from .data import balanced_subset

        n = self.max_n if n is None else _check_int("n", n, 4)
        if n > self.max_n:
            raise ValueError(
                f"n = {n} exceeds the {self.max_n} class-balanced unseen real images of {self.dataset}"
            )
        key = (n, seed)
        if key not in self._floors:
            real = balanced_subset(self.test, n, seed=seed)
            self._floors[key] = self.score(real.images, real.labels)
        return self._floors[key]
