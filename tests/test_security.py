"""A standing canary: a known API key and URL password must surface nowhere.

Every public path runs with a canary API key and with a canary password in the
server URL (one at a time: a scorer refuses both together, and that refusal is
a path too): scorers (sync and async, success and failure), the cache file,
the command line with ``-o``, log records at DEBUG, errors and their
tracebacks, pickles, LangChain ``dumpd``/``dumps``, LlamaIndex ``to_dict``
and a recorded cassette. The test then searches every byte it collected.
"""

from __future__ import annotations

import io
import logging
import pickle
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fake_servers import FakeRerankServer
from zerank_core.cache import CachedScorer
from zerank_core.cli import main
from zerank_core.errors import ConfigurationError, ZeRankError
from zerank_core.scorers import RerankServerScorer, ZeroEntropyScorer, scorer_from_env

CANARY_KEY = "canary-key-7f3a9be1"
CANARY_PASSWORD = "canary-pw-51c2e8d0"
CANARIES = (CANARY_KEY, CANARY_PASSWORD)
QUERY = "termination notice period"
TEXTS = ["the termination notice period", "governing law"]


class Evidence:
    """Everything the paths under test showed, printed, logged or wrote."""

    def __init__(self) -> None:
        self.items: list[tuple[str, bytes]] = []

    def add(self, where: str, value: object) -> None:
        if isinstance(value, bytes):
            data = value
        elif isinstance(value, Path):
            data = value.read_bytes()
        else:
            data = str(value).encode("utf-8", "backslashreplace")
        self.items.append((where, data))

    def add_error(self, where: str, error: BaseException) -> None:
        self.add(f"{where}: str", error)
        self.add(f"{where}: repr", repr(error))
        self.add(f"{where}: traceback", "".join(traceback.format_exception(error)))
        cause = error.__cause__
        if cause is not None:
            self.add(f"{where}: cause", f"{cause} {cause!r} {cause.args}")

    def leaks(self) -> list[str]:
        return [
            where for where, data in self.items for canary in CANARIES if canary.encode() in data
        ]


@pytest.fixture
def evidence(caplog: pytest.LogCaptureFixture) -> Iterator[Evidence]:
    caplog.set_level(logging.DEBUG)
    found = Evidence()
    yield found
    # At teardown caplog.records are the teardown's own: read the test's.
    records = caplog.get_records("call")
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    logged = "\n".join(formatter.format(r) for r in records)
    found.add("log records", logged)
    assert sorted(set(found.leaks())) == []
    # Document text is never logged either, at any level.
    assert not any(text in logged for text in TEXTS)


def server_url(server: FakeRerankServer) -> str:
    return f"http://reviewer:{CANARY_PASSWORD}@{server.url.removeprefix('http://')}/v1/rerank"


def hosted_url(server: FakeRerankServer) -> str:
    """A base URL the hosted scorer refuses (userinfo would replace its key)."""
    return f"http://reviewer:{CANARY_PASSWORD}@{server.url.removeprefix('http://')}/v1"


def plain_server_url(server: FakeRerankServer) -> str:
    return f"{server.url}/v1/rerank"


def plain_hosted_url(server: FakeRerankServer) -> str:
    return f"{server.url}/v1"


