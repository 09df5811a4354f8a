"""The book's machinery: configuration, TOC, notebook pairs, citations, the claims table and the
page checker (without a browser)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import ci_scripts
import pytest

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"

yaml = pytest.importorskip("yaml")
jupytext = pytest.importorskip("jupytext")
nbformat = pytest.importorskip("nbformat")


def _config() -> dict:
    return yaml.safe_load((ROOT / "_config.yml").read_text())


def _toc_docs() -> list[str]:
    from kaclib.claims import chapters_from_toc

    return chapters_from_toc(ROOT / "_toc.yml")


def _notebook_mds() -> list[Path]:
    out = []
    for p in sorted(BOOK.glob("*.md")):
        head = p.read_text()[:3000]
        if head.startswith("---") and "kernelspec" in head:
            out.append(p)
    return out


# ----------------------------------------------------------------------------- configuration


def test_toc_symlink_points_to_top_level_toc():
    link = BOOK / "_toc.yml"
    assert link.is_symlink(), "book/_toc.yml must be a symlink (jupyter-book looks for the TOC there)"
    assert link.resolve() == (ROOT / "_toc.yml").resolve()


def test_config_settings():
    cfg = _config()
    assert cfg["only_build_toc_files"] is True
    assert any(p in ("**.ipynb", "**/*.ipynb") for p in cfg["exclude_patterns"]), (
        "paired .ipynb must be excluded"
    )
    ex = cfg["execute"]
    assert ex["execute_notebooks"] in ("cache", "force")
    assert ex["timeout"] > 30 and ex["raise_on_error"] is True
    for bib in cfg["bibtex_bibfiles"]:
        assert (BOOK / bib).is_file()
    for name, path in cfg["sphinx"]["local_extensions"].items():
        assert (ROOT / path / f"{name}.py").is_file()


def test_toc_entries_exist_and_root_is_intro():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    assert toc["root"] == "intro" and (BOOK / "intro.md").is_file()
    for doc in _toc_docs():
        assert (BOOK / f"{doc}.md").is_file(), f"TOC entry {doc} has no book/{doc}.md"


def test_book_extension_finds_offline_assets():
    spec = importlib.util.spec_from_file_location("kacbook", BOOK / "_ext" / "kacbook.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.plotly_js().is_file()
    assert (mod.mathjax_dir() / Path(mod.MATHJAX_ENTRY).name).is_file()


# ----------------------------------------------------------------------------- notebook pairs


def _cells(nb) -> list[tuple]:
    out = []
    for cell in nb.cells:
        tags = tuple(cell.get("metadata", {}).get("tags", []))
        out.append((cell.cell_type, cell.source.strip(), tags))
    return out


@pytest.mark.parametrize("md", _notebook_mds(), ids=lambda p: p.name)
def test_notebook_pair_in_sync(md: Path):
    """The .ipynb must hold exactly the cells of the .md (run `jupytext --sync book/NAME.md`)."""
    ipynb = md.with_suffix(".ipynb")
    assert ipynb.is_file(), f"{ipynb.name} missing: run `jupytext --sync {md.relative_to(ROOT)}`"
    from_md = _cells(jupytext.read(md))
    from_ipynb = _cells(nbformat.read(ipynb, as_version=4))
    assert len(from_md) == len(from_ipynb), (
        f"{md.name} has {len(from_md)} cells, {ipynb.name} {len(from_ipynb)}: run `jupytext --sync {md.relative_to(ROOT)}`"
    )
    for k, (a, b) in enumerate(zip(from_md, from_ipynb)):
        assert a == b, (
            f"cell {k} differs between {md.name} and {ipynb.name}: run `jupytext --sync {md.relative_to(ROOT)}`"
        )


@pytest.mark.parametrize("md", _notebook_mds(), ids=lambda p: p.name)
def test_paired_ipynb_has_no_outputs(md: Path):
    nb = nbformat.read(md.with_suffix(".ipynb"), as_version=4)
    for k, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert not cell.get("outputs"), f"{md.with_suffix('.ipynb').name} cell {k} has stored outputs"
            assert cell.get("execution_count") is None, f"cell {k} has an execution count"


def test_every_ipynb_has_its_md():
    for ipynb in BOOK.glob("*.ipynb"):
        assert ipynb.with_suffix(".md").is_file(), f"{ipynb.name} has no paired .md"


@pytest.mark.parametrize("md", _notebook_mds(), ids=lambda p: p.name)
def test_notebook_front_matter(md: Path):
    nb = jupytext.read(md)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert "md:myst" in nb.metadata["jupytext"]["formats"]


def test_chapters_record_their_claims():
    """Every notebook chapter of the TOC records claims under its own docname (the intro's table)."""
    for doc in _toc_docs():
        path = BOOK / f"{doc}.md"
        if path not in _notebook_mds():
            continue
        text = path.read_text()
        assert f'claims.record("{doc}"' in text, f'{doc}.md must call claims.record("{doc}", ...)'


def test_citations_exist_in_bibliography():
    bib = (BOOK / "references.bib").read_text()
    keys = set(re.findall(r"@\w+\{([^,]+),", bib))
    used = set()
    for md in BOOK.glob("*.md"):
        for group in re.findall(r"\{cite(?::\w+)?\}`([^`]+)`", md.read_text()):
            used.update(k.strip() for k in group.split(","))
    missing = sorted(used - keys)
    assert not missing, f"cited but not in references.bib: {missing}"
    for key in (
        "han2025distillkac",
        "duong2025telegrapher",
        "kac1974stochastic",
        "goldstein1951diffusion",
        "ho2020denoising",
        "song2021denoising",
        "lipman2023flow",
        "liu2023flow",
        "salimans2022progressive",
        "song2023consistency",
        "song2024improved",
        "karras2022elucidating",
        "ho2022classifier",
    ):
        assert key in keys


# ----------------------------------------------------------------------------- the claims table


def _write_chapter(folder: Path, name: str, code: str) -> None:
    (folder / f"{name}.md").write_text(
        "---\njupytext:\n  formats: ipynb,md:myst\n  text_representation:\n    extension: .md\n"
        "    format_name: myst\nkernelspec:\n  display_name: Python 3\n  language: python\n  name: python3\n---\n\n"
        f"# {name}\n\n```{{code-cell}} ipython3\n{code}\n```\n"
    )


def test_claims_record_collect_and_staleness(tmp_path, monkeypatch):
    from kaclib import claims

    monkeypatch.setenv("KACLIB_CLAIMS_DIR", str(tmp_path / "claims"))
    book = tmp_path / "book"
    book.mkdir()
    (book / "_toc.yml").write_text(
        "format: jb-book\nroot: intro\nchapters:\n  - file: ch1\n  - file: ch2\n  - file: refs\n"
    )
    _write_chapter(book, "ch1", "x = 1")
    _write_chapter(book, "ch2", "y = 2")
    (book / "refs.md").write_text("# References\n")
    assert claims.chapters_from_toc(book / "_toc.yml") == ["ch1", "ch2", "refs"]

    claims.record(
        "ch1",
        "Chapter one",
        [
            claims.Claim("c < 1 <b>", "0.5", holds=True, source="paper"),
            {"claim": "plain", "measured": "3", "holds": None},
        ],
        profile="smoke",
        folder=book,
    )
    rec = claims.load("ch1", "smoke")
    assert rec["title"] == "Chapter one" and len(rec["claims"]) == 2
    assert rec["source_hash"] == claims.source_hash("ch1", book)

    entries = claims.collect(book / "_toc.yml", book, profile="smoke")
    status = {e["chapter"]: e["status"] for e in entries}
    assert status == {"ch1": "ok", "ch2": "missing"}  # refs is prose: no entry
    html = claims.table_html(entries)
    assert "c &lt; 1 &lt;b&gt;" in html and "ch1.html" in html and "not run yet" in html
    assert "holds" in html and "measured" in html

    # editing prose keeps the record, editing code makes it stale
    (book / "ch1.md").write_text((book / "ch1.md").read_text().replace("# ch1", "# Chapter 1, renamed"))
    assert {e["chapter"]: e["status"] for e in claims.collect(book / "_toc.yml", book, profile="smoke")}[
        "ch1"
    ] == "ok"
    (book / "ch1.md").write_text((book / "ch1.md").read_text().replace("x = 1", "x = 2"))
    assert {e["chapter"]: e["status"] for e in claims.collect(book / "_toc.yml", book, profile="smoke")}[
        "ch1"
    ] == "stale"

    # other profiles are separate
    assert claims.load("ch1", "cpu") is None


def test_claims_run_missing_executes_the_chapter(tmp_path, monkeypatch):
    from kaclib import claims

    monkeypatch.setenv("KACLIB_CLAIMS_DIR", str(tmp_path / "claims"))
    monkeypatch.setenv("KACLIB_PROFILE", "smoke")
    book = tmp_path / "book"
    book.mkdir()
    (book / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n  - file: ch1\n")
    _write_chapter(
        book, "ch1", 'from kaclib import claims\nclaims.record("ch1", "One", [claims.Claim("a", "b", True)])'
    )
    entries = claims.collect(book / "_toc.yml", book, run_missing=True, verbose=False)
    assert entries[0]["status"] == "ok" and entries[0]["record"]["claims"][0]["claim"] == "a"


def test_claim_validation():
    from kaclib import claims

    with pytest.raises(ValueError):
        claims.Claim("", "x")
    with pytest.raises(ValueError):
        claims.Claim("a", 1.0)
    with pytest.raises(ValueError):
        claims.record("a/b", "t", [])
    with pytest.raises(ValueError):
        claims.record("ok", "t", ["not a claim"])


# ----------------------------------------------------------------------------- page checker


def _checker():
    return ci_scripts.load("check_book_html")


def test_checker_static_problems_and_page_list(tmp_path):
    chk = _checker()
    (tmp_path / "_static").mkdir()
    (tmp_path / "_static" / "x.html").write_text("<html></html>")
    good = tmp_path / "good.html"
    good.write_text(
        '<html><head><script src="_static/plotly.min.js"></script>'
        '<link rel="stylesheet" href="_static/a.css"><a href="https://example.org">x</a></head></html>'
    )
    bad = tmp_path / "bad.html"
    bad.write_text(
        '<html><head><script src="https://cdn.example.org/x.js"></script>'
        '<link rel="stylesheet" href="//fonts.example.org/f.css"></head></html>'
    )
    assert [p.name for p in chk.pages_of(tmp_path, [])] == ["bad.html", "good.html"]
    assert chk.static_problems(good) == []
    probs = chk.static_problems(bad)
    assert len(probs) == 2 and "cdn.example.org" in probs[0]


def test_checker_reports_missing_build(tmp_path, capsys):
    chk = _checker()
    assert chk.main([str(tmp_path / "nope")]) == 1
