"""A trained run, loaded, with everything needed to sample it.

:class:`LoadedRun` carries the model with its path, class count, image
shape and sampling defaults, so no caller re-pairs model and path or introspects shapes.

:func:`load_run` opens a run directory (a teacher made by :func:`kaclib.train.train` or a stage of a
distillation ladder) read-only; :func:`run_sampling_defaults` reads a run's sampling defaults.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from . import runs
from .paths import build_path
from .train_config import TrainConfig

__all__ = ["LoadedRun", "load_run", "run_sampling_defaults"]


@dataclass
class LoadedRun:
    """A trained run ready for sampling: the model and everything needed to sample it.

    ``model`` (eval mode, on its device), its ``path`` (the path object), the run's ``config`` (a
    :class:`TrainConfig` for runs made by :func:`train`, else the raw dict), the checkpoint's
    ``step``, ``run_dir``, and ``sampling``: the run's sampling defaults
    (:class:`kaclib.recipe.SamplingConfig`; a distilled student's own steps and sampler, else the
    current recipe's teacher sampling).  :attr:`num_classes`, :attr:`image_shape` and
    :attr:`is_student` come from the saved config, so no caller re-pairs model and path or
    introspects shapes; :meth:`generate` samples with the defaults.
    """

    model: nn.Module
    path: object
    config: TrainConfig | dict
    step: int
    run_dir: Path | None = None
    sampling: object = None
    raw: dict | None = None

    @property
    def model_config(self) -> dict | None:
        """The saved, full UNet config dict (``None`` for a bare model without a UNet config)."""
        if self.raw is not None:
            return self.raw["model"]
        cfg = getattr(self.model, "cfg", None)
        return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else None

    @property
    def num_classes(self) -> int:
        """Real classes of the model (0: unconditional only)."""
        from .evaluation import model_num_classes

        m = self.model_config
        return int(m.get("num_classes", 0)) if m is not None else model_num_classes(self.model)

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        """``(C, H, W)`` of the images the model makes (``None`` when no config says)."""
        m = self.model_config
        if m is None or "image_size" not in m:
            return None
        return (int(m["in_channels"]), int(m["image_size"]), int(m["image_size"]))

    @property
    def dataset(self) -> str | None:
        """The data set the run was trained on (``None`` when its config names none)."""
        return (self.raw or {}).get("dataset")

    @property
    def is_student(self) -> bool:
        """Whether the run is a distilled student (its config has a ``"distilled"`` section)."""
        return isinstance((self.raw or {}).get("distilled"), dict)

    def generate(self, labels, steps: int | None = None, method: str | None = None, w=..., **kwargs):
        """:func:`kaclib.evaluation.generate` with this run's sampling defaults.

        ``labels``: an ``(N,)`` label tensor or a count; ``steps`` / ``method`` / ``w`` default to
        :attr:`sampling`; ``kwargs`` go to :func:`~kaclib.evaluation.generate` (``seed``,
        ``batch_size``, ``device``, ``return_trajectory``, ``progress``, ...).
        """
        from .evaluation import generate

        s = self.sampling
        return generate(
            self.model,
            self.path,
            labels,
            s.steps if steps is None else steps,
            method=s.method if method is None else method,
            w=(s.w if w is ... else w) if self.num_classes > 0 else None,
            num_classes=self.num_classes,
            image_shape=self.image_shape,
            **kwargs,
        )


def run_sampling_defaults(raw: dict, recipe=None):
    """The :class:`kaclib.recipe.SamplingConfig` of a run's config.

    The :class:`kaclib.recipe.SamplingConfig` of a run's config: a distilled student's own
    (``"distilled"``: its steps, sampler and baked-in weight), else ``recipe``'s teacher sampling
    (default: the current recipe's).
    """
    from .recipe import SamplingConfig, get_recipe

    dist = raw.get("distilled")
    if isinstance(dist, dict):
        return SamplingConfig(
            steps=int(dist.get("steps", 1)),
            method=dist.get("sampler", "euler"),
            w=float(dist.get("sample_w", 1.0)),
        )
    return (recipe if recipe is not None else get_recipe(check_cuda=False)).sampling


def load_run(run_dir: str | os.PathLike, ema: bool = True, device="cpu", recipe=None) -> LoadedRun:
    """The run directory's model, path, config and sampling defaults (EMA weights by default).

    Needs ``config.json`` with ``"model"`` (a full UNet config dict) and ``"path"`` entries, as
    written by :func:`train` (distillation runs follow the same layout).  ``recipe`` (a
    :class:`kaclib.recipe.Recipe`, default the current one) gives a teacher's sampling defaults.
    """
    from .models import UNetConfig, build_model

    run_dir = runs.check_run_path(run_dir)
    raw = runs.read_config(run_dir)
    if "model" not in raw or "path" not in raw:
        raise ValueError(f"{run_dir}/{runs.CONFIG_FILE} lacks 'model' or 'path': not a model run")
    name = runs.EMA_FILE if ema else runs.MODEL_FILE
    if not (run_dir / name).is_file() and not (run_dir / runs.PENDING_FILE).is_file():
        raise FileNotFoundError(f"no checkpoint in {run_dir} (missing {name})")
    ckpt = runs.read_checkpoint(run_dir, names=(name,))  # verified, read-only: nothing is recovered
    raw = ckpt.config
    try:
        path = build_path(raw["path"])
        model = build_model(UNetConfig.from_dict(raw["model"]), path=path)
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise runs.RunDirError(f"{run_dir / runs.CONFIG_FILE}: not a usable model config ({e})") from None
    ckpt.load_into(model, name)
    runs.check_finite(model, str(run_dir / name))
    model.to(device).eval()
    try:
        config = TrainConfig.from_dict(raw)
    except (ValueError, TypeError):
        config = raw
    return LoadedRun(
        model=model,
        path=path,
        config=config,
        step=ckpt.step,
        run_dir=run_dir,
        sampling=run_sampling_defaults(raw, recipe),
        raw=raw,
    )
