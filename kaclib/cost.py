"""Cost beside NFE: network passes, FLOPs, wall-clock and the training cost of distillation.

NFE counts right-hand-side evaluations; what a sampler costs is the network's work:

* **network passes** per image: ``steps x NFE_PER_STEP[method] x passes per evaluation``
  (:data:`kaclib.solvers.NFE_PER_STEP`; a guided field with ``w`` not in ``{0, 1}`` costs 2 passes
  per evaluation, :meth:`kaclib.guidance.GuidedVelocity.passes_per_call`);
* **FLOPs** per image: network passes x the FLOPs of one forward pass at batch 1, counted by
  ``torch.utils.flop_counter.FlopCounterMode``, which counts 2 FLOPs per multiply-add of matrix
  products, convolutions and attention, and nothing for element-wise operations, normalisations
  and activations (a lower bound that the matrix work dominates);
* **wall-clock** per 1,000 images end to end, latents included (:func:`kaclib.evaluation.generate`,
  :attr:`~kaclib.evaluation.Generated.end_to_end_seconds_per_image`), best of a few repeats;
* :func:`quality_cost_figure`: quality against any of these costs, one line per table row;
* **training cost** of a distilled stage (:func:`distillation_training_cost`): its teacher passes
  (counted by :mod:`kaclib.distill` into each stage's ``result.json``) times the FLOPs of one
  pass, plus ``student iterations x batch x 3 x`` the FLOPs of one pass, against the teacher's own
  training ``steps x batch x 3 x`` FLOPs.

The factor 3 is the usual convention that a training step (forward + backward) costs about three
forward passes (the backward pass about twice the forward).  FLOPs do not depend on the numeric
precision (bf16 autocast changes the time, not the count).
"""

from __future__ import annotations

import inspect
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from .guidance import GuidedVelocity, check_guidance_weight, passes_per_call
from .solvers import nfe_for

__all__ = [
    "TRAIN_STEP_FORWARDS",
    "flops_per_image",
    "SamplingCost",
    "sampling_cost",
    "StageCost",
    "TrainingCost",
    "distillation_training_cost",
    "WallClock",
    "wall_clock_per_1000",
    "COST_AXES",
    "quality_cost_figure",
]

TRAIN_STEP_FORWARDS = 3
"""A training step (forward + backward) counted as 3 forward passes per sample."""


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _image_shape(model, image_shape) -> tuple:
    if image_shape is None:
        cfg = getattr(model, "cfg", None)
        if cfg is None or not hasattr(cfg, "image_size"):
            raise ValueError("image_shape is needed for a model without a UNet config")
        return (int(cfg.in_channels), int(cfg.image_size), int(cfg.image_size))
    shape = tuple(image_shape)
    if not shape or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
        raise ValueError(f"image_shape must be a non-empty tuple of positive ints, got {image_shape!r}")
    return shape


