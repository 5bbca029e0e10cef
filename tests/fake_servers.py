"""A localhost rerank server that follows the documented APIs, for tests.

One ``ThreadingHTTPServer`` answers:

- ``POST /v1/models/rerank`` — ZeroEntropy's API (what the SDK calls);
- ``POST /v1/rerank`` and ``POST /rerank`` — the Cohere/Jina-style API of
  vLLM, llama.cpp and Infinity;
- ``POST /tei/rerank`` — Text Embeddings Inference's ``{query, texts}`` API.

Scores are deterministic (:func:`reference_probability`); ``returns`` sets
the scale the Cohere-style route reports (probability, logit or sigmoid).
``latency_s`` delays every answer and ``max_in_flight`` records the most
requests served at once. Faults are queued and consumed one per request: ``"429"``, ``"500"``,
``"malformed"``, ``"missing"``, ``"duplicate"``, ``"nan"``,
``"out_of_range"``, ``"wrong_shape"``, and ``"401"``, ``"empty"`` (an empty
200 body), ``"results_dict"`` (``results`` is an object), ``"bool_score"``
(a score of ``true``).
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_REQUEST_BYTES = 5_000_000


def reference_probability(query: str, document: str) -> float:
    """Share of the query's words found in the document, squashed into (0.05, 0.95)."""
    words = set(re.findall(r"\w+", query.lower()))
    if not words:
        return 0.05
    found = words & set(re.findall(r"\w+", document.lower()))
    return 0.05 + 0.9 * len(found) / len(words)


def _logit_for(p: float) -> float:
    return 5.0 * math.log(p / (1.0 - p))


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class FakeRerankServer:
    returns: str = "probability"
    latency_s: float = 0.0
    faults: deque[str] = field(default_factory=deque)
    requests: list[Recorded] = field(default_factory=list)
    max_in_flight: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real servers do

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                raw = self.rfile.read(length)
                server._enter()
                try:
                    server._handle(self, raw)
                finally:
                    server._leave()

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _enter(self) -> None:
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _next_fault(self) -> str | None:
        with self._lock:
            return self.faults.popleft() if self.faults else None

    def _handle(self, handler: BaseHTTPRequestHandler, raw: bytes) -> None:
        body = json.loads(raw or b"{}")
        with self._lock:
            self.requests.append(Recorded(handler.path, dict(handler.headers), body))
        if self.latency_s:
            time.sleep(self.latency_s)
        fault = self._next_fault()
        if fault == "429":
            return self._send(handler, 429, {"error": "rate limited"}, {"retry-after": "0.01"})
        if fault == "500":
            return self._send(handler, 500, {"error": "internal"})
        if fault == "401":
            return self._send(handler, 401, {"error": "invalid api key"})
        if fault == "malformed":
            return self._send_raw(handler, 200, b'{"results": [')
        if fault == "empty":
            return self._send_raw(handler, 200, b"")

        path = handler.path
        if path == "/v1/models/rerank":
            documents, scale, key = body["documents"], "probability", "relevance_score"
        elif path in ("/v1/rerank", "/rerank"):
            documents, scale, key = body["documents"], self.returns, "relevance_score"
        elif path == "/tei/rerank":
            documents, scale, key = body["texts"], self.returns, "score"
        else:
            return self._send(handler, 404, {"error": f"no route {path}"})
        size = sum(150 + len(body["query"].encode()) + len(d.encode()) for d in documents)
        if path == "/v1/models/rerank" and size > MAX_REQUEST_BYTES:
            return self._send(handler, 400, {"error": f"request of {size} bytes is too large"})

        results: list[dict[str, Any]] = []
        for index, document in enumerate(documents):
            p = reference_probability(body["query"], document)
            value = {"probability": p, "logit": _logit_for(p)}.get(scale)
            if value is None:  # sigmoid of the raw logit
                value = 1.0 / (1.0 + math.exp(-_logit_for(p)))
            results.append({"index": index, key: value})
        results.sort(key=lambda r: -r[key])
        if fault == "missing":
            results.pop()
        elif fault == "duplicate":
            results[-1] = dict(results[0])
        elif fault == "nan":
            results[0][key] = math.nan
        elif fault == "out_of_range":
            results[0][key] = 1.5
        elif fault == "bool_score":
            results[0][key] = True
        elif fault == "wrong_shape":
            return self._send(handler, 200, {"data": results})
        elif fault == "results_dict":
            return self._send(handler, 200, {"results": {"index": 0, key: 0.5}})

        if path == "/tei/rerank":
            return self._send(handler, 200, results)
        payload: dict[str, Any] = {"results": results}
        tokens = sum(len(d.split()) + len(body["query"].split()) for d in documents)
        if path == "/v1/models/rerank":
            payload |= {
                "total_tokens": tokens,
                "total_bytes": size,
                "e2e_latency": self.latency_s,
                "inference_latency": self.latency_s,
                "actual_latency_mode": body.get("latency") or "fast",
            }
        else:
            payload["usage"] = {"total_tokens": tokens}
        self._send(handler, 200, payload)

    def _send(
        self,
        handler: BaseHTTPRequestHandler,
        status: int,
        payload: Any,
        headers: dict[str, str] | None = None,
    ) -> None:
        # json.dumps writes NaN as a bare token, as a buggy server would
        self._send_raw(handler, status, json.dumps(payload).encode(), headers)

    @staticmethod
    def _send_raw(
        handler: BaseHTTPRequestHandler,
        status: int,
        raw: bytes,
        headers: dict[str, str] | None = None,
    ) -> None:
        handler.send_response(status)
        handler.send_header("content-type", "application/json")
        handler.send_header("content-length", str(len(raw)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(raw)
