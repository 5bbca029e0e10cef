"""Loaded open weights are shared in the process: one load per set of load settings.

Loads are counted by what loading does, not by patching the loader: every
load of a folder reads its ``modules.json`` once (an ``open`` audit event),
and scorers that share a load hold the very same ``CrossEncoder`` object.
"""

from __future__ import annotations

import copy
import gc
import os
import pickle
import shutil
import sys
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("sentence_transformers.cross_encoder.modules")

from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import (
    ConfigurableField,
    ConfigurableFieldSingleOption,
    RunnableLambda,
)
from llama_index.core import VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import NodeWithScore, TextNode

from langchain_zerank import ZeRankClassifier, ZeRankCompressor
from llamaindex_zerank import ZeRankPostprocessor, ZeRankSelector
from tests.tiny_zerank import build_tiny_zerank
from zerank_core.errors import ConfigurationError
from zerank_core.scorers.local import LocalScorer

QUERY = "When is the invoice payment due?"
TEXTS = [
    "The invoice payment is due within 30 days of the written notice.",
    "Server latency rose after the retry budget was spent.",
    "The board meeting reviewed quarter revenue growth.",
]
LABELS = {"billing": "invoice payment amount due", "ops": "server latency error retry"}

# Paths whose opens are counted; the hook stays installed (audit hooks cannot be
# removed), so it does nothing unless a test watches a path.
_WATCHED: dict[str, int] = {}


