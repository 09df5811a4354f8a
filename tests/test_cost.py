"""Cost beside NFE: FLOP counts against hand counts, network passes of every solver and guidance
weight (checked against counting a whole sampling run), and the training-cost arithmetic of a tiny
trained ladder."""

import json

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from kaclib.cost import (
    TRAIN_STEP_FORWARDS,
    distillation_training_cost,
    flops_per_image,
    sampling_cost,
    wall_clock_per_1000,
)
from kaclib.guidance import GuidedVelocity
from kaclib.models import MLPVelocity
from kaclib.paths import GaussianPath, KacPath
from kaclib.solvers import sample
from kaclib.train import load_run

torch.set_num_threads(1)


def test_flops_of_a_conv_and_linear_network_match_a_hand_count():
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    conv = 2 * (4 * 8 * 8) * (1 * 3 * 3)  # 2 x outputs x multiply-adds per output
    linear = 2 * (4 * 8 * 8) * 10
    assert flops_per_image(net, (1, 8, 8)) == conv + linear == 9728
    assert flops_per_image(net, (1, 8, 8), passes=3) == 3 * 9728
    strided = nn.Conv2d(3, 5, 3, stride=2, padding=1)  # 8x8 -> 4x4
    assert flops_per_image(strided, (3, 8, 8)) == 2 * (5 * 4 * 4) * (3 * 9)


def mlp(num_classes=3, hidden=16, depth=2):
    torch.manual_seed(0)
    return MLPVelocity(dim=2, hidden=hidden, depth=depth, num_classes=num_classes)


def test_flops_of_a_velocity_mlp_match_a_hand_count():
    h = 16
    # input layer, two time-MLP layers, depth - 1 hidden layers, output; embeddings and sinusoids cost no FLOPs
    hand = 2 * 2 * h + 2 * (2 * h * h) + 1 * (2 * h * h) + 2 * h * 2
    assert flops_per_image(mlp(hidden=h), (2,)) == hand == 1664
    assert flops_per_image(mlp(num_classes=0, hidden=h), (2,)) == hand  # unconditional: y = None
    m = mlp().train()
    flops_per_image(m, (2,))
    assert m.training  # the mode is restored
    with pytest.raises(ValueError, match="image_shape"):
        flops_per_image(m)
    with pytest.raises(ValueError, match="passes"):
        flops_per_image(m, (2,), passes=-1)


@pytest.mark.parametrize("method,per_step", [("euler", 1), ("midpoint", 2), ("ab2", 1)])
@pytest.mark.parametrize("w,per_eval", [(0.0, 1), (1.0, 1), (2.0, 2)])
def test_sampling_passes_and_flops_match_counting_a_whole_run(method, per_step, w, per_eval):
    model, steps = mlp(), 5
    cost = sampling_cost(model, GaussianPath(), steps, method, w, image_shape=(2,))
    assert cost.nfe == steps * per_step and cost.passes_per_eval == per_eval
    assert cost.network_passes == steps * per_step * per_eval and cost.path == "gaussian"
    # count every FLOP of drawing one image with the sampler itself
    velocity = model if w == 1.0 else GuidedVelocity(model, w, 3)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        res = sample(velocity, torch.randn(1, 2), steps, method, y=torch.tensor([1]))
    assert res.network_passes == cost.network_passes
    assert counter.get_total_flops() == cost.flops_per_image == cost.network_passes * cost.flops_per_pass


def test_sampling_cost_of_unconditional_models_and_bad_input():
    cost = sampling_cost(mlp(num_classes=0), GaussianPath(), 4, "midpoint", 3.0, image_shape=(2,))
    assert cost.passes_per_eval == 1 and cost.network_passes == 8 and cost.w is None
    assert sampling_cost(mlp(), KacPath(), 2, "euler", None, image_shape=(2,)).network_passes == 2
    for kw, match in [
        (dict(steps=0), "steps"),
        (dict(method="rk4"), "method"),
        (dict(w=float("inf")), "w must"),
    ]:
        args = {"steps": 3, "method": "euler", "w": 1.0, **kw}
        with pytest.raises(ValueError, match=match):
            sampling_cost(mlp(), GaussianPath(), args["steps"], args["method"], args["w"], image_shape=(2,))


