"""Sampling and scoring trained velocity models: the evaluation protocol of every table.

* :func:`generate` draws images from a (guided) velocity model with a fixed-step solver.  One
  seed per image (the EDM protocol): image ``i``'s latent ``x_T`` is a function of
  ``(seed, i)`` only (:mod:`kaclib.latents`: counter-based uniforms, a whole batch in one call, on
  the CPU), so the images do not depend on the batch size, on how many images are drawn (the first
  ``k`` of ``n`` are the ``k`` of a smaller call) or on the device the latents are moved to.
* :class:`Evaluator` holds a data set's feature net and its held-out reference once (the protocol:
  :mod:`kaclib.data` splits, :mod:`kaclib.sample_quality` scores); :meth:`Evaluator.score` gives
  ``FID-<dataset>``, KID, precision / recall, class accuracy and the memorisation ratio of a
  generated set, :meth:`Evaluator.floor` the same scores of unseen real images at the same ``n``
  and class balance.  The feature-net FID is NOT comparable with Inception FIDs in papers: tables
  carry :attr:`Evaluator.metric_name` (``"FID-digits"``), never bare "FID".
* The entry point: :func:`evaluate_run` scores one model at one setting (:func:`generate` +
  :meth:`Evaluator.score`, one JSON-ready dict), :func:`evaluate_grid` a grid of settings and
  seeds, :func:`summarise_seeds` turns the seeds into means with confidence intervals.  The
  command line, the benchmarks and the book score through them.
* :func:`get_teacher` (from :mod:`kaclib.teachers`) trains a :class:`~kaclib.train.TrainConfig`
  once and caches the run directory, so the book, the benchmarks and the ladder share one teacher.

Guidance convention (see :mod:`kaclib.guidance`): ``w = 0`` unconditional, ``w = 1`` plain
conditional (one network pass per evaluation), other ``w`` the batched guided field
``v_u + w (v_c - v_u)`` (two passes per evaluation); ``w = None`` (or a model without classes) is
unconditional sampling.

A note on the floor: it is unseen real data (the ``test`` split) at the generated sets' ``n`` and
class balance, scored against the same ``ref`` statistics.  FID is biased upwards at small ``n``,
so sets are only ever compared at equal ``n``; KID is unbiased.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from .evaluator import Evaluator, _check_int  # Evaluator re-exported: chapters import it here
from .guidance import GuidedVelocity, check_guidance_weight
from .sample_quality import Scores
from .solvers import SOLVERS, sample
from .teachers import get_teacher, teacher_config, teacher_dir  # re-exported: chapters import them here

__all__ = [
    "Generated",
    "Scores",
    "Evaluator",
    "generate",
    "balanced_labels",
    "image_latents",
    "model_num_classes",
    "evaluate_run",
    "evaluate_grid",
    "summarise_seeds",
    "score_fields",
    "resolve_model",
    "get_teacher",
    "teacher_dir",
    "teacher_config",
]


# =============================================================================== generation


@dataclass
class Generated:
    """Output of :func:`generate`.

    ``images`` ``(N, C, H, W)`` float32 on the CPU (not clamped), ``labels`` ``(N,)`` int64 (or
    ``None`` for unconditional sampling); ``steps`` solver steps, ``nfe`` right-hand-side
    evaluations and ``network_passes`` forward passes per image (a guided evaluation costs 2);
    ``seconds``: wall time of the ODE integration (all images), ``latent_seconds``: wall time
    spent drawing the latents, ``seconds_per_image`` = ``seconds / N`` and
    :attr:`end_to_end_seconds_per_image` (latents included: what a user waits for);
    ``trajectory`` ``(steps + 1, N, C, H, W)`` with ``return_trajectory``.
    """

    images: torch.Tensor
    labels: torch.Tensor | None
    steps: int
    nfe: int
    network_passes: int
    seconds: float
    seconds_per_image: float
    method: str = "ab2"
    w: float | None = 1.0
    seed: int = 0
    latent_seconds: float = 0.0
    trajectory: torch.Tensor | None = None

    @property
    def end_to_end_seconds_per_image(self) -> float:
        """Wall time per image of the whole draw: latents and integration (what a user waits for)."""
        return (self.seconds + self.latent_seconds) / self.images.shape[0]

    def summary(self) -> dict:
        """The scalar fields (JSON-ready)."""
        return {
            "n": int(self.images.shape[0]),
            "steps": self.steps,
            "method": self.method,
            "w": self.w,
            "seed": self.seed,
            "nfe": self.nfe,
            "network_passes": self.network_passes,
            "seconds": self.seconds,
            "seconds_per_image": self.seconds_per_image,
            "latent_seconds": self.latent_seconds,
            "end_to_end_seconds_per_image": self.end_to_end_seconds_per_image,
        }


def model_num_classes(model) -> int:
    """Real classes of a velocity model (0: unconditional only).

    Real classes of a velocity model (0: unconditional only): ``model.cfg.num_classes`` for a
    UNet, ``model.num_classes`` for an MLP; unwraps :class:`GuidedVelocity` / DDP ``.module``.
    """
    for obj in (model, getattr(model, "module", None), getattr(model, "model", None)):
        if obj is None:
            continue
        cfg = getattr(obj, "cfg", None)
        if cfg is not None and hasattr(cfg, "num_classes"):
            return int(cfg.num_classes)
        if isinstance(getattr(obj, "num_classes", None), int):
            return int(obj.num_classes)
    return 0


def balanced_labels(n: int, num_classes: int) -> torch.Tensor:
    """``[0, 1, ..., K-1, 0, 1, ...]`` (``n`` labels, int64): equal class counts up to one."""
    _check_int("n", n, 1)
    _check_int("num_classes", num_classes, 1)
    return torch.arange(n, dtype=torch.long) % num_classes


def image_latents(path, n: int, image_shape, seed: int = 0, start: int = 0) -> torch.Tensor:
    """Latents ``x_T`` of images ``start .. start + n - 1`` (float32, CPU).

    Latents ``x_T`` of images ``start .. start + n - 1`` (float32, CPU), drawn for the batch at once:
    image ``i``'s depends only on ``(seed, i)``, through the splitmix64 stream keyed by
    ``step_seed(seed, i)`` (:func:`kaclib.latents.image_latents`).
    """
    from .latents import image_latents as counter_latents

    return counter_latents(path, n, image_shape, seed=seed, start=start)


def _velocity_for(model, w, num_classes: int):
    """``(velocity, conditional?)`` for weight ``w`` (``None``: unconditional)."""
    if w is None or num_classes == 0:
        return model, False
    if w == 1.0:
        return model, True
    return GuidedVelocity(model, w, num_classes), True


def generate(
    model: nn.Module,
    path,
    labels,
    steps: int,
    method: str = "ab2",
    w: float | None = 1.0,
    num_classes: int | None = None,
    seed: int = 0,
    batch_size: int = 500,
    device=None,
    return_trajectory: bool = False,
    progress: bool = False,
    image_shape=None,
    accel=None,
) -> Generated:
    """Sample images from ``model`` on ``path`` with ``steps`` steps of ``method`` (T -> 0).

    Parameters
    ----------
    labels:
        ``(N,)`` int labels in ``[0, num_classes)``, or an int ``N`` (balanced labels
        :func:`balanced_labels` when the model has classes, else unconditional).
    w:
        Guidance weight (``v_u + w (v_c - v_u)``): ``1`` plain conditional, ``0`` unconditional
        through the null class (the labels are kept, so class accuracy shows chance level), other
        values guided (2 passes per evaluation); ``None`` samples unconditionally and returns
        ``labels=None``.  Ignored (unconditional, ``labels=None``) for a model without classes.
    num_classes:
        The null class index (default: read from the model).
    seed:
        Image ``i``'s latent is a function of ``(seed, i)`` only (:mod:`kaclib.latents`): results
        do not depend on ``batch_size``.
    device:
        Where the network runs (default: the model's device); latents are drawn on the CPU.
    image_shape:
        ``(C, H, W)``; default from a UNet's config.
    accel:
        A :class:`kaclib.accel.AccelConfig` (or its dict); ``None`` is the default policy,
        resolved on ``device``: bf16 autocast + channels-last inputs + TF32 on CUDA, plain fp32
        on the CPU.  Latents and the solver's state stay float32.  (Converting or compiling the
        model itself is the caller's: :func:`kaclib.accel.prepare_model`.)

    The model is put in ``eval()`` mode for the call and restored.  Returns :class:`Generated`.
    """
    w, num_classes = _check_generate_args(model, steps, method, w, num_classes, seed, batch_size)
    labels, n = _resolve_labels(labels, num_classes)
    image_shape = _resolve_image_shape(model, image_shape)
    device = _resolve_device(model, device)
    from .accel import AccelConfig

    acc = AccelConfig.from_dict(accel).resolve(device)

    velocity, conditional = _velocity_for(model, w, num_classes)
    was_training = model.training
    model.eval()
    try:
        plan = _SamplingPlan(n, image_shape, steps, method, seed, batch_size, return_trajectory)
        bar = tqdm(total=n, disable=not progress, desc=f"{method} {steps} steps, w={w}", leave=False)
        run = _sample_batches(velocity, path, labels if conditional else None, plan, device, acc, bar)
    finally:
        model.train(was_training)
    return Generated(
        images=torch.cat(run.images),
        labels=labels if conditional else None,
        steps=steps,
        nfe=run.nfe,
        network_passes=run.passes,
        seconds=run.solve_s,
        seconds_per_image=run.solve_s / n,
        method=method,
        w=(w if conditional else None),
        seed=seed,
        latent_seconds=run.latent_s,
        trajectory=torch.cat(run.trajs, dim=1) if return_trajectory else None,
    )


def _check_generate_args(model, steps, method, w, num_classes, seed, batch_size):
    """Check the scalar arguments of :func:`generate`.

    Check the scalar arguments of :func:`generate`; returns the checked guidance weight and the
    number of classes (default: read from the model).
    """
    _check_int("steps", steps, 1)
    if method not in SOLVERS:
        raise ValueError(f"method must be one of {SOLVERS}, got {method!r}")
    if w is not None:
        w = check_guidance_weight(w)
    _check_int("seed", seed, 0)
    _check_int("batch_size", batch_size, 1)
    if num_classes is None:
        num_classes = model_num_classes(model)
    else:
        _check_int("num_classes", num_classes, 0)
    return w, num_classes


def _resolve_labels(labels, num_classes: int) -> tuple[torch.Tensor | None, int]:
    """The labels of :func:`generate` and their number ``N``.

    The labels of :func:`generate` (an ``(N,)`` CPU long tensor, or ``None`` for an
    unconditional count) and their number ``N``, from a count or a label tensor.
    """
    if isinstance(labels, int) and not isinstance(labels, bool):
        n = _check_int("labels (a count)", labels, 1)
        return (balanced_labels(n, num_classes) if num_classes > 0 else None), n
    if labels is None:
        raise ValueError("labels must be an (N,) tensor of class labels or an int count N")
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or labels.shape[0] < 1 or labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels must be a non-empty 1-D integer tensor, got shape {tuple(labels.shape)}")
    labels = labels.long().cpu()
    if num_classes > 0 and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, num_classes) = [0, {num_classes})")
    return labels, labels.shape[0]


def _resolve_image_shape(model: nn.Module, image_shape) -> tuple[int, ...]:
    """``image_shape`` as a tuple of ints, by default ``(C, H, W)`` from a UNet's config."""
    if image_shape is None:
        cfg = getattr(model, "cfg", None)
        if cfg is None or not hasattr(cfg, "image_size"):
            raise ValueError("image_shape is needed for a model without a UNet config")
        image_shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
    return tuple(int(s) for s in image_shape)


def _resolve_device(model: nn.Module, device) -> torch.device:
    """``device``, by default the device of the model's first parameter (the CPU without any)."""
    if device is None:
        params = list(model.parameters())
        device = params[0].device if params else torch.device("cpu")
    return torch.device(device)


@dataclass
class _BatchRun:
    """What :func:`_sample_batches` collects.

    What :func:`_sample_batches` collects: the images (and trajectories) per batch on the CPU,
    the last batch's NFE and network passes, and the solver and latent seconds.
    """

    images: list
    trajs: list
    nfe: int = 0
    passes: int = 0
    solve_s: float = 0.0
    latent_s: float = 0.0


@dataclass(frozen=True)
class _SamplingPlan:
    """What :func:`_sample_batches` draws.

    What :func:`_sample_batches` draws: ``n`` images of ``image_shape`` with ``steps`` steps of
    ``method`` from the latents of ``seed``, ``batch_size`` at a time (and their trajectories).
    """

    n: int
    image_shape: tuple
    steps: int
    method: str
    seed: int
    batch_size: int
    return_trajectory: bool


def _sample_batches(velocity, path, labels, plan: _SamplingPlan, device, acc, bar) -> _BatchRun:
    """Solve the images of ``plan`` batch by batch.

    Solve the images of ``plan`` batch by batch (labels ``None``: unconditional), timing the
    latents and the solver apart; ``bar`` counts images.
    """
    from .accel import tf32_policy

    run = _BatchRun([], [])
    with bar:
        for start in range(0, plan.n, plan.batch_size):
            b = min(plan.batch_size, plan.n - start)
            t0 = time.perf_counter()
            x_T = image_latents(path, b, plan.image_shape, seed=plan.seed, start=start).to(device)
            run.latent_s += time.perf_counter() - t0
            y = labels[start : start + b].to(device) if labels is not None else None
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            with tf32_policy(device, acc):
                res = sample(
                    velocity,
                    x_T,
                    plan.steps,
                    plan.method,
                    T=float(path.T),
                    y=y,
                    return_trajectory=plan.return_trajectory,
                    accel=acc,
                )
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            run.solve_s += time.perf_counter() - t0
            run.images.append(res.x.float().cpu())
            if plan.return_trajectory:
                run.trajs.append(res.trajectory.float().cpu())
            run.nfe, run.passes = res.nfe, res.network_passes
            bar.update(b)
    return run


# =============================================================================== runs


def resolve_model(run, device="cpu"):
    """The :class:`~kaclib.train.LoadedRun` of anything that names a trained model.

    A :class:`~kaclib.train.LoadedRun` from a run directory, a ``LoadedRun``, a
    :class:`~kaclib.train.TrainResult` (its EMA model) or a ``(model, path)`` pair.

    A pair has no saved config: its sampling defaults are the current recipe's teacher sampling and
    its class count and image shape are read from the model.
    """
    from .recipe import get_recipe
    from .train import LoadedRun, TrainResult, load_run

    if isinstance(run, (str, os.PathLike)):
        return load_run(run, device=device)
    if isinstance(run, LoadedRun):
        return run
    if isinstance(run, TrainResult):
        raw = run.config.resolved().to_dict() if run.config is not None else None
        sampling = get_recipe(check_cuda=False).sampling
        return LoadedRun(run.ema, run.path, run.config, run.step, run.run_dir, sampling, raw)
    if isinstance(run, tuple) and len(run) == 2:
        return LoadedRun(run[0], run[1], None, 0, None, get_recipe(check_cuda=False).sampling, None)
    raise ValueError(
        "run must be a run directory, a LoadedRun, a TrainResult or a (model, path) pair, "
        f"got {type(run).__name__}"
    )


def _default_evaluator(loaded, evaluator, device):
    if evaluator is not None:
        return evaluator
    if loaded.dataset is None:
        raise ValueError("evaluator is needed when the run's data set is unknown")
    return Evaluator(loaded.dataset, device=device or "cpu")


def evaluate_run(
    run,
    steps: int | None = None,
    method: str | None = None,
    w=...,
    n: int | None = None,
    seed: int = 0,
    evaluator: Evaluator | None = None,
    batch_size: int = 500,
    device=None,
    progress: bool = False,
    check=None,
    return_images: bool = False,
) -> dict:
    """Score one model at one sampling setting: the evaluation entry point, as a JSON-ready dict.

    Parameters
    ----------
    run
        Anything :func:`resolve_model` takes (a run directory, a ``LoadedRun``, ...).
    steps, method, w
        The sampling setting; each defaults to the run's own (:attr:`LoadedRun.sampling`: a
        student's steps and Euler, a teacher's recipe sampling).
    n
        Images, class-balanced (default: the evaluator's reference size).
    seed
        The latent seed: image ``i``'s latent depends on ``(seed, i)`` only, so two models scored
        with one seed share their latents (paired comparisons).
    evaluator
        The :class:`Evaluator` (default: one for the run's data set).
    check
        Optional callable run on the :class:`Generated` images before they are scored (e.g. to
        refuse non-finite images).
    return_images
        Also return the ``images`` and ``labels`` tensors (the dict is then not JSON-ready).

    Returns
    -------
    dict
        :meth:`Scores.to_dict` and :meth:`Generated.summary` merged: ``metric_name``, ``fid``,
        ``kid``, ``accuracy``, ``n``, ``steps``, ``method``, ``w``, ``seed``, ``nfe``,
        ``network_passes``, ``seconds``, ``seconds_per_image``, ``latent_seconds``, ...
    """
    loaded = resolve_model(run, device=device or "cpu")
    evaluator = _default_evaluator(loaded, evaluator, device)
    n = evaluator.max_n if n is None else _check_int("n", n, 4)
    gen = loaded.generate(
        n, steps, method, w, seed=seed, batch_size=batch_size, device=device, progress=progress
    )
    if check is not None:
        check(gen)
    scores = evaluator.score(gen.images, gen.labels)
    extra = {"images": gen.images, "labels": gen.labels} if return_images else {}
    return {**scores.to_dict(), **gen.summary(), **extra}


def evaluate_grid(
    run,
    steps=(None,),
    methods=(None,),
    ws=(...,),
    seeds=(0,),
    n: int | None = None,
    evaluator: Evaluator | None = None,
    **kwargs,
) -> list[dict]:
    """Score one model at every ``steps x methods x ws x seeds``: one :func:`evaluate_run` row each.

    ``None`` (``...`` for ``ws``) stands for the run's own default.  The model is loaded and the
    evaluator built once; ``kwargs`` go to :func:`evaluate_run` (``batch_size``, ``device``,
    ``progress``, ``check``).  Summarise the seeds with :func:`summarise_seeds`.
    """
    loaded = resolve_model(run, device=kwargs.get("device") or "cpu")
    evaluator = _default_evaluator(loaded, evaluator, kwargs.get("device"))
    return [
        evaluate_run(loaded, s, m, w, n=n, seed=seed, evaluator=evaluator, **kwargs)
        for s in steps
        for m in methods
        for w in ws
        for seed in seeds
    ]


def score_fields(row: dict) -> dict:
    """The scores of an :func:`evaluate_run` row: the :class:`Scores` fields but ``metric_name``, ``n``."""
    return {k: row[k] for k in _SCORE_KEYS if k in row}


_SCORE_KEYS = tuple(f.name for f in dataclasses.fields(Scores) if f.name not in ("metric_name", "n"))


def summarise_seeds(rows: list[dict], metric: str = "fid", by=("steps", "method", "w")) -> list[dict]:
    """Mean and 95% confidence interval of ``metric`` over the seeds of each setting.

    ``rows``: :func:`evaluate_grid`'s (or any dicts with the ``by`` keys and ``metric``).  Returns
    one dict per setting, in first-seen order: the ``by`` keys, ``metric``, ``seeds``, and
    :meth:`kaclib.stats.Interval.to_dict` (``mean``, ``lo``, ``hi``, ``half_width``, ``level``;
    its ``n`` renamed ``n_seeds``; the interval is NaN for a single seed).
    """
    from .stats import mean_ci

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in by), []).append(r)
    out = []
    for key, group in groups.items():
        ci = mean_ci([r[metric] for r in group]).to_dict()
        ci["n_seeds"] = ci.pop("n")
        out.append({**dict(zip(by, key)), "metric": metric, "seeds": [r.get("seed") for r in group], **ci})
    return out
