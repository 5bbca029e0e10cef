"""Duplicate detection: exact, near and non-duplicates, the relation, both detectors."""

from __future__ import annotations

import io
import json
import random
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from tests.extras import needs_datasketch
from tests.fake_servers import FakeRerankServer
from tests.tiny_zerank import sample_text
from zerank_core.cli import main
from zerank_core.criteria import Criterion, load_criteria
from zerank_core.dedupe import (
    DuplicatePair,
    Duplicates,
    LexicalDetector,
    ModelDetector,
    find_duplicates,
)
from zerank_core.errors import ConfigurationError, InvalidResponseError, MissingDependencyError
from zerank_core.gate import DEFAULT_PAGE_POLICY, PageGate
from zerank_core.loaders import Document, load_document
from zerank_core.results import dump_result
from zerank_core.scorers import BM25Scorer, RerankServerScorer, Scale
from zerank_core.select import SelectionPolicy

PACKET = Path(__file__).resolve().parent.parent / "cookbook" / "prior_auth" / "packet.txt"

LAB = """LABORATORY REPORT - Northwest Regional Laboratory
Patient: OKAFOR, MARIA L    DOB: 03/14/1979    MRN: 00731655
QUANTIFERON-TB GOLD PLUS
Nil 0.03 IU/mL; TB1 antigen minus nil 0.01 IU/mL; TB2 antigen minus nil 0.02 IU/mL.
Interpretation NEGATIVE. An interferon-gamma release assay negative result indicates
that infection with Mycobacterium tuberculosis is unlikely. Performed for screening
before immunosuppressive therapy; mitogen response adequate."""
FAXED_LAB = "OCT-03-2026 09:41  FROM: RIVERBEND RHEUMATOLOGY  TO: 18885550170  P.002/003\n" + LAB
OTHER_LAB = """LABORATORY REPORT - Northwest Regional Laboratory
Patient: OKAFOR, MARIA L    DOB: 03/14/1979    MRN: 00731655
COMPLETE BLOOD COUNT
WBC 6.8, hemoglobin 11.9 low, platelets 388. ALT 31, AST 28, creatinine 0.8.
Sedimentation rate 34 high; C-reactive protein 1.6 high. Comment: mild anemia of
chronic inflammation; liver enzymes normal on methotrexate."""


@needs_datasketch
def test_exact_duplicates_ignore_case_spacing_and_punctuation() -> None:
    texts = [LAB, OTHER_LAB, LAB.upper().replace("\n", "  \n ").replace(";", ",")]
    found = LexicalDetector().find(texts)
    assert found.pairs == (DuplicatePair(0, 2, 1.0, "exact"),)


@needs_datasketch
def test_a_page_resent_under_a_fax_header_is_a_near_duplicate() -> None:
    found = LexicalDetector().find([LAB, OTHER_LAB, FAXED_LAB])
    assert [(p.first, p.second, p.method) for p in found.pairs] == [(0, 2, "lexical")]
    assert 0.7 <= found.pairs[0].similarity < 1.0


@needs_datasketch
def test_pages_sharing_a_template_are_not_duplicates() -> None:
    assert LexicalDetector().find([LAB, OTHER_LAB]).pairs == ()
    # ... not even for a low threshold
    assert LexicalDetector(threshold=0.3).find([LAB, OTHER_LAB]).pairs == ()


@needs_datasketch
def test_threshold_decides_near_duplicates() -> None:
    similarity = LexicalDetector().find([LAB, FAXED_LAB]).pairs[0].similarity
    assert LexicalDetector(threshold=similarity).find([LAB, FAXED_LAB]).pairs
    assert not LexicalDetector(threshold=min(1.0, similarity + 0.01)).find([LAB, FAXED_LAB]).pairs