# ------------------------------------------------------------------------------------ a tiny trained ladder


@pytest.fixture(scope="module")
def ladder(tiny_guided_ladder):
    return tiny_guided_ladder


def test_distillation_training_cost_arithmetic(ladder):
    tdir, res = ladder
    teacher = load_run(tdir)
    F = flops_per_image(teacher.model)
    assert F > 0 and F == flops_per_image(res.student)  # one architecture down the ladder
    cost = distillation_training_cost(res.run_dir)
    assert cost.flops_per_pass == F and cost.teacher_train_steps == 4 and cost.teacher_batch_size == 16
    assert cost.teacher_training_flops == 4 * 16 * TRAIN_STEP_FORWARDS * F
    # teacher passes by hand: iters x batch x substeps x (2 passes for the guided flow teacher, w = 1.5)
    want_passes = [3 * 8 * 2 * 2, 2 * 8 * 2 * 1, 2 * 8 * 2 * 1]
    assert [s.teacher_passes for s in cost.stages] == want_passes
    assert [s.student_iters for s in cost.stages] == [3, 2, 2] and [s.student_steps for s in cost.stages] == [
        4,
        2,
        1,
    ]
    for s, p, it in zip(cost.stages, want_passes, (3, 2, 2)):
        assert s.teacher_flops == p * F and s.student_flops == it * 8 * 3 * F
        assert s.total_flops == p * F + it * 8 * 3 * F
        assert s.ratio_to_teacher_training == pytest.approx(s.total_flops / (4 * 16 * 3 * F))
    assert cost.total_flops == sum(s.total_flops for s in cost.stages)
    assert cost.ratio == pytest.approx((96 + 32 + 32 + 7 * 8 * 3) / (4 * 16 * 3))
    json.dumps(cost.to_dict())
    # an unfinished stage is left out
    done = res.run_dir / "stage-3-1steps" / "result.json"
    text = done.read_text()
    done.unlink()
    try:
        assert [s.student_steps for s in distillation_training_cost(res.run_dir).stages] == [4, 2]
    finally:
        done.write_text(text)


def test_wall_clock_per_1000_reports_end_to_end_time(ladder):
    _, res = ladder
    wc = wall_clock_per_1000(res.student, res.path, 2, "midpoint", w=2.0, n=5, repeats=2, batch_size=3)
    assert wc.n == 5 and len(wc.values) == 2 and wc.seconds_per_1000 == min(wc.values)
    assert wc.network_passes == 2 * 2 * 2 and wc.w == 2.0 and wc.device == "cpu"
    assert 0 < wc.latent_seconds_per_1000 <= wc.seconds_per_1000
    with pytest.raises(ValueError, match="repeats"):
        wall_clock_per_1000(res.student, res.path, 1, repeats=0)


def test_quality_cost_figure():
    from kaclib.cost import quality_cost_figure

    rows = [
        {
            "row": "kac_ladder",
            "steps": M,
            "fid": 1.0 / M,
            "flops_per_image": 10 * M,
            "network_passes": M,
            "wall_clock": {"seconds_per_1000": 0.1 * M},
        }
        for M in (1, 2, 4)
    ]
    rows += [
        {
            "row": "kac_teacher",
            "steps": 4,
            "fid": 0.5,
            "flops_per_image": 80,
            "network_passes": 8,
            "wall_clock": None,
        }
    ]
    fig = quality_cost_figure(rows)  # the teacher row has no wall clock: left out
    assert [tr.name for tr in fig.data] == ["kac ladder"] and list(fig.data[0].x) == pytest.approx(
        [0.1, 0.2, 0.4]
    )
    fig = quality_cost_figure(rows, x="flops_per_image")
    assert len(fig.data) == 2 and list(fig.data[1].y) == [0.5] and fig.layout.xaxis.type == "log"
    with pytest.raises(ValueError, match="x must"):
        quality_cost_figure(rows, x="joules")
    with pytest.raises(ValueError, match="no row"):
        quality_cost_figure(rows, quality="kid")
