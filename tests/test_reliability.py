"""Cache keys that know their backend, typed failures and defined results for bad input.

Each test reproduces one finding of a fault-injection and abuse run against
the package: a cache that served another configuration's scores, hosted
errors that escaped untyped, a boolean read as a score, inputs that crashed
deep in a client.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest
import zeroentropy

from tests.cli_run import call
from tests.extras import needs_sklearn
from tests.fake_servers import FakeRerankServer, reference_probability
from zerank_core import BackendError, ConfigurationError, InvalidResponseError
from zerank_core.cache import CachedScorer
from zerank_core.errors import ZeRankError
from zerank_core.scorers import BM25Scorer, RerankServerScorer, ZeroEntropyScorer
from zerank_core.scorers.base import Scale, to_probability

QUERY = "termination notice period"


def hosted(server: FakeRerankServer, **kwargs: object) -> ZeroEntropyScorer:
    options: dict[str, object] = {"api_key": "ze-test-key", "base_url": f"{server.url}/v1"}
    options.update(kwargs)
    return ZeroEntropyScorer(**options)  # type: ignore[arg-type]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- finding 1: the cache key says where a score came from -------------------


def test_fixing_the_server_scale_is_a_cache_miss_not_the_old_scores(
    tmp_path: Path, fake_server: FakeRerankServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same server and cache: ZERANK_SERVER_SCALE sigmoid, then the right one, probability."""
    pages = ["termination clause", "notice period of thirty days", "governing law"]
    document = tmp_path / "doc.txt"
    document.write_text("\f".join(pages), encoding="utf-8")
    criteria = tmp_path / "crit.txt"
    criteria.write_text("termination notice period\n", encoding="utf-8")
    cache = tmp_path / "c.sqlite3"
    args = ("compress", str(document), "-c", str(criteria), "--server-url")
    args += (f"{fake_server.url}/v1/rerank", "--cache", str(cache), "--threshold", "none")

    monkeypatch.setenv("ZERANK_SERVER_SCALE", "sigmoid")
    code, out, err = call(*args)
    assert code == 0, err
    wrong = list(json.loads(out)["results"][0]["scores"].values())
    true = [reference_probability(QUERY, p) for p in pages]
    assert wrong == pytest.approx([to_probability(p, Scale.SIGMOID) for p in true], abs=1e-6)

    monkeypatch.setenv("ZERANK_SERVER_SCALE", "probability")
    code, out, err = call(*args)
    assert code == 0, err
    assert "0 hits, 3 misses" in err
    assert list(json.loads(out)["results"][0]["scores"].values()) == pytest.approx(true, abs=1e-6)


def test_identity_covers_every_setting_that_changes_a_score() -> None:
    url = "http://localhost:8000/v1/rerank"
    base = RerankServerScorer(url).cache_identity
    assert RerankServerScorer(url, scale="logit").cache_identity != base
    assert RerankServerScorer(url, model="zerank-1-small").cache_identity != base
    assert RerankServerScorer("http://other:8000/v1/rerank").cache_identity != base
    assert RerankServerScorer(url, api="tei").cache_identity != base
    assert RerankServerScorer(url, extra_body={"raw_scores": True}).cache_identity != base
    # Credentials name who asks, not what answers: same deployment, same entries.
    with_password = RerankServerScorer("http://u:pw-123456@localhost:8000/v1/rerank")
    assert with_password.cache_identity == base
    assert "pw-123456" not in with_password.cache_identity
    assert json.loads(base)["backend"] == "server"

    hosted_base = ZeroEntropyScorer(api_key="k" * 8).cache_identity
    assert ZeroEntropyScorer(api_key="other-key").cache_identity == hosted_base
    assert ZeroEntropyScorer(api_key="k" * 8, latency="slow").cache_identity != hosted_base
    assert ZeroEntropyScorer(api_key="k" * 8, model="zerank-1").cache_identity != hosted_base
    eu = ZeroEntropyScorer(api_key="k" * 8, base_url="https://eu-api.zeroentropy.dev/v1")
    assert eu.cache_identity != hosted_base
    assert BM25Scorer(k1=1.2).cache_identity != BM25Scorer().cache_identity
    assert len({base, hosted_base, BM25Scorer().cache_identity}) == 3


