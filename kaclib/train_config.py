"""The configuration of a teacher run.

It holds :class:`TrainConfig` (frozen, JSON round trip, validated with one-line errors), the fields
that may change on resume, and the resolution of a model preset against a data set.
:mod:`kaclib.train` runs it (and re-exports every name here).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from . import accel as _accel
from .accel import AccelConfig
from .configs import JSONConfig
from .kac import check_finite_param
from .paths import PathConfig

__all__ = ["MAX_BATCH", "MAX_STEPS", "MUTABLE_FIELDS", "TrainConfig", "resolve_model_config"]

MUTABLE_FIELDS = ("steps", "checkpoint_every", "log_every") + tuple(
    f"accel.{k}" for k in _accel.MUTABLE_ON_RESUME
)
"""Config fields that may change when a run is resumed (extending ``steps`` continues a run;
channels-last and compile change only layout and kernels, see :mod:`kaclib.accel`)."""

MAX_STEPS = 10**9
"""Largest ``steps`` accepted (a larger count is a typo, and its loss buffer would not fit in memory)."""
MAX_BATCH = 16384
"""Largest ``batch_size`` accepted: a batch lives in memory with the network's activations for it
(about 0.1-1 MB per 8x8-32x32 image for the presets here, so 16384 images already need several GB)."""


# =============================================================================== configuration


def _check_int(name: str, value, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(
            f"{name} must be an int <= {maximum}, got {value!r} (refused: an absurd value that "
            "would exhaust memory or never finish)"
        )
    return value


def _check_prob(name: str, value, upper_open: bool = False) -> float:
    v = check_finite_param(name, value, nonneg=True)
    if v > 1 or (upper_open and v == 1):
        raise ValueError(f"{name} must lie in [0, 1{')' if upper_open else ']'}, got {value!r}")
    return v


def _check_clip(value) -> float | None:
    if value is None:
        return None
    return check_finite_param("grad_clip", value, positive=True)


@dataclass(frozen=True)
class TrainConfig(JSONConfig):
    """Everything that determines a training run (JSON-serialisable, saved as ``config.json``).

    ``model``: a full UNet config dict, or ``{"preset": name, **overrides}`` (resolved by
    :meth:`resolved` to the full :class:`kaclib.models.UNetConfig` dict that is saved).
    ``path``: a :class:`kaclib.paths.PathConfig` (or its dict, ``{"kind": "kac", "a", "c", "f",
    "g", "T"}``, ``{"kind": "gaussian"}``, ...), kept as the one frozen value and saved in its
    ``config()`` form.
    ``batch_size`` is the global batch (split across ranks).  ``grad_clip=None`` disables clipping.
    ``seed`` drives initialisation, data order and noise; ``data_seed`` the data set's seeded
    train/val split (``load_dataset(..., seed=data_seed)``).  ``checkpoint_every=0`` checkpoints only
    at the end.  ``accel``: the accelerator switches (:class:`kaclib.accel.AccelConfig`; the
    default is bf16 + channels-last + fused Adam on CUDA, plain fp32 on the CPU); :func:`train`
    records them resolved for its device unless that is plain fp32 (a ``config.json`` without
    ``accel`` ran in fp32, as every run before the field), and a resumed run keeps its arithmetic
    (an fp32 run resumes only in fp32).  :meth:`to_dict` leaves the default ``accel`` out, so
    configs that do not touch it serialise as before the field existed.
    """

    dataset: str = "digits"
    model: dict = field(default_factory=lambda: {"preset": "digits-tiny"})
    path: PathConfig = field(default_factory=PathConfig)
    p_uncond: float = 0.1
    lr: float = 5e-4
    batch_size: int = 128
    steps: int = 4000
    grad_clip: float | None = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    checkpoint_every: int = 1000
    log_every: int = 100
    data_seed: int = 0
    accel: AccelConfig = field(default_factory=AccelConfig)

    def __post_init__(self):
        object.__setattr__(self, "accel", AccelConfig.from_dict(self.accel))
        if not isinstance(self.dataset, str) or not self.dataset:
            raise ValueError(f"dataset must be a non-empty string, got {self.dataset!r}")
        if not isinstance(self.model, dict):
            raise ValueError(
                f"model must be a dict (UNet config or {{'preset': name, ...}}), got {self.model!r}"
            )
        object.__setattr__(self, "path", PathConfig.from_dict(self.path))
        object.__setattr__(self, "p_uncond", _check_prob("p_uncond", self.p_uncond))
        object.__setattr__(self, "lr", check_finite_param("lr", self.lr, positive=True))
        _check_int("batch_size", self.batch_size, 1, MAX_BATCH)
        _check_int("steps", self.steps, 0, MAX_STEPS)
        object.__setattr__(self, "grad_clip", _check_clip(self.grad_clip))
        object.__setattr__(self, "ema_decay", _check_prob("ema_decay", self.ema_decay, upper_open=True))
        _check_int("seed", self.seed, 0)
        _check_int("checkpoint_every", self.checkpoint_every, 0)
        _check_int("log_every", self.log_every, 1)
        _check_int("data_seed", self.data_seed, 0)

    def resolved(self) -> "TrainConfig":
        """The same config with ``model`` as a full UNet config dict (``path`` is always full)."""
        return self.replace(model=resolve_model_config(self.model, self.dataset))


def resolve_model_config(model: dict, dataset: str | None = None) -> dict:
    """Full ``UNetConfig`` dict from ``{"preset": name, **overrides}`` or a (partial) config dict.

    When ``dataset`` names an entry of :data:`kaclib.data.DATASETS`, the model's input shape and
    class count are checked against it.
    """
    from .models import UNetConfig, get_preset

    model = dict(model)
    if "preset" in model:
        cfg = get_preset(model.pop("preset"), **model)
    else:
        cfg = UNetConfig.from_dict(model)
    out = json.loads(json.dumps(dataclasses.asdict(cfg)))
    if dataset is not None:
        _check_model_matches_dataset(out, dataset)
    return out


def _check_model_matches_dataset(model: dict, dataset: str) -> None:
    from .data import DATASETS

    info = DATASETS.get(dataset)
    if info is None:
        raise ValueError(f"unknown dataset {dataset!r}; known: {sorted(DATASETS)}")
    c, h, w = info.image_shape
    checks = {"in_channels": c, "image_size": h, "num_classes": info.num_classes}
    bad = [
        f"model.{k} = {model[k]!r} but {dataset} has {v!r}"
        for k, v in checks.items()
        if k in model and model[k] != v
    ]
    if bad:
        raise ValueError("model config does not match the data set: " + "; ".join(bad))
