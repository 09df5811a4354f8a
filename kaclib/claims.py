"""The book's claims table: every chapter records what it measured, the intro renders it.

How it works
------------
* A chapter ends with one call::

      claims.record("01_kac_process", "The damped wave equation and the Kac process", [
          claims.Claim("Finite speed: |X_s| <= c s", measured=f"max |X_s|/(c s) = {r:.4f}", holds=r <= 1,
                       source="Kac (1974)"),
          ...
      ])

  ``holds`` is ``True``/``False`` for a checked claim and ``None`` for a plain measurement (for
  example a sample-quality number the paper reports but this scale cannot settle).
* :func:`record` writes ``<claims_dir(profile)>/<chapter>.json`` with the claims, the profile,
  the time and a hash of the chapter's code cells (:func:`source_hash`).  Results of different
  profiles never mix: ``pytest --nbval`` (smoke) and the book (cpu/gpu) write different folders.
* The intro calls :func:`show_table`: it lists the chapters of ``_toc.yml`` (in order), loads each
  record and renders one row per claim with a link to its chapter.  A record that is missing, or
  whose code hash differs from the chapter's current code, is *stale*; with ``run_missing=True``
  the intro executes that chapter first (in a fresh kernel, :func:`run_chapter`), so the table is
  right whatever order the notebooks ran in.  In the book build the intro is read last anyway
  (``book/_ext/kacbook.py``), so this fallback only runs when a chapter was cached but its
  record was deleted.
* A new chapter adds rows by calling :func:`record` once at its end and being listed in
  ``_toc.yml``; nothing else changes.

The folder is ``$KACLIB_CLAIMS_DIR/<profile>`` if that variable is set, else
``kaclib.artifacts.cache_root()/claims/<profile>``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import html
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from .artifacts import cache_root
from .profiles import current_profile_name

__all__ = [
    "Claim",
    "claims_dir",
    "record",
    "load",
    "source_hash",
    "chapter_file",
    "chapters_from_toc",
    "run_chapter",
    "collect",
    "table_html",
    "table_text",
    "show_table",
]


@dataclass
class Claim:
    """One row of the claims table.

    ``claim``: what the paper (or the theory it builds on) says; ``measured``: what this build
    measured, as display text; ``holds``: ``True``/``False`` when the measurement checks the claim,
    ``None`` for a plain measurement; ``source``: where the claim comes from.
    """

    claim: str
    measured: str
    holds: bool | None = None
    source: str = ""
    verdict: str | None = None  # "holds" / "fails" / "inconclusive" from a paired CI (kaclib.stats)

    @classmethod
    def from_comparison(cls, claim: str, comparison, source: str = "", where: str = "") -> "Claim":
        """A claim whose verdict is read from a paired comparison's 95% CI.

        ``comparison``: a result of :func:`kaclib.stats.compare`, or its ``to_dict()`` from a committed
        benchmark JSON.
        """
        c = comparison if isinstance(comparison, dict) else comparison.to_dict()
        lo, hi = c["ci95"]
        measured = (
            f"{c['metric']}: {c['a']} - {c['b']} = {c['diff_mean']:+.4g}, 95% CI [{lo:+.4g}, {hi:+.4g}] "
            f"over {len(c['diff_values'])} paired seeds" + (f" ({where})" if where else "")
        )
        return cls(claim, measured, source=source, verdict=c["verdict"])

    def __post_init__(self):
        if not isinstance(self.claim, str) or not self.claim:
            raise ValueError("claim must be a non-empty string")
        if not isinstance(self.measured, str):
            raise ValueError("measured must be a string (format the number where it is computed)")
        if self.holds is not None:
            self.holds = bool(self.holds)
        if self.verdict is not None:
            from .stats import VERDICTS

            if self.verdict not in VERDICTS:
                raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")
            self.holds = {"holds": True, "fails": False, "inconclusive": None}[self.verdict]


def claims_dir(profile: str | None = None) -> Path:
    """Folder of the claim records of ``profile`` (default: the current profile)."""
    profile = profile or current_profile_name()
    root = os.environ.get("KACLIB_CLAIMS_DIR")
    base = Path(root) if root else cache_root() / "claims"
    return base / profile


def chapter_file(chapter: str, folder: str | os.PathLike | None = None) -> Path | None:
    """The chapter's source: ``<folder>/<chapter>.md`` (else ``.ipynb``).

    ``folder`` defaults to the working directory (where Jupyter, nbval and the book run a notebook).
    ``None`` when neither file exists.
    """
    folder = Path(folder) if folder is not None else Path.cwd()
    for ext in (".md", ".ipynb"):
        p = folder / f"{chapter}{ext}"
        if p.is_file():
            return p
    return None


def source_hash(chapter: str, folder: str | os.PathLike | None = None) -> str | None:
    """SHA-256 of the chapter's code cells (``None`` when its file is not found).

    Only code counts, as for Jupyter Book's execution cache: editing prose does not make a record
    stale, editing code does.  The ``.md`` and its paired ``.ipynb`` give the same hash.
    """
    path = chapter_file(chapter, folder)
    if path is None:
        return None
    import jupytext

    nb = jupytext.read(path)
    h = hashlib.sha256()
    for cell in nb.cells:
        if cell.cell_type == "code":
            h.update(cell.source.strip().encode())
            h.update(b"\0")
    return h.hexdigest()[:16]


def record(
    chapter: str,
    title: str,
    claims: list,
    *,
    profile: str | None = None,
    folder: str | os.PathLike | None = None,
) -> Path:
    """Write the chapter's measured claims; returns the JSON file written."""
    if not isinstance(chapter, str) or not chapter or "/" in chapter:
        raise ValueError(f"chapter must be a docname such as '01_kac_process', got {chapter!r}")
    rows = []
    for c in claims:
        if isinstance(c, dict):
            c = Claim(**c)
        if not isinstance(c, Claim):
            raise ValueError(f"claims must be Claim objects or dicts, got {type(c).__name__}")
        rows.append(asdict(c))
    profile = profile or current_profile_name()
    out = claims_dir(profile) / f"{chapter}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "chapter": chapter,
        "title": title,
        "profile": profile,
        "source_hash": source_hash(chapter, folder),
        "written_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "claims": rows,
    }
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, out)
    return out