def test_server_and_hosted_deployments_of_one_model_do_not_share_entries(
    tmp_path: Path, fake_server: FakeRerankServer
) -> None:
    path = tmp_path / "c.sqlite3"
    with CachedScorer(RerankServerScorer(f"{fake_server.url}/v1/rerank"), path) as server:
        server.score(QUERY, ["notice"])
    with CachedScorer(hosted(fake_server), path) as api:
        api.score(QUERY, ["notice"])
        assert api.stats.misses == 1


@needs_sklearn
def test_refitting_a_calibrator_is_a_cache_miss(tmp_path: Path) -> None:
    from zerank_core.calibrate import CalibratedScorer, PlattCalibrator

    path = tmp_path / "c.sqlite3"
    scores, labels = [0.1, 0.2, 0.7, 0.9, 0.3, 0.8], [0, 0, 1, 1, 0, 1]
    first = CalibratedScorer(BM25Scorer(), PlattCalibrator().fit(scores, labels))
    refit = CalibratedScorer(BM25Scorer(), PlattCalibrator().fit(scores, [0, 1, 1, 1, 0, 0]))
    texts = ["termination notice", "notice"]
    with CachedScorer(first, path) as cached:
        old = cached.score(QUERY, texts)
    with CachedScorer(refit, path) as cached:
        assert cached.score(QUERY, texts) == refit.score(QUERY, texts) != old
        assert cached.stats.hits == 0
    with CachedScorer(first, path) as cached:
        assert cached.score(QUERY, texts) == old
        assert cached.stats.misses == 0


@needs_sklearn
def test_a_calibrated_bm25_is_still_cached_per_whole_call(tmp_path: Path) -> None:
    """BM25's scores depend on the call's corpus, with or without a calibrator on top."""
    from zerank_core.calibrate import CalibratedScorer, PlattCalibrator

    calibrator = PlattCalibrator().fit([0.1, 0.2, 0.7, 0.9], [0, 0, 1, 1])
    scorer = CalibratedScorer(BM25Scorer(), calibrator)
    small = ["termination notice period", "termination notice"]
    large = ["termination notice", "termination", "notice"]
    with CachedScorer(scorer, tmp_path / "c.sqlite3") as cached:
        assert not cached.pairwise
        cached.score(QUERY, small)
        assert cached.score(QUERY, large) == scorer.score(QUERY, large)


class Custom:
    """A user scorer with a model name and no ``cache_identity``."""

    model = "my-reranker"
    scale = Scale.PROBABILITY
    usage = None

    def __init__(self, offset: float) -> None:
        self.offset = offset

    def score(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        return [self.offset for _ in texts]

    async def ascore(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        return self.score(query, texts)


def test_a_scorer_without_identity_is_keyed_by_its_model(tmp_path: Path) -> None:
    """The documented caveat: its own settings are not in the key, its model name is."""
    path = tmp_path / "c.sqlite3"
    with CachedScorer(Custom(0.2), path) as first:
        assert first.score(QUERY, ["x"]) == [0.2]
    with CachedScorer(Custom(0.9), path) as same_model:
        assert same_model.score(QUERY, ["x"]) == [0.2]
    with CachedScorer(Custom(0.9), path, model="my-reranker-v2") as renamed:
        assert renamed.score(QUERY, ["x"]) == [0.9]


# --- findings 3 and 4: every failure has a type ----------------------------


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("malformed", "not JSON"),
        ("empty", "empty body"),
        ("results_dict", "unexpected body shape: expected a list of results, got dict"),
        ("wrong_shape", "unexpected body shape"),
        ("bool_score", "not a number: True"),
    ],
)
async def test_hosted_bad_bodies_are_invalid_responses_naming_the_batch(
    fake_server: FakeRerankServer, fault: str, message: str
) -> None:
    scorer = hosted(fake_server, max_batch_size=2, max_concurrency=1, max_retries=0)
    texts = ["a", "b", "c notice", "d termination"]
    fake_server.faults.extend([None, fault])  # type: ignore[list-item]
    with pytest.raises(InvalidResponseError, match=message) as info:
        scorer.score(QUERY, texts)
    assert (info.value.batch, info.value.batch_size) == (1, 2)
    assert "batch 1 (2 texts)" in str(info.value)
    fake_server.faults.append(fault)
    with pytest.raises(InvalidResponseError, match=message):
        await scorer.ascore(QUERY, texts[:2])


