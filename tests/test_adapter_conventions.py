"""The adapters as a LangChain or LlamaIndex user meets them: names, backends, traces, pickles."""

from __future__ import annotations

import copy
import pickle
import re
import subprocess
import sys
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import pytest
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.load import dumpd
from langchain_core.vectorstores import InMemoryVectorStore
from llama_index.core.tools import ToolMetadata

from langchain_zerank import ZeRankClassifier, ZeRankCompressor, ZeroEntropyRerank
from llamaindex_zerank import ZeRankPostprocessor, ZeRankSelector
from tests.fake_servers import FakeRerankServer
from zerank_core import ConfigurationError, Scale
from zerank_core.scorers import BM25Scorer, RerankServerScorer, ZeroEntropyScorer
from zerank_core.scorers.auto import LIBRARY, nothing_configured

KEY = "ze-adapter-secret-key-4242"
QUERY = "apple banana cherry date"
TEXTS = ["apple pie", "banana cherry smoothie", "plain water", "apple banana cherry date salad"]
LABELS = {"fruit": "apple banana cherry", "drink": "water smoothie"}


class Overlap:
    """Share of the query's words found in the text (picklable, module level)."""

    model = "overlap"
    scale = Scale.PROBABILITY
    usage = None

    def score(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        words = set(re.findall(r"\w+", query.lower()))
        return [len(words & set(re.findall(r"\w+", t.lower()))) / len(words) for t in texts]

    async def ascore(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        return self.score(query, texts, instruction=instruction)


def documents() -> list[Document]:
    return [Document(t, id=f"d{i}") for i, t in enumerate(TEXTS)]


ADAPTERS: dict[str, Any] = {
    "compressor": lambda **kw: ZeRankCompressor(**kw),
    "classifier": lambda **kw: ZeRankClassifier(labels=LABELS, **kw),
    "postprocessor": lambda **kw: ZeRankPostprocessor(**kw),
    "selector": lambda **kw: ZeRankSelector(**kw),
}


def scorer_of(adapter: Any) -> Any:
    return adapter.get_scorer() if hasattr(adapter, "get_scorer") else adapter.scorer


# --- one way to choose a backend ---------------------------------------------------------------


@pytest.mark.parametrize("name", ADAPTERS)
def test_nothing_configured_fails_at_construction_with_one_message(name: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        ADAPTERS[name]()
    assert str(caught.value) == nothing_configured(LIBRARY)


@pytest.mark.parametrize("name", ADAPTERS)
def test_bm25_only_when_asked_by_name(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(scorer_of(ADAPTERS[name](model="bm25")), BM25Scorer)
    monkeypatch.setenv("ZERANK_BACKEND", "lexical")
    assert isinstance(scorer_of(ADAPTERS[name]()), BM25Scorer)


@pytest.mark.parametrize("name", ADAPTERS)
def test_model_names_the_model_sent_to_the_server(name: str, fake_server: FakeRerankServer) -> None:
    adapter = ADAPTERS[name](model="zerank-1-small", server_url=f"{fake_server.url}/v1/rerank")
    scorer = scorer_of(adapter)
    assert isinstance(scorer, RerankServerScorer)
    scorer.score("q", ["a"])
    assert fake_server.requests[-1].body["model"] == "zerank-1-small"


def test_cohere_style_code_runs_with_only_the_class_name_changed(
    fake_server: FakeRerankServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZEROENTROPY_API_KEY", KEY)
    monkeypatch.setenv("ZEROENTROPY_BASE_URL", f"{fake_server.url}/v1")

    compressor = ZeRankCompressor(model="zerank-2", top_n=2)
    postprocessor = ZeRankPostprocessor(model="zerank-2", top_n=2)
    kept = compressor.compress_documents(documents(), QUERY)

    assert len(kept) == 2
    assert isinstance(postprocessor.scorer, ZeroEntropyScorer)
    assert fake_server.requests[-1].body["model"] == "zerank-2"


def test_a_hosted_model_name_without_a_key_points_to_the_open_weights() -> None:
    with pytest.raises(ConfigurationError, match="model='zeroentropy/zerank-2-reranker'"):
        ZeRankPostprocessor(model="zerank-2")


def test_base_url_that_is_a_rerank_endpoint_points_to_server_url() -> None:
    with pytest.raises(ConfigurationError, match=r"pass server_url=\.\.\. or set"):
        ZeRankCompressor(api_key=KEY, base_url="http://localhost:8000/v1/rerank")


def test_device_applies_to_open_weights_only() -> None:
    with pytest.raises(ConfigurationError, match="device does not apply to the hosted backend"):
        ZeRankCompressor(api_key=KEY, device="cpu", backend="hosted")


# --- langchain-zerank 0.1 compatibility --------------------------------------------------------


def test_zero_entropy_rerank_keeps_the_top_n_whatever_the_score(
    fake_server: FakeRerankServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZEROENTROPY_API_KEY", KEY)
    monkeypatch.setenv("ZEROENTROPY_BASE_URL", f"{fake_server.url}/v1")
    originals = documents()

    kept = ZeroEntropyRerank(model="zerank-1-small", top_n=3).compress_documents(originals, QUERY)

    assert len(kept) == 3
    assert all("relevance_score" in d.metadata for d in kept)
    assert all("relevance_score" not in d.metadata for d in originals)
    assert fake_server.requests[-1].body["model"] == "zerank-1-small"


def test_zero_entropy_rerank_takes_an_sdk_client(fake_server: FakeRerankServer) -> None:
    from zeroentropy import ZeroEntropy

    client = ZeroEntropy(api_key=KEY, base_url=f"{fake_server.url}/v1")
    reranker = ZeroEntropyRerank(client=client)

    kept = reranker.compress_documents(documents(), QUERY)

    assert len(kept) == 3
    assert fake_server.requests[-1].body["model"] == "zerank-1-small"


# --- missing extras ----------------------------------------------------------------------------

BLOCK = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == {root!r} or name.startswith({root!r} + "."):
            raise ModuleNotFoundError(f"No module named {{name!r}}")
sys.meta_path.insert(0, Block())
try:
    import {package}
except ImportError as exc:
    print(type(exc).__name__, exc)
"""


@pytest.mark.parametrize(
    ("package", "root", "extra"),
    [
        ("langchain_zerank", "langchain_core", "langchain"),
        ("llamaindex_zerank", "llama_index", "llamaindex"),
    ],
)
def test_a_missing_extra_names_the_install_command(package: str, root: str, extra: str) -> None:
    code = BLOCK.format(root=root, package=package)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout

    assert out.startswith("MissingDependencyError")
    assert f"pip install 'zerank-gate[{extra}]'" in out


# --- traces ------------------------------------------------------------------------------------


class Recorder(BaseCallbackHandler):
    """Keeps every chain run a callback manager reports."""

    def __init__(self) -> None:
        self.starts: list[dict[str, Any]] = []
        self.ends: dict[UUID, Any] = {}
        self.retriever_runs: list[UUID] = []

    def on_retriever_start(self, serialized: Any, query: str, *, run_id: UUID, **kw: Any) -> None:
        self.retriever_runs.append(run_id)

    def on_chain_start(self, serialized: Any, inputs: Any, *, run_id: UUID, **kw: Any) -> None:
        self.starts.append({"run_id": run_id, "inputs": inputs, **kw})

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kw: Any) -> None:
        self.ends[run_id] = outputs


def retriever(compressor: ZeRankCompressor) -> ContextualCompressionRetriever:
    store = InMemoryVectorStore(DeterministicFakeEmbedding(size=8))
    store.add_documents(documents())
    base = store.as_retriever(search_kwargs={"k": len(TEXTS)})
    return ContextualCompressionRetriever(base_compressor=compressor, base_retriever=base)


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_compressor_reports_scores_counts_policy_and_usage_in_the_trace(mode: str) -> None:
    recorder = Recorder()
    chain = retriever(ZeRankCompressor(model="bm25", threshold=0.5, top_n=2))
    config: Any = {"callbacks": [recorder]}

    if mode == "sync":
        kept = chain.invoke(QUERY, config=config)
    else:
        kept = await chain.ainvoke(QUERY, config=config)

    (start,) = [s for s in recorder.starts if s.get("name") == "ZeRankCompressor"]
    assert start["parent_run_id"] == recorder.retriever_runs[0]
    assert start["inputs"] == {
        "query": QUERY,
        "documents": 4,
        "ids": [d.id for d in chain.base_retriever.invoke(QUERY)],
    }
    outputs = recorder.ends[start["run_id"]]
    assert outputs["kept"] == len(kept) == 2
    assert outputs["dropped"] == 2
    assert len(outputs["scores"]) == 4
    assert outputs["policy"]["top_k"] == 2
    assert outputs["policy"]["threshold"] == 0.5
    assert outputs["model"] == "bm25"
    assert outputs["scale"] == "uncalibrated"
    assert outputs["usage"]["texts"] == 4


# --- pickles and copies ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ADAPTERS)
def test_an_explicit_scorer_survives_pickle_and_deepcopy(name: str) -> None:
    adapter = ADAPTERS[name](scorer=Overlap())

    restored = pickle.loads(pickle.dumps(adapter))
    copied = copy.deepcopy(adapter)

    assert isinstance(scorer_of(restored), Overlap)
    assert scorer_of(copied) is scorer_of(adapter)


@pytest.mark.parametrize("name", ADAPTERS)
def test_a_key_is_never_pickled_and_is_read_again_where_unpickled(
    name: str, fake_server: FakeRerankServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    adapter = ADAPTERS[name](api_key=KEY, base_url=f"{fake_server.url}/v1")
    data = pickle.dumps(adapter)
    copied = copy.deepcopy(adapter)

    assert KEY.encode() not in data
    assert scorer_of(copied) is scorer_of(adapter)
    with pytest.raises(ConfigurationError, match="API keys are never pickled"):
        pickle.loads(data)
    monkeypatch.setenv("ZEROENTROPY_API_KEY", KEY)
    restored = pickle.loads(data)
    assert isinstance(scorer_of(restored), ZeroEntropyScorer)
    assert scorer_of(restored) is not scorer_of(adapter)


def test_serialised_forms_hold_no_key(fake_server: FakeRerankServer) -> None:
    compressor = ZeRankCompressor(api_key=KEY, base_url=f"{fake_server.url}/v1")
    postprocessor = ZeRankPostprocessor(api_key=KEY, base_url=f"{fake_server.url}/v1")

    assert KEY not in str(dumpd(compressor))
    assert KEY not in str(postprocessor.to_dict())
    assert KEY not in repr(ZeRankSelector(api_key=KEY, base_url=f"{fake_server.url}/v1"))


# --- one meaning for routing -------------------------------------------------------------------


def test_both_routers_give_the_same_probabilities() -> None:
    text = "a banana and cherry smoothie"
    classified = ZeRankClassifier(labels=LABELS, scorer=Overlap()).invoke(text)
    choices = [ToolMetadata(name=n, description=d) for n, d in LABELS.items()]
    selected = ZeRankSelector(Overlap(), multi_label=True, threshold=0.0).select(choices, text)

    for selection in selected.selections:
        name = choices[selection.index].name
        assert f"probability {classified.probabilities[name]:.3f}" in selection.reason


# --- open weights named by model= and device= --------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    pytest.importorskip("sentence_transformers")
    from tests.tiny_zerank import build_tiny_zerank

    return str(build_tiny_zerank(tmp_path_factory.mktemp("weights") / "tiny"))


@pytest.mark.parametrize("name", ADAPTERS)
def test_model_and_device_load_open_weights_in_process(name: str, tiny_model: str) -> None:
    from zerank_core.scorers.local import LocalScorer

    scorer = scorer_of(ADAPTERS[name](model=tiny_model, device="cpu"))

    assert isinstance(scorer, LocalScorer)
    assert scorer.model == tiny_model
    assert scorer.device == "cpu"
    assert scorer.scale is Scale.PROBABILITY


def test_the_local_model_loads_where_the_compressor_is_unpickled(tiny_model: str) -> None:
    compressor = ZeRankCompressor(model=tiny_model, device="cpu", top_n=1, threshold=None)

    restored = pickle.loads(pickle.dumps(compressor))

    assert restored.get_scorer() is not compressor.get_scorer()
    assert restored.compress_documents(documents(), QUERY)[0].metadata[
        "relevance_score"
    ] == pytest.approx(
        compressor.compress_documents(documents(), QUERY)[0].metadata["relevance_score"]
    )


def test_a_copy_rebuilt_from_fields_makes_the_same_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    from langchain_core.runnables import ConfigurableField

    monkeypatch.setenv("ZEROENTROPY_API_KEY", KEY)  # must not turn model="bm25" into "hosted"
    classifier = ZeRankClassifier(model="bm25", labels=LABELS, default="other")
    configurable = classifier.configurable_fields(threshold=ConfigurableField(id="floor"))

    result = configurable.with_config(configurable={"floor": 0.99}).invoke("apple")

    assert result.labels == ("fruit",)
