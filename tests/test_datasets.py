"""The ContractNLI loader: path resolution, span and page views, counts against the files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from zerank_core.datasets import (
    CONTRACTNLI_ENV,
    contractnli_dir,
    load_contractnli,
    page_examples,
    span_examples,
)
from zerank_core.errors import ConfigurationError, DocumentError

TEXT_A = "Alpha clause one. Beta clause two. Gamma clause three."
TEXT_B = "Delta term. Epsilon term."
TINY: dict[str, Any] = {
    "labels": {
        "nda-1": {"short_description": "first", "hypothesis": "Alpha and gamma apply."},
        "nda-2": {"short_description": "second", "hypothesis": "Epsilon applies."},
    },
    "documents": [
        {
            "id": 7,
            "file_name": "a.txt",
            "text": TEXT_A,
            "spans": [[0, 17], [18, 34], [35, 54]],
            "annotation_sets": [
                {
                    "annotations": {
                        "nda-1": {"choice": "Entailment", "spans": [0, 2]},
                        "nda-2": {"choice": "NotMentioned", "spans": []},
                    }
                }
            ],
            "document_type": "search-pdf",
            "url": "",
        },
        {
            "id": 8,
            "file_name": "b.txt",
            "text": TEXT_B,
            "spans": [[0, 11], [12, 25]],
            "annotation_sets": [
                {
                    "annotations": {
                        "nda-1": {"choice": "NotMentioned", "spans": []},
                        "nda-2": {"choice": "Contradiction", "spans": [1]},
                    }
                }
            ],
            "document_type": "search-pdf",
            "url": "",
        },
    ],
}


@pytest.fixture
def tiny_dir(tmp_path: Path) -> Path:
    (tmp_path / "dev.json").write_text(json.dumps(TINY), encoding="utf-8")
    return tmp_path


def test_path_comes_from_argument_then_environment_then_the_repository_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(CONTRACTNLI_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    repository = Path(__file__).resolve().parent.parent / "benchmarks" / "data" / "contractnli"
    assert contractnli_dir() == repository
    assert (repository / "dev.json").is_file()
    assert (repository / "README.md").read_text(encoding="utf-8").count("CC BY 4.0") >= 1
    monkeypatch.setenv(CONTRACTNLI_ENV, "/data/cnli")
    assert contractnli_dir() == Path("/data/cnli")
    assert contractnli_dir("/elsewhere") == Path("/elsewhere")


def test_environment_variable_is_used_to_load(
    tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CONTRACTNLI_ENV, str(tiny_dir))
    data = load_contractnli("dev")
    assert data.path == tiny_dir / "dev.json"
    assert [d.id for d in data.documents] == ["7", "8"]


def test_span_examples_from_a_tiny_file(tiny_dir: Path) -> None:
    data = load_contractnli("dev", tiny_dir)
    assert [h.id for h in data.hypotheses] == ["nda-1", "nda-2"]
    examples = span_examples(data)
    assert [e.id for e in examples] == ["7/nda-1", "7/nda-2", "8/nda-1", "8/nda-2"]
    first = examples[0]
    assert first.query == "Alpha and gamma apply."
    assert first.units == ("Alpha clause one.", "Beta clause two.", "Gamma clause three.")
    assert first.relevant == frozenset({0, 2})
    # NotMentioned has no relevant unit; Contradiction evidence counts as relevant.
    assert examples[1].relevant == frozenset()
    assert examples[3].relevant == frozenset({1})
    assert examples[3].document_ids == ("8",)


def test_page_examples_cut_concatenated_contracts_at_span_starts(tiny_dir: Path) -> None:
    data = load_contractnli("dev", tiny_dir)
    examples = page_examples(data, contracts_per_document=2, page_chars=40, separator="\n\n")
    joined = TEXT_A + "\n\n" + TEXT_B
    pages = examples[0].units
    assert "".join(pages) == joined
    assert pages == (
        "Alpha clause one. Beta clause two. ",
        "Gamma clause three.\n\nDelta term. ",
        "Epsilon term.",
    )
    assert all(len(p) <= 40 for p in pages)
    by_hypothesis = {e.hypothesis_id: e for e in examples}
    assert by_hypothesis["nda-1"].relevant == frozenset({0, 1})
    assert by_hypothesis["nda-2"].relevant == frozenset({2})
    assert by_hypothesis["nda-1"].document_ids == ("7", "8")
    assert by_hypothesis["nda-1"].id == "7-8/nda-1"


def test_page_examples_group_contracts_and_keep_a_long_span_whole(tiny_dir: Path) -> None:
    data = load_contractnli("dev", tiny_dir)
    examples = page_examples(data, contracts_per_document=1, page_chars=10)
    assert [e.document_ids for e in examples] == [("7",), ("7",), ("8",), ("8",)]
    # Every span is longer than 10 characters: one span a page, none split.
    assert examples[0].units == ("Alpha clause one. ", "Beta clause two. ", "Gamma clause three.")
    with pytest.raises(ConfigurationError, match="page_chars must be an integer >= 1, got 0"):
        page_examples(data, page_chars=0)


def test_missing_or_malformed_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=f"test.json.*{CONTRACTNLI_ENV}"):
        load_contractnli("test", tmp_path)
    with pytest.raises(
        ConfigurationError, match="split must be one of train, dev, test, got 'val'"
    ):
        load_contractnli("val", tmp_path)
    (tmp_path / "dev.json").write_text('{"documents": []}', encoding="utf-8")
    with pytest.raises(DocumentError, match="not in the ContractNLI format"):
        load_contractnli("dev", tmp_path)
    broken = json.loads(json.dumps(TINY))
    broken["documents"][0]["annotation_sets"][0]["annotations"]["nda-1"]["spans"] = [9]
    (tmp_path / "dev.json").write_text(json.dumps(broken), encoding="utf-8")
    with pytest.raises(DocumentError, match="cites span 9 of 3"):
        load_contractnli("dev", tmp_path)


# --- the real files ------------------------------------------------------------------

REAL = contractnli_dir()


def _raw(split: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((REAL / f"{split}.json").read_text(encoding="utf-8"))
    return result


@pytest.mark.parametrize(("split", "documents"), [("dev", 61), ("test", 123)])
def test_counts_match_the_files(split: str, documents: int) -> None:
    raw = _raw(split)
    # Evidence spans counted straight from the JSON, independently of the loader.
    evidence = sum(
        len(a["spans"])
        for d in raw["documents"]
        for a in d["annotation_sets"][0]["annotations"].values()
        if a["choice"] in ("Entailment", "Contradiction")
    )
    pairs_with_evidence = sum(
        1
        for d in raw["documents"]
        for a in d["annotation_sets"][0]["annotations"].values()
        if a["choice"] != "NotMentioned"
    )
    spans = sum(len(d["spans"]) for d in raw["documents"])

    data = load_contractnli(split)
    assert len(data.documents) == len(raw["documents"]) == documents
    assert len(data.hypotheses) == len(raw["labels"]) == 17
    examples = span_examples(data)
    assert len(examples) == documents * 17
    assert sum(len(e.relevant) for e in examples) == evidence
    assert sum(1 for e in examples if e.relevant) == pairs_with_evidence
    assert sum(len(d.spans) for d in data.documents) == spans
    assert sum(len(e.units) for e in examples) == 17 * spans


def test_span_units_are_the_annotated_character_ranges() -> None:
    raw = _raw("dev")["documents"][0]
    example = span_examples(load_contractnli("dev"))[0]
    start, end = raw["spans"][5]
    assert example.units[5] == raw["text"][start:end]


def test_real_pages_cover_every_character_and_every_evidence_span() -> None:
    data = load_contractnli("test")
    examples = page_examples(data, contracts_per_document=10, page_chars=2500)
    assert len(examples) == 17 * 13  # 123 contracts in 13 groups, 17 hypotheses each
    first = {e.units for e in examples[:17]}
    assert len(first) == 1
    pages = examples[0].units
    assert "".join(pages) == "\n\n".join(d.text for d in data.documents[:10])
    assert max(len(p) for p in pages) <= 2500 + 10
    for example in examples[:17]:
        for doc in data.documents[:10]:
            for i in doc.evidence(example.hypothesis_id):
                start, end = doc.spans[i]
                assert any(doc.text[start:end] in pages[p] for p in example.relevant)
