"""Counter-based latents: bit-exact against a slow reference, per-image reproducible, exact laws."""

import math

import pytest
import torch
from scipy import stats

from kaclib.kac import KacProcess
from kaclib.latents import (
    GOLDEN_GAMMA,
    box_muller,
    counter_uniforms,
    counter_words,
    image_keys,
    image_latents,
)
from kaclib.paths import DiffusionPath, GaussianPath, KacPath
from kaclib.stats import ks_bound_99, ks_distance
from kaclib.train import step_seed

MASK = (1 << 64) - 1
F64 = torch.float64


def ref_word(key: int, n: int) -> int:
    """Word n >= 1 of the splitmix64 stream keyed by ``key``, with Python integers."""
    x = (key + n * GOLDEN_GAMMA) & MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


def ref_uniform(seed: int, i: int, p: int, j: int, k: int) -> float:
    """Uniform j of coordinate p of image i (k uniforms per coordinate), one element at a time."""
    word = ref_word(step_seed(seed, i), 1 + p * ((k + 1) // 2) + j // 2)
    half = (word >> (32 * (j % 2))) & 0xFFFFFFFF
    m = half - (1 << 32) if half >= 1 << 31 else half  # signed
    return (m + 2**31 + 0.5) / 2**32


@pytest.mark.parametrize("seed", [0, 7, 2**40 + 3, 2**63 - 1])
def test_image_keys_are_step_seeds(seed):
    idx = torch.tensor([0, 1, 2, 999, 123_456, 2**31 + 5])
    assert [int(v) for v in image_keys(seed, idx)] == [step_seed(seed, int(i)) for i in idx]


def test_counter_words_match_the_python_stream():
    keys = image_keys(3, torch.arange(4))
    w = counter_words(keys, 5)
    for r, key in enumerate(keys.tolist()):
        assert [v & MASK for v in w[r].tolist()] == [ref_word(key & MASK, n) for n in range(1, 6)]


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_counter_uniforms_match_the_slow_reference_bit_for_bit(k):
    seed, start, n, coords = 11, 5, 3, 7
    u = counter_uniforms(image_keys(seed, torch.arange(start, start + n)), coords, k)
    assert u.shape == (k, n, coords) and u.dtype == F64
    ref = torch.tensor(
        [
            [[ref_uniform(seed, start + i, p, j, k) for p in range(coords)] for i in range(n)]
            for j in range(k)
        ],
        dtype=F64,
    )
    assert torch.equal(u, ref)
    assert (u > 0).all() and (u < 1).all()


@pytest.mark.parametrize(
    "path",
    [KacPath(9.0, 3.0), KacPath(25.0, 2.0, g="t2"), GaussianPath(), DiffusionPath(0.7)],
    ids=["kac", "kac-t2", "gaussian", "diffusion"],
)
def test_latents_of_a_range_are_slices_of_a_bigger_batch(path):
    big = image_latents(path, 40, (2, 3, 3), seed=5)
    assert big.shape == (40, 2, 3, 3) and big.dtype == torch.float32
    for start, n in [(0, 1), (7, 9), (39, 1), (13, 27)]:
        assert torch.equal(image_latents(path, n, (2, 3, 3), seed=5, start=start), big[start : start + n])
    assert not torch.equal(image_latents(path, 40, (2, 3, 3), seed=6), big)
    # the coordinates of one image differ (no stream is reused across coordinates)
    assert big[0].flatten().unique().numel() == 18


def test_evaluation_image_latents_is_the_counter_based_draw():
    from kaclib.evaluation import image_latents as eval_latents

    path = KacPath(9.0, 3.0)
    assert torch.equal(
        eval_latents(path, 6, (1, 4, 4), seed=2, start=3), image_latents(path, 6, (1, 4, 4), seed=2, start=3)
    )


@pytest.mark.parametrize("a,c,g", [(9.0, 3.0, "t"), (25.0, 2.0, "t2"), (1.0, 1.0, "t")])
def test_kac_latents_have_the_exact_law(a, c, g):
    path = KacPath(a, c, g=g)
    z = image_latents(path, 1250, (1, 8, 8), seed=1).double()  # 80,000 values, independent coordinates
    proc = KacProcess(a, c)
    s = torch.tensor(1.0, dtype=F64)
    assert (z.abs() <= c + 1e-6).all()
    d = ks_distance(z, lambda v: proc.cdf(v, s))
    assert d < ks_bound_99(z.numel()), f"KS {d:.5f}"
    atoms = (z.abs() == c).double().mean().item()
    mass = math.exp(-a)
    assert abs(atoms - mass) < 4 * math.sqrt(mass * (1 - mass) / z.numel()) + 1e-12


def test_gaussian_and_diffusion_latents_are_normal():
    z = image_latents(GaussianPath(), 1250, (1, 8, 8), seed=2).double().flatten()
    assert stats.kstest(z.numpy(), "norm").pvalue > 1e-3
    std = math.sqrt(2 * 0.7)
    zd = image_latents(DiffusionPath(0.7), 1250, (1, 8, 8), seed=2).double().flatten() / std
    assert stats.kstest(zd.numpy(), "norm").pvalue > 1e-3
    # pairs of coordinates are uncorrelated (each uses its own word)
    assert abs(torch.corrcoef(z.view(-1, 2).T)[0, 1].item()) < 4 / math.sqrt(z.numel() / 2)


def test_box_muller_maps_uniforms_to_normals():
    g = torch.Generator().manual_seed(0)
    u = torch.rand(2, 100_000, dtype=F64, generator=g).clamp(min=1e-300)
    assert stats.kstest(box_muller(u).numpy(), "norm").pvalue > 1e-3
    assert box_muller(u, torch.float32).dtype == torch.float32


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="^n must"):
        image_latents(GaussianPath(), -1, (1, 2, 2))
    with pytest.raises(ValueError, match="^seed must"):
        image_latents(GaussianPath(), 2, (1, 2, 2), seed=-3)
    with pytest.raises(ValueError, match="^image_shape"):
        image_latents(GaussianPath(), 2, (1, 0, 2))
    with pytest.raises(TypeError, match="sample_latent"):
        image_latents(object(), 2, (1, 2, 2))
    assert image_latents(GaussianPath(), 0, (1, 2, 2)).shape == (0, 1, 2, 2)


class _GeneratorOnlyPath:
    """A path with only the generator API (``sample_latent``), like a user's own path."""

    def sample_latent(self, shape, generator=None, device=None, dtype=None):
        return torch.rand(shape, generator=generator, dtype=dtype)


def test_paths_without_the_hook_fall_back_to_per_image_generators():
    path = _GeneratorOnlyPath()
    z = image_latents(path, 6, (1, 2, 2), seed=4)
    assert torch.equal(image_latents(path, 3, (1, 2, 2), seed=4, start=3), z[3:])
    g = torch.Generator().manual_seed(step_seed(4, 2))
    assert torch.equal(z[2:3], torch.rand((1, 1, 2, 2), generator=g))
