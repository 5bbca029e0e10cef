"""HTTPS to a rerank server: certificates are verified, and one TLS context serves every client.

The server is the local fake with a certificate from a throwaway CA
(``trustme``); ``SSL_CERT_FILE`` names that CA, as it would a company's own.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.fake_servers import FakeRerankServer, reference_probability
from zerank_core.errors import BackendError
from zerank_core.scorers import RerankServerScorer, ZeroEntropyScorer
from zerank_core.scorers.base import BatchedScorer
from zerank_core.scorers.tls import shared_ssl_context

TEXTS = ["MRI of the spine", "prior authorization", "lunch"]
EXPECTED = [reference_probability("MRI", t) for t in TEXTS]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def https_server(ca: trustme.CA) -> Iterator[FakeRerankServer]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    server = FakeRerankServer(ssl_context=context)
    yield server
    server.close()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    monkeypatch.setenv("SSL_CERT_FILE", str(path))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    return path


def make(kind: str, server: FakeRerankServer) -> BatchedScorer:
    if kind == "server":
        return RerankServerScorer(f"{server.url}/v1/rerank", max_retries=0)
    return ZeroEntropyScorer(api_key="k", base_url=f"{server.url}/v1", max_retries=0)


@pytest.mark.parametrize("kind", ["server", "hosted"])
def test_https_server_signed_by_the_ca_in_ssl_cert_file(
    https_server: FakeRerankServer, ca_file: Path, kind: str
) -> None:
    assert https_server.url.startswith("https://")
    with make(kind, https_server) as scorer:
        assert scorer.score("MRI", TEXTS) == EXPECTED
        # Each asyncio.run is a new loop and a new async client; all verify.
        for _ in range(2):
            assert asyncio.run(scorer.ascore("MRI", TEXTS)) == EXPECTED


@pytest.mark.parametrize("kind", ["server", "hosted"])
def test_an_untrusted_certificate_is_refused(
    https_server: FakeRerankServer, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    with make(kind, https_server) as scorer, pytest.raises(BackendError) as raised:
        scorer.score("MRI", TEXTS)
    assert any(isinstance(e, ssl.SSLCertVerificationError) for e in _chain(raised.value))
    assert https_server.served == 0


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def test_one_context_per_process_until_the_ca_settings_change(
    ca_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = shared_ssl_context()
    assert shared_ssl_context() is first
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file.with_name("other.pem")))
    ca_file.with_name("other.pem").write_bytes(ca_file.read_bytes())
    assert shared_ssl_context() is not first
