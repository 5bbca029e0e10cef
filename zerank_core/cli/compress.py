"""``zerank compress``: keep each criterion's evidence pages of a long document."""

from __future__ import annotations

import argparse
import importlib.util
import textwrap
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, TextIO

from zerank_core.cli._common import (
    ResumableScorer,
    add_backend_options,
    add_output_option,
    cache_line,
    close_scorer,
    count_arg,
    make_scorer,
    optional_count_arg,
    positive_arg,
    price_arg,
    threshold_arg,
)
from zerank_core.cli._documents import (
    add_many_options,
    duplicate_detector,
    emit_result,
    policy_source,
    resolve_documents,
    run_many,
)
from zerank_core.cli._policy import add_policy_option, apply_policy_file
from zerank_core.cli._reading import (
    add_reading_options,
    print_reading,
    read_document,
)
from zerank_core.cli._summary import print_result
from zerank_core.criteria import load_criteria
from zerank_core.dedupe import DuplicateDetector
from zerank_core.errors import ConfigurationError, MissingDependencyError
from zerank_core.gate import DEFAULT_PAGE_POLICY, PageGate
from zerank_core.passages import DEFAULT_PASSAGE_POLICY, PassagePolicy
from zerank_core.plots import plot_heatmap
from zerank_core.report import write_report
from zerank_core.results import BackendInfo
from zerank_core.scorers.base import Scorer
from zerank_core.select import SelectionPolicy

__all__ = ["add_parser", "run"]

_COMPRESS_NOTES = (
    "document formats: .pdf (text layer through PDFium; pages without one are read by OCR "
    "with zerank-gate[ocr]), .json (a list of page strings), a folder (one .txt/.md file per "
    "page, natural order), anything else as UTF-8 text with form-feed (\\f) page breaks "
    "(--page-chars N cuts longer pages at paragraph boundaries). Empty pages are reported "
    "and not scored.",
    "criteria formats: .yaml/.yml/.json: a list of strings, or of mappings with text and "
    "optional id, instruction, threshold (a criterion's own floor); or {criteria: [...], "
    "instruction: ...}. Any other file: one criterion per line (# comments allowed).",
    f"default policy: the {DEFAULT_PAGE_POLICY.top_k} best pages per criterion with a floor "
    f"of {DEFAULT_PAGE_POLICY.threshold}, in page order. zerank scores are calibrated "
    "probabilities, so the floor is a probability. BM25 scores are divided by the best "
    "page's score for each criterion, so there it reads 'at least half as good as the best "
    "page': a criterion whose words appear on no page keeps nothing, but weak lexical "
    "matches are not filtered out.",
    "output: JSON on stdout when it is piped, or in -o FILE (use -o - to force stdout); a "
    "summary table on stderr. A criterion with no page above the floor is listed as "
    "'no evidence', never silently dropped; one whose policy keeps nothing (top-K of 0, a "
    "budget smaller than any page) as 'kept nothing' with the reason.",
    "several documents (more than one path, a quoted glob such as 'in/*.pdf', or a folder "
    "holding PDFs; a folder of .txt/.md files is still one document): the model loads once "
    "and the pages of all documents share its batches; -o DIR gets one JSON per document "
    "and summary.json. --ray [ADDRESS] runs them on a Ray cluster (zerank-gate[ray]).",
)
COMPRESS_EPILOG = "\n\n".join(
    textwrap.fill(note, width=78, break_on_hyphens=False) for note in _COMPRESS_NOTES
)


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "compress",
        help="keep each criterion's evidence pages of a long document",
        description="Score every page of DOCUMENT against every criterion and keep, per\n"
        "criterion, the pages that pass the selection policy.",
        epilog=COMPRESS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "documents",
        nargs="+",
        type=Path,
        metavar="DOCUMENT",
        help="PDF, text, JSON file or folder of pages; several paths, a quoted glob "
        "('in/*.pdf') or a folder of PDFs gate several documents (one result each)",
    )
    parser.add_argument(
        "-c", "--criteria", type=Path, required=True, help="criteria file (.yaml, .json or .txt)"
    )
    policy = parser.add_argument_group("selection policy")
    policy.add_argument(
        "--threshold",
        type=threshold_arg,
        default=DEFAULT_PAGE_POLICY.threshold,
        metavar="T",
        help="keep pages scoring >= T ('none' for no floor; default %(default)s)",
    )
    policy.add_argument(
        "--top-k",
        type=optional_count_arg,
        default=DEFAULT_PAGE_POLICY.top_k,
        metavar="K",
        help="keep at most K pages per criterion ('all' for no limit; default %(default)s)",
    )
    policy.add_argument(
        "--max-chars", type=count_arg, metavar="N", help="character budget per criterion"
    )
    policy.add_argument(
        "--max-tokens", type=count_arg, metavar="N", help="token budget per criterion (estimated)"
    )
    policy.add_argument(
        "--neighbors",
        type=count_arg,
        default=0,
        metavar="N",
        help="also keep N pages before and after each kept page (default 0)",
    )
    policy.add_argument(
        "--min-keep",
        type=count_arg,
        default=0,
        metavar="N",
        help="keep at least N pages even below the floor (default 0)",
    )
    policy.add_argument(
        "--order",
        choices=("original", "score"),
        default="original",
        help="order of the kept pages (default: original page order)",
    )
    policy.add_argument(
        "--dedupe",
        action="store_true",
        help="keep one page of each set of duplicates, giving the freed slots to the next "
        "distinct page (needs zerank-gate[dedupe])",
    )
    policy.add_argument(
        "--dedupe-with",
        choices=("lexical", "model"),
        help="how duplicates are found (implies --dedupe): 'lexical' (the default: exact and "
        "near-duplicate text) or 'model' (zerank also judges each candidate pair)",
    )
    policy.add_argument(
        "--dedupe-threshold",
        type=threshold_arg,
        metavar="S",
        help="similarity that makes two pages duplicates (default: 0.7 word-shingle "
        "Jaccard for lexical, 0.8 probability for model)",
    )
    _add_passage_options(parser)
    parser.add_argument(
        "--instruction", help="instruction appended to every criterion that has none"
    )
    add_output_option(parser)
    parser.add_argument(
        "--no-context", action="store_true", help="leave the kept pages' text out of the JSON"
    )
    parser.add_argument(
        "--heatmap",
        type=Path,
        metavar="FILE.png",
        help="save a pages × criteria picture (needs zerank-gate[eval])",
    )
    parser.add_argument(
        "--html",
        nargs="?",
        const="",
        metavar="PATH",
        help="also write the evidence report, one self-contained HTML file per document: "
        "PATH is the file (several documents: the folder); without PATH, beside the -o "
        "output (or DOCUMENT.html in the current folder)",
    )
    parser.add_argument(
        "--price-per-million-tokens",
        type=price_arg,
        metavar="USD",
        help="estimate the scoring cost from the tokens the backend reports",
    )
    parser.add_argument(
        "--concurrency",
        type=positive_arg,
        default=4,
        metavar="N",
        help="criteria scored at once by an in-process backend (default %(default)s); remote "
        "backends plan all criteria together and keep up to --max-concurrency requests in "
        "flight",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: only when stderr is a terminal)",
    )
    add_reading_options(parser)
    add_policy_option(parser)
    add_many_options(parser)
    add_backend_options(parser)


