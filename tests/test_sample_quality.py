"""kaclib.sample_quality and kaclib.metric_checks: scores with known answers, and the controls."""

import pytest
import torch
from torch import nn

from kaclib.data import balanced_subset, load_dataset
from kaclib.metric_checks import DEGRADATIONS, degrade, sanity_check
from kaclib.sample_quality import QualityReference, memorisation_ratio, paired_rmse, sanitise

torch.set_num_threads(1)


class _Pixels(nn.Module):
    num_features = 4

    def features(self, x):
        return x.flatten(1)


def _reference(n=600, seed=0):
    g = torch.Generator().manual_seed(seed)
    ref = torch.randn(n, 1, 2, 2, generator=g) * 0.3
    train = torch.randn(n, 1, 2, 2, generator=g) * 0.3
    unseen = torch.randn(n, 1, 2, 2, generator=g) * 0.3
    return QualityReference(ref, _Pixels(), "FID-toy", train, unseen), g, train


def test_kid_is_unbiased_and_fid_grows_with_a_shift():
    qr, g, _ = _reference()
    same = [qr.score(torch.randn(300, 1, 2, 2, generator=g) * 0.3).kid for _ in range(8)]
    # same law: KID averages to about zero (unbiased), far below the KID of a shifted law
    shifted = qr.score(torch.randn(300, 1, 2, 2, generator=g) * 0.3 + 0.3)
    assert abs(sum(same) / len(same)) < 0.1 * shifted.kid
    assert shifted.fid == pytest.approx(4 * 0.3**2, rel=0.3) and shifted.precision < 1


def test_memorisation_ratio_and_precision_recall_extremes():
    qr, g, train = _reference()
    copies = qr.score(train[:300])
    assert copies.memorisation_ratio == 0
    fresh = qr.score(torch.randn(300, 1, 2, 2, generator=g) * 0.3)
    assert 0.8 < fresh.memorisation_ratio < 1.25 and fresh.precision > 0.8 and fresh.recall > 0.8
    collapsed = qr.score(torch.zeros(300, 1, 2, 2) + 0.01 * torch.randn(300, 1, 2, 2, generator=g))
    assert collapsed.recall < 0.2  # one mode covers little of the real manifold
    assert memorisation_ratio(train[:10], train, torch.randn(10, 1, 2, 2, generator=g)) == 0


def test_sanitise_counts_and_clamps():
    x = torch.zeros(4, 1, 2, 2)
    x[0, 0, 0, 0] = float("nan")
    x[1] = 2.0
    x[2, 0, 0, 0] = -float("inf")
    clean, bad, outside = sanitise(x)
    assert (
        bad == 2
        and outside == pytest.approx(4 / 14)
        and torch.isfinite(clean).all()
        and clean.abs().max() <= 1
    )


def test_paired_rmse_known_answer():
    a = torch.zeros(3, 1, 2, 2)
    b = a.clone()
    b[1] += 0.5
    b[2, 0, 0, 0] = 2.0
    assert paired_rmse(a, b).tolist() == pytest.approx([0.0, 0.5, 1.0])
    with pytest.raises(ValueError, match="one shape"):
        paired_rmse(a, b[:2])


def test_degradations_change_what_they_claim():
    real = balanced_subset(load_dataset("digits", "test"), 100)
    g = torch.Generator().manual_seed(0)
    noisy = degrade(real, "noise", 0.1, g)
    assert float((noisy - real.images).std()) == pytest.approx(0.1, rel=0.1)
    blurred = degrade(real, "blur", 1.0, g)
    assert float(blurred.mean()) == pytest.approx(float(real.images.mean()), abs=0.05)
    assert blurred.std() < real.images.std()
    dropped = degrade(real, "dropped_class", 2, g)
    assert torch.equal(dropped[real.labels >= 2], real.images[real.labels >= 2])
    collapsed = degrade(real, "mode_collapse", 0.5, g)
    assert len({tuple(x.flatten().tolist()) for x in collapsed}) < 0.6 * 100
    with pytest.raises(ValueError, match="kind"):
        degrade(real, "rotate", 1, g)


def test_metric_sanity_on_digits():
    """The protocol's acceptance check, small: a memoriser is no better than unseen real images,
    and each degradation scores monotonically worse on FID and KID."""
    from kaclib.evaluation import Evaluator

    ev = Evaluator("digits")
    small = {k: v[:2] if k != "noise" else (0.1, 0.4) for k, v in DEGRADATIONS.items()}
    res = sanity_check(ev, 200, seeds=(0, 1, 2), degradations=small)
    memo = [c for c in res.comparisons if c.a == "memoriser"]
    assert memo and all(c.verdict != "holds" for c in memo)  # copying is not rewarded
    assert all(res.monotone.values()), res.monotone
    assert res.to_dict()["results"]["memoriser"]["memorisation_ratio"]["mean"] == 0
