"""``zerank compress`` on several documents: in this process, or on a Ray cluster.

Which arguments mean several documents: more than one path, a quoted glob
(``'in/*.pdf'``, expanded here) or a folder holding PDF files (each PDF is a
document). A folder of ``.txt``/``.md`` files stays one document with one
file per page, as for a single document; a folder with both is refused.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import glob
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
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
)
from zerank_core.cli._policy import apply_policy_file
from zerank_core.cli._progress import ResultFolder, file_names, job_digest
from zerank_core.cli._reading import print_reading, read_document
from zerank_core.cli._summary import print_job
from zerank_core.criteria import Criterion, load_criteria
from zerank_core.dedupe import DuplicateDetector, LexicalDetector, ModelDetector
from zerank_core.errors import ConfigurationError
from zerank_core.gate import PageGate, progress_bar
from zerank_core.limits import limits_from_env
from zerank_core.loaders import TEXT_SUFFIXES, Document
from zerank_core.multi import gate_documents, summarize
from zerank_core.redaction import redact_url
from zerank_core.report import write_report
from zerank_core.results import (
    BackendInfo,
    CacheInfo,
    GateResult,
    MultiResult,
    PolicySource,
    RayInfo,
    Timings,
    dump_result,
    write_result,
)
from zerank_core.scorers.auto import BackendChoice
from zerank_core.scorers.base import Scale, Scorer, Usage
from zerank_core.select import SelectionPolicy

__all__ = [
    "add_many_options",
    "duplicate_detector",
    "emit_result",
    "policy_source",
    "resolve_documents",
    "result_names",
    "run_many",
]

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
    documents = _read_all(paths, args, err)
    criteria = load_criteria(args.criteria)
    print(f"documents: {len(documents)}, {sum(len(d.pages) for d in documents)} pages", file=err)
    if args.ray is not None:
        policy, criteria = apply_policy_file(args, policy, criteria, err)
        return _run_ray(args, documents, criteria, policy, folder, out, err)

    scorer, cached = make_scorer(args, err)
    policy, criteria = apply_policy_file(args, policy, criteria, err)
    include_context = not args.no_context
    backend = BackendInfo(**args.backend_used)
    source = policy_source(args)
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
            done_part = tuple(
                r.model_copy(update={"backend": backend, "policy_source": source})
                for r in part.results
            )
            parts.append(part.model_copy(update={"results": done_part}))
            if results is not None:
                for index, result in zip(indices, done_part, strict=True):
                    results.write(index, result)
                    _html(args, folder, results.names[index], result)
    finally:
        if cached is not None:
            cached.close()
    seconds = time.perf_counter() - start
    stats = cached.stats if cached is not None else None
    done = [r for part in parts for r in part.results]
    summary = summarize(
        done,
        [documents[i] for i in todo],
        usage=_total(part.summary.usage for part in parts),
        seconds=seconds,
        shared=all(part.summary.shared_batches for part in parts),
        backend=backend,
        cache=None
        if cached is None or stats is None
        else CacheInfo(path=str(cached.path), hits=stats.hits, misses=stats.misses),
    ).model_copy(update={"resumed": len(documents) - len(todo)})
    job = MultiResult(results=tuple(done), summary=summary)
    print_job(job, err)
    print(
        cache_line(cached, stats.hits if stats else None, stats.misses if stats else None),
        file=err,
    )
    _finish(job, results, folder, args, out, err)
    return 0


def _total(usages: Iterable[Usage]) -> Usage:
    """The sum of several parts' usage (tokens ``None`` when no part reported any)."""
    usages = list(usages)
    tokens = [u.total_tokens for u in usages if u.total_tokens is not None]
    return Usage(
        requests=sum(u.requests for u in usages),
        texts=sum(u.texts for u in usages),
        total_bytes=sum(u.total_bytes for u in usages),
        total_tokens=sum(tokens) if tokens else None,
        retries=sum(u.retries for u in usages),
        rate_limited=sum(u.rate_limited for u in usages),
    )


def _html(args: argparse.Namespace, folder: Path | None, name: str, result: GateResult) -> None:
    """With ``--html``: the document's evidence report beside its JSON (or in --html's folder)."""
    if args.html is None:
        return
    target = Path(args.html) if args.html else (folder or Path("."))
    shown = result if not args.no_context else result.without_text()
    write_report(target / Path(name).with_suffix(".html"), shown)


def _finish(
    job: MultiResult,
    results: ResultFolder | None,
    folder: Path | None,
    args: argparse.Namespace,
    out: TextIO,
    err: TextIO,
) -> None:
    """``summary.json`` in the folder, or every result on stdout; the HTML reports."""
    if results is not None and folder is not None:
        results.finish(job.summary)
        print(f"results: {folder}/ — {len(results.names)} documents and summary.json", file=err)
        if args.html is not None:
            print(f"reports: {args.html or folder}/ — HTML beside each result", file=err)
        return
    names = result_names([r.document.source for r in job.results])
    for name, result in zip(names, job.results, strict=True):
        _html(args, None, name, result)
    if args.html is not None:
        print(f"reports: {args.html or '.'}/ — {len(names)} HTML files", file=err)
    emit_result(job, args.output, out, err, include_text=not args.no_context)


