"""The ``zerank`` command: gate long documents, classify texts, manage the score cache.

Results go to stdout as JSON (or to ``-o FILE``); the backend used, the
summary table and the progress bar go to stderr, so stdout stays parseable.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import re
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import httpx

from zerank_core import __version__
from zerank_core.cache import CachedScorer, ScoreStore, default_cache_path
from zerank_core.classify import LabelClassifier
from zerank_core.documents import (
    DEFAULT_PAGE_POLICY,
    GateResult,
    PageGate,
    load_criteria,
    load_document,
    plot_heatmap,
)
from zerank_core.errors import (
    ConfigurationError,
    DocumentError,
    MissingDependencyError,
    ZeRankError,
)
from zerank_core.scorers.auto import BACKENDS, BackendChoice, scorer_from_env
from zerank_core.scorers.base import Scale, Scorer
from zerank_core.select import SelectionPolicy

__all__ = ["build_parser", "choose_backend", "main"]

DESCRIPTION = """\
Gate long documents page by page against many criteria, or classify texts,
with ZeroEntropy's calibrated zerank rerankers (or an offline BM25 baseline).

backend: chosen by --backend, else the environment, in this order:
  ZEROENTROPY_API_KEY   hosted ZeroEntropy API (model: --model or ZERANK_MODEL)
  ZERANK_SERVER_URL     your rerank server, e.g. http://localhost:8000/v1/rerank
                        (vLLM, llama.cpp; also --server-url)
  ZERANK_LOCAL_MODEL    open weights in-process (pip install 'zerank-gate[local]')
  otherwise             BM25, lexical and uncalibrated: works offline, no model
The backend used is always printed on stderr.

score cache: on by default at $ZERANK_CACHE or ~/.cache/zerank-gate/scores.sqlite3
(--cache PATH, --no-cache); it stores hashes and scores, never text.

examples:
  zerank compress packet.pdf --criteria criteria.yaml -o result.json
  zerank compress packet.txt --criteria criteria.yaml --heatmap heatmap.png
  zerank classify tickets.txt --labels labels.yaml --multi-label
  zerank cache info
