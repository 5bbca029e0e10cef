"""What every ``zerank`` subcommand shares: argument types, backend and output options."""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from zerank_core.cache import CachedScorer, ScoreStore, default_cache_path
from zerank_core.errors import ConfigurationError
from zerank_core.limits import LIMIT_VARIABLES
from zerank_core.redaction import redact
from zerank_core.scorers.auto import (
    BACKENDS,
    BackendChoice,
    Vocabulary,
    backend_name,
    planned_backend,
    resolve_backend,
)
from zerank_core.scorers.base import BatchCallback, Scale, ScoreItem, Scorer, Usage

if TYPE_CHECKING:
    from zerank_core.calibrate import IsotonicCalibrator, PlattCalibrator

__all__ = [
    "ArgumentParser",
    "add_backend_options",
    "add_output_option",
    "choose_backend",
    "close_scorer",
    "make_scorer",
]


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, but a bad argument is one error line and a hint, not the usage block.

    The usage block buried the line that matters under fifteen others;
    ``--help`` still prints it.
    """

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.stderr.write(f"hint: {self.prog} --help lists every option\n")
        sys.exit(2)


def backend_arg(value: str) -> str:
    """``--backend``: a backend name or an alias users type (bm25, zeroentropy)."""
    try:
        return backend_name(value, "--backend")
    except ConfigurationError as exc:
        message = str(exc).removeprefix("--backend must be ")
        raise argparse.ArgumentTypeError(f"must be {message}") from None


def threshold_arg(value: str) -> float | None:
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


def count_arg(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {number}")
    return number


def optional_count_arg(value: str) -> int | None:
    if value.lower() in ("all", "none"):
        return None
    return count_arg(value)


def positive_arg(value: str) -> int:
    number = count_arg(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {number}")
    return number


def rate_arg(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value!r}") from None
    if not (math.isfinite(number) and number > 0):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {value}")
    return number


#: The limit flags and the keyword each sets (see zerank_core.limits).
LIMIT_FLAGS = {
    "requests_per_minute": "--requests-per-minute",
    "bytes_per_minute": "--bytes-per-minute",
    "tokens_per_minute": "--tokens-per-minute",
    "max_concurrency": "--max-concurrency",
}


def limits_of(args: argparse.Namespace) -> dict[str, float | int]:
    """The limits the flags set (the environment's are read where the backend is built)."""
    return {k: v for k in LIMIT_FLAGS if (v := getattr(args, k, None)) is not None}


def price_arg(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a price in USD, got {value!r}") from None
    if not number >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return number


def add_backend_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("backend")
    group.add_argument(
        "--backend",
        type=backend_arg,
        metavar="{" + ",".join(BACKENDS) + "}",
        help="which scorer to use (default: $ZERANK_BACKEND, then the first configured one); "
        "bm25 means lexical, zeroentropy means hosted",
    )
    group.add_argument(
        "--server-url",
        metavar="URL",
        help="rerank server endpoint, e.g. http://localhost:8000/v1/rerank (implies --backend "
        "server; scale from $ZERANK_SERVER_SCALE)",
    )
    group.add_argument(
        "--model",
        help="ZeroEntropy model name (hosted, or served by --server-url), Hugging Face id or "
        "folder (open weights in-process), or 'bm25' for the offline baseline",
    )
    group.add_argument(
        "--device",
        help="device for open weights in-process: cpu, cuda, cuda:1, mps (implies local)",
    )
    group.add_argument(
        "--scale",
        choices=("logit", "sigmoid", "probability"),
        help="what the model's numbers are: with --server-url, what the server returns (as "
        "$ZERANK_SERVER_SCALE); with a --model run in-process, declares any "
        "sentence-transformers cross-encoder (not zerank) whose head returns this scale "
        "('logit' for MiniLM and bge rerankers): its scores are uncalibrated until "
        "zerank calibrate --calibrator fits a calibrator",
    )
    limits = parser.add_argument_group(
        "limits (a hosted or server backend; on Ray they hold for the whole job)"
    )
    for key, flag in LIMIT_FLAGS.items():
        variable = LIMIT_VARIABLES[key]
        what, otherwise = {
            "requests_per_minute": ("requests per minute", "no limit"),
            "bytes_per_minute": ("request bytes per minute (150 + query + text each)", "no limit"),
            "tokens_per_minute": ("tokens per minute (estimated: bytes / 4)", "no limit"),
            "max_concurrency": ("requests in flight at once", "16"),
        }[key]
        limits.add_argument(
            flag,
            type=positive_arg if key == "max_concurrency" else rate_arg,
            metavar="N",
            help=f"at most N {what} (default: ${variable}, else {otherwise})",
        )
    cache = parser.add_argument_group("score cache")
    cache.add_argument(
        "--cache",
        metavar="PATH",
        type=Path,
        help="SQLite score cache (default: $ZERANK_CACHE or ~/.cache/zerank-gate/scores.sqlite3)",
    )
    cache.add_argument("--no-cache", action="store_true", help="score everything afresh")


def add_output_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write the JSON result here ('-' for stdout; default: stdout when it is not a "
        "terminal)",
    )


#: How backend errors name settings on the command line: flags, or the
#: environment variable alone where there is no flag (the API key).
CLI_VOCABULARY = Vocabulary(
    {
        "backend": "--backend",
        "model": "--model",
        "device": "--device",
        "server_url": "--server-url",
        "scale": "--scale",
        "api_key": None,
        "base_url": None,
        "scorer": None,
        **LIMIT_FLAGS,
    },
    flags=True,
)


def choose_backend(
    backend: str | None = None,
    *,
    server_url: str | None = None,
    model: str | None = None,
    device: str | None = None,
    scale: str | None = None,
    limits: dict[str, float | int] | None = None,
) -> BackendChoice:
    """The scorer the flags and the environment ask for, through :func:`resolve_backend`.

    The command line adds only its offline default: with nothing configured
    it runs on the BM25 baseline (and says so) instead of failing. Its
    requests carry the User-Agent ``zerank-gate/<version> cli``.
    """
    given = limits or {}
    return resolve_backend(
        backend=backend,
        model=model,
        device=device,
        server_url=server_url,
        scale=scale,
        framework="cli",
        max_concurrency=_int_or_none(given.get("max_concurrency")),
        requests_per_minute=given.get("requests_per_minute"),
        bytes_per_minute=given.get("bytes_per_minute"),
        tokens_per_minute=given.get("tokens_per_minute"),
        allow_lexical=True,
        vocabulary=CLI_VOCABULARY,
    )


def _int_or_none(value: float | int | None) -> int | None:
    return None if value is None else int(value)


def check_backend(
    backend: str | None = None,
    *,
    server_url: str | None = None,
    model: str | None = None,
    device: str | None = None,
    scale: str | None = None,
    limits: dict[str, float | int] | None = None,
) -> tuple[str, str] | None:
    """Build the backend these flags ask for once, and close it: fail before a cluster starts.

    Open weights are not loaded here (they are on the actors' nodes, maybe
    not on this one); every other backend checks its settings and
    credentials as it is built, without a request. Returns the backend's
    name and description (``None`` for open weights, not built here).
    """
    planned = planned_backend(backend=backend, model=model, device=device, server_url=server_url)
    if planned == "local":
        return None
    choice = choose_backend(
        backend, server_url=server_url, model=model, device=device, scale=scale, limits=limits
    )
    close_scorer(choice.scorer, None)
    return choice.name, redact(choice.reason)


def make_scorer(args: argparse.Namespace, err: TextIO) -> tuple[Scorer, CachedScorer | None]:
    choice = choose_backend(
        args.backend,
        server_url=args.server_url,
        model=args.model,
        device=args.device,
        scale=args.scale,
        limits=limits_of(args),
    )
    reason = redact(choice.reason)
    args.backend_used = {"name": choice.name, "description": reason}
    print(f"backend: {choice.name} — {reason}", file=err)
    calibrator = _policy_calibrator(args, choice, err)
    if choice.name == "lexical":
        print(
            "note: BM25 scores are uncalibrated (1.0 = best page for each query); set "
            "ZEROENTROPY_API_KEY, ZERANK_SERVER_URL or ZERANK_LOCAL_MODEL for zerank",
            file=err,
        )
    elif choice.scorer.scale is Scale.UNCALIBRATED and calibrator is None:
        print(
            f"note: {choice.scorer.model} is not a zerank model: its scores are uncalibrated "
            "(they order pages, but a threshold on them means nothing) until zerank "
            "calibrate --calibrator platt|isotonic fits a calibrator on your labelled set "
            "and --policy applies it",
            file=err,
        )
    if args.no_cache:
        resumable = ResumableScorer(choice.scorer)
        args.resume_cache = resumable.path
        return _calibrated(resumable, calibrator), None
    cached = CachedScorer(choice.scorer, args.cache or default_cache_path())
    # The cache holds the backend's own scores; the calibrator applies on top.
    return _calibrated(cached, calibrator), cached


def _policy_calibrator(
    args: argparse.Namespace, choice: BackendChoice, err: TextIO
) -> PlattCalibrator | IsotonicCalibrator | None:
    """The calibrator of the ``--policy`` file, if it has one, said on ``err``."""
    path = getattr(args, "policy", None)
    if path is None:
        return None
    from zerank_core.calibrate import ThresholdPolicy

    fitted = ThresholdPolicy.load(path)
    if fitted.calibrator is None:
        if choice.scorer.scale is Scale.UNCALIBRATED and choice.name != "lexical":
            print(
                f"note: {path} has no calibrator: refit it with zerank calibrate --calibrator "
                "so that its thresholds are probabilities",
                file=err,
            )
        return None
    method = fitted.calibrator.to_dict()["method"]
    print(f"calibration: {method} calibrator from {path}: scores are probabilities", file=err)
    model = fitted.backend.get("model")
    if model is not None and model != choice.scorer.model:
        print(
            f"note: the calibrator was fitted on {model} scores and this run uses "
            f"{choice.scorer.model}: a calibrator does not carry over between models",
            file=err,
        )
    return fitted.calibrator


def _calibrated(scorer: Scorer, calibrator: PlattCalibrator | IsotonicCalibrator | None) -> Scorer:
    if calibrator is None:
        return scorer
    from zerank_core.calibrate import CalibratedScorer

    return CalibratedScorer(scorer, calibrator)


class ResumableScorer:
    """``--no-cache``: the run's scores go to a temporary cache, so that a failed run resumes.

    Nothing is read from an earlier run (the file is new), but when a request
    fails after its retries, the scores of every other one are on disk: the
    error names the file, and ``--cache FILE`` on the rerun sends only what
    is missing. :func:`finish_resumable` removes the file after a run that
    succeeded. It reports what its backend spent (``usage``); it is not a
    :class:`~zerank_core.cache.CachedScorer`, so reports show no cache.
    """

    def __init__(self, scorer: Scorer) -> None:
        self.scorer = scorer
        self.path = Path(tempfile.mkdtemp(prefix="zerank-resume-")) / "scores.sqlite3"
        self._cache = CachedScorer(scorer, self.path)

    @property
    def model(self) -> str:
        return self.scorer.model

    @property
    def scale(self) -> Scale:
        return self.scorer.scale

    @property
    def usage(self) -> Usage | None:
        return self.scorer.usage

    def score(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        return self._cache.score(query, texts, instruction=instruction)

    async def ascore(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        return await self._cache.ascore(query, texts, instruction=instruction)

    def score_many(
        self, items: Sequence[ScoreItem | tuple[Any, ...]], *, on_batch: BatchCallback | None = None
    ) -> list[list[float]]:
        return self._cache.score_many(items, on_batch=on_batch)

    async def ascore_many(
        self, items: Sequence[ScoreItem | tuple[Any, ...]], *, on_batch: BatchCallback | None = None
    ) -> list[list[float]]:
        return await self._cache.ascore_many(items, on_batch=on_batch)

    def close(self) -> None:
        self._cache.close()


def resume_hint(args: argparse.Namespace) -> str:
    """After a failed ``--no-cache`` run that scored something: where its scores are kept."""
    path = getattr(args, "resume_cache", None)
    if path is None or not path.exists():
        return ""
    store = ScoreStore(path)
    try:
        entries = store.info().entries
    finally:
        store.close()
    if not entries:
        finish_resumable(args)
        return ""
    return (
        f"; the {entries:,} scores that came back are kept in {path}: rerun with "
        f"--cache {path} to send only what is missing"
    )


def finish_resumable(args: argparse.Namespace) -> None:
    """Remove a ``--no-cache`` run's temporary cache (the run succeeded, or kept nothing)."""
    path = getattr(args, "resume_cache", None)
    if path is not None:
        shutil.rmtree(path.parent, ignore_errors=True)
        args.resume_cache = None


def close_scorer(scorer: Scorer, cached: CachedScorer | None) -> None:
    """Close what :func:`make_scorer` built: the cache file and the backend's clients."""
    if cached is not None:
        cached.close()
        scorer = cached.scorer
    from zerank_core.calibrate import CalibratedScorer

    if isinstance(scorer, CalibratedScorer):  # a --policy calibrator around the backend
        scorer = scorer.scorer
    if isinstance(scorer, ResumableScorer):
        scorer.close()
        scorer = scorer.scorer
    close = getattr(scorer, "close", None)
    if callable(close):
        close()


def write_json(data: Any, output: str | None, out: TextIO, err: TextIO) -> None:
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


def cache_line(cached: CachedScorer | None, hits: int | None, misses: int | None) -> str:
    if cached is None:
        return "cache: off"
    return f"cache: {cached.path} — {hits} hits, {misses} misses"
