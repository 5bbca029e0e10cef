"""How a job is cut into requests: the batch-planning policy of remote scorers.

Rules (:func:`plan_requests`):

1. A request holds texts of one query only, at most ``max_batch_size`` of
   them and at most ``max_bytes`` (``150 + len(query) + len(text)`` each,
   UTF-8, as ZeroEntropy counts them). A text that fits no request is an
   error naming it, never truncated.
2. Within those limits the size is derived from the job: the candidate that
   finishes first on the slots the job can get, every request costing
   ``REQUEST_OVERHEAD_TEXTS + len(request)``, wins; ties go to fewer requests.
   Under a requests-per-minute limit the fewest requests win outright.
3. The slots a job can get are not the scorer's ``max_concurrency`` but
   :func:`planning_slots`: the slots free when it starts, and no more than an
   even share among the jobs running on the scorer. So 1,000 concurrent
   small calls on one scorer are one request each instead of each being
   split over slots that other calls hold, while a job alone on a scorer
   still spreads over every slot.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

from zerank_core.errors import ConfigurationError

__all__ = [
    "REQUEST_OVERHEAD_TEXTS",
    "Batch",
    "estimate_tokens",
    "plan_batches",
    "plan_requests",
    "planning_slots",
    "request_bytes",
]

#: What the planner assumes one request costs beyond its texts, counted in
#: texts' worth of work (an HTTP round trip and the server's per-request
#: scheduling against one text's inference). It only arbitrates between one
#: more round of requests and an uneven last round, and sets the smallest
#: request worth sending on its own, so the plan is not sensitive to it.
REQUEST_OVERHEAD_TEXTS = 16


def request_bytes(query: str, text: str) -> int:
    """Bytes one document adds to a rerank request, as ZeroEntropy counts them."""
    return 150 + len(query.encode("utf-8")) + len(text.encode("utf-8"))


def estimate_tokens(query: str, text: str) -> int:
    """A pre-send estimate of one pair's tokens (UTF-8 bytes / 4, at least 1)."""
    return max(1, (len(query.encode("utf-8")) + len(text.encode("utf-8"))) // 4)


@dataclass(frozen=True)
class Batch:
    """One planned request: texts ``indices`` of job item ``item``.

    ``number`` is the request's position in the plan (what errors report);
    ``size_bytes`` its size as ZeroEntropy counts it (``150 + len(query) +
    len(text)`` per text, UTF-8).
    """

    number: int
    item: int
    indices: tuple[int, ...]
    size_bytes: int = 0


def _split_even(n: int, pieces: int) -> list[range]:
    base, extra = divmod(n, pieces)
    out, start = [], 0
    for k in range(pieces):
        size = base + (1 if k < extra else 0)
        out.append(range(start, start + size))
        start += size
    return out


def _makespan(costs: list[int], slots: int) -> int:
    """Finish time of costs scheduled longest first on ``slots`` parallel slots."""
    loads = [0] * min(slots, len(costs))
    heapq.heapify(loads)
    for cost in sorted(costs, reverse=True):
        heapq.heapreplace(loads, loads[0] + cost)
    return max(loads) if loads else 0


def plan_requests(
    queries: Sequence[str],
    texts: Sequence[Sequence[str]],
    *,
    slots: int,
    max_batch_size: int,
    max_bytes: int | None = None,
    fewest_requests: bool = False,
    overhead: int = REQUEST_OVERHEAD_TEXTS,
) -> list[Batch]:
    """Cut a whole job (one text list per query) into requests.

    A request holds texts of one query only, at most ``max_batch_size`` of
    them and at most ``max_bytes`` (``150 + len(query) + len(text)`` each).
    Within those limits the size is derived from the job, not tuned:

    1. Candidate sizes ``b`` run from ``max_batch_size`` down to
       ``overhead`` texts (a request should carry at least as much work as
       its fixed cost). For each, every query's texts are split into
       ``ceil(n / b)`` near-equal requests.
    2. Each candidate is scored by the time the job would take on ``slots``
       parallel slots when every request costs ``overhead + len(request)``
       and requests are handed out longest first (which is also the order
       they are sent in).
    3. The fastest candidate wins; ties go to the larger size (fewer
       requests, less per-request overhead and rate-limit budget).

    So a small job is spread over all slots (150 pages × 4 criteria over 16
    slots: 16 requests of 37–38 pages, one round), and a big one uses the
    fewest requests that fill every slot evenly (150 × 80 over 16 slots: five
    full rounds of 150-page requests; cutting them smaller only adds rounds of
    per-request overhead). ``fewest_requests`` (used under a
    requests-per-minute limit, where requests are the scarce resource) takes
    ``b = max_batch_size``.
    """
    if max_batch_size < 1:
        raise ConfigurationError(f"max_batch_size must be >= 1, got {max_batch_size}")
    # Text sizes are counted once per distinct list (a page gate sends the
    # same pages with every criterion).
    by_list: dict[int, list[int]] = {}
    text_bytes: list[list[int]] = []
    for item_texts in texts:
        lengths = by_list.get(id(item_texts))
        if lengths is None:
            lengths = by_list[id(item_texts)] = [len(t.encode("utf-8")) for t in item_texts]
        text_bytes.append(lengths)
    query_bytes = [150 + len(q.encode("utf-8")) for q in queries]
    if len(queries) != len(texts):
        raise ConfigurationError(f"{len(queries)} queries for {len(texts)} text lists")
    if max_bytes is not None:
        for item, lengths in enumerate(text_bytes):
            for index, length in enumerate(lengths):
                size = query_bytes[item] + length
                if size > max_bytes:
                    where = f" of query {item}" if len(queries) > 1 else ""
                    raise ConfigurationError(
                        f"text {index}{where} needs {size} bytes with its query, over the "
                        f"per-request limit of {max_bytes} bytes; split it first"
                    )
    sizes = [len(t) for t in texts]
    total = sum(sizes)
    if total == 0:
        return []
    smallest = max(1, min(overhead, max_batch_size))
    candidates = [max_batch_size] if fewest_requests else range(max_batch_size, smallest - 1, -1)
    best: list[tuple[int, range]] | None = None
    best_time = math.inf
    seen: set[tuple[int, ...]] = set()
    for b in candidates:
        pieces = tuple(math.ceil(n / b) for n in sizes)
        if pieces in seen:
            continue
        seen.add(pieces)
        # Per-request overhead only grows as b shrinks: once even a perfect
        # spread of this plan is slower than the best, no smaller b can win.
        if (sum(pieces) * overhead + total) / slots >= best_time:
            break
        chunks = [
            (item, piece)
            for item, (n, p) in enumerate(zip(sizes, pieces, strict=True))
            if n
            for piece in _split_even(n, p)
        ]
        chunks = _split_bytes(chunks, query_bytes, text_bytes, max_bytes)
        elapsed = _makespan([overhead + len(c) for _, c in chunks], slots)
        if elapsed < best_time:
            best, best_time = chunks, elapsed
    assert best is not None
    ordered = sorted(best, key=lambda c: (-len(c[1]), c[0], c[1].start))
    return [
        Batch(
            number=n,
            item=item,
            indices=tuple(piece),
            size_bytes=query_bytes[item] * len(piece) + sum(text_bytes[item][i] for i in piece),
        )
        for n, (item, piece) in enumerate(ordered)
    ]


def _split_bytes(
    chunks: list[tuple[int, range]],
    query_bytes: list[int],
    text_bytes: list[list[int]],
    max_bytes: int | None,
) -> list[tuple[int, range]]:
    if max_bytes is None:
        return chunks
    out: list[tuple[int, range]] = []
    for item, piece in chunks:
        start, used = piece.start, 0
        for index in piece:
            size = query_bytes[item] + text_bytes[item][index]
            if index > start and used + size > max_bytes:
                out.append((item, range(start, index)))
                start, used = index, 0
            used += size
        out.append((item, range(start, piece.stop)))
    return out


# --------------------------------------------------------------------------- engine


def plan_batches(
    query: str,
    texts: Sequence[str],
    *,
    max_batch_size: int,
    max_bytes: int | None = None,
) -> list[list[int]]:
    """Split ``texts`` into consecutive batches of indices.

    A batch holds at most ``max_batch_size`` texts and, when ``max_bytes`` is
    set, at most ``max_bytes`` counted as ``150 + len(query) + len(text)`` per
    text (UTF-8). A single text that cannot fit any batch is an error naming
    its index: truncating it silently would change its score.
    """
    if max_batch_size < 1:
        raise ConfigurationError(f"max_batch_size must be >= 1, got {max_batch_size}")
    batches: list[list[int]] = []
    current: list[int] = []
    current_bytes = 0
    for index, text in enumerate(texts):
        size = request_bytes(query, text) if max_bytes is not None else 0
        if max_bytes is not None and size > max_bytes:
            raise ConfigurationError(
                f"text {index} needs {size} bytes with its query, over the "
                f"per-request limit of {max_bytes} bytes; split it first"
            )
        full = len(current) >= max_batch_size or (
            max_bytes is not None and current_bytes + size > max_bytes
        )
        if current and full:
            batches.append(current)
            current, current_bytes = [], 0
        current.append(index)
        current_bytes += size
    if current:
        batches.append(current)
    return batches


def planning_slots(limit: int, free: int, running_jobs: int) -> int:
    """The slots to plan a job for: those free now, at most an even share, at least one.

    ``limit`` is the scorer's ``max_concurrency``, ``free`` its slots free now
    (none when requests are already queued) and ``running_jobs`` the jobs
    already running on it, this one excluded.
    """
    share = limit // (running_jobs + 1)
    return max(1, min(free, share))
