"""Config overrides (``--set``) and table formatting shared by the CLI and the benchmarks."""

import pytest

from kaclib.runs import apply_overrides
from kaclib.tables import format_cell, format_table, markdown_table


def test_overrides_parse_json_and_nest_without_touching_the_input():
    base = {"steps": 5, "model": {"preset": "smoke"}, "path": {"kind": "kac", "a": 9.0}}
    out = apply_overrides(base, ["steps=10", "model.base_channels=32", "path.g=t2", "lr=1e-3", "tags=[1, 2]"])
    assert out == {
        "steps": 10,
        "model": {"preset": "smoke", "base_channels": 32},
        "path": {"kind": "kac", "a": 9.0, "g": "t2"},
        "lr": 1e-3,
        "tags": [1, 2],
    }
    assert base["steps"] == 5 and "base_channels" not in base["model"]


@pytest.mark.parametrize("item", ["steps", "=3", "steps.x=1"])
def test_bad_overrides_raise(item):
    with pytest.raises(ValueError, match="--set"):
        apply_overrides({"steps": 5}, [item])


def test_cells_and_tables():
    assert [format_cell(v) for v in (None, 0.0, 1234.5678, 2e-5, 3e6, 7)] == [
        "-",
        "0",
        "1235",
        "2.000e-05",
        "3.000e+06",
        "7",
    ]
    text = format_table(["name", "x"], [["a", 1.0], ["long name", None]])
    lines = text.splitlines()
    assert len(lines) == 4 and len({len(line) for line in lines}) == 1 and lines[3].endswith("-")
    assert markdown_table(["a", "b"], [[1, 0.5]]) == "| a | b |\n|---|---|\n| 1 | 0.5 |"


def test_verdict_text_reads_the_matching_comparison():
    from kaclib.results import verdict_text

    comparison = {"claim": "w = 2.2 beats w = 1 (4 steps)", "verdict": "holds", "diff_mean": -0.123}
    res = {
        "comparisons": [
            {**comparison, "metric": "kid", "verdict": "fails", "ci95": [0.1, 0.2]},
            {**comparison, "metric": "fid", "ci95": [-0.2, -0.04]},
        ]
    }
    assert verdict_text(res, "w = 2.2 beats w = 1") == "holds (-0.12, CI [-0.20, -0.04])"
    assert verdict_text(res, "w = 2.2 beats w = 1", metric="kid").startswith("fails")
    assert verdict_text(res, "w = 1.2 beats") == verdict_text(None, "anything") == "not measured"
