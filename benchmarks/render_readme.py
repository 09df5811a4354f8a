"""Fill the README's measured blocks from the committed benchmark results.

    python benchmarks/render_readme.py

Each block ``<!-- bench:NAME --> ... <!-- /bench:NAME -->`` is replaced by the ``summary_markdown`` of
``benchmarks/results/NAME.json``, followed by the command and the machine that produced it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _md(header, rows) -> str:
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def _floor_note(res) -> str:
    f = res["floor"]
    return (f"Floor column: real held-out digits (n = {f.get('n', 359)}) against the train statistics, "
            f"{f['fid']:.3f}. The feature network was trained on the train split, so generated sets that "
            "resemble the training images score *below* it: read differences against the seed spread.")


def _teacher(res) -> str:
    t = res["tables"]
    s = res["settings"]
    return "\n\n".join([
        f"Teachers: {s['train_steps']} training steps, {len(s['seeds'])} seeds (mean ± spread), "
        f"{s['n_eval']} images per FID-digits, {s['threads']} thread.",
        "```text\n" + t["headline"] + "\n```",
        "```text\n" + t["guidance"] + "\n```",
        _floor_note(res),
    ])


def _ladder(res) -> str:
    tab = res["table"]
    tim = res["timing"]["sample_s_per_1000"]
    tg = res["targets"]
    return "\n\n".join([
        f"FID-digits (mean ± spread over seeds {res['seeds']}), n = {res['n_eval']}; equal budgets "
        f"({res['budget']['kac']['iters']} student iterations, {res['budget']['kac']['teacher_passes']:,} "
        "teacher passes x samples) for the ladder and the single stage:",
        _md(tab["header"], tab["rows"]),
        f"Best 1-step student / 100-step teacher: {tg['best_1step_fid_over_teacher100']:.2f} "
        f"(target 1.5). Back-to-back sampling time per 1,000 images: 1-step student "
        f"{tim['student_1']:.2f} s, guided 100-step teacher {tim['teacher_100']:.1f} s "
        f"({tim['teacher_100'] / tim['student_1']:.0f}x). Benchmark wall time {tg['benchmark_minutes']:.1f} min.",
        _floor_note(res),
    ])


RENDERERS = {"teacher": _teacher, "ladder": _ladder}


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
    return (f"**{name}**: `{res.get('command', '')}` on {where}, {m.get('date', '')}"
            f" (commit {m.get('git_commit', '?')}).\n\n{summary}")


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    for name in re.findall(r"<!-- bench:([\w-]+) -->", text):
        block = render_block(name)
        if block is None:
            continue
        text = re.sub(rf"(<!-- bench:{name} -->\n).*?(\n<!-- /bench:{name} -->)",
                      lambda mm: mm.group(1) + block + mm.group(2), text, flags=re.S)
    readme.write_text(text)
    print("README updated")


if __name__ == "__main__":
    main()
