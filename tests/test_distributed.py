"""Gating on a local Ray instance (2 CPUs) with the tiny model, including an actor that dies.

One Ray instance serves the whole module: starting one is the slow part.
"""

from __future__ import annotations

import functools
import json
import os
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray.data")
pytest.importorskip("sentence_transformers.cross_encoder.modules")

from tests.fake_servers import FakeRerankServer, reference_probability
from tests.tiny_zerank import build_tiny_zerank, sample_text
from zerank_core.cache import CachedScorer
from zerank_core.criteria import Criterion
from zerank_core.dedupe import ModelDetector
from zerank_core.distributed import (
    GateRow,
    _GateWorker,
    documents_dataset,
    gate_dataset,
    gate_on_ray,
    rows_of,
    run_on_ray,
)
from zerank_core.errors import ConfigurationError
from zerank_core.gate import PageGate
from zerank_core.loaders import Document
from zerank_core.multi import gate_documents
from zerank_core.results import GateResult
from zerank_core.scorers.lexical import BM25Scorer
from zerank_core.scorers.local import LocalScorer
from zerank_core.scorers.server import RerankServerScorer
from zerank_core.select import SelectionPolicy

ROOT = Path(__file__).resolve().parent.parent
CRITERIA = [
    Criterion("renewal", "When is the renewal deadline?"),
    Criterion("pay", "Who pays the invoice?", instruction="Prefer amounts."),
]
POLICY = SelectionPolicy(threshold=0.3, top_k=2, order="original")


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[Any]:
    import ray

    # The workers import this package and this test module from the checkout.
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": path}},
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_zerank(tmp_path_factory.mktemp("tiny-zerank-ray"))


def documents(n: int = 6) -> list[Document]:
    rng = random.Random(9)
    return [
        Document.from_texts(
            [sample_text(rng, rng.randint(4, 30)) for _ in range(3 + i % 3)] + [""],
            source=f"packet-{i}.pdf",
        )
        for i in range(n)
    ]


class DiesOnceScorer(LocalScorer):
    """A LocalScorer whose process exits at the end of its second job, once per test.

    The job's scores are computed (and, under a cache, stored) but its batch's
    rows never leave the actor, as when a process is killed for memory.

    ``marker`` records that the death happened (a restarted actor finds it
    and carries on); ``starts`` gets one line per actor that built a scorer.
    """

    def __init__(self, model: str, marker: str, starts: str) -> None:
        super().__init__(model)
        self._marker = Path(marker)
        self._jobs = 0
        with Path(starts).open("a") as log:
            log.write(f"{os.getpid()}\n")

    def score_many(self, items: Sequence[Any], **kwargs: Any) -> list[list[float]]:
        self._jobs += 1
        scores = super().score_many(items, **kwargs)
        if self._jobs == 2 and not self._marker.exists():
            self._marker.write_text(str(os.getpid()))
            os._exit(1)  # as a process killed for memory or a lost node would
        return scores


def single_process_rows(model_dir: Path, docs: list[Document]) -> list[GateRow]:
    gate = PageGate(LocalScorer(str(model_dir)), POLICY)
    job = gate_documents(gate, docs, CRITERIA)
    return [row for i, r in enumerate(job.results) for row in rows_of(r, index=i)]


def assert_same_rows(got: list[GateRow], want: list[GateRow]) -> None:
    assert [(r.index, r.document, r.criterion) for r in got] == [
        (r.index, r.document, r.criterion) for r in want
    ]
    for a, b in zip(got, want, strict=True):
        assert a.pages == b.pages
        assert a.no_evidence == b.no_evidence
        assert (a.chars_kept, a.chars_total) == (b.chars_kept, b.chars_total)
        assert a.scores == pytest.approx(b.scores, abs=1e-5)
        assert a.page_scores[-1] is None  # the empty page, not scored
        assert a.page_scores[:-1] == pytest.approx(b.page_scores[:-1], abs=1e-5)


def scored_pages(document: Document) -> int:
    return sum(not p.is_empty for p in document.pages)