@pytest.mark.parametrize("fault", ["empty", "results_dict", "bool_score"])
async def test_server_bad_bodies_are_invalid_responses(
    fake_server: FakeRerankServer, fault: str
) -> None:
    # max_retries=0: a bad body is otherwise sent again (the engine's retry policy).
    scorer = RerankServerScorer(f"{fake_server.url}/v1/rerank", max_retries=0)
    fake_server.faults.append(fault)
    with pytest.raises(InvalidResponseError, match="batch 0"):
        scorer.score(QUERY, ["a", "b"])
    fake_server.faults.append(fault)
    with pytest.raises(InvalidResponseError, match="batch 0"):
        await scorer.ascore(QUERY, ["a", "b"])


async def test_hosted_401_is_a_backend_error_with_the_sdk_error_as_cause(
    fake_server: FakeRerankServer,
) -> None:
    fake_server.faults.extend(["401", "401"])
    scorer = hosted(fake_server, max_retries=0)
    with pytest.raises(BackendError, match=r"HTTP 401 \(check the API key\)") as info:
        scorer.score(QUERY, ["x"])
    assert info.value.status_code == 401
    assert isinstance(info.value.__cause__, zeroentropy.AuthenticationError)
    with pytest.raises(BackendError, match="HTTP 401"):
        await scorer.ascore(QUERY, ["x"])


async def test_timeouts_and_refused_connections_are_backend_errors(
    fake_server: FakeRerankServer,
) -> None:
    fake_server.latency_s = 0.5
    slow = hosted(fake_server, timeout=0.05, max_retries=0)
    with pytest.raises(BackendError, match="did not answer in time") as info:
        slow.score(QUERY, ["x"])
    assert isinstance(info.value.__cause__, zeroentropy.APITimeoutError)
    slow_server = RerankServerScorer(f"{fake_server.url}/v1/rerank", timeout=0.05, max_retries=0)
    with pytest.raises(BackendError, match="timed out") as info:
        await slow_server.ascore(QUERY, ["x"])
    assert isinstance(info.value.__cause__, httpx.TimeoutException)

    port = closed_port()
    refused = hosted(fake_server, base_url=f"http://127.0.0.1:{port}/v1", max_retries=0)
    with pytest.raises(BackendError, match="cannot reach the ZeroEntropy API"):
        refused.score(QUERY, ["x"])
    nobody = RerankServerScorer(f"http://127.0.0.1:{port}/v1/rerank", max_retries=0)
    with pytest.raises(BackendError, match=r"request failed \(ConnectError"):
        nobody.score(QUERY, ["x"])


def test_errors_survive_pickling() -> None:
    error = InvalidResponseError("no score for indices [1]", batch=3, batch_size=8)
    error.in_criterion("labs")
    copy = pickle.loads(pickle.dumps(error))
    assert (
        str(copy) == str(error) == "criterion 'labs', batch 3 (8 texts): no score for indices [1]"
    )
    backend = pickle.loads(
        pickle.dumps(BackendError("down", batch=0, batch_size=2, status_code=503))
    )
    assert backend.status_code == 503
    assert isinstance(backend, ZeRankError)


# --- finding 7: a defined result for every bad input -------------------------


