"""``zerank calibrate``: fit thresholds for a recall target on a labelled set, write a policy.

The labelled set is scored with the chosen backend (the same options and score
cache as ``zerank compress``); the command prints recall against characters
kept and writes a policy file that ``zerank compress --policy`` applies.
With ``--calibrator platt|isotonic`` it first fits a calibrator on the set's
units (score → relevant?), which turns an uncalibrated scorer (BM25, a MiniLM
or bge cross-encoder) into probabilities; the thresholds are then fitted on
the calibrated scores, and the policy file carries the calibrator, which
``compress --policy`` and ``evaluate --policy`` apply before the thresholds.
"""

from __future__ import annotations

import argparse
import dataclasses
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from zerank_core.calibrate import (
    IsotonicCalibrator,
    PlattCalibrator,
    PolicyFile,
    ThresholdPolicy,
    expected_calibration_error,
    fit_policy,
)
from zerank_core.cli._common import (
    add_backend_options,
    add_output_option,
    cache_line,
    make_scorer,
    positive_arg,
    write_json,
)
from zerank_core.datasets import LabelledSet, load_labelled
from zerank_core.errors import ConfigurationError
from zerank_core.evaluate import (
    LabelledQuery,
    evaluate_selection,
    recall_at_fraction,
)
from zerank_core.scorers.base import Scale, Scorer
from zerank_core.select import SelectionPolicy

__all__ = ["add_data_options", "add_parser", "run", "score_labelled"]

FRACTIONS = (0.05, 0.10, 0.15, 0.20, 0.30, 0.50)

_DATA_NOTES = (
    "labelled sets: a .jsonl file of {query, units, relevant: [unit indices]} (optional id, "
    "criterion, document, instruction); a YAML/JSON answer key {criteria: FILE, documents: "
    "[{document: FILE, evidence: {criterion id: [pages]}}]} over documents in any format "
    "zerank compress reads (see cookbook/prior_auth/evidence.yaml); or a ContractNLI split "
    "(benchmarks/data/contractnli/dev.json), as pages (--units pages) or spans.",
)
DATA_EPILOG = "\n\n".join(
    textwrap.fill(note, width=78, break_on_hyphens=False) for note in _DATA_NOTES
)


def add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", type=Path, help="labelled set: .jsonl, answer key, ContractNLI")
    group = parser.add_argument_group("ContractNLI")
    group.add_argument(
        "--units",
        choices=("pages", "spans"),
        default="pages",
        help="score concatenated contracts cut into pages, or each contract's spans "
        "(default %(default)s)",
    )
    group.add_argument(
        "--contracts-per-document",
        type=positive_arg,
        default=10,
        metavar="N",
        help="contracts joined into one long document (default %(default)s)",
    )
    group.add_argument(
        "--contract-page-chars",
        type=positive_arg,
        default=2500,
        metavar="N",
        help="page size of the joined contracts (default %(default)s)",
    )


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "calibrate",
        help="fit thresholds for a recall target on a labelled set; write a policy file",
        description="Score a labelled set, print recall against characters kept, and fit\n"
        "the threshold that keeps the target share of the evidence (conformal risk\n"
        "control by default). zerank compress --policy FILE applies it.",
        epilog=DATA_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_data_options(parser)
    parser.add_argument(
        "--target",
        type=_target_arg,
        default=0.9,
        metavar="R",
        help="recall target in (0, 1): expected share of a query's evidence kept "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--method",
        choices=("conformal", "empirical"),
        default="conformal",
        help="conformal: guaranteed in expectation for a new query exchangeable with these "
        "(needs at least 1/(1-R) - 1 of them); empirical: meets the target on this set only "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--per-criterion",
        action="store_true",
        help="also fit one threshold per criterion (criteria with too few queries keep the "
        "global one)",
    )
    parser.add_argument(
        "--group-by-document",
        action="store_true",
        help="treat each document, not each query, as the exchangeable unit",
    )
    parser.add_argument(
        "--calibrator",
        choices=("platt", "isotonic"),
        help="first fit a calibrator on the units (score -> relevant?) and fit the thresholds "
        "on its probabilities; the policy file carries it. platt: a logistic map, for a few "
        "hundred units or more; isotonic: a monotone step map, for thousands. Needed for "
        "uncalibrated scorers (BM25, --scale with another cross-encoder)",
    )
    add_output_option(parser)
    add_backend_options(parser)


