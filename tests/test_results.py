"""The result model: one shape, a committed schema, a file that loads back and travels."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import jsonschema
import pytest
from pydantic import ValidationError

from tests.cli_run import call
from zerank_core.criteria import load_criteria
from zerank_core.gate import PageGate
from zerank_core.loaders import load_document
from zerank_core.results import (
    SCHEMA_DIR,
    GateResult,
    JobSummary,
    MultiResult,
    Passage,
    dump_result,
    read_result,
    result_schemas,
    write_result,
)
from zerank_core.scorers.lexical import BM25Scorer
from zerank_core.select import SelectionPolicy

ROOT = Path(__file__).resolve().parent.parent
PACKET = ROOT / "cookbook" / "prior_auth" / "packet.txt"
CRITERIA = ROOT / "cookbook" / "prior_auth" / "criteria.yaml"
REGENERATE = "python -m zerank_core.results"


def packet_result() -> GateResult:
    gate = PageGate(BM25Scorer(), SelectionPolicy(threshold=0.5, top_k=3, order="original"))
    return gate.run(load_document(PACKET), load_criteria(CRITERIA))


def schema(name: str) -> dict[str, object]:
    return dict(json.loads((SCHEMA_DIR / name).read_text(encoding="utf-8")))


def test_the_committed_schemas_are_the_models_schemas() -> None:
    for name, generated in result_schemas().items():
        path = SCHEMA_DIR / name
        assert path.is_file(), f"{path} is missing; regenerate with: {REGENERATE}"
        assert schema(name) == generated, (
            f"{path} no longer matches the result model; regenerate it with: {REGENERATE} "
            "(and raise SCHEMA_VERSION if an older reader would misread the new shape)"
        )


def test_a_result_round_trips_through_json_and_pickle_without_rescoring() -> None:
    result = packet_result()
    text = dump_result(result)
    loaded = GateResult.model_validate_json(text)
    assert loaded == result
    assert dump_result(loaded) == text
    assert pickle.loads(pickle.dumps(result)) == result
    assert loaded.schema_version == 1
    assert loaded.criteria == result.criteria
    assert loaded.matrix == tuple(
        tuple(None if v is None else round(v, 6) for v in row) for row in result.matrix
    )
    # Page text travels for the kept pages only, and the contexts are built from it.
    kept = {n for r in loaded.results for n in r.pages}
    assert {p.number for p in loaded.document.pages if p.text is not None} == kept
    assert loaded.document.empty_pages == (24,)
    tb = loaded.result_for("TB")
    page = loaded.document.page(tb.pages[0])
    assert page.text is not None
    assert page.text.strip() in (tb.context or "")


def test_scores_are_written_with_six_decimals_and_timings_do_not_count() -> None:
    result = packet_result()
    data = json.loads(dump_result(result))
    for item in data["results"]:
        assert all(len(repr(v).split(".")[-1]) <= 6 for v in item["scores"].values())
    again = packet_result()
    assert again.timings != result.timings or again.timings.gate_seconds is not None
    assert again == result  # the same result, whatever the timings
    assert list(data)[-1] == "timings"


def test_without_text_leaves_no_document_text() -> None:
    result = packet_result()
    text = dump_result(result, include_text=False)
    for page in load_document(PACKET).pages:
        if len(page.text.strip()) > 40:
            assert page.text.strip()[:40] not in text
    loaded = GateResult.model_validate_json(text)
    assert all(r.context is None for r in loaded.results)


def test_a_bad_file_is_refused_naming_the_field() -> None:
    data = json.loads(dump_result(packet_result()))
    with pytest.raises(ValidationError, match="schema_version"):
        GateResult.model_validate({**data, "schema_version": 2})
    with pytest.raises(ValidationError, match="surprise"):
        GateResult.model_validate({**data, "surprise": 1})
    data["policy"]["threshold"] = 5
    with pytest.raises(ValidationError, match=r"threshold must be in \[0, 1\], got 5"):
        GateResult.model_validate(data)


def test_passages_hold_offsets_into_their_page() -> None:
    passage = Passage(page=3, start=10, end=25, score=0.812345678, text="x" * 15)
    assert json.loads(passage.model_dump_json())["score"] == 0.812346
    with pytest.raises(ValidationError, match="end"):
        Passage(page=3, start=10, end=5, score=0.5, text="")


def test_write_result_replaces_the_file_atomically(tmp_path: Path) -> None:
    result = packet_result()
    target = tmp_path / "out" / "result.json"
    write_result(target, result)
    first = target.read_text(encoding="utf-8")
    assert first == dump_result(result)
    write_result(target, result, include_text=False)
    assert target.read_text(encoding="utf-8") == dump_result(result, include_text=False)
    assert [p.name for p in target.parent.iterdir()] == ["result.json"]  # no temporary left
    assert read_result(target) == result.without_text()


def test_every_json_the_command_line_writes_validates_against_the_committed_schema(
    tmp_path: Path,
) -> None:
    common = ["-c", str(CRITERIA), "--backend", "lexical", "--no-cache"]
    code, out, err = call("compress", str(PACKET), *common, "-o", "-")
    assert code == 0, err
    jsonschema.validate(json.loads(out), schema("gate-result.schema.json"))

    pages = PACKET.read_text(encoding="utf-8").split("\f")
    (tmp_path / "a.txt").write_text("\f".join(pages[:20]), encoding="utf-8")
    (tmp_path / "b.txt").write_text("\f".join(pages[20:]), encoding="utf-8")
    docs = [str(tmp_path / "a.txt"), str(tmp_path / "b.txt")]
    code, _, err = call("compress", *docs, *common, "--dedupe", "-o", str(tmp_path / "dir"))
    assert code == 0, err
    for name in ("a.json", "b.json"):
        data = json.loads((tmp_path / "dir" / name).read_text(encoding="utf-8"))
        jsonschema.validate(data, schema("gate-result.schema.json"))
        GateResult.model_validate(data)
    summary = json.loads((tmp_path / "dir" / "summary.json").read_text(encoding="utf-8"))
    jsonschema.validate(summary, schema("job-summary.schema.json"))
    assert JobSummary.model_validate(summary).files == {docs[0]: "a.json", docs[1]: "b.json"}

    code, out, err = call("compress", *docs, *common, "--no-context", "-o", "-")
    assert code == 0, err
    jsonschema.validate(json.loads(out), schema("multi-result.schema.json"))
    assert len(MultiResult.model_validate_json(out).results) == 2
