"""Known-answer tests of the few-step methods (kaclib.fewstep).

The known answer: the Gaussian path (rectified flow ``x_t = (1 - t) x0 + t eps``) and a 2D mixture of
three isotropic Gaussians of standard deviation 0.1, whose marginal velocity is closed-form
(``ExactField``: posterior-weighted conditional velocities).  The exact flow map is that field
integrated with 512 midpoint steps in float64; the teacher is the exact field itself (midpoint
substeps), the student ``MLPVelocity``.  Each method's distilled 1-step map must come closer to the
exact flow map at the larger budget (``BUDGETS``: student iterations, equal for all methods) and lie
below ``THRESHOLD`` there (the modes are 2 apart).  Measured (seeds 0, 1, 2 of config and student, the
larger budget): progressive 0.092 / 0.111 / 0.083, consistency 0.099 / 0.119 / 0.092, reflow with its
final 1-step stage 0.103 / 0.100 / 0.109 (the 2-rectified flow's own 1-step map: 0.18 / 0.19 / 0.19);
at the smaller budget every method is above 0.7.
"""

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from kaclib import fewstep as fs
from kaclib.distill import EndpointLoss, TeacherField, segment_endpoint
from kaclib.fewstep.exact import MixtureField as ExactField
from kaclib.fewstep.exact import mixture_log_density as log_density
from kaclib.models import MLPVelocity
from kaclib.paths import GaussianPath, KacPath
from kaclib.solvers import sample

MEANS = [[1.0, 1.0], [-1.0, 1.0], [0.0, -1.2]]
STD = 0.1
BUDGETS = (90, 1800)  # student iterations, the same for every method
THRESHOLD = 0.2  # mean end-point error at the larger budget: a tenth of the distance between modes (2)


@pytest.fixture(scope="module")
def toy():
    torch.set_num_threads(1)
    field = ExactField(MEANS, STD)
    g = torch.Generator().manual_seed(0)
    comp = torch.randint(len(MEANS), (4096,), generator=g)
    data = (torch.tensor(MEANS)[comp] + STD * torch.randn(4096, 2, generator=g)).float()
    x_T = torch.randn(2000, 2, generator=torch.Generator().manual_seed(1))
    exact = sample(field, x_T.double(), 512, "midpoint").x.float()
    teacher = TeacherField(field, guided=True, w=1.0, num_classes=1, solver="midpoint")
    return {
        "field": field,
        "data": data,
        "x_T": x_T,
        "exact": exact,
        "teacher": teacher,
        "path": GaussianPath(),
    }


def endpoint_error(student, toy) -> float:
    """Mean Euclidean distance between the student's 1-step map and the exact flow map."""
    return float((fs.one_step_map(student, toy["x_T"], 1.0) - toy["exact"]).norm(dim=1).mean())


def fresh_student(seed=0):
    torch.manual_seed(seed)
    return MLPVelocity(dim=2, hidden=64, depth=3)


def on_toy(run_method, toy, cfg, **kwargs):
    """``run_method`` (a few-step method) on the toy teacher and data, from a fresh student."""
    return run_method(toy["teacher"], toy["path"], toy["data"], config=cfg, student=fresh_student(), **kwargs)


def rand_net(seed=0):
    """An MLP with a non-zero (random) output layer."""
    net = fresh_student(seed)
    nn.init.normal_(net.out.weight, std=0.3)
    return net


# ----------------------------------------------------------------------------- the known answer itself


def test_exact_field_matches_the_score_identity(toy):
    """u = E[eps - x0 | x] = -t s(x) - (x + t^2 s(x))/(1 - t), s = grad log p_t (Tweedie), by autograd."""
    means = torch.tensor(MEANS, dtype=torch.float64)
    x = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 1.5
    for t in (0.05, 0.3, 0.7, 0.95):
        xr = x.clone().requires_grad_(True)
        (score,) = torch.autograd.grad(log_density(xr, t, means, STD).sum(), xr)
        want = -t * score - (x + t**2 * score) / (1 - t)
        got = toy["field"](x, torch.full((64,), t, dtype=torch.float64))
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_exact_flow_map_lands_on_the_modes(toy):
    """The exact map pushes N(0, I) onto the mixture: every end point lies within 5 std of a mode."""
    d = torch.cdist(toy["exact"], torch.tensor(MEANS)).min(1).values
    assert float(d.max()) < 5 * STD
    assert float(d.mean()) < 2 * STD