def test_an_actor_killed_mid_run_loses_no_page_or_criterion(
    ray_instance: Any, model_dir: Path, tmp_path: Path
) -> None:
    docs = documents()
    marker, starts = tmp_path / "died", tmp_path / "starts"
    factory = functools.partial(DiesOnceScorer, str(model_dir), str(marker), str(starts))
    cache = tmp_path / "scores.sqlite3"

    rows = gate_on_ray(
        docs,
        CRITERIA,
        scorer=factory,
        policy=POLICY,
        actors=2,
        documents_per_batch=1,
        include_context=True,
        cache=cache,
    )

    assert marker.exists()  # an actor did die in the middle of the run
    pids = [int(pid) for pid in starts.read_text().split()]
    # Actors build their scorer at their first cache miss, so which processes
    # build one depends on how Ray hands out the batches: the one that died did,
    # and at least one other process (its restart, or the other actor) finished
    # the rest; the rows below show that nothing was lost.
    dead = int(marker.read_text())
    assert dead in pids
    assert any(pid != dead for pid in pids)
    # Ray restarted the actor and resubmitted its batch: every row, same results.
    assert_same_rows(rows, single_process_rows(model_dir, docs))
    for row in rows:
        assert row.context is not None
        if row.pages:
            assert row.context.startswith(f"[page {row.pages[0]}]")

    # The dead actor stored its last batch's scores before dying: the resubmitted batch
    # (one document) was answered by the cache, every other document by the model.
    for row in rows:
        assert row.cache_hits is not None
        assert row.cache_misses is not None
        assert row.cache_hits + row.cache_misses == scored_pages(docs[row.index])
    from_cache = {r.index for r in rows if r.cache_hits}
    assert len(from_cache) == 1
    for row in rows:
        assert row.cache_misses == (0 if row.index in from_cache else scored_pages(docs[row.index]))

    # One process reading the same file, keyed the same way, makes no model call.
    with CachedScorer(LocalScorer(str(model_dir)), cache) as cached:
        job = gate_documents(PageGate(cached, POLICY), docs, CRITERIA)
        assert cached.stats.misses == 0
        assert cached.stats.hits == len(CRITERIA) * len(
            {p.text for d in docs for p in d.pages if p.text}
        )
    assert job.summary.model_requests == 0
    assert_same_rows([row for i, r in enumerate(job.results) for row in rows_of(r, index=i)], rows)


def test_an_actor_counts_each_rows_cache_hits_and_builds_the_detector_it_is_given(
    model_dir: Path, tmp_path: Path
) -> None:
    # The actor's class, called in this process as Ray Data calls it: no cluster needed.
    rng = random.Random(3)
    copy = sample_text(rng, 40)
    near = copy.replace(copy.split()[0], "changed", 1)
    docs = [
        Document.from_texts([copy, near, sample_text(rng, 30), ""], source="a.pdf"),
        *documents(2),
    ]
    batch = {
        "index": list(range(len(docs))),
        "document": [d.source for d in docs],
        "pages": [[p.text for p in d.pages] for d in docs],
    }
    policy = SelectionPolicy(threshold=None, top_k=2, dedupe=True)
    detector = functools.partial(ModelDetector, threshold=0.05)
    worker = _GateWorker(
        functools.partial(LocalScorer, str(model_dir)),
        CRITERIA,
        policy,
        None,
        False,
        cache=str(tmp_path / "scores.sqlite3"),
        duplicate_detector=detector,
    )
    assert isinstance(worker.gate.duplicate_detector, ModelDetector)
    assert worker.gate.duplicate_detector.scorer is worker.cache

    first = rows_from(worker(batch))
    second = rows_from(worker(batch))
    for before, again in zip(first, second, strict=True):
        pages = scored_pages(docs[before.index])
        assert (before.cache_hits, before.cache_misses) == (0, pages)
        assert (again.cache_hits, again.cache_misses) == (pages, 0)
        assert again.pages == before.pages

    scorer = LocalScorer(str(model_dir))
    gate = PageGate(scorer, policy, duplicate_detector=ModelDetector(scorer, threshold=0.05))
    job = gate_documents(gate, docs, CRITERIA)
    assert job.results[0].duplicates  # the near copy was judged by the model
    assert {d.method for d in job.results[0].duplicates} <= {"model", "exact"}
    want = [row for i, r in enumerate(job.results) for row in rows_of(r, index=i)]
    assert [(r.index, r.criterion, r.pages) for r in first] == [
        (r.index, r.criterion, r.pages) for r in want
    ]

    plain = _GateWorker(
        functools.partial(LocalScorer, str(model_dir)), CRITERIA, POLICY, None, False
    )
    assert plain.cache is None
    rows = rows_from(plain(batch))
    assert all(r.cache_hits is None and r.cache_misses is None for r in rows)


