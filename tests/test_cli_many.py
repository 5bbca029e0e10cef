"""``zerank compress`` on several documents: one model, shared batches, one result each."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from fpdf import FPDF

from tests.fake_servers import FakeRerankServer
from zerank_core.cli import main

CRITERIA_TEXT = "When is the renewal deadline?\nWho pays the invoice?\n"
PACKETS = {
    "alpha": ["The renewal deadline is March 1.", "", "Lunch menu and parking."],
    "beta": ["Invoices are paid by the buyer within 30 days.", "Renewal is automatic."],
    "gamma": ["Nothing relevant here.", "The supplier pays shipping invoices."],
}


def write_pdf(path: Path, pages: list[str]) -> Path:
    pdf = FPDF()
    pdf.set_font("Helvetica", size=11)
    for text in pages:
        pdf.add_page()
        if text:
            pdf.multi_cell(0, 6, text)
    pdf.output(str(path))
    return path


def call(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(args), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "packets"
    folder.mkdir()
    for name, pages in PACKETS.items():
        write_pdf(folder / f"{name}.pdf", pages)
    criteria = tmp_path / "criteria.txt"
    criteria.write_text(CRITERIA_TEXT, encoding="utf-8")
    return folder, criteria


def test_a_folder_of_pdfs_gives_one_result_per_document(
    inputs: tuple[Path, Path], tmp_path: Path, fake_server: FakeRerankServer
) -> None:
    folder, criteria = inputs
    server = ["--server-url", f"{fake_server.url}/v1/rerank", "--no-cache"]
    singles = {}
    for name in PACKETS:
        code, out, err = call(
            "compress", str(folder / f"{name}.pdf"), "-c", str(criteria), *server, "-o", "-"
        )
        assert code == 0, err
        singles[name] = json.loads(out)
    fake_server.requests.clear()

    results = tmp_path / "results"
    code, out, err = call("compress", str(folder), "-c", str(criteria), *server, "-o", str(results))

    assert code == 0, err
    assert out == ""
    assert "documents: 3, 7 pages" in err
    assert f"results: {results}/ — 3 documents and summary.json" in err
    summary = json.loads((results / "summary.json").read_text(encoding="utf-8"))
    assert summary["summary"]["documents"] == 3
    assert summary["summary"]["files"] == {
        str(folder / f"{name}.pdf"): f"{name}.json" for name in PACKETS
    }
    assert summary["backend"]["name"] == "server"
    for name, single in singles.items():
        data = json.loads((results / f"{name}.json").read_text(encoding="utf-8"))
        assert data["document"] == single["document"]
        assert data["matrix"] == single["matrix"]
        for got, want in zip(data["criteria"], single["criteria"], strict=True):
            assert (got["id"], got["pages"], got["scores"]) == (
                want["id"],
                want["pages"],
                want["scores"],
            )
    # Pages of different documents went to the server in the same requests.
    sent = [set(r.body["documents"]) for r in fake_server.requests]
    alpha, beta = PACKETS["alpha"][0], PACKETS["beta"][0]
    assert any(alpha in texts and beta in texts for texts in sent)
    assert len(fake_server.requests) < sum(s["report"]["model_requests"] for s in singles.values())


def test_globs_and_several_paths_are_several_documents(
    inputs: tuple[Path, Path], fake_server: FakeRerankServer
) -> None:
    folder, criteria = inputs
    server = ["--server-url", f"{fake_server.url}/v1/rerank", "--no-cache"]
    code, out, err = call(
        "compress", str(folder / "[ab]*.pdf"), "-c", str(criteria), *server, "-o", "-"
    )
    assert code == 0, err
    data = json.loads(out)
    assert [d["document"] for d in data["documents"]] == [
        str(folder / "alpha.pdf"),
        str(folder / "beta.pdf"),
    ]
    assert data["summary"]["documents"] == 2

    code, out, err = call(
        "compress",
        str(folder / "gamma.pdf"),
        str(folder / "alpha.pdf"),
        "-c",
        str(criteria),
        *server,
        "-o",
        "-",
    )
    assert code == 0, err
    assert [d["document"] for d in json.loads(out)["documents"]] == [
        str(folder / "gamma.pdf"),
        str(folder / "alpha.pdf"),
    ]


def test_a_folder_of_text_pages_is_still_one_document(
    tmp_path: Path, inputs: tuple[Path, Path], fake_server: FakeRerankServer
) -> None:
    _, criteria = inputs
    pages = tmp_path / "pages"
    pages.mkdir()
    for number, text in enumerate(PACKETS["beta"], start=1):
        (pages / f"page{number}.txt").write_text(text, encoding="utf-8")
    server = ["--server-url", f"{fake_server.url}/v1/rerank", "--no-cache"]
    code, out, err = call("compress", str(pages), "-c", str(criteria), *server, "-o", "-")
    assert code == 0, err
    data = json.loads(out)
    assert data["document"] == str(pages)  # a single result, not a list of documents
    assert data["report"]["pages"] == 2


def test_ambiguous_or_unusable_arguments_are_refused(
    tmp_path: Path, inputs: tuple[Path, Path]
) -> None:
    folder, criteria = inputs
    (folder / "notes.txt").write_text("a page", encoding="utf-8")
    lexical = ["--backend", "lexical", "--no-cache"]
    cases = [
        ([str(folder)], "holds both PDF files"),
        ([str(tmp_path / "none-*.pdf")], "no document matches"),
        ([str(folder / "*.pdf"), "-o", str(tmp_path / "out.json")], "-o names a folder"),
        ([str(folder / "*.pdf"), "--heatmap", str(tmp_path / "h.png")], "--heatmap draws one"),
    ]
    for arguments, message in cases:
        code, _, err = call("compress", *arguments, "-c", str(criteria), *lexical)
        assert code != 0
        assert message in err
    assert not (tmp_path / "out.json").exists()
