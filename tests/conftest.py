import os
import sys

sys.path.insert(0, os.path.dirname(__file__))


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_guided_ladder(tmp_path_factory):
    """``(teacher_dir, LadderResult)``: a smoke teacher (4 steps) distilled 8 -> 4 -> 2 -> 1 with a
    guided first stage (w = 1.5), trained once per test session."""
    from smoke_runs import train_tiny_teacher

    from kaclib.distill import DistillConfig, run_ladder

    tdir = train_tiny_teacher(tmp_path_factory.mktemp("teacher"))
    cfg = DistillConfig(
        ladder=(8, 4, 2, 1), iters=(3, 2, 2), lr=1e-3, batch_size=8, w=1.5, checkpoint_every=0
    )
    return tdir, run_ladder(tdir, tmp_path_factory.mktemp("ladder") / "ladder", cfg, progress=False)
