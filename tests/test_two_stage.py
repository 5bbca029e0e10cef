"""Two-stage gating: kept pages cut into passages, scored and trimmed to their evidence."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import pytest

from tests.fake_servers import FakeRerankServer
from zerank_core.cache import CachedScorer
from zerank_core.criteria import Criterion
from zerank_core.errors import ConfigurationError, ScorerOutputError
from zerank_core.gate import PageGate
from zerank_core.loaders import Document
from zerank_core.multi import gate_documents
from zerank_core.passages import DEFAULT_PASSAGE_POLICY, PassagePolicy, split_passages
from zerank_core.results import GateResult, dump_result
from zerank_core.scorers.lexical import BM25Scorer
from zerank_core.scorers.server import RerankServerScorer
from zerank_core.select import SelectionPolicy

PAGES = [
    "Payment terms. The invoice is due within thirty days. Late payment bears interest at "
    "two percent a month.\nThe weather in the lobby is pleasant.",
    "Termination. Either party may terminate this agreement with thirty days notice. "
    "Parking is available for visitors on the second floor.",
    "The cafeteria serves lunch from noon. Visitors sign in at the front desk.",
    "",
    "Confidentiality. The recipient keeps confidential information secret for five years.",
]
CRITERIA = [
    Criterion("pay", "When is the invoice due and what interest does late payment bear?"),
    Criterion("end", "How can a party terminate the agreement?"),
]


def document() -> Document:
    return Document.from_texts(PAGES, source="contract.pdf")


def test_two_stage_scores_only_the_passages_of_kept_pages(
    fake_server: FakeRerankServer,
) -> None:
    scorer = RerankServerScorer(f"{fake_server.url}/v1/rerank")
    gate = PageGate(
        scorer,
        SelectionPolicy(top_k=1, order="original"),
        passages=PassagePolicy(threshold=0.5, top_k=1),
    )
    result = gate.run(document(), CRITERIA)
    pay, end = result.results
    assert pay.pages == (1,)
    assert end.pages == (2,)
    sent = [d for r in fake_server.requests for d in r.body["documents"]]
    non_empty = [p for p in PAGES if p.strip()]
    page_texts = [d for d in sent if d in non_empty]
    passage_texts = [d for d in sent if d not in non_empty]
    assert len(page_texts) == len(non_empty) * len(CRITERIA)
    kept_page_passages = [
        PAGES[n - 1][a:b] for n in (1, 2) for a, b in split_passages(PAGES[n - 1])
    ]
    assert sorted(passage_texts) == sorted(kept_page_passages)
    assert result.report.model_texts == len(sent)

    (evidence,) = pay.passages
    assert evidence.page == 1
    assert PAGES[0][evidence.start : evidence.end] == evidence.text
    # The short heading rides with the sentence after it.
    assert evidence.text == "Payment terms. The invoice is due within thirty days."
    assert pay.context == f"[page 1]\n{evidence.text}"
    assert pay.chars_kept == len(evidence.text)
    (termination,) = end.passages
    assert termination.text.startswith("Termination. Either party may terminate")
    assert result.report.chars_kept == pay.chars_kept + end.chars_kept
    assert result.passage_policy == PassagePolicy(threshold=0.5, top_k=1)


def test_passages_come_in_document_order_under_page_markers(
    fake_server: FakeRerankServer,
) -> None:
    scorer = RerankServerScorer(f"{fake_server.url}/v1/rerank")
    gate = PageGate(
        scorer,
        SelectionPolicy(top_k=2, order="score"),
        passages=PassagePolicy(threshold=0.3, top_k=2),
    )
    (result,) = gate.run(document(), [CRITERIA[0]]).results
    passages = result.passages
    assert [(p.page, p.start) for p in passages] == sorted((p.page, p.start) for p in passages)
    assert {p.page for p in passages} <= set(result.pages)
    for page in {p.page for p in passages}:
        assert result.context.count(f"[page {page}]") == 1
    for p in passages:
        assert p.text in result.context


def test_whole_pages_stay_the_default(fake_server: FakeRerankServer) -> None:
    scorer = RerankServerScorer(f"{fake_server.url}/v1/rerank")
    result = PageGate(scorer, SelectionPolicy(top_k=1)).run(document(), CRITERIA)
    assert all(r.passages == () for r in result.results)
    assert result.passage_policy is None
    assert (result.results[0].context or "").startswith("[page 1]\nPayment terms.")
    data = json.loads(dump_result(result))
    assert data["results"][0]["passages"] == []
    assert data["passage_policy"] is None


def test_a_kept_page_yields_its_best_passage_even_below_the_floor() -> None:
    gate = PageGate(
        BM25Scorer(),
        SelectionPolicy(top_k=1),
        passages=PassagePolicy(threshold=1.0, top_k=1),
    )
    # BM25 is max-scaled per call: only the single best passage scores 1.0.
    result = gate.run(document(), CRITERIA)
    for item in result.results:
        assert len(item.passages) == 1
        assert {p.page for p in item.passages} == set(item.pages)


def test_async_two_stage_matches_sync(fake_server: FakeRerankServer) -> None:
    scorer = RerankServerScorer(f"{fake_server.url}/v1/rerank")
    gate = PageGate(scorer, SelectionPolicy(top_k=2), passages=DEFAULT_PASSAGE_POLICY)
    sync = gate.run(document(), CRITERIA)
    asynchronous = asyncio.run(gate.arun(document(), CRITERIA))
    for a, b in zip(sync.results, asynchronous.results, strict=True):
        assert a.passages == b.passages
        assert a.context == b.context


def test_stage_two_uses_the_cache(fake_server: FakeRerankServer, tmp_path: object) -> None:
    path = f"{tmp_path}/scores.sqlite3"
    policy = SelectionPolicy(top_k=2)
    with CachedScorer(RerankServerScorer(f"{fake_server.url}/v1/rerank"), path) as scorer:
        first = PageGate(scorer, policy, passages=DEFAULT_PASSAGE_POLICY).run(document(), CRITERIA)
    served = fake_server.documents_served
    with CachedScorer(RerankServerScorer(f"{fake_server.url}/v1/rerank"), path) as scorer:
        again = PageGate(scorer, policy, passages=DEFAULT_PASSAGE_POLICY).run(document(), CRITERIA)
    assert fake_server.documents_served == served  # pages and passages all came from the cache
    assert again.report.cache_misses == 0
    assert (again.report.cache_hits or 0) > 0
    assert [r.passages for r in again.results] == [r.passages for r in first.results]


def test_a_missing_passage_score_is_an_error_naming_the_passage() -> None:
    class DropsAPassageScore(BM25Scorer):
        def score(
            self, query: str, texts: Sequence[str], *, instruction: str | None = None
        ) -> list[float]:
            scores = super().score(query, texts, instruction=instruction)
            return scores if set(texts) <= set(PAGES) else scores[:-1]

    gate = PageGate(DropsAPassageScore(), SelectionPolicy(top_k=2), passages=PassagePolicy())
    with pytest.raises(ScorerOutputError, match=r"scores for \d+ passages \(criterion 'pay'\)"):
        gate.run(document(), [CRITERIA[0]])


def test_result_json_carries_passages_with_offsets(fake_server: FakeRerankServer) -> None:
    scorer = RerankServerScorer(f"{fake_server.url}/v1/rerank")
    gate = PageGate(scorer, SelectionPolicy(top_k=1), passages=PassagePolicy(top_k=1))
    result = gate.run(document(), CRITERIA)
    data = json.loads(dump_result(result))
    entry = data["results"][0]["passages"][0]
    assert set(entry) == {"page", "start", "end", "score", "text"}
    assert PAGES[entry["page"] - 1][entry["start"] : entry["end"]] == entry["text"]
    assert data["passage_policy"]["top_k"] == 1
    assert GateResult.model_validate_json(dump_result(result)) == result
    hidden = json.loads(dump_result(result, include_text=False))["results"][0]["passages"][0]
    assert hidden["text"] == ""
    assert hidden["start"] == entry["start"]


def test_many_documents_with_passages_match_one_run_each(fake_server: FakeRerankServer) -> None:
    scorer = RerankServerScorer(f"{fake_server.url}/v1/rerank")
    gate = PageGate(scorer, SelectionPolicy(top_k=1), passages=PassagePolicy(top_k=1))
    docs = [document(), Document.from_texts(list(reversed(PAGES)), source="other.pdf")]
    job = gate_documents(gate, docs, CRITERIA)
    for got, doc in zip(job.results, docs, strict=True):
        want = gate.run(doc, CRITERIA)
        assert [r.passages for r in got.results] == [r.passages for r in want.results]


def test_the_gate_refuses_a_passage_policy_of_the_wrong_type() -> None:
    with pytest.raises(ConfigurationError, match="passages must be a PassagePolicy or None"):
        PageGate(BM25Scorer(), passages={"top_k": 1})  # type: ignore[arg-type]
