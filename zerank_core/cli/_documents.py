"""``zerank compress`` on several documents: in this process, or on a Ray cluster.

Which arguments mean several documents: more than one path, a quoted glob
(``'in/*.pdf'``, expanded here) or a folder holding PDF files (each PDF is a
document). A folder of ``.txt``/``.md`` files stays one document with one
file per page, as for a single document; a folder with both is refused.
"""

from __future__ import annotations

import argparse
import functools
import glob
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from zerank_core.cache import CACHE_ENV, default_cache_path
from zerank_core.cli._common import (
    cache_line,
    check_backend,
    count_arg,
    limits_of,
    make_scorer,
    positive_arg,
    write_json,
)
from zerank_core.cli._policy import apply_policy_file
from zerank_core.cli._progress import ResultFolder, job_digest
from zerank_core.cli._reading import read_document, reading_dict
from zerank_core.criteria import Criterion, load_criteria
from zerank_core.dedupe import DuplicateDetector, LexicalDetector, ModelDetector
from zerank_core.errors import ConfigurationError
from zerank_core.gate import PageGate
from zerank_core.limits import limits_from_env
from zerank_core.loaders import TEXT_SUFFIXES, Document
from zerank_core.multi import JobSummary, MultiResult, gate_documents
from zerank_core.redaction import redact_url
from zerank_core.results import GateResult
from zerank_core.scorers.base import Scorer
from zerank_core.select import SelectionPolicy

__all__ = ["add_many_options", "duplicate_detector", "resolve_documents", "run_many"]

_GLOB_CHARACTERS = re.compile(r"[*?\[]")


def add_many_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("several documents")
    group.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="gate the documents on a Ray cluster (zerank-gate[ray]): ADDRESS such as 'auto' "
        "or 'ray://head:10001'; without one, RAY_ADDRESS or a new local instance. Each "
        "actor builds the backend from these flags and its node's environment; the score "
        "cache is used only with --cache PATH or $ZERANK_CACHE, which each actor opens on "
        "its own node (one file per machine, shared by its actors; not on a network "
        "filesystem)",
    )
    group.add_argument(
        "--actors",
        type=positive_arg,
        default=1,
        metavar="N",
        help="with --ray: scorer actors (one model each; default %(default)s)",
    )
    group.add_argument(
        "--gpus-per-actor",
        type=count_arg,
        default=0,
        metavar="N",
        help="with --ray: GPUs each actor reserves (1 puts one model on each GPU; default 0)",
    )
    group.add_argument(
        "--documents-per-batch",
        type=positive_arg,
        default=8,
        metavar="N",
        help="documents gated together, sharing the model's batches (on Ray: sent to an "
        "actor at a time); with -o DIR their files are written when they are done "
        "(default %(default)s)",
    )
    group.add_argument(
        "--restart",
        action="store_true",
        help="with -o DIR: redo every document (by default a rerun skips the documents "
        "already done there for the same criteria, policy and backend, and says so)",
    )


def resolve_documents(targets: Sequence[Path]) -> tuple[list[Path], bool]:
    """The document paths the arguments name, and whether they are several documents."""
    paths: list[Path] = []
    collection = len(targets) > 1
    for target in targets:
        text = str(target)
        if not target.exists() and _GLOB_CHARACTERS.search(text):
            matches = sorted(glob.glob(os.path.expanduser(text), recursive=True))
            if not matches:
                raise ConfigurationError(f"no document matches {text!r}")
            paths += [Path(m) for m in matches]
            collection = True
        elif target.is_dir() and (pdfs := _pdfs_in(target)):
            if any(p.suffix.lower() in TEXT_SUFFIXES for p in target.iterdir()):
                raise ConfigurationError(
                    f"{target} holds both PDF files (several documents) and .txt/.md files (the "
                    f"pages of one document); name the PDFs with '{target}/*.pdf' or move the pages"
                )
            paths += pdfs
            collection = True
        else:
            paths.append(target)  # load_document says what is wrong with it
    return paths, collection


def _pdfs_in(folder: Path) -> list[Path]:
    return sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".pdf"),
        key=lambda p: p.name,
    )