def test_known_answer_case_is_this_files_case(toy):
    """kaclib.fewstep.exact builds the same case (chapter 7 runs it) and budgets every method alike."""
    from kaclib.fewstep import exact as ex

    case = ex.known_answer_case()
    for name in ("data", "x_T", "exact"):
        torch.testing.assert_close(getattr(case, name), toy[name], rtol=0, atol=0)
    for method in ex.METHODS:
        budget = ex.known_answer_config(method, 300).planned_budget(2)
        assert budget["student_iters"] == 300, (method, budget)
    with pytest.raises(ValueError):
        ex.known_answer_config("nope", 300)


# ----------------------------------------------------------------------------- progressive distillation


def test_progressive_schedule_halves():
    specs = fs.progressive_schedule(64, 1, iters=7, lr=1e-3)
    assert [(s.teacher_steps, s.student_steps, s.substeps) for s in specs] == [
        (64, 32, 2),
        (32, 16, 2),
        (16, 8, 2),
        (8, 4, 2),
        (4, 2, 2),
        (2, 1, 2),
    ]
    assert [s.index for s in specs] == [1, 2, 3, 4, 5, 6] and all(s.iters == 7 for s in specs)
    assert [s.iters for s in fs.progressive_schedule(8, 2, iters=(3, 4))] == [3, 4]
    for bad in ((12, 1), (8, 8), (8, 3), (1, 1)):
        with pytest.raises(ValueError):
            fs.progressive_schedule(*bad)
    with pytest.raises(ValueError, match="stages"):
        fs.progressive_schedule(8, 1, iters=(1, 2))


@pytest.mark.parametrize("method", ["euler", "midpoint"])
def test_progressive_target_is_two_teacher_steps(toy, method):
    """The target is the average velocity of two teacher steps of size Delta/2 from t_k."""
    v, M, T = toy["field"], 4, 1.0
    x = torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    k = torch.arange(32) % M
    delta, h = T / M, T / (2 * M)
    t = T * (M - k.double()) / M

    def step(x, t):
        if method == "euler":
            return x - h * v(x, t)
        return x - h * v(x - 0.5 * h * v(x, t), t - 0.5 * h)

    x2 = step(step(x, t), t - h)
    got = fs.progressive_target(v, x, k, None, M, T, method)
    torch.testing.assert_close(got, (x - x2) / delta, rtol=1e-12, atol=1e-12)


def test_progressive_loss_equals_the_endpoint_loss_at_two_substeps(toy):
    """In the velocity parameterisation the progressive loss is DistillKac's endpoint loss, N = 2."""
    net, M = rand_net(1), 4
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(6))
    k = torch.arange(64) % M
    target = segment_endpoint(toy["field"], x, k, None, M, 2)
    a = fs.ProgressiveLoss(M)(net, x, k, None, target)
    b = EndpointLoss(M)(net, x, k, None, target)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert float(a.detach()) > 0


