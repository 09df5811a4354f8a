"""Fill the README's measured blocks from the committed benchmark results.

    python benchmarks/render_readme.py [NAME ...]

Each block ``<!-- bench:NAME --> ... <!-- /bench:NAME -->`` is replaced by the ``summary_markdown`` of
``benchmarks/results/NAME.json``, followed by the command and the machine that produced it.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kaclib.tables import COMPARISON_HEADER, comparison_rows, markdown_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _floor_note(res) -> str:
    f = res["floor"]
    return (
        f"Floor: unseen real images (the `test` split: no generator, feature net or reference statistic saw "
        f"them), class-balanced like the generated sets, n = {f['n']}: {res.get('metric', res.get('metric_name'))} "
        f"{f['fid']:.3f}, KID {f['kid']:.3f}. `±` is the half-width of the 95% confidence interval over seeds."
    )


def _comparisons(res) -> str:
    return (
        "Paired comparisons (per-seed differences, shared latents; verdict from the 95% CI):\n\n"
        + markdown_table(COMPARISON_HEADER, comparison_rows(res["comparisons"]))
    )


def _teacher(res) -> str:
    t, s = res["tables"], res["settings"]
    return "\n\n".join(
        [
            f"Teachers ({s['train_steps']} training steps; under-trained: {s['under_trained_steps']}), seeds {s['seeds']}, "
            f"n = {s['n_eval']} images per estimate, {s['threads']} thread. Guidance (AB-2):",
            "```text\n" + t["guidance"] + "\n```",
            f"Solvers at equal NFE: paired RMSE to the {s['reference']} reference, and FID:",
            "```text\n" + t["solvers"] + "\n```",
            _floor_note(res),
            _comparisons(res),
        ]
    )


def _ladder(res) -> str:
    tab, tg = res["table"], res["targets"]
    parts = [
        f"{res['metric']} (mean ± 95% CI over seeds {res['seeds']}), n = {res['n_eval']}; equal budgets "
        f"({res['budget']['kac']['iters']} student iterations, {res['budget']['kac']['teacher_passes']:,} "
        "teacher passes x samples) for the ladder and the single stage:",
        markdown_table(tab["header"], tab["rows"]),
        f"Best 1-step student / {res['distill_config']['ladder'][0]}-step teacher: "
        f"{tg['best_1step_fid_over_teacher100']:.2f} (target 1.5).",
    ]
    tim = res.get("timing", {}).get("sample_s_per_1000")
    if tim:
        top = res["distill_config"]["ladder"][0]
        parts.append(
            f"Back-to-back sampling time per 1,000 images, latents included: 1-step student {tim['student_1']:.3f} s"
            + (
                f" (Gaussian-path 1-step student {tim['gaussian_student_1']:.3f} s)"
                if "gaussian_student_1" in tim
                else ""
            )
            + f", {top}-step teacher {tim[f'teacher_{top}']:.2f} s."
        )
    return "\n\n".join(parts + [_floor_note(res), _comparisons(res)])


def _metric_sanity(res) -> str:
    parts = []
    for name, r in res["datasets"].items():
        rows = [
            [
                k,
                f"{v['fid']['mean']:.3f} ± {v['fid']['half_width']:.3f}",
                f"{v['kid']['mean']:.3f} ± {v['kid']['half_width']:.3f}",
                f"{v['precision']['mean']:.3f}",
                f"{v['recall']['mean']:.3f}",
                f"{v['memorisation_ratio']['mean']:.3f}",
            ]
            for k, v in r["results"].items()
        ]
        mono = ", ".join(f"{k}: {'yes' if ok else 'NO'}" for k, ok in r["monotone"].items())
        parts += [
            f"**{name}**: feature net from {r['protocol']['feature_net']} (accuracy on `test` "
            f"{r['protocol']['feature_net_test_accuracy']:.3f}); reference: {r['protocol']['reference']}; "
            f"n = {r['n']}, seeds {r['seeds']}.",
            markdown_table(["set", "FID", "KID", "precision", "recall", "memorisation ratio"], rows),
            f"Monotone in the strength of each degradation: {mono}.",
            markdown_table(COMPARISON_HEADER, comparison_rows(r["comparisons"])),
        ]
    return "\n\n".join(parts)


RENDERERS = {"teacher": _teacher, "ladder": _ladder, "metric_sanity": _metric_sanity}


def render_block(name: str) -> str | None:
    path = ROOT / "benchmarks" / "results" / f"{name}.json"
    if not path.exists():
        return None
    res = json.loads(path.read_text())
    summary = res.get("summary_markdown") or (RENDERERS[name](res) if name in RENDERERS else None)
    if not summary:
        return None
    m = res.get("machine", {})
    where = f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, torch {m.get('torch', '?')}"
    return (
        f"**{name}**: `{res.get('command', '')}` on {where}, {m.get('date', '')}"
        f" (commit {m.get('git_commit', '?')}).\n\n{summary}"
    )


def main(names: list[str] | None = None) -> None:
    """Render every block of the README (or only ``names``)."""
    readme = ROOT / "README.md"
    text = readme.read_text()
    for name in names or re.findall(r"<!-- bench:([\w-]+) -->", text):
        block = render_block(name)
        if block is None:
            continue
        text = re.sub(
            rf"(<!-- bench:{name} -->\n).*?(\n<!-- /bench:{name} -->)",
            lambda mm: mm.group(1) + block + mm.group(2),  # noqa: B023 (called at once)
            text,
            flags=re.S,
        )
    readme.write_text(text)
    print("README updated")


if __name__ == "__main__":
    main(sys.argv[1:])
