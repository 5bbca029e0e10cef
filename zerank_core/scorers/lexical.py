"""Offline lexical baseline: BM25 through ``bm25s``. Not calibrated.

Each call indexes the texts it is given (they are the corpus, so IDF comes
from them) and scores the query against them. Raw BM25 scores are unbounded;
this scorer divides them by the call's highest score, so the best text gets
1.0, texts sharing no term get 0.0, and the numbers order texts but are *not*
probabilities: their scale is :attr:`Scale.UNCALIBRATED`. Wrap it in a fitted
calibrator (``zerank_core.calibrate``) before using a threshold on purpose.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from zerank_core.errors import MissingDependencyError
from zerank_core.scorers.base import (
    Scale,
    Usage,
    UsageMeter,
    check_query,
    check_texts,
    fingerprint,
    rebuild,
)

__all__ = ["BM25Scorer"]


class BM25Scorer:
    """BM25 (Lucene variant, ``k1``/``b`` as usual) with per-call max scaling.

    ``normalize=False`` returns raw BM25 scores instead (not in [0, 1]); use it
    when fitting a calibrator that should see the unscaled statistic.
    Instructions are ignored: a bag-of-words model cannot follow them.
    """

    model = "bm25"
    #: A score depends on the whole call (IDF, max scaling), not on the pair alone:
    #: caches key it by the call's texts, and the label classifier gives each input
    #: a call of its own (against the label descriptions), so that batching never
    #: changes an input's scores.
    pairwise = False

    def __init__(
        self,
        *,
        k1: float = 1.5,
        b: float = 0.75,
        stopwords: str | None = "en",
        normalize: bool = True,
    ) -> None:
        try:
            import bm25s  # noqa: F401
        except ImportError as exc:  # pragma: no cover - bm25s is a core dependency
            raise MissingDependencyError("bm25s", "all") from exc
        self.k1 = k1
        self.b = b
        self.stopwords = stopwords
        self.normalize = normalize
        self._meter = UsageMeter()

    @property
    def scale(self) -> Scale:
        return Scale.UNCALIBRATED

    @property
    def usage(self) -> Usage:
        return self._meter.usage

    @property
    def cache_identity(self) -> str:
        """The settings that change BM25's scores (instructions are ignored)."""
        return fingerprint(
            "lexical", k1=self.k1, b=self.b, stopwords=self.stopwords, normalize=self.normalize
        )

    def __reduce__(self) -> tuple[Any, ...]:
        settings = {"k1": self.k1, "b": self.b, "stopwords": self.stopwords}
        return (rebuild, (type(self), {**settings, "normalize": self.normalize}))

    def __repr__(self) -> str:
        return f"BM25Scorer(k1={self.k1}, b={self.b}, normalize={self.normalize})"

    def raw_scores(self, query: str, texts: Sequence[str]) -> list[float]:
        """Unscaled BM25 scores of ``texts`` for ``query``."""
        import bm25s

        query = check_query(query)
        texts = check_texts(texts)
        if not texts:
            return []
        # bm25s logs a progress line per call at INFO level; keep it quiet.
        logging.getLogger("bm25s").setLevel(logging.WARNING)
        corpus = bm25s.tokenize(
            texts, stopwords=self.stopwords, return_ids=False, show_progress=False
        )
        retriever = bm25s.BM25(k1=self.k1, b=self.b)
        # An empty token list would make bm25s fail; a sentinel keeps the row.
        retriever.index([doc or [""] for doc in corpus], show_progress=False)
        query_tokens = bm25s.tokenize(
            [query], stopwords=self.stopwords, return_ids=False, show_progress=False
        )[0]
        self._meter.add(texts=len(texts))
        if not query_tokens:
            return [0.0] * len(texts)
        return [float(v) for v in retriever.get_scores(query_tokens)]

    def score(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        """Scores in [0, 1], best text 1.0 (``normalize=False``: raw BM25)."""
        raw = self.raw_scores(query, texts)
        if not self.normalize or not raw:
            return raw
        top = max(raw)
        return [v / top if top > 0 else 0.0 for v in raw]

    async def ascore(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        """Async :meth:`score`, run in a worker thread."""
        return await asyncio.to_thread(self.score, query, texts, instruction=instruction)
