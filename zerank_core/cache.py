"""A persistent score cache, so rerunning a long document costs no model calls.

:class:`CachedScorer` wraps any scorer and stores each score in SQLite under
a SHA-256 key of (scorer identity, scale, instruction, query, text). The
identity is the scorer's ``cache_identity``: backend kind, model, deployment
(URL without credentials), the server's scale and conversion settings and the
instruction convention, so a score is only ever reused by the setup that
produced it. Only the key and the number are written: no document or query
text, and no credential, ever reaches the file. WAL
mode and a busy timeout make one file safe to share between threads and
processes. The library never caches unless asked; the command line does by
default (:func:`default_cache_path`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zerank_core.errors import ConfigurationError
from zerank_core.scorers.base import (
    BatchCallback,
    Scale,
    ScoreItem,
    Scorer,
    Usage,
    ascore_many,
    check_query,
    check_scores,
    check_texts,
    rebuild,
    require_scorer,
    score_many,
)

__all__ = [
    "CacheInfo",
    "CacheStats",
    "CachedScorer",
    "ScoreStore",
    "default_cache_path",
    "score_key",
]

CACHE_ENV = "ZERANK_CACHE"
# SQLite allows 32766 host parameters; stay far below for old builds (999).
_LOOKUP_CHUNK = 500


def default_cache_path() -> Path:
    """``$ZERANK_CACHE``, else ``$XDG_CACHE_HOME/zerank-gate/scores.sqlite3``.

    ``XDG_CACHE_HOME`` defaults to ``~/.cache``.
    """
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "zerank-gate" / "scores.sqlite3"


#: Bumped when the key's layout changes; entries written under another are never read.
KEY_VERSION = 2


def score_key(
    identity: str, scale: str, instruction: str | None, query: str, text: str, context: str = ""
) -> bytes:
    """The cache key of one score: SHA-256 over its inputs, unambiguously framed.

    ``identity`` says where the score comes from (see
    :attr:`CachedScorer.identity`). ``context`` is empty for scorers whose
    score depends on the pair alone; for the others it is a digest of the
    whole call (see :class:`CachedScorer`).
    """
    framed = json.dumps(
        [KEY_VERSION, identity, scale, instruction, query, text, context], ensure_ascii=False
    )
    return hashlib.sha256(framed.encode("utf-8")).digest()


@dataclass(frozen=True)
class CacheStats:
    """Lookups answered from the cache (``hits``) and sent to the scorer (``misses``)."""

    hits: int = 0
    misses: int = 0

    def __sub__(self, other: CacheStats) -> CacheStats:
        return CacheStats(hits=self.hits - other.hits, misses=self.misses - other.misses)


@dataclass(frozen=True)
class CacheInfo:
    """What is in a cache file: its path, number of scores and size on disk."""

    path: Path
    entries: int
    size_bytes: int


class ScoreStore:
    """The SQLite file behind :class:`CachedScorer`: keys to scores, nothing else.

    Usable on its own to inspect or clear a cache (``zerank cache info``).
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 30.0) -> None:
        self.path = Path(path).expanduser()
        self.timeout = timeout
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.path, timeout=timeout, check_same_thread=False, isolation_level=None
            )
            self._set_up(time.monotonic() + timeout)
        except (OSError, sqlite3.DatabaseError) as exc:
            raise ConfigurationError(f"cannot use {self.path} as a score cache: {exc}") from exc

    def _set_up(self, deadline: float) -> None:
        """WAL mode and the table, retried while another process is creating the same file.

        Switching to WAL needs an exclusive lock, and SQLite answers "database
        is locked" at once, without waiting out the busy timeout, when another
        connection holds a write lock on a file still in rollback mode: several
        processes (Ray actors, parallel runs) opening a new cache together.
        """
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS scores (key BLOB PRIMARY KEY, "
                    "score REAL NOT NULL, created REAL NOT NULL) WITHOUT ROWID"
                )
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)

    def __repr__(self) -> str:
        return f"ScoreStore({str(self.path)!r})"

    def lookup(self, keys: Sequence[bytes]) -> dict[bytes, float]:
        """The stored scores of those ``keys`` that are present."""
        unique = list(dict.fromkeys(keys))
        found: dict[bytes, float] = {}
        with self._lock:
            for start in range(0, len(unique), _LOOKUP_CHUNK):
                chunk = unique[start : start + _LOOKUP_CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT key, score FROM scores WHERE key IN ({marks})", chunk
                )
                found.update((bytes(k), float(s)) for k, s in rows)
        return found

    def store(self, pairs: Sequence[tuple[bytes, float]]) -> None:
        """Write ``(key, score)`` pairs in one transaction."""
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT OR REPLACE INTO scores (key, score, created) VALUES (?, ?, ?)",
                    [(k, s, now) for k, s in pairs],
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def info(self) -> CacheInfo:
        """Number of stored scores and the file's size."""
        with self._lock:
            (entries,) = self._db.execute("SELECT COUNT(*) FROM scores").fetchone()
        size = sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists())
        return CacheInfo(path=self.path, entries=int(entries), size_bytes=size)

    def clear(self) -> int:
        """Delete every stored score (of every model); return how many there were."""
        with self._lock:
            cursor = self._db.execute("DELETE FROM scores")
            removed = int(cursor.rowcount)
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.execute("VACUUM")
            return removed

    def close(self) -> None:
        with self._lock:
            self._db.close()


