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

from tests.tiny_zerank import build_tiny_zerank, sample_text
from zerank_core.cache import CachedScorer
from zerank_core.criteria import Criterion
from zerank_core.dedupe import ModelDetector
from zerank_core.distributed import (
    _GateWorker,
    documents_dataset,
    gate_dataset,
    gate_on_ray,
)
from zerank_core.errors import ConfigurationError
from zerank_core.gate import PageGate
from zerank_core.loaders import Document
from zerank_core.multi import gate_documents
from zerank_core.results import GateResult, MultiResult
from zerank_core.scorers.lexical import BM25Scorer
from zerank_core.scorers.local import LocalScorer
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


def single_process(model_dir: Path, docs: list[Document]) -> MultiResult:
    gate = PageGate(LocalScorer(str(model_dir)), POLICY)
    return gate_documents(gate, docs, CRITERIA)


def assert_same_results(got: MultiResult, want: MultiResult) -> None:
    """The same pages kept, and the same scores up to the model's batch noise."""
    assert [r.document for r in got.results] == [r.document for r in want.results]
    for a, b in zip(got.results, want.results, strict=True):
        assert a.report.chars_kept == b.report.chars_kept
        assert a.report.chars_total == b.report.chars_total
        for x, y in zip(a.results, b.results, strict=True):
            assert x.criterion == y.criterion
            assert x.pages == y.pages
            assert x.no_evidence == y.no_evidence
            assert set(x.scores) == set(y.scores)
            assert len(x.scores) == len(a.document.pages) - 1  # the empty page, not scored
            assert list(x.scores.values()) == pytest.approx(list(y.scores.values()), abs=1e-5)


def scored_pages(document: Document) -> int:
    return sum(not p.is_empty for p in document.pages)


