"""Selection policies: which scored items to keep, as one pure function.

Selection works on absolute calibrated scores, not ranks, so a fixed threshold
means the same thing for every query. :class:`SelectionPolicy` is validated at
construction; :meth:`SelectionPolicy.select` maps scores (and lengths, for a
budget) to the kept indices and never looks at anything else.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Literal

from zerank_core.dedupe import DuplicatePair, Duplicates
from zerank_core.errors import ConfigurationError

__all__ = ["DroppedDuplicate", "Selection", "SelectionPolicy", "estimate_tokens"]

Order = Literal["score", "original"]
CHARS_PER_TOKEN = 4


def estimate_tokens(text: str) -> int:
    """A tokenizer-free token estimate (4 characters a token, rounded up)."""
    return -(-len(text) // CHARS_PER_TOKEN)


@dataclass(frozen=True)
class DroppedDuplicate:
    """Item ``index`` was not kept: it duplicates the kept item ``of``."""

    index: int
    of: int
    similarity: float
    method: str


@dataclass(frozen=True)
class Selection:
    """The outcome of a selection.

    ``indices`` are the kept items in output order. ``selected`` passed the
    policy itself, ``neighbors`` were added as context around them and
    ``forced`` were added only to honour ``min_keep``. With ``dedupe``,
    ``duplicates`` names every item left out because it duplicates a kept
    one (by index), with that item and the similarity.
    """

    indices: tuple[int, ...]
    selected: frozenset[int] = field(default_factory=frozenset)
    neighbors: frozenset[int] = field(default_factory=frozenset)
    forced: frozenset[int] = field(default_factory=frozenset)
    duplicates: tuple[DroppedDuplicate, ...] = ()

    def duplicates_of(self, index: int) -> tuple[DroppedDuplicate, ...]:
        """The left-out items that duplicate kept item ``index``."""
        return tuple(d for d in self.duplicates if d.of == index)

    def duplicate_records(
        self, index: int, ids: Sequence[str | None]
    ) -> list[dict[str, str | int | float | None]]:
        """What the adapters put in a kept item's ``metadata["duplicates"]``.

        One ``{"index", "id", "similarity", "method"}`` per left-out copy of
        item ``index``; ``ids[i]`` is item ``i``'s document or node id.
        """
        return [
            {"index": d.index, "id": ids[d.index], "similarity": d.similarity, "method": d.method}
            for d in self.duplicates_of(index)
        ]

    def __len__(self) -> int:
        return len(self.indices)


@dataclass(frozen=True)
class SelectionPolicy:
    """What to keep of a scored list.

    Steps, in this order:

    1. rank by score, highest first; ties go to the earlier index;
    2. ``threshold``: keep only scores >= threshold;
    3. ``top_k``: keep at most the K best of those (with ``threshold`` this is
       top-K with a floor);
    4. ``max_chars`` / ``max_tokens``: walk the ranking and keep each item that
       still fits the budget (an item too large is skipped, smaller ones after
       it may still fit);
    5. ``neighbors``: add the items up to ``n`` positions before and after each
       kept item (they never count against ``top_k`` but do against budgets);
    6. ``min_keep``: if fewer than N items are kept, add the best remaining
       ones regardless of threshold and budget (fail-open for routers);
    7. ``order``: ``"score"`` (highest first) or ``"original"`` (input order,
       what an LLM should read for pages of one document).

    ``dedupe``: ``select`` then needs ``duplicates=``, a
    :class:`~zerank_core.dedupe.Duplicates` relation from a detector. While
    walking the ranking in steps 3–4, an item that duplicates an item
    already kept is dropped without taking a top-K slot or any budget, so
    the slot and the characters go to the next distinct item. A neighbour
    (step 5) that duplicates a kept item is not added, and ``min_keep``
    (step 6) counts distinct items: it never adds a duplicate of a kept
    item, so it returns fewer than N when fewer distinct items exist. The
    relation is not transitive: an item is dropped only when it is itself
    linked to a kept item.

    With no option set every item is kept, ranked.
    """

    threshold: float | None = None
    top_k: int | None = None
    max_chars: int | None = None
    max_tokens: int | None = None
    min_keep: int = 0
    order: Order = "score"
    neighbors: int = 0
    dedupe: bool = False

    def __post_init__(self) -> None:
        if self.threshold is not None:
            if isinstance(self.threshold, bool) or not isinstance(self.threshold, int | float):
                raise ConfigurationError(
                    f"threshold must be a number in [0, 1], got {self.threshold!r}"
                )
            if math.isnan(self.threshold) or not 0.0 <= self.threshold <= 1.0:
                raise ConfigurationError(f"threshold must be in [0, 1], got {self.threshold}")
        for name in ("top_k", "max_chars", "max_tokens"):
            value = getattr(self, name)
            if value is not None:
                _check_count(name, value)
        _check_count("min_keep", self.min_keep)
        _check_count("neighbors", self.neighbors)
        if self.order not in ("score", "original"):
            raise ConfigurationError(f"order must be 'score' or 'original', got {self.order!r}")
        if not isinstance(self.dedupe, bool):
            raise ConfigurationError(f"dedupe must be True or False, got {self.dedupe!r}")

    def describe(self) -> str:
        """The policy in words, as the command line and the report print it."""
        parts = []
        if self.top_k is not None:
            parts.append(f"top {self.top_k}")
        if self.threshold is not None:
            parts.append(f"floor {self.threshold:.4g}")
        if self.max_chars is not None:
            parts.append(f"≤ {self.max_chars:,} characters")
        if self.max_tokens is not None:
            parts.append(f"≤ {self.max_tokens:,} tokens")
        if self.neighbors:
            parts.append(f"± {self.neighbors} neighbour pages")
        if self.min_keep:
            parts.append(f"at least {self.min_keep}")
        if self.dedupe:
            parts.append("one page of each set of duplicates")
        parts.append(f"{self.order} order")
        return ", ".join(parts)

    @classmethod
    def from_attributes(cls, source: object) -> SelectionPolicy:
        """The policy described by ``source``'s attributes of the same names.

        Adapters and the command line carry the policy's options as their own
        fields (pydantic models, argparse namespaces); this reads them all.
        """
        return cls(**{f.name: getattr(source, f.name) for f in fields(cls)})

    def select(
        self,
        scores: Sequence[float],
        *,
        lengths: Sequence[int] | None = None,
        token_counts: Sequence[int] | None = None,
        duplicates: Duplicates | None = None,
    ) -> Selection:
        """Apply the policy to ``scores``.

        ``lengths`` (characters) is required with ``max_chars``.
        ``token_counts`` is used with ``max_tokens``; without it tokens are
        estimated from ``lengths`` at four characters a token.
        ``duplicates`` (a relation over the same items) is required with
        ``dedupe`` and ignored without it.
        """
        n = len(scores)
        for index, value in enumerate(scores):
            if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
                raise ConfigurationError(f"scores[{index}] must be a number, got {value!r}")
        chars = _check_lengths("lengths", lengths, n)
        tokens = _check_lengths("token_counts", token_counts, n)
        if self.max_chars is not None and chars is None:
            raise ConfigurationError("max_chars needs the items' lengths (lengths=...)")
        if self.max_tokens is not None and tokens is None:
            if chars is None:
                raise ConfigurationError(
                    "max_tokens needs token_counts=... or lengths=... to estimate them"
                )
            tokens = [-(-c // CHARS_PER_TOKEN) for c in chars]
        links = self._links(duplicates, n)

        ranking = sorted(range(n), key=lambda i: (-scores[i], i))
        rank = {index: position for position, index in enumerate(ranking)}
        candidates = ranking
        if self.threshold is not None:
            candidates = [i for i in candidates if scores[i] >= self.threshold]

        budget = _Budget(self.max_chars, chars, self.max_tokens, tokens)
        selected: list[int] = []
        kept: set[int] = set()
        slots = 0
        for i in candidates:
            if self.top_k is not None and slots >= self.top_k:
                break
            if _duplicate_of(i, links, kept, rank) is not None:
                continue
            # An item too large for the budget still takes its top-K slot:
            # top-K picks the candidates, the budget then filters them.
            slots += 1
            if budget.take(i):
                selected.append(i)
                kept.add(i)

        neighbors: set[int] = set()
        if self.neighbors:
            for anchor in selected:
                low, high = max(0, anchor - self.neighbors), min(n, anchor + self.neighbors + 1)
                for j in range(low, high):
                    if j in kept or _duplicate_of(j, links, kept, rank) is not None:
                        continue
                    if budget.take(j):
                        kept.add(j)
                        neighbors.add(j)

        forced: set[int] = set()
        for i in ranking:
            if len(kept) >= self.min_keep:
                break
            if i not in kept and _duplicate_of(i, links, kept, rank) is None:
                kept.add(i)
                forced.add(i)

        dropped = []
        for i in range(n):
            pair = None if i in kept else _duplicate_of(i, links, kept, rank)
            if pair is not None:
                dropped.append(DroppedDuplicate(i, pair.other(i), pair.similarity, pair.method))

        if self.order == "original":
            indices = tuple(sorted(kept))
        else:
            indices = tuple(i for i in ranking if i in kept)
        return Selection(
            indices=indices,
            selected=frozenset(selected),
            neighbors=frozenset(neighbors),
            forced=frozenset(forced),
            duplicates=tuple(dropped),
        )

    def _links(
        self, duplicates: Duplicates | None, n: int
    ) -> Mapping[int, tuple[DuplicatePair, ...]]:
        if not self.dedupe:
            return {}
        if duplicates is None:
            raise ConfigurationError(
                "dedupe needs the duplicate relation (duplicates=...), e.g. from "
                "zerank_core.dedupe.LexicalDetector().find(texts)"
            )
        if not isinstance(duplicates, Duplicates):
            raise ConfigurationError(
                f"duplicates must be a Duplicates relation, got {type(duplicates).__name__}"
            )
        if duplicates.size != n:
            raise ConfigurationError(
                f"duplicates describes {duplicates.size} items, but there are {n} scores"
            )
        return duplicates.by_item


def _duplicate_of(
    index: int,
    links: Mapping[int, tuple[DuplicatePair, ...]],
    kept: set[int],
    rank: Mapping[int, int],
) -> DuplicatePair | None:
    """The pair linking ``index`` to a kept item: the most similar, then the best ranked."""
    best: DuplicatePair | None = None
    for pair in links.get(index, ()):
        other = pair.other(index)
        if other not in kept:
            continue
        if best is None or (-pair.similarity, rank[other]) < (
            -best.similarity,
            rank[best.other(index)],
        ):
            best = pair
    return best


class _Budget:
    def __init__(
        self,
        max_chars: int | None,
        chars: Sequence[int] | None,
        max_tokens: int | None,
        tokens: Sequence[int] | None,
    ) -> None:
        self._limits = [
            (limit, sizes)
            for limit, sizes in ((max_chars, chars), (max_tokens, tokens))
            if limit is not None and sizes is not None
        ]
        self._used = [0] * len(self._limits)

    def take(self, index: int) -> bool:
        """Charge item ``index`` if it fits every budget; report whether it did."""
        needed = [
            used + sizes[index] for used, (_, sizes) in zip(self._used, self._limits, strict=True)
        ]
        if any(total > limit for total, (limit, _) in zip(needed, self._limits, strict=True)):
            return False
        self._used = needed
        return True


def _check_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(f"{name} must be an integer >= 0, got {value!r}")


def _check_lengths(name: str, values: Sequence[int] | None, n: int) -> list[int] | None:
    if values is None:
        return None
    out = list(values)
    if len(out) != n:
        raise ConfigurationError(f"{name} has {len(out)} entries for {n} scores")
    for index, value in enumerate(out):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigurationError(f"{name}[{index}] must be an integer >= 0, got {value!r}")
    return out