def rows_from(columns: dict[str, list[Any]]) -> list[GateRow]:
    """The rows of what an actor returns for a batch (Ray Data's columns)."""
    return [
        GateRow.from_record(dict(zip(columns, values, strict=True)))
        for values in zip(*columns.values(), strict=True)
    ]


def test_compress_ray_writes_what_compress_writes_in_process(
    ray_instance: Any, tmp_path: Path
) -> None:
    import io
    import json

    from zerank_core.calibrate import CriterionFit, ThresholdFit, ThresholdPolicy
    from zerank_core.cli import main

    for i, doc in enumerate(documents(3)):
        (tmp_path / f"packet-{i}.json").write_text(
            json.dumps([p.text for p in doc.pages]), encoding="utf-8"
        )
    criteria = tmp_path / "criteria.txt"
    criteria.write_text("\n".join(c.text for c in CRITERIA), encoding="utf-8")
    policy = ThresholdPolicy(
        fit=ThresholdFit("conformal", 0.9, 0.5, 30, 30, 0.92, 0.09),
        criteria={"C2": CriterionFit(0.8, 12, 12, 0.93)},
        backend={"name": "lexical"},
    ).save(tmp_path / "policy.json")
    common = [
        str(tmp_path / "packet-*.json"), "-c", str(criteria), "--backend", "lexical",
        "--policy", str(policy), "--cache", str(tmp_path / "scores.sqlite3"),
    ]  # fmt: skip

    def run(*extra: str) -> tuple[dict[str, Any], str]:
        out, err = io.StringIO(), io.StringIO()
        code = main(["compress", *common, "-o", "-", *extra], stdout=out, stderr=err)
        assert code == 0, err.getvalue()
        return dict(json.loads(out.getvalue())), err.getvalue()

    # In this process first: every score goes to the cache, which the Ray actors then
    # read under the same keys.
    here, _ = run()
    assert here["summary"]["cache"]["hits"] == 0
    on_ray, err = run("--ray", "--actors", "2", "--documents-per-batch", "2")
    assert f"cache: {tmp_path / 'scores.sqlite3'}, opened by each actor on its own node" in err
    assert " hits, 0 misses (page scores of every document × criterion)" in err
    assert "fitted on" not in err  # --backend lexical is what the policy was fitted on
    assert on_ray["summary"]["cache"]["misses"] == 0
    assert on_ray["summary"]["cache"]["hits"] == sum(
        len(d["document"]["pages"]) - len(d["report"]["empty_pages"]) for d in here["results"]
    ) * len(CRITERIA)
    ray = on_ray["summary"]["timings"]["ray"]
    assert (ray["actors"], ray["gpus_per_actor"]) == (2, 0)
    for got, want in zip(on_ray["results"], here["results"], strict=True):
        # The scores came from the cache on Ray, from the model here: only the usage and
        # the cache counts differ.
        for data in (got, want):
            for key in ("usage", "cache_hits", "cache_misses"):
                data["report"].pop(key)
        assert {**got, "timings": None} == {**want, "timings": None}
        assert (got["policy"]["threshold"], got["policy"]["top_k"]) == (0.5, None)
        thresholds = [c["criterion"]["threshold"] for c in got["results"]]
        assert thresholds == [0.5, 0.8]


