"""Gate a dataset of documents × criteria on a Ray cluster, with Ray Data.

Documents become rows of a Ray Dataset; ``map_batches`` sends batches of them
to a pool of actors (``compute=ActorPoolStrategy(size=actors)``), each of
which builds its scorer once (a :class:`~zerank_core.scorers.local.LocalScorer`
per GPU, or a client of a rerank server) and gates its batch with
:func:`~zerank_core.multi.gate_documents`. The output has one row per
document: its :class:`~zerank_core.results.GateResult`, written by the one
serialiser (:func:`~zerank_core.results.dump_result`), so that a Ray job
yields exactly what a single process does.

Ray Data's actor pools restart an actor that dies (a lost node, a process
killed for memory) and resubmit the batches it held: ``max_restarts=-1`` and
``max_task_retries=-1`` are Ray Data's defaults for actor pools, which this
module keeps. An error raised by the gate itself (a document without text, a
backend's invalid answer or refusal) is not retried and fails the job, and
the package's error comes out of Ray's wrappers as it is; an actor whose
set-up fails (no model on its node, a cache it cannot open) fails it with a
:class:`~zerank_core.errors.ConfigurationError` naming the actor's error.

With ``cache=PATH`` each actor wraps its scorer in a
:class:`~zerank_core.cache.CachedScorer` on that file, keyed exactly as in a
single process, so a rerun, or a job resubmitted after an actor died, scores
only what no earlier run stored. The path is opened by each actor on its own
node: on one machine all actors share the file; on several machines each node
has its own file at that path (SQLite's WAL needs one host's shared memory, so
do not point it at a network filesystem).

Needs the ``ray`` extra (``pip install 'zerank-gate[ray]'``).
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import pickle
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from zerank_core.cache import CachedScorer
from zerank_core.criteria import Criterion
from zerank_core.dedupe import DuplicateDetector
from zerank_core.errors import (
    ConfigurationError,
    InvalidResponseError,
    MissingDependencyError,
    ZeRankError,
)
from zerank_core.gate import DEFAULT_PAGE_POLICY, PageGate
from zerank_core.loaders import Document, Page
from zerank_core.multi import gate_documents, summarize
from zerank_core.results import (
    BackendInfo,
    CacheInfo,
    GateResult,
    MultiResult,
    RayRun,
    Timings,
    dump_result,
)
from zerank_core.scorers.auto import BackendChoice
from zerank_core.scorers.base import Scale, Scorer, Usage
from zerank_core.select import SelectionPolicy

__all__ = ["documents_dataset", "gate_dataset", "gate_on_ray"]

#: A picklable callable that builds the scorer inside each actor, e.g.
#: ``functools.partial(LocalScorer, "/models/zerank-2")``; one that returns a
#: :class:`~zerank_core.scorers.auto.BackendChoice` also names the backend in
#: every result (``GateResult.backend``).
ScorerFactory = Callable[[], "Scorer | BackendChoice"]

#: A picklable callable that builds the duplicate detector inside each actor
#: from the actor's scorer, e.g. ``functools.partial(ModelDetector, threshold=0.8)``.
DetectorFactory = Callable[[Scorer], DuplicateDetector]


def _documents_of(batch: Mapping[str, Any]) -> list[Document]:
    return [
        Document(str(source), tuple(Page(n + 1, str(text)) for n, text in enumerate(pages)))
        for source, pages in zip(batch["document"], batch["pages"], strict=True)
    ]


_USAGE = TypeAdapter(Usage)


def _total(usages: Iterable[Usage]) -> Usage:
    """The sum of the actors' usage (tokens ``None`` when no actor reported any)."""
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


def _creation_error(exc: BaseException) -> BaseException:
    """A clear error for an actor whose set-up raised (no model, a cache it cannot open).

    Ray keeps only the text of an exception raised while an actor is built;
    its last line is the original type and message. An actor that died
    otherwise is passed on as it is.
    """
    text = str(exc)
    if "creation task" not in text:
        return exc
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    cause = lines[-1].removeprefix("zerank_core.errors.") if lines else text
    return ConfigurationError(f"a Ray actor could not start: {cause}")


