"""ZeRankClassifier as a Runnable: inputs, decisions, batching, tracing, LangGraph routing."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, TypedDict
from uuid import UUID

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.load import dumps
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langchain_core.runnables import ConfigurableField, RunnableLambda
from langgraph.graph import END, START, StateGraph
from pydantic import SecretStr

from langchain_zerank import Classification, ZeRankClassifier, input_text
from tests.fake_servers import FakeRerankServer
from tests.test_langchain_compressor import OverlapScorer
from zerank_core import ConfigurationError

LABELS = {
    "billing": "refund invoice charge payment",
    "bug": "error crash broken app",
    "account": "password login account locked",
}
BILLING = "I want a refund for the double charge on my invoice"  # billing 0.75
BUG = "the app shows an error then a crash"  # bug 0.75
ACCOUNT = "my account is locked after a password reset"  # account 0.75
OTHER = "what is the weather like tomorrow"  # nothing
MIXED = "refund me, the app had an error during payment"  # billing 0.5, bug 0.5


def classifier(scorer: OverlapScorer | None = None, **options: Any) -> ZeRankClassifier:
    settings: dict[str, Any] = {"labels": LABELS, "threshold": 0.5, "default": "general"}
    return ZeRankClassifier(scorer=scorer or OverlapScorer(), **(settings | options))


class RunRecorder(BaseCallbackHandler):
    """Records chain runs as a tracer would see them."""

    def __init__(self) -> None:
        self.started: dict[UUID, tuple[str | None, Any]] = {}
        self.ended: dict[UUID, Any] = {}

    def on_chain_start(
        self, serialized: dict[str, Any] | None, inputs: Any, *, run_id: UUID, **kwargs: Any
    ) -> None:
        self.started[run_id] = (kwargs.get("name"), inputs)

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.ended[run_id] = outputs

    def runs(self, name: str) -> list[tuple[Any, Any]]:
        return [
            (inputs, self.ended.get(run_id))
            for run_id, (run_name, inputs) in self.started.items()
            if run_name == name
        ]


def test_single_label_picks_the_best_label_above_the_floor() -> None:
    result = classifier().invoke(BILLING)

    assert isinstance(result, Classification)
    assert result.label == "billing"
    assert result.labels == ("billing",)
    assert not result.is_default
    assert dict(result.probabilities) == {"billing": 0.75, "bug": 0.0, "account": 0.0}


def test_default_label_when_nothing_passes_and_none_without_default() -> None:
    fallback = classifier().invoke(OTHER)
    assert fallback.label == "general"
    assert fallback.is_default

    nothing = classifier(default=None).invoke(OTHER)
    assert nothing.label is None
    assert nothing.labels == ()


def test_thresholds_per_label_and_multi_label() -> None:
    strict_billing = classifier(threshold={"billing": 0.8, "bug": 0.5})
    assert strict_billing.invoke(MIXED).label == "bug"
    assert strict_billing.invoke(BILLING).label == "general"

    multi = classifier(multi_label=True)
    assert multi.invoke(MIXED).labels == ("billing", "bug")
    assert multi.invoke(BUG).labels == ("bug",)
    assert multi.invoke(OTHER).labels == ("general",)


@pytest.mark.parametrize(
    ("value", "key"),
    [
        (BUG, "input"),
        (Document(BUG, id="d1"), "input"),
        (HumanMessage(BUG), "input"),
        ([AIMessage("How can I help?"), HumanMessage(BUG)], "input"),
        ({"input": BUG, "other": 1}, "input"),
        ({"question": Document(BUG)}, "question"),
        ({"messages": [HumanMessage("hi"), HumanMessage(BUG)]}, "messages"),
    ],
)
def test_inputs_of_every_kind(value: Any, key: str) -> None:
    assert input_text(value, key) == BUG
    assert classifier(input_key=key).invoke(value).label == "bug"


def test_state_objects_are_read_by_attribute() -> None:
    @dataclass
    class Ticket:
        body: str

    assert classifier(input_key="body").invoke(Ticket(ACCOUNT)).label == "account"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (42, "cannot classify a int"),
        ({"text": BUG}, r"no key 'input' \(keys: \['text'\]\)"),
        ({"input": 3.5}, r"input\['input'\] is a float"),
        ([], "cannot classify a list"),
    ],
)
def test_bad_inputs_are_named(value: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        classifier().invoke(value)


async def test_batch_makes_one_scorer_call_per_label() -> None:
    scorer = OverlapScorer()
    inputs = [BILLING, BUG, ACCOUNT, OTHER, MIXED, {"input": BUG}, Document(BILLING)]

    results = classifier(scorer).batch(inputs)

    assert [r.label for r in results] == [
        "billing",
        "bug",
        "account",
        "general",
        "billing",
        "bug",
        "billing",
    ]
    assert sorted(query for _, query, _, _ in scorer.calls) == sorted(LABELS.values())
    assert {(mode, n) for mode, _, n, _ in scorer.calls} == {("sync", 7)}

    scorer.calls.clear()
    aresults = await classifier(scorer).abatch(inputs)
    assert aresults == results
    assert len(scorer.calls) == len(LABELS)
    assert {(mode, n) for mode, _, n, _ in scorer.calls} == {("async", 7)}


async def test_invoke_and_ainvoke_agree_and_pass_the_instruction() -> None:
    scorer = OverlapScorer()
    model = classifier(scorer, instruction="customer support tickets")

    assert model.invoke(BUG) == await model.ainvoke(BUG)
    assert {(mode, instruction) for mode, _, _, instruction in scorer.calls} == {
        ("sync", "customer support tickets"),
        ("async", "customer support tickets"),
    }


def test_empty_batch_makes_no_call() -> None:
    scorer = OverlapScorer()
    assert classifier(scorer).batch([]) == []
    assert scorer.calls == []


async def test_callbacks_see_one_run_per_input_with_scores() -> None:
    recorder = RunRecorder()
    model = classifier().with_config(run_name="triage", callbacks=[recorder])

    model.batch([BILLING, OTHER])
    await model.ainvoke(BUG)

    runs = recorder.runs("triage")
    assert [inputs for inputs, _ in runs] == [BILLING, OTHER, BUG]
    outputs = [output for _, output in runs]
    assert [o.label for o in outputs] == ["billing", "general", "bug"]
    assert outputs[0].probabilities["billing"] == 0.75


class FlakyScorer(OverlapScorer):
    """Fails its first ``failures`` calls with a connection error."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def score(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("backend unavailable")
        return super().score(query, texts, instruction=instruction)


