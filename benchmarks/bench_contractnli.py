"""ContractNLI evidence recall: recall vs characters kept, recall-target thresholds, ECE.

Scores ContractNLI dev and test with the BM25 baseline (each call indexes one
contract's spans, or one long document's pages) and a seeded random ranking,
then prints Markdown tables:

1. mean span recall at 5 / 10 / 15 % of characters, against reference figures
   from an independent BM25 implementation and a random ranking;
2. thresholds fitted on dev for recall targets 0.80 / 0.90 / 0.95
   (empirical and conformal) and the recall they reach on test;
3. expected calibration error on test before and after Platt and isotonic
   recalibration fitted on dev;
4. the same recall and thresholds at page level (contracts concatenated and
   cut into ~2,500-character pages).

It writes the recall curve and the reliability diagram as PNGs. The data is
the repository's copy in ``benchmarks/data/contractnli`` (CC BY 4.0, see the
README there), so this runs right after a clone:

    python benchmarks/bench_contractnli.py [--data DIR] [--figures cookbook/figures]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

# Run from a clone without installing: the package is the folder above.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zerank_core.calibrate import (
    IsotonicCalibrator,
    PlattCalibrator,
    ThresholdFit,
    conformal_threshold,
    empirical_threshold,
    expected_calibration_error,
)
from zerank_core.datasets import load_contractnli, page_examples, span_examples
from zerank_core.errors import ConfigurationError
from zerank_core.evaluate import (
    LabelledQuery,
    evaluate_selection,
    pooled_units,
    recall_at_fraction,
    score_examples,
)
from zerank_core.plots import plot_recall_curves, plot_reliability
from zerank_core.scorers.auto import scorer_from_env
from zerank_core.scorers.base import Scorer
from zerank_core.scorers.lexical import BM25Scorer

FRACTIONS = (0.05, 0.10, 0.15)
TARGETS = (0.80, 0.90, 0.95)
REFERENCE_BM25 = {0.05: 0.32, 0.10: 0.44, 0.15: 0.54}
REFERENCE_RANDOM = {0.05: 0.05, 0.10: 0.08, 0.15: 0.14}


def random_scores(queries: Sequence[LabelledQuery], seed: int) -> list[LabelledQuery]:
    rng = random.Random(seed)
    return [
        LabelledQuery(
            scores=tuple(rng.random() for _ in q.scores),
            lengths=q.lengths,
            relevant=q.relevant,
            query_id=q.query_id,
        )
        for q in queries
    ]


def recall_rows(name: str, queries: Sequence[LabelledQuery]) -> list[str]:
    rows = []
    for fill in (False, True):
        reports = recall_at_fraction(queries, FRACTIONS, fill=fill)
        label = f"{name}, {'budget filled' if fill else 'ranking prefix'}"
        recalls = " | ".join(f"{r.mean_recall:.3f}" for r in reports)
        full = " | ".join(f"{r.full_recall_rate:.3f}" for r in reports)
        kept = " / ".join(f"{100 * r.chars_kept:.1f}" for r in reports)
        rows.append(f"| {label} | {recalls} | {full} | {kept} |")
    return rows


def recall_table(series: Mapping[str, Sequence[LabelledQuery]], reference: bool) -> str:
    head = " | ".join(f"{int(100 * f)} %" for f in FRACTIONS)
    lines = [
        f"| ranking | mean recall at {head} | full recall at {head} | chars kept (%) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    if reference:
        ref_bm25 = " | ".join(f"{REFERENCE_BM25[f]:.2f}" for f in FRACTIONS)
        ref_random = " | ".join(f"{REFERENCE_RANDOM[f]:.2f}" for f in FRACTIONS)
        lines.append(f"| reference BM25 (independent) | {ref_bm25} | – | – | – | – |")
        lines.append(f"| reference random | {ref_random} | – | – | – | – |")
    for name, queries in series.items():
        lines.extend(recall_rows(name, queries))
    return "\n".join(lines)


def document_of(query: LabelledQuery) -> str:
    """The document part of a ``document/hypothesis`` query id."""
    return query.query_id.split("/")[0]


def threshold_table(dev: Sequence[LabelledQuery], test: Sequence[LabelledQuery]) -> str:
    lines = [
        "| target | method | threshold | dev recall | test mean recall "
        "| test full recall | test chars kept |",
        "|---|---|---|---|---|---|---|",
    ]
    by_document = [document_of(q) for q in dev]
    for target in TARGETS:
        fits: list[tuple[str, Callable[[float], ThresholdFit]]] = [
            ("empirical", lambda t: empirical_threshold(dev, t)),
            ("conformal (per query)", lambda t: conformal_threshold(dev, t)),
            (
                "conformal (per document)",
                lambda t: conformal_threshold(dev, t, groups=by_document),
            ),
        ]
        for label, fit_for in fits:
            try:
                fit = fit_for(target)
            except ConfigurationError as exc:
                lines.append(f"| {target:.2f} | {label} | – | {exc} | – | – | – |")
                continue
            result = evaluate_selection(test, fit.policy())
            lines.append(
                f"| {target:.2f} | {label} | {fit.threshold:.4f} | {fit.recall:.3f} "
                f"| {result.mean_recall:.3f} | {result.full_recall_rate:.3f} "
                f"| {100 * result.chars_kept:.1f} % |"
            )
    return "\n".join(lines)


def calibration_table(
    dev: Sequence[LabelledQuery], test: Sequence[LabelledQuery], name: str
) -> tuple[str, dict[str, tuple[list[float], list[int]]]]:
    dev_scores, dev_labels = pooled_units(dev)
    test_scores, test_labels = pooled_units(test)
    platt = PlattCalibrator().fit(dev_scores, dev_labels)
    isotonic = IsotonicCalibrator().fit(dev_scores, dev_labels)
    series = {
        f"{name} as is": (test_scores, test_labels),
        f"{name} + Platt": (
            [float(p) for p in platt.predict_proba(test_scores)[:, 1]],
            test_labels,
        ),
        f"{name} + isotonic": (
            [float(p) for p in isotonic.predict_proba(test_scores)[:, 1]],
            test_labels,
        ),
    }
    lines = [
        "| scores on test (calibrators fitted on dev) | ECE (10 bins) | ECE (10 quantile bins) |",
        "|---|---|---|",
    ]
    for label, (probabilities, labels) in series.items():
        uniform = expected_calibration_error(probabilities, labels)
        quantile = expected_calibration_error(probabilities, labels, strategy="quantile")
        lines.append(f"| {label} | {uniform:.4f} | {quantile:.4f} |")
    base_rate = sum(test_labels) / len(test_labels)
    lines.append(
        f"\n{len(test_labels)} test units, {sum(test_labels)} relevant "
        f"(base rate {base_rate:.4f}); Platt a = {platt.coef_:.3f}, b = {platt.intercept_:.3f}"
    )
    return "\n".join(lines), series


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        default=None,
        help="ContractNLI folder (dev.json, test.json; default: benchmarks/data/contractnli)",
    )
    parser.add_argument(
        "--figures",
        default=str(Path(__file__).resolve().parent.parent / "cookbook" / "figures"),
        help="where to write PNGs (default: cookbook/figures)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random ranking")
    parser.add_argument("--contracts-per-document", type=int, default=10)
    parser.add_argument("--page-chars", type=int, default=2500)
    parser.add_argument(
        "--with-env-scorer",
        action="store_true",
        help="also score with the backend scorer_from_env() finds (zerank), if any",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()

    dev_data = load_contractnli("dev", args.data)
    test_data = load_contractnli("test", args.data)
    scorers: dict[str, Scorer] = {"BM25": BM25Scorer()}
    if args.with_env_scorer:
        choice = scorer_from_env(allow_lexical=False)
        print(f"environment scorer: {choice.name} ({choice.reason})")
        scorers[choice.name] = choice.scorer

    span_dev = span_examples(dev_data)
    span_test = span_examples(test_data)
    print(
        f"ContractNLI: dev {len(dev_data.documents)} contracts, test {len(test_data.documents)}, "
        f"{len(test_data.hypotheses)} hypotheses; test pairs {len(span_test)}, "
        f"with evidence {sum(1 for e in span_test if e.relevant)}, "
        f"evidence spans {sum(len(e.relevant) for e in span_test)}"
    )
    scored: dict[str, tuple[list[LabelledQuery], list[LabelledQuery]]] = {}
    for name, scorer in scorers.items():
        tick = time.perf_counter()
        scored[name] = (score_examples(scorer, span_dev), score_examples(scorer, span_test))
        print(
            f"{name}: scored {len(span_dev) + len(span_test)} span-level calls "
            f"in {time.perf_counter() - tick:.1f} s"
        )
    series = {name: test for name, (_, test) in scored.items()}
    series["random"] = random_scores(scored["BM25"][1], args.seed)

    print("\n## Span level: mean evidence recall at a character budget (test)\n")
    print(recall_table(series, reference=True))

    unreachable = [q.scores[i] == 0.0 for q in scored["BM25"][1] for i in q.relevant]
    print(
        f"\n{100 * sum(unreachable) / len(unreachable):.1f} % of test evidence spans share no "
        "term with their hypothesis (BM25 score 0): only keeping everything recovers them."
    )
    for name, (dev, test) in scored.items():
        print(f"\n## Span level: thresholds fitted on dev, applied to test ({name} scores)\n")
        print(threshold_table(dev, test))

    print("\n## Calibration (span units, test)\n")
    table, reliability = calibration_table(*scored["BM25"], "BM25")
    print(table)

    pages_dev = page_examples(
        dev_data, contracts_per_document=args.contracts_per_document, page_chars=args.page_chars
    )
    pages_test = page_examples(
        test_data, contracts_per_document=args.contracts_per_document, page_chars=args.page_chars
    )
    tick = time.perf_counter()
    bm25 = scorers["BM25"]
    page_dev_q = score_examples(bm25, pages_dev)
    page_test_q = score_examples(bm25, pages_test)
    mean_pages = sum(len(e.units) for e in pages_test) / len(pages_test)
    print(
        f"\n## Page level: {args.contracts_per_document} contracts a document, "
        f"~{args.page_chars}-character pages (test: {len(pages_test)} cases, "
        f"{mean_pages:.1f} pages a document; scored in {time.perf_counter() - tick:.1f} s)\n"
    )
    print(
        recall_table(
            {"BM25 pages": page_test_q, "random pages": random_scores(page_test_q, args.seed)},
            reference=False,
        )
    )
    print("\nThresholds fitted on dev pages, applied to test pages (BM25 scores):\n")
    print(threshold_table(page_dev_q, page_test_q))
    print("\nCalibration of page scores (test pages, calibrators fitted on dev pages):\n")
    print(calibration_table(page_dev_q, page_test_q, "BM25 pages")[0])

    figures = Path(args.figures)
    figures.mkdir(parents=True, exist_ok=True)
    curve_series = {f"{name} (spans)": queries for name, queries in series.items()}
    curve_series["BM25 (pages)"] = page_test_q
    plot_recall_curves(
        curve_series,
        figures / "contractnli_recall_vs_chars.png",
        reference={"reference BM25": REFERENCE_BM25, "reference random": REFERENCE_RANDOM},
        title="ContractNLI test: evidence recall vs characters kept",
    )
    plot_reliability(
        reliability,
        figures / "contractnli_reliability.png",
        title="ContractNLI test spans: BM25 reliability",
    )
    print(f"\nfigures written to {figures}/; total {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
