"""What ``zerank compress`` prints: totals that read right, per-document tables, progress."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.cli_run import call

ROOT = Path(__file__).resolve().parent.parent
PACKET = ROOT / "cookbook" / "prior_auth" / "packet.txt"
CRITERIA = ROOT / "cookbook" / "prior_auth" / "criteria.yaml"
COMMON = ["-c", str(CRITERIA), "--backend", "lexical", "--no-cache"]


@pytest.fixture
def two_documents(tmp_path: Path) -> list[str]:
    pages = PACKET.read_text(encoding="utf-8").split("\f")
    (tmp_path / "a.txt").write_text("\f".join(pages[:20]), encoding="utf-8")
    (tmp_path / "b.txt").write_text("\f".join(pages[20:]), encoding="utf-8")
    return [str(tmp_path / "a.txt"), str(tmp_path / "b.txt")]


def test_totals_name_the_document_once_and_the_share_per_criterion() -> None:
    code, _, err = call("compress", str(PACKET), *COMMON, "-o", "-")
    assert code == 0, err
    # 41 pages, one of them (24) empty: never "empty: 24".
    assert "41 pages, 1 empty page (24), not scored; 10 criteria" in err
    assert "empty: 24" not in err
    # The denominator is the document (37,162 characters), not characters × criteria.
    assert (
        "kept 24,099 characters in all for 10 criteria, of a 37,162-character document: "
        "6.5% of it per criterion (15.4× less than the whole for each)"
    ) in err
    assert "371,620" not in err


def test_long_kept_page_lists_shorten_runs_and_keep_the_table_aligned() -> None:
    code, _, err = call("compress", str(PACKET), *COMMON, "--neighbors", "2", "-o", "-")
    assert code == 0, err
    lines = err.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("criterion "))
    rows = lines[head + 1 : head + 11]
    assert any("2–6, 13–17, 39–41" in row for row in rows)
    best = lines[head].index("best")
    # Every row's score sits under "best".
    assert all(re.fullmatch(r"\d\.\d\d", row[best : best + 4]) for row in rows), rows


def test_several_documents_print_what_one_document_prints(two_documents: list[str]) -> None:
    code, _, err = call("compress", *two_documents, *COMMON, "-o", "-")
    assert code == 0, err
    a, b = two_documents
    assert f"read: {a} — 20 pages in " in err
    assert f"read: {b} — 21 pages in " in err
    assert f"document: {b} — 21 pages, 1 empty page (4), not scored; 10 criteria" in err
    # Which pages each criterion kept, per document.
    block = err[err.index(f"document: {a}") : err.index(f"document: {b}")]
    assert "DX 3, 6 · ACTIVITY" in block
    assert "PRESCRIBER 4" in block
    assert "of a 19,325-character document" in block
    assert "of 2 documents of 37,162 characters" in err


def test_a_progress_bar_only_when_asked_or_on_a_terminal(
    two_documents: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = call("compress", str(PACKET), *COMMON, "-o", "-")
    assert code == 0, err
    assert "pair" not in capsys.readouterr().err  # stderr is not a terminal here

    code, _, err = call("compress", str(PACKET), *COMMON, "--progress", "-o", "-")
    assert code == 0, err
    bar = capsys.readouterr().err
    assert "scoring packet.txt" in bar
    assert "0/400" in bar  # page × criterion pairs, done of planned

    code, _, err = call("compress", *two_documents, *COMMON, "--progress", "-o", "-")
    assert code == 0, err
    bars = capsys.readouterr().err
    assert "reading" in bars
    assert "pages/s" in bars
    assert "scoring a.txt" in bars
    assert "scoring b.txt" in bars
    assert "documents:" in bars
    assert "/2 " in bars
