"""Lexical baseline, backend choice, the reference-pair check and the classifier."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from tests.fake_servers import FakeRerankServer
from zerank_core import (
    ConfigurationError,
    InvalidResponseError,
    LabelClassifier,
    Scale,
    check_scorer,
    scorer_from_env,
)
from zerank_core.scorers import BM25Scorer, RerankServerScorer, Scorer, ZeroEntropyScorer

CHUNKS = [
    "The tenant must give sixty days written notice before terminating the lease.",
    "Rent is due on the first day of each month.",
    "Pets are not allowed without the landlord's written consent.",
    "",
]


def test_bm25_is_uncalibrated_and_max_scaled() -> None:
    scorer = BM25Scorer()
    scores = scorer.score("notice before terminating the lease", CHUNKS)
    assert scorer.scale is Scale.UNCALIBRATED
    assert scores[0] == 1.0
    assert scores[3] == 0.0
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert scores[0] > scores[1]


def test_bm25_raw_scores_are_unscaled_and_async_matches() -> None:
    scorer = BM25Scorer(normalize=False)
    raw = scorer.score("written consent", CHUNKS)
    scaled = BM25Scorer().score("written consent", CHUNKS)
    assert scaled == pytest.approx([r / max(raw) for r in raw])
    assert max(raw) != 1.0

    assert asyncio.run(scorer.ascore("written consent", CHUNKS)) == raw


def test_bm25_query_without_terms_scores_zero() -> None:
    assert BM25Scorer().score("the of and", CHUNKS) == [0.0, 0.0, 0.0, 0.0]


def test_bm25_rejects_non_strings() -> None:
    with pytest.raises(ConfigurationError, match=r"texts\[1\]"):
        BM25Scorer().score("q", ["a", None])  # type: ignore[list-item]
    with pytest.raises(ConfigurationError, match="single str"):
        BM25Scorer().score("q", "a document")


def test_every_backend_meets_the_protocol(fake_server: FakeRerankServer) -> None:
    backends = [
        BM25Scorer(),
        RerankServerScorer(f"{fake_server.url}/v1/rerank"),
        ZeroEntropyScorer(api_key="k", base_url=f"{fake_server.url}/v1"),
    ]
    for backend in backends:
        assert isinstance(backend, Scorer)
        assert backend.model
        assert isinstance(backend.scale, Scale)


def test_backend_choice_follows_the_environment(
    fake_server: FakeRerankServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert scorer_from_env().name == "lexical"
    monkeypatch.setenv("ZERANK_SERVER_URL", f"{fake_server.url}/v1/rerank")
    choice = scorer_from_env()
    assert choice.name == "server"
    assert fake_server.url in choice.reason
    monkeypatch.setenv("ZEROENTROPY_API_KEY", "k")
    assert scorer_from_env().name == "hosted"
    assert scorer_from_env("lexical").name == "lexical"


def test_backend_choice_errors_name_the_options(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError) as info:
        scorer_from_env(allow_lexical=False)
    for option in ("ZEROENTROPY_API_KEY", "ZERANK_SERVER_URL", "ZERANK_LOCAL_MODEL"):
        assert option in str(info.value)
    with pytest.raises(ConfigurationError, match="gpu"):
        scorer_from_env("gpu")
    with pytest.raises(ConfigurationError, match="ZERANK_SERVER_URL"):
        scorer_from_env("server")


def test_reference_pair_check_catches_a_misconfigured_server(
    fake_server: FakeRerankServer,
) -> None:
    fake_server.returns = "logit"
    # A server returning logits, read as if it returned probabilities: every
    # score is out of [0, 1] and the response is rejected outright.
    with pytest.raises(InvalidResponseError, match="outside"):
        check_scorer(RerankServerScorer(f"{fake_server.url}/v1/rerank"))

    class SigmoidWithoutTemperature:
        """Applies sigmoid(x) where zerank needs sigmoid(x / 5): a common mistake."""

        model = "sigmoid-without-temperature"
        scale = Scale.PROBABILITY
        usage = None

        def score(self, query: str, texts: Sequence[str], *, instruction: str | None = None):
            return [0.995 if t == "4" else 0.011 for t in texts]

        async def ascore(self, query: str, texts: Sequence[str], *, instruction=None):
            return self.score(query, texts)

    with pytest.raises(ConfigurationError, match=r"expected ~0\.75, got 0\.995"):
        check_scorer(SigmoidWithoutTemperature())


class CountingScorer:
    """Keyword-overlap scorer that counts its calls (a real scorer, not a mock)."""

    model = "counting"
    scale = Scale.PROBABILITY
    usage = None

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def score(self, query: str, texts: Sequence[str], *, instruction: str | None = None):
        self.calls.append((query, len(texts)))
        words = set(query.lower().split())
        return [min(1.0, len(words & set(t.lower().split())) / 2) for t in texts]

    async def ascore(self, query: str, texts: Sequence[str], *, instruction: str | None = None):
        return self.score(query, texts, instruction=instruction)


LABELS = {
    "billing": "invoice refund charge payment",
    "technical": "error crash bug login",
    "sales": "pricing quote demo plan",
}
MESSAGES = [
    "I was charged twice, please refund the invoice",
    "the app shows an error and I cannot login",
    "hello there",
    "refund the charge for the bug that made it crash",
]


def test_classifier_costs_one_call_per_label() -> None:
    scorer = CountingScorer()
    results = LabelClassifier(scorer, LABELS, default="other").classify(MESSAGES)
    assert len(scorer.calls) == 3
    assert all(n == 4 for _, n in scorer.calls)
    assert [r.label for r in results] == ["billing", "technical", "other", "billing"]
    assert results[2].is_default
    assert list(results[0].probabilities) == list(LABELS)


async def test_multi_label_and_per_label_thresholds() -> None:
    scorer = CountingScorer()
    classifier = LabelClassifier(
        scorer, LABELS, multi_label=True, threshold={"technical": 0.5, "billing": 0.9}
    )
    results = await classifier.aclassify(MESSAGES)
    assert results[3].labels == ("billing", "technical")
    assert results[2].labels == ()
    assert results[2].label is None


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"labels": {}}, "at least one"),
        ({"labels": {"a": " "}}, "'a'"),
        ({"labels": {"a": "x"}, "threshold": 2.0}, "2.0"),
        ({"labels": {"a": "x"}, "threshold": {"b": 0.5}}, "'b'"),
    ],
)
def test_classifier_validation(kwargs: dict, needle: str) -> None:
    with pytest.raises(ConfigurationError, match=needle):
        LabelClassifier(CountingScorer(), **kwargs)
