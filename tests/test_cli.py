"""The ``zerank`` command, end to end in subprocesses and in-process through ``main``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.cli_run import call
from tests.extras import needs_matplotlib
from tests.fake_servers import FakeRerankServer
from zerank_core.cli import main

ROOT = Path(__file__).resolve().parent.parent
PACKET = ROOT / "cookbook" / "prior_auth" / "packet.txt"
CRITERIA = ROOT / "cookbook" / "prior_auth" / "criteria.yaml"
ISOLATED = (
    "ZEROENTROPY_API_KEY",
    "ZEROENTROPY_BASE_URL",
    "ZERANK_SERVER_URL",
    "ZERANK_BACKEND",
    "ZERANK_LOCAL_MODEL",
    "ZERANK_CACHE",
)


def zerank_command() -> list[str]:
    script = Path(sys.executable).parent / "zerank"
    if script.exists():
        return [str(script)]
    found = shutil.which("zerank")
    return [found] if found else [sys.executable, "-m", "zerank_core.cli"]


def run_zerank(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ISOLATED}
    return subprocess.run(
        [*zerank_command(), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def without_cache_fields(data: dict[str, Any]) -> dict[str, Any]:
    report = dict(data["report"])
    for key in ("cache_hits", "cache_misses", "usage"):
        report.pop(key)
    return {**data, "report": report, "timings": None}


def test_compress_bundled_packet_end_to_end_offline(tmp_path: Path) -> None:
    cache = tmp_path / "scores.sqlite3"
    first = run_zerank("compress", str(PACKET), "--criteria", str(CRITERIA), "--cache", str(cache))
    assert first.returncode == 0, first.stderr
    assert first.stderr.startswith("backend: lexical — BM25")
    assert "%|" not in first.stderr  # no progress bar when stderr is not a terminal
    data = json.loads(first.stdout)
    assert data["backend"]["name"] == "lexical"
    assert data["scale"] == "uncalibrated"
    assert data["report"]["pages"] == 41
    assert data["report"]["empty_pages"] == [24]
    assert data["report"]["cache_misses"] == 40 * 10
    ids = [c["criterion"]["id"] for c in data["results"]]
    assert ids == list(data["report"]["pages_kept"])
    assert "PRESCRIBER" in first.stderr
    assert "kept " in first.stderr
    for criterion in data["results"]:
        assert criterion["pages"] == sorted(criterion["pages"])
        assert 1 <= len(criterion["pages"]) <= 3
        assert criterion["context"].startswith(f"[page {criterion['pages'][0]}]")

    second = run_zerank("compress", str(PACKET), "--criteria", str(CRITERIA), "--cache", str(cache))
    assert second.returncode == 0, second.stderr
    again = json.loads(second.stdout)
    assert (again["report"]["cache_hits"], again["report"]["cache_misses"]) == (400, 0)
    assert again["report"]["usage"]["requests"] == 0
    assert "400 hits, 0 misses" in second.stderr
    assert without_cache_fields(again) == without_cache_fields(data)


@needs_matplotlib
def test_compress_against_a_server_with_heatmap_and_output_file(
    tmp_path: Path, fake_server: FakeRerankServer
) -> None:
    out = tmp_path / "result.json"
    heatmap = tmp_path / "heatmap.png"
    result = run_zerank(
        "compress",
        str(PACKET),
        "--criteria",
        str(CRITERIA),
        "--server-url",
        f"{fake_server.url}/v1/rerank",
        "--no-cache",
        "--top-k",
        "2",
        "--neighbors",
        "1",
        "--threshold",
        "0.4",
        "--price-per-million-tokens",
        "25",
        "-o",
        str(out),
        "--heatmap",
        str(heatmap),
        "--no-context",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert f"backend: server — rerank server {fake_server.url}/v1/rerank" in result.stderr
    assert "cache: off" in result.stderr
    assert heatmap.read_bytes()[:4] == b"\x89PNG"
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["scale"] == "probability"
    assert data["policy"]["top_k"] == 2
    assert data["policy"]["neighbors"] == 1
    usage = data["report"]["usage"]
    assert usage["requests"] == len(fake_server.requests) > 0
    assert usage["total_tokens"] > 0
    assert data["report"]["estimated_cost_usd"] == pytest.approx(
        usage["total_tokens"] * 25 / 1_000_000
    )
    assert all(c["context"] is None for c in data["results"])
    assert all(p["text"] is None for p in data["document"]["pages"])
    for criterion in data["results"]:
        assert set(criterion["evidence_pages"]) <= set(criterion["pages"])
        assert len(criterion["evidence_pages"]) <= 2


def test_criterion_without_evidence_is_reported(
    tmp_path: Path, fake_server: FakeRerankServer
) -> None:
    criteria = tmp_path / "criteria.txt"
    criteria.write_text(
        "QuantiFERON TB Gold Plus negative\nzoledronic infusion xylophone\n", encoding="utf-8"
    )
    code, out, err = call(
        "compress",
        str(PACKET),
        "-c",
        str(criteria),
        "--server-url",
        f"{fake_server.url}/v1/rerank",
        "--no-cache",
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["report"]["no_evidence"] == ["C2"]
    assert data["results"][1]["pages"] == []
    assert "no evidence (no page above the floor): C2" in err


def test_cache_info_and_clear(tmp_path: Path) -> None:
    cache = tmp_path / "scores.sqlite3"
    code, _, err = call("cache", "info", "--cache", str(cache))
    assert (code, err.strip()) == (0, f"no score cache at {cache}")
    texts = tmp_path / "texts.txt"
    texts.write_text("tuberculosis test negative\nmethotrexate weekly\n", encoding="utf-8")
    labels = tmp_path / "labels.yaml"
    labels.write_text("tb: tuberculosis test\nmtx: methotrexate dose\n", encoding="utf-8")
    assert call("classify", str(texts), "-l", str(labels), "--cache", str(cache))[0] == 0
    code, _, err = call("cache", "info", "--cache", str(cache))
    assert code == 0
    assert f"{cache}: 4 scores" in err
    code, _, err = call("cache", "clear", "--cache", str(cache))
    assert (code, err.strip()) == (0, f"cleared 4 scores from {cache}")
    assert "0 scores" in call("cache", "info", "--cache", str(cache))[2]


def test_cache_location_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZERANK_CACHE", str(tmp_path / "env.sqlite3"))
    texts = tmp_path / "texts.json"
    texts.write_text(json.dumps(["a tuberculosis test"]), encoding="utf-8")
    labels = tmp_path / "labels.txt"
    labels.write_text("tb: tuberculosis\n", encoding="utf-8")
    code, _, err = call("classify", str(texts), "--labels", str(labels))
    assert code == 0, err
    assert (tmp_path / "env.sqlite3").exists()
    assert f"cache: {tmp_path / 'env.sqlite3'} — 0 hits, 1 misses" in err


def test_classify_with_a_server(tmp_path: Path, fake_server: FakeRerankServer) -> None:
    texts = tmp_path / "texts.txt"
    texts.write_text(
        "my invoice shows a double charge\nthe app crashes when I log in\n", encoding="utf-8"
    )
    labels = tmp_path / "labels.yaml"
    labels.write_text(
        "billing: invoice charge refund\nbug: app crashes error\nother: something else\n",
        encoding="utf-8",
    )
    code, out, err = call(
        "classify",
        str(texts),
        "--labels",
        str(labels),
        "--server-url",
        f"{fake_server.url}/v1/rerank",
        "--no-cache",
        "--threshold",
        "0.3",
        "--default",
        "other",
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["backend"]["name"] == "server"
    assert [r["label"] for r in data["results"]] == ["billing", "bug"]
    assert set(data["results"][0]["probabilities"]) == {"billing", "bug", "other"}
    # One request per label (M calls for N texts), not one per text.
    assert len(fake_server.requests) == 3


def test_help_is_usable() -> None:
    result = run_zerank("--help")
    assert result.returncode == 0
    for word in ("compress", "classify", "cache", "ZEROENTROPY_API_KEY", "ZERANK_SERVER_URL"):
        assert word in result.stdout
    compress_help = run_zerank("compress", "--help").stdout
    for word in ("--criteria", "--threshold", "--top-k", "--heatmap", "form-feed", "BM25"):
        assert word in compress_help


def test_corrupt_pdf_exits_with_a_clear_error(tmp_path: Path) -> None:
    broken = tmp_path / "scan.pdf"
    broken.write_bytes(b"%PDF-1.7\n garbage")
    result = run_zerank("compress", str(broken), "--criteria", str(CRITERIA), "--no-cache")
    assert result.returncode == 2
    assert "scan.pdf is not a readable PDF" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--backend", "lexical", "--server-url", "http://x"],
            "--server-url does not apply to the lexical backend (chosen by --backend)",
        ),
        (["--backend", "lexical", "--model", "zerank-2"], "--model does not apply"),
        (["--backend", "hosted"], "needs a ZeroEntropy API key: set ZEROENTROPY_API_KEY"),
        (["--backend", "server"], "use --server-url URL or set ZERANK_SERVER_URL"),
        (["--backend", "local", "--server-url", "http://x"], "--server-url does not apply"),
        (["--model", "zerank-2"], "for its open weights in-process, use --model zeroentropy/"),
        (["--device", "cpu"], "needs a model id or folder: use --model MODEL or set"),
    ],
)
def test_backend_flag_errors(args: list[str], message: str) -> None:
    code, out, err = call("compress", str(PACKET), "-c", str(CRITERIA), "--no-cache", *args)
    assert code == 2
    assert out == ""
    assert message in err
    # The command line has no api_key=/url= arguments: errors never tell the user to pass them.
    assert "=..." not in err
    assert "pass " not in err


def test_bad_option_values_are_named(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["compress", str(PACKET), "-c", str(CRITERIA), "--threshold", "1.5"])
    assert exit_info.value.code == 2
    assert "must be in [0, 1], got 1.5" in capsys.readouterr().err


def test_classify_default_need_not_be_a_label_as_in_the_library(tmp_path: Path) -> None:
    texts = tmp_path / "t.txt"
    texts.write_text("nothing in common\n", encoding="utf-8")
    labels = tmp_path / "l.txt"
    labels.write_text("a: alpha\n", encoding="utf-8")
    code, out, _ = call(
        "classify", str(texts), "-l", str(labels), "--default", "other", "--no-cache", "-o", "-"
    )
    assert code == 0
    (row,) = json.loads(out)["results"]
    assert row["label"] == "other"
    assert row["is_default"] is True


def test_classify_help_example_runs_and_warns_on_an_uncalibrated_backend() -> None:
    help_text = " ".join(run_zerank("classify", "--help").stdout.split())
    example = help_text.split("repository): zerank classify ", 1)[1].split()[:5]
    assert example[0] == "cookbook/classify/tickets.txt"

    args = [str(ROOT / a) if a.startswith("cookbook/") else a for a in example]
    code, out, err = call("classify", *args, "--no-cache", "-o", "-")

    assert code == 0, err
    assert "warning: this backend is not calibrated" in err
    assert len(json.loads(out)["results"]) == 4


def test_local_backend_with_a_tiny_model(tmp_path: Path) -> None:
    pytest.importorskip("sentence_transformers")
    from tests.tiny_zerank import build_tiny_zerank

    model = build_tiny_zerank(tmp_path / "tiny")
    packet = tmp_path / "packet.txt"
    packet.write_text("tb test negative\fmethotrexate weekly\f\fchest x-ray clear\f", "utf-8")
    criteria = tmp_path / "criteria.txt"
    criteria.write_text("tb test\nmethotrexate\n", encoding="utf-8")
    code, out, err = call(
        "compress",
        str(packet),
        "-c",
        str(criteria),
        "--backend",
        "local",
        "--model",
        str(model),
        "--threshold",
        "none",
        "--top-k",
        "1",
        "--cache",
        str(tmp_path / "c.sqlite3"),
    )
    assert code == 0, err
    assert err.startswith(f"backend: local — open weights in-process ({model}, cpu)")
    data = json.loads(out)
    assert data["scale"] == "probability"
    assert data["report"]["empty_pages"] == [3]
    assert [len(c["pages"]) for c in data["results"]] == [1, 1]
    row = data["results"][0]["scores"]
    assert "3" not in row
    assert all(0.0 < v < 1.0 for v in row.values())


def test_credentials_in_a_server_url_are_never_printed(
    tmp_path: Path, fake_server: FakeRerankServer
) -> None:
    host = fake_server.url.removeprefix("http://")
    texts = tmp_path / "t.txt"
    texts.write_text("a tuberculosis test\n", encoding="utf-8")
    labels = tmp_path / "l.txt"
    labels.write_text("tb: tuberculosis\n", encoding="utf-8")
    code, out, err = call(
        "classify",
        str(texts),
        "-l",
        str(labels),
        "--server-url",
        f"http://reviewer:hunter2-token@{host}/v1/rerank",
        "--no-cache",
    )
    assert code == 0, err
    assert "hunter2-token" not in err + out
    assert f"http://***@{host}/v1/rerank" in err