def every_scorer(server: FakeRerankServer, tmp_path: Path) -> list[object]:
    return [
        RerankServerScorer(f"{server.url}/v1/rerank"),
        hosted(server),
        BM25Scorer(),
        CachedScorer(RerankServerScorer(f"{server.url}/v1/rerank"), tmp_path / "c.sqlite3"),
    ]


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        (None, "texts must be a sequence of strings, got NoneType"),
        (5, "texts must be a sequence of strings, got int"),
        ("one string", "got a single str"),
        (["ok", b"bytes"], r"texts\[1\] must be a str, got bytes"),
        (
            ["ok", "bad \ud800 text"],
            r"texts\[1\] holds a lone surrogate \('\\ud800'\) at character 4",
        ),
    ],
)
async def test_bad_texts_are_named(
    fake_server: FakeRerankServer, tmp_path: Path, texts: object, message: str
) -> None:
    for scorer in every_scorer(fake_server, tmp_path):
        with pytest.raises(ConfigurationError, match=message):
            scorer.score(QUERY, texts)  # type: ignore[attr-defined]
        with pytest.raises(ConfigurationError, match=message):
            await scorer.ascore(QUERY, texts)  # type: ignore[attr-defined]
    assert fake_server.requests == []


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (None, "query must be a str, got NoneType"),
        (1, "query must be a str, got int"),
        (b"q", "query must be a str, got bytes"),
        ("", "query is empty or whitespace only"),
        (" \n\t", "query is empty or whitespace only"),
        ("q \udfff", "query holds a lone surrogate"),
    ],
)
def test_bad_queries_are_named(
    fake_server: FakeRerankServer, tmp_path: Path, query: object, message: str
) -> None:
    for scorer in every_scorer(fake_server, tmp_path):
        with pytest.raises(ConfigurationError, match=message):
            scorer.score(query, ["text"])  # type: ignore[attr-defined]
    assert fake_server.requests == []


async def test_blank_texts_score_zero_without_a_model_call(
    fake_server: FakeRerankServer, tmp_path: Path
) -> None:
    texts = ["termination notice", "", "  \n\t", "\x00\x00", "period"]
    for scorer in every_scorer(fake_server, tmp_path):
        scores = scorer.score(QUERY, texts)  # type: ignore[attr-defined]
        assert scores[1:4] == [0.0, 0.0, 0.0]
        assert scores[0] > 0.0
        assert await scorer.ascore(QUERY, texts) == scores  # type: ignore[attr-defined]
    sent = [d for r in fake_server.requests for d in r.body["documents"]]
    assert set(sent) == {"termination notice", "period"}
    fake_server.requests.clear()
    assert RerankServerScorer(f"{fake_server.url}/v1/rerank").score(QUERY, ["", " "]) == [0.0, 0.0]
    assert fake_server.requests == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": "http://[::1"}, r"url is not a valid URL: 'http://\[::1'"),
        ({"url": "http://"}, "url has no host: 'http://'"),
        ({"url": "ftp://host/rerank"}, "url must start with http:// or https://"),
        ({"max_retries": -1}, "max_retries must be >= 0, got -1"),
        ({"timeout": -1}, "timeout must be a finite number of seconds > 0, got -1"),
        ({"timeout": math.nan}, "timeout must be a finite number of seconds > 0, got nan"),
        ({"api_key": ""}, "api_key is empty"),
    ],
)
def test_bad_server_settings_are_named(kwargs: dict[str, object], message: str) -> None:
    options: dict[str, object] = {"url": "http://localhost:8000/v1/rerank", **kwargs}
    with pytest.raises(ConfigurationError, match=message):
        RerankServerScorer(**options)  # type: ignore[arg-type]


def test_bad_server_url_from_the_environment_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "t.txt").write_text("a text\n", encoding="utf-8")
    (tmp_path / "l.txt").write_text("tb: tuberculosis\n", encoding="utf-8")
    monkeypatch.setenv("ZERANK_SERVER_URL", "http://[::1")
    code, _, err = call(
        "classify", str(tmp_path / "t.txt"), "-l", str(tmp_path / "l.txt"), "--backend", "server"
    )
    assert code == 2
    assert err.count("\n") == 1
    assert "url is not a valid URL: 'http://[::1'" in err


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_retries": -1}, "max_retries must be >= 0, got -1"),
        ({"timeout": -1.0}, "timeout must be a finite number of seconds > 0"),
        ({"timeout": math.nan}, "timeout must be a finite number of seconds > 0, got nan"),
        ({"api_key": ""}, "API key is empty"),
        ({"base_url": "http://"}, "base_url has no host"),
    ],
)
def test_bad_hosted_settings_are_named(kwargs: dict[str, object], message: str) -> None:
    options: dict[str, object] = {"api_key": "ze-test-key", **kwargs}
    with pytest.raises(ConfigurationError, match=message):
        ZeroEntropyScorer(**options)  # type: ignore[arg-type]


