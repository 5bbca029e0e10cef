"""Documents per second on Ray with 1 and 2 actors, against one process (CPU, tiny model).

Builds a small zerank-shaped model (random weights, no download), makes
``--documents`` packets of ``--pages`` pages of about 1,000 characters, and
gates them against three criteria:

- in this process with :func:`zerank_core.multi.gate_documents` (one model);
- with :func:`zerank_core.distributed.gate_on_ray` on a local Ray instance
  (``--cpus`` CPUs), with 1 and then 2 actors of one CPU each.

With ``--cache`` it measures the score cache on Ray instead: 2 actors into
an empty cache file, the same job again (every score a hit), and this process
reading the file the actors wrote, with each run's hits and misses.

A Ray run starts its actors (each imports torch and loads the model), so its
figure includes that start-up, as a real job's would; the per-run start-up is
printed from a one-document run. Every run's kept pages are checked against
the in-process run. On a cluster, give each actor a GPU (``num_gpus=1``).
Run: ``python benchmarks/bench_ray.py``.
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.tiny_zerank import build_tiny_zerank, sample_text
from zerank_core.cache import CachedScorer
from zerank_core.criteria import Criterion
from zerank_core.distributed import gate_on_ray
from zerank_core.gate import PageGate
from zerank_core.loaders import Document
from zerank_core.multi import gate_documents
from zerank_core.scorers.local import LocalScorer

CRITERIA = [
    Criterion("renewal", "When is the renewal deadline?"),
    Criterion("pay", "Who pays the invoice and when is payment due?"),
    Criterion("claims", "Which insurance claims were denied?"),
]
# Small, but large enough that the model, not Python, takes the time.
MODEL_SHAPE = {
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
}


def packets(n: int, pages: int, seed: int) -> list[Document]:
    rng = random.Random(seed)
    return [
        Document.from_texts(
            [sample_text(rng, rng.randint(120, 200)) for _ in range(pages)], source=f"packet-{i}"
        )
        for i in range(n)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=24)
    parser.add_argument("--pages", type=int, default=8)
    parser.add_argument("--documents-per-batch", type=int, default=4)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance")
    parser.add_argument(
        "--cache", action="store_true", help="measure a first run and a rerun with a score cache"
    )
    args = parser.parse_args()

    import ray
    import ray.data

    documents = packets(args.documents, args.pages, seed=0)
    with tempfile.TemporaryDirectory() as folder:
        model = str(build_tiny_zerank(Path(folder) / "model", config_overrides=MODEL_SHAPE))
        factory = functools.partial(LocalScorer, model)

        start = time.perf_counter()
        job = gate_documents(PageGate(factory()), documents, CRITERIA)
        here_seconds = time.perf_counter() - start
        want = [[item.pages for item in r.results] for r in job.results]

        root = str(Path(__file__).resolve().parent.parent)
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
        started = time.perf_counter()
        ray.init(
            num_cpus=args.cpus,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"PYTHONPATH": path}},
        )
        ray.data.DataContext.get_current().enable_progress_bars = False
        ray_start = time.perf_counter() - started

        cache = Path(folder) / "scores.sqlite3"
        counts: dict[str, tuple[int, int]] = {}

        def on_ray(docs: list[Document], actors: int, label: str = "") -> float:
            start = time.perf_counter()
            got = gate_on_ray(
                docs,
                CRITERIA,
                scorer=factory,
                actors=actors,
                documents_per_batch=args.documents_per_batch,
                cache=cache if label else None,
            )
            seconds = time.perf_counter() - start
            if len(docs) == len(documents):
                pages = [[item.pages for item in r.results] for r in got.results]
                assert pages == want, "results differ"
            if label and got.summary.cache is not None:
                counts[label] = (got.summary.cache.hits or 0, got.summary.cache.misses or 0)
            return seconds

        startup = on_ray(documents[:1], 1)
        if args.cache:
            timings = {
                label: on_ray(documents, 2, label)
                for label in ("Ray, 2 actors, empty cache", "Ray, 2 actors, rerun")
            }
            with CachedScorer(factory(), cache) as cached:
                start = time.perf_counter()
                again = gate_documents(PageGate(cached), documents, CRITERIA)
                label = "this process, reading the actors' cache"
                timings[label] = time.perf_counter() - start
                counts[label] = (cached.stats.hits, cached.stats.misses)
            pages = [[item.pages for item in r.results] for r in again.results]
            assert pages == want, "results differ"
        else:
            timings = {
                f"Ray, {actors} actor{'s' if actors > 1 else ''}": on_ray(documents, actors)
                for actors in (1, 2)
            }
        ray.shutdown()

    n = len(documents)
    pages = sum(len(d.pages) for d in documents)
    print(f"machine: {os.cpu_count()} CPUs; local Ray instance with {args.cpus} CPUs")
    print(
        f"documents: {n} x {args.pages} pages (~1,000 characters), {len(CRITERIA)} criteria; "
        f"{args.documents_per_batch} documents per actor batch"
    )
    print(f"ray.init: {ray_start:.1f} s; a one-document run (actor start-up): {startup:.1f} s")
    print(f"{'in this process (gate_documents)':<40} {n / here_seconds:7.2f} documents/s")
    for label, seconds in timings.items():
        rate = f"{n / seconds:7.2f} documents/s"
        cached = f"; {counts[label][0]} hits, {counts[label][1]} misses" if label in counts else ""
        print(f"{label:<40} {rate} ({seconds:.1f} s, {pages / seconds:.0f} pages/s{cached})")
    if args.cache:
        first, rerun = timings["Ray, 2 actors, empty cache"], timings["Ray, 2 actors, rerun"]
        print(f"ratio rerun / first run on Ray: {first / rerun:.2f}x faster")
    else:
        print(
            f"ratio 2 actors / 1 actor: {timings['Ray, 1 actor'] / timings['Ray, 2 actors']:.2f}x"
        )


if __name__ == "__main__":
    main()
