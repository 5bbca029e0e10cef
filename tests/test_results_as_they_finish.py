"""``zerank compress -o DIR`` writes each document as it finishes; a killed run resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.cli_run import call
from tests.fake_servers import FakeRerankServer
from zerank_core.cli._progress import PROGRESS_FILE, ResultFolder, write_atomic
from zerank_core.criteria import Criterion
from zerank_core.gate import PageGate
from zerank_core.loaders import Document
from zerank_core.scorers.lexical import BM25Scorer

ROOT = Path(__file__).resolve().parent.parent
PACKETS = {
    "alpha": ["The renewal deadline is March 1.", "Lunch menu and parking.", ""],
    "beta": ["Invoices are paid by the buyer within 30 days.", "Renewal is automatic."],
    "gamma": ["Nothing relevant here.", "The supplier pays shipping invoices.", "Renewal: May."],
    "delta": ["The buyer pays.", "Parking rules.", "Renewal deadline is June 2."],
}


def inputs(tmp_path: Path) -> tuple[list[str], Path]:
    paths = []
    for name, pages in PACKETS.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(pages), encoding="utf-8")
        paths.append(str(path))
    criteria = tmp_path / "criteria.txt"
    criteria.write_text("When is the renewal deadline?\nWho pays the invoice?\n", encoding="utf-8")
    return paths, criteria


def arguments(paths: list[str], criteria: Path, server: FakeRerankServer, cache: Path) -> list[str]:
    # One document at a time, one request at a time: two requests per document.
    return [
        "compress", *paths, "-c", str(criteria), "--server-url", f"{server.url}/v1/rerank",
        "--cache", str(cache), "--documents-per-batch", "1", "--max-concurrency", "1",
    ]  # fmt: skip


def wait_for(condition: object, what: str, limit_s: float = 240.0) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def test_a_driver_killed_mid_run_leaves_whole_files_and_a_rerun_finishes_the_rest(
    tmp_path: Path,
) -> None:
    paths, criteria = inputs(tmp_path)
    results, cache = tmp_path / "results", tmp_path / "scores.sqlite3"
    # alpha and beta (4 requests) and gamma's first criterion are answered; then the
    # server holds the next request until the driver has been killed.
    server = FakeRerankServer(block_after=5)
    try:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        }
        driver = subprocess.Popen(
            [sys.executable, "-m", "zerank_core.cli", *arguments(paths, criteria, server, cache),
             "-o", str(results)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            wait_for(lambda: server.blocked or driver.poll() is not None, "the held request")
            assert driver.poll() is None, driver.stderr.read().decode() if driver.stderr else ""
            driver.send_signal(signal.SIGKILL)
        finally:
            driver.wait()
            if driver.stderr:
                driver.stderr.close()
        assert driver.returncode == -signal.SIGKILL

        # Whole files of the documents that were done, nothing else.
        assert sorted(p.name for p in results.iterdir()) == [
            PROGRESS_FILE,
            "alpha.json",
            "beta.json",
        ]
        for name in ("alpha", "beta"):
            data = json.loads((results / f"{name}.json").read_text(encoding="utf-8"))
            assert data["document"]["source"].endswith(f"{name}.json")
        lines = (results / PROGRESS_FILE).read_text(encoding="utf-8").splitlines()
        assert [json.loads(line)["file"] for line in lines] == ["alpha.json", "beta.json"]

        server.block_after = None  # the killed driver's request stays held until close
        server.reset_stats()
        code, _, err = call(*arguments(paths, criteria, server, cache), "-o", str(results))
        assert code == 0, err
        assert f"resume: 2 of 4 documents already done in {results}/" in err
        # gamma's first criterion came from the cache: three requests, not four.
        assert server.served == 3, err
        assert f"cache: {cache} — 3 hits, 9 misses" in err
        summary = json.loads((results / "summary.json").read_text(encoding="utf-8"))
        assert summary["resumed"] == 2
        assert sorted(summary["files"].values()) == [
            "alpha.json",
            "beta.json",
            "delta.json",
            "gamma.json",
        ]

        # The same as one uninterrupted run.
        whole = tmp_path / "whole"
        code, _, err = call(*arguments(paths, criteria, server, cache), "-o", str(whole))
        assert code == 0, err
        for name in PACKETS:
            got = json.loads((results / f"{name}.json").read_text(encoding="utf-8"))
            want = json.loads((whole / f"{name}.json").read_text(encoding="utf-8"))
            for key in ("document", "policy", "results", "duplicates"):
                assert got[key] == want[key]

        # Another policy is another job: nothing is skipped.
        code, _, err = call(
            *arguments(paths, criteria, server, cache), "-o", str(results), "--top-k", "1"
        )
        assert code == 0, err
        assert "resume:" not in err
        code, _, err = call(
            *arguments(paths, criteria, server, cache), "-o", str(whole), "--restart"
        )
        assert code == 0, err
        assert "resume:" not in err
    finally:
        server.close()


def test_a_changed_file_or_a_cut_line_is_not_taken_as_done(tmp_path: Path) -> None:
    sources = ["a.pdf", "b.pdf", "c.pdf"]
    folder = ResultFolder(tmp_path, sources, "job-1")
    assert folder.done == set()
    for index in range(3):
        document = Document.from_texts(["alpha beta", "gamma"], source=sources[index])
        folder.write(index, PageGate(BM25Scorer()).run(document, [Criterion("A", "alpha")]))
    (tmp_path / "b.json").write_text("{}", encoding="utf-8")  # changed since
    with (tmp_path / PROGRESS_FILE).open("a", encoding="utf-8") as log:
        log.write('{"file": "c.json", "doc')  # cut short by a crash
    (tmp_path / ".a.json.x1.partial").write_text("{", encoding="utf-8")
    again = ResultFolder(tmp_path, sources, "job-1")
    assert again.done == {0, 2}
    assert not list(tmp_path.glob("*.partial"))  # a killed write's leftovers are removed
    assert ResultFolder(tmp_path, sources, "job-2").done == set()
    write_atomic(tmp_path / "x.json", "whole")
    assert (tmp_path / "x.json").read_text(encoding="utf-8") == "whole"