def run_many(
    args: argparse.Namespace,
    paths: list[Path],
    policy: SelectionPolicy,
    out: TextIO,
    err: TextIO,
    *,
    make_gate: Callable[[Scorer, SelectionPolicy], PageGate],
) -> int:
    """Gate several documents with one model and write one result per document.

    With ``-o DIR`` each document's file is written as soon as it is done,
    and a rerun into the same folder skips the documents already done for the
    same criteria, policy and backend (see :mod:`zerank_core.cli._progress`).
    """
    if args.heatmap is not None:
        raise ConfigurationError("--heatmap draws one document; leave it out with several")
    folder = _output_folder(args.output)
    documents = [read_document(path, args) for path in paths]
    criteria = load_criteria(args.criteria)
    print(f"documents: {len(documents)}, {sum(len(d.pages) for d in documents)} pages", file=err)
    if args.ray is not None:
        policy, criteria = apply_policy_file(args, policy, criteria, err)
        return _run_ray(args, documents, criteria, policy, folder, out, err)

    scorer, cached = make_scorer(args, err)
    policy, criteria = apply_policy_file(args, policy, criteria, err)
    include_context = not args.no_context
    results = _results_folder(
        folder, documents, criteria, policy, args.backend_used, include_context, args, err
    )
    todo = [i for i in range(len(documents)) if results is None or i not in results.done]
    gate = make_gate(scorer, policy)
    chunk = args.documents_per_batch
    parts: list[MultiResult] = []
    start = time.perf_counter()
    try:
        # Documents of one part share the scorer's batches; each part's files are
        # written when it is done, so a killed run loses at most the part in flight.
        for first in range(0, len(todo), chunk):
            indices = todo[first : first + chunk]
            part = gate_documents(gate, [documents[i] for i in indices], criteria)
            parts.append(part)
            if results is not None:
                for index, result in zip(indices, part.results, strict=True):
                    results.write(index, _result_data(result, args.backend_used, include_context))
    finally:
        if cached is not None:
            cached.close()
    seconds = time.perf_counter() - start
    stats = cached.stats if cached is not None else None
    done = [r for part in parts for r in part.results]
    if done:
        width = max(8, *(len(r.document.source) for r in done[:50]))
        print(f"\n{'document':<{width}}  {'pages':>5} {'kept chars':>16}  no evidence", file=err)
    for result in done:
        report = result.report
        print(
            f"{result.document.source:<{width}}  {report.pages:>5} "
            f"{report.chars_kept:>7,}/{report.chars_full:<8,}  "
            f"{', '.join(report.no_evidence) or '—'}",
            file=err,
        )
    summary = _combined([part.summary for part in parts], seconds)
    tokens = f"{summary.model_tokens:,} tokens" if summary.model_tokens is not None else ""
    print(
        f"\nkept {summary.chars_kept:,} of {summary.chars_full:,} characters; "
        f"{summary.no_evidence} document × criterion pairs without evidence",
        file=err,
    )
    print(
        f"model calls: {summary.model_requests} requests, {summary.model_texts} page scores "
        f"({summary.unique_texts} distinct pages){', ' + tokens if tokens else ''}; "
        f"{summary.seconds:.1f} s, {summary.documents_per_second:.2f} documents/s",
        file=err,
    )
    print(
        cache_line(cached, stats.hits if stats else None, stats.misses if stats else None),
        file=err,
    )
    head: dict[str, Any] = {"backend": args.backend_used, "summary": summary.to_dict()}
    head["summary"]["cache"] = (
        None
        if cached is None or stats is None
        else {"path": str(cached.path), "hits": stats.hits, "misses": stats.misses}
    )
    head["summary"]["resumed"] = len(documents) - len(todo)
    if results is not None:
        results.finish(head)
        print(f"results: {folder}/ — {len(documents)} documents and summary.json", file=err)
        return 0
    files = [_result_data(r, args.backend_used, include_context) for r in done]
    write_json({**head, "documents": files}, args.output, out, err)
    return 0


def _result_data(result: GateResult, backend: Any, include_context: bool) -> dict[str, Any]:
    data = result.to_dict(include_context=include_context)
    data["backend"] = backend
    data["report"]["reading"] = reading_dict(result.document)
    return data


def _combined(parts: list[JobSummary], seconds: float) -> JobSummary:
    """One summary for a job run in parts (distinct pages are counted per part)."""
    tokens = [p.model_tokens for p in parts if p.model_tokens is not None]
    return JobSummary(
        documents=sum(p.documents for p in parts),
        pages=sum(p.pages for p in parts),
        empty_pages=sum(p.empty_pages for p in parts),
        criteria=parts[0].criteria if parts else 0,
        unique_texts=sum(p.unique_texts for p in parts),
        chars_full=sum(p.chars_full for p in parts),
        chars_kept=sum(p.chars_kept for p in parts),
        no_evidence=sum(p.no_evidence for p in parts),
        shared_batches=all(p.shared_batches for p in parts),
        model_requests=sum(p.model_requests for p in parts),
        model_texts=sum(p.model_texts for p in parts),
        model_tokens=sum(tokens) if tokens else None,
        seconds=seconds,
    )