"""

_COMPRESS_NOTES = (
    "document formats: .pdf (text layer through pypdf), .json (a list of page strings), a "
    "folder (one .txt/.md file per page, natural order), anything else as UTF-8 text with "
    "form-feed (\\f) page breaks. Empty pages are reported and not scored.",
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
    "'no evidence', never silently dropped.",
)
COMPRESS_EPILOG = "\n\n".join(textwrap.fill(note, width=78) for note in _COMPRESS_NOTES)


def _threshold(value: str) -> float | None:
    if value.lower() in ("none", "off"):
        return None
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number in [0, 1] or 'none', got {value!r}"
        ) from None
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return number


def _count(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {number}")
    return number


def _optional_count(value: str) -> int | None:
    if value.lower() in ("all", "none"):
        return None
    return _count(value)


def _positive(value: str) -> int:
    number = _count(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {number}")
    return number


def _price(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a price in USD, got {value!r}") from None
    if not number >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return number


def _add_backend_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("backend")
    group.add_argument(
        "--backend",
        choices=BACKENDS,
        help="which scorer to use (default: $ZERANK_BACKEND, then the first configured one)",
    )
    group.add_argument(
        "--server-url",
        metavar="URL",
        help="rerank server endpoint, e.g. http://localhost:8000/v1/rerank (implies --backend "
        "server; scale from $ZERANK_SERVER_SCALE)",
    )
    group.add_argument(
        "--model", help="model name (hosted or server) or model id/folder (local backend)"
    )
    cache = parser.add_argument_group("score cache")
    cache.add_argument(
        "--cache",
        metavar="PATH",
        type=Path,
        help="SQLite score cache (default: $ZERANK_CACHE or ~/.cache/zerank-gate/scores.sqlite3)",
    )
    cache.add_argument("--no-cache", action="store_true", help="score everything afresh")


def _add_output_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write the JSON result here ('-' for stdout; default: stdout when it is not a "
        "terminal)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zerank",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    compress = commands.add_parser(
        "compress",
        help="keep each criterion's evidence pages of a long document",
        description="Score every page of DOCUMENT against every criterion and keep, per\n"
        "criterion, the pages that pass the selection policy.",
        epilog=COMPRESS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    compress.add_argument("document", type=Path, help="PDF, text, JSON file or folder of pages")
    compress.add_argument(
        "-c", "--criteria", type=Path, required=True, help="criteria file (.yaml, .json or .txt)"
    )
    policy = compress.add_argument_group("selection policy")
    policy.add_argument(
        "--threshold",
        type=_threshold,
        default=DEFAULT_PAGE_POLICY.threshold,
        metavar="T",
        help="keep pages scoring >= T ('none' for no floor; default %(default)s)",
    )
    policy.add_argument(
        "--top-k",
        type=_optional_count,
        default=DEFAULT_PAGE_POLICY.top_k,
        metavar="K",
        help="keep at most K pages per criterion ('all' for no limit; default %(default)s)",
    )
    policy.add_argument(
        "--max-chars", type=_count, metavar="N", help="character budget per criterion"
    )
    policy.add_argument(
        "--max-tokens", type=_count, metavar="N", help="token budget per criterion (estimated)"
    )
    policy.add_argument(
        "--neighbors",
        type=_count,
        default=0,
        metavar="N",
        help="also keep N pages before and after each kept page (default 0)",
    )
    policy.add_argument(
        "--min-keep",
        type=_count,
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
    compress.add_argument(
        "--instruction", help="instruction appended to every criterion that has none"
    )
    _add_output_option(compress)
    compress.add_argument(
        "--no-context", action="store_true", help="leave the kept pages' text out of the JSON"
    )
    compress.add_argument(
        "--heatmap",
        type=Path,
        metavar="FILE.png",
        help="save a pages × criteria picture (needs zerank-gate[eval])",
    )
    compress.add_argument(
        "--price-per-million-tokens",
        type=_price,
        metavar="USD",
        help="estimate the scoring cost from the tokens the backend reports",
    )
    compress.add_argument(
        "--concurrency",
        type=_positive,
        default=4,
        metavar="N",
        help="criteria scored at once (default %(default)s)",
    )
    compress.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: only when stderr is a terminal)",
    )
    _add_backend_options(compress)

    classify = commands.add_parser(
        "classify",
        help="calibrated label probabilities for texts",
        description="Score each text against each label description; print probabilities "
        "and the chosen labels.",
        epilog="texts: a .json list of strings, or one text per line ('-' reads stdin). "
        "labels: .yaml/.json mapping name -> description, or lines 'name: description'.",
    )
    classify.add_argument("texts", help="texts file, or '-' for stdin")
    classify.add_argument("-l", "--labels", type=Path, required=True, help="labels file")
    classify.add_argument(
        "--threshold",
        type=_threshold,
        default=0.5,
        metavar="T",
        help="floor a label must reach (default %(default)s)",
    )
    classify.add_argument(
        "--multi-label", action="store_true", help="choose every label above the floor"
    )
    classify.add_argument("--default", metavar="LABEL", help="label chosen when none passes")
    classify.add_argument("--instruction", help="instruction appended to every label description")
    _add_output_option(classify)
    _add_backend_options(classify)

    cache = commands.add_parser(
        "cache",
        help="inspect or clear the score cache",
        description="Inspect or clear the score cache.",
    )
    cache.add_argument("action", choices=("info", "clear"))
    cache.add_argument("--cache", metavar="PATH", type=Path, help="cache file (default as above)")
    return parser


def choose_backend(
    backend: str | None = None, *, server_url: str | None = None, model: str | None = None
) -> BackendChoice:
    """The scorer the flags ask for; without flags, :func:`scorer_from_env`'s choice."""
    name = backend or os.environ.get("ZERANK_BACKEND") or ("server" if server_url else None)
    if server_url and name != "server":
        raise ConfigurationError(f"--server-url needs the server backend, not {name!r}")
    if model is None and server_url is None:
        return scorer_from_env(name)
    if name is None:
        name = scorer_from_env(None).name
    if name == "hosted":
        from zerank_core.scorers.zeroentropy import ZeroEntropyScorer

        hosted = ZeroEntropyScorer(model=model or os.environ.get("ZERANK_MODEL", "zerank-2"))
        return BackendChoice("hosted", hosted, f"ZeroEntropy API ({hosted.model})")
    if name == "server":
        from zerank_core.scorers.server import RerankServerScorer

        server = RerankServerScorer(server_url, model=model)
        return BackendChoice(
            "server",
            server,
            f"rerank server {server.url} ({server.model}, {server.backend_scale.value} scores)",
        )
    if name == "local":
        try:
            local = importlib.import_module("zerank_core.scorers.local")
        except ImportError as exc:
            raise ConfigurationError(
                f"the local backend is not available ({exc}): pip install 'zerank-gate[local]'"
            ) from exc
        scorer = local.LocalScorer(model)
        return BackendChoice("local", scorer, f"open weights in-process ({model})")
    raise ConfigurationError(f"--model does not apply to the {name} backend")


