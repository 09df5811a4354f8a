import pytest

from kaclib import paper


def test_one_key_scheme_for_both_data_sets():
    for dataset in paper.LADDER_FID:
        assert paper.ladder_fid(dataset, 100) == paper.ladder_fid(dataset, "teacher")
        assert paper.ladder_ratio(dataset, "teacher") == 1.0
        assert paper.ladder_fid(dataset, 3) is None


def test_the_quoted_ladder_reads_back():
    assert paper.describe_ladder("cifar10") == "3.58 / 3.72 / 4.14 / 4.68 / 5.66 (100 / 20 / 4 / 2 / 1 steps)"
    assert paper.ladder_ratio("cifar10", "single_stage") == pytest.approx(9.71 / 3.58)
    # the paper's claim that the ladder beats a single stage, read from its own numbers
    assert paper.ladder_fid("cifar10", 1) < paper.ladder_fid("cifar10", "single_stage")


def test_unknown_data_set_is_refused():
    with pytest.raises(ValueError, match="dataset must be one of"):
        paper.ladder_fid("imagenet", 1)


def test_solvers_line():
    assert paper.describe_solvers() == "midpoint 3.54, AB-2 3.58, Euler 4.00"
