"""Ray against one process: where the time goes, and job-wide limits against a server.

Default (CPU, tiny model): builds a small zerank-shaped model (random
weights, no download), makes ``--documents`` packets of ``--pages`` pages of
about 1,000 characters, and gates them against three criteria:

- in this process with :func:`zerank_core.multi.gate_documents` (one model,
  its load timed apart);
- with :func:`zerank_core.distributed.run_on_ray` on a local Ray instance of
  ``--cpus`` CPUs, with one actor of one CPU per core.

For the Ray run it prints where the time went: the whole call, the actors'
start-up until their first batch, the model load inside an actor, torch's
threads per actor, the gating phase (first batch start to last batch end)
and how busy the actors were in it. The ratio compares the gating phase's
documents/s with the in-process run's (model load apart in both).

``--server`` measures job-wide limits instead: a local rerank server (80 ms
+ 5 ms per page, 16 at once: room for more) that admits ``--limit`` requests
per minute over a sliding ``--window`` and answers 429 above it; ``--actors``
actors (default 4) whose scorers are each told that limit. It prints the
share of the limit the job reached while gating and the requests rejected.

``--cache`` measures the score cache on Ray: 2 actors into an empty cache
file, the same job again (every score a hit, no model loaded), and this
process reading the file the actors wrote.

Every run's kept pages are checked against the in-process run (``--server``:
against the server's deterministic scores). Run:
``python benchmarks/bench_ray.py`` and ``python benchmarks/bench_ray.py --server``.
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

from tests.fake_servers import FakeRerankServer, hashed_probability
from tests.tiny_zerank import build_tiny_zerank, sample_text
from zerank_core.cache import CachedScorer
from zerank_core.criteria import Criterion
from zerank_core.distributed import RayRun, rows_of, run_on_ray
from zerank_core.gate import PageGate
from zerank_core.loaders import Document
from zerank_core.multi import gate_documents
from zerank_core.scorers.local import LocalScorer
from zerank_core.scorers.server import RerankServerScorer

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


def start_ray(cpus: int) -> float:
    import ray
    import ray.data

    root = str(Path(__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    started = time.perf_counter()
    ray.init(
        num_cpus=cpus,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": path}},
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    return time.perf_counter() - started


def describe(label: str, run: RayRun, documents: int) -> None:
    """Where a Ray run's time went."""
    startup = run.seconds - run.gating_seconds
    threads = ", ".join(map(str, run.threads)) or "-"
    busy = run.busy_seconds / (run.actors * run.gating_seconds) if run.gating_seconds else 0.0
    print(f"{label}:")
    print(
        f"  whole call {run.seconds:.1f} s = start-up until the first batch {startup:.1f} s "
        f"+ gating {run.gating_seconds:.1f} s"
    )
    print(
        f"  model built by {run.actors_built} of {run.actors} actors, longest load "
        f"{run.build_seconds:.2f} s; torch threads per actor: {threads}"
    )
    print(
        f"  {run.batches} batches; actors busy {100 * busy:.0f} % of the gating phase "
        f"(the rest: scheduling between batches, waiting for the first/last batch)"
    )
    print(
        f"  {documents / run.seconds:.2f} documents/s over the whole call, "
        f"{documents / run.gating_seconds:.2f} while gating"
    )


def local_model(args: argparse.Namespace) -> None:
    import ray

    documents = packets(args.documents, args.pages, seed=0)
    n = len(documents)
    with tempfile.TemporaryDirectory() as folder:
        model = str(build_tiny_zerank(Path(folder) / "model", config_overrides=MODEL_SHAPE))
        factory = functools.partial(LocalScorer, model)

        start = time.perf_counter()
        scorer = factory()
        load_here = time.perf_counter() - start
        import torch

        threads_here = torch.get_num_threads()
        start = time.perf_counter()
        job = gate_documents(PageGate(scorer), documents, CRITERIA)
        here_seconds = time.perf_counter() - start
        want = [row for i, r in enumerate(job.results) for row in rows_of(r, index=i)]

        ray_start = start_ray(args.cpus)
        cache = Path(folder) / "scores.sqlite3"
        actors = args.actors or args.cpus

        def on_ray(count: int, use_cache: bool = False) -> RayRun:
            run = run_on_ray(
                documents,
                CRITERIA,
                scorer=factory,
                actors=count,
                num_cpus=args.cpus / count,
                documents_per_batch=args.documents_per_batch,
                cache=cache if use_cache else None,
            )
            assert [r.pages for r in run.rows] == [r.pages for r in want], "results differ"
            return run

        print_machine(args, n)
        print(f"ray.init: {ray_start:.1f} s")
        print(
            f"in this process: model load {load_here:.2f} s apart; gating {here_seconds:.1f} s, "
            f"{n / here_seconds:.2f} documents/s (torch threads: {threads_here})"
        )
        if args.cache:
            first = on_ray(2, use_cache=True)
            describe("Ray, 2 actors, empty cache", first, n)
            rerun = on_ray(2, use_cache=True)
            describe("Ray, 2 actors, rerun (every score cached)", rerun, n)
            hits = sum(r.cache_hits or 0 for r in rerun.rows)
            misses = sum(r.cache_misses or 0 for r in rerun.rows)
            print(f"  rerun: {hits} hits, {misses} misses; {rerun.actors_built} models loaded")
            with CachedScorer(factory(), cache) as cached:
                start = time.perf_counter()
                again = gate_documents(PageGate(cached), documents, CRITERIA)
                seconds = time.perf_counter() - start
            got = [row for i, r in enumerate(again.results) for row in rows_of(r, index=i)]
            assert [r.pages for r in got] == [r.pages for r in want], "results differ"
            print(
                f"this process reading the actors' cache: {n / seconds:.2f} documents/s; "
                f"{cached.stats.hits} hits, {cached.stats.misses} misses"
            )
            print(
                f"ratio rerun / first run on Ray (whole call): {first.seconds / rerun.seconds:.2f}x"
            )
        else:
            run = on_ray(actors)
            describe(f"Ray, {actors} actors of {args.cpus / actors:g} CPU", run, n)
            # In this process again, after Ray: on a shared machine the load changes
            # between runs, so the ratio uses the faster of the two in-process runs.
            start = time.perf_counter()
            gate_documents(PageGate(scorer), documents, CRITERIA)
            again = time.perf_counter() - start
            best = min(here_seconds, again)
            print(
                f"in this process again: gating {again:.1f} s, {n / again:.2f} documents/s; "
                f"best {n / best:.2f}"
            )
            ratio = (n / run.gating_seconds) / (n / best)
            print(
                f"ratio Ray gating / in-process gating (best): {ratio:.2f}x "
                f"(whole call, start-up included: {best / run.seconds:.2f}x)"
            )
        ray.shutdown()