_PASSAGE_OPTIONS = {
    "passage_threshold": "threshold",
    "passage_top_k": "top_k",
    "passage_max_chars": "max_chars",
    "passage_min_keep": "min_keep",
    "passage_chars": "passage_chars",
}


def _add_passage_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "evidence passages",
        "with --passages, each criterion's kept pages are cut into sentences or short "
        "windows, those are scored against the criterion (only passages of kept pages), and "
        "the context becomes the passages that pass, in document order under [page N] markers",
    )
    default = DEFAULT_PASSAGE_POLICY
    group.add_argument(
        "--passages",
        action="store_true",
        help="trim each criterion's kept pages to their evidence passages",
    )
    # SUPPRESS: an option given without --passages is an error, not silently ignored.
    group.add_argument(
        "--passage-threshold",
        type=threshold_arg,
        default=argparse.SUPPRESS,
        metavar="T",
        help=f"keep passages scoring >= T ('none' for no floor; default {default.threshold})",
    )
    group.add_argument(
        "--passage-top-k",
        type=optional_count_arg,
        default=argparse.SUPPRESS,
        metavar="K",
        help=f"keep at most K passages per kept page ('all' for no limit; default {default.top_k})",
    )
    group.add_argument(
        "--passage-max-chars",
        type=count_arg,
        default=argparse.SUPPRESS,
        metavar="N",
        help="character budget for a criterion's passages, best first",
    )
    group.add_argument(
        "--passage-min-keep",
        type=count_arg,
        default=argparse.SUPPRESS,
        metavar="N",
        help=f"each kept page yields at least its N best passages (default {default.min_keep})",
    )
    group.add_argument(
        "--passage-chars",
        type=positive_arg,
        default=argparse.SUPPRESS,
        metavar="N",
        help=f"longest passage in characters (default {default.passage_chars})",
    )


