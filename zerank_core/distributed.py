"""Gate a dataset of documents × criteria on a Ray cluster, with Ray Data.

Documents become rows of a Ray Dataset; ``map_batches`` sends batches of them
to a pool of actors (``compute=ActorPoolStrategy(size=actors)``), each of
which builds its scorer once (a :class:`~zerank_core.scorers.local.LocalScorer`
per GPU, or a client of a rerank server) and gates its batch with
:func:`~zerank_core.multi.gate_documents`. The output has one row per
(document, criterion): the kept pages and their scores.

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

A remote scorer's limits (``requests_per_minute``, ``bytes_per_minute``,
``tokens_per_minute``, ``max_concurrency``) hold for the whole job, not per
actor: :func:`run_on_ray` starts one :class:`~zerank_core.limits.JobLimiter`
actor that every actor's scorer asks before each request (see
:mod:`zerank_core.limits` for how restarts stay correct).

With a cache, an actor builds its scorer (loads its model) only at its first
cache miss: the cache file records what each scorer factory built (model,
scale, cache identity), which is all the cache needs to answer hits, so a
fully cached rerun loads no model. :class:`RayRun` says how many actors built
one, and where the time went (start-up, model load, gating).
:func:`run_on_ray`'s ``on_document`` sees each document's rows as soon as
they are all in, so the command line writes each result as it finishes.

Needs the ``ray`` extra (``pip install 'zerank-gate[ray]'``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import os
import pickle
import re
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from zerank_core.cache import CachedScorer, ScoreStore
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
from zerank_core.multi import gate_documents
from zerank_core.results import BackendInfo, GateResult, dump_result
from zerank_core.scorers.auto import BackendChoice
from zerank_core.scorers.base import (
    BatchCallback,
    BatchedScorer,
    Scale,
    Scorer,
    Usage,
    ascore_many,
    score_many,
)
from zerank_core.scorers.engine import Engine
from zerank_core.select import SelectionPolicy

__all__ = [
    "GateRow",
    "RayRun",
    "documents_dataset",
    "gate_dataset",
    "gate_on_ray",
    "rows_of",
    "run_on_ray",
    "start_limiter",
]

#: A picklable callable that builds the scorer inside each actor, e.g.
#: ``functools.partial(LocalScorer, "/models/zerank-2")``; one that returns a
#: :class:`~zerank_core.scorers.auto.BackendChoice` also names the backend in
#: each document's result (``GateResult.backend``).
ScorerFactory = Callable[[], "Scorer | BackendChoice"]

#: A picklable callable that builds the duplicate detector inside each actor
#: from the actor's scorer, e.g. ``functools.partial(ModelDetector, threshold=0.8)``.
DetectorFactory = Callable[[Scorer], DuplicateDetector]


@dataclass(frozen=True)
class GateRow:
    """What the gate kept for one (document, criterion).

    ``index`` is the document's position in the input; ``pages`` the kept
    page numbers in the policy's order and ``scores`` their scores;
    ``page_scores`` every page's score in page order (``None`` for an empty
    page, which is not scored). ``context`` is the kept pages' text, or
    ``None`` when it was not asked for. With a score cache, ``cache_hits``
    and ``cache_misses`` count this row's scored pages whose score the cache
    held and those sent to the model (a page shared by several documents of
    one batch is scored once but counts as a miss in each); ``None`` without
    a cache. ``result`` is, on a document's first row only, the document's
    whole :class:`~zerank_core.results.GateResult` as the one serialiser
    writes it (:func:`~zerank_core.results.dump_result`): what the command
    line writes, the same as in one process.
    """

    index: int
    document: str
    criterion: str
    pages: tuple[int, ...]
    scores: tuple[float, ...]
    page_scores: tuple[float | None, ...]
    no_evidence: bool
    chars_kept: int
    chars_total: int
    context: str | None = None
    cache_hits: int | None = None
    cache_misses: int | None = None
    result: str | None = None

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> GateRow:
        """A row back from the dict form Ray Data stores it in."""
        context = record.get("context")
        return cls(
            index=int(record["index"]),
            document=str(record["document"]),
            criterion=str(record["criterion"]),
            pages=tuple(int(p) for p in record["pages"]),
            scores=tuple(float(s) for s in record["scores"]),
            page_scores=tuple(None if _missing(s) else float(s) for s in record["page_scores"]),
            no_evidence=bool(record["no_evidence"]),
            chars_kept=int(record["chars_kept"]),
            chars_total=int(record["chars_total"]),
            context=None if _missing(context) else str(context),
            cache_hits=_count(record.get("cache_hits")),
            cache_misses=_count(record.get("cache_misses")),
            result=None if _missing(record.get("result")) else str(record["result"]),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "document": self.document,
            "criterion": self.criterion,
            "pages": list(self.pages),
            "scores": list(self.scores),
            "page_scores": list(self.page_scores),
            "no_evidence": self.no_evidence,
            "chars_kept": self.chars_kept,
            "chars_total": self.chars_total,
            "context": self.context,
            "cache_hits": self.cache_hits,
            "cache_misses": self.cache_misses,
            "result": self.result,
        }


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _count(value: Any) -> int | None:
    return None if _missing(value) else int(value)


def rows_of(result: GateResult, *, index: int = 0, include_context: bool = False) -> list[GateRow]:
    """One :class:`GateRow` per criterion of a gate result (what the Ray actors emit)."""
    rows = []
    for criterion, result_row, matrix_row in zip(
        result.criteria, result.results, result.matrix, strict=True
    ):
        rows.append(
            GateRow(
                index=index,
                document=result.document.source,
                criterion=criterion.id,
                pages=result_row.pages,
                scores=tuple(result_row.scores[p] for p in result_row.pages),
                page_scores=matrix_row,
                no_evidence=result_row.no_evidence,
                chars_kept=result_row.chars_kept,
                chars_total=result.report.chars_total,
                context=result_row.context if include_context else None,
            )
        )
    return rows


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


class _RowCache(CachedScorer):
    """A :class:`CachedScorer` that also notes which texts it sent to the model, per query.

    The actor reads them back to count each row's hits and misses: the
    wrapper's own totals are per scorer call, and one call covers the pages
    of every document in a batch.
    """

    def __init__(self, scorer: Scorer, path: str | os.PathLike[str], **settings: Any) -> None:
        super().__init__(scorer, path, **settings)
        self.sent: dict[tuple[str, str | None], set[str]] = {}
        self._sent_lock = threading.Lock()

    def _plan(
        self, query: str, texts: Sequence[str], instruction: str | None
    ) -> tuple[list[bytes], dict[bytes, float], list[bytes], list[str]]:
        planned = super()._plan(query, texts, instruction)
        with self._sent_lock:
            self.sent.setdefault((query, instruction), set()).update(planned[3])
        return planned


class _StaleDescription(Exception):
    """The scorer built on this node is not the one the cache's description named."""