@needs_datasketch
def test_bundled_packet_duplicates_are_the_resent_pages_only() -> None:
    document = load_document(PACKET)
    pages = [p for p in document.pages if not p.is_empty]
    found = LexicalDetector().find([p.text for p in pages])
    pairs = {(pages[p.first].number, pages[p.second].number): p for p in found.pairs}
    # the cover sheet, the QuantiFERON report and the 09/18 note, sent again
    assert set(pairs) == {(1, 39), (18, 40), (15, 41)}
    assert all(p.method == "lexical" and p.similarity > 0.8 for p in pairs.values())


@needs_datasketch
def test_exact_groups_and_near_pairs_expand_to_every_member() -> None:
    texts = [LAB, LAB, FAXED_LAB, FAXED_LAB, OTHER_LAB]
    found = LexicalDetector().find(texts)
    methods = {(p.first, p.second): p.method for p in found.pairs}
    assert methods == {
        (0, 1): "exact",
        (2, 3): "exact",
        (0, 2): "lexical",
        (0, 3): "lexical",
        (1, 2): "lexical",
        (1, 3): "lexical",
    }
    assert set(found.by_item) == {0, 1, 2, 3}


@needs_datasketch
def test_empty_and_short_texts() -> None:
    assert LexicalDetector().find([]).pairs == ()
    assert LexicalDetector().find(["", "  "]).pairs == (DuplicatePair(0, 1, 1.0, "exact"),)
    found = LexicalDetector().find(["tb negative", "TB: negative!", "tb positive", "x"])
    assert [(p.first, p.second) for p in found.pairs] == [(0, 1)]


@needs_datasketch
def test_planted_near_duplicates_are_found_among_many_texts() -> None:
    rng = random.Random(3)
    originals = [sample_text(rng, 120) for _ in range(300)]
    texts = list(originals)
    planted = set()
    for source in rng.sample(range(300), 40):
        words = originals[source].split()
        for _ in range(4):  # change four words in 120
            words[rng.randrange(len(words))] = sample_text(rng, 1)
        planted.add((source, len(texts)))
        texts.append(" ".join(words))
    found = {(p.first, p.second) for p in LexicalDetector().find(texts).pairs}
    assert found == planted


@needs_datasketch
async def test_async_find_matches_sync() -> None:
    texts = [LAB, OTHER_LAB, FAXED_LAB, LAB]
    detector = LexicalDetector()
    assert await detector.afind(texts) == detector.find(texts)