def _redact(text: str) -> str:
    """Hide credentials a server URL may carry (``https://user:token@host/...``)."""
    return re.sub(r"(https?://)[^/@\s]+@", r"\1***@", text)


def _scorer(args: argparse.Namespace, err: TextIO) -> tuple[Scorer, CachedScorer | None]:
    choice = choose_backend(args.backend, server_url=args.server_url, model=args.model)
    reason = _redact(choice.reason)
    args.backend_used = {"name": choice.name, "description": reason}
    print(f"backend: {choice.name} — {reason}", file=err)
    if choice.name == "lexical":
        print(
            "note: BM25 scores are uncalibrated (1.0 = best page for each query); set "
            "ZEROENTROPY_API_KEY, ZERANK_SERVER_URL or ZERANK_LOCAL_MODEL for zerank",
            file=err,
        )
    if args.no_cache:
        return choice.scorer, None
    cached = CachedScorer(choice.scorer, args.cache or default_cache_path())
    return cached, cached


def _write_json(data: Any, output: str | None, out: TextIO, err: TextIO) -> None:
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    if output and output != "-":
        path = Path(output)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"results: {output}", file=err)
    elif output == "-" or not out.isatty():
        out.write(text)
    else:
        print("results: add -o FILE.json (or pipe stdout) for the full JSON", file=err)


def _cache_line(cached: CachedScorer | None, hits: int | None, misses: int | None) -> str:
    if cached is None:
        return "cache: off"
    return f"cache: {cached.path} — {hits} hits, {misses} misses"


