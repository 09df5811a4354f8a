"""Chapter 7's plumbing (kaclib.beyond_report) on a synthetic ``beyond.json`` with known answers."""

import math

import pytest
import torch

from kaclib import beyond_report as br
from kaclib.fewstep import exact

DELTAS = (0.05, 0.25, 0.5, 1.0)
STEPS = (20, 4, 2, 1)


def _stage(k, scale, ratio):
    ep = scale * DELTAS[k]
    return {
        "stage": k + 1,
        "teacher_steps": (100, 20, 4, 2)[k],
        "student_steps": STEPS[k],
        "delta": DELTAS[k],
        "sup_endpoint_error": {"mean": ep},
        "sup_interior_deviation": {"mean": ratio * ep},
        "per_sample": {"spearman": 0.5},
    }


def _traj(slopes=None, scale=None, ratio=None):
    """Two paths, three seeds: the interior deviation ``ratio * scale * Delta``."""
    slopes = slopes or {"kac": (1.5, 1.6, 1.7), "gaussian": (1.15, 1.2, 1.25)}
    scale = scale or {"kac": 1.0, "gaussian": 2.0}
    ratio = ratio or {"kac": 1.5, "gaussian": 2.0}
    per = {}
    for fam, sl in slopes.items():
        for s, v in enumerate(sl):
            per[f"{fam}-seed{s}"] = {
                "label": fam,
                "stages": [_stage(k, scale[fam] * (1 + 0.01 * s), ratio[fam]) for k in range(4)],
                "slope_sup_interior_vs_delta": {"slope": v},
            }
    scatter = {
        str(st): {"delta": d, "sup_endpoint_error": [d, 2 * d], "sup_interior_deviation": [d, 3 * d]}
        for st, d in zip(STEPS, DELTAS)
    }
    return {
        "n": 2,
        "per_ladder": per,
        "per_family": {f: {"scatter_seed": 0, "scatter": scatter} for f in slopes},
    }


def test_stage_rows_read_the_committed_means():
    rows = br.stage_rows(_traj())
    assert len(rows) == 8 and len(rows[0]) == len(br.STAGE_HEADER)
    kac_last = next(r for r in rows if r[0] == "kac" and r[1] == "2 -> 1")
    assert kac_last[2] == "1" and kac_last[5].startswith("1.5 [1.5, 1.5]")  # ratio 1.5 exactly, every seed


def test_trajectory_comparisons_verdicts_follow_the_intervals():
    comps = {
        c["claim"].split(":")[0] if c["metric"] == "log-log slope" else c["metric"]: c
        for c in br.trajectory_comparisons(_traj())
    }
    assert comps["kac"]["verdict"] == "holds" and math.isclose(comps["kac"]["diff_mean"], 0.6)
    assert comps["gaussian"]["verdict"] == "holds"
    assert comps["interior deviation"]["verdict"] == "holds"  # kac 1.5 * 1 < gaussian 2 * 2
    assert comps["interior / end point"]["diff_mean"] == pytest.approx(-0.5)
    flat = br.trajectory_comparisons(_traj(slopes={"kac": (0.8, 0.9, 0.85), "gaussian": (0.5, 1.5, 1.0)}))
    assert {c["a"]: c["verdict"] for c in flat[:2]} == {
        "kac slope": "fails",
        "gaussian slope": "inconclusive",
    }


def test_figures_build_from_committed_and_live_values():
    fig = br.deviation_scatter_figure(_traj())
    assert len(fig.data) == 2 * (4 + 1)  # two panels: four stages and the diagonal
    fig = br.known_answer_figure({"a": {10: 0.5, 100: 0.1}, "b": {10: 0.6, 100: 0.2}})
    assert list(fig.data[0].x) == [10, 100] and list(fig.data[1].y) == [0.6, 0.2]
    pts = torch.zeros(5, 2)
    assert len(br.known_answer_maps_figure(pts, {"a": pts, "b": pts}, budget=10).data) == 4