def test_missing_datasketch_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasketch", None)
    with pytest.raises(MissingDependencyError, match=r"zerank-gate\[dedupe\]"):
        LexicalDetector().find([LAB, OTHER_LAB])


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"threshold": 0.0}, "threshold must be in (0, 1], got 0.0"),
        ({"threshold": 1.5}, "got 1.5"),
        ({"threshold": "high"}, "got 'high'"),
        ({"shingle_size": 0}, "shingle_size must be an integer >= 1, got 0"),
        ({"num_perm": 8}, "num_perm must be an integer >= 16, got 8"),
    ],
)
def test_lexical_detector_options_are_checked(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        LexicalDetector(**kwargs)  # type: ignore[arg-type]
    assert needle in str(info.value)


def test_texts_must_be_strings() -> None:
    with pytest.raises(ConfigurationError, match=r"texts\[1\] must be a str, got int"):
        LexicalDetector().find(["a", 3])  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("pairs", "needle"),
    [
        ((DuplicatePair(1, 1, 1.0, "exact"),), "0 <= first < second < 3"),
        ((DuplicatePair(2, 1, 1.0, "exact"),), "0 <= first < second < 3"),
        ((DuplicatePair(0, 3, 1.0, "exact"),), "0 <= first < second < 3"),
        ((DuplicatePair(0, 1, 1.2, "lexical"),), "must be in [0, 1], got 1.2"),
        ((DuplicatePair(0, 1, 1.0, "exact"),) * 2, "appears twice"),
    ],
)
def test_relation_is_validated(pairs: tuple[DuplicatePair, ...], needle: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Duplicates(3, pairs)
    assert needle in str(info.value)


@needs_datasketch
def test_find_duplicates_is_off_without_dedupe_and_checks_the_detector() -> None:
    assert find_duplicates(False, None, [LAB, LAB], [0.5, 0.5]) is None
    relation = find_duplicates(True, None, [LAB, LAB], [0.5, 0.5])
    assert relation is not None
    assert relation.pairs == (DuplicatePair(0, 1, 1.0, "exact"),)
    with pytest.raises(ConfigurationError, match="must have find"):
        find_duplicates(True, "lexical", [LAB], [0.5])  # type: ignore[arg-type]


# --- the model detector, through a real HTTP client and a local rerank server ----------

SHUFFLED = " ".join(reversed(LAB.split()))  # same words, no shared 3-word shingle order


def server_detector(server: FakeRerankServer, **options: object) -> ModelDetector:
    # The local server scores the share of the query's words found in the
    # document, so the default instruction's words would lower every score.
    scorer = RerankServerScorer(f"{server.url}/v1/rerank")
    return ModelDetector(scorer, instruction=None, **options)  # type: ignore[arg-type]


@needs_datasketch
def test_model_detector_asks_only_candidate_pairs(fake_server: FakeRerankServer) -> None:
    texts = [LAB, OTHER_LAB, FAXED_LAB, SHUFFLED, LAB]
    found = server_detector(fake_server).find(texts)
    # exact (0, 4) needs no call; the lexical candidate is asked and confirmed;
    # SHUFFLED shares no shingles with anything and its scores were not given.
    assert [(p.first, p.second, p.method) for p in found.pairs] == [
        (0, 2, "model"),
        (0, 4, "exact"),
        (2, 4, "model"),
    ]
    assert all(p.similarity >= 0.8 for p in found.pairs)
    # one question for the exact pair's group, the shorter text as the query
    asked = [(r.body["query"], r.body["documents"]) for r in fake_server.requests]
    assert asked == [(LAB, [FAXED_LAB])]


@needs_datasketch
def test_model_detector_appends_its_instruction(fake_server: FakeRerankServer) -> None:
    scorer = RerankServerScorer(f"{fake_server.url}/v1/rerank")
    ModelDetector(scorer).find([LAB, FAXED_LAB])
    (request,) = fake_server.requests
    assert request.body["query"].startswith(f"<query>{LAB}</query>\n<instruction>")
    assert "same content" in request.body["query"]


@needs_datasketch
def test_model_detector_also_asks_items_close_in_score(fake_server: FakeRerankServer) -> None:
    texts = [LAB, OTHER_LAB, SHUFFLED]
    plain = server_detector(fake_server).find(texts)
    assert plain.pairs == ()
    close = server_detector(fake_server).find(texts, score_columns=[[0.91, 0.20, 0.90]])
    assert [(p.first, p.second, p.method) for p in close.pairs] == [(0, 2, "model")]
    # OTHER_LAB is 0.7 away in score: never asked about
    for request in fake_server.requests:
        assert OTHER_LAB not in request.body["documents"]
        assert OTHER_LAB not in request.body["query"]


@needs_datasketch
async def test_model_detector_async_matches_sync(fake_server: FakeRerankServer) -> None:
    texts = [LAB, OTHER_LAB, FAXED_LAB, SHUFFLED, LAB]
    columns = [[0.9, 0.1, 0.85, 0.89, 0.9]]
    detector = server_detector(fake_server)
    assert await detector.afind(texts, score_columns=columns) == detector.find(
        texts, score_columns=columns
    )


@needs_datasketch
def test_model_detector_threshold_rejects_weak_pairs(fake_server: FakeRerankServer) -> None:
    texts = [LAB, OTHER_LAB]
    # OTHER_LAB shares its header with LAB: asked when close in score, rejected by the model
    found = server_detector(fake_server).find(texts, score_columns=[[0.5, 0.5]])
    assert found.pairs == ()
    assert len(fake_server.requests) == 1


@needs_datasketch
def test_model_detector_never_asks_about_blank_texts(fake_server: FakeRerankServer) -> None:
    found = server_detector(fake_server).find(
        [LAB, "  ", "", FAXED_LAB], score_columns=[[0.5, 0.5, 0.5, 0.5]]
    )
    assert [(p.first, p.second, p.method) for p in found.pairs] == [
        (0, 3, "model"),
        (1, 2, "exact"),
    ]
    for request in fake_server.requests:
        assert request.body["query"].strip()
        assert all(d.strip() for d in request.body["documents"])


def test_model_detector_refuses_uncalibrated_scorers() -> None:
    with pytest.raises(ConfigurationError, match="needs calibrated probabilities"):
        ModelDetector(BM25Scorer())


@needs_datasketch
def test_model_detector_rejects_a_bad_score_from_the_scorer() -> None:
    class Broken:
        model = "broken"
        scale = Scale.PROBABILITY
        usage = None

        def score(self, query: str, texts: object, *, instruction: str | None = None) -> list:
            return [1.7]

        async def ascore(
            self, query: str, texts: object, *, instruction: str | None = None
        ) -> list:
            return [1.7]

    with pytest.raises(InvalidResponseError, match="expected a probability"):
        ModelDetector(Broken()).find([LAB, FAXED_LAB])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"threshold": 0}, "threshold must be in (0, 1]"),
        ({"score_gap": -0.1}, "score_gap must be in [0, 1], got -0.1"),
        ({"max_close": -1}, "max_close must be an integer >= 0, got -1"),
        ({"max_concurrency": 0}, "max_concurrency must be an integer >= 1, got 0"),
        ({"lexical": 0.5}, "lexical must be a LexicalDetector, got float"),
    ],
)
def test_model_detector_options_are_checked(
    fake_server: FakeRerankServer, kwargs: dict[str, object], needle: str
) -> None:
    scorer = RerankServerScorer(f"{fake_server.url}/v1/rerank")
    with pytest.raises(ConfigurationError) as info:
        ModelDetector(scorer, **kwargs)  # type: ignore[arg-type]
    assert needle in str(info.value)


