"""The SQLite score cache: hits, misses, keys, no text on disk, concurrent use."""

from __future__ import annotations

import asyncio
import math
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.fake_servers import FakeRerankServer
from zerank_core import InvalidResponseError
from zerank_core.cache import CachedScorer, ScoreStore, default_cache_path, score_key
from zerank_core.documents import PageGate, load_criteria, load_document
from zerank_core.errors import ConfigurationError
from zerank_core.scorers.base import Scale
from zerank_core.scorers.lexical import BM25Scorer
from zerank_core.scorers.server import RerankServerScorer

COOKBOOK = Path(__file__).resolve().parent.parent / "cookbook" / "prior_auth"


class Recorder:
    """A real scorer: scores are the text's length modulo 10, over 10; records calls."""

    model = "recorder"
    scale = Scale.PROBABILITY
    usage = None

    def __init__(self, bad: object = None) -> None:
        self.calls: list[list[str]] = []
        self.bad = bad
        self._lock = threading.Lock()

    def score(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        with self._lock:
            self.calls.append(list(texts))
        scores = [(len(t) % 10) / 10 for t in texts]
        if self.bad is not None:
            scores[0] = self.bad  # type: ignore[call-overload]
        return scores

    async def ascore(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        return self.score(query, texts, instruction=instruction)


def test_second_run_over_the_packet_makes_no_model_calls(
    tmp_path: Path, fake_server: FakeRerankServer
) -> None:
    document = load_document(COOKBOOK / "packet.txt")
    criteria = load_criteria(COOKBOOK / "criteria.yaml")
    path = tmp_path / "scores.sqlite3"

    def run() -> list[tuple[float | None, ...]]:
        with CachedScorer(RerankServerScorer(f"{fake_server.url}/v1/rerank"), path) as scorer:
            return list(PageGate(scorer).run(document, criteria).matrix)

    first = run()
    calls_after_first = len(fake_server.requests)
    assert calls_after_first > 0
    second = run()
    assert len(fake_server.requests) == calls_after_first
    assert second == first


def test_cache_file_holds_no_page_or_query_text(tmp_path: Path) -> None:
    path = tmp_path / "scores.sqlite3"
    document = load_document(COOKBOOK / "packet.txt")
    criteria = load_criteria(COOKBOOK / "criteria.yaml")
    with CachedScorer(Recorder(), path) as scorer:
        PageGate(scorer).run(document, criteria)
        assert scorer.info().entries == 40 * len(criteria)
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    for needle in ("QuantiFERON", "Okafor", "methotrexate", "Hyrimoz", "rheumatologist"):
        assert needle.encode() not in raw
        assert needle.encode("utf-16-le") not in raw
    assert b"Inadequate response" not in raw


def test_hits_misses_and_duplicates(tmp_path: Path) -> None:
    recorder = Recorder()
    with CachedScorer(recorder, tmp_path / "c.sqlite3") as scorer:
        assert scorer.score("q", ["a", "bb", "a"]) == [0.1, 0.2, 0.1]
        assert recorder.calls == [["a", "bb"]]
        assert scorer.score("q", ["bb", "ccc", "a"]) == [0.2, 0.3, 0.1]
        assert recorder.calls[-1] == ["ccc"]
        assert (scorer.stats.hits, scorer.stats.misses) == (3, 3)
        assert scorer.score("q", []) == []


def test_key_covers_model_scale_instruction_and_query(tmp_path: Path) -> None:
    base = score_key("zerank-2", "probability", None, "q", "text")
    assert score_key("zerank-1-small", "probability", None, "q", "text") != base
    assert score_key("zerank-2", "uncalibrated", None, "q", "text") != base
    assert score_key("zerank-2", "probability", "instr", "q", "text") != base
    assert score_key("zerank-2", "probability", None, "q2", "text") != base
    # Framing is unambiguous: moving characters between fields changes the key.
    assert score_key("m", "s", None, "ab", "c") != score_key("m", "s", None, "a", "bc")

    recorder = Recorder()
    with CachedScorer(recorder, tmp_path / "c.sqlite3") as scorer:
        scorer.score("q", ["x"])
        scorer.score("q", ["x"], instruction="only labs")
        scorer.score("other", ["x"])
        assert len(recorder.calls) == 3
    with CachedScorer(Recorder(), tmp_path / "c.sqlite3", model="another-model") as other:
        other.score("q", ["x"])
        assert other.stats.misses == 1


def test_cache_persists_and_clears(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    with CachedScorer(Recorder(), path) as scorer:
        scorer.score("q", ["a", "b"])
    recorder = Recorder()
    with CachedScorer(recorder, path) as again:
        again.score("q", ["a", "b"])
        assert recorder.calls == []
        assert again.clear() == 2
        assert again.info().entries == 0
        again.score("q", ["a", "b"])
        assert recorder.calls == [["a", "b"]]


def test_invalid_scores_are_errors_and_never_stored(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    for bad in (math.nan, "0.3", math.inf):
        with (
            CachedScorer(Recorder(bad=bad), path) as scorer,
            pytest.raises(InvalidResponseError, match="as score 0 \\(scorer 'recorder'\\)"),
        ):
            scorer.score("q", ["a", "b"])
    store = ScoreStore(path)
    assert store.info().entries == 0
    store.close()


def test_a_scorer_must_declare_its_model_scale_and_usage(tmp_path: Path) -> None:
    class Anonymous:
        """A scorer written before the contract named its model, scale and usage."""

        def score(
            self, query: str, texts: Sequence[str], *, instruction: str | None = None
        ) -> list[float]:
            return [0.5] * len(texts)

        async def ascore(
            self, query: str, texts: Sequence[str], *, instruction: str | None = None
        ) -> list[float]:
            return [0.5] * len(texts)

    with pytest.raises(ConfigurationError, match="Anonymous lacks model, scale, usage"):
        CachedScorer(Anonymous(), tmp_path / "c.sqlite3")


def test_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    path.write_bytes(b"definitely not sqlite" * 100)
    with pytest.raises(ConfigurationError, match=r"cannot use .* as a score cache"):
        CachedScorer(Recorder(), path)


def test_bm25_scores_are_cached_per_whole_call(tmp_path: Path) -> None:
    bm25 = BM25Scorer()
    with CachedScorer(bm25, tmp_path / "c.sqlite3") as scorer:
        assert not scorer.pairwise
        corpus = ["tuberculosis screening negative", "methotrexate weekly", "tuberculosis"]
        first = scorer.score("tuberculosis", corpus)
        assert first == bm25.score("tuberculosis", corpus)
        requests = bm25.usage.requests
        assert scorer.score("tuberculosis", corpus) == first
        assert bm25.usage.requests == requests
        # A subset is another corpus: its max-scaled scores differ, so it is rescored.
        subset = scorer.score("tuberculosis", corpus[:2])
        assert subset == bm25.score("tuberculosis", corpus[:2])
        assert scorer.stats.hits == 3


async def test_async_scoring_shares_the_cache(tmp_path: Path) -> None:
    recorder = Recorder()
    with CachedScorer(recorder, tmp_path / "c.sqlite3") as scorer:
        results = await asyncio.gather(*(scorer.ascore(f"q{i}", ["a", "bb"]) for i in range(8)))
        assert all(r == [0.1, 0.2] for r in results)
        assert await scorer.ascore("q0", ["a", "bb"]) == [0.1, 0.2]
        assert len(recorder.calls) == 8
        assert scorer.stats.hits == 2


def test_threads_share_one_cache(tmp_path: Path) -> None:
    recorder = Recorder()
    with CachedScorer(recorder, tmp_path / "c.sqlite3") as scorer:
        errors: list[BaseException] = []

        def work(n: int) -> None:
            try:
                for i in range(20):
                    assert scorer.score(f"q{i % 5}", [f"t{n}", "shared"])[1] == 0.6
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert scorer.info().entries == 5 * 9


WRITER = """
import sys
from zerank_core.cache import CachedScorer
from zerank_core.scorers.base import Scale

class Lengths:
    model = "lengths"
    scale = Scale.PROBABILITY
    usage = None
    def score(self, query, texts, *, instruction=None):
        return [(len(t) % 10) / 10 for t in texts]
    async def ascore(self, query, texts, *, instruction=None):
        return self.score(query, texts)

with CachedScorer(Lengths(), sys.argv[1]) as scorer:
    for i in range(40):
        scorer.score(f"q{i}", [f"{sys.argv[2]}-{j}" for j in range(10)] + ["shared"])
"""


def test_processes_write_one_file_concurrently(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    root = Path(__file__).resolve().parent.parent
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), name], cwd=root)
        for name in ("a", "b", "c")
    ]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0]
    store = ScoreStore(path)
    assert store.info().entries == 40 * (3 * 10 + 1)
    store.close()