def passage_policy(args: argparse.Namespace) -> PassagePolicy | None:
    """The passage policy ``--passages`` and the ``--passage-*`` options describe."""
    given = {name: field for name, field in _PASSAGE_OPTIONS.items() if hasattr(args, name)}
    if not getattr(args, "passages", False):
        if given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise ConfigurationError(f"{flags} needs --passages")
        return None
    if getattr(args, "ray", None) is not None:
        raise ConfigurationError(
            "--passages is not available with --ray yet: run without --ray, or gate pages only"
        )
    return replace(
        DEFAULT_PASSAGE_POLICY, **{field: getattr(args, name) for name, field in given.items()}
    )


def _dedupe_policy(args: argparse.Namespace, policy: SelectionPolicy) -> SelectionPolicy:
    if args.dedupe_with is not None:
        policy = replace(policy, dedupe=True)
    if args.dedupe_threshold is not None and not policy.dedupe:
        raise ConfigurationError("--dedupe-threshold needs --dedupe")
    if policy.dedupe and importlib.util.find_spec("datasketch") is None:
        # Fail before scoring, not after the whole run.
        raise MissingDependencyError("datasketch", "dedupe")
    return policy


def _detector(args: argparse.Namespace, scorer: Scorer) -> DuplicateDetector | None:
    if not args.dedupe and args.dedupe_with is None:
        return None
    if isinstance(scorer, ResumableScorer):
        # The detector's few model calls need no resume file; its messages name the backend.
        scorer = scorer.scorer
    return duplicate_detector(scorer, method=args.dedupe_with, threshold=args.dedupe_threshold)


def _gate(args: argparse.Namespace, scorer: Scorer, policy: SelectionPolicy) -> PageGate:
    return PageGate(
        scorer,
        policy,
        instruction=args.instruction,
        max_concurrency=args.concurrency,
        progress=args.progress,
        price_per_million_tokens=args.price_per_million_tokens,
        duplicate_detector=_detector(args, scorer),
        passages=passage_policy(args),
    )


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    policy = _dedupe_policy(args, SelectionPolicy.from_attributes(args))
    passage_policy(args)  # refuses bad passage options before anything is read or scored
    if args.heatmap is not None and importlib.util.find_spec("matplotlib") is None:
        # Fail before scoring, not after the whole run.
        raise MissingDependencyError("matplotlib", "eval")
    paths, several = resolve_documents(args.documents)
    if several or args.ray is not None:
        return run_many(args, paths, policy, out, err, make_gate=partial(_gate, args))
    args.document = paths[0]
    document = read_document(args.document, args)
    criteria = load_criteria(args.criteria)
    scorer, cached = make_scorer(args, err)
    print_reading(document, args, err)
    policy, criteria = apply_policy_file(args, policy, criteria, err)
    plain_text = not args.document.is_dir() and args.document.suffix.lower() not in (
        ".pdf",
        ".json",
    )
    if len(document.pages) == 1 and plain_text and args.page_chars is None:
        print(
            "note: the document is a single page (no form feeds found): every criterion "
            "keeps all of it or nothing; --page-chars 3000 cuts it into pages at paragraph "
            "boundaries",
            file=err,
        )
    try:
        result = _gate(args, scorer, policy).run(document, criteria)
    finally:
        close_scorer(scorer, cached)
    print_result(result, err)
    report = result.report
    print(cache_line(cached, report.cache_hits, report.cache_misses), file=err)
    if args.heatmap is not None:
        print(f"heatmap: {plot_heatmap(result, args.heatmap)}", file=err)
    result = result.model_copy(
        update={"backend": BackendInfo(**args.backend_used), "policy_source": policy_source(args)}
    )
    emit_result(result, args.output, out, err, include_text=not args.no_context)
    if args.html is not None:
        html = Path(args.html) if args.html else _html_path(args.output, args.document)
        # The report shows what the JSON holds: with --no-context, no page text either.
        shown = result.without_text() if args.no_context else result
        print(f"report: {write_report(html, shown)}", file=err)
    return 0


def _html_path(output: str | None, document: Path) -> Path:
    """Where ``--html`` without a path writes: beside -o FILE, else DOCUMENT.html here."""
    if output and output != "-":
        return Path(output).with_suffix(".html")
    return Path(f"{document.stem or 'document'}.html")
