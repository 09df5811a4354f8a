"""The teacher and measurement machinery of ``benchmarks/open_questions.py`` (re-exported there):
what every teacher of a run shares, the cached teachers, their measurements and summaries."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common import format_table

from kaclib.data import DATASETS
from kaclib.diffusion_limit import few_step_error, straightness
from kaclib.evaluation import Evaluator, evaluate_run, get_teacher, teacher_config
from kaclib.stats import mean_ci
from kaclib.tables import markdown_table
from kaclib.train import load_run


@dataclass(frozen=True)
class Settings:
    """What every teacher of a run shares."""

    profile: object
    seeds: tuple
    n: int
    n_traj: int
    few_steps: tuple
    train_steps: int | None
    ema_decay: float | None
    feature_cache: str | None
    progress: bool


# ----------------------------------------------------------------------------- teachers


def _model_for(prof, dataset: str, path_cfg: dict) -> dict | None:
    """The profile's network at the data set's resolution (``None``: the profile's own data set)."""
    if dataset == prof.dataset:
        return None
    c, h, _ = DATASETS[dataset].image_shape
    head = prof.teacher.head if path_cfg["kind"] == "kac" else "free"
    return {"preset": prof.teacher.model_preset, "head": head, "image_size": h, "in_channels": c}


def train_teacher(st: Settings, path_cfg: dict, seed: int, dataset: str | None = None):
    """A trained (cached) teacher of ``path_cfg`` on ``dataset`` (default: the profile's), loaded."""
    return load_run(teacher_dir(st, path_cfg, seed, dataset))


def teacher_dir(st: Settings, path_cfg: dict, seed: int, dataset: str | None = None) -> Path:
    """The run directory of the (cached) teacher of ``path_cfg``; trained on first use."""
    prof = st.profile
    dataset = dataset or prof.dataset
    changes = {"dataset": dataset}
    model = _model_for(prof, dataset, path_cfg)
    if model is not None:
        changes["model"] = model
    if st.train_steps is not None:
        changes["steps"] = st.train_steps
    if st.ema_decay is not None:
        changes["ema_decay"] = st.ema_decay
    cfg = teacher_config(prof, path=path_cfg, seed=seed, **changes)
    return get_teacher(cfg, device="cpu", progress=st.progress)


def measure(run, ev: Evaluator, st: Settings, seed: int, few: bool = True) -> dict:
    """Quality at ``teacher_steps`` AB-2 steps; with ``few``: straightness, few-step RMSE and FID."""
    prof, model, path = st.profile, run.model, run.path
    shape, kw = ev.image_shape, {"w": prof.sampling.w, "seed": 1000 + seed}
    ref = evaluate_run(run, prof.sampling.steps, "ab2", n=st.n, evaluator=ev, return_images=True, **kw)
    out = {"fid": ref["fid"], "kid": ref["kid"], "accuracy": ref["accuracy"]}
    if not few:
        return out
    traj = run.generate(st.n_traj, prof.sampling.steps, "ab2", return_trajectory=True, **kw).trajectory
    out["straightness"] = float(straightness(traj).mean())
    for S in st.few_steps:
        err = few_step_error(
            model,
            path,
            S,
            prof.sampling.steps,
            n=st.n,
            method="euler",
            reference_method="ab2",
            image_shape=shape,
            reference=ref["images"],
            **kw,
        )
        out[f"rmse_{S}"] = err.mean
        out[f"fid_{S}"] = evaluate_run(run, S, "euler", n=st.n, evaluator=ev, **kw)["fid"]
    return out


def summarise(per_seed: list[dict]) -> dict:
    """``{metric: mean, metric_values: [...], metric_half_width: h}`` over seeds."""
    row = {}
    for key in per_seed[0]:
        vals = [p[key] for p in per_seed]
        if any(v is None for v in vals):
            continue
        ci = mean_ci(vals)
        row[key], row[f"{key}_values"], row[f"{key}_half_width"] = ci.mean, vals, ci.half_width
    return row


def train_and_measure(
    st: Settings, path_cfg: dict, ev: Evaluator, dataset: str | None = None, few: bool = True
) -> dict:
    per_seed = [measure(train_teacher(st, path_cfg, s, dataset), ev, st, s, few) for s in st.seeds]
    return {"path": path_cfg, "seeds": list(st.seeds), **summarise(per_seed)}


def tables(headers, body) -> dict:
    """``{"table": fixed-width text, "table_markdown": Markdown}`` of the same rows."""
    return {"table": format_table(headers, body), "table_markdown": markdown_table(headers, body)}
