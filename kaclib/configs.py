"""What the frozen run configs share: the JSON round trip and ``replace``.

The configs are :class:`kaclib.train.TrainConfig`, :class:`kaclib.distill.DistillConfig` and the
few-step methods' configs.  The JSON round trip leaves the default :class:`kaclib.accel.AccelConfig`
out, so that configs serialise as before that field.
"""

from __future__ import annotations

import dataclasses
import json

from .accel import AccelConfig
from .paths import PathConfig

__all__ = ["JSONConfig"]


class JSONConfig:
    """Mixin of a frozen dataclass with an ``accel`` field: ``to_dict`` / ``from_dict`` / ``replace``."""

    def to_dict(self) -> dict:
        """The fields as a JSON-ready dict (paths in ``config()`` form, a default ``accel`` left out)."""
        d = dataclasses.asdict(self)
        for f in dataclasses.fields(self):  # a path config is saved in its config() form
            value = getattr(self, f.name)
            if isinstance(value, PathConfig):
                d[f.name] = value.to_dict()
        d = json.loads(json.dumps(d))
        if getattr(self, "accel", None) == AccelConfig():
            d.pop("accel")
        return d

    @classmethod
    def check_fields(cls, d: dict) -> dict:
        """``d`` unchanged, or a one-line ``ValueError`` naming its unknown fields."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
        return d

    @classmethod
    def from_dict(cls, d: dict):
        """The config from a :meth:`to_dict` dict; unknown fields raise a one-line ``ValueError``."""
        return cls(**cls.check_fields(d))

    def replace(self, **changes):
        """A copy with the given fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)
