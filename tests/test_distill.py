"""Endpoint-only distillation: the ladder schedule, the frozen teacher, the loss target, exactness
on representable fields, the quality gate, stage run directories and exact resume."""

import json
import os

import pytest
import torch
from smoke_runs import KAC_9_3, train_tiny_teacher
from torch import nn

from kaclib import runs
from kaclib.distill import (
    DistillConfig,
    StageSpec,
    TeacherField,
    check_ladder,
    config_for_profile,
    hand_off,
    ladder_schedule,
    load_ladder,
    run_ladder,
    segment_endpoint,
    stage_dir_name,
    student_step,
    train_stage,
)
from kaclib.models import MLPVelocity
from kaclib.paths import GaussianPath, KacPath
from kaclib.solvers import sample
from kaclib.train import load_run

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------ toys


class Affine(nn.Module):
    """``u = lam[y] x + b[y]``: exactly representable by one Euler step of the same family."""

    def __init__(self, num_classes=2, dim=2, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.lam = nn.Parameter(0.5 * torch.randn(num_classes + 1, generator=g))
        self.b = nn.Parameter(0.5 * torch.randn(num_classes + 1, dim, generator=g))
        self.calls = []

    def forward(self, x, t, y):
        self.calls.append((torch.is_grad_enabled(), self.training, y.clone()))
        return self.lam[y][:, None] * x + self.b[y]


def toy_data(n=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    x = 0.2 * torch.randn(n, 2, generator=g)
    x[:, 0] += torch.where(labels == 0, -0.5, 0.5)
    return x, labels


def nonlinear_mlp(seed=0, num_classes=2):
    torch.manual_seed(seed)
    m = MLPVelocity(dim=2, hidden=16, depth=2, num_classes=num_classes)
    nn.init.normal_(m.out.weight, std=0.5)  # the output layer starts at zero: make the field non-trivial
    return m


def _stage(
    teacher_model, cfg, guided=True, solver="euler", gate_fn=None, run_dir=None, resume=False, callback=None
):
    x, y = toy_data()
    spec = cfg.stages()[0]
    handoff = hand_off(teacher_model, lr=spec.lr, ema_decay=cfg.ema_decay, ema_warmup=cfg.ema_warmup)
    tf = TeacherField(handoff.teacher, guided=guided, w=cfg.w, num_classes=2, solver=solver)
    return train_stage(
        tf,
        handoff,
        KacPath(),
        spec,
        cfg,
        x,
        y,
        2,
        progress=False,
        gate_fn=gate_fn,
        run_dir=run_dir,
        resume=resume,
        callback=callback,
    )


# ------------------------------------------------------------------------------------ schedule


def test_ladder_schedule_of_the_paper():
    stages = ladder_schedule((100, 20, 4, 2, 1), iters=(10, 20, 30, 40), lr=1e-4)
    assert [(s.index, s.teacher_steps, s.student_steps, s.substeps) for s in stages] == [
        (1, 100, 20, 5),
        (2, 20, 4, 5),
        (3, 4, 2, 2),
        (4, 2, 1, 2),
    ]
    assert [s.iters for s in stages] == [10, 20, 30, 40] and all(s.lr == 1e-4 for s in stages)
    # consecutive stages chain: each student is the next teacher
    assert all(a.student_steps == b.teacher_steps for a, b in zip(stages, stages[1:]))
    single = ladder_schedule((100, 1), iters=7, lr=(3e-4,))
    assert single == [StageSpec(index=1, teacher_steps=100, student_steps=1, substeps=100, lr=3e-4, iters=7)]
    assert [s.substeps for s in ladder_schedule((64, 16, 8, 1))] == [4, 2, 8]


@pytest.mark.parametrize(
    "ladder,match",
    [
        ((100, 30, 1), "divide"),
        ((4, 8), "decreasing"),
        ((4, 4), "decreasing"),
        ((5,), "at least two"),
        ((4, 0), "positive"),
        ((100.0, 20), "positive ints"),
        ("100,20", "sequence"),
        ((True, 1), "positive ints"),
    ],
)
def test_bad_ladders_are_refused(ladder, match):
    with pytest.raises(ValueError, match=match):
        ladder_schedule(ladder)
    with pytest.raises(ValueError, match=match):
        DistillConfig(ladder=ladder)


def test_per_stage_values_must_match_the_ladder():
    with pytest.raises(ValueError, match="iters has 2 entries but the ladder has 4"):
        ladder_schedule((100, 20, 4, 2, 1), iters=(1, 2))
    with pytest.raises(ValueError, match="lr"):
        ladder_schedule((4, 2), lr=-1.0)
    assert check_ladder([8, 4]) == (8, 4)


def test_config_json_round_trip_and_validation():
    cfg = DistillConfig(
        ladder=(8, 4, 1), iters=(3, 5), lr=(1e-3, 2e-3), states="rollout", targets="pool", w=1.5
    )
    back = DistillConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.total_iters == 8 and back.iters == (3, 5)
    for field_, value in [
        ("states", "x"),
        ("targets", "y"),
        ("teacher_solver", "rk4"),
        ("ema_decay", 1.0),
        ("batch_size", 0),
        ("w", float("nan")),
        ("gate_tol", -1.0),
    ]:
        with pytest.raises(ValueError, match=field_ if field_ != "w" else "w must"):
            DistillConfig(**{field_: value})
    with pytest.raises(ValueError, match="unknown DistillConfig"):
        DistillConfig.from_dict({"bogus": 1})


def test_profiles_give_consistent_ladders():
    from kaclib.profiles import PROFILES

    for prof in PROFILES.values():
        cfg = config_for_profile(prof)
        assert cfg.ladder[0] == prof.sampling.steps and cfg.ladder[-1] == 1
        assert [s.iters for s in cfg.stages()] == [prof.distill.iters] * (len(cfg.ladder) - 1)
    assert config_for_profile("smoke", states="rollout").states == "rollout"


def test_hand_off_gives_a_fresh_student_optimizer_and_warm_started_ema():
    teacher = Affine()
    handoff = hand_off(teacher, lr=0.1, ema_decay=0.99)
    assert handoff.student is not teacher and handoff.teacher is not teacher and handoff.student.training
    assert all(p.requires_grad for p in handoff.student.parameters())
    assert not handoff.optimizer.state and handoff.optimizer.param_groups[0]["lr"] == 0.1
    thetas = []
    for i in range(6):  # the EMA after n updates: d_n = min(0.99, (1 + n)/(10 + n)) (n = previous updates)
        with torch.no_grad():
            handoff.student.lam.add_(1.0 + i)
        handoff.ema.update_parameters(handoff.student)
        thetas.append(handoff.student.lam.detach().clone())
    ema = thetas[0]
    for n, th in enumerate(thetas[1:], start=1):
        d = min(0.99, (1 + n) / (10 + n))
        ema = d * ema + (1 - d) * th
    torch.testing.assert_close(handoff.ema.module.lam, ema)
    plain = hand_off(teacher, ema_decay=0.99, ema_warmup=False)
    plain.ema.update_parameters(plain.student)
    with torch.no_grad():
        plain.student.lam.add_(1.0)
    plain.ema.update_parameters(plain.student)
    torch.testing.assert_close(plain.ema.module.lam, teacher.lam + 0.01)


# ------------------------------------------------------------------------------------ the target


@pytest.mark.parametrize("method", ["euler", "ab2", "midpoint"])
def test_segment_endpoint_equals_an_independent_integration(method):
    """N substeps from t_k to t_{k+1} == solvers.sample run on [0, Delta] with the time shifted."""
    model = nonlinear_mlp()
    v = TeacherField(model, guided=True, w=1.7, num_classes=2, solver=method).velocity
    M, N = 4, 5
    x, y = toy_data(8)
    k = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    got = segment_endpoint(v, x, k, y, M, N, T=1.0, method=method)
    delta = 1.0 / M
    for i in range(8):
        t_end = 1.0 - (int(k[i]) + 1) * delta
        ref = sample(
            lambda xx, tt, yy: v(xx, tt + t_end, yy),  # noqa: B023 (called at once)
            x[i : i + 1],
            N,
            method=method,
            T=delta,
            y=y[i : i + 1],
        ).x
        torch.testing.assert_close(got[i : i + 1], ref, rtol=1e-5, atol=1e-6)
    # and a full chain of segments is the teacher's whole M*N-step sampler
    if method == "euler":
        xs = x.clone()
        for s in range(M):
            xs = segment_endpoint(v, xs, torch.full((8,), s), y, M, N)
        torch.testing.assert_close(xs, sample(v, x, M * N, "euler", y=y).x, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("states", ["forward", "rollout"])
def test_pooled_targets_are_the_teachers_n_substep_end_points(states, tmp_path):
    model = nonlinear_mlp(1)
    cfg = DistillConfig(
        ladder=(12, 3), iters=2, batch_size=16, targets="pool", pool_size=30, states=states, w=1.3
    )
    _stage(model, cfg, solver="ab2", run_dir=tmp_path)
    pool = runs.read_weights(tmp_path / "pool.safetensors")
    assert pool["x"].shape == (30, 2) and set(pool["k"].tolist()) <= {0, 1, 2}
    v = TeacherField(model, guided=True, w=1.3, num_classes=2, solver="ab2").velocity
    ref = segment_endpoint(v, pool["x"], pool["k"], pool["y"], 3, 4, method="ab2")
    torch.testing.assert_close(pool["target"], ref, rtol=1e-5, atol=1e-6)
    if states == "rollout":  # whole trajectories: the end point of interval k is the state of interval k+1
        assert pool["k"][:3].tolist() == [0, 1, 2]
        torch.testing.assert_close(pool["target"][0], pool["x"][1])
        torch.testing.assert_close(pool["target"][1], pool["x"][2])


# ------------------------------------------------------------------------------------ the teacher


def test_teacher_is_frozen_and_bit_identical_after_a_stage():
    model = Affine()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = DistillConfig(ladder=(4, 2), iters=20, lr=1e-2, batch_size=16, w=2.0)
    res = _stage(model, cfg)
    teacher = res.teacher
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    for k, v in model.state_dict().items():  # the model handed off is untouched as well
        assert torch.equal(v, before[k]), k
    # every teacher call ran without autograd, in eval mode, guided (conditional and null labels)
    grad_on, training, ys = zip(*teacher.calls)
    assert not any(grad_on) and not any(training)
    assert (torch.cat(ys) == 2).any()
    # the student moved and never saw the null class: guidance is baked in
    assert any(not torch.equal(a, b) for a, b in zip(res.student.state_dict().values(), before.values()))
    student_calls = [c for c in res.model.calls if c[0]]
    assert student_calls and all((c[2] < 2).all() for c in student_calls)


@pytest.mark.parametrize(
    "states,targets", [("forward", "online"), ("rollout", "online"), ("forward", "pool"), ("rollout", "pool")]
)
def test_distillation_is_exact_where_the_student_can_represent_it(states, targets):
    """An affine guided teacher: N Euler substeps are an affine map, which one Euler step of an
    affine field represents exactly, so the student must reproduce the teacher's end points."""
    teacher = Affine(seed=3)
    cfg = DistillConfig(
        ladder=(8, 2),
        iters=200,
        lr=3e-2,
        batch_size=16,
        w=1.5,
        ema_decay=0.0,
        states=states,
        targets=targets,
        pool_size=64,
    )
    res = _stage(teacher, cfg)
    assert res.losses[-5:].max() < 1e-8 < res.losses[0]
    v = TeacherField(teacher, guided=True, w=1.5, num_classes=2).velocity
    x = torch.randn(20, 2)
    y, k = torch.arange(20) % 2, torch.arange(20) % 2
    with torch.no_grad():
        torch.testing.assert_close(
            student_step(res.student, x, k, y, 2), segment_endpoint(v, x, k, y, 2, 4), rtol=1e-4, atol=1e-4
        )
        # the guided slope is baked in: lam_student(y) = (1 - (1 - h lam_w)^N) / Delta
        lam_w = teacher.lam[2] + 1.5 * (teacher.lam[:2] - teacher.lam[2])
        expect = (1 - (1 - 0.125 * lam_w) ** 4) / 0.5
        torch.testing.assert_close(res.student.lam[:2], expect, rtol=1e-4, atol=1e-4)


def test_constant_teacher_needs_no_training():
    """A constant field: one Euler step already equals N substeps, the loss is zero from the start."""

    class Const(nn.Module):
        def __init__(self):
            super().__init__()
            self.b = nn.Parameter(torch.tensor([0.3, -0.7]))

        def forward(self, x, t, y):
            return self.b.expand_as(x)

    cfg = DistillConfig(ladder=(10, 1), iters=1, lr=1e-2, batch_size=8, w=1.0)
    res = _stage(Const(), cfg)
    assert res.losses[0] < 1e-10  # (Adam then still moves every weight by about lr: sign steps)


# ------------------------------------------------------------------------------------ the gate


def test_quality_gate_extends_training_until_it_passes_and_respects_the_cap():
    calls = []

    def gate(student, teacher, spec):
        calls.append(spec.student_steps)
        return {"pass": len(calls) >= 3, "student_fid": 1.0}

    cfg = DistillConfig(ladder=(4, 2), iters=4, batch_size=8, gate=True, gate_chunk=3, gate_max_extra=100)
    res = _stage(nonlinear_mlp(), cfg, gate_fn=gate)
    assert res.iters == 4 + 2 * 3 and len(res.gate) == 3 and [g["step"] for g in res.gate] == [4, 7, 10]
    calls.clear()
    cfg = cfg.replace(gate_max_extra=5)
    res = _stage(nonlinear_mlp(), cfg, gate_fn=lambda s, t, sp: {"pass": False})
    assert res.iters == 9 and [g["step"] for g in res.gate] == [4, 7, 9]


# ------------------------------------------------------------------------------------ run_ladder


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    return {
        name: train_tiny_teacher(tmp_path_factory.mktemp(f"teacher-{name}"), path)
        for name, path in [("kac", KAC_9_3), ("gaussian", {"kind": "gaussian"})]
    }


SMALL = dict(
    ladder=(8, 4, 2, 1), iters=(4, 3, 3), lr=1e-3, batch_size=8, w=1.5, checkpoint_every=2, log_every=2
)


def _weights(d):
    return runs.read_weights(d / runs.EMA_FILE), runs.read_weights(d / runs.MODEL_FILE)


def test_run_ladder_writes_loadable_stage_directories(teachers, tmp_path):
    cfg = DistillConfig(**SMALL)
    res = run_ladder(teachers["kac"], tmp_path / "ladder", cfg, progress=False)
    assert [s.spec.student_steps for s in res.stages] == [4, 2, 1]
    for s, prev in zip(res.stages, [teachers["kac"]] + [st.run_dir for st in res.stages]):
        d = s.run_dir
        assert d.name == stage_dir_name(s.spec)
        raw = json.loads((d / "config.json").read_text())
        assert raw["distilled"]["steps"] == s.spec.student_steps and raw["distilled"]["sampler"] == "euler"
        # paths are stored relative to the ladder directory (a moved ladder resumes)
        assert raw["distilled"]["w"] == 1.5 and not os.path.isabs(raw["distilled"]["teacher"])
        assert (tmp_path / "ladder" / raw["distilled"]["teacher"]).resolve() == prev.resolve()
        loaded = load_run(d)
        assert loaded.step == s.iters and isinstance(loaded.config, dict)
        x = torch.randn(3, 1, 8, 8)
        torch.testing.assert_close(
            loaded.model(x, torch.ones(3), torch.zeros(3, dtype=torch.long)),
            s.student(x, torch.ones(3), torch.zeros(3, dtype=torch.long)),
        )
        metrics = runs.read_jsonl(d / "metrics.jsonl")
        assert metrics[-1]["step"] == s.iters and all(
            torch.isfinite(torch.tensor(r["loss"])) for r in metrics
        )
        assert (d / "result.json").is_file()
    # guided first stage: 2 passes x 2 substeps per sample; later stages 1 pass x 2 substeps
    assert res.stages[0].teacher_passes == 4 * 8 * 2 * 2 and res.stages[1].teacher_passes == 3 * 8 * 2
    assert cfg.planned_teacher_passes() == sum(s.teacher_passes for s in res.stages)  # planned = spent
    assert set(load_ladder(tmp_path / "ladder")) == {4, 2, 1}
    with pytest.raises(FileExistsError, match="resume=True"):
        run_ladder(teachers["kac"], tmp_path / "ladder", cfg, progress=False)
    with pytest.raises(runs.ConfigMismatchError):
        run_ladder(teachers["kac"], tmp_path / "ladder", cfg.replace(w=2.0), resume=True, progress=False)
    # a finished ladder resumes to the same students without training
    again = run_ladder(teachers["kac"], tmp_path / "ladder", cfg, resume=True, progress=False)
    assert all(len(s.losses) == 0 for s in again.stages)


class Interrupt(Exception):
    pass


@pytest.mark.parametrize(
    "states,targets", [("forward", "online"), ("rollout", "online"), ("rollout", "pool")]
)
def test_interrupted_ladder_resumes_bit_identically(teachers, tmp_path, states, targets):
    cfg = DistillConfig(**SMALL, states=states, targets=targets, pool_size=24)
    ref = run_ladder(teachers["kac"], tmp_path / "ref", cfg, progress=False)

    def stop(it, info):
        if info["stage"] == 2 and it == 3:  # after the checkpoint at iteration 2 of stage 2
            raise Interrupt

    with pytest.raises(Interrupt):
        run_ladder(teachers["kac"], tmp_path / "cut", cfg, progress=False, callback=stop)
    assert not (tmp_path / "cut" / "stage-2-2steps" / "result.json").exists()
    assert runs.load_state(tmp_path / "cut" / "stage-2-2steps")["step"] == 2
    res = run_ladder(teachers["kac"], tmp_path / "cut", cfg, resume=True, progress=False)
    assert res.stages[1].resumed_from == 2 and len(res.stages[0].losses) == 0
    for a, b in zip(ref.stages, res.stages):
        for wa, wb in zip(_weights(a.run_dir), _weights(b.run_dir)):
            assert wa.keys() == wb.keys()
            for key in wa:
                assert torch.equal(wa[key], wb[key]), (a.spec.index, key)
    ma = [r for r in runs.read_jsonl(ref.stages[1].run_dir / "metrics.jsonl")]
    mb = [r for r in runs.read_jsonl(res.stages[1].run_dir / "metrics.jsonl")]
    assert [r["step"] for r in ma] == [r["step"] for r in mb] and [r["loss"] for r in ma] == [
        r["loss"] for r in mb
    ]


def test_single_stage_ladder_and_gaussian_teacher(teachers, tmp_path):
    one = DistillConfig(ladder=(8, 1), iters=3, lr=1e-3, batch_size=8)
    res = run_ladder(teachers["kac"], tmp_path / "one", one, progress=False)
    assert len(res.stages) == 1 and res.stages[0].spec.substeps == 8
    assert res.stages[0].teacher_passes == 3 * 8 * 8  # w = 1: one pass per substep
    assert load_run(tmp_path / "one" / "stage-1-1steps").model is not None
    gcfg = DistillConfig(**SMALL, states="rollout")
    g = run_ladder(teachers["gaussian"], tmp_path / "gauss", gcfg, progress=False)
    assert isinstance(g.path, GaussianPath) and [s.spec.student_steps for s in g.stages] == [4, 2, 1]
    assert load_run(g.stages[-1].run_dir).path.config() == {"kind": "gaussian", "T": 1.0}
    x = sample(
        lambda xx, tt, yy: g.student(xx, tt, yy), torch.randn(4, 1, 8, 8), 1, "euler", y=torch.arange(4)
    ).x
    assert torch.isfinite(x).all()


def test_endpoint_loss_known_answer():
    """A student with zero velocity predicts x itself: the loss is ||x - target||^2 / Delta^2 (mean)."""
    from kaclib.distill import EndpointLoss

    class Zero(torch.nn.Module):
        def forward(self, x, t, y):
            return torch.zeros_like(x)

    g = torch.Generator().manual_seed(0)
    x, target = torch.randn(6, 1, 4, 4, generator=g), torch.randn(6, 1, 4, 4, generator=g)
    k = torch.zeros(6, dtype=torch.long)
    loss = EndpointLoss(student_steps=4, T=1.0)(Zero(), x, k, None, target)
    assert float(loss) == pytest.approx(float(((x - target) ** 2).mean()) * 16, rel=1e-6)

    # a student whose Euler step lands exactly on the target has zero loss
    class Exact(torch.nn.Module):
        def forward(self, xx, t, y):
            return (xx - target) / 0.25

    assert float(EndpointLoss(4)(Exact(), x, k, None, target)) == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize(
    "solver,w,per_substep", [("euler", 1.0, 1), ("midpoint", 1.0, 2), ("ab2", 1.5, 2), ("midpoint", 2.0, 4)]
)
def test_single_stage_matches_the_ladders_iterations_and_teacher_passes(solver, w, per_substep):
    cfg = DistillConfig(ladder=(16, 4, 2, 1), iters=(30, 20, 10), lr=(1e-3, 5e-4, 2e-4), batch_size=8, w=w,
                        teacher_solver=solver)  # fmt: skip
    assert cfg.flow_passes_per_substep() == per_substep
    planned = cfg.planned_teacher_passes()
    assert planned == 30 * 4 * 8 * per_substep + 20 * 2 * 8 + 10 * 2 * 8
    one = cfg.single_stage()
    assert one.ladder == (16, 1) and one.iters == 60 and one.lr == 2e-4 and one.targets == "pool"
    # the pool's end points cost what the ladder's teachers cost (up to rounding to whole targets)
    assert abs(one.pool_size * 16 * per_substep - planned) <= 8 * per_substep
    assert cfg.single_stage(10**6).pool_size == round(10**6 / (16 * per_substep))
