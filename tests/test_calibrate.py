"""Recall-target thresholds, calibration error, recalibration and the calibrated scorer."""

from __future__ import annotations

import math
import sys
import warnings

import numpy as np
import pytest

from tests.extras import needs_sklearn
from zerank_core.calibrate import (
    CalibratedScorer,
    IsotonicCalibrator,
    PlattCalibrator,
    conformal_threshold,
    empirical_threshold,
    expected_calibration_error,
    reliability_bins,
)
from zerank_core.classify import LabelClassifier
from zerank_core.errors import ConfigurationError, MissingDependencyError
from zerank_core.evaluate import LabelledQuery, evaluate_selection, pooled_units
from zerank_core.scorers.base import Scale, Scorer
from zerank_core.scorers.lexical import BM25Scorer


def _query(scores: tuple[float, ...], relevant: set[int]) -> LabelledQuery:
    return LabelledQuery(scores=scores, lengths=(1,) * len(scores), relevant=frozenset(relevant))


# Relevant scores and weights 1 / (n * m): 0.9 and 0.3 (1/6 each), 0.6 (1/3), 0.5 and
# 0.4 (1/6 each). Mean recall: t=0.9 -> 1/6, 0.6 -> 1/2, 0.5 -> 2/3, 0.4 -> 5/6, 0.3 -> 1.
HAND = [
    _query((0.9, 0.8, 0.3), {0, 2}),
    _query((0.7, 0.6), {1}),
    _query((0.5, 0.4, 0.2), {0, 1}),
    _query((0.95,), set()),  # nothing relevant: carries no loss, left out (n = 3)
]


@pytest.mark.parametrize(
    ("target", "threshold", "recall"),
    [(0.1, 0.9, 1 / 6), (0.5, 0.6, 0.5), (2 / 3, 0.5, 2 / 3), (0.8, 0.4, 5 / 6), (1.0, 0.3, 1.0)],
)
def test_empirical_threshold_is_the_highest_meeting_the_target(
    target: float, threshold: float, recall: float
) -> None:
    fit = empirical_threshold(HAND, target)
    assert fit.method == "empirical"
    assert fit.threshold == threshold
    assert fit.recall == pytest.approx(recall)
    assert fit.n_queries == 3


@pytest.mark.parametrize(
    ("target", "threshold", "corrected"),
    # (3 R + 1) / 4 at t = 0.6, 0.5, 0.4, 0.3: 0.625, 0.5, 0.375, 0.25.
    [(0.3, 0.6, 0.625), (0.5, 0.5, 0.5), (0.6, 0.4, 0.375), (0.75, 0.3, 0.25)],
)
def test_conformal_threshold_exact_values(
    target: float, threshold: float, corrected: float
) -> None:
    fit = conformal_threshold(HAND, target)
    assert fit.method == "conformal"
    assert fit.threshold == threshold
    assert fit.corrected_risk == pytest.approx(corrected)
    assert fit.corrected_risk <= 1 - target + 1e-12


def test_conformal_needs_enough_queries_for_its_target() -> None:
    # 1 / (n + 1) = 0.25 > 0.2: no threshold can satisfy the corrected bound.
    with pytest.raises(
        ConfigurationError, match="needs at least 4 queries with relevant units, got 3"
    ):
        conformal_threshold(HAND, 0.8)
    with pytest.raises(ConfigurationError, match=r"cannot guarantee a recall of 1\.0"):
        conformal_threshold(HAND, 1.0)


def test_candidates_restrict_the_threshold_to_a_grid() -> None:
    fit = empirical_threshold(HAND, 0.8, candidates=[0.65, 0.1, 0.35, 0.45, 0.55])
    assert fit.threshold == 0.35
    assert fit.recall == pytest.approx(5 / 6)
    with pytest.raises(
        ConfigurationError,
        match=r"no candidate threshold reaches a recall of 0\.8: the lowest, 0\.7, gives 0\.1667",
    ):
        empirical_threshold(HAND, 0.8, candidates=[0.95, 0.7])


# Groups G1 = {Q1, Q2}, G2 = {Q3, Q4}: unit weights 1/8, 1/8 (Q1), 1/4 (Q2), 1/4, 1/4 (Q3).
# Mean recall: t=0.9 -> 1/8, 0.6 -> 3/8, 0.5 -> 5/8, 0.4 -> 7/8, 0.3 -> 1.
GROUPS = ["G1", "G1", "G2", "G2"]


