"""Any sentence-transformers cross-encoder in-process: declared scale, uncalibrated until fitted.

A tiny BERT cross-encoder built here (tests/tiny_cross_encoder.py) runs
through ``LocalScorer``, the adapters and ``zerank compress``, flagged
uncalibrated; ``zerank calibrate --calibrator`` fits Platt or isotonic
calibration on a labelled set, and ``compress --policy`` applies it.
"""

from __future__ import annotations

import json
import math
import pickle
import random
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("sentence_transformers")
pytest.importorskip("sklearn")

from langchain_core.documents import Document
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from langchain_zerank import ZeRankCompressor
from llamaindex_zerank import ZeRankPostprocessor
from tests.cli_run import call
from tests.tiny_cross_encoder import build_tiny_cross_encoder, words
from zerank_core import ConfigurationError, InvalidResponseError, Scale
from zerank_core.calibrate import (
    CalibratedScorer,
    IsotonicCalibrator,
    PlattCalibrator,
    ThresholdPolicy,
    calibrator_from_dict,
)
from zerank_core.scorers.local import LocalScorer

RNG = random.Random(7)
QUERY = words(RNG, 4)
TEXTS = [words(RNG, 3 + i) for i in range(8)]


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build_tiny_cross_encoder(tmp_path_factory.mktemp("bert") / "tiny-bert"))


@pytest.fixture(scope="module")
def raw_logits(bert: str) -> list[float]:
    """The head's outputs as sentence-transformers computes them, independently of LocalScorer."""
    import torch
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(bert, device="cpu")
    out = model.predict([(QUERY, t) for t in TEXTS], activation_fn=torch.nn.Identity())
    return [float(v) for v in out]


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# --- LocalScorer ----------------------------------------------------------------------------


def test_an_undeclared_cross_encoder_is_refused_with_the_way_out(bert: str) -> None:
    with pytest.raises(
        ConfigurationError, match=r"does not load as a zerank reranker.*scale='logit'"
    ):
        LocalScorer(bert, device="cpu")


def test_a_declared_logit_head_scores_sigmoid_of_its_logit_uncalibrated(
    bert: str, raw_logits: list[float]
) -> None:
    scorer = LocalScorer(bert, device="cpu", scale="logit", max_batch_size=3)

    scores = scorer.score(QUERY, TEXTS)

    assert scorer.scale is Scale.UNCALIBRATED
    assert scorer.calibrated is False
    assert scorer.output_scale is Scale.LOGIT
    assert scores == pytest.approx([sigmoid(x) for x in raw_logits], abs=1e-5)
    assert len(set(round(s, 4) for s in scores)) > 1  # a test model that tells texts apart
    assert "scale='logit'" in repr(scorer)
    assert scorer.stats.fast is False


def test_a_long_text_is_scored_in_windows_and_blank_texts_are_not_run(bert: str) -> None:
    scorer = LocalScorer(bert, device="cpu", scale="logit")
    long_text = words(random.Random(1), 400)

    detailed = scorer.score_detailed(QUERY, [long_text, "  ", TEXTS[0]])

    assert detailed.windows[0] > 1
    assert detailed.windows[1] == 0
    assert detailed.probabilities[1] == 0.0


def test_a_wrongly_declared_scale_is_an_error_naming_it(tmp_path: Path) -> None:
    folder = build_tiny_cross_encoder(tmp_path / "biased", bias=50.0)
    scorer = LocalScorer(str(folder), device="cpu", scale="sigmoid")

    with pytest.raises(InvalidResponseError, match=r"outside \[0, 1\].*declared 'sigmoid'"):
        scorer.score(QUERY, TEXTS[:2])


def test_a_bad_scale_name_is_refused(bert: str) -> None:
    with pytest.raises(ConfigurationError, match="scale must be 'logit', 'sigmoid' or"):
        LocalScorer(bert, device="cpu", scale="uncalibrated")


def test_zerank_keeps_its_calibrated_scale(tmp_path: Path) -> None:
    from tests.tiny_zerank import build_tiny_zerank

    folder = str(build_tiny_zerank(tmp_path / "zerank"))

    assert LocalScorer(folder, device="cpu", scale="logit").calibrated is True
    assert LocalScorer(folder, device="cpu").scale is Scale.PROBABILITY
    with pytest.raises(ConfigurationError, match="is a zerank reranker"):
        LocalScorer(folder, device="cpu", scale="sigmoid")


def test_a_pickle_keeps_the_declared_scale_and_cache_keys_differ(bert: str) -> None:
    logit = LocalScorer(bert, device="cpu", scale="logit")
    probability = LocalScorer(bert, device="cpu", scale="probability")

    restored = pickle.loads(pickle.dumps(logit))

    assert restored.output_scale is Scale.LOGIT
    assert not restored.calibrated
    assert logit.cache_identity != probability.cache_identity


