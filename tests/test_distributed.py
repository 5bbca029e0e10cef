"""Gating on a local Ray instance (2 CPUs) with the tiny model, including an actor that dies.

One Ray instance serves the whole module: starting one is the slow part.
"""

from __future__ import annotations

import functools
import os
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray.data")
pytest.importorskip("sentence_transformers.cross_encoder.modules")

from tests.tiny_zerank import build_tiny_zerank, sample_text
from zerank_core.criteria import Criterion
from zerank_core.distributed import (
    GateRow,
    documents_dataset,
    gate_dataset,
    gate_on_ray,
    rows_of,
)
from zerank_core.errors import ConfigurationError
from zerank_core.gate import PageGate
from zerank_core.loaders import Document
from zerank_core.multi import gate_documents
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
    """A LocalScorer whose process exits in the middle of its second job, once per test.

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
        if self._jobs == 2 and not self._marker.exists():
            self._marker.write_text(str(os.getpid()))
            os._exit(1)  # as a process killed for memory or a lost node would
        return super().score_many(items, **kwargs)


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


def test_an_actor_killed_mid_run_loses_no_page_or_criterion(
    ray_instance: Any, model_dir: Path, tmp_path: Path
) -> None:
    docs = documents()
    marker, starts = tmp_path / "died", tmp_path / "starts"
    factory = functools.partial(DiesOnceScorer, str(model_dir), str(marker), str(starts))

    rows = gate_on_ray(
        docs,
        CRITERIA,
        scorer=factory,
        policy=POLICY,
        actors=2,
        documents_per_batch=1,
        include_context=True,
    )

    assert marker.exists()  # an actor did die in the middle of the run
    pids = starts.read_text().split()
    assert len(pids) >= 3  # two actors, and at least one restart
    assert int(marker.read_text()) in map(int, pids)
    # Ray restarted the actor and resubmitted its batch: every row, same results.
    assert_same_rows(rows, single_process_rows(model_dir, docs))
    for row in rows:
        assert row.context is not None
        if row.pages:
            assert row.context.startswith(f"[page {row.pages[0]}]")


def test_compress_ray_writes_what_compress_writes_in_process(
    ray_instance: Any, tmp_path: Path
) -> None:
    import io
    import json

    from zerank_core.cli import main

    for i, doc in enumerate(documents(3)):
        (tmp_path / f"packet-{i}.json").write_text(
            json.dumps([p.text for p in doc.pages]), encoding="utf-8"
        )
    criteria = tmp_path / "criteria.txt"
    criteria.write_text("\n".join(c.text for c in CRITERIA), encoding="utf-8")
    common = [str(tmp_path / "packet-*.json"), "-c", str(criteria), "--backend", "lexical"]

    def run(*extra: str) -> dict[str, Any]:
        out, err = io.StringIO(), io.StringIO()
        code = main(["compress", *common, "--no-cache", "-o", "-", *extra], stdout=out, stderr=err)
        assert code == 0, err.getvalue()
        return dict(json.loads(out.getvalue()))

    on_ray = run("--ray", "--actors", "2", "--documents-per-batch", "2")
    here = run()
    assert on_ray["summary"]["rows"] == 3 * len(CRITERIA)
    for got, want in zip(on_ray["documents"], here["documents"], strict=True):
        assert got["document"] == want["document"]
        for a, b in zip(got["criteria"], want["criteria"], strict=True):
            assert (a["criterion"], a["pages"]) == (b["id"], b["pages"])
            assert a["scores"] == pytest.approx(b["scores"])
            assert a["context"] == b["context"]


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