@pytest.mark.parametrize(
    ("method", "target", "threshold"),
    [
        (empirical_threshold, 0.8, 0.4),
        (empirical_threshold, 0.6, 0.5),
        (conformal_threshold, 0.5, 0.4),  # (2 R + 1) / 3 <= 0.5: R <= 1/4
        (conformal_threshold, 0.6, 0.3),  # R <= 0.1
    ],
)
def test_groups_make_documents_the_exchangeable_unit(
    method: object, target: float, threshold: float
) -> None:
    fit = method(HAND, target, groups=GROUPS)  # type: ignore[operator]
    assert fit.threshold == threshold
    assert fit.n == 2
    assert fit.n_queries == 3


def test_groups_need_enough_groups_and_one_key_per_query() -> None:
    with pytest.raises(ConfigurationError, match="needs at least 3 groups, got 2"):
        conformal_threshold(HAND, 0.7, groups=GROUPS)
    with pytest.raises(ConfigurationError, match="groups has 2 entries for 4 queries"):
        conformal_threshold(HAND, 0.5, groups=["G1", "G2"])


def test_one_group_per_query_is_the_same_as_no_groups() -> None:
    queries = _random_queries(np.random.default_rng(5), 50)
    for target in (0.8, 0.9):
        plain = conformal_threshold(queries, target)
        grouped = conformal_threshold(queries, target, groups=[f"q{i}" for i in range(50)])
        assert grouped == plain


@pytest.mark.parametrize("target", [0.0, -0.1, 1.5, math.nan, "0.9", True])
def test_bad_targets_are_rejected(target: object) -> None:
    with pytest.raises(ConfigurationError, match="target must be a recall in \\(0, 1\\]"):
        empirical_threshold(HAND, target)  # type: ignore[arg-type]


def test_no_relevant_query_is_an_error() -> None:
    with pytest.raises(ConfigurationError, match=r"queries\[0\] must be a LabelledQuery, got dict"):
        conformal_threshold([{"scores": [0.5]}], 0.5)  # type: ignore[list-item]
    with pytest.raises(ConfigurationError, match="no query has a relevant unit"):
        conformal_threshold([_query((0.5,), set())], 0.5)


def test_fitted_threshold_gives_a_selection_policy_that_reaches_the_recall() -> None:
    fit = empirical_threshold(HAND, 0.8)
    report = evaluate_selection(HAND, fit.policy(order="original"))
    assert report.mean_recall == pytest.approx(fit.recall)


def _random_queries(rng: np.random.Generator, n: int) -> list[LabelledQuery]:
    """Relevant scores sqrt(U) (P(score >= t) = 1 - t^2), irrelevant ones U^2."""
    queries = []
    for _ in range(n):
        m = int(rng.integers(1, 4))
        k = int(rng.integers(3, 10))
        scores = np.concatenate([np.sqrt(rng.random(m)), rng.random(k) ** 2])
        queries.append(_query(tuple(float(s) for s in scores), set(range(m))))
    return queries


def test_conformal_threshold_is_never_higher_than_the_empirical_one() -> None:
    rng = np.random.default_rng(1)
    for _ in range(30):
        queries = _random_queries(rng, int(rng.integers(20, 60)))
        for target in (0.5, 0.8, 0.9, 0.95):
            try:
                conformal = conformal_threshold(queries, target)
            except ConfigurationError:
                continue
            empirical = empirical_threshold(queries, target)
            assert conformal.threshold <= empirical.threshold
            assert conformal.recall >= empirical.recall >= target - 1e-12


def test_conformal_threshold_meets_its_target_on_fresh_draws_in_expectation() -> None:
    # A fresh query's expected recall at t is P(relevant score >= t) = 1 - t^2
    # whatever its number of relevant units, so averaging it over many
    # calibration sets estimates the guaranteed quantity without sampling noise
    # from the test side.
    rng = np.random.default_rng(7)
    n, target, trials = 40, 0.9, 400
    conformal, empirical = [], []
    for _ in range(trials):
        queries = _random_queries(rng, n)
        conformal.append(1 - conformal_threshold(queries, target).threshold ** 2)
        empirical.append(1 - empirical_threshold(queries, target).threshold ** 2)
    standard_error = float(np.std(conformal)) / math.sqrt(trials)
    assert np.mean(conformal) >= target - 3 * standard_error
    # Not wastefully conservative: CRC's excess is at most about 1 / (n + 1).
    assert np.mean(conformal) <= target + 2 / (n + 1)
    # The uncorrected threshold is fitted to the sample, so it falls short more often.
    assert np.mean(empirical) < np.mean(conformal)


