"""kaclib: Kac flows, velocity-space guidance and endpoint-only distillation (DistillKac)."""

from .kac import KacProcess
from .paths import DiffusionPath, GaussianPath, KacPath, PathSample, build_path

__all__ = ["KacProcess", "KacPath", "GaussianPath", "DiffusionPath", "PathSample", "build_path"]
__version__ = "0.1.0"