def test_with_retry_and_with_fallbacks() -> None:
    retried = classifier(FlakyScorer(failures=1)).with_retry(
        retry_if_exception_type=(ConnectionError,),
        stop_after_attempt=2,
        wait_exponential_jitter=False,
    )
    assert retried.invoke(BUG).label == "bug"
    assert [r.label for r in retried.batch([BUG, ACCOUNT])] == ["bug", "account"]

    broken = classifier(FlakyScorer(failures=100))
    with pytest.raises(ConnectionError):
        broken.invoke(BUG)
    rescued = broken.with_fallbacks([classifier()])
    assert rescued.invoke(BUG).label == "bug"
    errors = broken.batch([BUG, ACCOUNT], return_exceptions=True)
    assert all(isinstance(e, ConnectionError) for e in errors)


def test_threshold_as_a_configurable_field() -> None:
    model = classifier().configurable_fields(
        threshold=ConfigurableField(id="floor", name="label floor")
    )

    assert model.invoke(MIXED).label == "billing"
    assert model.with_config(configurable={"floor": 0.9}).invoke(MIXED).label == "general"
    with pytest.raises(ConfigurationError, match=r"got 1\.9"):
        model.with_config(configurable={"floor": 1.9}).invoke(MIXED)


def test_router_output_is_the_label_or_the_labels() -> None:
    scorer = OverlapScorer()
    router = classifier(scorer).as_router()
    assert router.invoke(BILLING) == "billing"
    assert router.batch([BUG, OTHER]) == ["bug", "general"]
    assert len(scorer.calls) == 2 * len(LABELS)

    fan_out = classifier(multi_label=True, default=None).as_router()
    assert fan_out.invoke(MIXED) == ["billing", "bug"]
    assert fan_out.invoke(OTHER) == []

    with pytest.raises(ConfigurationError, match="default"):
        classifier(default=None).as_router()