class _LazyScorer:
    """A scorer that builds the real one at its first call: the first cache miss.

    It declares the model, scale and cache identity that an earlier build of
    the same factory recorded in the cache file (:class:`_Descriptions`), so
    a :class:`CachedScorer` over it answers every hit without a model. The
    build checks that the real scorer has that identity; if not (the node's
    settings changed), :class:`_StaleDescription` makes the actor start the
    batch again on the real scorer.
    """

    def __init__(self, build: Callable[[], Scorer], description: Mapping[str, Any]) -> None:
        self._build = build
        self._lock = threading.Lock()
        self._scorer: Scorer | None = None
        self.model = str(description["model"])
        self.scale = Scale(description["scale"])
        self.cache_identity = str(description["identity"])
        self.pairwise = bool(description["pairwise"])

    @property
    def usage(self) -> Usage | None:
        return Usage() if self._scorer is None else self._scorer.usage

    def built(self) -> Scorer:
        with self._lock:
            if self._scorer is None:
                self._scorer = self._build()
                if _identity(self._scorer) != self.cache_identity:
                    raise _StaleDescription
            return self._scorer

    def score(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        return self.built().score(query, texts, instruction=instruction)

    async def ascore(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        return await self.built().ascore(query, texts, instruction=instruction)

    def score_many(
        self, items: Sequence[Any], *, on_batch: BatchCallback | None = None
    ) -> list[list[float]]:
        return score_many(self.built(), items, on_batch=on_batch)

    async def ascore_many(
        self, items: Sequence[Any], *, on_batch: BatchCallback | None = None
    ) -> list[list[float]]:
        return await ascore_many(self.built(), items, on_batch=on_batch)


def _identity(scorer: Scorer) -> str:
    """What :class:`CachedScorer` keys ``scorer``'s scores by."""
    identity = getattr(scorer, "cache_identity", None)
    if isinstance(identity, str) and identity:
        return identity
    return json.dumps({"model": scorer.model})


#: Environment variables that choose or configure a backend: part of a factory's key.
_BACKEND_ENVIRONMENT = ("ZERANK_", "ZEROENTROPY_", "CUDA_VISIBLE_DEVICES", "HF_")


def _factory_key(factory: ScorerFactory, num_gpus: float) -> str | None:
    """A digest of what decides which scorer ``factory`` builds on this node.

    The factory's pickle (its class and arguments), the backend's environment
    variables (secrets enter the digest, never the file) and whether the actor
    has a GPU. ``None`` when the factory does not pickle by value (a lambda):
    then the actor builds its scorer at once.
    """
    try:
        pickled = pickle.dumps(factory)
    except (pickle.PicklingError, AttributeError, TypeError):
        return None
    digest = hashlib.sha256(pickled)
    for name in sorted(os.environ):
        if name.startswith(_BACKEND_ENVIRONMENT):
            digest.update(f"\0{name}={os.environ[name]}".encode())
    digest.update(f"\0gpus={num_gpus > 0}".encode())
    return digest.hexdigest()


class _Descriptions:
    """What each scorer factory built, recorded in the score cache's file.

    One row per factory key (:func:`_factory_key`): the model, scale, cache
    identity and pairwise flag of the scorer it built, which is everything a
    :class:`CachedScorer` needs before the first miss. No text, no secret.
    """

    _TABLE = "scorer_descriptions"

    def __init__(self, path: str) -> None:
        # The score store sets the file up (WAL, its table) and says clearly
        # when the path cannot hold a cache.
        ScoreStore(path).close()
        self._db = sqlite3.connect(path, timeout=30.0, isolation_level=None)
        deadline = time.monotonic() + 30.0
        while True:
            try:
                self._db.execute(
                    f"CREATE TABLE IF NOT EXISTS {self._TABLE} "
                    "(factory TEXT PRIMARY KEY, description TEXT NOT NULL)"
                )
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)

    def recall(self, key: str) -> dict[str, Any] | None:
        row = self._db.execute(
            f"SELECT description FROM {self._TABLE} WHERE factory = ?", (key,)
        ).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def remember(self, key: str, cached: CachedScorer) -> None:
        description = {
            "model": cached.model,
            "scale": cached.scale.value,
            "identity": cached.identity,
            "pairwise": cached.pairwise,
        }
        self._db.execute(
            f"INSERT OR REPLACE INTO {self._TABLE} (factory, description) VALUES (?, ?)",
            (key, json.dumps(description, sort_keys=True)),
        )

    def close(self) -> None:
        self._db.close()


def _engine_of(scorer: Any) -> Engine | None:
    """The engine of ``scorer`` or of the scorer it wraps (calibration, cache); None: local."""
    for _ in range(8):
        if isinstance(scorer, BatchedScorer):
            return scorer.engine
        scorer = getattr(scorer, "scorer", None)
        if scorer is None:
            return None
    return None


class _GateWorker:
    """A Ray Data actor: gates batches of documents, building its scorer at the first miss.

    With a score cache whose file describes what this factory built before,
    the scorer is built only when a page is not in the cache, so a fully
    cached rerun loads no model. A remote scorer's limits are taken over by
    the job's :class:`~zerank_core.limits.JobLimiter` (when given).
    """

    def __init__(
        self,
        scorer: ScorerFactory,
        criteria: list[Criterion],
        policy: SelectionPolicy,
        instruction: str | None,
        include_context: bool,
        cache: str | None = None,
        duplicate_detector: DetectorFactory | None = None,
        limiter: Any = None,
        num_gpus: float = 0.0,
    ) -> None:
        self.factory = scorer
        self.policy = policy
        self.instruction = instruction
        self.detector_factory = duplicate_detector
        self.criteria = criteria
        self.include_context = include_context
        self.limiter = limiter
        self.holder, restarted = _holder()
        if limiter is not None and restarted:
            # A restarted actor hands back the places its previous life held
            # before asking for any (awaited: the limiter may run calls out of order).
            _ray_get(limiter.forget.remote(self.holder))
        self.built: Scorer | None = None
        self.backend: BackendInfo | None = None
        self.cache: _RowCache | None = None
        self.cache_path = cache
        self.descriptions: _Descriptions | None = None
        self.factory_key: str | None = None
        if cache is None:
            self._assemble(self._build())
            return
        self.descriptions = _Descriptions(cache)
        self.factory_key = _factory_key(scorer, num_gpus)
        description = (
            self.descriptions.recall(self.factory_key) if self.factory_key is not None else None
        )
        if description is None:
            self._assemble(self._build())
        else:
            self._assemble(_LazyScorer(self._build, description))

    def _build(self) -> Scorer:
        started = time.perf_counter()
        built = self.factory()
        if isinstance(built, BackendChoice):
            self.backend = BackendInfo(name=built.name, description=built.reason)
            built = built.scorer
        seconds = time.perf_counter() - started
        engine = _engine_of(built)
        if engine is not None and self.limiter is not None:
            from zerank_core.limits import SharedPacer, SharedSlots, declared_limits

            declared = declared_limits(engine.limits, engine.slots.limit)
            engine.share(
                slots=SharedSlots(self.limiter, self.holder, declared),
                pacer=SharedPacer(self.limiter, engine.limits, declared),
            )
        if self.limiter is not None:
            # Not awaited: a first start never waits for the limiter actor to be up.
            self.limiter.note_built.remote(self.holder, seconds, _torch_threads())
        self.built = built
        return built

    def _assemble(self, scorer: Scorer) -> None:
        """The cache wrapper and the gate over ``scorer`` (built or lazy)."""
        if self.cache is not None:
            self.cache.close()
        if self.cache_path is not None:
            self.cache = _RowCache(scorer, self.cache_path)
            if (
                self.descriptions is not None
                and self.factory_key is not None
                and not isinstance(scorer, _LazyScorer)
            ):
                self.descriptions.remember(self.factory_key, self.cache)
        scoring = self.cache if self.cache is not None else scorer
        self.gate = PageGate(
            scoring,
            self.policy,
            instruction=self.instruction,
            progress=False,
            duplicate_detector=(
                self.detector_factory(scoring) if self.detector_factory is not None else None
            ),
        )

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, list[Any]]:
        documents = [
            Document(str(source), tuple(Page(n + 1, str(text)) for n, text in enumerate(pages)))
            for source, pages in zip(batch["document"], batch["pages"], strict=True)
        ]
        started = time.time()
        try:
            columns = self._gate(batch, documents)
        except _StaleDescription:
            assert self.built is not None
            self._assemble(self.built)
            columns = self._gate(batch, documents)
        if self.limiter is not None:
            # Not awaited: only the job's report reads it.
            self.limiter.note_batch.remote(self.holder, started, time.time())
        return columns

    def _gate(self, batch: Mapping[str, Any], documents: list[Document]) -> dict[str, list[Any]]:
        if self.cache is not None:
            self.cache.sent.clear()
        try:
            job = gate_documents(self.gate, documents, self.criteria)
        except ZeRankError as exc:
            _carry(exc)
            raise
        columns: dict[str, list[Any]] = {name: [] for name in _COLUMNS}
        for index, result, document in zip(batch["index"], job.results, documents, strict=True):
            rows = rows_of(result, index=int(index), include_context=self.include_context)
            if self.cache is not None:
                rows = [self._counted(self.cache, row, document) for row in rows]
            if self.backend is not None:
                result = result.model_copy(update={"backend": self.backend})
            whole = dump_result(result, include_text=self.include_context)
            rows[0] = replace(rows[0], result=whole)
            for row in rows:
                for name, value in row.to_dict().items():
                    columns[name].append(list(value) if isinstance(value, tuple) else value)
        return columns

    def _counted(self, cache: _RowCache, row: GateRow, document: Document) -> GateRow:
        """``row`` with the hits and misses of its criterion's lookups for its document."""
        criterion = next(c for c in self.criteria if c.id == row.criterion)
        instruction = (
            criterion.instruction if criterion.instruction is not None else self.gate.instruction
        )
        sent = cache.sent.get((criterion.text, instruction), set())
        texts = [p.text for p in document.pages if not p.is_empty]
        misses = sum(text in sent for text in texts)
        return replace(row, cache_hits=len(texts) - misses, cache_misses=misses)


