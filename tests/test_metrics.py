"""Tests for kaclib.metrics: feature net, FID (closed form, invariants, caching), velocity stats."""

import json
import math

import pytest
import torch
from torch import nn

from kaclib.data import load_dataset
from kaclib.metrics import (
    FIDReference,
    class_accuracy,
    fid_floor,
    frechet_distance,
    get_feature_net,
    inception_fid,
    velocity_norm_stats,
)
from kaclib.paths import GaussianPath, KacPath

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", "train"), load_dataset("digits", "test")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("kaclib-cache")


@pytest.fixture(scope="module")
def info(cache):
    return get_feature_net("digits", cache_dir=cache)  # trains (a few seconds) and caches


# ----------------------------------------------------------------------------- feature net


def test_feature_net_accuracy_label_and_cache(info, cache, digits, monkeypatch):
    train, val = digits
    assert info.accuracy >= 0.95
    assert info.metric_name == "FID-digits"
    assert info.net.features(val.images[:5]).shape == (5, info.net.num_features) == (5, 64)
    assert class_accuracy(val.images, val.labels, info.net) == pytest.approx(info.accuracy)
    # wrong labels score near chance: the accuracy measures the labels, not the images alone
    assert class_accuracy(val.images, (val.labels + 1) % 10, info.net) < 0.1
    # the second call loads the cached weights (same outputs, same accuracy) instead of retraining
    files = sorted(p.name for p in (cache / "features").iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".safetensors")
    meta = json.loads((cache / "features" / files[0]).read_text())
    assert meta["metric_name"] == "FID-digits" and meta["accuracy"] == info.accuracy
    again = get_feature_net("digits", cache_dir=cache)
    assert again.accuracy == info.accuracy and again.path == info.path
    assert torch.equal(again.net.features(val.images), info.net.features(val.images))
    monkeypatch.setenv("KACLIB_CACHE_DIR", str(cache))  # the default cache location
    assert get_feature_net("digits").path == info.path


def test_feature_net_errors(cache):
    with pytest.raises(ValueError, match="known"):
        get_feature_net("svhn", cache_dir=cache)
    with pytest.raises(ValueError, match="inception_fid"):
        get_feature_net("celeba64", cache_dir=cache)


# ----------------------------------------------------------------------------- FID


class _Flatten(nn.Module):
    """Identity features: FID becomes the Frechet distance of Gaussians fitted to the pixels."""

    def __init__(self, d):
        super().__init__()
        self.num_features = d

    def features(self, x):
        return x.flatten(1)


def test_frechet_distance_matches_the_closed_form():
    # N(0, I) against N(m, s^2 I) in d = 4: FID = d (m^2 + (1 - s)^2), up to sampling error
    g = torch.Generator().manual_seed(0)
    d, m, s, n = 4, 0.5, 2.0, 40_000
    real = torch.randn(n, 1, 2, 2, generator=g)
    fake = m + s * torch.randn(n, 1, 2, 2, generator=g)
    fid = frechet_distance(real, fake, _Flatten(d), batch_size=10_000)
    assert fid == pytest.approx(d * (m**2 + (1 - s) ** 2), rel=0.03)


def test_fid_is_zero_on_itself_and_grows_with_a_shift(info, digits):
    train, val = digits
    ref = FIDReference(train.images, info.net)
    assert abs(ref.score(train.images)) < 1e-3
    shifted = [ref.score((train.images + s).clamp(-1, 1)) for s in (0.1, 0.3, 0.6)]
    assert 0 < shifted[0] < shifted[1] < shifted[2]
    # the cached real statistics give the same number as a one-off computation
    assert ref.score(val.images) == pytest.approx(
        frechet_distance(train.images, val.images, info.net), rel=1e-5
    )
    # held-out real images are far closer than images with shuffled pixels
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    scrambled = val.images.flatten(1)[:, perm].view_as(val.images)
    assert ref.score(scrambled) > 10 * ref.score(val.images)
    with pytest.raises(ValueError, match="NaN"):
        ref.score(torch.full_like(val.images, float("nan")))
    with pytest.raises(ValueError, match="shape"):
        ref.score(torch.zeros(4, 1, 4, 4))


def test_fid_floor_is_the_ref_test_distance(info, cache):
    ref, test = load_dataset("digits", "ref"), load_dataset("digits", "test")
    floor = fid_floor("digits", cache_dir=cache)
    assert floor == pytest.approx(frechet_distance(ref.images, test.images, info.net), rel=1e-5)
    assert 0 < floor < 10


def test_inception_fid_without_weights_says_so(tmp_path, monkeypatch):
    x = torch.zeros(4, 3, 8, 8)
    missing = tmp_path / "pt_inception.pth"
    with pytest.raises(FileNotFoundError, match="unavailable offline") as e:
        inception_fid(x, x, weights_path=missing)
    assert str(missing) in str(e.value) and "KACLIB_INCEPTION_WEIGHTS" in str(e.value)
    monkeypatch.delenv("KACLIB_INCEPTION_WEIGHTS", raising=False)
    with pytest.raises(FileNotFoundError, match="KACLIB_INCEPTION_WEIGHTS is not set"):
        inception_fid(x, x)


