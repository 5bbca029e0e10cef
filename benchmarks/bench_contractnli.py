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
   cut into ~2,500-character pages);
5. three ways to reach the evidence spans of those long documents: (a) pages
   only, (b) spans only (every span scored), (c) two-stage (``PageGate`` with
   a ``PassagePolicy``: pages, then the passages of kept pages), with recall
   at 5 / 10 / 15 % of characters, the texts and characters the model read
   (the query counted with every text) and the issue's three targets.
   ``--passages-only`` prints just this part.

It writes the recall curve and the reliability diagram as PNGs. The data is
the repository's copy in ``benchmarks/data/contractnli`` (CC BY 4.0, see the
README there), so this runs right after a clone:

    python benchmarks/bench_contractnli.py [--data DIR] [--figures cookbook/figures]
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
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
from zerank_core.criteria import Criterion
from zerank_core.datasets import (
    ContractNLI,
    Hypothesis,
    load_contractnli,
    page_examples,
    span_examples,
)
from zerank_core.errors import ConfigurationError
from zerank_core.evaluate import (
    LabelledQuery,
    evaluate_selection,
    pooled_units,
    recall_at_fraction,
    score_examples,
)
from zerank_core.gate import PageGate
from zerank_core.loaders import Document
from zerank_core.passages import DEFAULT_PASSAGE_CHARS, PassagePolicy
from zerank_core.plots import plot_recall_curves, plot_reliability
from zerank_core.scorers.auto import scorer_from_env
from zerank_core.scorers.base import ScoreItem, Scorer, score_many
from zerank_core.scorers.lexical import BM25Scorer
from zerank_core.select import SelectionPolicy

FRACTIONS = (0.05, 0.10, 0.15)
TARGETS = (0.80, 0.90, 0.95)
REFERENCE_BM25 = {0.05: 0.32, 0.10: 0.44, 0.15: 0.54}
REFERENCE_RANDOM = {0.05: 0.05, 0.10: 0.08, 0.15: 0.14}
STAGE1_SHARES = (0.2, 0.25, 0.3)


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


# --- evidence passages: pages only, spans only, two-stage ---------------------------


@dataclass(frozen=True)
class LongDocument:
    """Contracts joined into one text, cut into pages (as ``page_examples`` cuts them).

    ``spans`` are every contract's spans as offsets into ``text``;
    ``evidence[h]`` the indices of the spans relevant to hypothesis ``h``.
    """

    id: str
    text: str
    pages: tuple[str, ...]
    page_starts: tuple[int, ...]
    spans: tuple[tuple[int, int], ...]
    evidence: Mapping[str, frozenset[int]]


def long_documents(
    data: ContractNLI, contracts_per_document: int, page_chars: int
) -> list[LongDocument]:
    examples = page_examples(
        data, contracts_per_document=contracts_per_document, page_chars=page_chars
    )
    per_group = len(data.hypotheses)
    out = []
    for number, first in enumerate(range(0, len(data.documents), contracts_per_document)):
        group = data.documents[first : first + contracts_per_document]
        pages = examples[number * per_group].units
        text = "\n\n".join(doc.text for doc in group)
        if "".join(pages) != text:
            raise AssertionError("page_examples no longer cuts the joined contracts into pages")
        offsets = list(itertools.accumulate((len(d.text) + 2 for d in group[:-1]), initial=0))
        spans: list[tuple[int, int]] = []
        evidence: dict[str, set[int]] = {h.id: set() for h in data.hypotheses}
        for doc, offset in zip(group, offsets, strict=True):
            for h in data.hypotheses:
                evidence[h.id].update(len(spans) + i for i in doc.evidence(h.id))
            spans.extend((offset + a, offset + b) for a, b in doc.spans)
        starts = tuple(itertools.accumulate((len(p) for p in pages[:-1]), initial=0))
        out.append(
            LongDocument(
                id=f"{group[0].id}-{group[-1].id}",
                text=text,
                pages=tuple(pages),
                page_starts=starts,
                spans=tuple(spans),
                evidence={h: frozenset(v) for h, v in evidence.items()},
            )
        )
    return out


@dataclass(frozen=True)
class Ranked:
    """One (document, hypothesis) case: units as offsets into the text, best first."""

    units: tuple[tuple[int, int], ...]
    evidence: tuple[tuple[int, int], ...]
    chars_total: int