def _holder() -> tuple[str, bool]:
    """This actor's Ray id (kept across restarts) and whether Ray restarted it.

    Outside an actor (the class called directly): this process's id.
    """
    try:
        import ray

        context = ray.get_runtime_context()
        actor = context.get_actor_id()
        restarted = bool(actor) and bool(context.was_current_actor_reconstructed)
    except Exception:  # not in Ray at all
        actor, restarted = None, False
    return actor or f"process-{os.getpid()}", restarted


def _torch_threads() -> int | None:
    """The threads torch computes with in this process (None: torch not loaded)."""
    torch = sys.modules.get("torch")
    return None if torch is None else int(torch.get_num_threads())


def _ray_get(ref: Any) -> Any:
    import ray

    return ray.get(ref)


_COLUMNS = tuple(GateRow.__dataclass_fields__)


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


def start_limiter() -> Any:
    """A new :class:`~zerank_core.limits.JobLimiter` actor for one job (needs Ray initialised).

    Named ``zerank-limiter-<id>``, on no CPU of its own, restarted by Ray
    like any actor; it lives as long as the driver unless killed.
    """
    ray = _import_ray()
    from zerank_core.limits import JobLimiter

    remote = ray.remote(JobLimiter).options(
        name=f"zerank-limiter-{uuid.uuid4().hex[:12]}",
        num_cpus=0,
        max_restarts=-1,
        max_task_retries=-1,
        max_concurrency=10_000,
    )
    return remote.remote()


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
    limiter: Any = None,
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
    Ray Dataset (nothing runs until it is consumed) whose rows are
    :class:`GateRow` dicts.
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
    if limiter is None:
        limiter = start_limiter()
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
            "limiter": limiter,
            "num_gpus": num_gpus,
        },
        batch_size=documents_per_batch,
        compute=ActorPoolStrategy(size=actors),
        num_gpus=num_gpus or None,
        num_cpus=num_cpus,
    )