def _read_all(paths: list[Path], args: argparse.Namespace, err: TextIO) -> list[Document]:
    """Read every document, saying for each what reading took (a bar on a terminal)."""
    documents = []
    pages = 0
    started = time.perf_counter()
    with progress_bar(args.progress, total=len(paths), desc="reading", unit="document") as bar:
        for path in paths:
            bar.set_postfix_str(path.name, refresh=False)
            document = read_document(path, args)
            pages += len(document.pages)
            seconds = time.perf_counter() - started
            if seconds > 0:
                bar.set_postfix_str(f"{path.name}, {pages / seconds:.0f} pages/s")
            bar.update(1)
            documents.append(document)
    for document in documents:
        print_reading(document, args, err)
    return documents


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
    results = ResultFolder(folder, [d.source for d in documents], job, include_text=include_context)
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
    checked = check_backend(**{k: v for k, v in backend.items() if k != "calibrator"})
    named = None if checked is None else BackendInfo(name=checked[0], description=checked[1])
    # The job's digest names the backend the flags asked for; a URL loses its credentials.
    asked = {**backend, "server_url": redact_url(args.server_url) if args.server_url else None}
    include_context = not args.no_context
    source = policy_source(args)
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
    finished: dict[int, GateResult] = {}

    def document_result(index: int, rows: Sequence[GateRow]) -> GateResult:
        """The document's result as the actor wrote it, with what only this process knows."""
        whole = next(r.result for r in rows if r.result is not None)
        result = GateResult.model_validate_json(whole)
        reading = documents[index].reading
        update: dict[str, Any] = {
            "document": result.document.model_copy(update={"reading": reading}),
            "timings": Timings.of(reading, result.timings.gate_seconds),
            "policy_source": source,
        }
        if named is not None or result.backend is None:
            update["backend"] = named
        return result.model_copy(update=update)

    def write(position: int, rows: list[GateRow]) -> None:
        index = todo[position]
        finished[index] = document_result(index, rows)
        if results is not None:
            results.write(index, finished[index])
            _html(args, folder, results.names[index], finished[index])

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
    by_document: dict[int, list[GateRow]] = {}
    for row in rows:
        by_document.setdefault(row.index, []).append(row)
    for index, have in by_document.items():
        if index not in finished:
            finished[index] = document_result(index, have)
    done = [finished[i] for i in todo]
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
        cached = CacheInfo(
            path=str(cache),
            hits=sum(r.cache_hits or 0 for r in rows),
            misses=sum(r.cache_misses or 0 for r in rows),
        )
    usage = _total(r.report.usage for r in done)
    summary = summarize(
        done,
        [documents[i] for i in todo],
        usage=usage,
        seconds=seconds,
        shared=bool(done) and done[0].scale is not Scale.UNCALIBRATED,
        ray=RayInfo(
            address=args.ray or None,
            actors=args.actors,
            gpus_per_actor=args.gpus_per_actor,
            actors_built=report["actors_built"],
            requests=report["requests"],
            peak_in_flight=report["peak_in_flight"],
        ),
        backend=named if named is not None else (done[0].backend if done else None),
        cache=cached,
    ).model_copy(update={"resumed": len(documents) - len(todo)})
    job = MultiResult(results=tuple(done), summary=summary)
    print_job(job, err)
    if cached is not None:
        print(
            f"cache: {cache} — {cached.hits} hits, {cached.misses} misses "
            "(page scores of every document × criterion)",
            file=err,
        )
    _finish(job, results, folder, args, out, err)
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


def _actor_scorer(**backend: Any) -> BackendChoice:
    """The backend the command line asked for, built inside a Ray actor (and named)."""
    from zerank_core.cli._common import choose_backend

    choice = choose_backend(
        backend["backend"],
        server_url=backend["server_url"],
        model=backend["model"],
        device=backend["device"],
        scale=backend.get("scale"),
        limits=backend.get("limits"),
    )
    if backend.get("calibrator") is None:
        return choice
    from zerank_core.calibrate import CalibratedScorer, calibrator_from_dict

    calibrated = CalibratedScorer(choice.scorer, calibrator_from_dict(backend["calibrator"]))
    return dataclasses.replace(choice, scorer=calibrated)


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


def policy_source(args: argparse.Namespace) -> PolicySource | None:
    """What the result records of the ``--policy`` file (``None`` without one)."""
    if args.policy is None:
        return None
    from zerank_core.calibrate import ThresholdPolicy

    fitted = ThresholdPolicy.load(args.policy)
    return PolicySource(
        path=str(args.policy),
        method=fitted.fit.method,
        target=fitted.target,
        fitted_on=fitted.backend.get("name"),
    )


def emit_result(
    result: GateResult | MultiResult,
    output: str | None,
    out: TextIO,
    err: TextIO,
    *,
    include_text: bool = True,
) -> None:
    """Write ``result`` through the one serialiser: to ``output``, or to ``out`` when piped."""
    if output and output != "-":
        write_result(output, result, include_text=include_text)
        print(f"results: {output}", file=err)
    elif output == "-" or not out.isatty():
        out.write(dump_result(result, include_text=include_text))
    else:
        print("results: add -o FILE.json (or pipe stdout) for the full JSON", file=err)


def result_names(sources: Sequence[str]) -> list[str]:
    """One file name per document in an output folder (``summary.json`` is taken)."""
    return file_names(sources)