def _takes_time_and_label(model: nn.Module) -> bool:
    """Whether ``model.forward`` takes ``(x, t, y)`` (a velocity model) rather than ``(x)``."""
    try:
        params = [
            p
            for p in inspect.signature(model.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        return True
    return len(params) >= 2


def flops_per_image(model: nn.Module, image_shape=None, passes: int = 1) -> int:
    """FLOPs of ``passes`` forward passes of ``model`` for one image.

    Parameters
    ----------
    model:
        A velocity model ``model(x, t, y)`` (called with ``t = 0.5`` and label 0, or ``y = None``
        for a model without classes) or any module ``model(x)``.
    image_shape:
        ``(C, H, W)`` (or any per-sample shape); default from a UNet's config.
    passes:
        Forward passes counted (the count of one pass at batch 1, times ``passes``).

    Returns
    -------
    int
        ``FlopCounterMode``'s total: 2 per multiply-add of matrix products, convolutions and
        attention (element-wise work is not counted).
    """
    from torch.utils.flop_counter import FlopCounterMode

    from .evaluation import model_num_classes

    _check_int("passes", passes, 0)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    shape = _image_shape(model, image_shape)
    p = next(iter(model.parameters()), None)
    device, dtype = (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)
    x = torch.zeros((1,) + shape, device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            if _takes_time_and_label(model):
                y = torch.zeros(1, dtype=torch.long, device=device) if model_num_classes(model) > 0 else None
                model(x, torch.full((1,), 0.5, device=device, dtype=dtype), y)
            else:
                model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops()) * passes


# =============================================================================== sampling


@dataclass(frozen=True)
class SamplingCost:
    """Cost of drawing one image with ``steps`` of ``method`` at guidance ``w``.

    ``w`` is ``None`` when unconditional; ``nfe`` evaluations, ``passes_per_eval`` (2 for guided
    ``w`` not in {0, 1}), ``network_passes``, ``flops_per_pass`` (one forward pass, batch 1) and
    ``flops_per_image`` (all passes).
    """

    steps: int
    method: str
    w: float | None
    path: str
    nfe: int
    passes_per_eval: int
    network_passes: int
    flops_per_pass: int
    flops_per_image: int

    def to_dict(self) -> dict:
        """The fields as a plain dict."""
        return asdict(self)


def sampling_cost(
    model: nn.Module,
    path,
    steps: int,
    method: str = "euler",
    w: float | None = 1.0,
    num_classes: int | None = None,
    image_shape=None,
) -> SamplingCost:
    """Network passes and FLOPs per image of sampling ``model`` on ``path``.

    ``w`` follows :func:`kaclib.evaluation.generate` (``1``: one conditional pass per evaluation,
    ``0``: one unconditional pass, other values the batched guided field, 2 passes; ``None`` or a
    model without classes: unconditional).  ``num_classes`` defaults to the model's; a distilled
    student is sampled with ``method="euler"``, ``w=1`` (guidance is baked in).
    """
    from .evaluation import model_num_classes

    nfe = nfe_for(method, steps)  # steps x NFE_PER_STEP[method]; validates both
    if w is not None:
        w = check_guidance_weight(w)
    num_classes = (
        model_num_classes(model) if num_classes is None else _check_int("num_classes", num_classes, 0)
    )
    velocity = GuidedVelocity(model, w, num_classes) if (w is not None and num_classes > 0) else model
    per_eval = passes_per_call(velocity)
    per_pass = flops_per_image(model, image_shape)
    kind = path.config().get("kind", type(path).__name__) if hasattr(path, "config") else type(path).__name__
    passes = nfe * per_eval
    return SamplingCost(
        steps=steps,
        method=method,
        w=w if num_classes > 0 else None,
        path=str(kind),
        nfe=nfe,
        passes_per_eval=per_eval,
        network_passes=passes,
        flops_per_pass=per_pass,
        flops_per_image=passes * per_pass,
    )


# =============================================================================== training


@dataclass(frozen=True)
class StageCost:
    """Training cost of one distilled stage (FLOPs; see :func:`distillation_training_cost`)."""

    stage: int
    teacher_steps: int
    student_steps: int
    student_iters: int
    batch_size: int
    teacher_passes: int
    teacher_flops: float
    student_flops: float
    total_flops: float
    ratio_to_teacher_training: float | None

    def to_dict(self) -> dict:
        """The fields as a plain dict."""
        return asdict(self)


@dataclass(frozen=True)
class TrainingCost:
    """Every finished stage of a ladder and the flow teacher's own training cost.

    ``flops_per_pass``: one forward pass of the (shared) architecture at batch 1;
    ``teacher_training_flops``: ``teacher_train_steps x teacher_batch_size x 3 x flops_per_pass``
    (``None`` when the ladder starts from a distilled teacher); ``total_flops`` and ``ratio``: all
    finished stages together.
    """

    ladder_dir: str
    flops_per_pass: int
    teacher_train_steps: int | None
    teacher_batch_size: int | None
    teacher_training_flops: float | None
    stages: tuple
    total_flops: float
    ratio: float | None

    def to_dict(self) -> dict:
        """The fields as a plain dict, ``stages`` as a list of their dicts."""
        d = asdict(self)
        d["stages"] = [s.to_dict() for s in self.stages]
        return d


def _architecture_flops(model_cfg: dict, path_cfg: dict) -> int:
    """FLOPs per pass of the UNet described by a run's config (built, not loaded: weights do not matter)."""
    from .models import UNetConfig, build_model
    from .paths import build_path

    model = build_model(UNetConfig.from_dict(model_cfg), path=build_path(path_cfg))
    return flops_per_image(model)


def _stage_cost(spec, sdir: Path, batch: int, per_pass: int, teacher_train: float | None) -> StageCost:
    from . import runs
    from .distill import RESULT_FILE

    res = runs.read_json_object(sdir / RESULT_FILE)
    try:
        iters, tpasses = int(res["iters"]), int(res["teacher_passes"])
    except (KeyError, TypeError, ValueError) as e:
        raise runs.RunDirError(f"{sdir / RESULT_FILE}: not a stage result ({e})") from None
    t_flops = float(tpasses) * per_pass
    s_flops = float(iters) * batch * TRAIN_STEP_FORWARDS * per_pass
    total = t_flops + s_flops
    return StageCost(
        stage=spec.index,
        teacher_steps=spec.teacher_steps,
        student_steps=spec.student_steps,
        student_iters=iters,
        batch_size=batch,
        teacher_passes=tpasses,
        teacher_flops=t_flops,
        student_flops=s_flops,
        total_flops=total,
        ratio_to_teacher_training=None if not teacher_train else total / teacher_train,
    )


def distillation_training_cost(ladder_dir: str | os.PathLike) -> TrainingCost:
    """Training FLOPs of every finished stage of a ladder (:func:`kaclib.distill.run_ladder`'s directory).

    Per stage: ``teacher_passes x F`` (the teacher's forward passes counted by :mod:`kaclib.distill`:
    substeps, guidance's second pass, midpoint's second evaluation, pools included) plus
    ``student_iters x batch_size x 3 x F`` (forward + backward counted as 3 forward passes), ``F``
    the FLOPs of one forward pass at batch 1 (students are copies of the teacher, one architecture).
    The ratio divides by the flow teacher's own training, ``steps x batch_size x 3 x F`` from its
    run's config.  Quality-gate evaluations are not counted.
    """
    from . import runs
    from .distill import RESULT_FILE, DistillConfig, stage_dir_name

    ladder_dir = Path(ladder_dir)
    raw = runs.read_config(ladder_dir)
    try:
        cfg, tinfo = DistillConfig.from_dict(raw["distill"]), raw["teacher"]
        per_pass = _architecture_flops(tinfo["model"], tinfo["path"])
    except (KeyError, TypeError) as e:
        raise runs.RunDirError(f"{ladder_dir}: not a distillation ladder ({e})") from None
    steps = batch = train_flops = None
    if tinfo.get("distilled") is None:
        tcfg = runs.read_config((ladder_dir / tinfo["run_dir"]).resolve())
        steps, batch = int(tcfg["steps"]), int(tcfg["batch_size"])
        train_flops = float(steps) * batch * TRAIN_STEP_FORWARDS * per_pass
    stages = tuple(
        _stage_cost(spec, ladder_dir / stage_dir_name(spec), cfg.batch_size, per_pass, train_flops)
        for spec in cfg.stages()
        if (ladder_dir / stage_dir_name(spec) / RESULT_FILE).is_file()
    )
    total = sum(s.total_flops for s in stages)
    return TrainingCost(
        ladder_dir=str(ladder_dir),
        flops_per_pass=per_pass,
        teacher_train_steps=steps,
        teacher_batch_size=batch,
        teacher_training_flops=train_flops,
        stages=stages,
        total_flops=total,
        ratio=None if not train_flops else total / train_flops,
    )


# =============================================================================== wall clock


@dataclass(frozen=True)
class WallClock:
    """Sampling wall time per 1,000 images, end to end (latents + integration).

    ``seconds_per_1000`` the best of ``repeats`` draws of ``n`` images, ``values`` all of them,
    ``latent_seconds_per_1000`` the latents' share in the best draw, ``network_passes`` per image.
    """

    seconds_per_1000: float
    values: tuple
    latent_seconds_per_1000: float
    n: int
    repeats: int
    steps: int
    method: str
    w: float | None
    network_passes: int
    device: str

    def to_dict(self) -> dict:
        """The fields as a plain dict."""
        return asdict(self)


def wall_clock_per_1000(
    model: nn.Module,
    path,
    steps: int,
    method: str = "euler",
    w: float | None = 1.0,
    n: int = 1000,
    seed: int = 0,
    repeats: int = 3,
    batch_size: int = 500,
    device=None,
    num_classes: int | None = None,
    image_shape=None,
) -> WallClock:
    """End-to-end sampling time per 1,000 images (latents included) with :func:`kaclib.evaluation.generate`.

    Each repeat draws the same ``n`` images (``seed``); the best repeat is reported (robust to a
    busy machine, as :func:`benchmarks.common.best_time`).  Time only on an otherwise idle machine.
    """
    from .evaluation import generate

    _check_int("n", n, 1)
    _check_int("repeats", repeats, 1)
    runs_ = [
        generate(
            model,
            path,
            n,
            steps,
            method=method,
            w=w,
            num_classes=num_classes,
            seed=seed,
            batch_size=batch_size,
            device=device,
            image_shape=image_shape,
        )
        for _ in range(repeats)
    ]
    values = tuple(1000.0 * g.end_to_end_seconds_per_image for g in runs_)
    best = min(range(repeats), key=lambda i: values[i])
    g = runs_[best]
    dev = str(device) if device is not None else str(next(iter(model.parameters())).device)
    return WallClock(
        seconds_per_1000=values[best],
        values=values,
        latent_seconds_per_1000=1000.0 * g.latent_seconds / g.images.shape[0],
        n=n,
        repeats=repeats,
        steps=steps,
        method=method,
        w=g.w,
        network_passes=g.network_passes,
        device=dev,
    )


# =============================================================================== figure

COST_AXES = {
    "seconds_per_1000": "seconds per 1,000 images, end to end (log)",
    "flops_per_image": "FLOPs per image (log)",
    "network_passes": "network passes per image (log)",
}


def _cost_of(row: dict, x: str):
    if x == "seconds_per_1000":
        wc = row.get("wall_clock")
        return None if not wc else wc.get("seconds_per_1000")
    return row.get(x)


def quality_cost_figure(rows, x: str = "seconds_per_1000", quality: str = "fid", title: str | None = None):
    """Quality against cost, one line per table row (``"kac_ladder"``, ``"kac_teacher"``, ...).

    Each line runs through the row's step counts.

    Parameters
    ----------
    rows:
        Dicts with ``"row"``, ``"steps"``, ``quality`` and the cost: ``"flops_per_image"``,
        ``"network_passes"`` or ``"wall_clock"`` (a :class:`WallClock` dict) for
        ``x="seconds_per_1000"`` (the ``cost["rows"]`` of ``benchmarks/results/beyond.json``).
        Rows lacking either value are left out.
    x:
        One of :data:`COST_AXES`.
    quality:
        The y value (default ``"fid"``; lower is better).
    """
    import plotly.graph_objects as go

    from .plots import series_color, style

    if x not in COST_AXES:
        raise ValueError(f"x must be one of {sorted(COST_AXES)}, got {x!r}")
    series: dict = {}
    for r in rows:
        cx, q = _cost_of(r, x), r.get(quality)
        if cx is not None and q is not None:
            series.setdefault(r["row"], []).append((cx, q, r["steps"]))
    if not series:
        raise ValueError(f"no row has both {x!r} and {quality!r}")
    fig = go.Figure()
    for name, pts in series.items():
        pts.sort()
        dash = "dot" if name.endswith("_teacher") else "solid"
        fig.add_trace(
            go.Scatter(
                x=[p[0] for p in pts],
                y=[p[1] for p in pts],
                mode="lines+markers+text",
                name=name.replace("_", " "),
                text=[f"{p[2]}" for p in pts],
                textposition="top center",
                line=dict(color=series_color(name.split("_")[0]), dash=dash),
                hovertemplate="%{text} steps<br>cost %{x:.3g}<br>"
                + quality
                + " %{y:.4g}<extra>"
                + name
                + "</extra>",
            )
        )
    fig.update_xaxes(type="log")
    return style(
        fig,
        title=title or f"{quality.upper()} against cost (labels: steps)",
        x=COST_AXES[x],
        y=quality.upper(),
    )