def test_a_calibrated_scorer_turns_it_into_probabilities(bert: str) -> None:
    scorer = LocalScorer(bert, device="cpu", scale="logit")
    raw = scorer.score(QUERY, TEXTS)
    labels = [int(s >= sorted(raw)[len(raw) // 2]) for s in raw]

    calibrated = CalibratedScorer(scorer, PlattCalibrator().fit(raw, labels))

    assert calibrated.scale is Scale.PROBABILITY
    assert calibrated.score(QUERY, TEXTS) == pytest.approx(
        list(calibrated.calibrator.predict_proba(raw)[:, 1])
    )


# --- adapters ---------------------------------------------------------------------------------


def test_the_compressor_runs_it_flagged_uncalibrated(bert: str, raw_logits: list[float]) -> None:
    compressor = ZeRankCompressor(model=bert, scale="logit", max_batch_size=2, threshold=None)
    scorer = compressor.get_scorer()

    kept = compressor.compress_documents(
        [Document(t, id=str(i)) for i, t in enumerate(TEXTS)], QUERY
    )

    assert isinstance(scorer, LocalScorer)
    assert scorer.scale is Scale.UNCALIBRATED
    assert scorer.max_batch_size == 2
    by_id = {d.id: d.metadata["relevance_score"] for d in kept}
    assert by_id == {str(i): pytest.approx(sigmoid(x), abs=1e-5) for i, x in enumerate(raw_logits)}
    restored = pickle.loads(pickle.dumps(compressor)).get_scorer()
    assert restored.scale is Scale.UNCALIBRATED


def test_the_postprocessor_runs_it(bert: str) -> None:
    postprocessor = ZeRankPostprocessor(model=bert, scale="logit", threshold=None, top_n=2)

    kept = postprocessor.postprocess_nodes(
        [NodeWithScore(node=TextNode(text=t)) for t in TEXTS], query_bundle=QueryBundle(QUERY)
    )

    assert len(kept) == 2
    assert postprocessor.scorer.scale is Scale.UNCALIBRATED


def test_scale_does_not_apply_to_the_hosted_api() -> None:
    with pytest.raises(ConfigurationError, match="scale does not apply to the hosted backend"):
        ZeRankCompressor(model="zerank-2", api_key="ze-key-1234", scale="logit")


# --- policies that carry a calibrator ---------------------------------------------------------


@pytest.mark.parametrize("kind", [PlattCalibrator, IsotonicCalibrator])
def test_a_calibrator_round_trips_through_json(kind: type[Any]) -> None:
    scores = [0.1, 0.2, 0.35, 0.4, 0.6, 0.7, 0.8, 0.9]
    labels = [0, 0, 1, 0, 1, 0, 1, 1]
    fitted = kind().fit(scores, labels)

    again = calibrator_from_dict(json.loads(json.dumps(fitted.to_dict())))

    probe = [0.0, 0.15, 0.5, 0.75, 1.0]
    assert list(again.predict_proba(probe)[:, 1]) == pytest.approx(
        list(fitted.predict_proba(probe)[:, 1])
    )


def test_isotonic_predictions_match_scikit_learn() -> None:
    scores = [0.1, 0.2, 0.35, 0.4, 0.6, 0.7, 0.8, 0.9]
    fitted = IsotonicCalibrator().fit(scores, [0, 0, 1, 0, 1, 0, 1, 1])
    probe = [-1.0, 0.1, 0.3, 0.55, 0.85, 2.0]

    assert list(fitted.predict_proba(probe)[:, 1]) == pytest.approx(
        list(fitted.isotonic_.predict(probe))
    )


@pytest.mark.parametrize(
    ("calibrator", "message"),
    [
        ({"method": "sigmoid"}, "method must be 'platt' or 'isotonic'"),
        ({"method": "platt", "coef": "x", "intercept": 0}, "calibrator is damaged"),
        ({"method": "isotonic", "x": [0, 1], "y": [0.9, 0.1]}, "non-decreasing"),
    ],
)
def test_a_damaged_calibrator_in_a_policy_is_named(
    tmp_path: Path, calibrator: dict[str, Any], message: str
) -> None:
    path = tmp_path / "policy.json"
    data = {
        "format": "zerank-gate/threshold-policy",
        "version": 2,
        "method": "empirical",
        "target": 0.9,
        "threshold": 0.4,
        "fit": {"n_queries": 3, "n": 3, "recall": 1.0, "corrected_risk": 0.0},
        "calibrator": calibrator,
    }
    path.write_text(json.dumps(data), encoding="utf-8")

    with pytest.raises(ConfigurationError, match=message):
        ThresholdPolicy.load(path)


# --- the command line: compress, calibrate, compress --policy ---------------------------------


@pytest.fixture(scope="module")
def labelled_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = random.Random(3)
    lines = []
    for number in range(12):
        units = [words(rng, 3 + i) for i in range(5)]
        lines.append({"query": words(rng, 4), "units": units, "relevant": [number % 5]})
    path = tmp_path_factory.mktemp("labelled") / "set.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def packet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("packet")
    document = folder / "doc.txt"
    document.write_text("\f".join(TEXTS), encoding="utf-8")
    criteria = folder / "criteria.yaml"
    criteria.write_text(f"- id: c1\n  text: {QUERY}\n", encoding="utf-8")
    return document, criteria


def compress(bert: str, packet: tuple[Path, Path], out: Path, *extra: str) -> tuple[str, Any]:
    document, criteria = packet
    code, _, err = call(
        "compress",
        str(document),
        "--criteria",
        str(criteria),
        "--model",
        bert,
        "--scale",
        "logit",
        "--no-cache",
        "--threshold",
        "none",
        "-o",
        str(out),
        *extra,
    )
    assert code == 0, err
    return err, json.loads(out.read_text(encoding="utf-8"))


def matrix(result: Any) -> list[float]:
    return [float(v) for item in result["results"] for v in item["scores"].values()]


def test_zerank_compress_runs_it_flagged_uncalibrated(
    bert: str, packet: tuple[Path, Path], tmp_path: Path
) -> None:
    err, result = compress(bert, packet, tmp_path / "out.json")

    assert result["scale"] == "uncalibrated"
    assert "uncalibrated logit scores" in err
    assert "is not a zerank model: its scores are uncalibrated" in err


def test_without_a_scale_the_command_line_names_the_flag(
    bert: str, packet: tuple[Path, Path]
) -> None:
    document, criteria = packet
    code, _, err = call(
        "compress", str(document), "--criteria", str(criteria), "--model", bert, "--no-cache"
    )

    assert code != 0
    assert "scale='logit'" in err


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_zerank_calibrate_fits_a_calibrator_that_compress_applies(
    method: str, bert: str, labelled_set: Path, packet: tuple[Path, Path], tmp_path: Path
) -> None:
    policy_path = tmp_path / "policy.json"
    code, _, err = call(
        "calibrate",
        str(labelled_set),
        "--model",
        bert,
        "--scale",
        "logit",
        "--calibrator",
        method,
        "--method",
        "empirical",
        "--target",
        "0.8",
        "--no-cache",
        "-o",
        str(policy_path),
    )
    assert code == 0, err
    assert f"calibration: {method} on 60 units (12 relevant)" in err
    policy = ThresholdPolicy.load(policy_path)
    assert policy.calibrator is not None
    assert json.loads(policy_path.read_text())["calibrator"]["method"] == method
    assert 0.0 <= policy.threshold <= 1.0

    _, raw = compress(bert, packet, tmp_path / "raw.json")
    err, calibrated = compress(bert, packet, tmp_path / "cal.json", "--policy", str(policy_path))

    assert calibrated["scale"] == "probability"
    assert f"calibration: {method} calibrator from {policy_path}" in err
    assert "its scores are uncalibrated" not in err
    expected = policy.calibrator.predict_proba(matrix(raw))[:, 1]
    assert matrix(calibrated) == pytest.approx(list(expected), abs=1e-4)


def test_zerank_evaluate_applies_the_calibrator_of_its_policy(
    bert: str, labelled_set: Path, tmp_path: Path
) -> None:
    backend = ("--model", bert, "--scale", "logit", "--no-cache")
    policy_path = tmp_path / "policy.json"
    code, _, err = call(
        "calibrate",
        str(labelled_set),
        *backend,
        "--calibrator",
        "platt",
        "--method",
        "empirical",
        "--target",
        "0.8",
        "-o",
        str(policy_path),
    )
    assert code == 0, err

    code, out, err = call(
        "evaluate", str(labelled_set), *backend, "--policy", str(policy_path), "-o", "-"
    )

    assert code == 0, err
    assert "calibration: platt calibrator" in err
    fitted = json.loads(policy_path.read_text(encoding="utf-8"))["on_fitting_set"]
    evaluated = json.loads(out)["policy"]
    assert evaluated["mean_recall"] == pytest.approx(fitted["mean_recall"])
    assert evaluated["chars_kept"] == pytest.approx(fitted["chars_kept"])


def test_ray_actors_build_the_policy_calibrator_around_their_backend() -> None:
    from zerank_core.cli._documents import _actor_scorer

    calibrator = {"method": "platt", "coef": 2.0, "intercept": -1.0}
    choice = _actor_scorer(
        backend=None, server_url=None, model="bm25", device=None, calibrator=calibrator
    )
    assert choice.name == "lexical"  # the actor names its backend in every result
    scorer = choice.scorer
    texts = ["apple banana", "plain water", "apple"]

    assert isinstance(scorer, CalibratedScorer)
    raw = scorer.scorer.score("apple banana", texts)
    assert scorer.score("apple banana", texts) == pytest.approx(
        [sigmoid(2.0 * s - 1.0) for s in raw]
    )


def test_the_html_report_says_the_scores_are_uncalibrated(
    bert: str, packet: tuple[Path, Path], tmp_path: Path
) -> None:
    report = tmp_path / "report.html"

    compress(bert, packet, tmp_path / "out.json", "--html", str(report))

    html = report.read_text(encoding="utf-8")
    assert "is not a zerank model): they order pages" in html
    assert "BM25 lexical baseline" not in html