def _count_opens(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and _WATCHED and isinstance(args[0], str) and args[0] in _WATCHED:
        _WATCHED[args[0]] += 1


sys.addaudithook(_count_opens)


class Loads:
    """How many times a model folder has been loaded since this counter was made."""

    def __init__(self, folder: Path) -> None:
        self.path = str(folder / "modules.json")
        _WATCHED[self.path] = 0

    @property
    def count(self) -> int:
        return _WATCHED[self.path]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_zerank(tmp_path_factory.mktemp("reuse") / "tiny")


@pytest.fixture
def loads(model_dir: Path) -> Iterator[Loads]:
    # Scorers left over from another test would hold the model and hide a load.
    gc.collect()
    counter = Loads(model_dir)
    yield counter
    _WATCHED.pop(counter.path, None)


def test_same_settings_load_once_and_keep_their_own_counts(model_dir: Path, loads: Loads) -> None:
    first = LocalScorer(str(model_dir), device="cpu")
    second = LocalScorer(str(model_dir), device="cpu", batch_tokens=512, window_overlap=8)

    assert loads.count == 1
    assert second.cross_encoder is first.cross_encoder
    assert second.cache_identity != first.cache_identity  # window_overlap changes scores
    assert first.stats.fast
    assert second.stats.fast
    assert first.score(QUERY, TEXTS) == pytest.approx(second.score(QUERY, TEXTS), abs=1e-5)
    first.score(QUERY, TEXTS[:1])
    assert (first.usage.texts, second.usage.texts) == (len(TEXTS) + 1, len(TEXTS))
    assert first.stats.prompt_tokens > second.stats.prompt_tokens


def test_a_folder_named_two_ways_is_one_model(
    model_dir: Path, loads: Loads, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(model_dir.parent)
    absolute = LocalScorer(str(model_dir), device="cpu")
    relative = LocalScorer(f"./{model_dir.name}", device="cpu")

    assert loads.count == 1
    assert relative.cross_encoder is absolute.cross_encoder


def test_a_configured_langchain_call_reuses_the_loaded_model(model_dir: Path, loads: Loads) -> None:
    classifier = ZeRankClassifier(model=str(model_dir), device="cpu", labels=LABELS, default="none")
    chain = RunnableLambda(str.strip) | classifier.configurable_fields(
        threshold=ConfigurableField(id="floor")
    )
    assert loads.count == 1

    # Each configured call builds a new classifier from the fields, with its own scorer.
    low = chain.invoke(f" {QUERY} ", config={"configurable": {"floor": 0.0}})
    high = chain.invoke(f" {QUERY} ", config={"configurable": {"floor": 1.0}})

    assert low.label in LABELS
    assert high.label == "none"
    assert loads.count == 1


class FixedRetriever(BaseRetriever):
    """Returns the same documents for any query."""

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        return [Document(page_content=text, id=str(i)) for i, text in enumerate(TEXTS)]


def test_compressors_chosen_per_call_in_a_retriever_share_one_load(
    model_dir: Path, loads: Loads
) -> None:
    options = {
        str(n): ZeRankCompressor(model=str(model_dir), device="cpu", top_n=n, threshold=None)
        for n in (1, 2)
    }
    retriever = ContextualCompressionRetriever(
        base_compressor=options["1"], base_retriever=FixedRetriever()
    ).configurable_fields(
        base_compressor=ConfigurableFieldSingleOption(id="top_n", options=options, default="1")
    )

    one = retriever.invoke(QUERY, config={"configurable": {"top_n": "1"}})
    two = retriever.invoke(QUERY, config={"configurable": {"top_n": "2"}})

    assert (len(one), len(two)) == (1, 2)
    assert one[0].id == two[0].id
    assert loads.count == 1
    assert options["1"].get_scorer().cross_encoder is options["2"].get_scorer().cross_encoder


def test_adapters_of_both_frameworks_share_the_model(model_dir: Path, loads: Loads) -> None:
    compressor = ZeRankCompressor(model=str(model_dir), device="cpu", top_n=2, threshold=None)
    postprocessors = [
        ZeRankPostprocessor(model=str(model_dir), device="cpu", top_n=n, threshold=None)
        for n in (1, 2)
    ]
    selector = ZeRankSelector(model=str(model_dir), device="cpu")

    assert loads.count == 1
    shared = compressor.get_scorer().cross_encoder
    assert all(p.scorer.cross_encoder is shared for p in postprocessors)
    assert selector.scorer.cross_encoder is shared

    # One query engine per postprocessor, as an app with several engines has.
    nodes = [TextNode(text=text, id_=f"node-{i}") for i, text in enumerate(TEXTS)]
    index = VectorStoreIndex(nodes, embed_model=MockEmbedding(embed_dim=8))
    kept = []
    for postprocessor in postprocessors:
        retriever = index.as_retriever(similarity_top_k=3)
        engine = RetrieverQueryEngine.from_args(
            retriever, llm=MockLLM(), node_postprocessors=[postprocessor]
        )
        kept.append([n.node.node_id for n in engine.query(QUERY).source_nodes])
    documents = [Document(page_content=text) for text in TEXTS]
    best = compressor.compress_documents(documents, QUERY)[0].page_content

    assert [len(k) for k in kept] == [1, 2]
    assert kept[0][0] == f"node-{TEXTS.index(best)}"
    assert loads.count == 1


@pytest.mark.parametrize(
    "settings",
    [
        {"dtype": "bfloat16"},
        {"max_length": 256},
        {"fast": False},
        {"model_kwargs": {"attn_implementation": "eager"}},
    ],
    ids=lambda settings: next(iter(settings)),
)
def test_different_load_settings_load_separately(
    model_dir: Path, loads: Loads, settings: dict[str, Any]
) -> None:
    plain = LocalScorer(str(model_dir), device="cpu")
    other = LocalScorer(str(model_dir), device="cpu", **settings)
    again = LocalScorer(str(model_dir), device="cpu", **settings)

    assert loads.count == 2
    assert other.cross_encoder is not plain.cross_encoder
    assert again.cross_encoder is other.cross_encoder
    assert plain.max_length != 256  # so that the max_length case is a different setting
    if "fast" in settings:
        assert plain.stats.fast
        assert not other.stats.fast


def test_another_folder_or_replaced_weights_load_anew(model_dir: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(model_dir, tmp_path / "copy")
    original = LocalScorer(str(model_dir), device="cpu")
    loads = Loads(folder)
    copied = LocalScorer(str(folder), device="cpu")
    assert loads.count == 1
    assert copied.cross_encoder is not original.cross_encoder

    # New weights saved into the same folder (as after fine-tuning) are not the loaded ones.
    build_tiny_zerank(folder, seed=1)
    stamp = os.stat(folder / "model.safetensors").st_mtime_ns + 1_000_000_000
    os.utime(folder / "model.safetensors", ns=(stamp, stamp))
    loads = Loads(folder)
    retrained = LocalScorer(str(folder), device="cpu")

    assert loads.count == 1
    assert retrained.cross_encoder is not copied.cross_encoder
    assert retrained.score(QUERY, TEXTS) != pytest.approx(copied.score(QUERY, TEXTS), abs=1e-4)
    _WATCHED.pop(loads.path)


def test_dropping_every_holder_frees_the_model(model_dir: Path, loads: Loads) -> None:
    compressor = ZeRankCompressor(model=str(model_dir), device="cpu")
    postprocessor = ZeRankPostprocessor(model=str(model_dir), device="cpu")
    model = weakref.ref(compressor.get_scorer().cross_encoder)

    del compressor
    gc.collect()
    assert model() is not None  # the postprocessor still holds it

    del postprocessor
    gc.collect()
    assert model() is None

    LocalScorer(str(model_dir), device="cpu")
    assert loads.count == 2


def test_threads_building_at_once_load_once(model_dir: Path, loads: Loads) -> None:
    start = threading.Barrier(2)
    built: list[LocalScorer] = []
    errors: list[BaseException] = []

    def build() -> None:
        try:
            start.wait()
            built.append(LocalScorer(str(model_dir), device="cpu"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert loads.count == 1
    assert built[0].cross_encoder is built[1].cross_encoder


def test_scorers_sharing_a_model_score_from_threads_at_once(model_dir: Path, loads: Loads) -> None:
    scorers = [LocalScorer(str(model_dir), device="cpu") for _ in range(4)]
    expected = scorers[0].score(QUERY, TEXTS)
    results: list[list[float]] = []

    def run(scorer: LocalScorer) -> None:
        for _ in range(5):
            results.append(scorer.score(QUERY, TEXTS))

    threads = [threading.Thread(target=run, args=(s,)) for s in scorers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(results) == 20
    assert all(r == pytest.approx(expected, abs=1e-5) for r in results)


def test_pickles_and_copies_rebuild_from_settings_and_share(model_dir: Path, loads: Loads) -> None:
    scorer = LocalScorer(str(model_dir), device="cpu", window_overlap=16, batch_tokens=1024)

    for restored in (pickle.loads(pickle.dumps(scorer)), copy.deepcopy(scorer)):
        assert isinstance(restored, LocalScorer)
        assert restored.cross_encoder is scorer.cross_encoder
        assert restored.cache_identity == scorer.cache_identity
        assert (restored.window_overlap, restored.batch_tokens) == (16, 1024)
        assert restored.usage.texts == 0

    compressor = ZeRankCompressor(model=str(model_dir), device="cpu", top_n=1)
    unpickled = pickle.loads(pickle.dumps(compressor))
    assert unpickled.get_scorer() is not compressor.get_scorer()
    assert unpickled.get_scorer().cross_encoder is compressor.get_scorer().cross_encoder
    assert loads.count == 1


def test_closing_one_component_leaves_the_others_working(model_dir: Path, loads: Loads) -> None:
    closed = ZeRankCompressor(model=str(model_dir), device="cpu", top_n=1, threshold=None)
    other = ZeRankPostprocessor(model=str(model_dir), device="cpu", top_n=1, threshold=None)

    closed.close()

    nodes = [NodeWithScore(node=TextNode(text=text)) for text in TEXTS]
    assert len(other.postprocess_nodes(nodes, query_str=QUERY)) == 1
    assert len(closed.compress_documents([Document(page_content=TEXTS[0])], QUERY)) == 1
    assert loads.count == 1


def test_a_failed_load_is_not_remembered(model_dir: Path, loads: Loads) -> None:
    for _ in range(2):
        with pytest.raises(ConfigurationError, match="max_length must be <="):
            LocalScorer(str(model_dir), device="cpu", max_length=10**7)

    LocalScorer(str(model_dir), device="cpu")

    assert loads.count == 3
