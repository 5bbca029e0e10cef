"""LangChain adapters for zerank-gate: a context-gating compressor and a classifier.

``ZeRankCompressor`` is a ``BaseDocumentCompressor`` (use it under
``ContextualCompressionRetriever`` or in a ``DocumentCompressorPipeline``);
``ZeRankClassifier`` is a ``Runnable`` whose ``as_router()`` form can be the
path of a LangGraph conditional edge. Both only translate LangChain types and
call ``zerank_core``. ``ZeroEntropyRerank`` takes the name and arguments of
PyPI's unrelated ``langchain-zerank`` 0.1, whose top-level module has this
package's name, so that its users switch without changing code.
"""

from __future__ import annotations

from zerank_core.errors import MissingDependencyError

try:
    import langchain_core  # noqa: F401
except ImportError as exc:
    raise MissingDependencyError("langchain-core", "langchain") from exc

from langchain_zerank.classifier import ZeRankClassifier, input_text
from langchain_zerank.compressor import ZeRankCompressor, ZeroEntropyRerank
from zerank_core.classify import Classification

__all__ = [
    "Classification",
    "ZeRankClassifier",
    "ZeRankCompressor",
    "ZeroEntropyRerank",
    "input_text",
]
