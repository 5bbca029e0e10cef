"""Find near-duplicate items, so that a selection keeps one of each.

Detection and selection are separate: a detector reads the texts and returns
a :class:`Duplicates` relation (which items duplicate which, and how similar
they are); :meth:`zerank_core.select.SelectionPolicy.select` with
``dedupe=True`` consumes it and stays a pure function of scores, lengths and
that relation.

Two detectors:

- :class:`LexicalDetector` (the default): items whose normalised text is
  identical are exact duplicates; the others are compared as sets of word
  shingles, with MinHash signatures and locality-sensitive hashing
  (``datasketch``) proposing candidate pairs, so thousands of items cost
  near-linear time, and each candidate's exact Jaccard similarity deciding.
- :class:`ModelDetector`: asks a calibrated scorer, item against item (item A
  as the query, item B as the document), whether two items hold the same
  content, but only for the pairs the lexical pass flags at a lower threshold
  or whose relevance scores are close.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import unicodedata
import zlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal, Protocol

from zerank_core.errors import ConfigurationError, InvalidResponseError, MissingDependencyError

if TYPE_CHECKING:
    from zerank_core.scorers.base import Scorer

__all__ = [
    "DEFAULT_DUPLICATE_INSTRUCTION",
    "DuplicateDetector",
    "DuplicatePair",
    "Duplicates",
    "LexicalDetector",
    "ModelDetector",
    "afind_duplicates",
    "find_duplicates",
]

Method = Literal["exact", "lexical", "model"]

#: Appended to item A (the query) when the model detector compares two items.
DEFAULT_DUPLICATE_INSTRUCTION = (
    "The query is itself a page or passage. Judge whether the document holds the same "
    "content (a copy, a re-send, or a version differing only in headers, formatting or "
    "a few words), not merely the same topic."
)


@dataclass(frozen=True)
class DuplicatePair:
    """Items ``first`` and ``second`` (``first < second``) hold the same content.

    ``similarity`` is in [0, 1]: 1.0 for an exact duplicate, the word-shingle
    Jaccard similarity for a lexical one, the scorer's probability for a
    model one. ``method`` says which of the three decided.
    """

    first: int
    second: int
    similarity: float
    method: Method

    def other(self, index: int) -> int:
        """The item this pair links ``index`` to."""
        return self.second if index == self.first else self.first


@dataclass(frozen=True)
class Duplicates:
    """A duplicate relation over ``size`` items: an undirected set of pairs.

    It is not transitive: A ~ B and B ~ C do not make A ~ C (near-duplicates
    of a near-duplicate can drift apart), and selection only drops an item
    that is itself linked to a kept one.
    """

    size: int
    pairs: tuple[DuplicatePair, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise ConfigurationError(f"size must be an integer >= 0, got {self.size!r}")
        seen: set[tuple[int, int]] = set()
        for pair in self.pairs:
            if not 0 <= pair.first < pair.second < self.size:
                raise ConfigurationError(
                    f"duplicate pair ({pair.first}, {pair.second}) must satisfy "
                    f"0 <= first < second < {self.size}"
                )
            if not (math.isfinite(pair.similarity) and 0.0 <= pair.similarity <= 1.0):
                raise ConfigurationError(
                    f"similarity of pair ({pair.first}, {pair.second}) must be in [0, 1], "
                    f"got {pair.similarity!r}"
                )
            key = (pair.first, pair.second)
            if key in seen:
                raise ConfigurationError(f"duplicate pair {key} appears twice")
            seen.add(key)

    @cached_property
    def by_item(self) -> Mapping[int, tuple[DuplicatePair, ...]]:
        """Each item's pairs (items without a duplicate are absent)."""
        links: dict[int, list[DuplicatePair]] = defaultdict(list)
        for pair in self.pairs:
            links[pair.first].append(pair)
            links[pair.second].append(pair)
        return {index: tuple(pairs) for index, pairs in links.items()}

    def __len__(self) -> int:
        return len(self.pairs)


class DuplicateDetector(Protocol):
    """Anything that turns texts into a :class:`Duplicates` relation.

    ``score_columns`` are relevance scores of the same texts (one list per
    query); a detector may use them to choose which pairs to examine.
    """

    def find(
        self, texts: Sequence[str], *, score_columns: Sequence[Sequence[float]] = ()
    ) -> Duplicates: ...

    async def afind(
        self, texts: Sequence[str], *, score_columns: Sequence[Sequence[float]] = ()
    ) -> Duplicates: ...


_WORD = re.compile(r"\w+")


