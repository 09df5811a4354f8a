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


def render_block(name: str) -> str | None:
    path = ROOT / "benchmarks" / "results" / f"{name}.json"
    if not path.exists():
        return None
    res = json.loads(path.read_text())
    summary = res.get("summary_markdown")
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
