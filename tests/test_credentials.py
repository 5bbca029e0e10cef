"""One credential per request: URL userinfo, API keys and ``Authorization`` headers.

httpx turns a URL's userinfo (``https://user:pw@host/``) into HTTP Basic auth
that replaces any ``Authorization`` header the client was given, so a URL
with userinfo next to an API key would silently send the URL's credential
instead of the key. These tests pin that behaviour of the real httpx and the
real SDK against the local fake server, then check that the scorers refuse
two credentials at construction (with one message naming where each came
from, never its value), that userinfo alone still authenticates with Basic
auth, and that the refusal reaches the resolver, the command line, the
LangChain and LlamaIndex components and the pickling path as the same error.
"""

from __future__ import annotations

import asyncio
import base64
import io
import pickle
from pathlib import Path

import httpx
import pytest

from tests.fake_servers import FakeRerankServer
from zerank_core.cli import main
from zerank_core.errors import ConfigurationError
from zerank_core.scorers import RerankServerScorer, ZeroEntropyScorer, resolve_backend

KEY = "sk-test-key-4f1e9a"
PASSWORD = "pw-test-8c2d71"
QUERY = "termination notice period"
TEXTS = ["the termination notice period", "governing law"]
BASIC = "Basic " + base64.b64encode(f"gateway:{PASSWORD}".encode()).decode()


def host(server: FakeRerankServer) -> str:
    return server.url.removeprefix("http://")


def rerank_url(server: FakeRerankServer, userinfo: str = f"gateway:{PASSWORD}") -> str:
    return f"http://{userinfo}@{host(server)}/v1/rerank"


def hosted_base(server: FakeRerankServer) -> str:
    return f"http://gateway:{PASSWORD}@{host(server)}/v1"


def sent_authorizations(server: FakeRerankServer) -> list[str | None]:
    return [
        next((v for k, v in r.headers.items() if k.lower() == "authorization"), None)
        for r in server.requests
    ]


def settings(monkeypatch: pytest.MonkeyPatch, **given: tuple[str, str]) -> dict[str, str]:
    """Arguments for a scorer: ``name=(source, value)``; an upper-case source is an env var."""
    arguments: dict[str, str] = {}
    for name, (source, value) in given.items():
        if source.isupper():
            monkeypatch.setenv(source, value)
        else:
            arguments[name] = value
    return arguments


def refused(error: pytest.ExceptionInfo[ConfigurationError]) -> str:
    message = str(error.value)
    assert KEY not in message
    assert PASSWORD not in message
    return message


# --- why: what the HTTP client and the SDK do with both ------------------------------------


def test_httpx_replaces_a_bearer_header_with_the_urls_userinfo(
    fake_server: FakeRerankServer,
) -> None:
    body = {"query": QUERY, "documents": TEXTS}
    with httpx.Client(headers={"Authorization": f"Bearer {KEY}"}) as client:
        client.post(rerank_url(fake_server), json=body).raise_for_status()
    assert sent_authorizations(fake_server) == [BASIC]


def test_the_sdk_sends_the_urls_userinfo_instead_of_its_key(
    fake_server: FakeRerankServer,
) -> None:
    from zeroentropy import ZeroEntropy

    with ZeroEntropy(api_key=KEY, base_url=hosted_base(fake_server), max_retries=0) as client:
        client.models.rerank(model="zerank-2", query=QUERY, documents=TEXTS)
    assert sent_authorizations(fake_server) == [BASIC]


# --- rerank servers: one credential works, two are refused ---------------------------------


async def test_userinfo_alone_is_sent_as_basic_auth(fake_server: FakeRerankServer) -> None:
    async with RerankServerScorer(rerank_url(fake_server)) as scorer:
        assert scorer.score(QUERY, TEXTS) == await scorer.ascore(QUERY, TEXTS)
    assert sent_authorizations(fake_server) == [BASIC, BASIC]