def normalized_words(text: str) -> list[str]:
    """The words of ``text``, Unicode-normalised (NFKC) and case-folded.

    Whitespace, punctuation and case differences disappear, so a re-typed or
    re-wrapped copy normalises to the same words.
    """
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def shingles(words: Sequence[str], size: int) -> set[str]:
    """The set of ``size``-word shingles; a shorter text is one shingle of all its words."""
    if not words:
        return set()
    if len(words) <= size:
        return {" ".join(words)}
    return {" ".join(words[i : i + size]) for i in range(len(words) - size + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    """``|a ∩ b| / |a ∪ b|`` (0.0 for two empty sets)."""
    if not a and not b:
        return 0.0
    common = len(a & b)
    return common / (len(a) + len(b) - common)


@dataclass(frozen=True)
class LexicalDetector:
    """Exact duplicates by normalised hash, near-duplicates by shingle Jaccard.

    Two items are duplicates when their normalised words are identical
    (similarity 1.0, ``"exact"``) or when the Jaccard similarity of their
    ``shingle_size``-word shingle sets is at least ``threshold``
    (``"lexical"``). MinHash LSH (``num_perm`` permutations, tuned for a
    lower threshold so that it rarely misses a pair) proposes the candidate
    pairs; each is then checked with the exact Jaccard similarity, so a
    reported pair is never an LSH false positive. Needs ``datasketch``
    (``pip install 'zerank-gate[dedupe]'``).

    The default threshold of 0.7 catches a page re-sent under a different fax
    header line; template pages that share a header but not their content
    (two lab reports of one laboratory) stay far below it.
    """

    threshold: float = 0.7
    shingle_size: int = 3
    num_perm: int = 128
    seed: int = 1

    def __post_init__(self) -> None:
        _check_probability("threshold", self.threshold, low_open=True)
        for name, low in (("shingle_size", 1), ("num_perm", 16)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigurationError(f"{name} must be an integer >= {low}, got {value!r}")

    def find(
        self, texts: Sequence[str], *, score_columns: Sequence[Sequence[float]] = ()
    ) -> Duplicates:
        """The duplicate pairs among ``texts`` (``score_columns`` is not used)."""
        texts = _check_texts(texts)
        return Duplicates(len(texts), tuple(self._pairs(texts)))

    async def afind(
        self, texts: Sequence[str], *, score_columns: Sequence[Sequence[float]] = ()
    ) -> Duplicates:
        """:meth:`find` in a worker thread: it is CPU work that would block the event loop."""
        return await asyncio.to_thread(self.find, texts)

    def _pairs(self, texts: list[str]) -> list[DuplicatePair]:
        groups: dict[str, list[int]] = defaultdict(list)
        words_of: dict[int, list[str]] = {}
        for index, text in enumerate(texts):
            words = normalized_words(text)
            key = hashlib.sha256(" ".join(words).encode("utf-8")).hexdigest()
            if key not in groups:
                words_of[index] = words
            groups[key].append(index)

        pairs: dict[tuple[int, int], DuplicatePair] = {}
        for members in groups.values():
            for a_pos, a in enumerate(members):
                for b in members[a_pos + 1 :]:
                    pairs[(a, b)] = DuplicatePair(a, b, 1.0, "exact")

        # One representative per exact group goes through LSH; its near pairs
        # hold for every member of both groups.
        representatives = [members[0] for members in groups.values()]
        group_of = {members[0]: members for members in groups.values()}
        sets = {r: shingles(words_of[r], self.shingle_size) for r in representatives}
        for a, b in self._candidates(sets):
            similarity = jaccard(sets[a], sets[b])
            if similarity < self.threshold:
                continue
            for x in group_of[a]:
                for y in group_of[b]:
                    low, high = min(x, y), max(x, y)
                    pairs[(low, high)] = DuplicatePair(low, high, similarity, "lexical")
        return [pairs[key] for key in sorted(pairs)]

    def _candidates(self, sets: Mapping[int, set[str]]) -> set[tuple[int, int]]:
        try:
            from datasketch import MinHash, MinHashLSH
        except ImportError as exc:
            raise MissingDependencyError("datasketch", "dedupe") from exc

        keyed = [(index, shingle_set) for index, shingle_set in sets.items() if shingle_set]
        if len(keyed) < 2:
            return set()
        # CRC-32 in C instead of datasketch's per-shingle SHA-1 in Python: the
        # signature only needs a deterministic, well-spread 32-bit value, and
        # this is most of the pass's time.
        signatures = MinHash.bulk(
            [[zlib.crc32(s.encode("utf-8")) for s in shingle_set] for _, shingle_set in keyed],
            num_perm=self.num_perm,
            seed=self.seed,
            hashfunc=int,
        )
        # LSH tuned below the threshold: candidates are verified exactly
        # afterwards, so extra candidates cost a set comparison each while a
        # missed one is a duplicate kept.
        lsh = MinHashLSH(threshold=max(0.05, self.threshold * 0.75), num_perm=self.num_perm)
        with lsh.insertion_session() as session:
            for (index, _), signature in zip(keyed, signatures, strict=True):
                session.insert(index, signature, check_duplication=False)
        candidates: set[tuple[int, int]] = set()
        for (index, _), signature in zip(keyed, signatures, strict=True):
            for other in lsh.query(signature):
                if other != index:
                    candidates.add((min(index, other), max(index, other)))
        return candidates


@dataclass
class ModelDetector:
    """Near-duplicates confirmed by a calibrated scorer, item against item.

    Pairs to ask about: those ``lexical`` flags (its threshold is deliberately
    low, 0.4 by default: the model decides) and, for each list in
    ``score_columns``, the items whose relevance scores differ by at most
    ``score_gap`` (at most ``max_close`` following items each, in score
    order). Exact duplicates are reported without asking, and a group of
    exact copies is asked about once. For each pair the shorter item is the
    query (with ``instruction`` appended by zerank's convention) and the
    other the document; a probability of at least
    ``threshold`` makes them duplicates (``"model"``, similarity = that
    probability). Items are grouped by query so that each item costs one
    scorer call over all its partners, ``max_concurrency`` at a time.

    The scorer must return calibrated probabilities: an uncalibrated one
    (BM25) is refused, since its best partner always scores 1.0.
    """

    scorer: Scorer
    threshold: float = 0.8
    lexical: LexicalDetector = field(default_factory=lambda: LexicalDetector(threshold=0.4))
    score_gap: float = 0.02
    max_close: int = 3
    instruction: str | None = DEFAULT_DUPLICATE_INSTRUCTION
    max_concurrency: int = 4

    def __post_init__(self) -> None:
        from zerank_core.scorers.base import Scale, require_scorer

        require_scorer(self.scorer)
        _check_probability("threshold", self.threshold, low_open=True)
        _check_probability("score_gap", self.score_gap, low_open=False)
        if not isinstance(self.lexical, LexicalDetector):
            raise ConfigurationError(
                f"lexical must be a LexicalDetector, got {type(self.lexical).__name__}"
            )
        for name in ("max_close", "max_concurrency"):
            value = getattr(self, name)
            low = 1 if name == "max_concurrency" else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigurationError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.scorer.scale is Scale.UNCALIBRATED:
            raise ConfigurationError(
                f"the model duplicate detector needs calibrated probabilities; "
                f"{type(self.scorer).__name__} returns uncalibrated scores"
            )

    def find(
        self, texts: Sequence[str], *, score_columns: Sequence[Sequence[float]] = ()
    ) -> Duplicates:
        """The duplicate pairs among ``texts``, each non-exact one confirmed by the scorer."""
        texts = _check_texts(texts)
        plan = self._plan(texts, score_columns)
        found = list(plan.exact)
        for query, others in plan.queries.items():
            scores = self.scorer.score(
                texts[query], [texts[o] for o in others], instruction=self.instruction
            )
            found.extend(self._confirmed(plan, query, others, scores))
        return Duplicates(len(texts), tuple(sorted(found, key=lambda p: (p.first, p.second))))

    async def afind(
        self, texts: Sequence[str], *, score_columns: Sequence[Sequence[float]] = ()
    ) -> Duplicates:
        """Async :meth:`find`, through the scorer's ``ascore``."""
        texts = _check_texts(texts)
        plan = await asyncio.to_thread(self._plan, texts, score_columns)
        semaphore = asyncio.Semaphore(self.max_concurrency)

        async def ask(query: int, others: list[int]) -> list[DuplicatePair]:
            async with semaphore:
                scores = await self.scorer.ascore(
                    texts[query], [texts[o] for o in others], instruction=self.instruction
                )
            return self._confirmed(plan, query, others, scores)

        answers = await asyncio.gather(*(ask(q, o) for q, o in plan.queries.items()))
        found = list(plan.exact) + [pair for answer in answers for pair in answer]
        return Duplicates(len(texts), tuple(sorted(found, key=lambda p: (p.first, p.second))))

    def _plan(self, texts: list[str], score_columns: Sequence[Sequence[float]]) -> _Plan:
        lexical = self.lexical.find(texts)
        exact = [p for p in lexical.pairs if p.method == "exact"]
        # Exact copies are asked about once, through their first member.
        representative = list(range(len(texts)))
        for pair in exact:
            representative[pair.second] = min(representative[pair.second], pair.first)
        members: dict[int, list[int]] = defaultdict(list)
        for index, rep in enumerate(representative):
            members[rep].append(index)
        asked = {(p.first, p.second) for p in lexical.pairs if p.method != "exact"}
        for column in score_columns:
            asked |= close_pairs(column, len(texts), self.score_gap, self.max_close)
        # A blank text has no content to compare (and is no valid query);
        # blank copies are already exact duplicates of each other.
        pairs = {
            (min(ra, rb), max(ra, rb))
            for ra, rb in ((representative[a], representative[b]) for a, b in asked)
            if ra != rb and texts[ra].strip() and texts[rb].strip()
        }
        # The shorter text is the query: a copy with an added header contains
        # the shorter one, which is what "same content" asks of the document.
        queries: dict[int, list[int]] = defaultdict(list)
        for a, b in sorted(pairs):
            query, document = sorted((a, b), key=lambda i: (len(texts[i]), i))
            queries[query].append(document)
        return _Plan(exact, dict(queries), dict(members))

    def _confirmed(
        self, plan: _Plan, query: int, others: list[int], scores: list[float]
    ) -> list[DuplicatePair]:
        if len(scores) != len(others):
            raise InvalidResponseError(
                f"scorer returned {len(scores)} scores for {len(others)} items",
                batch=0,
                batch_size=len(others),
            )
        found = []
        for other, value in zip(others, scores, strict=True):
            if isinstance(value, bool) or not isinstance(value, int | float):
                bad = True
            else:
                bad = not (math.isfinite(value) and 0.0 <= value <= 1.0)
            if bad:
                raise InvalidResponseError(
                    f"scorer returned {value!r} for items ({query}, {other}); "
                    "expected a probability",
                    batch=0,
                    batch_size=len(others),
                )
            if value >= self.threshold:
                for x in plan.members[query]:
                    for y in plan.members[other]:
                        found.append(DuplicatePair(min(x, y), max(x, y), float(value), "model"))
        return found


@dataclass(frozen=True)
class _Plan:
    exact: list[DuplicatePair]
    queries: dict[int, list[int]]  # query item -> the items asked against it
    members: dict[int, list[int]]  # representative -> its exact copies, itself included


def find_duplicates(
    dedupe: bool,
    detector: DuplicateDetector | None,
    texts: Sequence[str],
    scores: Sequence[float],
) -> Duplicates | None:
    """The relation a policy with ``dedupe`` needs (``None`` without it).

    ``detector`` defaults to :class:`LexicalDetector`; ``scores`` are the
    items' relevance scores (a model detector also asks about close ones).
    This is what the adapters call between scoring and selection.
    """
    if not dedupe:
        return None
    return _detector(detector).find(texts, score_columns=[scores])


async def afind_duplicates(
    dedupe: bool,
    detector: DuplicateDetector | None,
    texts: Sequence[str],
    scores: Sequence[float],
) -> Duplicates | None:
    """Async :func:`find_duplicates`."""
    if not dedupe:
        return None
    return await _detector(detector).afind(texts, score_columns=[scores])


def _detector(detector: DuplicateDetector | None) -> DuplicateDetector:
    if detector is None:
        return LexicalDetector()
    if not callable(getattr(detector, "find", None)) or not callable(
        getattr(detector, "afind", None)
    ):
        raise ConfigurationError(
            "duplicate_detector must have find() and afind() (a LexicalDetector or "
            f"ModelDetector), got {type(detector).__name__}"
        )
    return detector


def close_pairs(
    scores: Sequence[float], n: int, gap: float, max_close: int
) -> set[tuple[int, int]]:
    """Pairs of items whose scores differ by at most ``gap`` (``max_close`` per item)."""
    if len(scores) != n:
        raise ConfigurationError(f"a score column has {len(scores)} entries for {n} texts")
    order = sorted(range(n), key=lambda i: (-scores[i], i))
    pairs: set[tuple[int, int]] = set()
    for position, a in enumerate(order):
        for b in order[position + 1 : position + 1 + max_close]:
            if scores[a] - scores[b] > gap:
                break
            pairs.add((min(a, b), max(a, b)))
    return pairs


def _check_texts(texts: Iterable[Any]) -> list[str]:
    out = list(texts)
    for index, text in enumerate(out):
        if not isinstance(text, str):
            raise ConfigurationError(f"texts[{index}] must be a str, got {type(text).__name__}")
    return out


def _check_probability(name: str, value: object, *, low_open: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ConfigurationError(f"{name} must be a number in [0, 1], got {value!r}")
    if not (0.0 < value <= 1.0 if low_open else 0.0 <= value <= 1.0):
        interval = "(0, 1]" if low_open else "[0, 1]"
        raise ConfigurationError(f"{name} must be in {interval}, got {value}")