@dataclass
class Way:
    """One way to reach the evidence: its ranked cases and what the model read."""

    name: str
    cases: list[Ranked] = field(default_factory=list)
    texts_scored: int = 0
    chars_scored: int = 0

    def read(self, query: str, texts: Sequence[str]) -> None:
        self.texts_scored += len(texts)
        self.chars_scored += sum(len(query) + len(t) for t in texts)

    def recall(self, fraction: float) -> float:
        """Mean share of evidence spans covered when each case keeps a ranking prefix.

        A case keeps its best units while they fit ``fraction`` of its
        characters; an evidence span counts when at least half of its
        characters are kept (a page or span either holds it or not; a
        passage cut elsewhere may hold most of it).
        """
        recalls = [
            covered(c.units, math.floor(fraction * c.chars_total), c.evidence)
            for c in self.cases
            if c.evidence
        ]
        return sum(recalls) / len(recalls)


def covered(
    ranked: Sequence[tuple[int, int]], budget: int, evidence: Sequence[tuple[int, int]]
) -> float:
    kept = []
    used = 0
    for start, end in ranked:
        if used + end - start > budget:
            break
        used += end - start
        kept.append((start, end))
    hits = 0
    for a, b in evidence:
        overlap = sum(max(0, min(b, end) - max(a, start)) for start, end in kept)
        hits += 2 * overlap >= b - a
    return hits / len(evidence)


def ranked(
    scores: Sequence[float], units: Sequence[tuple[int, int]]
) -> tuple[tuple[int, int], ...]:
    order = sorted(range(len(units)), key=lambda i: (-scores[i], i))
    return tuple(units[i] for i in order)


def pages_only(
    scorer: Scorer, documents: Sequence[LongDocument], hypotheses: Sequence[Hypothesis]
) -> Way:
    way = Way("(a) pages only")
    for doc in documents:
        units = [(s, s + len(p)) for s, p in zip(doc.page_starts, doc.pages, strict=True)]
        columns = score_many(scorer, [ScoreItem(h.text, list(doc.pages)) for h in hypotheses])
        for h, column in zip(hypotheses, columns, strict=True):
            way.read(h.text, doc.pages)
            way.cases.append(Ranked(ranked(column, units), _evidence(doc, h), len(doc.text)))
    return way


def spans_only(
    scorer: Scorer, documents: Sequence[LongDocument], hypotheses: Sequence[Hypothesis]
) -> Way:
    way = Way("(b) spans only")
    for doc in documents:
        texts = [doc.text[a:b] for a, b in doc.spans]
        columns = score_many(scorer, [ScoreItem(h.text, texts) for h in hypotheses])
        for h, column in zip(hypotheses, columns, strict=True):
            way.read(h.text, texts)
            way.cases.append(Ranked(ranked(column, doc.spans), _evidence(doc, h), len(doc.text)))
    return way


def two_stage(
    scorer: Scorer,
    documents: Sequence[LongDocument],
    hypotheses: Sequence[Hypothesis],
    stage1: float,
    passage_chars: int,
) -> Way:
    """PageGate keeping pages up to ``stage1`` of the characters; rank every kept passage."""
    way = Way(f"(c) two-stage, stage 1 keeps ≤ {100 * stage1:g} %")
    criteria = [Criterion(h.id, h.text) for h in hypotheses]
    for doc in documents:
        gate = PageGate(
            scorer,
            SelectionPolicy(max_chars=math.floor(stage1 * len(doc.text)), order="original"),
            passages=PassagePolicy(min_keep=0, passage_chars=passage_chars),
            progress=False,
        )
        result = gate.run(Document.from_texts(doc.pages, doc.id), criteria)
        for h, item in zip(hypotheses, result.results, strict=True):
            passages = item.passages or ()
            way.read(h.text, [p for p in doc.pages if p.strip()])
            way.read(h.text, [p.text for p in passages])
            units = [
                (doc.page_starts[p.page - 1] + p.start, doc.page_starts[p.page - 1] + p.end)
                for p in passages
            ]
            scores = [p.score for p in passages]
            way.cases.append(Ranked(ranked(scores, units), _evidence(doc, h), len(doc.text)))
    return way


def _evidence(doc: LongDocument, h: Hypothesis) -> tuple[tuple[int, int], ...]:
    return tuple(doc.spans[i] for i in sorted(doc.evidence[h.id]))


def matching_fraction(way: Way, recall: float) -> float | None:
    """The smallest character share (0.5 % steps) at which ``way`` reaches ``recall``."""
    for step in range(1, 201):
        if way.recall(step / 200) >= recall - 1e-12:
            return step / 200
    return None