async def test_userinfo_from_the_environment_is_sent_as_basic_auth(
    fake_server: FakeRerankServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZERANK_SERVER_URL", rerank_url(fake_server, "gw%40team:p%3Aw-123456"))
    async with RerankServerScorer() as scorer:
        scorer.score(QUERY, TEXTS)
        await scorer.ascore(QUERY, TEXTS)
    # Percent-encoded userinfo is decoded before it is encoded as Basic auth.
    expected = "Basic " + base64.b64encode(b"gw@team:p:w-123456").decode()
    assert sent_authorizations(fake_server) == [expected, expected]


async def test_a_key_alone_is_sent_as_a_bearer_token(
    fake_server: FakeRerankServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = f"{fake_server.url}/v1/rerank"
    async with RerankServerScorer(plain, api_key=KEY) as scorer:
        scorer.score(QUERY, TEXTS)
        await scorer.ascore(QUERY, TEXTS)
    monkeypatch.setenv("ZERANK_SERVER_API_KEY", KEY)
    async with RerankServerScorer(plain) as scorer:
        scorer.score(QUERY, TEXTS)
        await scorer.ascore(QUERY, TEXTS)
    assert sent_authorizations(fake_server) == [f"Bearer {KEY}"] * 4


@pytest.mark.parametrize("url_from", ["url", "ZERANK_SERVER_URL"])
@pytest.mark.parametrize("key_from", ["api_key", "ZERANK_SERVER_API_KEY"])
def test_userinfo_and_a_key_are_refused_naming_both_sources(
    fake_server: FakeRerankServer, monkeypatch: pytest.MonkeyPatch, url_from: str, key_from: str
) -> None:
    arguments = settings(
        monkeypatch, url=(url_from, rerank_url(fake_server)), api_key=(key_from, KEY)
    )
    with pytest.raises(ConfigurationError) as error:
        RerankServerScorer(**arguments)
    message = refused(error)
    assert message.startswith("the rerank server would get two credentials for its one ")
    assert f"the user:password in {url_from} (HTTP basic auth)" in message
    assert f"the API key from {key_from} (a bearer token)" in message
    fix = "unset ZERANK_SERVER_API_KEY" if key_from.isupper() else "leave out api_key"
    assert message.endswith(f"Keep one: remove user:password@ from {url_from}, or {fix}")
    assert fake_server.requests == []


def test_a_username_alone_counts_as_userinfo(fake_server: FakeRerankServer) -> None:
    # httpx sends "https://token@host/" as Basic auth with an empty password.
    with pytest.raises(ConfigurationError, match="two credentials"):
        RerankServerScorer(rerank_url(fake_server, "token-only"), api_key=KEY)
    with RerankServerScorer(rerank_url(fake_server, "token-only")) as scorer:
        scorer.score(QUERY, TEXTS)
    basic = "Basic " + base64.b64encode(b"token-only:").decode()
    assert sent_authorizations(fake_server) == [basic]


def test_an_authorization_header_counts_as_a_credential(fake_server: FakeRerankServer) -> None:
    plain = f"{fake_server.url}/v1/rerank"
    header = {"authorization": "Token gateway-token-123"}
    with pytest.raises(ConfigurationError) as error:
        RerankServerScorer(plain, api_key=KEY, headers=header)
    assert "headers['authorization']" in refused(error)
    with pytest.raises(ConfigurationError) as error:
        RerankServerScorer(rerank_url(fake_server), api_key=KEY, headers=header)
    assert "would get three credentials" in refused(error)
    with RerankServerScorer(plain, headers=header) as scorer:
        scorer.score(QUERY, TEXTS)
    assert sent_authorizations(fake_server) == ["Token gateway-token-123"]


# --- the ZeroEntropy API: userinfo would always replace the key ----------------------------


@pytest.mark.parametrize("url_from", ["base_url", "ZEROENTROPY_BASE_URL"])
@pytest.mark.parametrize("key_from", ["api_key", "ZEROENTROPY_API_KEY"])
def test_hosted_refuses_userinfo_in_its_base_url(
    fake_server: FakeRerankServer, monkeypatch: pytest.MonkeyPatch, url_from: str, key_from: str
) -> None:
    arguments = settings(
        monkeypatch, base_url=(url_from, hosted_base(fake_server)), api_key=(key_from, KEY)
    )
    with pytest.raises(ConfigurationError) as error:
        ZeroEntropyScorer(**arguments)
    message = refused(error)
    assert message.startswith(f"{url_from} carries user:password@")
    assert f"remove user:password@ from {url_from}" in message
    assert fake_server.requests == []


def test_hosted_refuses_userinfo_without_a_key_before_asking_for_one(
    fake_server: FakeRerankServer,
) -> None:
    # Adding the missing key would only trade one error for the other.
    with pytest.raises(ConfigurationError) as error:
        ZeroEntropyScorer(base_url=hosted_base(fake_server))
    assert "carries user:password@" in refused(error)


def test_hosted_refuses_a_client_whose_base_url_has_userinfo(
    fake_server: FakeRerankServer,
) -> None:
    from zeroentropy import AsyncZeroEntropy, ZeroEntropy

    client = ZeroEntropy(api_key=KEY, base_url=hosted_base(fake_server))
    with client, pytest.raises(ConfigurationError) as error:
        ZeroEntropyScorer(client=client)
    assert "the base_url of the ZeroEntropy client passed in" in refused(error)
    async_client = AsyncZeroEntropy(api_key=KEY, base_url=hosted_base(fake_server))
    with pytest.raises(ConfigurationError) as error:
        ZeroEntropyScorer(async_client=async_client)
    assert "AsyncZeroEntropy client" in refused(error)
    asyncio.run(async_client.close())


def test_the_sdk_puts_a_base_urls_query_before_the_path(fake_server: FakeRerankServer) -> None:
    from zeroentropy import NotFoundError, ZeroEntropy

    base_url = f"{fake_server.url}/v1?region=eu"
    with ZeroEntropy(api_key=KEY, base_url=base_url) as client, pytest.raises(NotFoundError):
        client.models.rerank(model="zerank-2", query=QUERY, documents=TEXTS)
    assert [r.path for r in fake_server.requests] == ["/v1?region=eu/models/rerank"]


@pytest.mark.parametrize("url_from", ["base_url", "ZEROENTROPY_BASE_URL"])
def test_hosted_refuses_a_query_string_in_its_base_url(
    fake_server: FakeRerankServer, monkeypatch: pytest.MonkeyPatch, url_from: str
) -> None:
    url = f"{fake_server.url}/v1?token={KEY}"
    arguments = settings(monkeypatch, base_url=(url_from, url), api_key=("api_key", KEY))
    with pytest.raises(ConfigurationError) as error:
        ZeroEntropyScorer(**arguments)
    assert refused(error).startswith(f"{url_from} carries a query string")
    assert fake_server.requests == []


async def test_hosted_sends_its_key_as_a_bearer_token(
    fake_server: FakeRerankServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with ZeroEntropyScorer(api_key=KEY, base_url=f"{fake_server.url}/v1") as scorer:
        scorer.score(QUERY, TEXTS)
        await scorer.ascore(QUERY, TEXTS)
    monkeypatch.setenv("ZEROENTROPY_API_KEY", KEY)
    monkeypatch.setenv("ZEROENTROPY_BASE_URL", f"{fake_server.url}/v1")
    async with ZeroEntropyScorer() as scorer:
        scorer.score(QUERY, TEXTS)
        await scorer.ascore(QUERY, TEXTS)
    assert sent_authorizations(fake_server) == [f"Bearer {KEY}"] * 4


# --- the same error wherever a scorer is built from settings -------------------------------


def test_the_resolver_names_its_own_settings(
    fake_server: FakeRerankServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigurationError) as error:
        resolve_backend(server_url=rerank_url(fake_server), api_key=KEY)
    message = refused(error)
    assert "the user:password in server_url" in message
    assert "the API key from api_key" in message
    monkeypatch.setenv("ZERANK_SERVER_URL", rerank_url(fake_server))
    monkeypatch.setenv("ZERANK_SERVER_API_KEY", KEY)
    with pytest.raises(ConfigurationError) as error:
        resolve_backend()
    message = refused(error)
    assert "in ZERANK_SERVER_URL" in message
    assert "or unset ZERANK_SERVER_API_KEY" in message
    monkeypatch.delenv("ZERANK_SERVER_API_KEY")
    choice = resolve_backend()
    choice.scorer.score(QUERY, TEXTS)
    assert sent_authorizations(fake_server) == [BASIC]


def classify(tmp_path: Path, *args: str) -> tuple[int, str, str]:
    texts, labels = tmp_path / "texts.txt", tmp_path / "labels.txt"
    texts.write_text(f"{TEXTS[0]}\n", encoding="utf-8")
    labels.write_text(f"notice: {QUERY}\n", encoding="utf-8")
    out, err = io.StringIO(), io.StringIO()
    code = main(
        ["classify", str(texts), "-l", str(labels), "--no-cache", *args], stdout=out, stderr=err
    )
    return code, out.getvalue(), err.getvalue()


def test_the_command_line_prints_one_line_and_exits_2(
    fake_server: FakeRerankServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ZERANK_SERVER_API_KEY", KEY)
    code, out, err = classify(tmp_path, "--server-url", rerank_url(fake_server))
    assert (code, out) == (2, "")
    (line,) = err.splitlines()
    assert line.startswith("zerank: error: the rerank server would get two credentials")
    assert "the user:password in --server-url" in line
    assert KEY not in err
    assert PASSWORD not in err

    monkeypatch.delenv("ZERANK_SERVER_API_KEY")
    monkeypatch.setenv("ZEROENTROPY_API_KEY", KEY)
    monkeypatch.setenv("ZEROENTROPY_BASE_URL", hosted_base(fake_server))
    code, out, err = classify(tmp_path)
    (line,) = err.splitlines()
    assert code == 2
    assert line.startswith("zerank: error: ZEROENTROPY_BASE_URL carries user:password@")
    assert PASSWORD not in err
    assert fake_server.requests == []

    monkeypatch.delenv("ZEROENTROPY_API_KEY")
    monkeypatch.delenv("ZEROENTROPY_BASE_URL")
    code, out, err = classify(tmp_path, "--server-url", rerank_url(fake_server))
    assert code == 0, err
    assert sent_authorizations(fake_server) == [BASIC]


def test_components_raise_the_same_error(
    fake_server: FakeRerankServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from langchain_zerank import ZeRankClassifier, ZeRankCompressor
    from llamaindex_zerank import ZeRankPostprocessor, ZeRankSelector

    # A component refuses userinfo in its own URL settings (they are serialised),
    # so the URL comes from the environment and the key from the component.
    monkeypatch.setenv("ZERANK_SERVER_URL", rerank_url(fake_server))
    labels = {"notice": QUERY}
    attempts = [
        lambda: ZeRankCompressor(backend="server", api_key=KEY),
        lambda: ZeRankClassifier(labels=labels, backend="server", api_key=KEY),
        lambda: ZeRankPostprocessor(backend="server", api_key=KEY),
        lambda: ZeRankSelector(backend="server", api_key=KEY),
    ]
    for attempt in attempts:
        with pytest.raises(ConfigurationError) as error:
            attempt()
        message = refused(error)
        assert "the user:password in ZERANK_SERVER_URL" in message
        assert "the API key from api_key" in message
    # The URL's userinfo alone authenticates every component.
    from langchain_core.documents import Document

    compressor = ZeRankCompressor(backend="server")
    compressor.compress_documents([Document(page_content=t) for t in TEXTS], QUERY)
    assert sent_authorizations(fake_server) == [BASIC]


# --- pickles: a rebuilt scorer sends what the original sent --------------------------------


def test_pickled_scorers_keep_their_kind_of_credential(
    fake_server: FakeRerankServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ZERANK_SERVER_URL (with userinfo) is set where the scorers are pickled
    # and where they are loaded; the key is set there too.
    monkeypatch.setenv("ZERANK_SERVER_URL", rerank_url(fake_server))
    plain = f"{fake_server.url}/v1/rerank"
    keyed = RerankServerScorer(plain, api_key=KEY)
    with_userinfo = RerankServerScorer(rerank_url(fake_server))
    data = pickle.dumps(keyed), pickle.dumps(with_userinfo)
    assert all(KEY.encode() not in d and PASSWORD.encode() not in d for d in data)

    # The copy of the keyed scorer keeps its URL without userinfo and reads
    # the key again: a bearer token, as its original sent, not the URL's Basic.
    monkeypatch.setenv("ZERANK_SERVER_API_KEY", KEY)
    keyed_copy = pickle.loads(data[0])
    assert keyed_copy.url == plain
    keyed_copy.score(QUERY, TEXTS)
    assert sent_authorizations(fake_server) == [f"Bearer {KEY}"]
    # The copy with userinfo would get both from this environment: refused.
    with pytest.raises(ConfigurationError) as error:
        pickle.loads(data[1])
    assert "ZERANK_SERVER_URL" in refused(error)
    monkeypatch.delenv("ZERANK_SERVER_API_KEY")
    pickle.loads(data[1]).score(QUERY, TEXTS)
    assert sent_authorizations(fake_server) == [f"Bearer {KEY}", BASIC]

    hosted = ZeroEntropyScorer(api_key=KEY, base_url=f"{fake_server.url}/v1")
    monkeypatch.setenv("ZEROENTROPY_API_KEY", KEY)
    monkeypatch.setenv("ZEROENTROPY_BASE_URL", hosted_base(fake_server))
    hosted_copy = pickle.loads(pickle.dumps(hosted))
    hosted_copy.score(QUERY, TEXTS)
    assert sent_authorizations(fake_server)[-1] == f"Bearer {KEY}"


def test_a_pickled_scorer_takes_the_url_credentials_of_the_loading_process(
    fake_server: FakeRerankServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pickled where ZERANK_SERVER_URL is not set (a driver given the URL in
    # code), loaded where it is (a worker): the worker's userinfo is used.
    data = pickle.dumps(RerankServerScorer(rerank_url(fake_server)))
    monkeypatch.setenv("ZERANK_SERVER_URL", rerank_url(fake_server))
    pickle.loads(data).score(QUERY, TEXTS)
    monkeypatch.delenv("ZERANK_SERVER_URL")
    pickle.loads(data).score(QUERY, TEXTS)
    assert sent_authorizations(fake_server) == [BASIC, None]