def _results_folder(
    folder: Path | None,
    documents: list[Document],
    criteria: list[Criterion],
    policy: SelectionPolicy,
    backend: Any,
    include_context: bool,
    args: argparse.Namespace,
    err: TextIO,
) -> ResultFolder | None:
    """The ``-o`` folder, and a line on the documents a rerun skips (None: no folder)."""
    if folder is None:
        return None
    job = job_digest(criteria, policy, backend, include_context=include_context)
    results = ResultFolder(folder, [d.source for d in documents], job)
    if args.restart:
        results.done.clear()
    elif results.done:
        print(
            f"resume: {len(results.done)} of {len(documents)} documents already done in "
            f"{folder}/ for these criteria, policy and backend; skipping them "
            "(--restart redoes every document)",
            file=err,
        )
    return results


def _run_ray(
    args: argparse.Namespace,
    documents: list[Document],
    criteria: list[Criterion],
    policy: SelectionPolicy,
    folder: Path | None,
    out: TextIO,
    err: TextIO,
) -> int:
    from zerank_core.distributed import GateRow, run_on_ray

    backend = {
        "backend": args.backend,
        "server_url": args.server_url,
        "model": args.model,
        "device": args.device,
        "scale": args.scale,
        "calibrator": _policy_calibrator(args),
        # This process's limits (flags over $ZERANK_*) go to every actor: they hold
        # for the job whatever the nodes' environments say.
        "limits": {**limits_from_env(), **limits_of(args)},
    }
    # Settings and credentials are checked here, before Ray starts (seconds).
    check_backend(**{k: v for k, v in backend.items() if k != "calibrator"})
    # The output names the backend the flags asked for; a URL loses its credentials.
    asked = {**backend, "server_url": redact_url(args.server_url) if args.server_url else None}
    include_context = not args.no_context
    selection = policy.to_dict()
    thresholds = {c.id: c.threshold for c in criteria}
    results = _results_folder(
        folder,
        documents,
        criteria,
        policy,
        {k: v for k, v in asked.items() if k != "limits"},
        include_context,
        args,
        err,
    )
    todo = [i for i in range(len(documents)) if results is None or i not in results.done]

    def document_data(index: int, rows: Sequence[GateRow]) -> dict[str, Any]:
        document = documents[index]
        data: dict[str, Any] = {
            "document": document.source,
            "pages": len(document.pages),
            "policy": selection,
            "criteria": [],
        }
        for row in rows:
            entry = row.to_dict()
            for key in ("index", "document"):
                del entry[key]
            if entry["context"] is None:
                del entry["context"]
            # The criterion's own threshold (a policy file's, if any); None: the policy's.
            entry["threshold"] = thresholds[row.criterion]
            data["criteria"].append(entry)
        return data

    def write(position: int, rows: list[GateRow]) -> None:
        if results is not None:
            results.write(todo[position], document_data(todo[position], rows))

    cache = _ray_cache(args)
    print(
        f"ray: {args.actors} actor(s), {args.gpus_per_actor} GPU(s) each; each builds the "
        "backend from these flags and its node's environment",
        file=err,
    )
    if cache is None:
        print("cache: off (on Ray only with --cache PATH or $ZERANK_CACHE)", file=err)
    else:
        print(f"cache: {cache}, opened by each actor on its own node", file=err)
    detector = None
    if policy.dedupe:
        detector = functools.partial(
            duplicate_detector, method=args.dedupe_with, threshold=args.dedupe_threshold
        )
    if backend["limits"]:
        print(f"limits for the whole job: {_limits_text(backend['limits'])}", file=err)
    start = time.perf_counter()
    rows: list[GateRow] = []
    report: dict[str, Any] = {"actors_built": 0, "requests": 0, "peak_in_flight": 0}
    if todo:
        run = run_on_ray(
            [documents[i] for i in todo],
            criteria,
            scorer=functools.partial(_actor_scorer, **backend),
            address=args.ray or None,
            policy=policy,
            instruction=args.instruction,
            actors=args.actors,
            documents_per_batch=args.documents_per_batch,
            num_gpus=args.gpus_per_actor,
            include_context=include_context,
            cache=cache,
            duplicate_detector=detector,
            on_document=write,
        )
        rows = [replace(r, index=todo[r.index]) for r in run.rows]
        report = {
            "actors_built": run.actors_built,
            "requests": run.requests,
            "peak_in_flight": run.peak_in_flight,
        }
    seconds = time.perf_counter() - start
    no_evidence = sum(r.no_evidence for r in rows)
    rate = len(todo) / seconds if seconds > 0 else 0.0
    print(
        f"{len(rows)} document × criterion rows, {no_evidence} without evidence; "
        f"{seconds:.1f} s, {rate:.2f} documents/s",
        file=err,
    )
    print(
        f"backend built by {report['actors_built']} of {args.actors} actor(s) "
        "(an actor builds it, and loads its model, at its first cache miss)"
        + (
            f"; {report['requests']} requests, at most {report['peak_in_flight']} in flight"
            if report["requests"]
            else ""
        ),
        file=err,
    )
    cached = None
    if cache is not None:
        cached = {
            "path": str(cache),
            "hits": sum(r.cache_hits or 0 for r in rows),
            "misses": sum(r.cache_misses or 0 for r in rows),
        }
        print(
            f"cache: {cache} — {cached['hits']} hits, {cached['misses']} misses "
            "(page scores of every document × criterion)",
            file=err,
        )
    summary = {
        "documents": len(todo),
        "resumed": len(documents) - len(todo),
        "criteria": len(criteria),
        "rows": len(rows),
        "no_evidence": no_evidence,
        "seconds": round(seconds, 3),
        "documents_per_second": round(rate, 3),
        "ray": {
            "address": args.ray or None,
            "actors": args.actors,
            "gpus": args.gpus_per_actor,
            **report,
        },
        "cache": cached,
    }
    head = {"backend": asked, "summary": summary}
    if results is not None:
        results.finish(head)
        print(f"results: {folder}/ — {len(documents)} documents and summary.json", file=err)
        return 0
    by_document: dict[int, list[GateRow]] = {}
    for row in rows:
        by_document.setdefault(row.index, []).append(row)
    files = [document_data(i, by_document[i]) for i in sorted(by_document)]
    write_json({**head, "documents": files}, args.output, out, err)
    return 0


