"""kaclib.evaluation: one seed per image, NFE bookkeeping, guidance weights, the Evaluator's
FID against its floor, evaluate_run and the cached teacher."""

import math

import pytest
import torch

from kaclib.data import balanced_subset, load_dataset
from kaclib.evaluation import (
    Evaluator,
    balanced_labels,
    evaluate_run,
    generate,
    get_teacher,
    image_latents,
    model_num_classes,
    teacher_config,
    teacher_dir,
)
from kaclib.models import build_model, get_preset
from kaclib.paths import GaussianPath, KacPath
from kaclib.train import TrainConfig, load_run

torch.set_num_threads(1)


def smoke_model(path, seed=0):
    """A smoke UNet whose (zero-initialised) output layer is randomised, so samples depend on it."""
    torch.manual_seed(seed)
    m = build_model(get_preset("smoke"), path=path)
    with torch.no_grad():
        m.conv_out.weight.normal_(0, 0.05)
        m.conv_out.bias.normal_(0, 0.05)
    return m.eval()


@pytest.fixture(scope="module")
def kac():
    path = KacPath(9.0, 3.0)
    return smoke_model(path), path


@pytest.fixture(scope="module")
def evaluator():
    # the feature net comes from the default cache ($KACLIB_CACHE_DIR or ~/.cache/kaclib): it is
    # keyed by its training spec and deterministic, and trained there (about 10 s) when missing
    return Evaluator("digits")


# ----------------------------------------------------------------------------------- generate


def test_generate_is_deterministic_and_batch_size_independent(kac):
    model, path = kac
    labels = balanced_labels(7, 10)
    a = generate(model, path, labels, 4, "ab2", w=1.5, seed=3, batch_size=500)
    b = generate(model, path, labels, 4, "ab2", w=1.5, seed=3, batch_size=3)
    c = generate(model, path, labels, 4, "ab2", w=1.5, seed=3, batch_size=500)
    assert a.images.shape == (7, 1, 8, 8)
    assert torch.equal(a.images, c.images)  # deterministic
    torch.testing.assert_close(a.images, b.images, rtol=1e-5, atol=1e-5)  # batch size does not matter
    # one seed per image: the first 4 of 7 are the 4 of a smaller call, another seed differs
    d = generate(model, path, labels[:4], 4, "ab2", w=1.5, seed=3, batch_size=2)
    torch.testing.assert_close(a.images[:4], d.images, rtol=1e-5, atol=1e-5)
    e = generate(model, path, labels, 4, "ab2", w=1.5, seed=4)
    assert not torch.allclose(a.images, e.images)
    assert a.seconds > 0 and a.seconds_per_image == pytest.approx(a.seconds / 7)


def test_latents_are_per_image_and_follow_the_path():
    path = KacPath(9.0, 3.0)
    z = image_latents(path, 5, (1, 8, 8), seed=1)
    z2 = image_latents(path, 3, (1, 8, 8), seed=1, start=2)
    assert torch.equal(z[2:], z2)
    # finite speed: x_T = K_{g(T)} lies in [-c g(T), c g(T)]
    assert z.abs().max() <= 3.0 + 1e-6
    g = image_latents(GaussianPath(), 2000, (1, 8, 8), seed=0)
    assert abs(g.std().item() - 1) < 0.02


@pytest.mark.parametrize(
    "method,w,nfe,passes",
    [
        ("euler", 1.0, 5, 5),
        ("midpoint", 1.0, 10, 10),
        ("ab2", 1.0, 5, 5),
        ("ab2", 2.0, 5, 10),
        ("midpoint", 1.5, 10, 20),
        ("euler", 0.0, 5, 5),
        ("euler", None, 5, 5),
    ],
)
def test_nfe_and_network_passes(kac, method, w, nfe, passes):
    model, path = kac
    g = generate(model, path, 3, 5, method, w=w)
    assert (g.steps, g.nfe, g.network_passes) == (5, nfe, passes)
    assert g.labels is None if w is None else torch.equal(g.labels, torch.tensor([0, 1, 2]))


