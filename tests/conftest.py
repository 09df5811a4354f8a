import os
import sys

sys.path.insert(0, os.path.dirname(__file__))


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_guided_ladder(tmp_path_factory):
    """``(teacher_dir, LadderResult)``: a smoke teacher (4 steps) distilled 8 -> 4 -> 2 -> 1 with a
    guided first stage (w = 1.5), trained once per test session."""
    from kaclib.distill import DistillConfig, run_ladder
    from kaclib.train import TrainConfig, train

    path = {"kind": "kac", "a": 9.0, "c": 3.0, "f": "linear", "g": "t", "T": 1.0}
    tdir = tmp_path_factory.mktemp("teacher")
    train(
        TrainConfig(
            dataset="digits",
            model={"preset": "smoke"},
            path=path,
            steps=4,
            batch_size=16,
            checkpoint_every=0,
            log_every=10,
        ),
        tdir,
        progress=False,
    )
    cfg = DistillConfig(
        ladder=(8, 4, 2, 1), iters=(3, 2, 2), lr=1e-3, batch_size=8, w=1.5, checkpoint_every=0
    )
    return tdir, run_ladder(tdir, tmp_path_factory.mktemp("ladder") / "ladder", cfg, progress=False)
