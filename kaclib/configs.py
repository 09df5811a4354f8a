"""What the frozen run configs share (:class:`kaclib.train.TrainConfig`,
:class:`kaclib.distill.DistillConfig`, the few-step methods' configs): the JSON round trip, with the
default :class:`kaclib.accel.AccelConfig` left out so that configs serialise as before that field,
and ``replace``.
"""

from __future__ import annotations

import dataclasses
import json

from .accel import AccelConfig

__all__ = ["JSONConfig"]


class JSONConfig:
    """Mixin of a frozen dataclass with an ``accel`` field: ``to_dict`` / ``from_dict`` / ``replace``."""

    def to_dict(self) -> dict:
        d = json.loads(json.dumps(dataclasses.asdict(self)))
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
        return cls(**cls.check_fields(d))

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)