def test_a_file_of_nul_bytes_is_not_scored(tmp_path: Path) -> None:
    document = tmp_path / "blob.txt"
    document.write_bytes(b"\x00" * 4096)
    criteria = tmp_path / "crit.txt"
    criteria.write_text("labs\n", encoding="utf-8")
    code, out, err = call("compress", str(document), "-c", str(criteria), "--no-cache")
    assert code == 2
    assert out == ""
    assert "holds NUL bytes: it is a binary file, not text" in err


# --- findings 3 and 8: the command line reports one line naming criterion and batch


def compress_files(tmp_path: Path) -> tuple[Path, Path]:
    document = tmp_path / "doc.txt"
    document.write_text(
        "termination clause\fthe termination notice period\fgoverning law", encoding="utf-8"
    )
    criteria = tmp_path / "crit.yaml"
    criteria.write_text("- {id: notice, text: termination notice period}\n", encoding="utf-8")
    return document, criteria


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("500", "batch 0 (3 texts): the server answered HTTP 500"),
        ("malformed", "batch 0 (3 texts): "),
        ("missing", "batch 0 (3 texts): no score for indices"),
    ],
)
def test_cli_backend_failures_are_one_line_naming_criterion_and_batch(
    tmp_path: Path, fake_server: FakeRerankServer, fault: str, message: str
) -> None:
    document, criteria = compress_files(tmp_path)
    url = f"http://user:pw-s3cret@{fake_server.url.removeprefix('http://')}/v1/rerank"
    fake_server.faults.extend([fault] * 3)  # the first try and the default 2 retries
    code, out, err = call(
        "compress", str(document), "-c", str(criteria), "--server-url", url, "--no-cache"
    )
    assert code == 2
    assert out == ""
    (line,) = [x for x in err.splitlines() if x.startswith("zerank: error:")]
    assert line.startswith(f"zerank: error: criterion 'notice', {message}")
    assert "Traceback" not in err
    assert "pw-s3cret" not in err