def _summary(result: GateResult, err: TextIO) -> None:
    report = result.report
    policy = result.policy
    parts = []
    if policy.top_k is not None:
        parts.append(f"top {policy.top_k}")
    if policy.threshold is not None:
        parts.append(f"floor {policy.threshold}")
    if policy.max_chars is not None:
        parts.append(f"≤ {policy.max_chars:,} chars")
    if policy.max_tokens is not None:
        parts.append(f"≤ {policy.max_tokens:,} tokens")
    if policy.neighbors:
        parts.append(f"± {policy.neighbors} neighbour pages")
    if policy.min_keep:
        parts.append(f"at least {policy.min_keep}")
    parts.append(f"{policy.order} order")
    empty = (
        f", empty: {', '.join(map(str, report.empty_pages))} (not scored)"
        if report.empty_pages
        else ""
    )
    print(
        f"document: {result.document.source} — {report.pages} pages{empty}; "
        f"{report.criteria} criteria",
        file=err,
    )
    print(f"policy: {', '.join(parts)}", file=err)
    print(file=err)
    width = max(8, *(len(c.id) for c in result.criteria))
    print(f"{'criterion':<{width}}  {'kept pages':<18} {'best':>5} {'chars':>7}  text", file=err)
    for item in result.results:
        pages = ", ".join(map(str, item.pages)) or "—"
        best = max(item.scores.values()) if item.scores else 0.0
        text = " ".join(item.criterion.text.split())
        text = text if len(text) <= 52 else text[:51] + "…"
        print(
            f"{item.criterion.id:<{width}}  {pages:<18} {best:5.2f} {item.chars_kept:7,}  {text}",
            file=err,
        )
    print(file=err)
    ratio = report.compression_ratio
    saved = (
        f"{ratio:.1f}× less than the whole document per criterion"
        if ratio is not None
        else "nothing kept"
    )
    print(
        f"kept {report.chars_kept:,} of {report.chars_full:,} characters "
        f"({report.kept_fraction:.1%}, {saved}); "
        f"~{report.tokens_kept_estimate:,} of ~{report.tokens_full_estimate:,} tokens",
        file=err,
    )
    if report.no_evidence:
        print(
            f"no evidence (no page above the floor): {', '.join(report.no_evidence)}",
            file=err,
        )
    elif result.scale is Scale.UNCALIBRATED:
        print(
            "no evidence: none flagged — uncalibrated scores only flag a criterion whose "
            "words appear on no page",
            file=err,
        )
    else:
        print("no evidence: none (every criterion kept at least one page)", file=err)
    tokens = (
        f"{report.model_tokens:,} tokens"
        if report.model_tokens is not None
        else "tokens not reported by this backend"
    )
    cost = f", ~${report.estimated_cost_usd:.4f}" if report.estimated_cost_usd is not None else ""
    print(
        f"model calls: {report.model_requests} requests, {report.model_texts} page scores, "
        f"{tokens}{cost}",
        file=err,
    )


def _compress(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    policy = SelectionPolicy.from_attributes(args)
    if args.heatmap is not None and importlib.util.find_spec("matplotlib") is None:
        # Fail before scoring, not after the whole run.
        raise MissingDependencyError("matplotlib", "eval")
    document = load_document(args.document)
    criteria = load_criteria(args.criteria)
    scorer, cached = _scorer(args, err)
    plain_text = not args.document.is_dir() and args.document.suffix.lower() not in (
        ".pdf",
        ".json",
    )
    if len(document.pages) == 1 and plain_text:
        print(
            "note: the document is a single page (no form feeds found): every criterion "
            "keeps all of it or nothing",
            file=err,
        )
    try:
        gate = PageGate(
            scorer,
            policy,
            instruction=args.instruction,
            max_concurrency=args.concurrency,
            progress=args.progress,
            price_per_million_tokens=args.price_per_million_tokens,
        )
        result = gate.run(document, criteria)
    finally:
        if cached is not None:
            cached.close()
    _summary(result, err)
    report = result.report
    print(_cache_line(cached, report.cache_hits, report.cache_misses), file=err)
    if args.heatmap is not None:
        print(f"heatmap: {plot_heatmap(result, args.heatmap)}", file=err)
    data = result.to_dict(include_context=not args.no_context)
    data["backend"] = args.backend_used
    _write_json(data, args.output, out, err)
    return 0


def _read_texts(source: str) -> list[str]:
    if source == "-":
        return [line.rstrip("\n") for line in sys.stdin if line.strip()]
    path = Path(source)
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read texts file {path}: {exc}") from exc
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"{path} is not valid JSON: {exc}") from exc
        if not isinstance(data, list) or not all(isinstance(t, str) for t in data):
            raise ConfigurationError(f"{path} must hold a JSON list of strings")
        return data
    return [line for line in raw.splitlines() if line.strip()]


