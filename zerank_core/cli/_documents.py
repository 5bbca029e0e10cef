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
import io
import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from zerank_core.cache import CACHE_ENV, default_cache_path
from zerank_core.cli._common import (
    cache_line,
    check_backend,
    count_arg,
    make_scorer,
    positive_arg,
    write_json,
)
from zerank_core.cli._policy import apply_policy_file
from zerank_core.cli._reading import read_document, reading_dict
from zerank_core.criteria import Criterion, load_criteria
from zerank_core.dedupe import DuplicateDetector, LexicalDetector, ModelDetector
from zerank_core.errors import ConfigurationError
from zerank_core.gate import PageGate
from zerank_core.loaders import TEXT_SUFFIXES, Document
from zerank_core.multi import gate_documents
from zerank_core.redaction import redact_url
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
        help="with --ray: documents sent to an actor at a time (default %(default)s)",
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
    """Gate several documents with one model and write one result per document."""
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
    try:
        job = gate_documents(make_gate(scorer, policy), documents, criteria)
    finally:
        if cached is not None:
            cached.close()
    stats = cached.stats if cached is not None else None
    width = max(8, *(len(d.source) for d in documents[:50]))
    print(f"\n{'document':<{width}}  {'pages':>5} {'kept chars':>16}  no evidence", file=err)
    for result in job.results:
        report = result.report
        print(
            f"{result.document.source:<{width}}  {report.pages:>5} "
            f"{report.chars_kept:>7,}/{report.chars_full:<8,}  "
            f"{', '.join(report.no_evidence) or '—'}",
            file=err,
        )
    summary = job.summary
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
    include_context = not args.no_context
    files = []
    for result in job.results:
        data = result.to_dict(include_context=include_context)
        data["backend"] = args.backend_used
        data["report"]["reading"] = reading_dict(result.document)
        files.append(data)
    head = {"backend": args.backend_used, "summary": summary.to_dict()}
    head["summary"]["cache"] = (
        None
        if cached is None or stats is None
        else {"path": str(cached.path), "hits": stats.hits, "misses": stats.misses}
    )
    _write(files, head, folder, [d.source for d in documents], args.output, out, err)
    return 0


def _run_ray(
    args: argparse.Namespace,
    documents: list[Document],
    criteria: list[Criterion],
    policy: SelectionPolicy,
    folder: Path | None,
    out: TextIO,
    err: TextIO,
) -> int:
    from zerank_core.distributed import gate_on_ray

    backend = {
        "backend": args.backend,
        "server_url": args.server_url,
        "model": args.model,
        "device": args.device,
        "scale": args.scale,
        "calibrator": _policy_calibrator(args),
    }
    # Settings and credentials are checked here, before Ray starts (seconds).
    check_backend(**{k: v for k, v in backend.items() if k != "calibrator"})
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
    start = time.perf_counter()
    rows = gate_on_ray(
        documents,
        criteria,
        scorer=functools.partial(_actor_scorer, **backend),
        address=args.ray or None,
        policy=policy,
        instruction=args.instruction,
        actors=args.actors,
        documents_per_batch=args.documents_per_batch,
        num_gpus=args.gpus_per_actor,
        include_context=not args.no_context,
        cache=cache,
        duplicate_detector=detector,
    )
    seconds = time.perf_counter() - start
    selection = policy.to_dict()
    files: list[dict[str, Any]] = [
        {"document": d.source, "pages": len(d.pages), "policy": selection, "criteria": []}
        for d in documents
    ]
    thresholds = {c.id: c.threshold for c in criteria}
    for row in rows:
        entry = row.to_dict()
        for key in ("index", "document"):
            del entry[key]
        if entry["context"] is None:
            del entry["context"]
        # The criterion's own threshold (a policy file's, if any); None: the policy's.
        entry["threshold"] = thresholds[row.criterion]
        files[row.index]["criteria"].append(entry)
    no_evidence = sum(r.no_evidence for r in rows)
    print(
        f"{len(rows)} document × criterion rows, {no_evidence} without evidence; "
        f"{seconds:.1f} s, {len(documents) / seconds:.2f} documents/s",
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
        "documents": len(documents),
        "criteria": len(criteria),
        "rows": len(rows),
        "no_evidence": no_evidence,
        "seconds": round(seconds, 3),
        "documents_per_second": round(len(documents) / seconds, 3),
        "ray": {"address": args.ray or None, "actors": args.actors, "gpus": args.gpus_per_actor},
        "cache": cached,
    }
    # The output names the backend the flags asked for; a URL loses its credentials.
    asked = {**backend, "server_url": redact_url(args.server_url) if args.server_url else None}
    head = {"backend": asked, "summary": summary}
    _write(files, head, folder, [d.source for d in documents], args.output, out, err)
    return 0


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


def _write(
    files: list[dict[str, Any]],
    head: dict[str, Any],
    folder: Path | None,
    sources: list[str],
    output: str | None,
    out: TextIO,
    err: TextIO,
) -> None:
    if folder is None:
        write_json({**head, "documents": files}, output, out, err)
        return
    folder.mkdir(parents=True, exist_ok=True)
    used = {"summary.json"}
    names = []
    for source in sources:
        stem = Path(source).stem or "document"
        name, number = f"{stem}.json", 1
        while name in used:
            number += 1
            name = f"{stem}-{number}.json"
        used.add(name)
        names.append(name)
    for name, data in zip(names, files, strict=True):
        write_json(data, str(folder / name), out, io.StringIO())
    head["summary"]["files"] = dict(zip(sources, names, strict=True))
    write_json(head, str(folder / "summary.json"), out, io.StringIO())
    print(f"results: {folder}/ — {len(names)} documents and summary.json", file=err)