def test_guidance_weights(kac):
    model, path = kac
    labels = torch.tensor([1, 4, 7])
    uncond = generate(model, path, labels, 3, "euler", w=None)
    w0 = generate(model, path, labels, 3, "euler", w=0.0)
    w1 = generate(model, path, labels, 3, "euler", w=1.0)
    torch.testing.assert_close(uncond.images, w0.images)  # w = 0 is the null-class field
    assert not torch.allclose(w1.images, w0.images)  # the labels matter
    # w = 2 extrapolates: one Euler step from the same x_T moves by v_u + 2 (v_c - v_u)
    one = {w: generate(model, path, labels, 1, "euler", w=w).images for w in (0.0, 1.0, 2.0)}
    torch.testing.assert_close(one[2.0] - one[0.0], 2 * (one[1.0] - one[0.0]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"w": float("nan")}, "w must be finite"),
        ({"w": float("inf")}, "w must be finite"),
        ({"w": "big"}, "w must be a real number"),
        ({"steps": 0}, "steps"),
        ({"steps": -2}, "steps"),
        ({"method": "rk4"}, "method"),
        ({"labels": torch.tensor([0, 10])}, "labels must lie"),
        ({"labels": torch.tensor([0.5])}, "labels"),
        ({"batch_size": 0}, "batch_size"),
        ({"seed": -1}, "seed"),
    ],
)
def test_generate_rejects_bad_input(kac, kwargs, match):
    model, path = kac
    args = {"labels": 2, "steps": 2, "method": "euler", "w": 1.0}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        generate(model, path, args.pop("labels"), args.pop("steps"), **args)


def test_model_num_classes_and_unconditional_model():
    path = GaussianPath()
    torch.manual_seed(0)
    m = build_model(get_preset("smoke", num_classes=0), path=path)
    assert model_num_classes(m) == 0 and model_num_classes(smoke_model(path)) == 10
    g = generate(m, path, 4, 2, "euler", w=2.0)  # no classes: unconditional, 1 pass
    assert g.labels is None and g.w is None and g.network_passes == 2


def test_trajectory(kac):
    model, path = kac
    g = generate(model, path, 5, 3, "ab2", batch_size=2, return_trajectory=True)
    assert g.trajectory.shape == (4, 5, 1, 8, 8)
    torch.testing.assert_close(g.trajectory[-1], g.images)
    torch.testing.assert_close(g.trajectory[0], image_latents(path, 5, (1, 8, 8), seed=0))


# ----------------------------------------------------------------------------------- Evaluator


def test_evaluator_floor_is_unseen_real_data_at_the_generated_balance(evaluator):
    assert evaluator.metric_name == "FID-digits"
    floor = evaluator.floor(100)
    assert floor.metric_name == "FID-digits" and floor.n == 100 and evaluator.floor(100) is floor  # cached
    assert 0 < floor.fid < 10 and floor.accuracy > 0.9
    assert floor.precision > 0.8 and floor.recall > 0.8
    # unseen real images are as far from the training set as unseen real images: ratio about 1
    assert 0.8 < floor.memorisation_ratio < 1.25 and floor.n_nonfinite == 0 and floor.out_of_range == 0
    assert evaluator.floor().n == evaluator.max_n >= 300
    with pytest.raises(ValueError, match="exceeds"):
        evaluator.floor(evaluator.max_n + 1)