# --- the page gate and `zerank compress --dedupe` on the bundled packet ---------------------

CRITERIA = PACKET.parent / "criteria.yaml"


def gate_results(dedupe: bool) -> dict[str, tuple[int, ...]]:
    policy = replace(DEFAULT_PAGE_POLICY, dedupe=dedupe)
    result = PageGate(BM25Scorer(), policy).run(load_document(PACKET), load_criteria(CRITERIA))
    return {r.criterion.id: r.pages for r in result.results}


@needs_datasketch
def test_gate_keeps_one_page_of_each_resent_page() -> None:
    before, after = gate_results(False), gate_results(True)
    # top 3: the re-sent 09/18 note (41) and QuantiFERON report (40) took slots ...
    assert before["ACTIVITY"] == (13, 15, 41)
    assert before["MTX"] == (4, 15, 41)
    assert before["TB"] == (18, 20, 40)
    # ... which now go to the next distinct page above the floor (TB has none above its own)
    assert after["ACTIVITY"] == (13, 15, 26)
    assert after["MTX"] == (4, 11, 15)
    assert after["TB"] == (18, 20)
    unchanged = set(before) - {"ACTIVITY", "MTX", "TB"}
    assert {c: after[c] for c in unchanged} == {c: before[c] for c in unchanged}


@needs_datasketch
async def test_gate_reports_duplicates_in_results_and_json() -> None:
    document, criteria = load_document(PACKET), load_criteria(CRITERIA)
    gate = PageGate(BM25Scorer(), replace(DEFAULT_PAGE_POLICY, dedupe=True))
    result = gate.run(document, criteria)
    assert await gate.arun(document, criteria) == result
    by_id = {r.criterion.id: r for r in result.results}
    (dropped,) = by_id["TB"].duplicates
    assert (dropped.page, dropped.duplicate_of, dropped.method) == (40, 18, "lexical")
    assert by_id["DX"].duplicates == ()
    assert [(d.page, d.duplicate_of) for d in result.duplicates] == [(39, 1), (40, 18), (41, 15)]

    data = json.loads(dump_result(result, include_text=False))
    assert data["policy"]["dedupe"] is True
    assert [(d["page"], d["duplicate_of"]) for d in data["duplicates"]] == [
        (39, 1),
        (40, 18),
        (41, 15),
    ]
    tb = next(c for c in data["results"] if c["criterion"]["id"] == "TB")
    assert tb["duplicates"] == [
        {
            "page": 40,
            "duplicate_of": 18,
            "similarity": round(dropped.similarity, 6),
            "method": "lexical",
        }
    ]