def load(chapter: str, profile: str | None = None) -> dict | None:
    """The chapter's record, or ``None``."""
    p = claims_dir(profile) / f"{chapter}.json"
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        return None


def chapters_from_toc(toc: str | os.PathLike = "_toc.yml") -> list[str]:
    """Docnames of a Jupyter Book TOC in reading order, the root page excluded."""
    import yaml

    data = yaml.safe_load(Path(toc).read_text())
    out: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                out.append(str(node["file"]).removesuffix(".md").removesuffix(".ipynb"))
            for key in ("parts", "chapters", "sections"):
                for child in node.get(key, []) or []:
                    walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(data)
    return out


def _is_notebook(path: Path) -> bool:
    if path.suffix == ".ipynb":
        return True
    head = path.read_text()[:2000]
    return head.startswith("---") and "kernelspec" in head


def run_chapter(chapter: str, folder: str | os.PathLike | None = None, timeout: int = 7200) -> None:
    """Execute a chapter in a fresh kernel in its own folder.

    Its outputs are discarded; what matters is the record it writes.
    """
    import jupytext
    import nbclient

    path = chapter_file(chapter, folder)
    if path is None:
        raise FileNotFoundError(f"chapter {chapter!r} not found in {folder or Path.cwd()}")
    nb = jupytext.read(path)
    kernel = nb.metadata.get("kernelspec", {}).get("name", "python3")
    nbclient.NotebookClient(
        nb, timeout=timeout, kernel_name=kernel, resources={"metadata": {"path": str(path.parent)}}
    ).execute()


