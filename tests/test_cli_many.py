"""``zerank compress`` on several documents: one model, shared batches, one result each."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest
from fpdf import FPDF

from tests.cli_run import call
from tests.extras import needs_matplotlib
from tests.fake_servers import FakeRerankServer
from zerank_core.calibrate import CriterionFit, ThresholdFit, ThresholdPolicy
from zerank_core.cli._policy import apply_policy_file
from zerank_core.criteria import Criterion
from zerank_core.select import SelectionPolicy

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
    assert summary["documents"] == 3
    assert summary["files"] == {str(folder / f"{name}.pdf"): f"{name}.json" for name in PACKETS}
    assert summary["backend"]["name"] == "server"
    for name, single in singles.items():
        data = json.loads((results / f"{name}.json").read_text(encoding="utf-8"))
        assert data["document"] == single["document"]
        for got, want in zip(data["results"], single["results"], strict=True):
            assert (got["criterion"], got["pages"], got["scores"]) == (
                want["criterion"],
                want["pages"],
                want["scores"],
            )
    # Pages of different documents went to the server in the same requests.
    sent = [set(r.body["documents"]) for r in fake_server.requests]
    alpha, beta = PACKETS["alpha"][0], PACKETS["beta"][0]
    assert any(alpha in texts and beta in texts for texts in sent)
    assert len(fake_server.requests) < sum(
        s["report"]["usage"]["requests"] for s in singles.values()
    )


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
    assert [d["document"]["source"] for d in data["results"]] == [
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
    assert [d["document"]["source"] for d in json.loads(out)["results"]] == [
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
    assert data["document"]["source"] == str(pages)  # a single result, not a list
    assert data["report"]["pages"] == 2


@needs_matplotlib
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


def test_a_policy_file_applies_its_thresholds_to_every_document(
    inputs: tuple[Path, Path], tmp_path: Path, fake_server: FakeRerankServer
) -> None:
    folder, criteria = inputs
    policy = ThresholdPolicy(
        fit=ThresholdFit("conformal", 0.9, 0.3, 30, 30, 0.92, 0.09),
        criteria={"C2": CriterionFit(0.6, 12, 12, 0.93)},
        backend={"name": "server"},
    ).save(tmp_path / "policy.json")
    results = tmp_path / "results"
    server = ["--server-url", f"{fake_server.url}/v1/rerank", "--cache", str(tmp_path / "c.db")]
    code, _, err = call(
        "compress", str(folder / "*.pdf"), "-c", str(criteria), "--policy", str(policy),
        "--top-k", "1", "--threshold", "0.9", *server, "-o", str(results),
    )  # fmt: skip

    assert code == 0, err
    assert f"policy file: {policy} — conformal, recall target 0.9, threshold 0.3" in err
    assert "own thresholds for C2" in err
    assert "fitted on" not in err  # fitted on the backend this run uses
    assert "0 hits, 12 misses" in err  # 6 distinct page texts × 2 criteria
    kept = 0
    for name in PACKETS:
        data = json.loads((results / f"{name}.json").read_text(encoding="utf-8"))
        # The file's thresholds replace --threshold and --top-k, for every document.
        assert (data["policy"]["threshold"], data["policy"]["top_k"]) == (0.3, None)
        for result in data["results"]:
            criterion = result["criterion"]
            threshold = {"C1": 0.3, "C2": 0.6}[criterion["id"]]
            assert criterion["threshold"] == threshold
            expected = [int(p) for p, s in result["scores"].items() if s >= threshold]
            assert result["pages"] == expected, (name, criterion["id"])
            kept += len(expected)
    assert kept > 0

    # The rerun reads every score from the cache; a policy fitted elsewhere is flagged.
    other = ThresholdPolicy(
        fit=ThresholdFit("conformal", 0.9, 0.3, 30, 30, 0.92, 0.09), backend={"name": "hosted"}
    ).save(tmp_path / "hosted.json")
    code, out, err = call(
        "compress", str(folder), "-c", str(criteria), "--policy", str(other), *server, "-o", "-"
    )
    assert code == 0, err
    assert "fitted on hosted scores and this run uses server" in err
    assert "12 hits, 0 misses" in err
    data = json.loads(out)
    assert data["summary"]["cache"]["misses"] == 0
    assert all(d["policy"]["threshold"] == 0.3 for d in data["results"])


def test_on_ray_a_policy_fitted_on_another_backend_is_flagged_before_the_actors_start(
    tmp_path: Path,
) -> None:
    # On Ray the backend is chosen by each actor on its node: only --backend is known.
    path = ThresholdPolicy(
        fit=ThresholdFit("conformal", 0.9, 0.3, 30, 30, 0.92, 0.09), backend={"name": "local"}
    ).save(tmp_path / "policy.json")
    criteria = [Criterion("C1", "When is the renewal deadline?")]
    for backend, flagged in ((None, True), ("lexical", True), ("local", False)):
        err = io.StringIO()
        args = argparse.Namespace(policy=path, backend=backend)
        policy, updated = apply_policy_file(args, SelectionPolicy(), criteria, err)
        assert (policy.threshold, policy.top_k, updated[0].threshold) == (0.3, None, 0.3)
        assert ("fitted on local scores; on Ray each actor chooses" in err.getvalue()) is flagged
        assert "this run uses None" not in err.getvalue()
        assert ("(here --backend lexical)" in err.getvalue()) is (backend == "lexical")
