"""Clients are closed, and nothing scored is lost when a run dies.

Connections are counted by the local server (TCP connections it holds open),
so these tests see what a real server would see.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import zeroentropy

from tests.fake_servers import FakeRerankServer, reference_probability
from zerank_core.cache import CachedScorer
from zerank_core.criteria import Criterion
from zerank_core.gate import PageGate
from zerank_core.loaders import Document
from zerank_core.scorers import RerankServerScorer, ZeroEntropyScorer
from zerank_core.scorers.base import BatchedScorer

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["MRI of the spine", "prior authorization", "lunch"]


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def make(kind: str, server: FakeRerankServer, **options: object) -> BatchedScorer:
    if kind == "server":
        return RerankServerScorer(f"{server.url}/v1/rerank", **options)  # type: ignore[arg-type]
    return ZeroEntropyScorer(api_key="k", base_url=f"{server.url}/v1", **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["server", "hosted"])
def test_with_block_closes_the_sync_client(fake_server: FakeRerankServer, kind: str) -> None:
    with make(kind, fake_server) as scorer:
        scorer.score("MRI", TEXTS)
        assert fake_server.open_connections >= 1
    assert wait_until(lambda: fake_server.open_connections == 0)
    # A closed scorer opens a new client when used again.
    assert scorer.score("MRI", TEXTS) == [reference_probability("MRI", t) for t in TEXTS]
    scorer.close()
    assert wait_until(lambda: fake_server.open_connections == 0)


@pytest.mark.parametrize("kind", ["server", "hosted"])
async def test_async_with_block_closes_this_loops_client(
    fake_server: FakeRerankServer, kind: str
) -> None:
    async with make(kind, fake_server) as scorer:
        await scorer.ascore("MRI", TEXTS)
        assert fake_server.open_connections >= 1
    assert await asyncio.to_thread(wait_until, lambda: fake_server.open_connections == 0)


@pytest.mark.parametrize("kind", ["server", "hosted"])
def test_per_loop_clients_close_when_their_loop_shuts_down(
    fake_server: FakeRerankServer, kind: str
) -> None:
    scorer = make(kind, fake_server)
    first = asyncio.run(scorer.ascore("MRI", TEXTS))
    assert wait_until(lambda: fake_server.open_connections == 0)
    assert asyncio.run(scorer.ascore("MRI", TEXTS)) == first
    assert wait_until(lambda: fake_server.open_connections == 0)


@pytest.mark.parametrize("kind", ["server", "hosted"])
def test_sync_close_reaches_an_async_client_of_a_live_loop(
    fake_server: FakeRerankServer, kind: str
) -> None:
    scorer = make(kind, fake_server)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(scorer.ascore("MRI", TEXTS))
        assert fake_server.open_connections >= 1
        scorer.close()  # the loop is idle, not closed: its client is closed in it
        assert wait_until(lambda: fake_server.open_connections == 0)
    finally:
        loop.close()


def test_clients_passed_in_are_left_open(fake_server: FakeRerankServer) -> None:
    client = zeroentropy.ZeroEntropy(api_key="k", base_url=f"{fake_server.url}/v1")
    with ZeroEntropyScorer(client=client) as scorer:
        scorer.score("MRI", TEXTS)
    assert not client.is_closed()
    client.close()


def test_page_gate_does_not_close_the_scorer_it_was_given(fake_server: FakeRerankServer) -> None:
    scorer = RerankServerScorer(f"{fake_server.url}/v1/rerank")
    PageGate(scorer).run(Document.from_texts(TEXTS), [Criterion("A", "MRI")])
    assert fake_server.open_connections >= 1  # still pooled: the caller owns it
    scorer.close()
    assert wait_until(lambda: fake_server.open_connections == 0)


# --------------------------------------------------------------------------- nothing lost


def test_a_failed_job_keeps_every_completed_request_in_the_cache(
    fake_server: FakeRerankServer, tmp_path: Path
) -> None:
    scorer = RerankServerScorer(
        f"{fake_server.url}/v1/rerank", max_batch_size=16, max_concurrency=1, max_retries=0
    )
    cached = CachedScorer(scorer, tmp_path / "scores.sqlite3")
    pages = [f"page {i} MRI" if i % 3 else f"page {i}" for i in range(32)]
    criteria = [Criterion(f"C{i}", f"MRI {i}") for i in range(4)]
    fake_server.faults.extend([None, None, None, "wrong_shape"])  # the 4th request fails
    with pytest.raises(Exception, match="unexpected body shape"):
        PageGate(cached).run(Document.from_texts(pages), criteria)
    # The failed request did not stop the other four: all seven others are kept.
    assert cached.info().entries == 7 * 16
    sent_before = len(fake_server.requests)
    result = PageGate(cached).run(Document.from_texts(pages), criteria)
    resent = fake_server.requests[sent_before:]
    assert sum(len(r.body["documents"]) for r in resent) == 16
    for item in result.results:
        assert list(item.scores.values()) == [
            reference_probability(item.criterion.text, p) for p in pages
        ]
    cached.close()


def _cli(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "zerank_core.cli", *args]


def test_a_killed_run_resumes_from_the_cache(tmp_path: Path) -> None:
    """SIGKILL a CLI run midway; the rerun sends only what the first did not store."""
    server = FakeRerankServer(latency_s=0.15, slots=2)
    try:
        pages = [f"page {i} about {'MRI' if i % 2 else 'billing'} {i % 7}" for i in range(40)]
        (tmp_path / "doc.json").write_text(json.dumps(pages))
        (tmp_path / "criteria.txt").write_text(
            "\n".join(f"MRI criterion {i}" for i in range(20)) + "\n"
        )
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("ZERANK_BACKEND", None)
        args = [
            "compress",
            str(tmp_path / "doc.json"),
            "-c",
            str(tmp_path / "criteria.txt"),
            "--server-url",
            f"{server.url}/v1/rerank",
            "--cache",
            str(tmp_path / "scores.sqlite3"),
            "-o",
            str(tmp_path / "out.json"),
        ]
        first = subprocess.Popen(
            _cli(args), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            assert wait_until(lambda: server.served >= 8, timeout=60)
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait()
        total = 40 * 20
        with CachedScorer(
            RerankServerScorer(f"{server.url}/v1/rerank"), tmp_path / "scores.sqlite3"
        ) as cache:
            stored = cache.info().entries
        assert 0 < stored < total
        sent_before = len(server.requests)
        done = subprocess.run(_cli(args), env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        resent = server.requests[sent_before:]
        assert sum(len(r.body["documents"]) for r in resent) == total - stored
        result = json.loads((tmp_path / "out.json").read_text())
        assert result["report"]["cache_hits"] == stored
        assert result["report"]["cache_misses"] == total - stored
    finally:
        server.close()


def test_httpx_is_what_the_server_scorer_uses() -> None:
    # The lifecycle tests above count server-side connections; this pins the
    # client type they exercise, so a change of HTTP stack revisits them.
    scorer = RerankServerScorer("http://localhost:1/rerank")
    assert isinstance(scorer.client, httpx.Client)
    scorer.close()


def test_adapters_close_the_scorer_they_built_and_only_that(
    fake_server: FakeRerankServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from langchain_core.documents import Document as LCDocument

    from langchain_zerank import ZeRankCompressor
    from llamaindex_zerank import ZeRankPostprocessor

    monkeypatch.setenv("ZEROENTROPY_BASE_URL", f"{fake_server.url}/v1")
    compressor = ZeRankCompressor(api_key="ze-test-key")
    compressor.compress_documents([LCDocument(page_content=t) for t in TEXTS], "MRI")
    postprocessor = ZeRankPostprocessor(api_key="ze-test-key", base_url=f"{fake_server.url}/v1")
    postprocessor.scorer.score("MRI", TEXTS)
    assert fake_server.open_connections == 2
    compressor.close()
    postprocessor.close()
    assert wait_until(lambda: fake_server.open_connections == 0)

    mine = RerankServerScorer(f"{fake_server.url}/v1/rerank")
    given = ZeRankPostprocessor(scorer=mine)
    given.scorer.score("MRI", TEXTS)
    given.close()
    assert fake_server.open_connections == 1  # the caller's scorer stays open
    mine.close()
    assert wait_until(lambda: fake_server.open_connections == 0)
