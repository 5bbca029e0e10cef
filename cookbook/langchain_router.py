"""LangGraph: route support messages by calibrated label probability with ZeRankClassifier.

Run it:  python cookbook/langchain_router.py
Needs:   pip install 'zerank-gate[langchain]' langgraph

A triage node hands each message to ``billing``, ``technical`` or ``account``
by the label :class:`ZeRankClassifier` picks, or to ``general`` (the default
branch) when no label reaches its floor. ``classifier.as_router()`` is the
conditional edge's ``path`` as is. A batch then shows every label's
probability, and that N messages × M labels cost M scorer calls.

With ``ZEROENTROPY_API_KEY``, ``ZERANK_SERVER_URL`` or ``ZERANK_LOCAL_MODEL``
set it uses zerank; offline it uses :class:`KeywordScorer` below, a
deterministic stand-in (BM25 is no use here: its scores are scaled per call,
so a single message always scores 1.0 on any shared word).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Sequence
from typing import Annotated, TypedDict

from langchain_core.messages import AnyMessage, HumanMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from langchain_zerank import ZeRankClassifier
from zerank_core import ConfigurationError, Scale, Scorer, scorer_from_env

LABELS = {
    "billing": "The message is about an invoice, a payment, a refund or being charged.",
    "technical": "The message reports an error, a crash or a feature of the app not working.",
    "account": "The message is about logging in, a password, or access to the account.",
}
MESSAGES = [
    "I was charged twice on my last invoice, can I get a refund?",
    "The export button crashes the app with an error since the update.",
    "I cannot log in: the password reset email never arrives.",
    "Do you have an office in Lisbon?",
    "My payment failed with an error in the app.",
]
STOPWORDS = frozenset({"the", "message", "about", "with", "this", "that", "from", "being"})


class KeywordScorer:
    """Share-based keyword match between a label description and a message.

    A description word (4+ letters, not a stopword) counts as found when a
    message word shares its first five letters; ``p = found / (found + 1)``.
    Deterministic and offline; it counts its calls.
    """

    model = "keywords"
    scale = Scale.PROBABILITY
    usage = None

    def __init__(self) -> None:
        self.calls = 0

    @staticmethod
    def _stems(text: str) -> set[str]:
        words = re.findall(r"[a-z]{4,}", text.lower())
        return {w[:5] for w in words if w not in STOPWORDS}

    def score(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        self.calls += 1
        wanted = self._stems(query)
        found = [len(wanted & self._stems(text)) for text in texts]
        return [n / (n + 1) for n in found]

    async def ascore(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        return self.score(query, texts, instruction=instruction)


class Ticket(TypedDict):
    messages: list[AnyMessage]
    route: Annotated[list[str], operator.add]


def build_graph(classifier: ZeRankClassifier) -> CompiledStateGraph[Ticket, None, Ticket, Ticket]:
    graph = StateGraph(Ticket)
    graph.add_node("triage", lambda ticket: {"route": ["triage"]})
    for team in (*LABELS, "general"):
        graph.add_node(team, lambda ticket, team=team: {"route": [team]})
        graph.add_edge(team, END)
    graph.add_edge(START, "triage")
    graph.add_conditional_edges(
        "triage", classifier.as_router(), {team: team for team in (*LABELS, "general")}
    )
    return graph.compile()


def main() -> None:
    scorer: Scorer
    try:
        choice = scorer_from_env(allow_lexical=False)
        scorer, backend = choice.scorer, f"{choice.name} — {choice.reason}"
    except ConfigurationError:
        scorer, backend = KeywordScorer(), "keywords — offline deterministic stand-in for zerank"
    print(f"backend: {backend}\n")

    classifier = ZeRankClassifier(
        scorer=scorer, labels=LABELS, threshold=0.5, default="general", input_key="messages"
    )
    app = build_graph(classifier)
    print("LangGraph routing (triage → team):")
    for message in MESSAGES:
        ticket = app.invoke({"messages": [HumanMessage(message)], "route": []})
        print(f"  {' → '.join(ticket['route']):<20} {message}")

    if isinstance(scorer, KeywordScorer):
        scorer.calls = 0
    results = classifier.batch(MESSAGES)
    print("\nprobabilities (batch):")
    print(f"  {'billing':>8} {'technical':>9} {'account':>8}  {'label':<19} message")
    for message, result in zip(MESSAGES, results, strict=True):
        p = result.probabilities
        label = f"{result.label}{' (default)' if result.is_default else ''}"
        print(
            f"  {p['billing']:>8.2f} {p['technical']:>9.2f} {p['account']:>8.2f}  "
            f"{label:<19} {message[:44]}"
        )
    if isinstance(scorer, KeywordScorer):
        print(
            f"\n{len(MESSAGES)} messages × {len(LABELS)} labels scored in {scorer.calls} "
            "scorer calls"
        )

    fan_out = ZeRankClassifier(scorer=scorer, labels=LABELS, threshold=0.5, multi_label=True)
    print(f"\nmulti-label route for {MESSAGES[-1]!r}: {fan_out.as_router().invoke(MESSAGES[-1])}")


if __name__ == "__main__":
    main()