def test_ray_and_one_process_write_the_same_bytes_but_for_timings(
    ray_instance: Any, tmp_path: Path
) -> None:
    from tests.cli_run import call

    pages = (ROOT / "cookbook" / "prior_auth" / "packet.txt").read_text(encoding="utf-8")
    pages_list = pages.split("\f")
    (tmp_path / "first.txt").write_text("\f".join(pages_list[:20]), encoding="utf-8")
    (tmp_path / "second.txt").write_text("\f".join(pages_list[20:]), encoding="utf-8")
    criteria = ROOT / "cookbook" / "prior_auth" / "criteria.yaml"
    common = [
        str(tmp_path / "first.txt"), str(tmp_path / "second.txt"), "-c", str(criteria),
        "--backend", "lexical", "--no-cache", "--dedupe",
    ]  # fmt: skip
    code, _, err = call("compress", *common, "-o", str(tmp_path / "here"))
    assert code == 0, err
    code, _, err = call("compress", *common, "--ray", "-o", str(tmp_path / "ray"))
    assert code == 0, err

    names = sorted(p.name for p in (tmp_path / "here").glob("*.json"))
    assert names == ["first.json", "second.json", "summary.json"]
    assert sorted(p.name for p in (tmp_path / "ray").glob("*.json")) == names
    for name in names:
        here = (tmp_path / "here" / name).read_text(encoding="utf-8")
        ray = (tmp_path / "ray" / name).read_text(encoding="utf-8")
        # Timings are every file's last field: all before them is the same, byte for byte.
        head = here.split('\n  "timings": ')[0]
        assert ray.split('\n  "timings": ')[0] == head
        assert set(json.loads(here)) == set(json.loads(ray))
    summary = json.loads((tmp_path / "ray" / "summary.json").read_text(encoding="utf-8"))
    assert summary["timings"]["ray"]["actors"] == 1
    # What --ray writes validates against the committed schemas, as the rest does.
    import jsonschema

    from zerank_core.results import SCHEMA_DIR

    def schema(name: str) -> Any:
        return json.loads((SCHEMA_DIR / name).read_text(encoding="utf-8"))

    jsonschema.validate(summary, schema("job-summary.schema.json"))
    for name in ("first.json", "second.json"):
        data = json.loads((tmp_path / "ray" / name).read_text(encoding="utf-8"))
        jsonschema.validate(data, schema("gate-result.schema.json"))
    result = GateResult.model_validate_json((tmp_path / "ray" / "first.json").read_text())
    assert result.document.source == str(tmp_path / "first.txt")
    assert result.backend is not None
    assert result.backend.name == "lexical"


def test_bad_arguments_fail_before_anything_runs(ray_instance: Any) -> None:
    docs = documents(1)
    factory = functools.partial(LocalScorer, "/nonexistent")
    with pytest.raises(ConfigurationError, match="actors must be an integer >= 1, got 0"):
        gate_dataset(documents_dataset(docs), CRITERIA, scorer=factory, actors=0)
    with pytest.raises(ConfigurationError, match="scorer must be a callable"):
        gate_dataset(documents_dataset(docs), CRITERIA, scorer="local")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="criterion ids must be unique"):
        gate_dataset(documents_dataset(docs), [CRITERIA[0]] * 2, scorer=factory)
    with pytest.raises(ConfigurationError, match="at least one Document"):
        documents_dataset([])
    with pytest.raises(ConfigurationError, match=r"documents\[0\] must be a Document"):
        documents_dataset(["a.pdf"])  # type: ignore[list-item]


def test_an_actor_that_cannot_open_the_cache_is_a_clear_error(
    ray_instance: Any, tmp_path: Path
) -> None:
    (tmp_path / "a-file").write_text("not a folder", encoding="utf-8")
    cache = tmp_path / "a-file" / "scores.sqlite3"
    with pytest.raises(ConfigurationError) as caught:
        gate_on_ray(documents(1), CRITERIA, scorer=BM25Scorer, cache=cache)
    message = str(caught.value)
    assert message.startswith("a Ray actor could not start: ConfigurationError: cannot use ")
    assert f"{cache} as a score cache" in message


