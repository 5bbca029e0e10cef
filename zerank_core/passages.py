"""Evidence passages: cut a kept page into sentences or short windows, keep the best ones.

Two-stage gating scores pages first, then cuts only the kept pages into
passages (:func:`split_passages`) and scores those against the same
criterion; :class:`PassagePolicy` says which passages a kept page yields.
A passage is a ``(start, end)`` character range of its page's text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields

from zerank_core.errors import ConfigurationError
from zerank_core.scorers.base import Scorer, check_scores
from zerank_core.select import Selection

__all__ = [
    "DEFAULT_PASSAGE_CHARS",
    "DEFAULT_PASSAGE_POLICY",
    "MERGE_BELOW_CHARS",
    "PassagePolicy",
    "ScoredCut",
    "ascore_passages",
    "choose_passages",
    "score_passages",
    "split_passages",
]

#: A kept passage of one text: ``(start, end, score)``, offsets into that text.
ScoredCut = tuple[int, int, float]

#: The longest passage :func:`split_passages` makes by default: two or three
#: sentences of a contract, about 125 tokens.
DEFAULT_PASSAGE_CHARS = 500

#: A piece shorter than this (a heading, a list number, "Inc.") is joined to
#: the next one, so that a passage holds a statement the model can judge.
MERGE_BELOW_CHARS = 40

# Where a passage may end: at a blank line; after a sentence or clause
# ending; at a line break before a list item; at a line break after a line
# that does not run on. A line ending in a lower-case letter, a digit, a
# comma or a hyphen is taken as hard-wrapped text (PDF and pdftotext lines),
# so a sentence is not cut at every line end.
_BOUNDARY = re.compile(
    r"\n[ \t]*\n\s*"
    r"|(?<=[.!?;:])\s+"
    r"|[ \t]*\n\s*(?=[-•*▪◦·]\s|\(?[0-9a-zA-Z]{1,3}[.)]\s)"
    r"|(?<=[^a-z0-9,(\-–/&\s])[ \t]*\n\s*"
)
_WORD = re.compile(r"\S+")


def split_passages(text: str, max_chars: int = DEFAULT_PASSAGE_CHARS) -> list[tuple[int, int]]:
    """Cut ``text`` into passages of at most ``max_chars`` characters.

    Returns ``(start, end)`` offsets into ``text``, in order, that never
    overlap and never start or end with white space; white space between
    passages belongs to none. Passages end at blank lines, after sentences
    (``.``, ``!``, ``?``, ``;``, ``:`` followed by white space), at line
    breaks before a list item, and at line breaks after a line that does not
    run on (a line ending in a lower-case letter, digit, comma or hyphen is
    hard-wrapped text, and the sentence goes on); a piece shorter than
    :data:`MERGE_BELOW_CHARS` is joined to the next one while the two fit.
    A sentence longer than ``max_chars`` (or a table row with no boundary at
    all) is cut between words into windows of at most ``max_chars``, and
    only a single longer word is cut mid-word, so every passage is bounded.
    Text with no visible character has no passage.
    """
    if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1:
        raise ConfigurationError(f"passage_chars must be an integer >= 1, got {max_chars!r}")
    if not isinstance(text, str):
        raise ConfigurationError(f"text must be a str, got {type(text).__name__}")
    pieces: list[tuple[int, int]] = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        pieces.extend(_bounded(text, start, match.start(), max_chars))
        start = match.end()
    pieces.extend(_bounded(text, start, len(text), max_chars))
    return _merge_short(pieces, max_chars)


def _bounded(text: str, start: int, end: int, max_chars: int) -> list[tuple[int, int]]:
    """The visible part of ``text[start:end]``, in windows of at most ``max_chars``."""
    words = [(start + m.start(), start + m.end()) for m in _WORD.finditer(text[start:end])]
    if not words:
        return []
    if words[-1][1] - words[0][0] <= max_chars:
        return [(words[0][0], words[-1][1])]
    out: list[tuple[int, int]] = []
    window: tuple[int, int] | None = None
    for word_start, word_end in words:
        if window is not None and word_end - window[0] <= max_chars:
            window = (window[0], word_end)
            continue
        if window is not None:
            out.append(window)
        while word_end - word_start > max_chars:
            out.append((word_start, word_start + max_chars))
            word_start += max_chars
        window = (word_start, word_end)
    if window is not None:
        out.append(window)
    return out


def _merge_short(pieces: list[tuple[int, int]], max_chars: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in pieces:
        if out:
            last_start, last_end = out[-1]
            if last_end - last_start < MERGE_BELOW_CHARS and end - last_start <= max_chars:
                out[-1] = (last_start, end)
                continue
        out.append((start, end))
    if len(out) > 1:
        # A short last piece (a signature line, a page number) joins the one before.
        (prev_start, _), (last_start, last_end) = out[-2], out[-1]
        if last_end - last_start < MERGE_BELOW_CHARS and last_end - prev_start <= max_chars:
            out[-2:] = [(prev_start, last_end)]
    return out


@dataclass(frozen=True)
class PassagePolicy:
    """Which passages of a kept page reach the LLM (stage 2 of page gating).

    Each kept page is cut into passages of at most ``passage_chars``
    characters (:func:`split_passages`), which are scored against the
    criterion. Then, in this order:

    1. ``threshold``: keep passages scoring >= threshold;
    2. ``top_k``: keep at most the K best of those *per page*;
    3. ``max_chars``: a character budget for the criterion over all its kept
       pages: walk the candidates best first (ties: document order) and keep
       each that still fits;
    4. ``min_keep``: a kept page with fewer than N passages gets its best
       remaining ones, whatever the threshold and budget say. The default 1
       means a kept page always yields at least its best passage.

    Kept passages are read in document order. With no option but the
    default ``min_keep`` every passage of a kept page is kept.
    """

    threshold: float | None = None
    top_k: int | None = None
    max_chars: int | None = None
    min_keep: int = 1
    passage_chars: int = DEFAULT_PASSAGE_CHARS

    def __post_init__(self) -> None:
        if self.threshold is not None:
            if isinstance(self.threshold, bool) or not isinstance(self.threshold, int | float):
                raise ConfigurationError(
                    f"passage threshold must be a number in [0, 1], got {self.threshold!r}"
                )
            if math.isnan(self.threshold) or not 0.0 <= self.threshold <= 1.0:
                raise ConfigurationError(
                    f"passage threshold must be in [0, 1], got {self.threshold}"
                )
        for name in ("top_k", "max_chars"):
            value = getattr(self, name)
            if value is not None:
                _check_int(f"passage {name}", value, 0)
        _check_int("passage min_keep", self.min_keep, 0)
        _check_int("passage_chars", self.passage_chars, 1)

    @classmethod
    def from_attributes(cls, source: object, prefix: str = "passage_") -> PassagePolicy:
        """The policy described by ``source``'s ``passage_*`` attributes.

        The command line and the adapters carry the options as
        ``passage_threshold``, ``passage_top_k``, ``passage_max_chars``,
        ``passage_min_keep`` and ``passage_chars``.
        """
        values = {}
        for f in fields(cls):
            name = f.name if f.name == "passage_chars" else prefix + f.name
            values[f.name] = getattr(source, name)
        return cls(**values)

    def to_dict(self) -> dict[str, object]:
        """The options by name, as results and reports write them."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def split(self, text: str) -> list[tuple[int, int]]:
        """``text``'s passages under this policy's ``passage_chars``."""
        return split_passages(text, self.passage_chars)

    def select(
        self, scores: Sequence[Sequence[float]], lengths: Sequence[Sequence[int]]
    ) -> tuple[Selection, ...]:
        """Apply the policy to the passages of a criterion's kept pages.

        ``scores[p][i]`` and ``lengths[p][i]`` are passage ``i`` of kept page
        ``p``. Returns one :class:`~zerank_core.select.Selection` per page:
        its ``indices`` in passage order, ``selected`` those that passed
        steps 1–3 and ``forced`` those added for ``min_keep``.
        """
        if len(scores) != len(lengths):
            raise ConfigurationError(
                f"scores has {len(scores)} pages and lengths {len(lengths)}: they must match"
            )
        candidates: list[tuple[float, int, int]] = []
        for page, (page_scores, page_lengths) in enumerate(zip(scores, lengths, strict=True)):
            if len(page_scores) != len(page_lengths):
                raise ConfigurationError(
                    f"page {page}: {len(page_scores)} scores for {len(page_lengths)} passages"
                )
            for index, value in enumerate(page_scores):
                if (
                    isinstance(value, bool)
                    or not isinstance(value, int | float)
                    or math.isnan(value)
                ):
                    raise ConfigurationError(
                        f"passage scores[{page}][{index}] must be a number, got {value!r}"
                    )
            ranking = sorted(range(len(page_scores)), key=lambda i: (-page_scores[i], i))
            if self.threshold is not None:
                ranking = [i for i in ranking if page_scores[i] >= self.threshold]
            if self.top_k is not None:
                ranking = ranking[: self.top_k]
            candidates.extend((page_scores[i], page, i) for i in ranking)
        candidates.sort(key=lambda c: (-c[0], c[1], c[2]))
        selected: list[set[int]] = [set() for _ in scores]
        used = 0
        for _, page, index in candidates:
            size = lengths[page][index]
            if self.max_chars is not None and used + size > self.max_chars:
                continue
            used += size
            selected[page].add(index)
        out = []
        for page, page_scores in enumerate(scores):
            forced: set[int] = set()
            for i in sorted(range(len(page_scores)), key=lambda i: (-page_scores[i], i)):
                if len(selected[page]) + len(forced) >= self.min_keep:
                    break
                if i not in selected[page]:
                    forced.add(i)
            out.append(
                Selection(
                    indices=tuple(sorted(selected[page] | forced)),
                    selected=frozenset(selected[page]),
                    forced=frozenset(forced),
                )
            )
        return tuple(out)


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"{name} must be an integer >= {minimum}, got {value!r}")