def test_claims_and_counts_of_a_benchmark():
    c = {
        "claim": "x",
        "metric": "fid",
        "a": "p",
        "b": "q",
        "diff_mean": -1.0,
        "ci95": [-2.0, -0.5],
        "diff_values": [-1.0, -1.5, -0.5],
        "verdict": "holds",
    }
    assert br.verdict_counts([c, {**c, "verdict": "fails"}]) == "1 holds, 1 fails, 0 inconclusive"
    assert br.verdict_counts([]) == "none"
    (missing,) = br.comparison_claims(None, "claim", "python run.py", "r.json", "src")
    assert missing.holds is None and "not yet run: python run.py" in missing.measured
    assert [x.verdict for x in br.comparison_claims({"comparisons": [c]}, "claim", "cmd", "r.json", "s")] == [
        "holds"
    ]
    (summary,) = br.comparison_claims({"comparisons": [c] * 9}, "claim", "cmd", "r.json", "s")
    assert summary.measured.startswith("9 paired comparisons: 9 holds")


def test_cached_ladder_dir_is_none_without_a_cache(tmp_path, monkeypatch):
    from kaclib.profiles import get_profile

    monkeypatch.setenv("KACLIB_CACHE_DIR", str(tmp_path))
    assert br.cached_ladder_dir(get_profile("smoke"), "kac") is None


def test_known_answer_case_endpoint_error_of_the_exact_map_is_zero():
    """A 'student' whose 1-step map IS the exact map has error 0 (the error measures what it says)."""
    case = exact.known_answer_case(n_data=64, n_latents=32, steps=64)

    class Oracle(torch.nn.Module):
        def forward(self, x, t, y=None):
            return (x - case.exact) / t.reshape(-1, 1)

    assert exact.endpoint_error(Oracle(), case) == pytest.approx(0.0, abs=1e-6)
    assert float((case.exact - case.x_T).norm(dim=1).mean()) > 0.5  # and the map moves the latents


def test_show_committed_shows_every_metric(capsys):
    c = {
        "claim": "kac beats gaussian",
        "metric": "nonfinite",
        "a": "kac",
        "b": "gaussian",
        "diff_mean": -1.0,
        "ci95": [-2.0, -0.5],
        "diff_values": [-1.0, -1.5, -0.5],
        "verdict": "holds",
    }
    res = {
        "command": "python b.py",
        "machine": {"cpu": "X"},
        "table_markdown": "| a |\n|---|\n| 1 |",
        "comparisons": [c, {**c, "metric": "fid"}],
    }
    assert len(br.show_committed(res)) == 2
    out = capsys.readouterr().out
    assert "`python b.py` on X" in out and "nonfinite" in out and "kac beats gaussian" in out


def test_method_findings_names_the_best_method_and_tallies_fid_verdicts():
    from kaclib.stats import compare

    def row(ladder, reflow):
        return {"teacher": {"1": {"fid": 50.0}}, "ladder": {"1": {"fid": ladder}}, "reflow": {"1": {"fid": reflow}},
                "budget": {}, "train_s": {}}  # fmt: skip

    rows = {"kac-seed0": row(10.0, 12.0), "kac-seed1": row(11.0, 13.5), "kac-seed2": row(9.0, 10.9)}
    comps = [
        compare(
            "c", "fid", "kac reflow @1", [12.0, 13.5, 10.9], "kac ladder @1", [10.0, 11.0, 9.0]
        ).to_dict(),
        compare("c", "kid", "kac reflow @1", [1, 2, 3], "kac ladder @1", [1, 2, 3.5]).to_dict(),
    ]
    res = {
        "rows": rows,
        "settings": {"families": ["kac"], "seeds": [0, 1, 2], "steps": [1]},
        "comparisons": comps,
    }
    f = br.method_findings(res)
    assert f["best"] == "kac teacher, 1 step: ladder (10.00)"  # the teacher row is not a method
    assert f["tally"] == "reflow: 0 holds, 1 fails, 0 inconclusive" and f["n"] == 1
    assert br.method_findings(None) == {"best": "not yet run", "tally": "not yet run", "n": 0}


def test_stress_findings_counts_verdicts_per_family_and_metric():
    from kaclib.stats import compare

    def c(metric, other, a, b):
        return compare("c", metric, "kac", a, other, b).to_dict()

    res = {"comparisons": [c("fid", "gaussian", [1, 2, 3], [5, 6, 7.5]), c("fid", "diffusion", [1, 2, 3], [1, 2.5, 2.5]),
                           c("frac_out_of_range", "gaussian", [1, 2, 3], [1, 2.5, 2.5])]}  # fmt: skip
    text = br.stress_findings(res)
    assert text.startswith("against the Gaussian peer: FID 1 holds, 0 fails, 0 inconclusive; range 0 holds")
    assert "against the diffusion path: FID 0 holds, 0 fails, 1 inconclusive; range none" in text
    assert br.stress_findings(None) == "not yet run"