# ----------------------------------------------------------------------------- velocity stats


def test_velocity_stats_of_the_exact_bound_and_of_zero():
    path = KacPath(a=9.0, c=3.0, g="t2")
    data = load_dataset("digits", "val", limit=64)
    times = [0.25, 0.5, 1.0]

    def at_bound(x, t, y):  # u = |f'| + g' c in every coordinate: ratio exactly 1
        return (path.df(t).abs() + path.dg(t) * path.c).view(-1, 1, 1, 1).expand_as(x)

    st = velocity_norm_stats(at_bound, path, data, times, n=32, generator=torch.Generator().manual_seed(0))
    assert st.coord_ratio_max == pytest.approx([1.0] * 3)
    assert st.violation_fraction == [0.0] * 3
    assert st.model_norm_max == pytest.approx(st.norm_bound)
    assert st.speed_bound == pytest.approx(3.0 * 8)  # c sqrt(64)
    # the Kac target itself respects both bounds for data in [-1, 1]
    assert all(r <= 1 + 1e-6 for r in st.target_coord_ratio_max)
    assert all(tn <= nb + 1e-4 for tn, nb in zip(st.target_norm_max, st.norm_bound))
    assert all(0 < tm <= tx for tm, tx in zip(st.target_norm_mean, st.target_norm_max))

    double = velocity_norm_stats(lambda x, t, y: 2 * at_bound(x, t, y), path, data, times, n=32)
    assert double.coord_ratio_max == pytest.approx([2.0] * 3) and double.violation_fraction == [1.0] * 3

    zero = velocity_norm_stats(lambda x, t, y: torch.zeros_like(x), GaussianPath(), data, times, n=8)
    assert zero.model_norm_max == [0.0] * 3 and zero.coord_ratio_max is None and zero.speed_bound is None
    assert len(zero.rows()) == 3 and zero.rows()[1]["t"] == 0.5


def test_velocity_stats_of_a_bounded_unet_stay_within_the_bound():
    from kaclib.models import build_model, get_preset

    path = KacPath(a=9.0, c=3.0)
    model = build_model(get_preset("smoke", head="bounded"), path)
    with torch.no_grad():
        model.conv_out.weight.normal_(0, 20.0, generator=torch.Generator().manual_seed(0))
    data = load_dataset("digits", "val", limit=64)
    st = velocity_norm_stats(
        model, path, data, [0.1, 0.9], n=16, y="data", generator=torch.Generator().manual_seed(1)
    )
    assert all(0.5 < r <= 1.0 for r in st.coord_ratio_max) and st.violation_fraction == [0.0, 0.0]
    assert model.training  # restored


def test_velocity_stats_pass_labels_through():
    data = load_dataset("digits", "val", limit=40)
    seen = []

    def model(x, t, y):
        seen.append(y)
        return torch.zeros_like(x)

    velocity_norm_stats(model, KacPath(), data, [0.5], n=10, y="data", batch_size=4)
    assert [len(y) for y in seen] == [4, 4, 2] and all(int(v) in range(10) for y in seen for v in y)
    seen.clear()
    velocity_norm_stats(model, KacPath(), data, [0.5], n=10, y=10)
    assert torch.equal(seen[0], torch.full((10,), 10))
    with pytest.raises(ValueError, match="times"):
        velocity_norm_stats(model, KacPath(), data, [math.nan])
    with pytest.raises(ValueError, match="y must"):
        velocity_norm_stats(model, KacPath(), data, [0.5], y="labels")


def test_feature_net_training_is_deterministic_and_keeps_the_global_rng(digits):
    from kaclib.metrics import train_feature_net

    train, val = digits
    small = train.subset(slice(0, 200))
    state = torch.random.get_rng_state()
    a, acc_a = train_feature_net(small, val, seed=1, epochs=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    b, acc_b = train_feature_net(small, val, seed=1, epochs=1)
    c, _ = train_feature_net(small, val, seed=2, epochs=1)
    assert acc_a == acc_b and torch.equal(a.features(val.images), b.features(val.images))
    assert not torch.equal(a.features(val.images), c.features(val.images))
    with pytest.raises(ValueError, match="epochs"):
        train_feature_net(small, val, epochs=0)
    from kaclib.metrics import FeatureTrainConfig

    with pytest.raises(ValueError, match="label_smoothing"):
        FeatureTrainConfig(label_smoothing=1.0)


def test_a_damaged_feature_net_cache_heals(tmp_path):
    info = get_feature_net("digits", cache_dir=tmp_path)
    info.path.write_bytes(info.path.read_bytes()[:100])  # truncated weights
    again = get_feature_net("digits", cache_dir=tmp_path)
    assert again.accuracy == info.accuracy  # retrained, deterministically
    x = load_dataset("digits", "test").images[:8]
    assert torch.equal(again.net.features(x), info.net.features(x))