def test_refusing_two_credentials_shows_neither(
    fake_server: FakeRerankServer,
    evidence: Evidence,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    attempts = {
        "server url and key": lambda: RerankServerScorer(
            server_url(fake_server), api_key=CANARY_KEY
        ),
        "server url and header": lambda: RerankServerScorer(
            server_url(fake_server), headers={"Authorization": f"Bearer {CANARY_KEY}"}
        ),
        "hosted url": lambda: ZeroEntropyScorer(
            api_key=CANARY_KEY, base_url=hosted_url(fake_server)
        ),
    }
    for name, attempt in attempts.items():
        with pytest.raises(ConfigurationError) as refused:
            attempt()
        evidence.add_error(name, refused.value)
        evidence.add(f"{name} pickled error", pickle.dumps(refused.value))
    monkeypatch.setenv("ZERANK_SERVER_URL", server_url(fake_server))
    monkeypatch.setenv("ZERANK_SERVER_API_KEY", CANARY_KEY)
    with pytest.raises(ConfigurationError) as refused:
        scorer_from_env()
    evidence.add_error("server from the environment", refused.value)
    texts, labels = tmp_path / "texts.txt", tmp_path / "labels.txt"
    texts.write_text(f"{TEXTS[0]}\n", encoding="utf-8")
    labels.write_text(f"notice: {QUERY}\n", encoding="utf-8")
    out, err = io.StringIO(), io.StringIO()
    code = main(["classify", str(texts), "-l", str(labels), "--no-cache"], stdout=out, stderr=err)
    assert code == 2, err.getvalue()
    assert "two credentials" in err.getvalue()
    evidence.add("command line stdout", out.getvalue())
    evidence.add("command line stderr", err.getvalue())
    assert fake_server.requests == []


async def test_scorers_sync_async_and_their_failures(
    fake_server: FakeRerankServer, evidence: Evidence
) -> None:
    password = RerankServerScorer(server_url(fake_server), max_retries=0)
    keyed = RerankServerScorer(plain_server_url(fake_server), api_key=CANARY_KEY, max_retries=0)
    api = ZeroEntropyScorer(
        api_key=CANARY_KEY, base_url=plain_hosted_url(fake_server), max_retries=0
    )
    for name, scorer in (("server", password), ("keyed server", keyed), ("hosted", api)):
        evidence.add(f"{name} repr", repr(scorer))
        evidence.add(f"{name} str", str(scorer))
        evidence.add(f"{name} identity", scorer.cache_identity)
        evidence.add(f"{name} scores", scorer.score(QUERY, TEXTS))
        evidence.add(f"{name} async scores", await scorer.ascore(QUERY, TEXTS))
        for fault in ("500", "401", "malformed", "empty", "wrong_shape", "missing"):
            fake_server.faults.append(fault)
            with pytest.raises(ZeRankError) as failed:
                scorer.score(QUERY, TEXTS)
            evidence.add_error(f"{name} {fault}", failed.value)
            evidence.add(f"{name} {fault} pickled error", pickle.dumps(failed.value))
            fake_server.faults.append(fault)
            with pytest.raises(ZeRankError) as failed:
                await scorer.ascore(QUERY, TEXTS)
            evidence.add_error(f"{name} async {fault}", failed.value)
    # The credentials did travel, where they must: in the Authorization header.
    assert all(r.headers.get("Authorization") for r in fake_server.requests)


def test_cache_file(fake_server: FakeRerankServer, evidence: Evidence, tmp_path: Path) -> None:
    password = RerankServerScorer(server_url(fake_server))
    keyed = RerankServerScorer(plain_server_url(fake_server), api_key=CANARY_KEY)
    for name, server in (("password", password), ("key", keyed)):
        with CachedScorer(server, tmp_path / "scores.sqlite3") as cached:
            cached.score(QUERY, TEXTS)
            evidence.add(f"cached repr, {name}", repr(cached))
            evidence.add(f"cached identity, {name}", cached.cache_identity)
    for path in sorted(tmp_path.glob("scores.sqlite3*")):
        evidence.add(f"cache file {path.name}", path)


def test_backend_choice_from_the_environment(
    fake_server: FakeRerankServer, evidence: Evidence, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZERANK_SERVER_URL", server_url(fake_server))
    choice = scorer_from_env()
    evidence.add("server reason", choice.reason)
    evidence.add("server choice", repr(choice))
    monkeypatch.setenv("ZERANK_SERVER_URL", plain_server_url(fake_server))
    monkeypatch.setenv("ZERANK_SERVER_API_KEY", CANARY_KEY)
    choice = scorer_from_env()
    evidence.add("keyed server choice", repr(choice))
    monkeypatch.setenv("ZEROENTROPY_API_KEY", CANARY_KEY)
    monkeypatch.setenv("ZEROENTROPY_BASE_URL", hosted_url(fake_server))
    with pytest.raises(ConfigurationError) as refused:
        scorer_from_env()
    evidence.add_error("hosted with a password in its base URL", refused.value)
    monkeypatch.setenv("ZEROENTROPY_BASE_URL", plain_hosted_url(fake_server))
    choice = scorer_from_env()
    evidence.add("hosted reason", choice.reason)
    evidence.add("hosted choice", repr(choice))


@pytest.mark.parametrize("backend", ["server", "keyed server", "hosted"])
def test_command_line_with_output_file(
    fake_server: FakeRerankServer,
    evidence: Evidence,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    backend: str,
) -> None:
    document = tmp_path / "doc.txt"
    document.write_text("\f".join(TEXTS), encoding="utf-8")
    criteria = tmp_path / "crit.txt"
    criteria.write_text(f"{QUERY}\n", encoding="utf-8")
    if backend == "server":
        monkeypatch.setenv("ZERANK_SERVER_URL", server_url(fake_server))
    elif backend == "keyed server":
        monkeypatch.setenv("ZERANK_SERVER_URL", plain_server_url(fake_server))
        monkeypatch.setenv("ZERANK_SERVER_API_KEY", CANARY_KEY)
    else:
        monkeypatch.setenv("ZEROENTROPY_API_KEY", CANARY_KEY)
        monkeypatch.setenv("ZEROENTROPY_BASE_URL", plain_hosted_url(fake_server))
    output = tmp_path / "out" / "result.json"
    for run, faults in enumerate(([], ["500"] * 3)):
        fake_server.faults.extend(faults)
        out, err = io.StringIO(), io.StringIO()
        cache = tmp_path / f"cache{run}.sqlite3"
        options = ["-o", str(output), "--cache", str(cache), "--backend", backend.split()[-1]]
        code = main(
            ["compress", str(document), "-c", str(criteria), *options], stdout=out, stderr=err
        )
        assert code == (2 if faults else 0), err.getvalue()
        evidence.add(f"stdout {faults}", out.getvalue())
        evidence.add(f"stderr {faults}", err.getvalue())
    evidence.add("output file", output)
    for path in tmp_path.glob("cache*.sqlite3*"):
        evidence.add(f"cache file {path.name}", path)


def test_a_recorded_cassette(
    fake_server: FakeRerankServer, evidence: Evidence, tmp_path: Path
) -> None:
    import vcr

    from tests.test_cassettes import cassette_config

    cassette = tmp_path / "recorded.yaml"
    recorder = vcr.VCR(**cassette_config())
    with recorder.use_cassette(str(cassette), record_mode="all"):
        RerankServerScorer(server_url(fake_server)).score(QUERY, TEXTS)
        RerankServerScorer(plain_server_url(fake_server), api_key=CANARY_KEY).score(QUERY, TEXTS)
        ZeroEntropyScorer(api_key=CANARY_KEY, base_url=plain_hosted_url(fake_server)).score(
            QUERY, TEXTS
        )
    assert cassette.exists()
    evidence.add("recorded cassette", cassette)
    for path in (Path(__file__).parent / "cassettes").rglob("*.yaml"):
        evidence.add(f"committed cassette {path.name}", path)


def test_scorers_pickle_as_settings_and_read_credentials_from_the_environment(
    fake_server: FakeRerankServer,
    evidence: Evidence,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from zerank_core.scorers import BM25Scorer

    server = RerankServerScorer(
        server_url(fake_server),
        scale="probability",
        headers={"X-Api-Key": CANARY_KEY, "X-Team": "legal"},
        max_batch_size=7,
    )
    keyed = RerankServerScorer(plain_server_url(fake_server), api_key=CANARY_KEY)
    api = ZeroEntropyScorer(
        api_key=CANARY_KEY, base_url=plain_hosted_url(fake_server), latency="slow"
    )
    cached = CachedScorer(server, tmp_path / "c.sqlite3", model="custom-name")
    named = (("server", server), ("keyed server", keyed), ("hosted", api), ("cached", cached))
    for name, scorer in named:
        scorer.score(QUERY, TEXTS)
        evidence.add(f"{name} pickle", pickle.dumps(scorer))

    # Without credentials in the environment the copies know every other setting.
    monkeypatch.setenv("ZEROENTROPY_API_KEY", "another-key-from-env")
    copy = pickle.loads(pickle.dumps(server))
    assert (copy.max_batch_size, copy.backend_scale, copy.model) == (7, "probability", "zerank-2")
    assert copy.cache_identity == server.cache_identity
    assert "X-Api-Key" not in copy._headers
    hosted_copy = pickle.loads(pickle.dumps(api))
    assert (hosted_copy.latency, hosted_copy.cache_identity) == ("slow", api.cache_identity)
    cached_copy = pickle.loads(pickle.dumps(cached))
    assert cached_copy.identity == cached.identity
    assert cached_copy.score(QUERY, TEXTS) == cached.score(QUERY, TEXTS)
    assert cached_copy.stats.misses == 0
    bm25 = pickle.loads(pickle.dumps(BM25Scorer(k1=1.2)))
    assert bm25.cache_identity == BM25Scorer(k1=1.2).cache_identity

    # With them, the copy authenticates as the original did.
    fake_server.requests.clear()
    monkeypatch.setenv("ZERANK_SERVER_URL", server_url(fake_server))
    rebuilt = pickle.loads(pickle.dumps(server))
    assert rebuilt.score(QUERY, TEXTS) == server.score(QUERY, TEXTS)
    monkeypatch.setenv("ZERANK_SERVER_API_KEY", CANARY_KEY)
    rebuilt_keyed = pickle.loads(pickle.dumps(keyed))
    assert rebuilt_keyed.score(QUERY, TEXTS) == keyed.score(QUERY, TEXTS)
    sent = [r.headers["Authorization"] for r in fake_server.requests]
    assert sent[0] == sent[1]
    assert sent[0].startswith("Basic ")
    assert sent[2] == sent[3] == f"Bearer {CANARY_KEY}"


def adapters(fake_server: FakeRerankServer) -> list[tuple[str, object]]:
    from langchain_zerank import ZeRankClassifier, ZeRankCompressor
    from llamaindex_zerank import ZeRankPostprocessor, ZeRankSelector

    labels = {"notice": "a termination notice period", "law": "the governing law"}
    # The URL's password reaches the adapters through the environment (see the tests).
    base_url = f"{fake_server.url}/v1"
    scorer = RerankServerScorer(server_url(fake_server))
    return [
        ("compressor with key", ZeRankCompressor(api_key=CANARY_KEY)),
        ("compressor with scorer", ZeRankCompressor(scorer=scorer)),
        ("classifier with key", ZeRankClassifier(labels=labels, api_key=CANARY_KEY)),
        ("classifier with scorer", ZeRankClassifier(labels=labels, scorer=scorer)),
        ("postprocessor with key", ZeRankPostprocessor(api_key=CANARY_KEY, base_url=base_url)),
        ("postprocessor with scorer", ZeRankPostprocessor(scorer=scorer)),
        ("selector with key", ZeRankSelector(api_key=CANARY_KEY, base_url=base_url)),
        ("selector with scorer", ZeRankSelector(scorer=scorer)),
        ("compressor from environment", ZeRankCompressor()),
        ("classifier from environment", ZeRankClassifier(labels=labels)),
        ("postprocessor from environment", ZeRankPostprocessor()),
        ("selector from environment", ZeRankSelector()),
    ]


def server_environment(fake_server: FakeRerankServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # The password travels in the server's URL, the key in the hosted components' api_key.
    monkeypatch.setenv("ZERANK_SERVER_URL", server_url(fake_server))
    monkeypatch.setenv("ZEROENTROPY_BASE_URL", plain_hosted_url(fake_server))


def test_adapters_reprs_and_serialisations(
    fake_server: FakeRerankServer, evidence: Evidence, monkeypatch: pytest.MonkeyPatch
) -> None:
    import copy

    from langchain_core.load import dumpd, dumps

    server_environment(fake_server, monkeypatch)
    for name, adapter in adapters(fake_server):
        evidence.add(f"{name} repr", repr(adapter))
        evidence.add(f"{name} str", str(adapter))
        evidence.add(f"{name} pickle", pickle.dumps(adapter))
        evidence.add(f"{name} deepcopy", repr(vars(copy.deepcopy(adapter))))
        if type(adapter).__module__.startswith("llamaindex_zerank"):
            if hasattr(adapter, "to_dict"):
                evidence.add(f"{name} to_dict", adapter.to_dict())
                evidence.add(f"{name} to_json", adapter.to_json())
        else:
            evidence.add(f"{name} dumpd", dumpd(adapter))
            evidence.add(f"{name} dumps", dumps(adapter))
            evidence.add(f"{name} model_dump", adapter.model_dump())  # type: ignore[attr-defined]


async def test_adapters_at_work(
    fake_server: FakeRerankServer, evidence: Evidence, monkeypatch: pytest.MonkeyPatch
) -> None:
    from langchain_core.documents import Document
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    server_environment(fake_server, monkeypatch)
    documents = [Document(page_content=t) for t in TEXTS]
    nodes = [NodeWithScore(node=TextNode(text=t)) for t in TEXTS]
    for name, adapter in adapters(fake_server):
        if name.startswith("compressor"):
            evidence.add(name, adapter.compress_documents(documents, QUERY))  # type: ignore[attr-defined]
            evidence.add(name, await adapter.acompress_documents(documents, QUERY))  # type: ignore[attr-defined]
        elif name.startswith("classifier"):
            evidence.add(name, adapter.invoke(QUERY))  # type: ignore[attr-defined]
            evidence.add(name, await adapter.ainvoke(QUERY))  # type: ignore[attr-defined]
        elif name.startswith("postprocessor"):
            bundle = QueryBundle(QUERY)
            evidence.add(name, adapter.postprocess_nodes(nodes, bundle))  # type: ignore[attr-defined]
            evidence.add(name, await adapter.apostprocess_nodes(nodes, bundle))  # type: ignore[attr-defined]
        else:
            from llama_index.core.tools import ToolMetadata

            choices = [
                ToolMetadata(name=n, description=d) for n, d in (("a", TEXTS[0]), ("b", TEXTS[1]))
            ]
            evidence.add(name, adapter.select(choices, QUERY))  # type: ignore[attr-defined]
            evidence.add(name, await adapter.aselect(choices, QUERY))  # type: ignore[attr-defined]
        evidence.add(f"{name} pickle after use", pickle.dumps(adapter))
        evidence.add(f"{name} repr after use", repr(adapter))


def test_adapters_refuse_credentials_in_their_url_settings(fake_server: FakeRerankServer) -> None:
    """A component's settings are serialised; a URL with a password belongs in the environment."""
    from langchain_zerank import ZeRankClassifier, ZeRankCompressor
    from llamaindex_zerank import ZeRankPostprocessor, ZeRankSelector

    labels = {"notice": "a termination notice period"}
    attempts = [
        lambda: ZeRankCompressor(server_url=server_url(fake_server)),
        lambda: ZeRankClassifier(labels=labels, base_url=hosted_url(fake_server), api_key="k" * 8),
        lambda: ZeRankPostprocessor(server_url=server_url(fake_server)),
        lambda: ZeRankSelector(base_url=f"{fake_server.url}/v1?api_key={CANARY_KEY}"),
    ]
    for attempt in attempts:
        with pytest.raises(ConfigurationError, match="carries credentials") as info:
            attempt()
        assert all(canary not in str(info.value) for canary in CANARIES)
    plain = ZeRankCompressor(server_url=f"{fake_server.url}/v1/rerank")
    assert plain.compress_documents([], QUERY) == []


# --------------------------------------------------------------------------- names of any kind

# Gateways name their key parameter and header as they like; none of these
# names is special to the package: every value not on the allow-list is a secret.
PARAMETER_NAMES = (
    "subscription-key",  # Azure API Management
    "code",  # Azure Functions
    "api_token",
    "access-token",
    "X-Amz-Security-Token",
    "zq-whatever",
)
HEADER_NAMES = ("Ocp-Apim-Subscription-Key", "X-Custom-Auth", "X-Zq-Whatever")
CANARY_PARAMETER = "sk-CANARY-4d1e9a77"
CANARY_HEADER = "hdr-CANARY-0b6f3c52"


@pytest.mark.parametrize("name", PARAMETER_NAMES)
def test_a_query_parameter_of_any_name_surfaces_nowhere(
    name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from collections import deque

    caplog.set_level(logging.DEBUG)
    found = Evidence()
    server = FakeRerankServer(faults=deque(["401"] * 20))
    try:
        url = f"{server.url}/v1/rerank?api-version=2024-01&{name}={CANARY_PARAMETER}"
        scorer = RerankServerScorer(url, max_retries=0)
        found.add("url", scorer.url)
        found.add("repr", repr(scorer))
        found.add("vars", vars(scorer))
        found.add("identity", scorer.cache_identity)
        found.add("pickle", pickle.dumps(scorer))
        with pytest.raises(ZeRankError) as failed:
            scorer.score(QUERY, TEXTS)
        found.add_error("401", failed.value)
        assert "api-version=2024-01" in scorer.url  # a harmless parameter stays readable
        texts, labels = tmp_path / "texts.txt", tmp_path / "labels.txt"
        texts.write_text(f"{TEXTS[0]}\n", encoding="utf-8")
        labels.write_text(f"notice: {QUERY}\n", encoding="utf-8")
        out, err = io.StringIO(), io.StringIO()
        output = tmp_path / "out.json"
        argv = ["classify", str(texts), "-l", str(labels), "--server-url", url, "--no-cache"]
        assert main([*argv, "-o", str(output)], stdout=out, stderr=err) == 2
        found.add("stderr", err.getvalue())
        server.faults.clear()
        assert main([*argv, "-o", str(output)], stdout=out, stderr=err) == 0, err.getvalue()
        found.add("stderr", err.getvalue())
        found.add("-o JSON", output)
        assert "backend: server" in err.getvalue()
        # The secret still goes where it belongs: to the server.
        assert all(CANARY_PARAMETER in r.path for r in server.requests)
    finally:
        server.close()
    found.add("log", "\n".join(r.getMessage() for r in caplog.get_records("call")))
    assert [where for where, data in found.items if CANARY_PARAMETER.encode() in data] == []


def test_a_header_of_any_name_is_neither_pickled_nor_shown(fake_server: FakeRerankServer) -> None:
    headers = {name: CANARY_HEADER + name for name in HEADER_NAMES}
    headers["Accept-Language"] = "en"
    scorer = RerankServerScorer(f"{fake_server.url}/v1/rerank", headers=headers)
    found = Evidence()
    found.add("pickle", pickle.dumps(scorer))
    found.add("vars", vars(scorer))
    found.add("repr", repr(scorer))
    assert [where for where, data in found.items if CANARY_HEADER.encode() in data] == []
    rebuilt = pickle.loads(pickle.dumps(scorer))
    expected = scorer.score(QUERY, TEXTS)
    assert rebuilt.score(QUERY, TEXTS) == expected
    sent = fake_server.requests[-2].headers
    assert sent["Accept-Language"] == "en"
    assert sent["X-Custom-Auth"] == CANARY_HEADER + "X-Custom-Auth"  # the scorer sends it
    assert "X-Custom-Auth" not in fake_server.requests[-1].headers  # the pickle does not


def test_the_hosted_backend_never_follows_a_redirect(
    fake_server: FakeRerankServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = FakeRerankServer()
    fake_server.redirect_to = f"{elsewhere.url}/v1/models/rerank"
    monkeypatch.setenv("ZEROENTROPY_BASE_URL", f"{fake_server.url}/v1")
    try:
        with ZeroEntropyScorer(api_key="k" * 8, max_retries=0) as scorer:
            with pytest.raises(ZeRankError) as sync_failed:
                scorer.score(QUERY, TEXTS)

            async def ascore() -> None:
                await scorer.ascore(QUERY, TEXTS)

            import asyncio

            with pytest.raises(ZeRankError) as async_failed:
                asyncio.run(ascore())
        for failed in (sync_failed, async_failed):
            assert "HTTP 307" in str(failed.value)
            assert "which is not followed" in str(failed.value)
        assert elsewhere.requests == []
    finally:
        elsewhere.close()