@dataclass(frozen=True)
class RayRun:
    """What a job on Ray returned: every row in input order, and how the job went.

    ``actors_built`` counts the actors that built their scorer (loaded a
    model); a fully cached rerun builds none; ``build_seconds`` is the
    longest build and ``threads`` the torch thread counts of those actors.
    ``gating_seconds`` runs from the first batch's start to the last one's
    end on the actors (the job without start-up), ``busy_seconds`` adds up
    the batches' own times. ``requests`` and ``peak_in_flight`` are the
    requests the job limiter admitted for remote scorers and the most it had
    in flight at once (0 for in-process models). ``seconds`` is the whole
    call, start-up included.
    """

    rows: tuple[GateRow, ...]
    actors: int
    actors_built: int
    requests: int
    peak_in_flight: int
    seconds: float
    build_seconds: float = 0.0
    threads: tuple[int, ...] = ()
    batches: int = 0
    busy_seconds: float = 0.0
    gating_seconds: float = 0.0


#: Called with a document's index and its rows (one per criterion) as soon as all are in.
DocumentCallback = Callable[[int, list[GateRow]], None]


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
) -> list[GateRow]:
    """Gate ``documents`` on Ray and return every (document, criterion) row, in input order.

    :func:`run_on_ray` without its report; see there.
    """
    return list(
        run_on_ray(
            documents,
            criteria,
            scorer=scorer,
            address=address,
            policy=policy,
            instruction=instruction,
            actors=actors,
            documents_per_batch=documents_per_batch,
            num_gpus=num_gpus,
            num_cpus=num_cpus,
            include_context=include_context,
            cache=cache,
            duplicate_detector=duplicate_detector,
        ).rows
    )