def test_progressive_approaches_the_exact_map(toy):
    errs = []
    for iters in (BUDGETS[0] // 3, BUDGETS[1] // 3):  # 3 halving stages 8 -> 4 -> 2 -> 1
        cfg = fs.ProgressiveConfig(start_steps=8, end_steps=1, iters=iters, batch_size=256, lr=2e-3)
        r = on_toy(fs.run_progressive, toy, cfg)
        errs.append(endpoint_error(r.student, toy))
        assert r.budget() == {
            "method": r.method,
            **cfg.planned_budget(fs.teacher_evals_per_step(toy["teacher"])),
        }
        # 3 stages; stage 1 asks the midpoint teacher for 2 substeps x 2 evaluations per sample
        assert r.student_iters == 3 * iters and r.flow_teacher_passes == iters * 256 * 4
        assert r.teacher_passes == r.flow_teacher_passes + 2 * iters * 256 * 2
    assert errs[1] < 0.5 * errs[0], errs
    assert errs[1] < THRESHOLD, errs


# ----------------------------------------------------------------------------- consistency distillation


def test_consistency_boundary_condition_is_exact():
    net = rand_net(2).requires_grad_(False)
    x = torch.randn(16, 2)
    torch.testing.assert_close(fs.consistency_fn(net, x, torch.zeros(16)), x, rtol=0, atol=0)
    f = fs.consistency_fn(net, x, torch.full((16,), 0.5))
    torch.testing.assert_close(f, x - 0.5 * net(x, torch.full((16,), 0.5)))
    assert float((f - x).abs().max()) > 1e-3  # the network is not trivial


class _PointMassVelocity(nn.Module):
    """The exact marginal velocity of the Gaussian path for data at the single point ``m``:
    ``x_t = (1 - t) m + t eps`` gives ``u(x, t) = (x - m)/t``, so ``f(x, t) = m`` for every ``t > 0``."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x, t, y=None):
        return (x - self.m) / t.reshape(-1, *([1] * (x.ndim - 1)))


@pytest.mark.parametrize("steps", [1, 2, 5])
def test_consistency_sampling_of_an_exact_model_lands_on_the_data(steps):
    """Multistep consistency sampling re-noises with the path and maps back: with the exact
    consistency function of a point mass every step lands on the point, whatever the noise."""
    m = torch.tensor([[0.3, -0.7]], dtype=torch.float64)
    model = _PointMassVelocity(m)
    x_T = torch.randn(16, 2, dtype=torch.float64)
    x = fs.consistency_sample(model, GaussianPath(), x_T, steps, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(x, m.expand_as(x), atol=1e-12)


def test_consistency_sampling_one_step_is_the_one_step_map_and_more_steps_renoise():
    net = rand_net(3)
    x_T = KacPath().sample_latent((32, 2))
    one = fs.consistency_sample(net, KacPath(), x_T, 1)
    assert torch.equal(one, fs.one_step_map(net, x_T, 1.0))
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    a = fs.consistency_sample(net, KacPath(), x_T, 3, generator=g1)
    b = fs.consistency_sample(net, KacPath(), x_T, 3, generator=g2)
    assert not torch.allclose(a, b)  # the intermediate states are re-noised by the path's own law
    with pytest.raises(ValueError, match="steps"):
        fs.consistency_sample(net, KacPath(), x_T, 0)


def test_consistency_loss_matches_its_formula(toy):
    """At k = N - 1 the target network is evaluated at t = 0, where f = x_hat exactly."""
    student, target_net, N = rand_net(3), rand_net(4), 4
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(7))
    k = torch.full((32,), N - 1)
    x_hat = segment_endpoint(toy["field"], x, k, None, N, 1)
    loss = fs.ConsistencyLoss(N, target_net)(student, x, k, None, x_hat)
    t_hi = torch.full((32,), 1.0 / N)
    want = torch.mean((x - t_hi[:, None] * student(x, t_hi) - x_hat) ** 2) * N**2
    torch.testing.assert_close(loss, want)
    k = torch.full((32,), 1)  # interior: the target network's f at t_{k+1} = 1/2
    loss = fs.ConsistencyLoss(N, target_net)(student, x, k, None, x_hat)
    t_hi, t_lo = torch.full((32,), 0.75), torch.full((32,), 0.5)
    want = (
        torch.mean((fs.consistency_fn(student, x, t_hi) - fs.consistency_fn(target_net, x_hat, t_lo)) ** 2)
        * N**2
    )
    torch.testing.assert_close(loss, want)


def test_consistency_approaches_the_exact_map(toy):
    errs = []
    for iters in BUDGETS:
        cfg = fs.ConsistencyConfig(N=8, iters=iters, batch_size=256, lr=2e-3, ema_decay=0.9)
        r = on_toy(fs.run_consistency, toy, cfg)
        errs.append(endpoint_error(r.student, toy))
        assert r.budget() == {
            "method": r.method,
            **cfg.planned_budget(fs.teacher_evals_per_step(toy["teacher"])),
        }
        assert r.student_iters == iters and r.teacher_passes == iters * 256 * 2  # one midpoint step
    assert errs[1] < 0.5 * errs[0], errs
    assert errs[1] < THRESHOLD, errs


# ----------------------------------------------------------------------------- reflow


def test_couplings_are_teacher_ode_solutions(toy):
    c = fs.sample_couplings(toy["teacher"], toy["path"], (2,), 300, 32, 1, seed=4, chunk=128)
    assert c["x_T"].shape == c["x_0"].shape == (300, 2) and c["y"].shape == (300,)
    again = sample(toy["teacher"].velocity, c["x_T"], 32, "midpoint", y=c["y"]).x
    torch.testing.assert_close(c["x_0"], again, rtol=1e-5, atol=1e-5)
    exact = sample(toy["field"], c["x_T"].double(), 512, "midpoint").x.float()
    assert float((c["x_0"] - exact).norm(dim=1).max()) < 0.01
    c2 = fs.sample_couplings(toy["teacher"], toy["path"], (2,), 300, 32, 1, seed=4, chunk=300)
    torch.testing.assert_close(c2["x_T"], c["x_T"], rtol=0, atol=0)  # latents from the path, seeded


def test_couplings_start_from_the_paths_own_latents():
    """A Kac teacher's couplings start from Kac latents (|x_T| <= c g(T)), not Gaussian ones."""
    path = KacPath(a=9.0, c=3.0)
    teacher = TeacherField(rand_net(5), guided=False, num_classes=1)
    c = fs.sample_couplings(teacher, path, (2,), 500, 2, 1, seed=1)
    assert float(c["x_T"].abs().max()) <= 3.0 + 1e-6
    want = path.sample_latent(
        (500, 2),
        generator=torch.Generator().manual_seed(fs.reflow.step_seed(1, 0, -2, fs.reflow._S_COUPLINGS)),
    )
    torch.testing.assert_close(c["x_T"], want, rtol=0, atol=0)


def test_straight_interpolation_has_constant_velocity():
    g = torch.Generator().manual_seed(8)
    x0, xT = (
        torch.randn(10, 2, generator=g, dtype=torch.float64),
        torch.randn(10, 2, generator=g, dtype=torch.float64),
    )
    T = 2.0
    for t in (0.3, 1.1, 1.7):
        tt = torch.full((10,), t, dtype=torch.float64)
        eps = 1e-6
        a, u = fs.straight_interpolation(x0, xT, tt + eps, T)
        b, u2 = fs.straight_interpolation(x0, xT, tt - eps, T)
        torch.testing.assert_close((a - b) / (2 * eps), u, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(u, u2, rtol=0, atol=0)
    ends = fs.straight_interpolation(x0, xT, torch.tensor([0.0] * 5 + [T] * 5, dtype=torch.float64), T)[0]
    torch.testing.assert_close(ends, torch.cat([x0[:5], xT[5:]]), rtol=0, atol=0)


def test_reflow_batches_replay_from_the_generator(toy):
    c = fs.sample_couplings(toy["teacher"], toy["path"], (2,), 50, 4, 1)
    batch = fs.reflow_batch(c, 16)
    a = batch(3, torch.Generator().manual_seed(11))
    b = batch(3, torch.Generator().manual_seed(11))
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=0, atol=0)
    x_t, t, _, u = a
    assert bool(((t >= 0) & (t <= 1)).all())
    # every state lies on the straight line of its pair: x_t + t u = x_0 ... find the pair by its velocity
    idx = torch.cdist(u, c["x_T"] - c["x_0"]).argmin(1)
    torch.testing.assert_close(x_t, c["x_0"][idx] + t[:, None] * u, rtol=1e-5, atol=1e-5)


def test_reflow_approaches_the_exact_map(toy):
    errs = []
    for budget in BUDGETS:
        iters = 2 * budget // 3  # reflow, then a final 1-step endpoint stage of half as many iterations
        cfg = fs.ReflowConfig(
            n_pairs=2048,
            coupling_steps=32,
            reflow_iters=iters,
            distill_iters=iters // 2,
            distill_teacher_steps=8,
            batch_size=256,
            lr=1e-3,
        )
        r = on_toy(fs.run_reflow, toy, cfg)
        errs.append(endpoint_error(r.student, toy))
        assert r.budget() == {
            "method": r.method,
            **cfg.planned_budget(fs.teacher_evals_per_step(toy["teacher"])),
        }
        assert r.flow_teacher_passes == 2048 * 32 * 2 == r.extra["coupling_passes"]
        assert r.student_iters == iters + iters // 2 == budget
        assert r.teacher_passes == r.flow_teacher_passes + (iters // 2) * 256 * 8  # 8 Euler steps of the 2-RF
    assert errs[1] < 0.5 * errs[0], errs
    assert errs[1] < THRESHOLD, errs


# ----------------------------------------------------------------------------- configs and run directories


@pytest.mark.parametrize(
    "cls,kw",
    [
        (fs.ProgressiveConfig, {"start_steps": 16, "iters": (1, 2, 3, 4)}),
        (fs.ConsistencyConfig, {"N": 5, "iters": 9, "ema_decay": 0.9}),
        (fs.ReflowConfig, {"n_pairs": 10, "coupling_steps": 3, "distill_iters": 2}),
        (fs.ReflowConfig, {"accel": {"amp_dtype": "fp32", "fused_adam": False}}),
    ],
)
def test_configs_round_trip_through_json(cls, kw):
    cfg = cls(**kw)
    assert cls.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown"):
        cls.from_dict({**cfg.to_dict(), "nope": 1})


@pytest.mark.parametrize(
    "cls,kw",
    [
        (fs.ProgressiveConfig, {"start_steps": 12}),
        (fs.ConsistencyConfig, {"N": 0}),
        (fs.ReflowConfig, {"n_pairs": 0}),
        (fs.ReflowConfig, {"distill_teacher_steps": 1}),
        (fs.ConsistencyConfig, {"ema_decay": 1.0}),
        (fs.ProgressiveConfig, {"batch_size": 0}),
    ],
)
def test_configs_refuse_bad_values(cls, kw):
    with pytest.raises(ValueError):
        cls(**kw)


def test_run_dir_saves_the_config_and_resumes(toy, tmp_path):
    cfg = fs.ReflowConfig(
        n_pairs=64,
        coupling_steps=4,
        reflow_iters=6,
        distill_iters=4,
        distill_teacher_steps=2,
        batch_size=16,
        checkpoint_every=3,
        log_every=2,
    )
    run = tmp_path / "reflow"
    r = on_toy(fs.run_reflow, toy, cfg, run_dir=run, info={"dataset": "toy"})
    top = json.loads((run / "config.json").read_text())
    assert top["method"] == "reflow" and fs.ReflowConfig.from_dict(top["fewstep"]) == cfg
    assert top["path"] == {"kind": "gaussian", "T": 1.0} and top["dataset"] == "toy"
    for stage in ("stage-1-reflow", "stage-2-1steps"):
        assert (run / stage / "result.json").is_file() and (run / stage / "ema.safetensors").is_file()
    assert (run / "couplings.safetensors").is_file()
    torch.testing.assert_close(
        load_file(str(run / "couplings.safetensors"))["x_0"], r.extra["couplings"]["x_0"]
    )
    with pytest.raises(FileExistsError):
        on_toy(fs.run_reflow, toy, cfg, run_dir=run)
    again = on_toy(fs.run_reflow, toy, cfg, run_dir=run, resume=True, info={"dataset": "toy"})
    for a, b in zip(r.student.state_dict().values(), again.student.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert again.budget() == r.budget()


def test_an_interrupted_consistency_run_resumes_bit_for_bit(toy, tmp_path):
    cfg = fs.ConsistencyConfig(N=4, iters=8, batch_size=16, checkpoint_every=4, log_every=2)
    whole = on_toy(fs.run_consistency, toy, cfg)

    class Stop(Exception):
        pass

    def interrupt(it, info):
        if it == 5:
            raise Stop

    run = tmp_path / "cd"
    with pytest.raises(Stop):
        on_toy(fs.run_consistency, toy, cfg, run_dir=run, callback=interrupt)
    resumed = on_toy(fs.run_consistency, toy, cfg, run_dir=run, resume=True)
    assert resumed.stages[0].resumed_from == 4
    for a, b in zip(whole.student.state_dict().values(), resumed.student.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_run_functions_refuse_bad_inputs(toy):
    with pytest.raises(ValueError, match="TeacherField"):
        fs.run_consistency(toy["field"], toy["path"], toy["data"])
    with pytest.raises(ValueError, match="ConsistencyConfig"):
        fs.run_consistency(toy["teacher"], toy["path"], toy["data"], config=fs.ReflowConfig())


@pytest.mark.parametrize("method", ["progressive", "consistency", "reflow"])
def test_a_guided_kac_teacher_spends_the_planned_budget(method):
    """The set-up of the benchmark in miniature: a guided class-conditional teacher (2 passes per
    evaluation) on the Kac path; every method runs and spends exactly its planned budget."""
    torch.manual_seed(0)
    teacher_net = MLPVelocity(dim=2, hidden=16, depth=2, num_classes=2)
    nn.init.normal_(teacher_net.out.weight, std=0.1)
    tf = TeacherField(teacher_net, guided=True, w=2.0, num_classes=2, solver="ab2")
    data, labels = torch.randn(64, 2).clamp(-1, 1), torch.arange(64) % 2
    common = {"batch_size": 8, "log_every": 1}
    cfg, run = {
        "progressive": (fs.ProgressiveConfig(start_steps=4, iters=3, **common), fs.run_progressive),
        "consistency": (fs.ConsistencyConfig(N=4, iters=5, **common), fs.run_consistency),
        "reflow": (
            fs.ReflowConfig(
                n_pairs=32,
                coupling_steps=4,
                reflow_iters=4,
                distill_iters=3,
                distill_teacher_steps=2,
                **common,
            ),
            fs.run_reflow,
        ),
    }[method]
    r = run(tf, KacPath(), data, labels, cfg)  # the student starts from the teacher's weights
    assert fs.teacher_evals_per_step(tf) == 2
    assert r.budget() == {"method": method, **cfg.planned_budget(2)}
    assert r.student is not teacher_net and r.student.num_classes == 2
    x = fs.one_step_map(r.student, KacPath().sample_latent((8, 2)), 1.0, labels[:8])
    assert bool(torch.isfinite(x).all())