def test_cli_hosted_sdk_failures_are_one_line(
    tmp_path: Path, fake_server: FakeRerankServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    document, criteria = compress_files(tmp_path)
    monkeypatch.setenv("ZEROENTROPY_API_KEY", "ze-test-key")
    monkeypatch.setenv("ZEROENTROPY_BASE_URL", f"{fake_server.url}/v1")
    fake_server.faults.extend(["401"] * 5)
    code, _, err = call("compress", str(document), "-c", str(criteria), "--no-cache")
    assert code == 2
    assert err.splitlines()[-1].startswith(
        "zerank: error: criterion 'notice', batch 0 (3 texts): the ZeroEntropy API answered "
        "HTTP 401 (check the API key)"
    )


def test_cli_debug_shows_the_traceback(tmp_path: Path, fake_server: FakeRerankServer) -> None:
    document, criteria = compress_files(tmp_path)
    args = [str(document), "-c", str(criteria), "--no-cache"]
    args += ["--server-url", f"{fake_server.url}/v1/rerank"]
    fake_server.faults.extend(["500"] * 3)  # the first try and the default 2 retries
    with pytest.raises(BackendError, match="criterion 'notice', batch 0") as info:
        call("--debug", "compress", *args)
    assert isinstance(info.value.__cause__, httpx.HTTPStatusError)
    fake_server.faults.extend(["500"] * 3)
    with pytest.raises(BackendError):
        call("compress", *args, "--debug")


# --- finding 2: one redaction rule for URLs and keys -------------------------


def test_the_redaction_rule() -> None:
    from zerank_core.redaction import deployment_url, redact, redact_url, register_secret

    # Every query value is masked unless its name is on the allow-list.
    assert redact_url("https://user:pw@host:8443/v1/rerank?api_key=abc&x=1&model=m") == (
        "https://***@host:8443/v1/rerank?api_key=***&x=***&model=m"
    )
    assert redact("see http://u:p@h/x and https://h/y?token=t0k&key=k3y") == (
        "see http://***@h/x and https://h/y?token=***&key=***"
    )
    assert redact("Authorization: Bearer sk-abc.def") == "Authorization: Bearer ***"
    register_secret("a-registered-key")
    assert redact("echoed a-registered-key back") == "echoed *** back"
    assert deployment_url("https://u:p@HOST/v1?token=t&model=m") == "https://host/v1?model=m"


def test_server_credentials_never_reach_repr_errors_reason_or_logs(
    fake_server: FakeRerankServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    from zerank_core.scorers import check_scorer, scorer_from_env

    secret = "pw-find-me-42"
    host = fake_server.url.removeprefix("http://")
    url = f"http://reviewer:{secret}@{host}/v1/rerank"
    monkeypatch.setenv("ZERANK_SERVER_URL", url)
    caplog.set_level(logging.DEBUG)
    choice = scorer_from_env()
    scorer = RerankServerScorer(url, max_retries=0)
    cached = CachedScorer(scorer, tmp_path / "c.sqlite3")
    seen = [choice.reason, repr(scorer), str(scorer), repr(cached), str(cached)]
    with pytest.raises(ConfigurationError) as info:
        check_scorer(scorer)
    seen.append(str(info.value))
    for fault in ("malformed", "wrong_shape", "500"):
        fake_server.faults.append(fault)
        with pytest.raises(BackendError) as failed:
            scorer.score(QUERY, ["x"])
        seen += [str(failed.value), repr(failed.value), str(failed.value.__cause__)]
    seen += [r.getMessage() for r in caplog.records]
    seen += [caplog.text]
    assert any("HTTP Request" in line for line in seen)
    for text in seen:
        assert secret not in text


# --- finding 6: honest reports -----------------------------------------------


@pytest.mark.parametrize(
    ("options", "line"),
    [
        (["--max-chars", "10"], "kept nothing: budget smaller than any page: notice"),
        (["--max-tokens", "2"], "kept nothing: budget smaller than any page: notice"),
        (["--top-k", "0"], "kept nothing: top-K is 0: notice"),
    ],
)
def test_a_policy_that_keeps_nothing_is_not_reported_as_no_evidence(
    tmp_path: Path, fake_server: FakeRerankServer, options: list[str], line: str
) -> None:
    document, criteria = compress_files(tmp_path)
    code, out, err = call(
        "compress",
        str(document),
        "-c",
        str(criteria),
        "--server-url",
        f"{fake_server.url}/v1/rerank",
        "--no-cache",
        *options,
    )
    assert code == 0, err
    assert line in err
    assert "no evidence (no page above the floor)" not in err
    data = json.loads(out)
    assert max(data["results"][0]["scores"].values()) > 0.9
    reason = line.split(": ")[1]
    assert data["report"]["no_evidence"] == []
    assert data["report"]["kept_nothing"] == {"notice": reason}
    assert data["results"][0]["no_evidence"] is False
    assert data["results"][0]["kept_nothing"] == reason


def test_a_floor_above_every_score_is_still_no_evidence(
    tmp_path: Path, fake_server: FakeRerankServer
) -> None:
    document, criteria = compress_files(tmp_path)
    url = f"{fake_server.url}/v1/rerank"
    code, out, err = call(
        "compress",
        str(document),
        "-c",
        str(criteria),
        "--server-url",
        url,
        "--no-cache",
        "--threshold",
        "0.99",
    )
    assert code == 0, err
    assert "no evidence (no page above the floor): notice" in err
    assert "kept nothing:" not in err
    data = json.loads(out)
    assert data["results"][0]["kept_nothing"] == "no page above the floor"
    assert data["report"]["kept_nothing"] == {}


# --- finding 8: clean async shutdown ------------------------------------------


NOISY_LOOPS = """
import asyncio
from tests.fake_servers import FakeRerankServer
from zerank_core.scorers import RerankServerScorer, ZeroEntropyScorer
server = FakeRerankServer()
api = ZeroEntropyScorer(api_key="ze-test-key", base_url=f"{server.url}/v1")
rerank = RerankServerScorer(f"{server.url}/v1/rerank")
for _ in range(5):
    first = asyncio.run(api.ascore("q", ["notice", "x"]))
    assert asyncio.run(rerank.ascore("q", ["notice", "x"])) == first
server.close()
print("ok")
"""


def test_repeated_asyncio_run_leaves_no_event_loop_noise() -> None:
    """A client of a finished loop, collected under the next one, must not try to close there."""
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", NOISY_LOOPS],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ok\n"
    assert "Event loop is closed" not in done.stderr
    assert "never retrieved" not in done.stderr