def test_opening_a_new_file_another_process_is_creating_waits_for_it(tmp_path: Path) -> None:
    # Another connection holds a write lock on a file still in rollback-journal mode, as a
    # second Ray actor does while it creates the cache: switching to WAL is refused at
    # once (no busy timeout), so the store retries until the lock is gone.
    path = tmp_path / "c.sqlite3"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("CREATE TABLE other (x)")
    release = threading.Timer(0.3, holder.execute, ("COMMIT",))
    release.start()
    try:
        store = ScoreStore(path, timeout=10)
    finally:
        release.join()
        holder.close()
    store.store([(b"k", 0.5)])
    assert store.lookup([b"k"]) == {b"k": 0.5}
    assert store._db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    store.close()

    # Still locked when the timeout runs out: the error names the file.
    holder = sqlite3.connect(tmp_path / "d.sqlite3", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("CREATE TABLE other (x)")
    with pytest.raises(ConfigurationError, match=r"cannot use .*d\.sqlite3 .*locked"):
        ScoreStore(tmp_path / "d.sqlite3", timeout=0.2)
    holder.close()


def test_default_path_follows_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZERANK_CACHE", str(tmp_path / "mine.sqlite3"))
    assert default_cache_path() == tmp_path / "mine.sqlite3"
    monkeypatch.delenv("ZERANK_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_path() == tmp_path / "xdg" / "zerank-gate" / "scores.sqlite3"