def test_lcel_chain_classifies_after_preprocessing() -> None:
    scorer = OverlapScorer()
    chain = RunnableLambda(lambda ticket: ticket["subject"] + " " + ticket["body"]) | (
        classifier(scorer).as_router()
    )

    routes = chain.batch(
        [{"subject": "Refund", "body": "charge on invoice"}, {"subject": "Hi", "body": "thanks"}]
    )

    assert routes == ["billing", "general"]
    assert len(scorer.calls) == len(LABELS)


class SupportState(TypedDict):
    messages: list[AnyMessage]
    handled_by: Annotated[list[str], operator.add]


def support_graph(model: ZeRankClassifier) -> Any:
    graph = StateGraph(SupportState)
    graph.add_node("triage", lambda state: {"handled_by": ["triage"]})
    for name in ("billing", "bug", "account", "general"):
        graph.add_node(name, lambda state, name=name: {"handled_by": [name]})
        graph.add_edge(name, END)
    graph.add_edge(START, "triage")
    graph.add_conditional_edges(
        "triage",
        model.as_router(),
        {"billing": "billing", "bug": "bug", "account": "account", "general": "general"},
    )
    return graph.compile()


async def test_langgraph_routes_on_the_classifier_label() -> None:
    recorder = RunRecorder()
    app = support_graph(classifier(input_key="messages"))

    routes = {}
    for text in (BILLING, BUG, ACCOUNT, OTHER):
        state = app.invoke(
            {"messages": [HumanMessage(text)], "handled_by": []},
            config={"callbacks": [recorder]},
        )
        routes[text] = state["handled_by"]
    astate = await app.ainvoke({"messages": [HumanMessage(BUG)], "handled_by": []})

    assert routes == {
        BILLING: ["triage", "billing"],
        BUG: ["triage", "bug"],
        ACCOUNT: ["triage", "account"],
        OTHER: ["triage", "general"],
    }
    assert astate["handled_by"] == ["triage", "bug"]
    traced = [output.label for _, output in recorder.runs("ZeRankClassifier")]
    assert traced == ["billing", "bug", "account", "general"]


def test_langgraph_fans_out_to_every_passing_label() -> None:
    app = support_graph(classifier(input_key="messages", multi_label=True))

    state = app.invoke({"messages": [HumanMessage(MIXED)], "handled_by": []})

    assert sorted(state["handled_by"]) == ["billing", "bug", "triage"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"labels": {}}, "at least one label"),
        ({"labels": {"a": "  "}}, "label 'a' needs a non-empty description"),
        ({"threshold": 1.2}, "must be in \\[0, 1\\], got 1.2"),
        ({"threshold": {"refunds": 0.5}}, "unknown labels: \\['refunds'\\]"),
        ({"top_k": 2}, "unknown argument 'top_k'"),
        ({"multi_lable": True}, "unknown argument 'multi_lable'; did you mean 'multi_label'\\?"),
        ({"max_labels": 0}, "max_labels must be an integer >= 1, got 0"),
    ],
)
def test_bad_settings_are_named(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        classifier(**options)


def test_api_key_never_shows(monkeypatch: pytest.MonkeyPatch) -> None:
    model = ZeRankClassifier(labels=LABELS, api_key=SecretStr("ze-secret"))
    monkeypatch.setenv("ZEROENTROPY_API_KEY", "ze-env-secret")
    from_env = ZeRankClassifier(labels=LABELS)

    for shown in (repr(model), dumps(model), model.model_dump_json(), dumps(from_env)):
        assert "secret" not in shown


async def test_default_scorer_from_the_environment_sends_one_request_per_label(
    fake_server: FakeRerankServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZERANK_SERVER_URL", f"{fake_server.url}/v1/rerank")
    model = ZeRankClassifier(labels=LABELS, threshold=0.5, default="general")
    messages = [BILLING, BUG, ACCOUNT, OTHER]

    results = model.batch(messages)
    aresults = await model.abatch(messages)

    assert [r.label for r in results] == ["billing", "bug", "account", "general"]
    assert aresults == results
    assert len(fake_server.requests) == 2 * len(LABELS)
    assert {r.body["query"] for r in fake_server.requests} == set(LABELS.values())
    assert all(r.body["documents"] == messages for r in fake_server.requests)
