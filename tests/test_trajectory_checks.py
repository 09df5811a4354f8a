"""End points against whole trajectories: closed-form deviations of a straight Euler line from a
curved (linear-in-time field) and a kinked (jump field) teacher path, the fitted exponents of the
deviation against the step size, the slope CI's coverage, and a tiny trained ladder end to end."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from kaclib.distill import (
    DistillConfig,
    StageSpec,
    TeacherField,
    load_ladder,
    segment_endpoint,
    student_step,
)
from kaclib.evaluation import generate
from kaclib.paths import GaussianPath
from kaclib.solvers import sample
from kaclib.trajectory_checks import (
    correlations,
    deviation_figure,
    deviation_slope,
    deviation_study,
    interval_deviation,
    load_ladder_stages,
    sampler_states,
    stage_deviation_study,
)

torch.set_num_threads(1)
PATH = GaussianPath()  # only its T = 1 is used by the toy fields


def spec(M, N, index=1):
    return StageSpec(index=index, teacher_steps=M * N, student_steps=M, substeps=N, lr=1e-3, iters=1)


class LinearInTime(nn.Module):
    """Teacher ``u(x, t, y) = c_y t``: constant in x, linear in t."""

    def __init__(self, coef):
        super().__init__()
        self.coef = coef  # (K, D)

    def forward(self, x, t, y):
        return self.coef[y] * t[:, None]


class ExactAverageOfLinear(nn.Module):
    """The exact average velocity of the Euler teacher ``c_y t`` over ``[t - Delta, t]`` with
    ``N`` substeps of ``h = Delta / N``: ``c_y (t - h (N - 1) / 2)``."""

    def __init__(self, coef, M, N):
        super().__init__()
        self.coef, self.h, self.N = coef, 1.0 / (M * N), N

    def forward(self, x, t, y):
        return self.coef[y] * (t - self.h * (self.N - 1) / 2)[:, None]


class Jump(nn.Module):
    """Teacher ``u(x, t, y) = c 1[t > tau_y]``: a jump in time at a per-label ``tau``."""

    def __init__(self, c, tau):
        super().__init__()
        self.c, self.tau = c, tau

    def forward(self, x, t, y):
        return (t > self.tau[y]).to(x.dtype)[:, None] * self.c


class ExactAverageOfJump(nn.Module):
    """The exact average of the Euler teacher ``c 1[t > tau]`` over the interval: ``c m / N``,
    ``m`` the substep times ``t - i h`` (``i < N``) above ``tau``."""

    def __init__(self, c, tau, M, N):
        super().__init__()
        self.c, self.tau, self.h, self.N = c, tau, 1.0 / (M * N), N

    def forward(self, x, t, y):
        i = torch.arange(self.N, dtype=x.dtype)
        m = ((t[:, None] - self.h * i) > self.tau[y][:, None]).to(x.dtype).sum(1)
        return (m / self.N)[:, None] * self.c


def euler_teacher(model):
    return TeacherField(model, guided=False)


# ------------------------------------------------------------------------------------ known answers


@pytest.mark.parametrize("M,N", [(1, 2), (4, 5), (2, 8)])
def test_exact_average_student_of_a_linear_in_time_field(M, N):
    """Zero end-point error, and d_j = ||c_y|| h^2 j (N - j) / 2 at every substep (a chord of a parabola)."""
    g = torch.Generator().manual_seed(0)
    coef = torch.randn(3, 4, generator=g, dtype=torch.float64)
    x = torch.randn(6, 4, generator=g, dtype=torch.float64)
    y = torch.arange(6) % 3
    st = spec(M, N)
    for k in range(M):
        r = interval_deviation(
            euler_teacher(LinearInTime(coef)), ExactAverageOfLinear(coef, M, N), PATH, x, k, y, st
        )
        h = 1.0 / (M * N)
        j = np.arange(N + 1)
        want = coef[y].norm(dim=1).numpy()[:, None] * h**2 * j * (N - j) / 2
        np.testing.assert_allclose(r.deviations, want, rtol=1e-9, atol=1e-14)
        np.testing.assert_allclose(r.endpoint_error, 0.0, atol=1e-14)
        np.testing.assert_allclose(r.interior_deviation, want[:, N // 2], rtol=1e-9)
        assert r.deviations.shape == (6, N + 1) and r.k.tolist() == [k] * 6
        np.testing.assert_allclose(r.offsets, j / (M * N))
        if N % 2 == 0:  # the chord's sag |a'| Delta^2 / 8
            np.testing.assert_allclose(
                r.interior_deviation, coef[y].norm(dim=1).numpy() / (8 * M**2), rtol=1e-9
            )


def test_exact_average_student_of_a_jump_field():
    """A jump at relative position theta = m / N of the interval: largest gap |c| Delta theta (1 - theta)."""
    c = torch.tensor([3.0, 4.0], dtype=torch.float64)  # |c| = 5
    M, N = 2, 4
    tau = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.4], dtype=torch.float64)  # all inside interval k = 0: [0.5, 1]
    y = torch.arange(5)
    x = torch.zeros(5, 2, dtype=torch.float64)
    r = interval_deviation(
        euler_teacher(Jump(c, tau)), ExactAverageOfJump(c, tau, M, N), PATH, x, 0, y, spec(M, N)
    )
    m = np.array([1, 2, 3, 4, 4])  # substep times 1, .875, .75, .625 above tau
    theta = m / N
    np.testing.assert_allclose(r.endpoint_error, 0.0, atol=1e-14)
    np.testing.assert_allclose(r.interior_deviation, 5 * 0.5 * theta * (1 - theta), rtol=1e-12, atol=1e-14)


def _study(teacher, student_of, Ms, N, x, y):
    return deviation_study(
        [(spec(M, N, i + 1), euler_teacher(teacher), student_of(M)) for i, M in enumerate(Ms)],
        PATH,
        x,
        y,
        label="toy",
    )


def test_linear_in_time_deviation_scales_as_delta_squared():
    g = torch.Generator().manual_seed(1)
    coef = torch.randn(4, 3, generator=g, dtype=torch.float64)
    x, y = torch.randn(8, 3, generator=g, dtype=torch.float64), torch.arange(8) % 4
    study = _study(LinearInTime(coef), lambda M: ExactAverageOfLinear(coef, M, 4), (1, 2, 4, 8, 16), 4, x, y)
    for fit in (study.slope, study.slope_mean):
        assert fit.slope == pytest.approx(2.0, abs=1e-9) and fit.half_width < 1e-6 and not fit.contains(1.0)
    for s in study.stages:  # exact students: zero end-point error along the whole path
        assert s.deviation.endpoint_error.max() < 1e-12


def test_jump_field_deviation_scales_as_delta():
    """Random jump times: the largest interior gap along a path is |c| Delta theta (1 - theta) with the
    same law of theta at every Delta, so its mean scales as Delta^1; averaged over all intervals (only
    one holds the jump) it scales as Delta^2."""
    g = torch.Generator().manual_seed(2)
    n = 400
    tau = torch.rand(n, generator=g, dtype=torch.float64)
    c = torch.tensor([1.0, -2.0], dtype=torch.float64)
    x, y = torch.zeros(n, 2, dtype=torch.float64), torch.arange(n)
    study = _study(Jump(c, tau), lambda M: ExactAverageOfJump(c, tau, M, 4), (1, 2, 4, 8, 16), 4, x, y)
    assert study.slope.contains(1.0) and not study.slope.contains(2.0) and study.slope.n == 5
    assert study.slope_mean.contains(2.0) and not study.slope_mean.contains(1.0)
    d = study.to_dict()
    assert [s["student_steps"] for s in d["stages"]] == [1, 2, 4, 8, 16] and d["label"] == "toy"


def test_slope_ci_covers_the_true_exponent_at_its_level():
    """Monte Carlo: log v = log C + p log Delta + noise; the 95% CI contains p in ~95% of 600 draws."""
    rng = np.random.default_rng(0)
    deltas = np.repeat([1.0, 0.5, 0.25, 0.05], 3)
    hits = 0
    for _ in range(600):
        v = 0.3 * deltas**1.3 * np.exp(0.2 * rng.standard_normal(deltas.size))
        hits += deviation_slope(deltas, v).contains(1.3)
    assert 0.925 <= hits / 600 <= 0.97  # binomial sd 0.9% around 0.95


# ------------------------------------------------------------------------------------ shapes and validation


def test_input_validation():
    coef = torch.ones(2, 3)
    tf, st = euler_teacher(LinearInTime(coef)), spec(2, 2)
    stu = ExactAverageOfLinear(coef, 2, 2)
    x, y = torch.zeros(4, 3), torch.zeros(4, dtype=torch.long)
    for bad_k in (2, -1, torch.zeros(3, dtype=torch.long), torch.zeros(4), True):
        with pytest.raises(ValueError, match="k must"):
            interval_deviation(tf, stu, PATH, x, bad_k, y, st)
    with pytest.raises(ValueError, match="x must"):
        interval_deviation(tf, stu, PATH, torch.zeros(4, dtype=torch.long), 0, y, st)
    with pytest.raises(ValueError, match="x must"):
        interval_deviation(tf, stu, PATH, torch.zeros(4), 0, y, st)
    with pytest.raises(ValueError, match="y must"):
        interval_deviation(tf, stu, PATH, x, 0, y[:3], st)
    with pytest.raises(ValueError, match="StageSpec"):
        interval_deviation(tf, stu, PATH, x, 0, y, (2, 2))
    for d, v, match in [
        ([1, 0.5], [1, -1], "> 0"),
        ([1, 1, 1], [1, 2, 3], "distinct"),
        ([1, 0.5], [1], "equal length"),
        ([1, 0.5], [1, float("nan")], "finite"),
    ]:
        with pytest.raises(ValueError, match=match):
            deviation_slope(d, v)
    two = deviation_slope([1.0, 0.5], [1.0, 0.25])  # two points: exact slope, undefined CI
    assert two.slope == pytest.approx(2.0) and math.isnan(two.lo) and not two.contains(2.0)
    with pytest.raises(ValueError, match="triples"):
        deviation_study([st], PATH, x, y)
    with pytest.raises(ValueError, match="LadderResult"):
        stage_deviation_study(3)
    assert math.isnan(correlations([1, 1, 1], [1, 2, 3])["pearson"])
    r = correlations([1, 2, 3, 4], [1, 4, 9, 17])
    assert r["spearman"] == pytest.approx(1.0) and 0.9 < r["pearson"] < 1.0
    one = interval_deviation(tf, ExactAverageOfLinear(coef, 2, 1), PATH, x, 1, y, spec(2, 1))
    assert one.deviations.shape == (4, 2) and np.isnan(one.interior_deviation).all()
    no_interior = deviation_study([(spec(2, 1), tf, ExactAverageOfLinear(coef, 2, 1))], PATH, x, y).to_dict()
    assert (
        no_interior["stages"][0]["per_sample"] is None and no_interior["slope_sup_interior_vs_delta"] is None
    )
    assert (
        no_interior["stages"][0]["sup_interior_deviation"] is None
        and no_interior["pooled_per_sample"] is None
    )


@pytest.mark.parametrize("method", ["euler", "midpoint", "ab2"])
def test_segment_endpoint_return_path(method):
    g = torch.Generator().manual_seed(3)
    model = LinearInTime(torch.randn(3, 2, generator=g))
    field = lambda x, t, y: model(x, t, y) + 0.3 * x * t[:, None]  # noqa: E731  (nonlinear in t, linear in x)
    x, y = torch.randn(5, 2, generator=g), torch.arange(5) % 3
    k = torch.tensor([0, 1, 2, 0, 1])
    end, states = segment_endpoint(field, x, k, y, 3, 4, method=method, return_path=True)
    assert states.shape == (5, 5, 2) and torch.equal(states[0], x) and torch.equal(states[-1], end)
    assert torch.equal(end, segment_endpoint(field, x, k, y, 3, 4, method=method))
    if method == "euler":  # the substeps are the teacher sampler's own steps
        ref = sample(field, x[:1], 12, "euler", y=y[:1], return_trajectory=True).trajectory
        torch.testing.assert_close(states[:, 0], ref[:5, 0])


# ------------------------------------------------------------------------------------ a tiny trained ladder


@pytest.fixture(scope="module")
def ladder(tiny_guided_ladder):
    return tiny_guided_ladder[1]


def test_stage_study_on_a_trained_ladder(ladder):
    study = stage_deviation_study(ladder.run_dir, n=6, seed=3, batch_size=4)
    assert study.label == "kac" and [s.spec.student_steps for s in study.stages] == [4, 2, 1]
    path, stages, num_classes, shape = load_ladder_stages(ladder)
    assert shape == (1, 8, 8) and num_classes == 10 and stages[0][1].guided and stages[0][1].solver == "ab2"
    assert not stages[1][1].guided and stages[1][1].model is stages[0][2]  # a student teaches the next stage
    spec1, tf1, stu1 = stages[0]
    # the states are the guided teacher's own AB-2 trajectory from the shared latents
    gen = generate(tf1.model, path, 6, 8, method="ab2", w=1.5, seed=3, return_trajectory=True)
    from kaclib.evaluation import balanced_labels, image_latents

    x_T, y = image_latents(path, 6, shape, seed=3), balanced_labels(6, 10)
    states = sampler_states(tf1, path, spec1, x_T, y)
    torch.testing.assert_close(states, gen.trajectory[0:8:2])
    # end-point error = || student's Euler step - teacher's N-substep end point ||
    k = torch.full((6,), 2, dtype=torch.long)
    with torch.no_grad():
        want = student_step(stu1, states[2], k, y, 4) - segment_endpoint(
            tf1.velocity, states[2], k, y, 4, 2, method="ab2"
        )
    np.testing.assert_allclose(
        study.stages[0].deviation.endpoint_error[:, 2], want.flatten(1).norm(dim=1).numpy(), rtol=1e-5
    )
    for s in study.stages:
        d = s.deviation
        assert d.endpoint_error.shape == (6, s.spec.student_steps) == d.interior_deviation.shape
        assert np.isfinite(d.endpoint_error).all() and (d.interior_deviation > 0).all()
        sm = s.summary()
        assert sm["n"] == 6 and sm["delta"] == pytest.approx(1 / s.spec.student_steps)
        assert set(sm["per_sample"]) >= {"pearson", "spearman"}
    assert study.slope.n == 3 and math.isfinite(study.slope.slope) and study.pooled["n"] == 18
    again = stage_deviation_study(
        ladder, n=6, seed=3
    )  # a LadderResult works as well, independent of batch size
    np.testing.assert_allclose(
        again.stages[2].deviation.interior_deviation, study.stages[2].deviation.interior_deviation, rtol=1e-5
    )
    fig = deviation_figure({"Kac": study, "Gaussian": again})
    assert len(fig.data) == 2 * (3 + 1) and fig.layout.xaxis.type == "log"
    assert set(load_ladder(ladder.run_dir)) == {4, 2, 1}


def test_ladder_cache_dir_names_ladders_by_teacher_name_and_config(tmp_path, monkeypatch):
    from kaclib.distill import ladder_cache_dir

    cfg = DistillConfig(ladder=(8, 4), iters=2)
    a = ladder_cache_dir(tmp_path / "x" / "teacher-abc", cfg, root=tmp_path)
    assert a.parent == tmp_path and a.name.startswith("ladder-")
    assert ladder_cache_dir("elsewhere/teacher-abc", cfg, root=tmp_path) == a  # a moved cache still matches
    assert ladder_cache_dir("teacher-abd", cfg, root=tmp_path) != a
    assert ladder_cache_dir("teacher-abc", cfg.replace(seed=1), root=tmp_path) != a
    monkeypatch.setenv("KACLIB_CACHE_DIR", str(tmp_path / "cache"))
    assert ladder_cache_dir("teacher-abc", cfg) == tmp_path / "cache" / a.name
    with pytest.raises(ValueError, match="DistillConfig"):
        ladder_cache_dir("teacher-abc", cfg.to_dict())
