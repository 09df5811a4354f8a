"""Tests for kaclib.data: value ranges, deterministic disjoint splits, file-format readers."""

import pickle

import numpy as np
import pytest
import torch

from kaclib.data import (
    DATASETS,
    HELD_OUT,
    SPLIT_FRACTIONS,
    ImageData,
    balanced_subset,
    epoch_batches,
    load_dataset,
    max_balanced,
    mnist_as_digits,
    sample_batch,
)

# ----------------------------------------------------------------------------- digits / mnist5k


def test_digits_shapes_range_and_labels():
    d = load_dataset("digits", "all")
    assert len(d) == 1797 and d.image_shape == (1, 8, 8) == DATASETS["digits"].image_shape
    assert d.images.dtype == torch.float32 and d.labels.dtype == torch.int64
    assert d.images.min() == -1.0 and d.images.max() == 1.0
    # 0..16 maps to 2 v / 16 - 1: every value lies on that grid
    grid = (d.images + 1) * 8
    assert torch.equal(grid, grid.round())
    assert d.num_classes == 10 and set(d.labels.tolist()) == set(range(10))


@pytest.mark.parametrize("name", ["digits", "mnist5k"])
def test_splits_are_disjoint_covering_stratified_and_deterministic(name):
    parts = {s: load_dataset(name, s, seed=3) for s in ("train",) + HELD_OUT}
    al = load_dataset(name, "all", seed=3)
    keys = {s: {tuple(x.flatten().tolist()) for x in d.images} for s, d in parts.items()}
    all_keys = [tuple(x.flatten().tolist()) for x in al.images]
    # disjoint and covering (as multisets: digits holds a few exact duplicate images)
    assert sum(len(d) for d in parts.values()) == len(al)
    assert torch.equal(
        torch.sort(torch.cat([d.labels for d in parts.values()])).values, torch.sort(al.labels).values
    )
    for s, t in [
        ("train", "ref"),
        ("train", "test"),
        ("feature", "ref"),
        ("ref", "test"),
        ("train", "feature"),
    ]:
        assert len(keys[s] & keys[t]) <= 3, (s, t)  # only the data set's own duplicates may coincide
    assert set(all_keys) == set().union(*keys.values())
    # sizes follow the fractions, class by class (balance up to one image per class and split)
    for s, frac in zip(("train",) + HELD_OUT, SPLIT_FRACTIONS[name]):
        counts = torch.bincount(parts[s].labels, minlength=10)
        full = torch.bincount(al.labels, minlength=10)
        assert ((counts - frac * full).abs() <= 1).all(), s
    # "val" is everything no generator sees
    assert len(load_dataset(name, "val", seed=3)) == sum(len(parts[s]) for s in HELD_OUT)
    assert torch.equal(load_dataset(name, "ref", seed=3).images, parts["ref"].images)
    assert not torch.equal(load_dataset(name, "ref", seed=4).images, parts["ref"].images)


def test_balanced_subset_has_the_labels_of_a_generated_set():
    test = load_dataset("digits", "test")
    n = max_balanced(test)
    sub = balanced_subset(test, n, seed=1)
    assert torch.equal(sub.labels, torch.arange(n) % 10)
    assert len({tuple(x.flatten().tolist()) for x in sub.images}) >= n - 3  # without replacement
    with pytest.raises(ValueError, match="class"):
        balanced_subset(test, n + 1)
    assert not torch.equal(balanced_subset(test, 50, seed=2).images, balanced_subset(test, 50, seed=3).images)


def test_mnist_as_digits_looks_like_digits():
    m, d = mnist_as_digits(), load_dataset("digits", "all")
    assert m.image_shape == d.image_shape and len(m) == 5000
    # values on the digits grid 2 k / 16 - 1 and a similar ink fraction
    grid = (m.images + 1) * 8
    assert torch.equal(grid, grid.round()) and m.images.min() == -1 and m.images.max() == 1
    assert abs(float(m.images.mean() - d.images.mean())) < 0.15


def test_mnist5k_is_shuffled_and_balanced():
    tr = load_dataset("mnist5k", "train")
    assert tr.image_shape == (1, 28, 28) and len(tr) == 2500
    assert tr.images.min() >= -1 and tr.images.max() <= 1
    # the file is sorted by class; after the seeded shuffle the first 100 hold many classes
    assert len(set(tr.labels[:100].tolist())) == 10
    assert torch.equal(torch.bincount(tr.labels, minlength=10), torch.full((10,), 250))


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="known.*cifar10"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="split"):
        load_dataset("digits", "validation")
    with pytest.raises(ValueError, match="limit"):
        load_dataset("digits", limit=0)
    with pytest.raises(ValueError, match="labels"):
        ImageData("x", torch.zeros(3, 1, 2, 2), torch.tensor([0, 1, 5]), num_classes=5)
    with pytest.raises(ValueError, match="shape"):
        ImageData("x", torch.zeros(3, 2, 2), torch.tensor([0, 1, 2]), num_classes=5)


# ----------------------------------------------------------------------------- batches