def test_conformal_threshold_agrees_with_mapie_risk_control() -> None:
    risk_control = pytest.importorskip("mapie.risk_control")
    rng = np.random.default_rng(3)
    queries = _random_queries(rng, 200)
    # MAPIE's multi-label controller needs one row per query of equal width:
    # pad with irrelevant zero scores, which never change a query's recall.
    width = max(len(q.scores) for q in queries)
    scores = np.zeros((len(queries), width))
    labels = np.zeros((len(queries), width), dtype=int)
    for row, q in enumerate(queries):
        scores[row, : len(q.scores)] = q.scores
        labels[row, sorted(q.relevant)] = 1
    grid = np.arange(0.0, 1.0, 0.01)
    targets = [0.7, 0.8, 0.9, 0.95]
    controller = risk_control.MultiLabelClassificationController(
        predict_function=lambda x: x,
        risk="recall",
        method="crc",
        target_level=targets,
        predict_params=grid,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # MAPIE warns when no threshold controls the risk
        controller.calibrate(scores, labels)
    # MAPIE keeps scores > λ and we keep scores >= t: the same sets, since no
    # continuous score lands exactly on a grid value.
    ours = [conformal_threshold(queries, t, candidates=grid).threshold for t in targets]
    assert ours == pytest.approx(list(controller.best_predict_param))
    fit = conformal_threshold(queries, 0.9, candidates=grid)
    index = int(np.flatnonzero(np.isclose(grid, fit.threshold))[0])
    assert controller.r_hat_plus[index] == pytest.approx(fit.corrected_risk)


# --- calibration error ---------------------------------------------------------------


def test_ece_exact_value_on_a_hand_made_case() -> None:
    probabilities = [0.15, 0.15, 0.85, 0.85, 0.55]
    labels = [0, 1, 1, 1, 1]
    # Bins (0.1, 0.2]: gap |0.5 - 0.15|; (0.8, 0.9]: |1 - 0.85|; (0.5, 0.6]: |1 - 0.55|.
    assert expected_calibration_error(probabilities, labels) == pytest.approx(
        0.4 * 0.35 + 0.4 * 0.15 + 0.2 * 0.45
    )
    bins = reliability_bins(probabilities, labels)
    assert bins.counts == (0, 2, 0, 0, 0, 1, 0, 0, 2, 0)
    assert bins.observed[1] == 0.5
    assert bins.mean_predicted[0] is None


def test_ece_is_zero_when_frequencies_match() -> None:
    assert expected_calibration_error([0.25] * 4, [1, 0, 0, 0]) == 0.0
    assert expected_calibration_error([0.25] * 4, [1, 1, 0, 0], n_bins=1) == 0.25


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_reliability_bins_match_scikit_learn_calibration_curve(strategy: str) -> None:
    calibration = pytest.importorskip("sklearn.calibration")
    rng = np.random.default_rng(0)
    p = rng.random(500)
    y = (rng.random(500) < p**2).astype(int)
    bins = reliability_bins(p, y, n_bins=8, strategy=strategy)  # type: ignore[arg-type]
    observed, predicted = calibration.calibration_curve(y, p, n_bins=8, strategy=strategy)
    assert [o for o in bins.observed if o is not None] == pytest.approx(list(observed))
    assert [m for m in bins.mean_predicted if m is not None] == pytest.approx(list(predicted))


def test_calibration_inputs_are_checked() -> None:
    with pytest.raises(ConfigurationError, match=r"probabilities\[1\] is 1.2, outside \[0, 1\]"):
        expected_calibration_error([0.5, 1.2], [0, 1])
    with pytest.raises(ConfigurationError, match=r"labels\[0\] must be 0 or 1, got 2"):
        expected_calibration_error([0.5], [2])
    with pytest.raises(ConfigurationError, match="labels has 1 entries for 2 scores"):
        expected_calibration_error([0.5, 0.5], [1])
    with pytest.raises(ConfigurationError, match=r"probabilities\[0\] must be a finite number"):
        expected_calibration_error([math.nan], [1])
    with pytest.raises(ConfigurationError, match="n_bins must be an integer >= 1, got 0"):
        expected_calibration_error([0.5], [1], n_bins=0)


# --- recalibration -----------------------------------------------------------------


def _miscalibrated(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores in [0, 1] whose true probability of relevance is sigmoid(6 s - 4)."""
    scores = rng.random(n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-(6 * scores - 4)))).astype(int)
    return scores, labels


@needs_sklearn
def test_platt_recovers_a_known_logistic_link() -> None:
    scores, labels = _miscalibrated(np.random.default_rng(0), 20000)
    platt = PlattCalibrator().fit(scores, labels)
    assert platt.coef_ == pytest.approx(6, abs=0.4)
    assert platt.intercept_ == pytest.approx(-4, abs=0.3)
    assert list(platt.classes_) == [0, 1]


@needs_sklearn
def test_platt_stays_finite_on_separable_data() -> None:
    platt = PlattCalibrator().fit([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])
    probabilities = platt.predict_proba([0.0, 0.5, 1.0])
    assert math.isfinite(platt.coef_)
    assert 0 < probabilities[0, 1] < probabilities[2, 1] < 1
    assert probabilities.sum(axis=1) == pytest.approx([1.0, 1.0, 1.0])


@needs_sklearn
def test_isotonic_exact_step_map_and_clipping() -> None:
    isotonic = IsotonicCalibrator().fit([1, 2, 3, 4], [0, 1, 0, 1])
    # Pool-adjacent-violators merges the middle pair: 0, 0.5, 0.5, 1.
    assert list(isotonic.predict_proba([1, 2, 2.5, 3, 4])[:, 1]) == [0.0, 0.5, 0.5, 0.5, 1.0]
    assert list(isotonic.predict_proba([-5, 10])[:, 1]) == [0.0, 1.0]
    assert list(isotonic.predict([1, 4])) == [0, 1]


@needs_sklearn
@pytest.mark.parametrize("calibrator", [PlattCalibrator, IsotonicCalibrator])
def test_recalibrated_scores_are_monotone_in_the_raw_scores(calibrator: type) -> None:
    scores, labels = _miscalibrated(np.random.default_rng(2), 3000)
    fitted = calibrator().fit(scores, labels)
    grid = np.linspace(-0.5, 1.5, 401)
    assert np.all(np.diff(fitted.predict_proba(grid)[:, 1]) >= 0)
    shuffled = np.random.default_rng(3).permutation(grid)
    order = np.argsort(shuffled)
    assert np.all(np.diff(fitted.predict_proba(shuffled)[order, 1]) >= 0)


@needs_sklearn
@pytest.mark.parametrize("calibrator", [PlattCalibrator, IsotonicCalibrator])
def test_recalibration_brings_ece_down_on_fresh_data(calibrator: type) -> None:
    rng = np.random.default_rng(4)
    fit_scores, fit_labels = _miscalibrated(rng, 5000)
    test_scores, test_labels = _miscalibrated(rng, 5000)
    assert expected_calibration_error(test_scores, test_labels) > 0.1
    fitted = calibrator().fit(fit_scores, fit_labels)
    after = fitted.predict_proba(test_scores)[:, 1]
    assert expected_calibration_error(after, test_labels) < 0.03


@needs_sklearn
def test_calibrator_inputs_and_fitting_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="both relevant \\(1\\) and irrelevant \\(0\\)"):
        PlattCalibrator().fit([0.1, 0.2], [1, 1])
    with pytest.raises(ConfigurationError, match=r"scores\[1\] must be a finite number"):
        IsotonicCalibrator().fit([0.1, math.inf], [0, 1])
    with pytest.raises(ConfigurationError, match="one-dimensional"):
        PlattCalibrator().fit([[0.1], [0.2]], [0, 1])
    with pytest.raises(ConfigurationError, match="PlattCalibrator is not fitted"):
        PlattCalibrator().predict_proba([0.5])


def test_calibrators_follow_the_scikit_learn_parameter_contract() -> None:
    base = pytest.importorskip("sklearn.base")
    platt = PlattCalibrator(max_iter=50)
    assert platt.get_params() == {"max_iter": 50}
    clone = base.clone(platt)
    assert clone is not platt
    assert clone.get_params() == {"max_iter": 50}
    assert platt.set_params(max_iter=80) is platt
    assert platt.max_iter == 80
    assert repr(platt) == "PlattCalibrator(max_iter=80)"
    with pytest.raises(ConfigurationError, match="has no parameter 'C'"):
        platt.set_params(C=1.0)
    # fit returns self and learns trailing-underscore attributes only.
    fitted = platt.fit([0.1, 0.9], [0, 1])
    assert fitted is platt
    assert {name for name in vars(platt) if name != "max_iter"} == {
        "coef_",
        "intercept_",
        "classes_",
    }


def test_missing_scikit_learn_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn.isotonic", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'zerank-gate\[eval\]'"):
        IsotonicCalibrator().fit([0.1, 0.9], [0, 1])


# --- the calibrated scorer -----------------------------------------------------------

CORPUS = [
    "the cat sat on the mat",
    "cats and dogs are pets",
    "the stock market fell today",
    "a cat chased a mouse across the mat",
    "interest rates rose again",
]


def _fitted_bm25(calibrator: PlattCalibrator | IsotonicCalibrator) -> CalibratedScorer:
    scorer = BM25Scorer()
    queries = [
        LabelledQuery(
            scores=tuple(scorer.score(query, CORPUS)),
            lengths=tuple(len(t) for t in CORPUS),
            relevant=frozenset(relevant),
        )
        for query, relevant in [("cat mat", {0, 3}), ("market rates", {2, 4}), ("pets", {1})]
    ]
    return CalibratedScorer(scorer, calibrator.fit(*pooled_units(queries)))


@needs_sklearn
async def test_calibrated_scorer_meets_the_scorer_contract() -> None:
    calibrated = _fitted_bm25(PlattCalibrator())
    assert isinstance(calibrated, Scorer)
    assert calibrated.scale is Scale.PROBABILITY
    assert calibrated.model == "bm25"
    before = calibrated.usage.requests
    raw = calibrated.scorer.score("cat on a mat", CORPUS)
    probabilities = calibrated.score("cat on a mat", CORPUS)
    assert calibrated.usage.requests == before + 2
    assert len(probabilities) == len(CORPUS)
    assert all(0.0 <= p <= 1.0 for p in probabilities)
    # Same order as the raw scores.
    assert sorted(range(5), key=lambda i: -raw[i]) == sorted(
        range(5), key=lambda i: -probabilities[i]
    )
    assert await calibrated.ascore("cat on a mat", CORPUS) == probabilities
    assert calibrated.score("cat", []) == []


@needs_sklearn
def test_calibrated_scorer_plugs_into_the_classifier() -> None:
    calibrated = _fitted_bm25(IsotonicCalibrator())
    classifier = LabelClassifier(
        calibrated, labels={"animals": "cat mat pets", "finance": "market rates"}, threshold=0.3
    )
    results = classifier.classify(["the cat sat on the mat", "rates and the market"])
    assert [r.label for r in results] == ["animals", "finance"]


@needs_sklearn
def test_calibrated_scorer_plugs_into_the_langchain_compressor() -> None:
    documents = pytest.importorskip("langchain_core.documents")
    from langchain_zerank import ZeRankCompressor

    calibrated = _fitted_bm25(PlattCalibrator())
    threshold = calibrated.score("cat mat", CORPUS)[1] + 1e-9
    compressor = ZeRankCompressor(scorer=calibrated, threshold=threshold)
    kept = compressor.compress_documents(
        [documents.Document(page_content=t, id=str(i)) for i, t in enumerate(CORPUS)], "cat mat"
    )
    assert {d.id for d in kept} == {"0", "3"}
    assert all(0 < d.metadata["relevance_score"] <= 1 for d in kept)


@needs_sklearn
def test_calibrated_scorer_refuses_an_unfitted_calibrator() -> None:
    with pytest.raises(ConfigurationError, match="calibrator IsotonicCalibrator is not fitted"):
        CalibratedScorer(BM25Scorer(), IsotonicCalibrator())
    with pytest.raises(ConfigurationError, match="must have predict_proba"):
        CalibratedScorer(BM25Scorer(), object())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="lacks score, ascore, model, scale, usage"):
        CalibratedScorer(object(), PlattCalibrator().fit([0.1, 0.9], [0, 1]))  # type: ignore[arg-type]