def _read_labels(path: Path) -> dict[str, str]:
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read labels file {path}: {exc}") from exc
    suffix = path.suffix.lower()
    data: object
    if suffix in (".yaml", ".yml", ".json"):
        import yaml

        try:
            # JSON is YAML, so one parser reads both.
            data = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigurationError(f"{path} is not valid YAML/JSON: {exc}") from exc
    else:
        pairs: dict[str, str] = {}
        for number, line in enumerate(raw.splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            name, sep, description = line.partition(":")
            if not sep:
                raise ConfigurationError(
                    f"{path}:{number}: expected 'name: description', got {line.strip()!r:.60}"
                )
            pairs[name.strip()] = description.strip()
        data = pairs
    if not isinstance(data, dict) or not data:
        raise ConfigurationError(f"{path} must map label names to descriptions")
    labels = {}
    for name, description in data.items():
        if not isinstance(description, str):
            raise ConfigurationError(
                f"{path}: the description of label {name!r} must be a string, got {description!r}"
            )
        labels[str(name)] = description
    return labels


def _classify(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    texts = _read_texts(args.texts)
    labels = _read_labels(args.labels)
    if args.default is not None and args.default not in labels:
        raise ConfigurationError(
            f"--default {args.default!r} is not one of the labels: {sorted(labels)}"
        )
    if not texts:
        raise ConfigurationError(f"no texts in {args.texts}")
    scorer, cached = _scorer(args, err)
    threshold = 0.0 if args.threshold is None else args.threshold
    try:
        classifier = LabelClassifier(
            scorer,
            labels,
            threshold=threshold,
            multi_label=args.multi_label,
            default=args.default,
            instruction=args.instruction,
        )
        before = cached.stats if cached is not None else None
        results = classifier.classify(texts)
        stats = cached.stats - before if cached is not None and before is not None else None
    finally:
        if cached is not None:
            cached.close()
    width = max(5, *(len(n) for n in labels))
    print(f"{'#':>4}  {'label':<{width}} {'p':>5}  text", file=err)
    rows = []
    for index, (text, result) in enumerate(zip(texts, results, strict=True)):
        chosen = ", ".join(result.labels) or "—"
        best = max(result.probabilities.values())
        short = text if len(text) <= 60 else text[:59] + "…"
        print(f"{index:>4}  {chosen:<{width}} {best:5.2f}  {short}", file=err)
        rows.append(
            {
                "index": index,
                "text": text,
                "label": result.label,
                "labels": list(result.labels),
                "is_default": result.is_default,
                "probabilities": {k: round(v, 6) for k, v in result.probabilities.items()},
            }
        )
    print(
        _cache_line(
            cached, None if stats is None else stats.hits, None if stats is None else stats.misses
        ),
        file=err,
    )
    _write_json(
        {"backend": args.backend_used, "labels": labels, "results": rows}, args.output, out, err
    )
    return 0


def _cache(args: argparse.Namespace, err: TextIO) -> int:
    path = args.cache or default_cache_path()
    if not path.exists():
        print(f"no score cache at {path}", file=err)
        return 0
    store = ScoreStore(path)
    try:
        if args.action == "clear":
            removed = store.clear()
            print(f"cleared {removed:,} scores from {path}", file=err)
        else:
            info = store.info()
            print(
                f"{info.path}: {info.entries:,} scores, {info.size_bytes / 1024:,.1f} KiB",
                file=err,
            )
    finally:
        store.close()
    return 0


def main(
    argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """Run the command line; return the exit status (0 ok, 1 failed, 2 bad input)."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "compress":
            return _compress(args, out, err)
        if args.command == "classify":
            return _classify(args, out, err)
        return _cache(args, err)
    except (ConfigurationError, DocumentError) as exc:
        print(f"zerank: error: {_redact(str(exc))}", file=err)
        return 2
    except (ZeRankError, httpx.HTTPError, OSError) as exc:
        print(f"zerank: error: {_redact(str(exc))}", file=err)
        return 1


if __name__ == "__main__":
    sys.exit(main())
