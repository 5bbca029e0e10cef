"""Whole-job throughput against a rerank server: reference loop vs the project's PageGate.

Starts a localhost server that follows ZeroEntropy's ``/v1/models/rerank``
API (``tests/fake_servers.py`` in its own process): 80 ms per request plus
5 ms per document, 16 requests served at once. The server scores pairs with
a hash (``--server-scores hashed``, 0.6 ms of CPU a request): the latency
model stands for the model's work, and on a small machine whatever CPU the
server spends beyond it is taken from the client under test.
``--server-scores reference`` scores by keyword overlap (8 ms a request, what
the tests use); on 2 cores that costs the client about 3 points of the
capacity share. Then, in one run:

1. the reference loop — batches of 10 pages sent one after another with the
   raw async SDK — on 150 pages × 4 criteria;
2. ``PageGate`` over ``ZeroEntropyScorer`` with its defaults (async and
   sync) on 150 × 4 and 150 × 80;
3. the same job against a server that allows ``--rpm`` requests per minute
   (counted over a ``--window`` sliding window, so the run stays short), once
   with the limit set on the client and once without (the engine waits out
   the server's 429s); it prints the share of the allowed rate reached and
   the 429s received and surfaced;
4. the sync path's overhead: ``PageGate.run`` (planning, engine, validation,
   selection) against raw SDK calls on 16 threads sending the same plan.

Figures: pairs/s, ratio to the reference loop, and share of the capacity
bound — all per-document work spread over the server's slots
(``pairs × 5 ms / 16``), which no client can beat. The reference loop runs
one batch at a time, so its rate does not depend on the job's size: its
150 × 80 time is its measured 150 × 4 rate applied to 12,000 pairs
(``--full-reference`` runs it, ≈ 3 minutes).

Run: ``python benchmarks/bench_throughput.py`` from the repository root.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import zeroentropy  # noqa: E402

from zerank_core.criteria import Criterion  # noqa: E402
from zerank_core.gate import PageGate  # noqa: E402
from zerank_core.loaders import Document  # noqa: E402
from zerank_core.scorers import ZeroEntropyScorer  # noqa: E402
from zerank_core.scorers.base import query_with_instruction  # noqa: E402
from zerank_core.scorers.engine import plan_requests  # noqa: E402

LATENCY_S = 0.080
PER_DOC_S = 0.005
SLOTS = 16
PAGE_CHARS = 2000
# fmt: off
WORDS = (
    "coverage", "prior", "authorization", "imaging", "MRI", "lumbar", "spine", "therapy",
    "physical", "conservative", "weeks", "documented", "failure", "neurological", "deficit",
    "radiculopathy", "history", "examination", "provider", "signature", "date", "policy",
    "criteria", "medical", "necessity", "diagnosis", "code", "billing",
)
# fmt: on


def make_pages(n: int) -> list[str]:
    pages = []
    for i in range(n):
        words, k = [], i
        while sum(len(w) + 1 for w in words) < PAGE_CHARS:
            words.append(WORDS[k % len(WORDS)])
            k = k * 7 + 3
        pages.append(f"page {i + 1}: " + " ".join(words))
    return pages


def make_criteria(n: int) -> list[Criterion]:
    return [
        Criterion(f"C{i}", f"{WORDS[i % len(WORDS)]} {WORDS[(i * 5 + 1) % len(WORDS)]} {i}")
        for i in range(n)
    ]


@contextmanager
def serve(scores: str, *extra: str) -> Iterator[str]:
    command = [
        sys.executable,
        "-m",
        "tests.fake_servers",
        "--latency",
        str(LATENCY_S),
        "--per-doc",
        str(PER_DOC_S),
        "--slots",
        str(SLOTS),
        "--scores",
        scores,
        *extra,
    ]
    process = subprocess.Popen(
        command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    assert process.stdin is not None
    try:
        yield process.stdout.readline().strip()
    finally:
        process.stdin.close()
        process.wait(timeout=10)


def stats(url: str, reset: bool = False) -> dict[str, Any]:
    if reset:
        request = urllib.request.Request(f"{url}/stats/reset", data=b"{}", method="POST")
        urllib.request.urlopen(request).read()
        return {}
    with urllib.request.urlopen(f"{url}/stats") as response:
        data: dict[str, Any] = json.loads(response.read())
        return data


def bound_s(pairs: int) -> float:
    return pairs * PER_DOC_S / SLOTS


async def reference_loop(url: str, pages: list[str], criteria: list[Criterion]) -> float:
    client = zeroentropy.AsyncZeroEntropy(api_key="bench", base_url=f"{url}/v1", max_retries=0)
    start = time.perf_counter()
    for criterion in criteria:
        for i in range(0, len(pages), 10):
            await client.models.rerank(
                model="zerank-2", query=criterion.text, documents=pages[i : i + 10]
            )
    elapsed = time.perf_counter() - start
    await client.close()
    return elapsed


def scorer_for(url: str, **options: Any) -> ZeroEntropyScorer:
    return ZeroEntropyScorer(api_key="bench", base_url=f"{url}/v1", **options)


def gate_async(url: str, document: Document, criteria: list[Criterion], **options: Any) -> float:
    async def run() -> float:
        async with scorer_for(url, **options) as scorer:
            start = time.perf_counter()
            await PageGate(scorer).arun(document, criteria)
            return time.perf_counter() - start

    return asyncio.run(run())


def gate_sync(url: str, document: Document, criteria: list[Criterion], **options: Any) -> float:
    with scorer_for(url, **options) as scorer:
        start = time.perf_counter()
        PageGate(scorer).run(document, criteria)
        return time.perf_counter() - start


def raw_sync(url: str, pages: list[str], criteria: list[Criterion]) -> float:
    """Raw SDK calls on 16 threads, sending the plan the scorer would send."""
    scorer = scorer_for(url)
    queries = [query_with_instruction(c.text, c.instruction) for c in criteria]
    plan = plan_requests(
        queries,
        [pages] * len(criteria),
        slots=scorer.max_concurrency,
        max_batch_size=scorer.max_batch_size,
        max_bytes=scorer.max_bytes,
    )
    client = zeroentropy.ZeroEntropy(api_key="bench", base_url=f"{url}/v1", max_retries=0)
    out = [[0.0] * len(pages) for _ in criteria]

    def send(batch: Any) -> None:
        documents = [pages[i] for i in batch.indices]
        response = client.models.rerank(
            model="zerank-2", query=queries[batch.item], documents=documents
        )
        for result in response.results:
            out[batch.item][batch.indices[result.index]] = result.relevance_score

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=scorer.max_concurrency) as pool:
        list(pool.map(send, plan))
    elapsed = time.perf_counter() - start
    client.close()
    return elapsed


def rate_limited(
    url: str, document: Document, criteria: list[Criterion], rpm: float, client_limit: bool
) -> tuple[float, int, int, int]:
    """(elapsed, requests served, 429s answered, 429s surfaced to the caller)."""
    stats(url, reset=True)
    options: dict[str, Any] = {"requests_per_minute": rpm} if client_limit else {}
    surfaced = 0
    start = time.perf_counter()
    try:
        gate_async(url, document, criteria, **options)
    except zeroentropy.RateLimitError:
        surfaced = 1
    elapsed = time.perf_counter() - start
    served = stats(url)
    return elapsed, served["served"], served["rate_limited"], surfaced


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=150)
    parser.add_argument("--criteria", type=int, default=80)
    parser.add_argument("--rpm", type=float, default=600.0, help="limit for the rate-limited run")
    parser.add_argument("--window", type=float, default=5.0, help="its window, seconds")
    parser.add_argument("--rate-criteria", type=int, default=200)
    parser.add_argument("--full-reference", action="store_true")
    parser.add_argument(
        "--server-scores",
        choices=("hashed", "reference"),
        default="hashed",
        help="how the server scores pairs: a hash (0.6 ms a request) or keyword overlap (8 ms)",
    )
    args = parser.parse_args()

    pages = make_pages(args.pages)
    document = Document.from_texts(pages, "bench.txt")
    small, big = make_criteria(4), make_criteria(args.criteria)
    cpus = os.cpu_count()
    print(
        f"machine: {platform.machine()} {cpus} CPUs, Python {platform.python_version()}; "
        f"client and server on this machine"
    )
    print(
        f"server: {LATENCY_S * 1000:.0f} ms/request + {PER_DOC_S * 1000:.0f} ms/document, "
        f"{SLOTS} at once, {args.server_scores} scores; pages of {PAGE_CHARS:,} characters"
    )
    print()
    rows: list[tuple[str, int, float]] = []
    with serve(args.server_scores) as url:
        reference_small = asyncio.run(reference_loop(url, pages, small))
        pairs_small = len(pages) * len(small)
        reference_rate = pairs_small / reference_small
        rows.append((f"reference loop, {args.pages} × 4", pairs_small, reference_small))
        pairs_big = len(pages) * len(big)
        if args.full_reference:
            elapsed = asyncio.run(reference_loop(url, pages, big))
            rows.append((f"reference loop, {args.pages} × {len(big)}", pairs_big, elapsed))
        else:
            rows.append(
                (
                    f"reference loop, {args.pages} × {len(big)} (from its × 4 rate)",
                    pairs_big,
                    pairs_big / reference_rate,
                )
            )
        rows.append(
            (f"PageGate.arun, {args.pages} × 4", pairs_small, gate_async(url, document, small))
        )
        rows.append(
            (f"PageGate.arun, {args.pages} × {len(big)}", pairs_big, gate_async(url, document, big))
        )
        rows.append(
            (f"PageGate.run, {args.pages} × {len(big)}", pairs_big, gate_sync(url, document, big))
        )

        print("| client | pairs | seconds | pairs/s | × reference | share of capacity bound |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, pairs, elapsed in rows:
            rate = pairs / elapsed
            print(
                f"| {name} | {pairs:,} | {elapsed:.2f} | {rate:,.0f} | "
                f"{rate / reference_rate:.1f}× | {bound_s(pairs) / elapsed:.0%} |"
            )
        print()

        # Alternated, best of three each: on a shared machine a slow run says
        # more about the neighbours than about either client.
        raw_times, gate_times = [], []
        for _ in range(3):
            raw_times.append(raw_sync(url, pages, big))
            gate_times.append(gate_sync(url, document, big))
        raw, gate = min(raw_times), min(gate_times)
        print(
            f"sync path, {args.pages} × {len(big)}: raw SDK calls on {SLOTS} threads with the "
            f"same plan {raw:.2f} s, PageGate.run {gate:.2f} s (best of 3 each): overhead "
            f"{(gate - raw) / raw:+.1%}"
        )
        print()

    rate_criteria = make_criteria(args.rate_criteria)
    allowed = args.rpm / 60.0
    print(
        f"rate limit: server allows {args.rpm:.0f} requests/minute, counted over a sliding "
        f"{args.window:g} s window; {args.pages} × {len(rate_criteria)} pairs"
    )
    print(
        "| client | seconds | requests | requests/s | share of allowed rate | 429s answered | "
        "429s surfaced |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    with serve(args.server_scores, "--rpm", str(args.rpm), "--window", str(args.window)) as url:
        for label, client_limit in (
            (f"requests_per_minute={args.rpm:.0f} on the client", True),
            ("no client limit (engine waits out 429s)", False),
        ):
            # Let the previous run's window drain so each run starts fresh.
            time.sleep(args.window)
            elapsed, served, answered, surfaced = rate_limited(
                url, document, rate_criteria, args.rpm, client_limit
            )
            rate = served / elapsed
            print(
                f"| {label} | {elapsed:.2f} | {served} | {rate:.2f} | {rate / allowed:.0%} | "
                f"{answered} | {surfaced} |"
            )


if __name__ == "__main__":
    main()
