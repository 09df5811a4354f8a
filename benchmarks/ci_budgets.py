"""Record the wall-time budget of a `.ci/run` log (install, `pytest --nbval`, cold book build,
browser check) into benchmarks/results/budgets.json for the README.

    bash .ci/run 2>&1 | tee /tmp/ci.log
    python benchmarks/ci_budgets.py /tmp/ci.log --note "fresh clone, cold cache"
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, write_results  # noqa: E402

STAGES = [
    ("installed", "pip install -r requirements.txt", None),
    ("tests passed", "pytest --nbval", 10 * 60),
    ("gpu_check smoke passed", "benchmarks/gpu_check.py --profile smoke", None),
    ("book built", "jupyter-book build book (cpu profile; cache state in the note)", 20 * 60),
    ("browser check passed", "headless Chromium check of every page, plotly sliders clicked", None),
    ("live book check passed", "JupyterLab in headless Chromium, every chapter run, sliders dragged", 5 * 60),
]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("log")
    ap.add_argument("--note", default="", help="conditions of the run (load, cache state)")
    args = ap.parse_args(argv)
    text = Path(args.log).read_text(errors="replace")
    stamps = {m.group(1): int(m.group(2)) for m in re.finditer(r"\[ci\] (.+?) \((\d+) s\)", text)}
    tests = re.search(r"=+ (\d+) passed.*? in ([\d.]+)s", text)
    rows, prev = [], 0
    for key, label, budget in STAGES:
        if key in stamps:
            rows.append([label, stamps[key] - prev, "-" if budget is None else f"{budget // 60} min"])
            prev = stamps[key]
    total = prev
    rows.append(["whole .ci/run", total, "45 min"])
    summary = markdown_table(["stage", "seconds", "budget"], rows)
    if tests:
        summary += f"\n\n`pytest --nbval`: {tests.group(1)} passed."
    if args.note:
        summary += f" Conditions: {args.note}."
    payload = {
        "stages_s": stamps,
        "total_s": total,
        "tests_passed": int(tests.group(1)) if tests else None,
        "note": args.note,
        "summary_markdown": summary,
    }
    print(summary)
    write_results("budgets", payload)
    return payload


if __name__ == "__main__":
    main()