def test_an_actor_killed_mid_run_loses_no_page_or_criterion(
    ray_instance: Any, model_dir: Path, tmp_path: Path
) -> None:
    docs = documents()
    marker, starts = tmp_path / "died", tmp_path / "starts"
    factory = functools.partial(DiesOnceScorer, str(model_dir), str(marker), str(starts))
    cache = tmp_path / "scores.sqlite3"

    job = gate_on_ray(
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
    pids = starts.read_text().split()
    assert len(pids) >= 3  # two actors, and at least one restart
    assert int(marker.read_text()) in map(int, pids)
    # Ray restarted the actor and resubmitted its batch: every document, same results.
    assert_same_results(job, single_process(model_dir, docs))
    for result in job.results:
        for item in result.results:
            assert item.context is not None
            if item.pages:
                assert item.context.startswith(f"[page {item.pages[0]}]")

    # The dead actor stored its last batch's scores before dying: the resubmitted batch
    # (one document) was answered by the cache, every other document by the model.
    lookups = [len(CRITERIA) * len({p.text for p in d.pages if p.text}) for d in docs]
    assert job.summary.cache is not None
    assert job.summary.cache.path == str(cache)
    assert job.summary.cache.hits in lookups
    assert job.summary.cache.hits + job.summary.cache.misses == sum(lookups)

    # One process reading the same file, keyed the same way, makes no model call.
    with CachedScorer(LocalScorer(str(model_dir)), cache) as cached:
        again = gate_documents(PageGate(cached, POLICY), docs, CRITERIA)
        assert cached.stats.misses == 0
        assert cached.stats.hits == len(CRITERIA) * len(
            {p.text for d in docs for p in d.pages if p.text}
        )
    assert again.summary.model_requests == 0
    assert_same_results(again, job)


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

    first = worker(batch)
    second = worker(batch)
    # Every page × criterion, and the pairs the model detector judged: once each.
    lookups = len(CRITERIA) * len({p.text for d in docs for p in d.pages if p.text})
    missed = first["cache_misses"][0]
    assert missed > lookups
    assert (first["cache_hits"], first["cache_misses"]) == ([0, 0, 0], [missed, 0, 0])
    assert (second["cache_hits"], second["cache_misses"]) == ([missed, 0, 0], [0, 0, 0])
    assert [
        [r.pages for r in GateResult.model_validate_json(t).results] for t in first["result"]
    ] == [[r.pages for r in GateResult.model_validate_json(t).results] for t in second["result"]]

    scorer = LocalScorer(str(model_dir))
    gate = PageGate(scorer, policy, duplicate_detector=ModelDetector(scorer, threshold=0.05))
    job = gate_documents(gate, docs, CRITERIA)
    assert job.results[0].duplicates  # the near copy was judged by the model
    assert {d.method for d in job.results[0].duplicates} <= {"model", "exact"}
    got = [GateResult.model_validate_json(text) for text in first["result"]]
    assert [[(r.criterion.id, r.pages) for r in g.results] for g in got] == [
        [(r.criterion.id, r.pages) for r in w.results] for w in job.results
    ]

    plain = _GateWorker(
        functools.partial(LocalScorer, str(model_dir)), CRITERIA, POLICY, None, False
    )
    assert plain.cache is None
    columns = plain(batch)
    assert columns["cache_hits"] == columns["cache_misses"] == [0, 0, 0]


def test_compress_ray_writes_what_compress_writes_in_process(
    ray_instance: Any, tmp_path: Path
) -> None:
    import io

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
    assert "fitted on" not in err  # --backend lexical is what the policy was fitted on
    assert on_ray["summary"]["cache"]["misses"] == 0
    assert on_ray["summary"]["cache"]["hits"] >= here["summary"]["cache"]["misses"]
    assert on_ray["summary"]["timings"]["ray"] == {
        "address": None,
        "actors": 2,
        "gpus_per_actor": 0,
    }
    for got, want in zip(on_ray["results"], here["results"], strict=True):
        # The scores came from the cache on Ray, from the model here: only the usage and
        # the cache counts differ.
        assert got["report"].pop("usage")["requests"] == 0
        want["report"].pop("usage")
        assert got["report"].pop("cache_misses") == 0
        assert want["report"].pop("cache_hits") == 0
        got["report"].pop("cache_hits")
        want["report"].pop("cache_misses")
        assert {**got, "timings": None} == {**want, "timings": None}
        assert (got["policy"]["threshold"], got["policy"]["top_k"]) == (0.5, None)
        thresholds = [c["criterion"]["threshold"] for c in got["results"]]
        assert thresholds == [0.5, 0.8]


def test_ray_and_one_process_write_the_same_bytes_but_for_timings(
    ray_instance: Any, tmp_path: Path
) -> None:
    from tests.cli_run import call

    pages = (ROOT / "cookbook" / "prior_auth" / "packet.txt").read_text(encoding="utf-8")
    pages = pages.split("\f")
    (tmp_path / "first.txt").write_text("\f".join(pages[:20]), encoding="utf-8")
    (tmp_path / "second.txt").write_text("\f".join(pages[20:]), encoding="utf-8")
    criteria = ROOT / "cookbook" / "prior_auth" / "criteria.yaml"
    common = [
        str(tmp_path / "first.txt"), str(tmp_path / "second.txt"), "-c", str(criteria),
        "--backend", "lexical", "--no-cache", "--dedupe",
    ]  # fmt: skip
    code, _, err = call("compress", *common, "-o", str(tmp_path / "here"))
    assert code == 0, err
    code, _, err = call("compress", *common, "--ray", "-o", str(tmp_path / "ray"))
    assert code == 0, err

    names = sorted(p.name for p in (tmp_path / "here").iterdir())
    assert names == ["first.json", "second.json", "summary.json"]
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == names
    for name in names:
        here = (tmp_path / "here" / name).read_text(encoding="utf-8")
        ray = (tmp_path / "ray" / name).read_text(encoding="utf-8")
        # Timings are every file's last field: all before them is the same, byte for byte.
        head = here.split('\n  "timings": ')[0]
        assert ray.split('\n  "timings": ')[0] == head
        assert set(json.loads(here)) == set(json.loads(ray))
    summary = json.loads((tmp_path / "ray" / "summary.json").read_text(encoding="utf-8"))
    assert summary["timings"]["ray"]["actors"] == 1
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