@pytest.mark.parametrize("actors", [2, 4])
def test_limits_hold_for_the_whole_job_not_per_actor(ray_instance: Any, actors: int) -> None:
    """Every actor's scorer is told 480 requests/min and at most 2 in flight.

    The server admits 20 requests in any 2 s (600/min) and answers 429 above
    that. Paced per actor, 2 actors would send up to 2 × 480/min (30 in 2 s)
    and 4 twice that; paced for the job, they stay at 480/min (16 in 2 s).
    """
    server = FakeRerankServer(requests_per_minute=600, window_s=2.0, latency_s=0.01)
    try:
        factory = functools.partial(
            RerankServerScorer,
            f"{server.url}/v1/rerank",
            max_batch_size=2,
            max_concurrency=2,
            requests_per_minute=480,
        )
        docs = documents(8)
        run = run_on_ray(
            docs,
            CRITERIA,
            scorer=factory,
            policy=POLICY,
            actors=actors,
            documents_per_batch=1,
            num_cpus=2 / actors,
        )
        assert server.rate_limited == 0
        assert server.max_in_flight <= 2  # max_concurrency held for the job, too
        assert run.peak_in_flight <= 2
        assert run.requests == server.served == len(server.requests)
        assert run.actors_built == actors
        for row in run.rows:
            doc = docs[row.index]
            criterion = next(c for c in CRITERIA if c.id == row.criterion)
            query = (
                f"<query>{criterion.text}</query>\n<instruction>{criterion.instruction}"
                "</instruction>"
                if criterion.instruction
                else criterion.text
            )
            want = [reference_probability(query, p.text) for p in doc.pages if p.text]
            assert list(row.page_scores[:-1]) == pytest.approx(want)
    finally:
        server.close()


class LoggedScorer(LocalScorer):
    """A LocalScorer that notes each build (each model load) in a file."""

    def __init__(self, model: str, builds: str) -> None:
        with Path(builds).open("a") as log:
            log.write(f"{os.getpid()}\n")
        super().__init__(model)


def test_a_fully_cached_rerun_loads_no_model(
    ray_instance: Any, model_dir: Path, tmp_path: Path
) -> None:
    docs = documents(4)
    builds, cache = tmp_path / "builds", tmp_path / "scores.sqlite3"
    factory = functools.partial(LoggedScorer, str(model_dir), str(builds))
    common: dict[str, Any] = {
        "scorer": factory, "policy": POLICY, "actors": 2, "documents_per_batch": 1,
        "cache": cache,
    }  # fmt: skip

    first = run_on_ray(docs, CRITERIA, **common)
    assert 1 <= first.actors_built <= 2
    assert len(builds.read_text().split()) == first.actors_built
    assert all(r.cache_hits == 0 for r in first.rows)

    again = run_on_ray(docs, CRITERIA, **common)
    assert again.actors_built == 0
    assert len(builds.read_text().split()) == first.actors_built  # no model was loaded
    assert all(r.cache_misses == 0 for r in again.rows)
    assert_same_rows(list(again.rows), single_process_rows(model_dir, docs))

    # One new document: only an actor that meets a miss builds its scorer.
    more = [*docs, *documents(5)[4:]]
    third = run_on_ray(more, CRITERIA, **common)
    assert third.actors_built == 1
    assert [r.cache_misses == 0 for r in third.rows] == [r.index < 4 for r in third.rows]


def test_an_actor_whose_scorer_is_not_the_one_described_starts_its_batch_again(
    model_dir: Path, tmp_path: Path
) -> None:
    import sqlite3

    docs = documents(2)
    batch = {
        "index": [0, 1],
        "document": [d.source for d in docs],
        "pages": [[p.text for p in d.pages] for d in docs],
    }
    cache = str(tmp_path / "scores.sqlite3")
    factory = functools.partial(LocalScorer, str(model_dir))
    first = rows_from(_GateWorker(factory, CRITERIA, POLICY, None, False, cache=cache)(batch))
    # The file now says what this factory builds; make it say something else.
    with sqlite3.connect(cache) as db:
        (description,) = db.execute("SELECT description FROM scorer_descriptions").fetchone()
        other = description.replace('"backend\\": \\"local', '"backend\\": \\"other')
        assert other != description
        db.execute("UPDATE scorer_descriptions SET description = ?", (other,))
    worker = _GateWorker(factory, CRITERIA, POLICY, None, False, cache=cache)
    assert worker.built is None  # lazy, trusting the description
    again = rows_from(worker(batch))
    assert worker.built is not None
    assert [(r.pages, r.cache_misses) for r in again] == [(r.pages, 0) for r in first]
    with sqlite3.connect(cache) as db:
        (restored,) = db.execute("SELECT description FROM scorer_descriptions").fetchone()
    assert restored == description