def passages_section(
    name: str,
    scorer: Scorer,
    data: ContractNLI,
    contracts_per_document: int,
    page_chars: int,
    stage1: Sequence[float],
    passage_chars: int,
) -> None:
    documents = long_documents(data, contracts_per_document, page_chars)
    hypotheses = list(data.hypotheses)
    tick = time.perf_counter()
    ways = [pages_only(scorer, documents, hypotheses), spans_only(scorer, documents, hypotheses)]
    ways.extend(two_stage(scorer, documents, hypotheses, s, passage_chars) for s in stage1)
    n_pages = sum(len(d.pages) for d in documents)
    n_spans = sum(len(d.spans) for d in documents)
    print(
        f"\n## Evidence passages ({name}): pages only, spans only, two-stage\n\n"
        f"ContractNLI test as {len(documents)} long documents ({contracts_per_document} contracts "
        f"each, ~{page_chars}-character pages: {n_pages} pages, {n_spans} spans) × "
        f"{len(hypotheses)} hypotheses; recall is the mean share of evidence spans kept "
        f"(half their characters or more) when each case keeps its best units while they fit "
        f"the share of characters; (c) ranks every passage (at most {passage_chars} characters, "
        f"split_passages) of the pages stage 1 kept. "
        f"Scored in {time.perf_counter() - tick:.1f} s.\n"
    )
    head = " | ".join(f"{int(100 * f)} %" for f in FRACTIONS)
    print(
        f"| way | recall at {head} | texts scored "
        "| characters scored (query with every text) | × (a) |"
    )
    print("|---|---|---|---|---|---|---|")
    base = ways[0].chars_scored
    for way in ways:
        recalls = " | ".join(f"{way.recall(f):.3f}" for f in FRACTIONS)
        print(
            f"| {way.name} | {recalls} | {way.texts_scored:,} | {way.chars_scored:,} "
            f"| {way.chars_scored / base:.2f} |"
        )
    a, b = ways[0], ways[1]
    a15, b10 = a.recall(0.15), b.recall(0.10)
    b_match = matching_fraction(b, a15)
    print(
        f"\nTargets ((a) reaches {a15:.3f} at 15 %; (b) {b10:.3f} at 10 %; (b), scoring "
        f"every span, reaches (a)'s 15 % recall at "
        f"{'no share' if b_match is None else f'{100 * b_match:.1f} %'} of the characters):\n"
    )
    print(
        "| (c) stage 1 | recall at 10 % / (b) ≥ 0.95 | chars scored / (a) ≤ 1.5 "
        "| share kept for (a)'s recall at 15 % ≤ 7.5 % | ceiling: evidence on kept pages |"
    )
    print("|---|---|---|---|---|")
    for s, way in zip(stage1, ways[2:], strict=True):
        ratio = way.recall(0.10) / b10
        cost = way.chars_scored / base
        match = matching_fraction(way, a15)
        ceiling = way.recall(1.0)
        print(
            f"| ≤ {100 * s:g} % | {ratio:.3f} {_mark(ratio >= 0.95)} "
            f"| {cost:.2f} {_mark(cost <= 1.5)} "
            f"| {'never' if match is None else f'{100 * match:.1f} %'} "
            f"{_mark(match is not None and match <= 0.075)} | {ceiling:.3f} |"
        )


def _mark(ok: bool) -> str:
    return "✓" if ok else "✗"


def passages_sections(
    args: argparse.Namespace, scorers: Mapping[str, Scorer], test_data: ContractNLI
) -> None:
    for name, scorer in scorers.items():
        passages_section(
            name,
            scorer,
            test_data,
            args.contracts_per_document,
            args.page_chars,
            args.stage1,
            args.passage_chars,
        )


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
    parser.add_argument(
        "--stage1",
        type=float,
        nargs="+",
        default=list(STAGE1_SHARES),
        metavar="SHARE",
        help="two-stage: shares of characters stage 1 keeps, one row each (default: %(default)s)",
    )
    parser.add_argument("--passage-chars", type=int, default=DEFAULT_PASSAGE_CHARS)
    parser.add_argument(
        "--passages-only",
        action="store_true",
        help="print only the pages / spans / two-stage comparison",
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
    if args.passages_only:
        passages_sections(args, scorers, test_data)
        print(f"\ntotal {time.perf_counter() - started:.1f} s")
        return 0

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

    passages_sections(args, scorers, test_data)

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