#: Marks the pickled copy of a package error that an actor attaches to it as a
#: note: Ray Data keeps only the text of an error raised in ``map_batches``.
_CARRIED = "zerank error, pickled: "
_CARRIED_PATTERN = re.compile(re.escape(_CARRIED) + r"([A-Za-z0-9+/=]+)")


def _carry(exc: ZeRankError) -> ZeRankError:
    """``exc`` with a note holding its pickled self, for :func:`package_error` to find."""
    exc.add_note(_CARRIED + base64.b64encode(pickle.dumps(exc)).decode("ascii"))
    return exc


def package_error(exc: BaseException) -> ZeRankError | None:
    """The package's own error inside Ray's wrappers, or ``None`` when there is none.

    An error raised in an actor reaches the driver wrapped (``RayTaskError``,
    Ray Data's ``UserCodeException``): as an object in ``cause`` or
    ``__cause__`` where Ray kept one, else only in the wrapper's text, where
    the actor's note (:func:`_carry`) holds it pickled. The caller sees the
    original, as in one process.
    """
    for found in reversed(_CARRIED_PATTERN.findall(str(exc))):
        try:
            carried = pickle.loads(base64.b64decode(found))  # written by this package's actors
        except (binascii.Error, pickle.UnpicklingError, EOFError, AttributeError, ImportError):
            continue
        if isinstance(carried, ZeRankError):
            return carried
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ZeRankError):
            return current
        cause = getattr(current, "cause", None)
        pending += [
            cause if isinstance(cause, BaseException) else None,
            current.__cause__,
            current.__context__,
        ]
    return None


def _import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise MissingDependencyError("ray[data]", "ray") from exc
    return ray


class _GateWorker:
    """A Ray Data actor: builds its scorer once, then gates batches of documents."""

    def __init__(
        self,
        scorer: ScorerFactory,
        criteria: list[Criterion],
        policy: SelectionPolicy,
        instruction: str | None,
        include_context: bool,
        cache: str | None = None,
        duplicate_detector: DetectorFactory | None = None,
    ) -> None:
        built = scorer()
        self.backend: BackendInfo | None = None
        if isinstance(built, BackendChoice):
            self.backend = BackendInfo(name=built.name, description=built.reason)
            built = built.scorer
        self.cache = CachedScorer(built, cache) if cache is not None else None
        scoring = self.cache if self.cache is not None else built
        self.gate = PageGate(
            scoring,
            policy,
            instruction=instruction,
            progress=False,
            duplicate_detector=(
                duplicate_detector(scoring) if duplicate_detector is not None else None
            ),
        )
        self.criteria = criteria
        self.include_context = include_context

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, list[Any]]:
        """One row per document: its index, its result as the one serialiser writes it.

        ``usage`` (the scorer's) and, with a cache, ``cache_hits`` and
        ``cache_misses`` are the batch's, on its first row (the other rows
        carry zeros), so that the driver adds the batches up.
        """
        documents = _documents_of(batch)
        stats_before = self.cache.stats if self.cache is not None else None
        try:
            job = gate_documents(self.gate, documents, self.criteria)
        except ZeRankError as exc:
            _carry(exc)
            raise
        stats = (
            self.cache.stats - stats_before
            if self.cache is not None and stats_before is not None
            else None
        )
        columns: dict[str, list[Any]] = {
            "index": [],
            "result": [],
            "usage": [],
            "cache_hits": [],
            "cache_misses": [],
        }
        for n, (index, result) in enumerate(zip(batch["index"], job.results, strict=True)):
            if self.backend is not None:
                result = result.model_copy(update={"backend": self.backend})
            columns["index"].append(int(index))
            columns["result"].append(dump_result(result, include_text=self.include_context))
            usage = job.summary.usage if n == 0 else Usage()
            columns["usage"].append(_USAGE.dump_json(usage).decode())
            columns["cache_hits"].append(stats.hits if stats is not None and n == 0 else 0)
            columns["cache_misses"].append(stats.misses if stats is not None and n == 0 else 0)
        return columns


