"""Limits from flags and the environment; the job limiter's places and restarts (no Ray)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.cli_run import call
from tests.fake_servers import FakeRerankServer
from zerank_core.errors import ConfigurationError
from zerank_core.limits import JobLimiter, limits_from_env
from zerank_core.scorers.auto import resolve_backend
from zerank_core.scorers.server import RerankServerScorer

DECLARED = (600.0, None, None, 2)


def test_limits_come_from_the_environment_and_bad_values_name_the_variable() -> None:
    env = {"ZERANK_REQUESTS_PER_MINUTE": "600", "ZERANK_MAX_CONCURRENCY": " 3 "}
    assert limits_from_env(env) == {"requests_per_minute": 600.0, "max_concurrency": 3}
    assert limits_from_env({}) == {}
    with pytest.raises(ConfigurationError, match="ZERANK_MAX_CONCURRENCY must be an integer"):
        limits_from_env({"ZERANK_MAX_CONCURRENCY": "2.5"})
    with pytest.raises(ConfigurationError, match=r"ZERANK_BYTES_PER_MINUTE must be a number > 0"):
        limits_from_env({"ZERANK_BYTES_PER_MINUTE": "-1"})


def test_explicit_limits_win_over_the_environment_and_reach_the_scorer() -> None:
    env = {
        "ZERANK_SERVER_URL": "http://localhost:9/v1/rerank",
        "ZERANK_REQUESTS_PER_MINUTE": "600",
        "ZERANK_TOKENS_PER_MINUTE": "1e6",
        "ZERANK_MAX_CONCURRENCY": "3",
    }
    scorer = resolve_backend(requests_per_minute=120, environ=env).scorer
    assert isinstance(scorer, RerankServerScorer)
    assert scorer.limits.requests_per_minute == 120
    assert scorer.limits.tokens_per_minute == 1e6
    assert scorer.max_concurrency == 3
    # In-process backends send no requests: the limits have no effect there.
    lexical = resolve_backend(backend="lexical", environ=env).scorer
    assert lexical.model == "bm25"
    with pytest.raises(ConfigurationError, match="ZERANK_MAX_CONCURRENCY must be an integer"):
        resolve_backend(environ={**env, "ZERANK_MAX_CONCURRENCY": "0"})


def _document(tmp_path: Path) -> tuple[Path, Path]:
    pages = tmp_path / "pages.json"
    pages.write_text(
        '["The renewal deadline is March 1.", "Invoices are paid by the buyer.", '
        '"Lunch menu.", "Parking is free.", "Renewal is automatic.", "Nothing here."]',
        encoding="utf-8",
    )
    criteria = tmp_path / "criteria.txt"
    criteria.write_text("When is the renewal deadline?\nWho pays?\n", encoding="utf-8")
    return pages, criteria


def test_the_command_line_sets_limits_by_flag_and_by_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pages, criteria = _document(tmp_path)
    server = FakeRerankServer(latency_s=0.02)
    try:
        common = [
            "compress", str(pages), "-c", str(criteria), "--server-url", f"{server.url}/v1/rerank",
            "--no-cache", "-o", "-",
        ]  # fmt: skip
        code, _, err = call(*common)
        assert code == 0, err
        # Both criteria may be in flight at once by default; whether they overlap
        # depends on the machine's timing, so only the cap is asserted.
        assert 1 <= server.max_in_flight <= 2

        server.reset_stats()
        code, _, err = call(*common, "--max-concurrency", "1", "--requests-per-minute", "6000")
        assert code == 0, err
        assert server.max_in_flight == 1

        server.reset_stats()
        monkeypatch.setenv("ZERANK_MAX_CONCURRENCY", "1")
        code, _, err = call(*common)
        assert code == 0, err
        assert server.max_in_flight == 1
    finally:
        server.close()

    with pytest.raises(SystemExit) as refused:
        call("compress", str(pages), "-c", str(criteria), "--requests-per-minute", "0")
    assert refused.value.code == 2
    assert "--requests-per-minute: must be a number > 0, got 0" in capsys.readouterr().err


def test_the_job_limiter_hands_places_over_and_back_on_restarts() -> None:
    async def scenario() -> None:
        limiter = JobLimiter()
        await limiter.acquire("a", DECLARED)
        await limiter.acquire("a", DECLARED)
        waiting = asyncio.ensure_future(limiter.acquire("b", DECLARED))
        await asyncio.sleep(0)
        assert not waiting.done()  # both places are held by actor a
        await limiter.release("b")  # b holds none: nothing is freed
        await asyncio.sleep(0)
        assert not waiting.done()
        # Actor a restarts: its new life hands back what the old one held.
        assert await limiter.forget("a") == 2
        await waiting
        report = await limiter.report()
        assert report["requests"] == 3
        assert report["peak_in_flight"] == 2
        with pytest.raises(ConfigurationError, match="declared different limits"):
            await limiter.acquire("c", (60.0, None, None, 2))
        assert await limiter.reserve(DECLARED, 100, 25) == 0.0
        assert await limiter.reserve(DECLARED, 100, 25) > 0.0  # 600/min: one each 0.105 s

    asyncio.run(scenario())
