"""Labelled sets, threshold policies, no-evidence detection, and the calibrate → compress workflow.

The end-to-end tests run the real command on the bundled data (the prior
authorization packet with its answer key, and the repository's copy of
ContractNLI) with the offline BM25 backend.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

import zerank_core
from tests.cli_run import call
from zerank_core.calibrate import (
    CriterionFit,
    ThresholdFit,
    ThresholdPolicy,
    conformal_threshold,
    fit_policy,
)
from zerank_core.datasets import load_labelled
from zerank_core.errors import ConfigurationError, DocumentError
from zerank_core.evaluate import (
    LabelledQuery,
    evaluate_selection,
    no_evidence_detection,
)
from zerank_core.select import SelectionPolicy

ROOT = Path(__file__).resolve().parent.parent
PRIOR_AUTH = ROOT / "cookbook" / "prior_auth"
EVIDENCE = PRIOR_AUTH / "evidence.yaml"
PACKET = PRIOR_AUTH / "packet.txt"
CRITERIA = PRIOR_AUTH / "criteria.yaml"
CONTRACTNLI_DEV = ROOT / "benchmarks" / "data" / "contractnli" / "dev.json"


def query(scores: list[float], relevant: set[int], qid: str = "") -> LabelledQuery:
    return LabelledQuery(
        scores=tuple(scores),
        lengths=(10,) * len(scores),
        relevant=frozenset(relevant),
        query_id=qid,
    )


# --- labelled sets -------------------------------------------------------------


def test_jsonl_cases_are_read_with_their_optional_fields(tmp_path: Path) -> None:
    path = tmp_path / "set.jsonl"
    lines = [
        {"query": "q1", "units": ["a", "b", "c"], "relevant": [2], "criterion": "C1"},
        {"query": "q2", "units": ["d"], "relevant": [], "id": "x", "document": "doc-7"},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n", encoding="utf-8")
    labelled = load_labelled(path)
    assert labelled.format == "jsonl"
    first, second = labelled.examples
    assert (first.id, first.query, first.units, first.relevant) == ("1", "q1", ("a", "b", "c"), {2})
    assert first.criterion == "C1"
    assert (second.id, second.document, second.relevant) == ("x", "doc-7", frozenset())
    assert labelled.n_with_evidence == 1


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"units": ["a"], "relevant": []}', r"set\.jsonl:1: 'query' must be a non-empty string"),
        ('{"query": "q", "units": [], "relevant": []}', "'units' must be a non-empty list"),
        ('{"query": "q", "units": ["a"], "relevant": [1]}', r"relevant index 1 .*\(0\.\.0\)"),
        ('{"query": "q", "units": ["a"], "relevant": 0}', "'relevant' must be a list"),
        ("[1, 2]", "expected an object, got list"),
        ("{not json", "not valid JSON"),
    ],
)
def test_bad_jsonl_lines_are_named(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "set.jsonl"
    path.write_text(line + "\n", encoding="utf-8")
    with pytest.raises(DocumentError, match=message):
        load_labelled(path)


def test_the_packet_answer_key_reads_as_one_case_per_criterion() -> None:
    labelled = load_labelled(EVIDENCE)
    assert labelled.format == "documents"
    assert len(labelled.examples) == 10
    by_id = {e.criterion: e for e in labelled.examples}
    hbv, tb = by_id["HBV"], by_id["TB"]
    assert hbv.relevant == frozenset()
    # Page 24 is blank: it is not a unit, so page 25 is unit 23.
    assert tb.unit_labels is not None
    assert "24" not in tb.unit_labels
    assert [tb.unit_labels[i] for i in sorted(tb.relevant)] == ["2", "4", "18", "19", "40"]
    assert tb.instruction is not None
    assert "prior-authorization packet" in tb.instruction
    assert tb.document == "packet.txt"


@pytest.mark.parametrize(
    ("evidence", "message"),
    [
        ({"DX": [3]}, "no evidence entry for ACTIVITY"),
        ({"DX": [], "ACTIVITY": [], "NOPE": [1]}, "evidence for unknown criteria NOPE"),
        ({"DX": [24], "ACTIVITY": []}, "DX: page 24 of packet.txt is empty"),
        ({"DX": [99], "ACTIVITY": []}, "page 99 of packet.txt is not in the document"),
        ({"DX": ["three"], "ACTIVITY": []}, "page 'three' is not a page number"),
    ],
)
def test_answer_key_mistakes_are_named(
    tmp_path: Path, evidence: dict[str, Any], message: str
) -> None:
    (tmp_path / "packet.txt").write_text(PACKET.read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "criteria.json").write_text(
        json.dumps([{"id": c, "text": f"criterion {c}"} for c in ("DX", "ACTIVITY")]),
        encoding="utf-8",
    )
    key = tmp_path / "key.json"
    key.write_text(
        json.dumps({"criteria": "criteria.json", "document": "packet.txt", "evidence": evidence}),
        encoding="utf-8",
    )
    with pytest.raises(DocumentError, match=message):
        load_labelled(key)


def test_contractnli_from_the_repository_copy_as_pages_and_spans() -> None:
    pages = load_labelled(CONTRACTNLI_DEV)
    assert pages.format == "contractnli-pages"
    # 61 contracts, 10 a document: 7 documents × 17 hypotheses.
    assert len(pages.examples) == 7 * 17
    spans = load_labelled(CONTRACTNLI_DEV, units="spans")
    assert spans.format == "contractnli-spans"
    assert len(spans.examples) == 61 * 17
    assert {e.criterion for e in spans.examples} == {e.criterion for e in pages.examples}
    assert 0 < spans.n_with_evidence < len(spans.examples)


def test_unknown_or_missing_sets_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="labelled set not found"):
        load_labelled(tmp_path / "none.jsonl")
    other = tmp_path / "other.json"
    other.write_text('{"hello": 1}', encoding="utf-8")
    with pytest.raises(DocumentError, match="not a labelled set"):
        load_labelled(other)
    with pytest.raises(ConfigurationError, match="units must be 'pages' or 'spans'"):
        load_labelled(other, units="lines")  # type: ignore[arg-type]


# --- policies and no-evidence detection -----------------------------------------


def test_fit_policy_gives_the_global_fit_and_per_criterion_thresholds() -> None:
    queries = [query([0.9, 0.2], {0}, f"a{i}") for i in range(4)] + [
        query([0.4, 0.1], {0}, f"b{i}") for i in range(4)
    ]
    names = ["A"] * 4 + ["B"] * 4
    policy = fit_policy(queries, 0.8, criteria=names, per_criterion=True)
    assert policy.fit == conformal_threshold(queries, 0.8)
    assert policy.threshold == 0.4
    assert policy.criteria["A"].threshold == 0.9
    assert policy.criteria["B"].threshold == 0.4
    assert policy.threshold_for("A") == 0.9
    assert policy.threshold_for("unknown") == 0.4
    assert policy.alpha == pytest.approx(0.2)
    # Too few queries for 0.9 (needs 9) per criterion: both fall back, with the reason.
    strict = fit_policy(queries * 2, 0.9, criteria=names * 2, per_criterion=True)
    assert strict.criteria == {}
    assert "needs at least 9" in strict.fallback["A"]
    with pytest.raises(ConfigurationError, match="one criterion name per query"):
        fit_policy(queries, 0.8, criteria=names[:3], per_criterion=True)


def test_policy_file_round_trip_and_damage(tmp_path: Path) -> None:
    policy = ThresholdPolicy(
        fit=ThresholdFit("conformal", 0.9, 0.31, 20, 20, 0.93, 0.08),
        criteria={"TB": CriterionFit(0.6, 10, 10, 0.95)},
        fallback={"HBV": "no query has a relevant unit"},
        backend={"name": "server", "model": "zerank-2", "scale": "probability"},
        data={"path": "set.jsonl"},
    )
    path = policy.save(tmp_path / "policy.json")
    assert ThresholdPolicy.load(path) == policy
    data = json.loads(path.read_text(encoding="utf-8"))
    assert (data["target"], data["alpha"], data["threshold"]) == (0.9, 0.1, 0.31)
    assert data["thresholds"] == {"TB": 0.6}
    assert data["fit"]["n"] == 20
    data["format"] = "something else"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ConfigurationError, match="is not a zerank threshold policy"):
        ThresholdPolicy.load(path)
    data["format"] = "zerank-gate/threshold-policy"
    del data["fit"]
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ConfigurationError, match="damaged threshold policy"):
        ThresholdPolicy.load(path)
    with pytest.raises(ConfigurationError, match="policy file not found"):
        ThresholdPolicy.load(tmp_path / "missing.json")


def test_no_evidence_detection_counts_empty_selections_both_ways() -> None:
    queries = [
        query([0.1, 0.2], set()),  # no evidence, keeps nothing at 0.5: right
        query([0.7, 0.2], set()),  # no evidence, keeps page 0: wrong
        query([0.3, 0.9], {1}),  # evidence kept
        query([0.3, 0.4], {0}),  # evidence, keeps nothing: wrong
    ]
    report = no_evidence_detection(queries, SelectionPolicy(threshold=0.5))
    assert (report.n_without_evidence, report.correct_empty) == (2, 1)
    assert (report.n_with_evidence, report.wrong_empty) == (2, 1)
    assert report.detection_rate == 0.5
    assert report.false_empty_rate == 0.5
    # min_keep forces a page, which is still "nothing passed the policy".
    forced = no_evidence_detection(queries, SelectionPolicy(threshold=0.5, min_keep=1))
    assert forced == report
    # One policy per query: a stricter floor for the second query.
    per_query = [SelectionPolicy(threshold=t) for t in (0.5, 0.8, 0.5, 0.5)]
    assert no_evidence_detection(queries, per_query).correct_empty == 2
    assert evaluate_selection(queries, per_query).mean_recall == 0.5
    with pytest.raises(ConfigurationError, match="got 3 policies for 4 queries"):
        no_evidence_detection(queries, per_query[:3])


# --- the commands, end to end -----------------------------------------------------


def test_calibrate_then_compress_with_the_policy_on_the_packet(tmp_path: Path) -> None:
    policy_path = tmp_path / "policy.json"
    code, _, err = call(
        "calibrate", str(EVIDENCE), "--target", "0.8", "--no-cache", "-o", str(policy_path)
    )
    assert code == 0, err
    assert "10 queries (9 with evidence)" in err
    assert "recall against characters kept" in err
    assert "conformal threshold for recall 0.8" in err
    saved = json.loads(policy_path.read_text(encoding="utf-8"))
    assert (saved["target"], saved["alpha"], saved["method"]) == (0.8, 0.2, "conformal")
    assert saved["fit"]["n"] == 9
    assert saved["backend"]["name"] == "lexical"
    assert saved["backend"]["scale"] == "uncalibrated"
    assert saved["fit"]["recall"] >= 0.8
    threshold = saved["threshold"]
    # The policy file is one of the files the package writes: it follows its
    # committed schema, like the results.
    schema_path = Path(zerank_core.__file__).parent / "schema" / "threshold-policy.schema.json"
    jsonschema.validate(saved, json.loads(schema_path.read_text(encoding="utf-8")))

    code, out, err = call(
        "compress", str(PACKET), "-c", str(CRITERIA), "--policy", str(policy_path),
        "--no-cache", "-o", "-",
    )  # fmt: skip
    assert code == 0, err
    assert f"policy file: {policy_path} — conformal, recall target 0.8" in err
    result = json.loads(out)
    assert result["policy"]["threshold"] == threshold
    assert result["policy"]["top_k"] is None
    for item in result["results"]:
        # Every scored page at or above the fitted threshold is kept, and nothing else,
        # whatever the criteria file's own floor (TB has 0.6).
        expected = [int(p) for p, s in item["scores"].items() if s >= threshold]
        assert item["pages"] == expected, item["criterion"]["id"]
        assert item["criterion"]["threshold"] == threshold


def test_compress_applies_per_criterion_thresholds_and_warns_across_backends(
    tmp_path: Path,
) -> None:
    policy = ThresholdPolicy(
        fit=ThresholdFit("conformal", 0.9, 0.2, 30, 30, 0.92, 0.09),
        criteria={"TB": CriterionFit(0.95, 12, 12, 0.93)},
        backend={"name": "hosted", "model": "zerank-2"},
    )
    path = policy.save(tmp_path / "policy.json")
    code, out, err = call(
        "compress", str(PACKET), "-c", str(CRITERIA), "--policy", str(path), "--no-cache", "-o", "-"
    )
    assert code == 0, err
    assert "own thresholds for TB" in err
    assert "fitted on hosted scores and this run uses lexical" in err
    by_id = {c["criterion"]["id"]: c for c in json.loads(out)["results"]}
    assert by_id["TB"]["criterion"]["threshold"] == 0.95
    assert all(by_id["TB"]["scores"][str(p)] >= 0.95 for p in by_id["TB"]["pages"])
    assert by_id["DX"]["criterion"]["threshold"] == 0.2
    assert all(by_id["DX"]["scores"][str(p)] >= 0.2 for p in by_id["DX"]["pages"])


def test_a_bad_policy_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "policy.json"
    bad.write_text("{}", encoding="utf-8")
    code, _, err = call(
        "compress", str(PACKET), "-c", str(CRITERIA), "--policy", str(bad), "--no-cache"
    )
    assert code == 2
    assert "is not a zerank threshold policy" in err


def test_evaluate_reports_the_curve_the_policy_and_no_evidence_detection(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "recall.png"
    code, out, err = call(
        "evaluate", str(EVIDENCE), "--threshold", "0.99", "--png", str(png), "--no-cache", "-o", "-"
    )
    assert code == 0, err
    data = json.loads(out)
    assert [row["chars_kept"] for row in data["recall_curve"]][:2] == [0.05, 0.1]
    # BM25 gives every criterion's best page 1.0: even HBV keeps a page at 0.99.
    assert data["no_evidence"] == {
        "queries_without_evidence": 1,
        "kept_nothing_without_evidence": 0,
        "queries_with_evidence": 9,
        "kept_nothing_with_evidence": 0,
    }
    assert "queries without evidence: 0 of 1 kept nothing" in err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_on_contractnli_finds_no_evidence_queries(tmp_path: Path) -> None:
    # The first 12 contracts of dev keep the test short; the format is the file's.
    raw = json.loads(CONTRACTNLI_DEV.read_text(encoding="utf-8"))
    raw["documents"] = raw["documents"][:12]
    subset = tmp_path / "dev.json"
    subset.write_text(json.dumps(raw), encoding="utf-8")
    cache = str(tmp_path / "scores.sqlite3")
    policy_path = tmp_path / "policy.json"
    code, _, err = call(
        "calibrate", str(subset), "--units", "spans", "--target", "0.8",
        "--per-criterion", "--cache", cache, "-o", str(policy_path),
    )  # fmt: skip
    assert code == 0, err
    saved = json.loads(policy_path.read_text(encoding="utf-8"))
    assert saved["data"]["format"] == "contractnli-spans"
    assert saved["thresholds"]  # 61 contracts: enough queries per hypothesis
    code, out, err = call(
        "evaluate", str(subset), "--units", "spans", "--policy", str(policy_path),
        "--cache", cache, "-o", "-",
    )  # fmt: skip
    assert code == 0, err
    assert ", 0 misses" in err
    data = json.loads(out)
    found = data["no_evidence"]
    labelled = load_labelled(subset, units="spans")
    assert found["queries_without_evidence"] == len(labelled.examples) - labelled.n_with_evidence
    assert found["queries_with_evidence"] == labelled.n_with_evidence
    # BM25 keeps nothing only where no span shares a word with the hypothesis.
    assert 0 <= found["kept_nothing_without_evidence"] <= found["queries_without_evidence"]
    assert data["policy"]["mean_recall"] >= 0.8 - 0.1