def test_evaluator_flags_copies_noise_and_broken_pixels(evaluator):
    floor = evaluator.floor(200)
    # a memoriser: training images, balanced like a generated set
    memo = balanced_subset(load_dataset("digits", "train"), 200)
    copy = evaluator.score(memo.images, memo.labels)
    assert copy.memorisation_ratio == 0 and copy.fid < 3 * floor.fid
    # uniform noise is far away, at chance accuracy, with no precision
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(200, 1, 8, 8, generator=g) * 2 - 1
    bad = evaluator.score(noise, balanced_labels(200, 10))
    assert bad.fid > 20 * floor.fid and bad.kid > floor.kid and bad.accuracy < 0.3
    assert bad.precision < 0.5 and bad.recall < 0.1 and bad.memorisation_ratio > 2
    assert evaluator.score(noise).accuracy is None
    # non-finite images and pixels outside [-1, 1] are counted, not raised
    broken = memo.images.clone()
    broken[:3] = float("nan")
    broken[3:5] = 3.0
    s = evaluator.score(broken, memo.labels)
    assert s.n_nonfinite == 3 and s.out_of_range == pytest.approx(2 * 64 / (197 * 64))
    assert math.isfinite(s.fid) and math.isfinite(s.kid)


def test_evaluator_errors(evaluator):
    with pytest.raises(ValueError, match="unknown dataset"):
        Evaluator("svhn")
    with pytest.raises(ValueError, match="shape"):
        evaluator.score(torch.zeros(10, 1, 28, 28))


def test_evaluate_run_dict(kac, evaluator):
    model, path = kac
    r = evaluate_run((model, path), steps=2, method="midpoint", w=1.5, n=20, seed=1, evaluator=evaluator)
    assert r["metric_name"] == "FID-digits" and math.isfinite(r["fid"]) and 0 <= r["accuracy"] <= 1
    assert {
        "kid",
        "kid_std",
        "precision",
        "recall",
        "memorisation_ratio",
        "n_nonfinite",
        "out_of_range",
    } <= set(r)
    assert (r["n"], r["steps"], r["nfe"], r["network_passes"], r["w"]) == (20, 2, 4, 8, 1.5)
    assert r["seconds_per_image"] > 0
    with pytest.raises(ValueError, match="evaluator is needed"):
        evaluate_run((model, path), steps=2, n=4)


# ----------------------------------------------------------------------------------- teachers


def test_teacher_config_follows_the_profile():
    from kaclib.profiles import get_profile

    prof = get_profile("cpu")
    k = teacher_config("cpu")
    assert k.path.to_dict() == {
        "kind": "kac",
        "a": prof.path.a,
        "c": prof.path.c,
        "f": prof.path.f,
        "g": prof.path.g,
        "T": 1.0,
    }
    assert (
        k.model == {"preset": prof.teacher.model_preset, "head": prof.teacher.head}
        and k.steps == prof.teacher.train_steps
    )
    g = teacher_config("cpu", path="gaussian", seed=1)
    assert g.path.to_dict() == {"kind": "gaussian", "T": 1.0} and g.model["head"] == "free" and g.seed == 1
    assert (g.steps, g.batch_size, g.model["preset"]) == (k.steps, k.batch_size, k.model["preset"])
    with pytest.raises(ValueError, match="path must be"):
        teacher_config("cpu", path="heat")


def test_get_teacher_trains_once(tmp_path):
    cfg = TrainConfig(model={"preset": "smoke"}, steps=3, batch_size=16, log_every=1, checkpoint_every=0)
    assert not teacher_dir(cfg, root=tmp_path).exists()
    d1 = get_teacher(cfg, progress=False, root=tmp_path)
    assert d1 == teacher_dir(cfg, root=tmp_path)
    run = load_run(d1)
    assert run.step == 3 and run.config.resolved() == cfg.resolved()
    stamp = (d1 / "ema.safetensors").stat().st_mtime_ns
    d2 = get_teacher(cfg, progress=False, root=tmp_path)  # cached: no retraining
    assert d2 == d1 and (d2 / "ema.safetensors").stat().st_mtime_ns == stamp
    d3 = get_teacher(cfg.replace(seed=1), progress=False, root=tmp_path)
    assert d3 != d1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left
    with pytest.raises(ValueError, match="TrainConfig"):
        get_teacher({"steps": 3}, root=tmp_path)