def run_on_ray(
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
    on_document: DocumentCallback | None = None,
) -> RayRun:
    """Gate ``documents`` on Ray: every (document, criterion) row in input order, and a report.

    Connects to the cluster at ``address`` (``"auto"``, ``ray://head:10001``;
    ``None``: Ray's default, ``RAY_ADDRESS`` or a new local instance) unless
    Ray is already initialised, then runs :func:`gate_dataset` (``cache`` and
    ``duplicate_detector`` as there) with a job limiter of its own, so a
    remote scorer's limits hold for the whole job. ``on_document`` is called
    in this process with each document's rows as soon as all of them are in
    (to write results as they finish). Checks that every document ×
    criterion came back exactly once.
    """
    ray = _import_ray()
    documents = list(documents)
    criteria = list(criteria)
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False)
    start = time.perf_counter()
    limiter = start_limiter()
    try:
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
            limiter=limiter,
        )
        order = {c.id: n for n, c in enumerate(criteria)}
        rows: list[GateRow] = []
        pending: dict[int, list[GateRow]] = {}
        try:
            for record in dataset.iter_rows():
                row = GateRow.from_record(record)
                rows.append(row)
                if on_document is None:
                    continue
                have = pending.setdefault(row.index, [])
                have.append(row)
                if len(have) == len(criteria):
                    del pending[row.index]
                    on_document(row.index, sorted(have, key=lambda r: order[r.criterion]))
        except ray.exceptions.ActorDiedError as exc:
            raise _creation_error(exc) from exc
        except Exception as exc:
            error = package_error(exc)
            if error is None:
                raise
            raise error from None
        report = ray.get(limiter.report.remote())
    finally:
        ray.kill(limiter)
    seconds = time.perf_counter() - start
    rows.sort(key=lambda r: (r.index, order[r.criterion]))
    found = [(r.index, r.criterion) for r in rows]
    expected = [(i, c.id) for i in range(len(documents)) for c in criteria]
    if found != expected:
        missing = sorted(set(expected) - set(found))[:5]
        raise InvalidResponseError(
            f"Ray returned {len(found)} rows for {len(expected)} document × criterion pairs "
            f"(missing, first five: {missing})",
            batch=0,
            batch_size=len(expected),
        )
    return RayRun(
        rows=tuple(rows),
        actors=actors,
        actors_built=int(report["actors_built"]),
        requests=int(report["requests"]),
        peak_in_flight=int(report["peak_in_flight"]),
        seconds=seconds,
        build_seconds=float(report["build_seconds"]),
        threads=tuple(report["threads"]),
        batches=int(report["batches"]),
        busy_seconds=float(report["busy_seconds"]),
        gating_seconds=float(report["gating_seconds"]),
    )