def _target_arg(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a recall in (0, 1), got {value!r}") from None
    if not 0.0 < number < 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {value}")
    return number


def score_labelled(
    args: argparse.Namespace, err: TextIO
) -> tuple[LabelledSet, list[LabelledQuery], dict[str, Any]]:
    """Read ``args.data``, score it with the chosen backend; say what was read and scored."""
    labelled = load_labelled(
        args.data,
        units=args.units,
        contracts_per_document=args.contracts_per_document,
        page_chars=args.contract_page_chars,
    )
    examples = labelled.examples
    criteria = {e.criterion for e in examples if e.criterion is not None}
    n_units = sum(len(e.units) for e in examples)
    scorer, cached = make_scorer(args, err)
    print(
        f"data: {labelled.path} — {labelled.format}, {len(examples)} queries "
        f"({labelled.n_with_evidence} with evidence), {len(criteria)} criteria, "
        f"{n_units:,} units",
        file=err,
    )
    started = time.perf_counter()
    hits = misses = None
    try:
        queries = [
            _labelled(e.id, e.units, e.relevant, _score(scorer, e.query, e.units, e.instruction))
            for e in examples
        ]
        if cached is not None:
            stats = cached.stats
            hits, misses = stats.hits, stats.misses
    finally:
        if cached is not None:
            cached.close()
    print(f"scored {n_units:,} units in {time.perf_counter() - started:.1f} s", file=err)
    print(cache_line(cached, hits, misses), file=err)
    scale = getattr(scorer, "scale", None)
    backend = {
        **args.backend_used,
        "model": getattr(scorer, "model", None),
        "scale": scale.value if isinstance(scale, Scale) else None,
    }
    return labelled, queries, backend


def _score(
    scorer: Scorer, query: str, units: Sequence[str], instruction: str | None
) -> list[float]:
    return scorer.score(query, list(units), instruction=instruction)


def _labelled(
    query_id: str, units: Sequence[str], relevant: frozenset[int], scores: Sequence[float]
) -> LabelledQuery:
    if len(scores) != len(units):
        raise ConfigurationError(
            f"query {query_id!r}: the scorer returned {len(scores)} scores for {len(units)} units"
        )
    return LabelledQuery(
        scores=tuple(scores),
        lengths=tuple(len(u) for u in units),
        relevant=relevant,
        query_id=query_id,
    )


def print_recall_curve(queries: Sequence[LabelledQuery], err: TextIO) -> list[dict[str, float]]:
    """The ranking's recall at shares of characters kept, as printed and as JSON rows."""
    reports = recall_at_fraction(queries, FRACTIONS)
    n = reports[0].n_with_relevant
    print(f"\nrecall against characters kept (ranking prefix; {n} queries with evidence)", file=err)
    print(f"{'chars kept':>10}  {'mean recall':>11}  {'full recall':>11}", file=err)
    rows = []
    for fraction, report in zip(FRACTIONS, reports, strict=True):
        print(
            f"{fraction:>10.0%}  {report.mean_recall:>11.3f}  {report.full_recall_rate:>11.3f}",
            file=err,
        )
        rows.append(
            {
                "chars_kept": fraction,
                "mean_recall": round(report.mean_recall, 6),
                "full_recall_rate": round(report.full_recall_rate, 6),
            }
        )
    return rows


def policy_selections(policy: ThresholdPolicy, labelled: LabelledSet) -> list[SelectionPolicy]:
    """Each query's selection under ``policy``: its criterion's threshold, else the global one."""
    return [SelectionPolicy(threshold=policy.threshold_for(e.criterion)) for e in labelled.examples]


def fit_calibrator(
    method: str, queries: Sequence[LabelledQuery], err: TextIO
) -> tuple[PlattCalibrator | IsotonicCalibrator, list[LabelledQuery]]:
    """Fit ``method`` on every unit's (score, relevant?); return it and the calibrated queries."""
    scores = [s for q in queries for s in q.scores]
    labels = [int(i in q.relevant) for q in queries for i in range(len(q.scores))]
    calibrator = PlattCalibrator() if method == "platt" else IsotonicCalibrator()
    calibrator.fit(scores, labels)
    calibrated = [_with_scores(q, calibrator) for q in queries]
    after = [s for q in calibrated for s in q.scores]
    print(
        f"\ncalibration: {method} on {len(scores):,} units ({sum(labels):,} relevant); "
        f"expected calibration error on this set {expected_calibration_error(scores, labels):.3f} "
        f"before, {expected_calibration_error(after, labels):.3f} after",
        file=err,
    )
    return calibrator, calibrated


def _with_scores(
    query: LabelledQuery, calibrator: PlattCalibrator | IsotonicCalibrator
) -> LabelledQuery:
    if not query.scores:
        return query
    probabilities = calibrator.predict_proba(query.scores)[:, 1]
    return dataclasses.replace(query, scores=tuple(float(p) for p in probabilities))


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    labelled, queries, backend = score_labelled(args, err)
    calibrator = None
    if args.calibrator is not None:
        calibrator, queries = fit_calibrator(args.calibrator, queries, err)
    rows = print_recall_curve(queries, err)
    criteria = [e.criterion for e in labelled.examples]
    groups = [e.document or e.id for e in labelled.examples] if args.group_by_document else None
    policy = fit_policy(
        queries,
        args.target,
        method=args.method,
        criteria=criteria,
        per_criterion=args.per_criterion,
        groups=groups,
        backend=backend,
        data={
            "path": str(labelled.path),
            "format": labelled.format,
            "queries": len(labelled.examples),
            "queries_with_evidence": labelled.n_with_evidence,
        },
    )
    if calibrator is not None:
        policy = dataclasses.replace(policy, calibrator=calibrator)
    fit = policy.fit
    overall = evaluate_selection(queries, policy_selections(policy, labelled))
    print(
        f"\n{fit.method} threshold for recall {fit.target:g} (α = {policy.alpha:.3g}, "
        f"n = {fit.n} {'documents' if groups else 'queries'} with evidence): "
        f"{fit.threshold:.6g}",
        file=err,
    )
    print(
        f"on this set: mean recall {fit.recall:.3f} at the global threshold; with the "
        f"policy, {overall.mean_recall:.3f}, keeping {overall.chars_kept:.1%} of the characters",
        file=err,
    )
    if policy.criteria:
        width = max(9, *(len(k) for k in policy.criteria))
        print(f"\n{'criterion':<{width}}  {'threshold':>9}  {'n':>4}  recall", file=err)
        for name, own in sorted(policy.criteria.items()):
            print(f"{name:<{width}}  {own.threshold:>9.4g}  {own.n:>4}  {own.recall:.3f}", file=err)
    for name, reason in sorted(policy.fallback.items()):
        print(f"{name}: global threshold ({reason})", file=err)
    if backend.get("scale") == Scale.UNCALIBRATED.value and calibrator is None:
        print(
            f"note: {backend.get('model')} scores are uncalibrated; the threshold holds for "
            "this scorer on data like this set, and must be refitted for any other backend; "
            "--calibrator platt|isotonic makes its scores probabilities",
            file=err,
        )
    record = PolicyFile.model_validate(
        {
            **policy.to_dict(),
            "recall_curve": rows,
            "on_fitting_set": {
                "mean_recall": round(overall.mean_recall, 6),
                "full_recall_rate": round(overall.full_recall_rate, 6),
                "chars_kept": round(overall.chars_kept, 6),
            },
        }
    )
    write_json(record.dump(), args.output, out, err)
    return 0