class TimedServer(FakeRerankServer):
    """The fake server, noting when each admitted request arrived."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.admitted: list[float] = []

    def _over_rate(self) -> float | None:
        wait = super()._over_rate()
        if wait is None:
            with self._lock:
                self.admitted.append(time.monotonic())
        return wait


def server_backend(args: argparse.Namespace) -> None:
    import ray

    documents = packets(args.documents, args.pages, seed=0)
    n = len(documents)
    actors = args.actors or 4
    server = TimedServer(
        latency_s=0.08,
        per_doc_s=0.005,
        slots=16,
        requests_per_minute=args.limit,
        window_s=args.window,
        score_fn=hashed_probability,
        record_bodies=False,
    )
    try:
        ray_start = start_ray(args.cpus)
        factory = functools.partial(
            RerankServerScorer,
            f"{server.url}/v1/rerank",
            max_batch_size=args.batch,
            requests_per_minute=args.limit,
        )
        run = run_on_ray(
            documents,
            CRITERIA,
            scorer=factory,
            actors=actors,
            num_cpus=args.cpus / actors,
            documents_per_batch=args.documents_per_batch,
        )
        ray.shutdown()
        print_machine(args, n)
        print(f"ray.init: {ray_start:.1f} s")
        print(
            f"server: 80 ms + 5 ms per page, 16 at once; admits {args.limit:g} requests/min "
            f"(sliding {args.window:g} s window), 429 above"
        )
        describe(f"Ray, {actors} actors, each scorer told {args.limit:g} requests/min", run, n)
        admitted = sorted(server.admitted)
        span = admitted[-1] - admitted[0] if len(admitted) > 1 else 0.0
        reached = (len(admitted) - 1) / span * 60.0 / args.limit if span else 0.0
        print(
            f"  {run.requests} requests sent, at most {run.peak_in_flight} in flight; "
            f"{server.rate_limited} rejected with 429"
        )
        print(
            f"  rate while gating: {len(admitted) - 1} requests in {span:.1f} s after the "
            f"first = {100 * reached:.0f} % of the job-wide limit"
        )
    finally:
        server.close()


def print_machine(args: argparse.Namespace, n: int) -> None:
    load = os.getloadavg()
    print(
        f"machine: {os.cpu_count()} CPUs (load average {load[0]:.1f}, {load[1]:.1f}, "
        f"{load[2]:.1f}); local Ray instance with {args.cpus} CPUs"
    )
    print(
        f"documents: {n} x {args.pages} pages (~1,000 characters), {len(CRITERIA)} criteria; "
        f"{args.documents_per_batch} documents per actor batch"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=24)
    parser.add_argument("--pages", type=int, default=8)
    parser.add_argument("--documents-per-batch", type=int, default=4)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance")
    parser.add_argument(
        "--actors", type=int, default=0, help="actors (default: --cpus; 4 with --server)"
    )
    parser.add_argument(
        "--cache", action="store_true", help="measure a first run and a rerun with a score cache"
    )
    parser.add_argument(
        "--server", action="store_true", help="measure job-wide limits against a rerank server"
    )
    parser.add_argument("--limit", type=float, default=300.0, help="--server: requests/min")
    parser.add_argument("--window", type=float, default=10.0, help="--server: window, s")
    parser.add_argument("--batch", type=int, default=8, help="--server: pages per request")
    args = parser.parse_args()
    if args.server:
        server_backend(args)
    else:
        local_model(args)


if __name__ == "__main__":
    main()