def test_sample_batch_deterministic_and_from_the_data():
    d = load_dataset("digits", "train", limit=50)
    x1, y1 = sample_batch(d, 32, torch.Generator().manual_seed(0))
    x2, y2 = sample_batch(d, 32, torch.Generator().manual_seed(0))
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and x1.shape == (32, 1, 8, 8)
    # every drawn pair (image, label) is a pair of the data set
    pairs = {(tuple(x.flatten().tolist()), int(y)) for x, y in zip(d.images, d.labels)}
    assert all((tuple(x.flatten().tolist()), int(y)) in pairs for x, y in zip(x1, y1))
    with pytest.raises(ValueError, match="batch_size"):
        sample_batch(d, 0)


def test_epoch_batches_visit_every_image_once():
    d = load_dataset("digits", "val", limit=37)
    batches = list(epoch_batches(d, 8, torch.Generator().manual_seed(1)))
    assert [len(b[0]) for b in batches] == [8, 8, 8, 8, 5]
    seen = torch.cat([b[0] for b in batches]).flatten(1)
    assert sorted(map(tuple, seen.tolist())) == sorted(map(tuple, d.images.flatten(1).tolist()))
    assert [len(b[0]) for b in epoch_batches(d, 8, drop_last=True)] == [8] * 4


# ----------------------------------------------------------------------------- CIFAR-10 files


def _write_fake_cifar(root, n_per_batch=3, seed=0):
    """A tiny ``cifar-10-batches-py`` in the official pickle format (bytes keys as in the original)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n_per_batch).tolist()
        with open(folder / name, "wb") as fh:
            pickle.dump(
                {"batch_label": name, "labels": labels, "data": data, "filenames": ["x.png"] * n_per_batch},
                fh,
            )
        written[name] = (data, labels)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)], "num_cases_per_batch": n_per_batch}, fh)
    return written


def test_cifar10_reads_the_official_pickle_format(tmp_path, monkeypatch):
    written = _write_fake_cifar(tmp_path)
    tr = load_dataset("cifar10", "train", root=tmp_path)
    va = load_dataset("cifar10", "val", root=tmp_path)
    al = load_dataset("cifar10", "all", root=tmp_path)
    assert len(tr) == 15 and len(va) == 3 and len(al) == 18 and tr.image_shape == (3, 32, 32)
    # pixel (channel 1, row 2, col 5) of image 0 of batch 1: flat index 1*1024 + 2*32 + 5
    v = written["data_batch_1"][0][0, 1 * 1024 + 2 * 32 + 5]
    assert tr.images[0, 1, 2, 5].item() == pytest.approx(2 * v / 255 - 1)
    assert va.labels.tolist() == written["test_batch"][1]
    # feature / ref / test partition the official test set
    held = [load_dataset("cifar10", s, root=tmp_path) for s in HELD_OUT]
    assert sum(len(d) for d in held) == len(va)
    assert sorted(torch.cat([d.labels for d in held]).tolist()) == sorted(va.labels.tolist())
    # the same bytes as torchvision's reader (its MD5 check switched off for the fixture)
    import torchvision.datasets.cifar as tvc

    monkeypatch.setattr(tvc, "check_integrity", lambda *a, **k: True)
    ref = tvc.CIFAR10(str(tmp_path), train=True, download=False)
    ours = ((tr.images + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(ours, ref.data) and tr.labels.tolist() == ref.targets
    # env var root
    monkeypatch.setenv("KACLIB_DATA_DIR", str(tmp_path))
    assert torch.equal(load_dataset("cifar10", "val").images, va.images)


def test_missing_files_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_dataset("cifar10", root=tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "cifar-10-batches-py") in msg and "cifar-10-python.tar.gz" in msg
    with pytest.raises(FileNotFoundError, match="img_align_celeba") as e:
        load_dataset("celeba64", root=tmp_path)
    assert str(tmp_path / "celeba") in str(e.value)


# ----------------------------------------------------------------------------- CelebA files


def test_celeba64_centre_crop_resize_and_partition(tmp_path):
    from PIL import Image

    folder = tmp_path / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)
    lines = []
    for i, part in enumerate([0, 0, 1, 2]):
        # 178 x 218 like the aligned images: a central 140 x 140 square of one colour inside a
        # border of another, so the centre crop must see only the inner colour
        arr = np.zeros((218, 178, 3), np.uint8)
        arr[:] = (255, 0, 0)
        top, left = (218 - 140) // 2, (178 - 140) // 2
        arr[top : top + 140, left : left + 140] = (0, 40 * i, 255)
        name = f"{i:06d}.png"
        Image.fromarray(arr).save(folder / "img_align_celeba" / name)
        lines.append(f"{name} {part}")
    (folder / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    tr = load_dataset("celeba64", "train", root=tmp_path)
    assert len(tr) == 2 and tr.image_shape == (3, 64, 64) and tr.num_classes == 1
    assert tr.labels.tolist() == [0, 0]
    expect = torch.tensor([-1.0, 2 * 40 / 255 - 1, 1.0])
    assert torch.allclose(tr.images[1], expect.view(3, 1, 1).expand(3, 64, 64), atol=1e-6)
    assert len(load_dataset("celeba64", "val", root=tmp_path)) == 1
    assert len(load_dataset("celeba64", "all", root=tmp_path)) == 4
    # second load comes from the uint8 cache and is identical
    assert torch.equal(load_dataset("celeba64", "train", root=tmp_path).images, tr.images)