def documents_dataset(documents: Iterable[Document]) -> Any:
    """A Ray Dataset with one row per document: ``index``, ``document``, ``pages``."""
    ray = _import_ray()
    rows = []
    for index, document in enumerate(documents):
        if not isinstance(document, Document):
            raise ConfigurationError(
                f"documents[{index}] must be a Document, got {type(document).__name__}"
            )
        rows.append(
            {
                "index": index,
                "document": document.source,
                "pages": [p.text for p in document.pages],
            }
        )
    if not rows:
        raise ConfigurationError("documents must hold at least one Document")
    return ray.data.from_items(rows)


def gate_dataset(
    dataset: Any,
    criteria: Sequence[Criterion],
    *,
    scorer: ScorerFactory,
    policy: SelectionPolicy = DEFAULT_PAGE_POLICY,
    instruction: str | None = None,
    actors: int = 1,
    documents_per_batch: int = 8,
    num_gpus: float = 0.0,
    num_cpus: float = 1.0,
    include_context: bool = False,
    cache: str | os.PathLike[str] | None = None,
    duplicate_detector: DetectorFactory | None = None,
) -> Any:
    """Rows of (document, criterion) results from a dataset of documents, lazily.

    ``dataset`` has the columns of :func:`documents_dataset` (``index``,
    ``document``, ``pages``: the page texts in order, empty strings for empty
    pages). ``scorer`` is a picklable factory called once in each of the
    ``actors`` actors; give each ``num_gpus=1`` to put one model on each GPU.
    ``documents_per_batch`` documents go to an actor at a time, and their
    pages share the model's batches. ``cache`` is a score cache file each
    actor opens on its node (see the module's notes; a relative path is made
    absolute here, since actors run elsewhere). With a policy that has
    ``dedupe``, ``duplicate_detector`` builds each actor's detector from its
    scorer (default: :class:`~zerank_core.dedupe.LexicalDetector`). Returns a
    Ray Dataset (nothing runs until it is consumed) with one row per
    document: ``index``, ``result`` (the JSON of its
    :class:`~zerank_core.results.GateResult`; read it back with
    ``GateResult.model_validate_json``) and ``usage`` (the scorer's usage
    over the actor's batch, on the batch's first row).
    """
    ray = _import_ray()
    from ray.data import ActorPoolStrategy

    if not callable(scorer):
        raise ConfigurationError(
            f"scorer must be a callable that builds a scorer, got {type(scorer).__name__}"
        )
    for name, value in (("actors", actors), ("documents_per_batch", documents_per_batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigurationError(f"{name} must be an integer >= 1, got {value!r}")
    for name, amount in (("num_gpus", num_gpus), ("num_cpus", num_cpus)):
        if not isinstance(amount, int | float) or math.isnan(amount) or amount < 0:
            raise ConfigurationError(f"{name} must be >= 0, got {amount!r}")
    criteria = list(criteria)
    if not criteria or not all(isinstance(c, Criterion) for c in criteria):
        raise ConfigurationError("criteria must be a non-empty sequence of Criterion")
    ids = [c.id for c in criteria]
    if len(set(ids)) != len(ids):
        raise ConfigurationError(f"criterion ids must be unique; got {ids}")
    if duplicate_detector is not None and not callable(duplicate_detector):
        raise ConfigurationError(
            "duplicate_detector must be a callable that builds a detector from a scorer, "
            f"got {type(duplicate_detector).__name__}"
        )
    cache_path = None
    if cache is not None:
        if not isinstance(cache, str | os.PathLike) or not str(cache):
            raise ConfigurationError(f"cache must be a file path, got {cache!r}")
        cache_path = str(Path(cache).expanduser().absolute())
    if not isinstance(dataset, ray.data.Dataset):
        raise ConfigurationError(
            f"dataset must be a ray.data.Dataset, got {type(dataset).__name__}"
        )
    return dataset.map_batches(
        _GateWorker,
        fn_constructor_kwargs={
            "scorer": scorer,
            "criteria": criteria,
            "policy": policy,
            "instruction": instruction,
            "include_context": include_context,
            "cache": cache_path,
            "duplicate_detector": duplicate_detector,
        },
        batch_size=documents_per_batch,
        compute=ActorPoolStrategy(size=actors),
        num_gpus=num_gpus or None,
        num_cpus=num_cpus,
    )


def gate_on_ray(
    documents: Sequence[Document],
    criteria: Sequence[Criterion],
    *,
    scorer: ScorerFactory,
    address: str | None = None,
    policy: SelectionPolicy = DEFAULT_PAGE_POLICY,
    instruction: str | None = None,
    actors: int = 1,
    documents_per_batch: int = 8,
    num_gpus: float = 0.0,
    num_cpus: float = 1.0,
    include_context: bool = False,
    cache: str | os.PathLike[str] | None = None,
    duplicate_detector: DetectorFactory | None = None,
) -> MultiResult:
    """Gate ``documents`` on Ray: one result per document, in input order, and the summary.

    Connects to the cluster at ``address`` (``"auto"``, ``ray://head:10001``;
    ``None``: Ray's default, ``RAY_ADDRESS`` or a new local instance) unless
    Ray is already initialised, then runs :func:`gate_dataset` (``cache`` and
    ``duplicate_detector`` as there). Checks that every document came back
    exactly once. The results are those :func:`~zerank_core.multi.gate_documents`
    gives in one process (each document's reading comes from ``documents``);
    only the ``timings`` differ, where the summary also names the Ray run.
    """
    import time

    ray = _import_ray()
    documents = list(documents)
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False)
    start = time.perf_counter()
    dataset = gate_dataset(
        documents_dataset(documents),
        criteria,
        scorer=scorer,
        policy=policy,
        instruction=instruction,
        actors=actors,
        documents_per_batch=documents_per_batch,
        num_gpus=num_gpus,
        num_cpus=num_cpus,
        include_context=include_context,
        cache=cache,
        duplicate_detector=duplicate_detector,
    )
    try:
        rows = list(dataset.iter_rows())
    except ray.exceptions.ActorDiedError as exc:
        raise _creation_error(exc) from exc
    except Exception as exc:
        error = package_error(exc)
        if error is None:
            raise
        raise error from None
    seconds = time.perf_counter() - start
    found = sorted(int(r["index"]) for r in rows)
    if found != list(range(len(documents))):
        missing = sorted(set(range(len(documents))) - set(found))[:5]
        raise InvalidResponseError(
            f"Ray returned {len(found)} results for {len(documents)} documents "
            f"(missing, first five: {missing})",
            batch=0,
            batch_size=len(documents),
        )
    by_index = {int(r["index"]): r for r in rows}
    results = []
    for index, document in enumerate(documents):
        result = GateResult.model_validate_json(by_index[index]["result"])
        # The actor rebuilt the document from its pages: the reading is the driver's.
        reading = document.reading
        results.append(
            result.model_copy(
                update={
                    "document": result.document.model_copy(update={"reading": reading}),
                    "timings": Timings.of(reading, result.timings.gate_seconds),
                }
            )
        )
    usage = _total(_USAGE.validate_json(r["usage"]) for r in rows)
    cached = None
    if cache is not None:
        cached = CacheInfo(
            path=str(Path(cache).expanduser().absolute()),
            hits=sum(int(r["cache_hits"]) for r in rows),
            misses=sum(int(r["cache_misses"]) for r in rows),
        )
    shared = bool(results) and results[0].scale is not Scale.UNCALIBRATED
    summary = summarize(
        results,
        documents,
        usage=usage,
        seconds=seconds,
        shared=shared,
        ray=RayRun(address=address, actors=actors, gpus_per_actor=num_gpus),
        backend=results[0].backend if results else None,
        cache=cached,
    )
    return MultiResult(results=tuple(results), summary=summary)
