"""LangChain adapters for zerank-gate: a context-gating compressor and a classifier.

``ZeRankCompressor`` is a ``BaseDocumentCompressor`` (use it under
``ContextualCompressionRetriever`` or in a ``DocumentCompressorPipeline``);
``ZeRankClassifier`` is a ``Runnable`` whose ``as_router()`` form can be the
path of a LangGraph conditional edge. Both only translate LangChain types and
call ``zerank_core``.
"""

from __future__ import annotations

from langchain_zerank.classifier import ZeRankClassifier, input_text
from langchain_zerank.compressor import ZeRankCompressor
from zerank_core.classify import Classification

__all__ = ["Classification", "ZeRankClassifier", "ZeRankCompressor", "input_text"]