def test_compress_ray_writes_each_document_as_it_finishes_and_a_killed_driver_resumes(
    ray_instance: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json
    import signal
    import subprocess
    import sys
    import time

    from tests.cli_run import call
    from zerank_core.cli._progress import PROGRESS_FILE

    docs = documents(4)
    for i, doc in enumerate(docs):
        (tmp_path / f"packet-{i}.json").write_text(
            json.dumps([p.text for p in doc.pages]), encoding="utf-8"
        )
    criteria = tmp_path / "criteria.txt"
    criteria.write_text("\n".join(c.text for c in CRITERIA), encoding="utf-8")
    results, cache = tmp_path / "results", tmp_path / "scores.sqlite3"
    # One actor, one document and one request at a time: two requests per document.
    # The server answers five, then holds the next until the driver is killed.
    server = FakeRerankServer(block_after=5)
    address = ray_instance.get_runtime_context().gcs_address
    common = [
        *(str(tmp_path / f"packet-{i}.json") for i in range(4)), "-c", str(criteria),
        "--server-url", f"{server.url}/v1/rerank", "--cache", str(cache), "--ray", address,
        "--documents-per-batch", "1", "-o", str(results),
    ]  # fmt: skip
    try:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        }
        driver = subprocess.Popen(
            [sys.executable, "-m", "zerank_core.cli", "compress", *common,
             "--max-concurrency", "1"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            # Killed once the request is held and a first document's file is written
            # (the driver receives each document's rows shortly after its batch ends).
            progress = results / PROGRESS_FILE
            deadline = time.monotonic() + 300
            while driver.poll() is None and not (server.blocked and progress.exists()):
                assert time.monotonic() < deadline, "the driver never reached the held request"
                time.sleep(0.05)
            assert driver.poll() is None
            driver.send_signal(signal.SIGKILL)
        finally:
            driver.wait()
        written = sorted(p.name for p in results.iterdir())
        assert not [name for name in written if name.endswith(".partial")]
        done = [name for name in written if name.endswith(".json") and name != "summary.json"]
        assert "summary.json" not in written
        # Two documents were complete on the actor, the third was in flight.
        assert 1 <= len(done) <= 2
        for name in done:
            assert json.loads((results / name).read_text(encoding="utf-8"))["results"]
        assert len(progress.read_text(encoding="utf-8").splitlines()) == len(done)

        server.block_after = None  # the killed driver's request stays held until close
        server.reset_stats()
        monkeypatch.setenv("ZERANK_MAX_CONCURRENCY", "1")  # the limit, from the environment
        code, _, err = call("compress", *common)
        assert code == 0, err
        assert "limits for the whole job: max concurrency 1" in err
        assert f"resume: {len(done)} of 4 documents already done in {results}/" in err
        # What the killed run had scored came from the cache: only the rest was sent.
        assert server.served == 3
        summary = json.loads((results / "summary.json").read_text(encoding="utf-8"))
        assert summary["resumed"] == len(done)
        # The killed driver's held request still counts at the server: ask the limiter.
        assert summary["timings"]["ray"]["peak_in_flight"] == 1
        assert summary["cache"]["hits"] > 0
        assert len(summary["files"]) == 4

        # Everything done: a rerun starts no actor and loads nothing.
        code, _, err = call("compress", *common)
        assert code == 0, err
        assert "resume: 4 of 4 documents already done" in err
        assert "backend built by 0 of 1 actor(s)" in err
    finally:
        server.close()
