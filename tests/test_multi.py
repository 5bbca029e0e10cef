"""Many documents as one job: same results as one gate run per document, shared batches."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence

import pytest

from tests.tiny_zerank import build_tiny_zerank, sample_text
from zerank_core.criteria import Criterion
from zerank_core.errors import ConfigurationError, DocumentError, InvalidResponseError
from zerank_core.gate import PageGate
from zerank_core.loaders import Document
from zerank_core.multi import gate_documents
from zerank_core.results import dump_result
from zerank_core.scorers.base import Scale
from zerank_core.scorers.lexical import BM25Scorer
from zerank_core.select import SelectionPolicy

CRITERIA = [
    Criterion("renewal", "When is the renewal deadline?"),
    Criterion("pay", "Who pays the invoice?", instruction="Prefer amounts."),
    Criterion("loose", "Is there an insurance policy?", threshold=0.1),
]
BOILERPLATE = "This page is intentionally left blank except for this notice."


def documents() -> list[Document]:
    rng = random.Random(4)
    docs = []
    for number in range(3):
        pages = [sample_text(rng, rng.randint(5, 40)) for _ in range(4 + number)]
        pages.insert(1, BOILERPLATE)  # the same text in every document: scored once
        pages.append("")  # an empty page keeps its number and is not scored
        docs.append(Document.from_texts(pages, source=f"doc-{number}.pdf"))
    return docs


@pytest.fixture(scope="module")
def local_scorer(tmp_path_factory: pytest.TempPathFactory) -> object:
    pytest.importorskip("sentence_transformers.cross_encoder.modules")
    from zerank_core.scorers.local import LocalScorer

    return LocalScorer(str(build_tiny_zerank(tmp_path_factory.mktemp("tiny-zerank-multi"))))


def assert_same(got: Sequence[object], want: Sequence[object]) -> None:
    for a, b in zip(got, want, strict=True):
        assert a.document == b.document  # type: ignore[attr-defined]
        for ra, rb in zip(a.results, b.results, strict=True):  # type: ignore[attr-defined]
            assert ra.criterion == rb.criterion
            assert ra.pages == rb.pages
            assert dict(ra.scores) == pytest.approx(dict(rb.scores), abs=1e-6)
        assert a.report.chars_kept == b.report.chars_kept  # type: ignore[attr-defined]


def test_many_documents_give_what_one_run_per_document_gives(local_scorer: object) -> None:
    policy = SelectionPolicy(threshold=0.3, top_k=2, order="original")
    gate = PageGate(local_scorer, policy, instruction="Read carefully.")  # type: ignore[arg-type]
    docs = documents()
    want = [gate.run(d, CRITERIA) for d in docs]
    batches = local_scorer.stats  # type: ignore[attr-defined]

    job = gate_documents(gate, docs, CRITERIA)

    assert_same(job.results, want)
    summary = job.summary
    assert summary.documents == 3
    assert summary.criteria == 3
    assert summary.pages == sum(len(d.pages) for d in docs)
    assert summary.empty_pages == 3
    non_empty = sum(len(d.pages) - 1 for d in docs)
    assert summary.unique_texts == non_empty - 2  # the shared page counted once
    assert summary.shared_batches
    # The scorer saw the whole job at once: one request per criterion, each page text once.
    assert summary.model_requests == 3
    assert summary.model_texts == 3 * summary.unique_texts
    assert summary.model_tokens is not None
    after = local_scorer.stats  # type: ignore[attr-defined]
    run_batches = batches.equal_length_batches + batches.padded_batches
    job_batches = after.equal_length_batches + after.padded_batches - run_batches
    assert job_batches < run_batches  # per-document runs needed more, smaller batches
    # Each document's report counts its own page scores; the job's requests are in the summary.
    for result, doc in zip(job.results, docs, strict=True):
        assert result.report.model_texts == 3 * (len(doc.pages) - 1)
        assert result.report.model_requests == 0
    data = json.loads(dump_result(job, include_text=False))
    assert [d["document"]["source"] for d in data["results"]] == [d.source for d in docs]
    assert data["summary"]["timings"]["documents_per_second"] > 0


def test_uncalibrated_scores_are_computed_per_document() -> None:
    # BM25 normalises over the texts of a call: joint scoring would change the scores.
    scorer = BM25Scorer()
    assert scorer.scale is Scale.UNCALIBRATED
    gate = PageGate(scorer)
    docs = documents()
    job = gate_documents(gate, docs, CRITERIA)
    assert not job.summary.shared_batches
    assert_same(job.results, [gate.run(d, CRITERIA) for d in docs])


class ShortScorer:
    """Answers one score too few: the job must fail, not read the gap as 0.0."""

    scale = Scale.PROBABILITY
    model = "short"
    usage = None

    def score(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        return [0.5] * (len(texts) - 1)

    async def ascore(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        return self.score(query, texts, instruction=instruction)


def test_bad_input_and_bad_scores_are_errors() -> None:
    gate = PageGate(ShortScorer())  # type: ignore[arg-type]
    docs = documents()
    with pytest.raises(InvalidResponseError, match=r"returned .* scores for"):
        gate_documents(gate, docs, CRITERIA)
    blank = Document.from_texts(["", "  "], source="scan.pdf")
    with pytest.raises(DocumentError, match=r"scan\.pdf has no page with text"):
        gate_documents(PageGate(BM25Scorer()), [*docs, blank], CRITERIA)
    with pytest.raises(ConfigurationError, match="at least one Document"):
        gate_documents(gate, [], CRITERIA)
    with pytest.raises(ConfigurationError, match=r"documents\[1\] must be a Document, got str"):
        gate_documents(gate, [docs[0], "doc.pdf"], CRITERIA)  # type: ignore[list-item]
    with pytest.raises(ConfigurationError, match="sequence of Document, got Document"):
        gate_documents(gate, docs[0], CRITERIA)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="criterion ids must be unique"):
        gate_documents(gate, docs, [CRITERIA[0], CRITERIA[0]])
