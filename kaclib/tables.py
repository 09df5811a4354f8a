"""Plain-text and Markdown tables for the command line and the benchmark scripts."""

from __future__ import annotations

__all__ = ["format_cell", "format_table", "markdown_table", "comparison_rows", "COMPARISON_HEADER"]


def format_cell(v) -> str:
    """``None`` as ``-``; floats with 4 significant digits, scientific outside [1e-3, 1e5)."""
    if v is None:
        return "-"
    if isinstance(v, float):
        if v == 0:
            return "0"
        return f"{v:.3e}" if abs(v) >= 1e5 or abs(v) < 1e-3 else f"{v:.4g}"
    return str(v)


def format_table(headers: list, rows: list[list]) -> str:
    """A fixed-width text table with a rule under the header."""
    cells = [[str(h) for h in headers]] + [[format_cell(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(headers: list, rows: list[list]) -> str:
    """A GitHub-flavoured Markdown table (cells formatted like :func:`format_table`)."""
    lines = ["| " + " | ".join(str(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(format_cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


COMPARISON_HEADER = ["claim", "metric", "a - b (mean)", "95% CI", "seeds", "verdict"]


def comparison_rows(comparisons: list) -> list[list]:
    """Rows of a table of paired comparisons, under :data:`COMPARISON_HEADER`.

    ``comparisons`` are dicts of :meth:`kaclib.stats.Comparison.to_dict`.
    """
    return [
        [
            c["claim"],
            c["metric"],
            f"{c['diff_mean']:+.4g}",
            f"[{c['ci95'][0]:+.4g}, {c['ci95'][1]:+.4g}]",
            len(c["diff_values"]),
            c["verdict"],
        ]
        for c in comparisons
    ]
