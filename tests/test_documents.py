"""Pages × criteria: loading documents and criteria, selection per criterion, the report."""

from __future__ import annotations

import json
import math
import re
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest
from fpdf import FPDF

from tests.extras import needs_matplotlib
from tests.fake_servers import FakeRerankServer
from zerank_core import (
    DocumentError,
    InvalidResponseError,
    MissingDependencyError,
    SelectionPolicy,
)
from zerank_core.cache import CachedScorer
from zerank_core.documents import (
    DEFAULT_PAGE_POLICY,
    Criterion,
    Document,
    PageGate,
    load_criteria,
    load_document,
    parse_criteria,
    plot_heatmap,
)
from zerank_core.errors import ConfigurationError
from zerank_core.results import dump_result
from zerank_core.scorers.base import Scale, Usage, UsageMeter, query_with_instruction
from zerank_core.scorers.lexical import BM25Scorer
from zerank_core.scorers.server import RerankServerScorer

COOKBOOK = Path(__file__).resolve().parent.parent / "cookbook" / "prior_auth"


class KeywordScorer:
    """A deterministic calibrated-looking scorer: 0.9 if the text holds the
    query's first word, else 0.1. It records every call it receives."""

    model = "keyword-test"
    scale = Scale.PROBABILITY

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[str, ...], str | None]] = []
        self._lock = threading.Lock()
        self._meter = UsageMeter()

    @property
    def usage(self) -> Usage:
        return self._meter.usage

    def score(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        with self._lock:
            self.calls.append((query, tuple(texts), instruction))
        self._meter.add(texts=len(texts), total_tokens=10 * len(texts))
        word = query.split()[0].lower()
        return [0.9 if word in text.lower() else 0.1 for text in texts]

    async def ascore(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        return self.score(query, texts, instruction=instruction)


class FixedScorer:
    """Returns the scores it was built with, whatever the query."""

    model = "fixed"
    scale = Scale.PROBABILITY
    usage = None

    def __init__(self, scores: Sequence[float]) -> None:
        self.scores = list(scores)

    def score(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        return list(self.scores)

    async def ascore(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        return list(self.scores)


def write_pdf(path: Path, pages: Sequence[str], *, user_password: str | None = None) -> Path:
    pdf = FPDF()
    pdf.set_font("Helvetica", size=11)
    for text in pages:
        pdf.add_page()
        if text:
            pdf.multi_cell(0, 6, text)
    if user_password is not None:
        pdf.set_encryption(owner_password="owner", user_password=user_password)
    pdf.output(str(path))
    return path


# --- loading documents -------------------------------------------------------


def test_pdf_pages_come_back_in_order_with_empty_pages_marked(tmp_path: Path) -> None:
    texts = [
        "Rheumatology consult: methotrexate 20 mg weekly.",
        "",
        "QuantiFERON TB Gold Plus negative.",
        "Chest radiograph clear.",
    ]
    document = load_document(write_pdf(tmp_path / "packet.pdf", texts))
    assert [p.number for p in document.pages] == [1, 2, 3, 4]
    assert "methotrexate 20 mg weekly" in document.pages[0].text
    assert "QuantiFERON" in document.pages[2].text
    assert document.empty_pages == (2,)


def test_corrupt_pdf_is_a_clear_document_error(tmp_path: Path) -> None:
    good = write_pdf(tmp_path / "good.pdf", ["page one", "page two"]).read_bytes()
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(good[: len(good) // 3])
    with pytest.raises(DocumentError, match=r"broken\.pdf is not a readable PDF"):
        load_document(broken)
    garbage = tmp_path / "garbage.pdf"
    garbage.write_bytes(b"this is not a pdf at all\n" * 20)
    with pytest.raises(DocumentError, match=r"garbage\.pdf is not a readable PDF"):
        load_document(garbage)


def test_password_protected_pdf_is_a_clear_document_error(tmp_path: Path) -> None:
    path = write_pdf(tmp_path / "locked.pdf", ["secret page"], user_password="s3cret")
    with pytest.raises(DocumentError, match=r"locked\.pdf is encrypted"):
        load_document(path)


def test_form_feed_text_splits_pages_and_ignores_the_final_form_feed(tmp_path: Path) -> None:
    path = tmp_path / "packet.txt"
    path.write_text("first page\n\fsecond page\n\f   \n\ffourth page\n\f", encoding="utf-8")
    document = load_document(path)
    assert [p.text.strip() for p in document.pages] == [
        "first page",
        "second page",
        "",
        "fourth page",
    ]
    assert document.empty_pages == (3,)


def test_folder_pages_follow_natural_name_order(tmp_path: Path) -> None:
    folder = tmp_path / "pages"
    folder.mkdir()
    for number in (1, 2, 10):
        (folder / f"page{number}.txt").write_text(f"text of page {number}", encoding="utf-8")
    (folder / ".hidden.txt").write_text("never read", encoding="utf-8")
    (folder / "scan.png").write_bytes(b"\x89PNG")
    document = load_document(folder)
    assert [p.text for p in document.pages] == [
        "text of page 1",
        "text of page 2",
        "text of page 10",
    ]


def test_json_pages_as_strings_or_objects(tmp_path: Path) -> None:
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(["a", "b"]), encoding="utf-8")
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"pages": [{"text": "a"}, {"text": "b"}]}), encoding="utf-8")
    assert [p.text for p in load_document(plain).pages] == ["a", "b"]
    assert [p.text for p in load_document(wrapped).pages] == ["a", "b"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([1, 2]), encoding="utf-8")
    with pytest.raises(DocumentError, match="page 1 must be a string"):
        load_document(bad)


def test_unreadable_inputs_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(DocumentError, match=r"missing\.txt does not exist"):
        load_document(tmp_path / "missing.txt")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DocumentError, match=r"latin\.txt is not UTF-8"):
        load_document(latin)
    empty_folder = tmp_path / "empty"
    empty_folder.mkdir()
    with pytest.raises(DocumentError, match=r"holds no \.txt or \.md files"):
        load_document(empty_folder)


def test_bundled_packet_loads() -> None:
    document = load_document(COOKBOOK / "packet.txt")
    assert 30 <= len(document.pages) <= 45
    assert document.empty_pages == (24,)
    criteria = load_criteria(COOKBOOK / "criteria.yaml")
    assert 8 <= len(criteria) <= 12
    assert all(c.instruction for c in criteria)
    assert {c.id: c.threshold for c in criteria}["TB"] == 0.6


# --- loading criteria ---------------------------------------------------------


def test_criteria_from_text_yaml_and_json(tmp_path: Path) -> None:
    text = tmp_path / "criteria.txt"
    text.write_text("# coverage\nNegative TB test\n\nMethotrexate trial\n", encoding="utf-8")
    assert [(c.id, c.text) for c in load_criteria(text)] == [
        ("C1", "Negative TB test"),
        ("C2", "Methotrexate trial"),
    ]
    yaml_file = tmp_path / "criteria.yaml"
    yaml_file.write_text(
        "instruction: judge the page\n"
        "criteria:\n"
        "  - Negative TB test\n"
        "  - id: MTX\n"
        "    text: Methotrexate trial\n"
        "    threshold: 0.7\n"
        "    instruction: own instruction\n",
        encoding="utf-8",
    )
    loaded = load_criteria(yaml_file)
    assert loaded == [
        Criterion("C1", "Negative TB test", instruction="judge the page"),
        Criterion("MTX", "Methotrexate trial", instruction="own instruction", threshold=0.7),
    ]
    json_file = tmp_path / "criteria.json"
    json_file.write_text(json.dumps([{"id": "A", "text": "x"}]), encoding="utf-8")
    assert load_criteria(json_file) == [Criterion("A", "x")]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "non-empty list"),
        ([{"text": "a", "weight": 2}], r"unknown keys \['weight'\]"),
        ([{"id": "A", "text": "a"}, {"id": "A", "text": "b"}], "'A' appears twice"),
        ([{"text": "a", "threshold": 1.5}], r"threshold must be in \[0, 1\], got 1.5"),
        ([{"text": "  "}], "needs a non-empty text"),
        ({"rules": []}, "got keys"),
    ],
)
def test_bad_criteria_name_the_problem(data: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_criteria(data)


# --- the gate -----------------------------------------------------------------

PAGES = [
    "Cover sheet for the prior authorization request.",
    "Office note: methotrexate 20 mg weekly for 16 weeks, still active disease.",
    "",
    "Lab report: QuantiFERON TB negative.",
    "Medication list: methotrexate, folic acid, prednisone.",
    "Billing summary.",
]
CRITERIA = [
    Criterion("MTX", "methotrexate trial of 12 weeks"),
    Criterion("TB", "QuantiFERON or skin test negative"),
    Criterion("HBV", "hepatitis B surface antigen result"),
]


def test_report_arithmetic_and_per_criterion_pages() -> None:
    scorer = KeywordScorer()
    document = Document.from_texts(PAGES, "packet")
    result = PageGate(scorer, price_per_million_tokens=2.0).run(document, CRITERIA)
    by_id = {r.criterion.id: r for r in result.results}
    assert by_id["MTX"].pages == (2, 5)
    assert by_id["TB"].pages == (4,)
    assert by_id["HBV"].pages == ()

    report = result.report
    scored = [p for p in PAGES if p.strip()]
    chars_total = sum(len(p) for p in scored)
    assert report.pages == 6
    assert report.empty_pages == (3,)
    assert report.criteria == 3
    assert report.chars_total == chars_total
    assert report.chars_full == 3 * chars_total
    assert report.chars_kept == len(PAGES[1]) + len(PAGES[4]) + len(PAGES[3])
    assert report.compression_ratio == pytest.approx(report.chars_full / report.chars_kept)
    assert report.kept_fraction == pytest.approx(report.chars_kept / report.chars_full)
    assert report.tokens_kept_estimate == sum(-(-len(PAGES[i]) // 4) for i in (1, 4, 3))
    assert report.pages_kept == {"MTX": 2, "TB": 1, "HBV": 0}
    assert report.model_requests == 3
    assert report.model_texts == 15
    assert report.model_tokens == 150
    assert report.estimated_cost_usd == pytest.approx(150 * 2.0 / 1_000_000)
    assert report.cache_hits is None


def test_empty_pages_are_not_sent_and_have_no_score() -> None:
    scorer = KeywordScorer()
    result = PageGate(scorer).run(Document.from_texts(PAGES), CRITERIA)
    for _, texts, _ in scorer.calls:
        assert "" not in texts
        assert len(texts) == 5
    for row in result.matrix:
        assert row[2] is None
        assert all(isinstance(v, float) for i, v in enumerate(row) if i != 2)
    assert 3 not in result.results[0].scores


def test_criterion_with_no_evidence_is_reported_not_silently_empty() -> None:
    result = PageGate(KeywordScorer()).run(Document.from_texts(PAGES), CRITERIA)
    assert result.report.no_evidence == ("HBV",)
    hbv = result.results[2]
    assert hbv.no_evidence
    assert hbv.context == ""
    data = json.loads(dump_result(result))
    assert data["report"]["no_evidence"] == ["HBV"]
    assert data["results"][2]["no_evidence"] is True


def test_min_keep_pages_do_not_hide_missing_evidence() -> None:
    policy = SelectionPolicy(threshold=0.5, min_keep=1, order="original")
    result = PageGate(KeywordScorer(), policy).run(Document.from_texts(PAGES), CRITERIA)
    hbv = result.results[2]
    assert len(hbv.pages) == 1
    assert hbv.forced_pages == hbv.pages
    assert result.report.no_evidence == ("HBV",)


def test_original_order_is_the_default_and_score_order_is_honoured() -> None:
    scores = [0.2, 0.9, 0.3, 0.95, 0.1, 0.8]
    document = Document.from_texts([f"page {i}" for i in range(1, 7)])
    criteria = [Criterion("Q", "anything")]
    original = PageGate(FixedScorer(scores)).run(document, criteria).results[0]
    assert original.pages == (2, 4, 6)
    ranked = PageGate(FixedScorer(scores), SelectionPolicy(threshold=0.5, top_k=3))
    assert ranked.run(document, criteria).results[0].pages == (4, 2, 6)


def test_neighbors_add_surrounding_pages_and_context_marks_every_page() -> None:
    scores = [0.1, 0.1, 0.2, 0.9, 0.1, 0.1, 0.1]
    document = Document.from_texts([f"text {i}" for i in range(1, 8)])
    policy = SelectionPolicy(threshold=0.5, top_k=2, neighbors=1, order="original")
    result = PageGate(FixedScorer(scores), policy).run(document, [Criterion("Q", "q")])
    item = result.results[0]
    assert item.pages == (3, 4, 5)
    assert item.evidence_pages == (4,)
    assert item.neighbor_pages == (3, 5)
    assert item.context == "[page 3]\ntext 3\n\n[page 4]\ntext 4\n\n[page 5]\ntext 5"
    assert re.findall(r"\[page (\d+)\]", item.context) == ["3", "4", "5"]


def test_neighbors_skip_empty_pages() -> None:
    document = Document.from_texts(["a", "", "b", "c"])
    scores = [0.1, 0.9, 0.1]  # pages 1, 3, 4 (page 2 is empty and unscored)
    policy = SelectionPolicy(threshold=0.5, neighbors=1, order="original")
    item = PageGate(FixedScorer(scores), policy).run(document, [Criterion("Q", "q")]).results[0]
    assert item.pages == (1, 3, 4)


def test_criterion_threshold_and_instruction_override_the_gate() -> None:
    scores = [0.55, 0.65, 0.75]
    document = Document.from_texts(["a", "b", "c"])
    criteria = [
        Criterion("plain", "x"),
        Criterion("strict", "y", threshold=0.7, instruction="only lab reports"),
    ]
    policy = SelectionPolicy(threshold=0.5, order="original")
    result = PageGate(FixedScorer(scores), policy, instruction="gate-wide").run(document, criteria)
    assert result.results[0].pages == (1, 2, 3)
    assert result.results[1].pages == (3,)

    recorder = KeywordScorer()
    PageGate(recorder, instruction="gate-wide").run(document, criteria)
    assert sorted(call[2] or "" for call in recorder.calls) == ["gate-wide", "only lab reports"]


def test_instruction_reaches_a_real_server_by_zeranks_convention(
    fake_server: FakeRerankServer,
) -> None:
    scorer = RerankServerScorer(f"{fake_server.url}/v1/rerank")
    criteria = [Criterion("TB", "QuantiFERON negative", instruction="lab pages only")]
    PageGate(scorer).run(Document.from_texts(PAGES), criteria)
    queries = {r.body["query"] for r in fake_server.requests}
    assert queries == {query_with_instruction("QuantiFERON negative", "lab pages only")}


def test_inputs_are_not_mutated() -> None:
    criteria = list(CRITERIA)
    pages = list(PAGES)
    document = Document.from_texts(pages)
    PageGate(KeywordScorer()).run(document, criteria)
    assert criteria == CRITERIA
    assert [p.text for p in document.pages] == PAGES


@pytest.mark.parametrize("bad", [math.nan, None, "0.5"])
def test_a_missing_or_invalid_score_is_an_error_not_zero(bad: object) -> None:
    scorer = FixedScorer([0.9, bad, 0.1])  # type: ignore[list-item]
    with pytest.raises(InvalidResponseError, match=r"for page 2 \(criterion 'Q'\)"):
        PageGate(scorer).run(Document.from_texts(["a", "b", "c"]), [Criterion("Q", "q")])


def test_short_score_list_is_an_error() -> None:
    with pytest.raises(InvalidResponseError, match="2 scores for 3 pages"):
        PageGate(FixedScorer([0.9, 0.1])).run(
            Document.from_texts(["a", "b", "c"]), [Criterion("Q", "q")]
        )


def test_bad_gate_arguments_are_named() -> None:
    with pytest.raises(ConfigurationError, match="max_concurrency must be >= 1, got 0"):
        PageGate(KeywordScorer(), max_concurrency=0)
    with pytest.raises(ConfigurationError, match="at least one Criterion"):
        PageGate(KeywordScorer()).run(Document.from_texts(["a"]), [])
    with pytest.raises(DocumentError, match="no page with text"):
        PageGate(KeywordScorer()).run(Document.from_texts(["", " \n"]), CRITERIA)
    with pytest.raises(ConfigurationError, match=r"repeated: \['A'\]"):
        PageGate(KeywordScorer()).run(
            Document.from_texts(["a"]), [Criterion("A", "x"), Criterion("A", "y")]
        )


async def test_async_run_matches_sync_run_through_a_real_server(
    fake_server: FakeRerankServer,
) -> None:
    url = f"{fake_server.url}/v1/rerank"
    document = load_document(COOKBOOK / "packet.txt")
    criteria = load_criteria(COOKBOOK / "criteria.yaml")
    sync = PageGate(RerankServerScorer(url, max_batch_size=8)).run(document, criteria)
    sync_requests = len(fake_server.requests)
    asynchronous = await PageGate(RerankServerScorer(url, max_batch_size=8)).arun(
        document, criteria
    )
    assert asynchronous.matrix == sync.matrix
    assert [r.pages for r in asynchronous.results] == [r.pages for r in sync.results]
    # 40 non-empty pages in batches of 8 -> 5 requests per criterion.
    assert sync_requests == 5 * len(criteria)
    assert asynchronous.report.model_requests == 5 * len(criteria)
    assert asynchronous.report.model_tokens is not None


def test_bm25_default_policy_keeps_a_few_pages_per_criterion_on_the_packet() -> None:
    document = load_document(COOKBOOK / "packet.txt")
    criteria = load_criteria(COOKBOOK / "criteria.yaml")
    result = PageGate(BM25Scorer()).run(document, criteria)
    assert result.policy == DEFAULT_PAGE_POLICY
    for item in result.results:
        assert 1 <= len(item.pages) <= 3
    by_id = {r.criterion.id: r.pages for r in result.results}
    assert 18 in by_id["TB"]  # the QuantiFERON report
    assert 34 in by_id["PRESCRIBER"]  # the board-certification attestation
    assert result.report.compression_ratio is not None
    assert result.report.compression_ratio > 5


def test_report_counts_cache_hits(tmp_path: Path) -> None:
    scorer = CachedScorer(KeywordScorer(), tmp_path / "scores.sqlite3")
    document = Document.from_texts(PAGES)
    first = PageGate(scorer).run(document, CRITERIA).report
    second = PageGate(scorer).run(document, CRITERIA).report
    assert (first.cache_hits, first.cache_misses) == (0, 15)
    assert (second.cache_hits, second.cache_misses) == (15, 0)
    assert second.model_requests == 0
    assert second.model_tokens == 0
    scorer.close()


@needs_matplotlib
def test_heatmap_is_written(tmp_path: Path) -> None:
    result = PageGate(KeywordScorer()).run(Document.from_texts(PAGES, "packet.txt"), CRITERIA)
    path = plot_heatmap(result, tmp_path / "out" / "heatmap.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_heatmap_without_matplotlib_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    result = PageGate(KeywordScorer()).run(Document.from_texts(PAGES), CRITERIA)
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'zerank-gate\[eval\]'"):
        plot_heatmap(result, "never-written.png")


def test_progress_bar_only_when_asked_or_on_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    document = Document.from_texts(PAGES)
    PageGate(KeywordScorer()).run(document, CRITERIA)
    assert capsys.readouterr().err == ""  # stderr is not a terminal under pytest
    PageGate(KeywordScorer(), progress=True).run(document, CRITERIA)
    bar = capsys.readouterr().err
    assert "scoring <texts>" in bar
    assert "0/15" in bar  # 5 pages × 3 criteria planned
