"""Many small concurrent calls on one scorer: requests sent and seconds taken.

1,000 ``ascore`` calls of 20 texts each, all at once, on one
``ZeroEntropyScorer`` (16 slots) against the localhost server of
``bench_throughput.py`` in its own process (80 ms per request + 5 ms per
document, 16 requests served at once, hashed scores). In one run, twice:

- "every slot": each call planned as if it had all 16 slots to itself (how
  the planner worked before: each 20-text call became 2 requests of 10);
- "its share": each call planned for the slots it can get
  (:func:`zerank_core.scorers.planning.planning_slots`: free now, at most an
  even share among the running calls).

Prints requests, seconds, and every call's scores checked against the server's.

Run: ``python benchmarks/bench_concurrent_calls.py`` from the repository root.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_throughput import serve, stats  # noqa: E402

import zerank_core.scorers.engine as engine  # noqa: E402
from tests.fake_servers import hashed_probability  # noqa: E402
from zerank_core.scorers import ZeroEntropyScorer  # noqa: E402


async def run(url: str, calls: int, texts_per_call: int) -> tuple[int, float]:
    texts = [[f"call {c} text {i} " * 20 for i in range(texts_per_call)] for c in range(calls)]
    stats(url, reset=True)
    async with ZeroEntropyScorer(api_key="bench-key", base_url=f"{url}/v1") as scorer:
        start = time.perf_counter()
        got = await asyncio.gather(*(scorer.ascore("which call", t) for t in texts))
        seconds = time.perf_counter() - start
    want = [[hashed_probability("which call", x) for x in t] for t in texts]
    assert got == want, "scores differ from the server's"
    return int(stats(url)["served"]), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--texts", type=int, default=20, help="texts per call")
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    own_share = engine.planning_slots
    with serve("hashed") as url:
        rows = []
        for name, rule in (
            ("every slot (before)", lambda limit, free, running: limit),
            ("its share (now)", own_share),
        ):
            engine.planning_slots = rule  # type: ignore[assignment]
            try:
                requests, seconds = asyncio.run(run(url, args.calls, args.texts))
            finally:
                engine.planning_slots = own_share
            rows.append((name, requests, seconds))
    print(f"{args.calls} concurrent calls of {args.texts} texts, 16 slots")
    print(f"{'planned for':<22} {'requests':>9} {'seconds':>8}")
    for name, requests, seconds in rows:
        print(f"{name:<22} {requests:>9} {seconds:>8.1f}")


if __name__ == "__main__":
    main()
