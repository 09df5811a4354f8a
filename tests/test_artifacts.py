"""Cache naming: one rule for runs derived from a cached teacher (ladders, few-step methods)."""

from pathlib import Path

from kaclib.artifacts import config_hash, derived_run_dir
from kaclib.distill import DistillConfig, ladder_cache_dir


def test_derived_run_dir_depends_on_the_teacher_name_and_the_config_only(tmp_path):
    a = derived_run_dir("fewstep-reflow", tmp_path / "x" / "teacher-1", tmp_path, cfg={"n": 1})
    moved = derived_run_dir("fewstep-reflow", tmp_path / "elsewhere" / "teacher-1", tmp_path, cfg={"n": 1})
    assert a == moved and a.parent == tmp_path and a.name.startswith("fewstep-reflow-")
    assert a != derived_run_dir("fewstep-reflow", tmp_path / "teacher-2", tmp_path, cfg={"n": 1})
    assert a != derived_run_dir("fewstep-reflow", tmp_path / "teacher-1", tmp_path, cfg={"n": 2})
    assert a.name == f"fewstep-reflow-{config_hash({'teacher': 'teacher-1', 'cfg': {'n': 1}})}"


def test_ladder_cache_names_are_unchanged_by_the_shared_rule(tmp_path):
    cfg = DistillConfig(ladder=(8, 2, 1), iters=3)
    expected = tmp_path / f"ladder-{config_hash({'teacher': 'teacher-t', 'distill': cfg.to_dict()})}"
    assert ladder_cache_dir(Path("/any/teacher-t"), cfg, root=tmp_path) == expected
