"""Shared fixtures: a local rerank server, and the ``live`` marker's gate."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.fake_servers import FakeRerankServer

LIVE_ENV = "ZERANK_LIVE"


@pytest.fixture
def fake_server() -> Iterator[FakeRerankServer]:
    server = FakeRerankServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never pick up a developer's real keys or servers by accident."""
    if os.environ.get(LIVE_ENV):
        return
    for name in (
        "ZEROENTROPY_API_KEY",
        "ZEROENTROPY_BASE_URL",
        "ZERANK_SERVER_URL",
        "ZERANK_SERVER_SCALE",
        "ZERANK_SERVER_API_KEY",
        "ZERANK_SERVER_MODEL",
        "ZERANK_BACKEND",
        "ZERANK_LOCAL_MODEL",
        "ZERANK_CACHE",
        "ZERANK_REQUESTS_PER_MINUTE",
        "ZERANK_BYTES_PER_MINUTE",
        "ZERANK_TOKENS_PER_MINUTE",
        "ZERANK_MAX_CONCURRENCY",
    ):
        monkeypatch.delenv(name, raising=False)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(LIVE_ENV):
        return
    skip = pytest.mark.skip(reason=f"live test: set {LIVE_ENV}=1 and the endpoint's variables")
    for item in items:
        if "live" in item.keywords:
            item.add_marker(skip)