def _limits_text(limits: dict[str, float | int]) -> str:
    return ", ".join(f"{key.replace('_', ' ')} {value:g}" for key, value in limits.items())


def _ray_cache(args: argparse.Namespace) -> Path | None:
    """The cache file a Ray run uses: only one the user named, as an absolute path.

    Actors run in other folders and on other machines, where the default
    under the driver's home folder means nothing in particular.
    """
    if args.no_cache:
        return None
    if args.cache is not None:
        return Path(args.cache).expanduser().absolute()
    if os.environ.get(CACHE_ENV):
        return default_cache_path().absolute()
    return None


def duplicate_detector(
    scorer: Scorer, *, method: str | None, threshold: float | None
) -> DuplicateDetector:
    """The detector ``--dedupe-with`` and ``--dedupe-threshold`` ask for (lexical by default)."""
    if method == "model":
        if threshold is None:
            return ModelDetector(scorer)
        return ModelDetector(scorer, threshold=threshold)
    return LexicalDetector() if threshold is None else LexicalDetector(threshold=threshold)


def _actor_scorer(**backend: Any) -> Scorer:
    """The backend the command line asked for, built inside a Ray actor."""
    from zerank_core.cli._common import choose_backend

    scorer = choose_backend(
        backend["backend"],
        server_url=backend["server_url"],
        model=backend["model"],
        device=backend["device"],
        scale=backend.get("scale"),
        limits=backend.get("limits"),
    ).scorer
    if backend.get("calibrator") is None:
        return scorer
    from zerank_core.calibrate import CalibratedScorer, calibrator_from_dict

    return CalibratedScorer(scorer, calibrator_from_dict(backend["calibrator"]))


def _policy_calibrator(args: argparse.Namespace) -> dict[str, Any] | None:
    """The ``--policy`` file's calibrator as JSON, for the actors (None: there is none)."""
    if getattr(args, "policy", None) is None:
        return None
    from zerank_core.calibrate import ThresholdPolicy

    calibrator = ThresholdPolicy.load(args.policy).calibrator
    return None if calibrator is None else calibrator.to_dict()


def _output_folder(output: str | None) -> Path | None:
    if not output or output == "-":
        return None
    folder = Path(output)
    if folder.suffix.lower() == ".json" or folder.is_file():
        raise ConfigurationError(
            f"with several documents, -o names a folder (one JSON per document and "
            f"summary.json), got {output!r}"
        )
    return folder
