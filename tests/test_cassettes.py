"""Recorded HTTP exchanges (vcrpy via pytest-recording) for the HTTP backends.

``test_replay_*`` replays ``tests/cassettes/test_cassettes/<name>.yaml`` with no
network. ``test_live_*`` (marker ``live``) re-records the same cassette against
a real endpoint; it runs only with ``ZERANK_LIVE=1`` and the endpoint's
variables (``ZEROENTROPY_API_KEY`` and optionally ``ZEROENTROPY_BASE_URL``;
``ZERANK_SERVER_URL`` and ``ZERANK_SERVER_SCALE``)::

    ZERANK_LIVE=1 ZEROENTROPY_API_KEY=... pytest -m live tests/test_cassettes.py

The committed cassettes were recorded from the local reference server in
``tests/fake_servers.py`` (its scores are keyword overlap, not zerank's).
Authorization headers are replaced before anything is written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from zerank_core.redaction import install_log_filter, redact_url
from zerank_core.scorers import RerankServerScorer, ZeroEntropyScorer

QUERY = "Which clause covers termination for convenience?"
TEXTS = [
    "Either party may terminate this Agreement for convenience on 30 days notice.",
    "This Agreement is governed by the laws of the State of Delaware.",
    "Termination for cause requires written notice of the breach.",
]
CASSETTES = Path(__file__).parent / "cassettes" / "test_cassettes"
REDACTED = "REDACTED"


def cassette_config() -> dict[str, Any]:
    """How cassettes are recorded: credential headers replaced, URLs without credentials."""
    # vcrpy logs each request's URL at DEBUG while recording.
    install_log_filter("vcr.request", "vcr.stubs.httpx_stubs", "vcr.cassette")
    return {
        "filter_headers": [("authorization", REDACTED), ("x-api-key", REDACTED)],
        "before_record_request": _without_url_credentials,
        # Hosts differ between the recording endpoint and replay: match the rest.
        "match_on": ["method", "path", "body"],
        "decode_compressed_response": True,
    }


def _without_url_credentials(request: Any) -> Any:
    request.uri = redact_url(request.uri)
    return request


@pytest.fixture(scope="module")
def vcr_config() -> dict[str, Any]:
    return cassette_config()


@pytest.fixture
def default_cassette_name(request: pytest.FixtureRequest) -> str:
    name: str = request.node.name
    return name.removeprefix("test_live_").removeprefix("test_replay_")


def _check_hosted(scorer: ZeroEntropyScorer) -> list[float]:
    scores = scorer.score(QUERY, TEXTS)
    assert len(scores) == 3
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert scores[0] > scores[1]
    assert scorer.usage.total_tokens
    return scores


@pytest.mark.vcr
def test_replay_hosted_rerank() -> None:
    scorer = ZeroEntropyScorer(api_key="replay-key", base_url="https://api.zeroentropy.dev/v1")
    _check_hosted(scorer)


@pytest.mark.live
@pytest.mark.vcr(record_mode="all")
def test_live_hosted_rerank() -> None:
    _check_hosted(ZeroEntropyScorer())


def _check_server(scorer: RerankServerScorer) -> None:
    scores = scorer.score(QUERY, TEXTS)
    assert len(scores) == 3
    assert scores[0] > scores[1]


@pytest.mark.vcr
def test_replay_server_rerank() -> None:
    _check_server(RerankServerScorer("http://rerank.invalid:8000/v1/rerank", scale="logit"))


@pytest.mark.live
@pytest.mark.vcr(record_mode="all")
def test_live_server_rerank() -> None:
    _check_server(RerankServerScorer(os.environ.get("ZERANK_SERVER_URL")))


def test_cassettes_hold_no_credentials() -> None:
    files = sorted(CASSETTES.glob("*.yaml"))
    assert files, "cassettes are missing"
    for path in files:
        text = path.read_text()
        assert "Bearer" not in text, path
        assert REDACTED in text, path