def choose_passages(
    policy: PassagePolicy,
    cuts: Sequence[Sequence[tuple[int, int]]],
    scores: Sequence[float],
) -> list[list[ScoredCut]]:
    """Apply ``policy`` to the scored passages of several texts.

    ``cuts[t]`` are text ``t``'s passages and ``scores`` their scores, text
    after text, as they were sent to the scorer. Returns each text's kept
    passages as ``(start, end, score)``, in text order.
    """
    by_text: list[list[float]] = []
    offset = 0
    for text_cuts in cuts:
        by_text.append(list(scores[offset : offset + len(text_cuts)]))
        offset += len(text_cuts)
    if offset != len(scores):
        raise ConfigurationError(f"{len(scores)} scores for {offset} passages")
    lengths = [[end - start for start, end in text_cuts] for text_cuts in cuts]
    selections = policy.select(by_text, lengths)
    return [
        [(*text_cuts[i], text_scores[i]) for i in selection.indices]
        for text_cuts, text_scores, selection in zip(cuts, by_text, selections, strict=True)
    ]


def score_passages(
    scorer: Scorer,
    query: str,
    texts: Sequence[str],
    policy: PassagePolicy,
    *,
    instruction: str | None = None,
) -> list[list[ScoredCut]]:
    """Cut ``texts`` into passages, score them against ``query`` in one call, keep by ``policy``.

    The scorer plans its own batches for the call (and a cache wrapper
    answers what it has seen). Returns each text's kept passages as
    ``(start, end, score)``, offsets into that text, in text order.
    """
    cuts = [policy.split(text) for text in texts]
    flat = _flat(texts, cuts)
    scores = scorer.score(query, flat, instruction=instruction) if flat else []
    return choose_passages(policy, cuts, _checked(scores, flat, scorer))


