"""An input gets the same probabilities and labels alone or in any batch, on every backend.

A property test over the backends that run offline: the BM25 baseline, a
tiny zerank-shaped model in-process, a rerank server and the hosted API's SDK
against a local server. It classifies random batches and each of their inputs
alone, through the core classifier and through LangChain's ``invoke``,
``batch`` and ``abatch``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from langchain_zerank import ZeRankClassifier
from tests.fake_servers import FakeRerankServer
from zerank_core.classify import Classification, LabelClassifier
from zerank_core.errors import ConfigurationError
from zerank_core.scorers.base import Scorer
from zerank_core.scorers.lexical import BM25Scorer
from zerank_core.scorers.server import RerankServerScorer
from zerank_core.scorers.zeroentropy import ZeroEntropyScorer

LABELS = {
    "capex": "capital expenditure on plants and equipment",
    "geography": "the capital city of a country",
    "billing": "invoices, charges or refunds",
}
WORDS = [
    "capital",
    "expenditure",
    "equipment",
    "city",
    "country",
    "France",
    "invoices",
    "charges",
    "refunds",
    "what",
    "is",
    "the",
    "of",
    "weather",
    "plants",
    "rose",
]
texts = st.lists(st.sampled_from(WORDS), min_size=1, max_size=8).map(" ".join)
batches = st.lists(texts, min_size=1, max_size=6)


@pytest.fixture(scope="module", params=["lexical", "server", "hosted"])
def scorer(request: pytest.FixtureRequest) -> Iterator[Scorer]:
    if request.param == "lexical":
        yield BM25Scorer()
        return
    server = FakeRerankServer(record_bodies=False)
    try:
        if request.param == "server":
            yield RerankServerScorer(f"{server.url}/v1/rerank")
        else:
            yield ZeroEntropyScorer(api_key="k", base_url=f"{server.url}/v1")
    finally:
        server.close()


@pytest.fixture(scope="module")
def local_scorer(tmp_path_factory: pytest.TempPathFactory) -> Scorer:
    pytest.importorskip("sentence_transformers.cross_encoder.modules")
    from tests.tiny_zerank import build_tiny_zerank
    from zerank_core.scorers.local import LocalScorer

    folder: Path = build_tiny_zerank(tmp_path_factory.mktemp("tiny-zerank"))
    return LocalScorer(str(folder))


def same(alone: Classification, in_batch: Classification, tolerance: float = 0.0) -> None:
    assert alone.labels == in_batch.labels
    assert alone.is_default == in_batch.is_default
    assert list(alone.probabilities) == list(in_batch.probabilities)
    for name, p in alone.probabilities.items():
        assert in_batch.probabilities[name] == pytest.approx(p, abs=tolerance, rel=0)


def check_core(
    scorer: Scorer, batch: list[str], multi_label: bool, threshold: float, tolerance: float
) -> None:
    classifier = LabelClassifier(
        scorer, LABELS, threshold=threshold, multi_label=multi_label, default="other"
    )
    together = classifier.classify(batch)
    reversed_batch = classifier.classify(batch[::-1])[::-1]
    awaited = asyncio.run(classifier.aclassify(batch))
    for index, text in enumerate(batch):
        (alone,) = classifier.classify([text])
        same(alone, together[index], tolerance)
        same(alone, reversed_batch[index], tolerance)
        same(alone, awaited[index], tolerance)


def check_langchain(scorer: Scorer, batch: list[str], tolerance: float) -> None:
    router = ZeRankClassifier(scorer=scorer, labels=LABELS, threshold=0.6, default="other")
    together = router.batch(batch)
    awaited = asyncio.run(router.abatch(batch))
    for index, text in enumerate(batch):
        alone = router.invoke(text)
        same(alone, together[index], tolerance)
        same(alone, awaited[index], tolerance)


OPTIONS = {
    "batch": batches,
    "multi_label": st.booleans(),
    "threshold": st.sampled_from([0.3, 0.6, 0.9]),
}
QUICK = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# The in-process model is the slow one on a CPU: fewer examples.
FEW = settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# It pads a batch on the left, which moves its logits by ~1e-6.
LOCAL_TOLERANCE = 1e-5


@QUICK
@given(**OPTIONS)
def test_core_classifier_alone_equals_in_any_batch(
    scorer: Scorer, batch: list[str], multi_label: bool, threshold: float
) -> None:
    check_core(scorer, batch, multi_label, threshold, 0.0)


@QUICK
@given(batch=batches)
def test_langchain_invoke_equals_batch(scorer: Scorer, batch: list[str]) -> None:
    check_langchain(scorer, batch, 0.0)


@FEW
@given(**OPTIONS)
def test_local_model_alone_equals_in_any_batch(
    local_scorer: Scorer, batch: list[str], multi_label: bool, threshold: float
) -> None:
    check_core(local_scorer, batch, multi_label, threshold, LOCAL_TOLERANCE)
    check_langchain(local_scorer, batch, LOCAL_TOLERANCE)


def test_bm25_routes_a_question_the_same_alone_and_in_a_batch() -> None:
    router = ZeRankClassifier(model="bm25", labels=LABELS, threshold=0.6, default="other")
    question = "What is the capital of France?"
    alone = router.invoke(question)
    batch = router.batch(
        [question, "capital expenditure on equipment rose", "refunds for wrong charges"]
    )
    assert alone == batch[0]
    assert alone.label == "geography"
    assert [r.label for r in batch[1:]] == ["capex", "billing"]


def test_bm25_best_label_scores_one_and_unrelated_zero() -> None:
    (result,) = LabelClassifier(BM25Scorer(), LABELS).classify(["refunds for two charges"])
    assert result.probabilities["billing"] == 1.0
    assert result.probabilities["geography"] == 0.0


def test_bm25_refuses_a_blank_input_naming_it() -> None:
    classifier = LabelClassifier(BM25Scorer(), LABELS)
    with pytest.raises(ConfigurationError, match=r"input 1 is blank"):
        classifier.classify(["capital city", "   "])
