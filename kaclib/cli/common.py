"""What the commands share.

The device, the profile, reading a run's config, and the checks that keep outputs off a run's files
and non-finite images off disk.
"""

from __future__ import annotations

import os
from pathlib import Path

from .. import runs
from .parser import CLIError


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise CLIError(f"--device: not a torch device: {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {name}: CUDA is not available here")
    return str(dev)


def _profile(name: str | None):
    from ..profiles import get_profile

    return get_profile(name)


def _read_run(run_dir: str) -> dict:
    p = runs.check_run_path(run_dir)
    if not p.is_dir():
        raise CLIError(f"--run-dir {run_dir}: no such directory")
    cfg = runs.read_config(p)
    if "model" not in cfg or "path" not in cfg:
        raise CLIError(
            f"{run_dir} is not a model run (its config.json lacks 'model' or 'path'); "
            "for a distillation ladder pass one of its stage-* directories"
        )
    return cfg


def _w_tag(w) -> str:
    return "none" if w is None else f"{w:g}"


def _same_path(a: Path, b: Path) -> bool:
    return os.path.abspath(a) == os.path.abspath(b)


def _refuse_inside_run(out: Path, allowed: Path | None = None) -> None:
    """``--out`` may not lie inside a run directory (its inputs), except under ``allowed``."""
    root = runs.find_run_root(out.parent)
    if root is None:
        return
    if allowed is not None and os.path.abspath(out).startswith(os.path.abspath(allowed) + os.sep):
        return
    raise CLIError(
        f"--out {out}: lies inside the run directory {root}: refusing to write over a run's files "
        "(leave --out out for the default, or write outside run directories)"
    )


def _check_images(images, what: str) -> None:
    import torch

    if not bool(torch.isfinite(images).all()):
        raise CLIError(
            f"{what} gave non-finite images (NaN or inf): nothing was written "
            "(a guidance weight too large, or a damaged model?)"
        )
