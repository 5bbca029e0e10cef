"""Messages a user reads: one error line and a hint, the names users type, clear reasons."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import pytest

from tests.fake_servers import FakeRerankServer
from zerank_core.cli import main
from zerank_core.errors import BackendError, ConfigurationError, as_backend_error
from zerank_core.scorers import RerankServerScorer
from zerank_core.scorers.auto import resolve_backend


def _inputs(tmp_path: Path) -> list[str]:
    texts, labels = tmp_path / "texts.txt", tmp_path / "labels.txt"
    texts.write_text("the invoice is overdue\n", encoding="utf-8")
    labels.write_text("billing: invoices and payments\n", encoding="utf-8")
    return ["classify", str(texts), "-l", str(labels), "--no-cache"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--backend", "bm52"],
            "argument --backend: must be one of hosted, server, local, lexical",
        ),
        (["--threshold", "1.5"], "argument --threshold: must be in [0, 1], got 1.5"),
    ],
)
def test_a_bad_argument_is_one_error_line_and_a_hint_without_the_usage_block(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*_inputs(tmp_path), *flags])
    assert exited.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("zerank classify: error: ")
    assert message in lines[0]
    assert lines[1] == "hint: zerank classify --help lists every option"


def test_a_misspelt_backend_gets_a_did_you_mean(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main([*_inputs(tmp_path), "--backend", "bm52"])
    assert "did you mean 'bm25'?" in capsys.readouterr().err


@pytest.mark.parametrize(("name", "backend"), [("bm25", "lexical"), ("BM25", "lexical")])
def test_the_names_users_type_are_accepted(tmp_path: Path, name: str, backend: str) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = main([*_inputs(tmp_path), "--backend", name], stdout=out, stderr=err)
    assert code == 0, err.getvalue()
    assert err.getvalue().startswith(f"backend: {backend} ")


def test_zeroentropy_means_hosted(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="the hosted backend needs a ZeroEntropy API key"):
        resolve_backend(backend="zeroentropy")
    monkeypatch.setenv("ZERANK_BACKEND", "bm25")
    assert resolve_backend().name == "lexical"


def test_a_misspelt_model_gets_a_did_you_mean(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = main([*_inputs(tmp_path), "--model", "bm52"], stdout=out, stderr=err)
    assert code == 2
    line = err.getvalue().strip()
    assert line.startswith("zerank: error: --model 'bm52' is no model this package knows")
    assert "did you mean 'bm25'?" in line
    with pytest.raises(ConfigurationError, match="did you mean 'zerank-2'"):
        resolve_backend(model="zerank2")


def test_a_reset_connection_says_what_happened(fake_server: FakeRerankServer) -> None:
    fake_server.faults.extend(["reset"] * 3)
    scorer = RerankServerScorer(f"{fake_server.url}/v1/rerank", max_retries=0)
    with scorer, pytest.raises(BackendError) as failed:
        scorer.score("q", ["a", "b"])
    message = str(failed.value)
    assert message.startswith("batch 0 (2 texts): the request failed (")
    assert ": )" not in message


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (httpx.ReadError(""), "ReadError: the connection was closed or reset while reading"),
        (httpx.WriteError(""), "WriteError: the connection was closed or reset while sending"),
        (httpx.ReadTimeout(""), "ReadTimeout: no reason given"),
    ],
)
def test_an_http_error_without_a_message_gets_one(error: httpx.HTTPError, reason: str) -> None:
    # httpx raises these with an empty message when a connection is reset.
    typed = as_backend_error(error, batch=3, batch_size=7)
    assert typed is not None
    assert reason in str(typed)
    assert str(typed).startswith("batch 3 (7 texts): the request")


# --------------------------------------------------------------------------- documents


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.pdf", b"", "is empty (0 bytes): there is nothing to read"),
        ("empty.txt", b"", "is empty (0 bytes): there is nothing to read"),
        ("blank.txt", b"  \n\f \n", "all empty: whitespace only"),
        (
            "latin.txt",
            "Résumé: café crème, dûment signé\n".encode("latin-1"),
            "is not UTF-8 text (invalid continuation byte at byte 1); it reads as "
            "Windows-1252 / Latin-1 text: convert it with iconv -f cp1252 -t utf-8",
        ),
        (
            "letter.docx",
            b"\x14\x06 a small binary file without NUL bytes",
            "is a Word document (.docx), which is not supported: the formats read are .pdf, "
            "UTF-8 text",
        ),
        ("letter.txt", b"PK\x03\x04\x14\x06rest", "is a ZIP container (.docx, .xlsx"),
        ("blob.txt", bytes(range(1, 9)) * 20, "holds control characters that text does not"),
    ],
)
def test_a_document_that_cannot_be_read_says_why(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    document = tmp_path / name
    document.write_bytes(content)
    criteria = tmp_path / "criteria.txt"
    criteria.write_text("renewal deadline\n", encoding="utf-8")
    out, err = io.StringIO(), io.StringIO()
    code = main(
        ["compress", str(document), "-c", str(criteria), "--no-cache"], stdout=out, stderr=err
    )
    assert code == 2
    line = err.getvalue().strip().splitlines()[-1]
    assert line.startswith("zerank: error: ")
    assert message in line
    assert "OCR" not in line
    assert out.getvalue() == ""