def collect(
    toc: str | os.PathLike = "_toc.yml",
    folder: str | os.PathLike | None = None,
    profile: str | None = None,
    run_missing: bool = False,
    verbose: bool = True,
) -> list[dict]:
    """One entry per notebook chapter of the TOC: ``{"chapter", "status", "record"}``.

    ``status`` is ``"ok"``, ``"stale"`` (recorded from other code), ``"missing"`` or
    ``"no-claims"`` (the chapter ran but records nothing).  With ``run_missing`` a stale or
    missing chapter is executed first.
    """
    folder = Path(folder) if folder is not None else Path(toc).parent
    entries = []
    for chapter in chapters_from_toc(toc):
        path = chapter_file(chapter, folder)
        if path is None or not _is_notebook(path):
            continue  # a prose page (e.g. the references) records nothing
        rec = load(chapter, profile)
        current = source_hash(chapter, folder)

        def status_of(r):
            if r is None:
                return "missing"
            return "ok" if r.get("source_hash") == current else "stale"  # noqa: B023 (called at once)

        status = status_of(rec)
        if status != "ok" and run_missing:
            if verbose:
                print(f"[claims] {chapter}: record {status}; running the chapter now ...", flush=True)
            run_chapter(chapter, folder)
            rec = load(chapter, profile)
            status = status_of(rec)
            if status == "missing":
                status = "no-claims"
        entries.append({"chapter": chapter, "status": status, "record": rec})
    return entries


_OUTCOME = {True: ("holds", "#1a7f37"), False: ("fails", "#cf222e"), None: ("measured", "#57606a")}
_COLOUR = {"holds": "#1a7f37", "fails": "#cf222e", "inconclusive": "#9a6700"}


def _outcome(c: dict) -> tuple[str, str]:
    """Word and colour of a recorded claim: its CI verdict if it has one, else checked / measured."""
    v = c.get("verdict")
    return (v, _COLOUR[v]) if v else _OUTCOME[c.get("holds")]


def table_html(entries: list[dict]) -> str:
    """The claims table as an HTML fragment (links point to the book's chapter pages)."""
    rows = []
    for e in entries:
        rec = e["record"] or {}
        title = html.escape(rec.get("title") or e["chapter"])
        link = f'<a href="{html.escape(e["chapter"])}.html">{title}</a>'
        if e["status"] != "ok" or not rec.get("claims"):
            note = {
                "missing": "not run yet",
                "stale": "recorded from older code: re-run the chapter",
                "no-claims": "records no claims",
                "ok": "records no claims",
            }[e["status"]]
            rows.append(f"<tr><td colspan='2'><em>{note}</em></td><td>{link}</td><td></td></tr>")
            continue
        for c in rec["claims"]:
            word, colour = _outcome(c)
            src = f"<br><small>{html.escape(c['source'])}</small>" if c.get("source") else ""
            rows.append(
                f"<tr><td>{html.escape(c['claim'])}{src}</td><td>{html.escape(c['measured'])}</td>"
                f"<td>{link}</td><td style='color:{colour};font-weight:600'>{word}</td></tr>"
            )
    head = (
        "<tr><th style='width:34%'>Claim</th><th style='width:34%'>Measured in this build</th>"
        "<th>Chapter</th><th>Outcome</th></tr>"
    )
    return (
        "<div class='kac-claims' style='overflow-x:auto'>"
        "<table class='table' style='width:100%;font-size:0.9em;table-layout:auto'>"
        f"<thead>{head}</thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def table_text(entries: list[dict]) -> str:
    """The claims table as plain text: one line per claim, ``chapter: claim -> measured [outcome]``.

    A chapter whose status is not ``ok`` gets one line with its status.
    """
    lines = []
    for e in entries:
        rec = e["record"] or {}
        if e["status"] != "ok":
            lines.append(f"{e['chapter']}: {e['status']}")
            continue
        for c in rec.get("claims", []):
            lines.append(f"{e['chapter']}: {c['claim']} -> {c['measured']} [{_outcome(c)[0]}]")
    return "\n".join(lines)


def show_table(
    toc: str | os.PathLike = "_toc.yml",
    folder: str | os.PathLike | None = None,
    run_missing: bool = True,
    require_complete: bool | None = None,
) -> list[dict]:
    """Display the claims table (HTML + plain text); returns the entries.

    ``require_complete`` (default: inside the book build) raises when a chapter's record is still
    missing or stale after ``run_missing``: the published table never shows old numbers.
    """
    from IPython.display import display

    from .plots import in_book_build

    entries = collect(toc, folder, run_missing=run_missing)
    if require_complete is None:
        require_complete = in_book_build()
    bad = [f"{e['chapter']} ({e['status']})" for e in entries if e["status"] in ("missing", "stale")]
    if require_complete and bad:
        raise RuntimeError("claims table incomplete: " + ", ".join(bad))
    display({"text/html": table_html(entries), "text/plain": table_text(entries)}, raw=True)
    return entries