# One item's cache keys, the scores found for them, and the keys to score.
_ItemPlan = tuple[list[bytes], dict[bytes, float], list[bytes]]


class CachedScorer:
    """A :class:`~zerank_core.scorers.base.Scorer` that remembers scores on disk.

    ``scorer`` does the work on a miss; misses of one call go to it in one
    call, so its own batching and concurrency still apply.

    The key names where a score came from (:attr:`identity`): the scorer's
    ``cache_identity`` when it has one, as every scorer of this package does
    (backend kind, model, deployment URL without credentials, the server's
    scale and extra request fields, the instruction convention). A scorer of
    your own without ``cache_identity`` is keyed by its ``model`` (or the
    ``model`` argument) alone: give it a ``cache_identity`` property, or a
    distinct ``model`` per configuration, or changing its settings will serve
    scores computed under the old ones. ``model``, when passed, is added to
    the key.

    ``pairwise`` says whether a score depends on the (query, text) pair alone,
    as zerank's does (default: the scorer's own ``pairwise`` attribute, else
    true unless its scale is uncalibrated). The lexical baseline's does not
    (IDF and max scaling come from the whole call, also under a calibrator),
    so such scorers are keyed also by
    a digest of the call's full text list and rescored whole on any miss: a
    rerun of the same call hits, a different page set never gets scores
    computed against another corpus.
    """

    def __init__(
        self,
        scorer: Scorer,
        path: str | os.PathLike[str],
        *,
        model: str | None = None,
        pairwise: bool | None = None,
        timeout: float = 30.0,
    ) -> None:
        scorer = require_scorer(scorer)
        explicit = model
        model = model or scorer.model
        if not isinstance(model, str) or not model:
            raise ConfigurationError(f"model must be a non-empty str, got {model!r}")
        identity = getattr(scorer, "cache_identity", None)
        if not isinstance(identity, str) or not identity:
            identity = json.dumps({"model": model})
        elif explicit:
            identity = json.dumps({"scorer": identity, "model": explicit})
        self.scorer = scorer
        self.model = model
        self._explicit_model = explicit
        #: What the cache key says about where a score came from.
        self.identity = identity
        self.scale = scorer.scale
        if pairwise is None:
            declared = getattr(scorer, "pairwise", None)
            pairwise = (
                declared if isinstance(declared, bool) else self.scale is not Scale.UNCALIBRATED
            )
        self.pairwise = pairwise
        self.store = ScoreStore(path, timeout=timeout)
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0

    def __repr__(self) -> str:
        return f"CachedScorer({self.scorer!r}, path={str(self.path)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # The database connection stays behind; the copy opens the same file.
        settings = {
            "scorer": self.scorer,
            "path": self.path,
            "model": self._explicit_model,
            "pairwise": self.pairwise,
            "timeout": self.store.timeout,
        }
        return (rebuild, (type(self), settings))

    @property
    def path(self) -> Path:
        return self.store.path

    @property
    def cache_identity(self) -> str:
        """The wrapped scorer's identity, so caches and wrappers can stack."""
        return self.identity

    @property
    def usage(self) -> Usage | None:
        """The wrapped scorer's usage: what the misses cost (None: it does not count)."""
        return self.scorer.usage

    @property
    def stats(self) -> CacheStats:
        """Hits and misses since this wrapper was created."""
        with self._lock:
            return CacheStats(hits=self._hits, misses=self._misses)

    def info(self) -> CacheInfo:
        """Number of stored scores and the file's size."""
        return self.store.info()

    def clear(self) -> int:
        """Delete every stored score in the file; return how many there were."""
        return self.store.clear()

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> CachedScorer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _keys(self, query: str, texts: list[str], instruction: str | None) -> list[bytes]:
        context = ""
        if not self.pairwise:
            framed = json.dumps(texts, ensure_ascii=False).encode("utf-8")
            context = hashlib.sha256(framed).hexdigest()
        return [
            score_key(self.identity, self.scale.value, instruction, query, text, context)
            for text in texts
        ]

    def _plan(
        self, query: str, texts: Sequence[str], instruction: str | None
    ) -> tuple[list[bytes], dict[bytes, float], list[bytes], list[str]]:
        query = check_query(query)
        checked = check_texts(texts)
        keys = self._keys(query, checked, instruction)
        found = self.store.lookup(keys)
        if not self.pairwise:
            # The scores depend on the whole call: any miss means rescoring all of it.
            if len(found) == len(set(keys)):
                return keys, found, [], []
            return keys, {}, keys, checked
        missing: dict[bytes, str] = {}
        for key, text in zip(keys, checked, strict=True):
            if key not in found:
                missing.setdefault(key, text)
        return keys, found, list(missing), list(missing.values())

    def _store_batch(
        self, missing_keys: list[bytes], indices: Sequence[int], fresh: Sequence[float]
    ) -> None:
        """Store one completed request's scores now, so a later failure loses nothing."""
        checked = check_scores(fresh, len(indices), context=f"scorer {self.model!r}")
        new = [(missing_keys[index], value) for index, value in zip(indices, checked, strict=True)]
        if new:
            self.store.store(new)

    def _merge(
        self,
        keys: list[bytes],
        found: dict[bytes, float],
        missing_keys: list[bytes],
        fresh: Sequence[float],
    ) -> list[float]:
        checked = check_scores(fresh, len(missing_keys), context=f"scorer {self.model!r}")
        scores = dict(found)
        scores.update(zip(missing_keys, checked, strict=True))
        with self._lock:
            self._misses += len(missing_keys)
            self._hits += max(len(keys) - len(missing_keys), 0)
        return [scores[key] for key in keys]

    def _plan_job(
        self, items: Sequence[ScoreItem | tuple[Any, ...]]
    ) -> tuple[list[_ItemPlan], list[ScoreItem]]:
        plans: list[_ItemPlan] = []
        misses: list[ScoreItem] = []
        for raw in items:
            item = raw if isinstance(raw, ScoreItem) else ScoreItem(*raw)
            keys, found, missing_keys, missing_texts = self._plan(
                item.query, item.texts, item.instruction
            )
            plans.append((keys, found, missing_keys))
            misses.append(ScoreItem(item.query, missing_texts, item.instruction))
        return plans, misses

    @staticmethod
    def _report_hits(plans: list[_ItemPlan], on_batch: BatchCallback | None) -> None:
        if on_batch is None:
            return
        for position, (keys, found, _) in enumerate(plans):
            hits = [i for i, key in enumerate(keys) if key in found]
            if hits:
                on_batch(position, hits, [found[keys[i]] for i in hits])

    def _callback(
        self, plans: list[_ItemPlan], sent: list[int], on_batch: BatchCallback | None
    ) -> BatchCallback:
        """Store each completed request, then report it in the caller's indices."""
        where: dict[int, dict[bytes, list[int]]] = {}
        if on_batch is not None:
            for position in sent:
                places: dict[bytes, list[int]] = {}
                for index, key in enumerate(plans[position][0]):
                    places.setdefault(key, []).append(index)
                where[position] = places

        def callback(item: int, indices: Sequence[int], fresh: Sequence[float]) -> None:
            position = sent[item]
            missing_keys = plans[position][2]
            self._store_batch(missing_keys, indices, fresh)
            if on_batch is not None:
                places = where[position]
                out_indices: list[int] = []
                out_scores: list[float] = []
                for index, value in zip(indices, fresh, strict=True):
                    for original in places[missing_keys[index]]:
                        out_indices.append(original)
                        out_scores.append(float(value))
                on_batch(position, out_indices, out_scores)

        return callback

    def score_many(
        self,
        items: Sequence[ScoreItem | tuple[Any, ...]],
        *,
        on_batch: BatchCallback | None = None,
    ) -> list[list[float]]:
        """Score a job of several queries: hits from the cache, misses as one job.

        The misses of every item go to the wrapped scorer as one job (so a
        remote scorer plans them together) and each completed request is
        stored at once: if the job fails or is interrupted, what was scored is
        kept and a rerun sends only the rest. ``on_batch`` sees the hits first,
        then each request of misses as it completes, in the caller's indices.
        """
        plans, misses = self._plan_job(items)
        self._report_hits(plans, on_batch)
        sent = [i for i, m in enumerate(misses) if m.texts]
        fresh_by_item: dict[int, list[float]] = {}
        if sent:
            fresh = score_many(
                self.scorer,
                [misses[i] for i in sent],
                on_batch=self._callback(plans, sent, on_batch),
            )
            fresh_by_item = dict(zip(sent, fresh, strict=True))
        return self._finish_job(plans, fresh_by_item)

    async def ascore_many(
        self,
        items: Sequence[ScoreItem | tuple[Any, ...]],
        *,
        on_batch: BatchCallback | None = None,
    ) -> list[list[float]]:
        """Async :meth:`score_many`; cache lookups run in a worker thread."""
        plans, misses = await asyncio.to_thread(self._plan_job, items)
        self._report_hits(plans, on_batch)
        sent = [i for i, m in enumerate(misses) if m.texts]
        fresh_by_item: dict[int, list[float]] = {}
        if sent:
            fresh = await ascore_many(
                self.scorer,
                [misses[i] for i in sent],
                on_batch=self._callback(plans, sent, on_batch),
            )
            fresh_by_item = dict(zip(sent, fresh, strict=True))
        return self._finish_job(plans, fresh_by_item)

    def _finish_job(
        self, plans: list[_ItemPlan], fresh_by_item: dict[int, list[float]]
    ) -> list[list[float]]:
        return [
            self._merge(keys, found, missing_keys, fresh_by_item.get(position, []))
            for position, (keys, found, missing_keys) in enumerate(plans)
        ]

    def score(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        """Scores from the cache where stored; the rest from the scorer, stored as they come."""
        return self.score_many([ScoreItem(query, texts, instruction)])[0]

    async def ascore(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        """Async :meth:`score`; the database work runs in a worker thread."""
        return (await self.ascore_many([ScoreItem(query, texts, instruction)]))[0]
