"""Where a stage's training tuples ``(x, k, y, target)`` come from.

States (``states``): ``"forward"`` draws ``x = path.sample(x0, t_k).x_t`` from training data at a
uniform student grid index ``k``; ``"rollout"`` uses the teacher's own trajectories from the latent
``x_T`` (the states the sampler will actually visit).  Targets (``targets``): ``"online"`` computes
the teacher end points for every batch (``N`` teacher evaluations per sample and iteration);
``"pool"`` computes ``pool_size`` tuples ``(state, k, label, end point)`` once per stage (saved as
``pool.safetensors`` in the stage directory) and every batch reads from it.  Online roll-outs are a
population of ``batch_size`` teacher trajectories at staggered grid positions: every iteration
advances each by one student interval (its new state is that interval's target) and a trajectory
that reaches ``t = 0`` restarts from fresh noise with a fresh label, so roll-out states cost the
same ``N`` evaluations per sample as forward states.

Every random draw of iteration ``j`` of stage ``i`` comes from generators seeded with
``step_seed(seed, i, j, stream)`` (the streams below); a source's ``state()`` goes into the stage
checkpoint, so a resumed stage continues bit for bit.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import runs
from ..loop import EpochOrder, batch_indices, step_seed
from ..solvers import grid_times
from .config import StageSpec
from .endpoint import _evals_per_substep, segment_endpoint
from .teacher import TeacherField

POOL_FILE = "pool.safetensors"

# generator streams of step_seed(seed, stage, iteration, stream)
_S_BATCH, _S_GLOBAL, _S_POOL, _S_WALKERS, _S_ORDER = 0, 1, 2, 3, 4
_ONE_OFF_ITERATION = -2  # "iteration" keys of one-off draws (pool, initial roll-out population)
_WALKER_ITERATION = -3


class _Source:
    """Supplies ``(x, k, y, target)`` for iteration ``it``; ``state()``/``load()`` for checkpoints."""

    teacher_samples = 0  # teacher substep-evaluations x samples spent so far (one-off + online)

    def batch(self, it: int, g: torch.Generator):
        raise NotImplementedError

    def state(self) -> dict:
        return {}

    def load(self, state: dict) -> None:
        pass


class _HookSource(_Source):
    """The ``batch_fn(it, g)`` hook of :func:`train_stage` as a source (stateless: replayed on resume)."""

    def __init__(self, batch_fn):
        self.batch_fn = batch_fn

    def batch(self, it, g):
        return self.batch_fn(it, g)


class _ForwardOnline(_Source):
    def __init__(self, ctx):
        self.ctx = ctx
        self.order = EpochOrder(ctx.data.shape[0], step_seed(ctx.seed, ctx.spec.index, _S_ORDER))

    def batch(self, it, g):
        c = self.ctx
        idx = batch_indices(self.order, it, c.batch_size).to(c.device)
        x0, y = c.data[idx], c.labels[idx]
        k = torch.randint(c.spec.student_steps, (x0.shape[0],), generator=g, device=c.device)
        x = c.path.sample(x0, grid_times(k, c.spec.student_steps, c.T, x0.dtype), generator=g).x_t
        return x, k, y, c.target(x, k, y)


class _RolloutOnline(_Source):
    """``batch_size`` teacher trajectories at staggered grid positions.

    They advance one interval per iteration; each restarts from fresh noise and label after reaching
    ``t = 0``.
    """

    def __init__(self, ctx):
        self.ctx = ctx
        self.x = self.k = self.y = None

    def init(self):
        c = self.ctx
        B, M = c.batch_size, c.spec.student_steps
        g = torch.Generator(device=c.device).manual_seed(
            step_seed(c.seed, c.spec.index, _WALKER_ITERATION, _S_WALKERS)
        )
        x = c.path.sample_latent((B,) + c.shape, generator=g, device=c.device, dtype=c.dtype)
        y = torch.randint(c.num_classes, (B,), generator=g, device=c.device)
        k = torch.arange(B, device=c.device) % M  # staggered phases
        for s in range(M - 1):  # roll each trajectory to its phase
            sel = k > s
            if sel.any():
                x[sel] = c.target(x[sel], torch.full((int(sel.sum()),), s, device=c.device), y[sel])
        self.x, self.k, self.y = x, k, y

    def batch(self, it, g):
        c = self.ctx
        if self.x is None:
            self.init()
        x, k, y = self.x, self.k, self.y
        target = c.target(x, k, y)
        nk = k + 1
        done = nk >= c.spec.student_steps
        nx, ny = target.clone(), y.clone()
        if done.any():
            n = int(done.sum())
            nx[done] = c.path.sample_latent((n,) + c.shape, generator=g, device=c.device, dtype=c.dtype)
            ny[done] = torch.randint(c.num_classes, (n,), generator=g, device=c.device)
            nk = torch.where(done, torch.zeros_like(nk), nk)
        self.x, self.k, self.y = nx, nk, ny
        return x, k, y, target

    def state(self):
        return {
            "walkers": None if self.x is None else {"x": self.x.cpu(), "k": self.k.cpu(), "y": self.y.cpu()}
        }

    def load(self, state):
        w = state.get("walkers")
        if w is not None:
            d = self.ctx.device
            self.x, self.k, self.y = w["x"].to(d), w["k"].to(d), w["y"].to(d)


class _Pool(_Source):
    """``pool_size`` tuples computed once (saved in the stage directory) and read in epochs."""

    def __init__(self, ctx, run_dir: Path | None):
        self.ctx, self.run_dir = ctx, run_dir
        self.pool = None
        self.order = None
        self.sha256 = None  # of the pool file: checkpointed, checked when a resumed stage reads it

    def state(self):
        return {"pool_sha256": self.sha256}

    def load(self, state):
        self.sha256 = state.get("pool_sha256")

    def _build(self):
        c = self.ctx
        g = torch.Generator(device=c.device).manual_seed(
            step_seed(c.seed, c.spec.index, _ONE_OFF_ITERATION, _S_POOL)
        )
        chunk = max(1, 4 * c.batch_size)
        if c.states == "forward":
            xs, ks, ys, ts = self._build_forward(g, chunk)
        else:
            xs, ks, ys, ts = self._build_rollout(g, chunk)
        P = c.pool_size
        pool = {
            "x": torch.cat(xs)[:P],
            "k": torch.cat(ks)[:P],
            "y": torch.cat(ys)[:P],
            "target": torch.cat(ts)[:P],
        }
        return {key: v.contiguous() for key, v in pool.items()}

    def _build_forward(self, g, chunk):
        """Forward-noised states of ``pool_size`` data points in chunks of ``chunk``."""
        c = self.ctx
        M, P = c.spec.student_steps, c.pool_size
        xs, ks, ys, ts = [], [], [], []
        order = EpochOrder(c.data.shape[0], step_seed(c.seed, c.spec.index, _ONE_OFF_ITERATION, _S_ORDER))
        n_chunks = math.ceil(P / chunk)
        for i in tqdm(
            range(n_chunks), desc=f"stage {c.spec.index} pool", disable=not c.progress, leave=False
        ):
            b = min(chunk, P - i * chunk)
            idx = order[torch.arange(i * chunk, i * chunk + b)].to(c.device)
            x0, y = c.data[idx], c.labels[idx]
            k = torch.randint(M, (b,), generator=g, device=c.device)
            x = c.path.sample(x0, grid_times(k, M, c.T, x0.dtype), generator=g).x_t
            xs.append(x), ks.append(k), ys.append(y), ts.append(c.target(x, k, y))
        return xs, ks, ys, ts

    def _build_rollout(self, g, chunk):
        """Whole teacher trajectories from the latent: ``M`` tuples each."""
        c = self.ctx
        M, P = c.spec.student_steps, c.pool_size
        xs, ks, ys, ts = [], [], [], []
        n_traj = math.ceil(P / M)
        n_chunks = math.ceil(n_traj / chunk)
        for i in tqdm(
            range(n_chunks), desc=f"stage {c.spec.index} pool", disable=not c.progress, leave=False
        ):
            b = min(chunk, n_traj - i * chunk)
            x = c.path.sample_latent((b,) + c.shape, generator=g, device=c.device, dtype=c.dtype)
            y = torch.randint(c.num_classes, (b,), generator=g, device=c.device)
            traj = [x]
            for s in range(M):
                traj.append(c.target(x, torch.full((b,), s, device=c.device, dtype=torch.long), y))
                x = traj[-1]
            traj = torch.stack(traj, 1)  # (b, M + 1, ...): trajectory-major, so [:P] keeps whole ones
            xs.append(traj[:, :-1].flatten(0, 1)), ts.append(traj[:, 1:].flatten(0, 1))
            ks.append(torch.arange(M, device=c.device).repeat(b)), ys.append(y.repeat_interleave(M))
        return xs, ks, ys, ts

    def _ensure(self):
        if self.pool is not None:
            return
        c = self.ctx
        f = self.run_dir / POOL_FILE if self.run_dir is not None else None
        if f is not None and f.is_file():
            data = f.read_bytes()
            sha = hashlib.sha256(data).hexdigest()
            if self.sha256 is not None and sha != self.sha256:
                raise runs.RunDirError(
                    f"{f} does not match its fingerprint in {runs.STATE_FILE} (damaged or replaced)"
                )
            self.pool = {k: v.to(c.device) for k, v in runs.load_tensors(data, f).items()}
            self.sha256 = sha
        else:
            self.pool = self._build()
            if f is not None:
                from safetensors.torch import save

                data = save({k: v.cpu() for k, v in self.pool.items()})
                runs.atomic_write_bytes(f, data)
                self.sha256 = hashlib.sha256(data).hexdigest()
        self.order = EpochOrder(self.pool["x"].shape[0], step_seed(c.seed, c.spec.index, _S_ORDER))

    def batch(self, it, g):
        self._ensure()
        idx = batch_indices(self.order, it, self.ctx.batch_size).to(self.ctx.device)
        return self.pool["x"][idx], self.pool["k"][idx], self.pool["y"][idx], self.pool["target"][idx]


@dataclass
class StageContext:
    """What a stage's batch sources share: teacher, path, stage, data, seeds and sizes.

    ``counter[0]`` counts the teacher's network passes spent on targets.
    """

    teacher: TeacherField
    path: object
    spec: StageSpec
    data: torch.Tensor | None
    labels: torch.Tensor | None
    num_classes: int
    seed: int
    batch_size: int
    pool_size: int
    states: str
    device: torch.device
    progress: bool
    shape: tuple
    dtype: torch.dtype
    T: float = 1.0
    counter: list = field(default_factory=lambda: [0])

    def target(self, x, k, y):
        """The teacher's end point of student step ``k`` from ``x`` (passes added to ``counter``)."""
        teacher = self.teacher
        self.counter[0] += (
            x.shape[0] * self.spec.substeps * _evals_per_substep(teacher.solver) * teacher.passes_per_eval()
        )
        return segment_endpoint(
            teacher.velocity, x, k, y, self.spec.student_steps, self.spec.substeps, self.T, teacher.solver
        )


def make_source(ctx: StageContext, run_dir: Path | None, states: str, targets: str, batch_fn=None) -> _Source:
    """The batch source of a stage: the ``batch_fn`` hook when given, else by ``targets``/``states``."""
    if batch_fn is not None:
        return _HookSource(batch_fn)
    if targets == "pool":
        return _Pool(ctx, run_dir)
    if states == "forward":
        return _ForwardOnline(ctx)
    return _RolloutOnline(ctx)