async def ascore_passages(
    scorer: Scorer,
    query: str,
    texts: Sequence[str],
    policy: PassagePolicy,
    *,
    instruction: str | None = None,
) -> list[list[ScoredCut]]:
    """Async :func:`score_passages`, through the scorer's ``ascore``."""
    cuts = [policy.split(text) for text in texts]
    flat = _flat(texts, cuts)
    scores = await scorer.ascore(query, flat, instruction=instruction) if flat else []
    return choose_passages(policy, cuts, _checked(scores, flat, scorer))


def _flat(texts: Sequence[str], cuts: list[list[tuple[int, int]]]) -> list[str]:
    return [
        text[start:end]
        for text, text_cuts in zip(texts, cuts, strict=True)
        for start, end in text_cuts
    ]


def _checked(scores: Sequence[float], flat: list[str], scorer: Scorer) -> list[float]:
    return check_scores(scores, len(flat), context=f"scorer {scorer.model!r}", items="passages")


#: The passage policy of ``compress --passages`` and the adapters: the three
#: best passages of each kept page scoring at least 0.5, and always the best
#: one. With BM25 (max-scaled per criterion) 0.5 reads "at least half as
#: good as the best passage".
DEFAULT_PASSAGE_POLICY = PassagePolicy(threshold=0.5, top_k=3)