@needs_datasketch
def test_gate_uses_the_detector_it_is_given(fake_server: FakeRerankServer) -> None:
    scorer = RerankServerScorer(f"{fake_server.url}/v1/rerank")
    document = Document.from_texts([LAB, OTHER_LAB, FAXED_LAB, SHUFFLED])
    criteria = [Criterion("TB", "negative tuberculosis screening result")]
    policy = SelectionPolicy(threshold=None, top_k=2, dedupe=True)
    lexical = PageGate(scorer, policy).run(document, criteria)
    assert lexical.results[0].pages == (1, 4)  # SHUFFLED is not a lexical duplicate
    detector = ModelDetector(scorer, instruction=None)
    model = PageGate(scorer, policy, duplicate_detector=detector).run(document, criteria)
    # LAB and SHUFFLED score alike: the model is asked about them and calls them one page
    assert model.results[0].pages == (1, 2)
    assert {(d.page, d.duplicate_of, d.method) for d in model.results[0].duplicates} == {
        (3, 1, "model"),
        (4, 1, "model"),
    }


@needs_datasketch
def test_cli_compress_dedupe_summary_and_json() -> None:
    out, err = io.StringIO(), io.StringIO()
    code = main(
        ["compress", str(PACKET), "--criteria", str(CRITERIA), "--no-cache", "--dedupe", "-o", "-"],
        stdout=out,
        stderr=err,
    )
    assert code == 0, err.getvalue()
    summary = err.getvalue()
    assert "one page of each set of duplicates" in summary
    assert "duplicate pages: 39 ≈ 1 (lexical 0.91), 40 ≈ 18 (lexical 0.87), 41 ≈ 15" in summary
    assert (
        "dropped as duplicates of a kept page: ACTIVITY 41 (= 15); MTX 41 (= 15); TB 40 (= 18)"
        in (summary)
    )
    data = json.loads(out.getvalue())
    assert data["policy"]["dedupe"] is True
    assert {c["criterion"]["id"]: c["pages"] for c in data["results"]}["MTX"] == [4, 11, 15]


@needs_datasketch
def test_cli_compress_dedupe_threshold_and_model_errors() -> None:
    out, err = io.StringIO(), io.StringIO()
    args = ["compress", str(PACKET), "--criteria", str(CRITERIA), "--no-cache", "-o", "-"]
    assert main([*args, "--dedupe", "--dedupe-threshold", "0.95"], stdout=out, stderr=err) == 0
    assert "duplicate pages: none found" in err.getvalue()
    err = io.StringIO()
    assert main([*args, "--dedupe-with", "model"], stdout=io.StringIO(), stderr=err) == 2
    assert "needs calibrated probabilities" in err.getvalue()
    assert "BM25Scorer" in err.getvalue()
    err = io.StringIO()
    assert main([*args, "--dedupe-threshold", "0.5"], stdout=io.StringIO(), stderr=err) == 2
    assert "--dedupe-threshold needs --dedupe" in err.getvalue()


def test_cli_compress_dedupe_without_datasketch_fails_before_scoring(
    monkeypatch: pytest.MonkeyPatch, fake_server: FakeRerankServer
) -> None:
    monkeypatch.setitem(sys.modules, "datasketch", None)
    err = io.StringIO()
    args = ["compress", str(PACKET), "--criteria", str(CRITERIA), "--no-cache", "--dedupe"]
    url = f"{fake_server.url}/v1/rerank"
    assert main([*args, "--server-url", url], stdout=io.StringIO(), stderr=err) != 0
    assert "pip install 'zerank-gate[dedupe]'" in err.getvalue()
    assert fake_server.requests == []
