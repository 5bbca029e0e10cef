"""A localhost rerank server that follows the documented APIs, for tests.

One ``ThreadingHTTPServer`` answers:

- ``POST /v1/models/rerank`` — ZeroEntropy's API (what the SDK calls);
- ``POST /v1/rerank`` and ``POST /rerank`` — the Cohere/Jina-style API of
  vLLM, llama.cpp and Infinity;
- ``POST /tei/rerank`` — Text Embeddings Inference's ``{query, texts}`` API.

Scores are deterministic (``score_fn``, by default
:func:`reference_probability`); ``returns`` sets the scale the Cohere-style
route reports (probability, logit or sigmoid).

Load model: ``latency_s + per_doc_s × documents`` per request, at most
``slots`` requests served at once (the rest queue). ``max_in_flight`` records
the most requests received and not yet answered at once: a request stops
counting before its answer is written, since the client may send its next
request as soon as it has read it, possibly before this server's thread runs
again. ``linger_s`` keeps each handler thread busy that long after it has
answered (a preempted thread on a loaded machine). ``open_connections`` the
TCP connections open now. ``always_429`` answers every request with 429 and
that ``retry-after`` value (``"0"``: come back at once); ``redirect_to``
answers every request with a 307 to that URL; ``fail_query`` answers 500 to
every request whose query contains it.

Rate limit: ``requests_per_minute`` counted over a sliding ``window_s``
(``requests_per_minute × window_s / 60`` requests per window), answered with
429 and the ``retry-after`` that frees a place.
``block_after=N`` holds every request after the first N (counted in
``blocked``) until :meth:`unblock` or :meth:`close`: a client stuck in the
middle of a job, for tests that kill it there.

Faults are queued (``faults``, one per request) or drawn at random
(``fault_rate`` of the requests, kinds from ``fault_kinds``, seeded):
``"429"``, ``"500"``, ``"503"``, ``"reset"`` (connection reset, no answer),
``"slow"`` (answers after ``slow_s``), ``"malformed"``, ``"missing"``,
``"duplicate"``, ``"nan"``, ``"out_of_range"`` (a score of 1.5),
``"bad_index"`` (an index past the end), ``"wrong_shape"``, and (queued only)
``"401"``, ``"empty"`` (an empty 200 body), ``"results_dict"`` (``results``
is an object), ``"bool_score"`` (a score of ``true``).

``python -m tests.fake_servers --latency 0.08 --per-doc 0.005 --slots 16``
serves in its own process (for benchmarks) and prints its URL; ``GET
/stats`` returns the counters and ``POST /stats/reset`` clears them.
``--scores hashed`` scores with :func:`hashed_probability` (0.6 ms of CPU for
150 pages of 2,000 characters) instead of :func:`reference_probability`
(two regex scans of each page, 8 ms): a benchmark whose client shares the
machine's cores with this server wants the server's own CPU to stay small,
since the latency model already stands for the model's work.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import re
import socket
import ssl
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
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


def hashed_probability(query: str, document: str) -> float:
    """A score in [0.05, 0.95] that differs for (almost) every pair: misassignment shows."""
    digest = hashlib.sha256(f"{query}\x00{document}".encode()).digest()
    return 0.05 + 0.9 * int.from_bytes(digest[:6], "big") / float(1 << 48)


SCORE_FUNCTIONS: dict[str, Callable[[str, str], float]] = {
    "reference": reference_probability,
    "hashed": hashed_probability,
}

RANDOM_FAULTS = (
    "429",
    "500",
    "503",
    "reset",
    "slow",
    "malformed",
    "missing",
    "duplicate",
    "nan",
    "out_of_range",
    "bad_index",
)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # many clients connect at once; a short backlog drops SYNs

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that time out or are reset on purpose are expected here


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
    per_doc_s: float = 0.0
    slots: int | None = None
    requests_per_minute: float | None = None
    window_s: float = 60.0
    fault_rate: float = 0.0
    fault_kinds: tuple[str, ...] = RANDOM_FAULTS
    seed: int = 0
    slow_s: float = 2.0
    score_fn: Callable[[str, str], float] = reference_probability
    record_bodies: bool = True
    port: int = 0
    ssl_context: ssl.SSLContext | None = None  # serve https with this server-side context
    open_connections: int = 0
    linger_s: float = 0.0
    always_429: str | None = None
    redirect_to: str | None = None
    fail_query: str | None = None
    rate_limited: int = 0
    served: int = 0
    documents_served: int = 0
    faults_injected: dict[str, int] = field(default_factory=dict)
    block_after: int | None = None
    blocked: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._arrived = 0
        self._unblocked = threading.Event()
        self._local = threading.local()
        self._in_flight = 0
        self._random = random.Random(self.seed)
        self._accepted: deque[float] = deque()
        self._slots = threading.Semaphore(self.slots) if self.slots else None
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real servers do

            def log_message(self, *args: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                # Headers and body go out in separate writes: without this,
                # Nagle's algorithm and the client's delayed ACK add ~40 ms.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with server._lock:
                    server.open_connections += 1

            def finish(self) -> None:
                try:
                    super().finish()
                finally:
                    with server._lock:
                        server.open_connections -= 1

            def do_GET(self) -> None:
                if self.path == "/stats":
                    return server._send(self, 200, server.stats())
                server._send(self, 404, {"error": f"no route {self.path}"})

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                raw = self.rfile.read(length)
                if self.path == "/stats/reset":
                    server.reset_stats()
                    return server._send(self, 200, {})
                server._enter()
                try:
                    server._handle(self, raw)
                finally:
                    server._leave()

        self._httpd = _Server(("127.0.0.1", self.port), Handler)
        if self.ssl_context is not None:
            self._httpd.socket = self.ssl_context.wrap_socket(self._httpd.socket, server_side=True)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        scheme = "http" if self.ssl_context is None else "https"
        return f"{scheme}://{host}:{port}"

    def unblock(self) -> None:
        """Let held requests through, and every later one."""
        self.block_after = None
        self._unblocked.set()

    def close(self) -> None:
        self._unblocked.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def _enter(self) -> None:
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        self._local.counted = True

    def _leave(self) -> None:
        """The request is answered (or about to be): it no longer counts as in flight."""
        if getattr(self._local, "counted", False):
            self._local.counted = False
            with self._lock:
                self._in_flight -= 1

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "served": self.served,
                "documents_served": self.documents_served,
                "rate_limited": self.rate_limited,
                "max_in_flight": self.max_in_flight,
                "open_connections": self.open_connections,
                "faults_injected": dict(self.faults_injected),
            }

    def reset_stats(self) -> None:
        with self._lock:
            self.served = self.documents_served = self.rate_limited = self.max_in_flight = 0
            self.faults_injected.clear()
            self.requests.clear()
            self._accepted.clear()

    def _next_fault(self) -> str | None:
        with self._lock:
            if self.faults:
                fault = self.faults.popleft()
            elif self.fault_rate and self._random.random() < self.fault_rate:
                fault = self._random.choice(self.fault_kinds)
            else:
                return None
            if fault is not None:
                self.faults_injected[fault] = self.faults_injected.get(fault, 0) + 1
            return fault

    def _over_rate(self) -> float | None:
        """Seconds until a place frees when the window is full; None if the request may pass."""
        if self.requests_per_minute is None:
            return None
        allowed = max(1, int(self.requests_per_minute * self.window_s / 60.0))
        now = time.monotonic()
        with self._lock:
            while self._accepted and self._accepted[0] <= now - self.window_s:
                self._accepted.popleft()
            if len(self._accepted) >= allowed:
                self.rate_limited += 1
                return self._accepted[0] + self.window_s - now
            self._accepted.append(now)
            return None

    def _hold(self) -> None:
        with self._lock:
            self._arrived += 1
            hold = self.block_after is not None and self._arrived > self.block_after
            if hold:
                self.blocked += 1
        if hold:
            self._unblocked.wait(timeout=300)

    def _handle(self, handler: BaseHTTPRequestHandler, raw: bytes) -> None:
        self._hold()
        wait = self._over_rate()  # counted on arrival, before any parsing
        body = json.loads(raw or b"{}")
        if self.record_bodies:
            with self._lock:
                self.requests.append(Recorded(handler.path, dict(handler.headers), body))
        if self.always_429 is not None:
            with self._lock:
                self.rate_limited += 1
            return self._send(
                handler, 429, {"error": "rate limited"}, {"retry-after": self.always_429}
            )
        if self.redirect_to is not None:
            return self._send(handler, 307, {}, {"location": self.redirect_to})
        if self.fail_query is not None and self.fail_query in str(body.get("query")):
            return self._send(handler, 500, {"error": "this query always fails"})
        if wait is not None:
            retry_after = f"{max(wait, 0.001):.3f}"
            return self._send(handler, 429, {"error": "rate limited"}, {"retry-after": retry_after})
        documents_in = body.get("documents") or body.get("texts") or []
        if self._slots is not None:
            self._slots.acquire()
        try:
            # The answer is computed while the modelled latency runs and sent
            # when it is over, so this server's own CPU time (parsing, scoring)
            # does not add to the latency model.
            delay = self.latency_s + self.per_doc_s * len(documents_in)
            self._local.not_before = time.monotonic() + delay
            self._respond(handler, body)
        finally:
            self._local.not_before = 0.0
            if self._slots is not None:
                self._slots.release()

    def _wait_turn(self) -> None:
        remaining = getattr(self._local, "not_before", 0.0) - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)

    def _respond(self, handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        fault = self._next_fault()
        if fault == "429":
            return self._send(handler, 429, {"error": "rate limited"}, {"retry-after": "0.01"})
        if fault in ("500", "503"):
            return self._send(handler, int(fault), {"error": "unavailable"})
        if fault == "reset":
            self._wait_turn()
            linger = struct.pack("ii", 1, 0)  # close with RST, not FIN
            handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            handler.close_connection = True
            self._leave()
            return None
        if fault == "slow":
            time.sleep(self.slow_s)
        if fault == "401":
            return self._send(handler, 401, {"error": "invalid api key"})
        if fault == "malformed":
            return self._send_raw(handler, 200, b'{"results": [')
        if fault == "empty":
            return self._send_raw(handler, 200, b"")

        path = handler.path.partition("?")[0]  # a gateway's key parameter is no route
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
            p = self.score_fn(body["query"], document)
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
        elif fault == "bad_index":
            results[-1]["index"] = len(documents)
        elif fault == "wrong_shape":
            return self._send(handler, 200, {"data": results})
        elif fault == "results_dict":
            return self._send(handler, 200, {"results": {"index": 0, key: 0.5}})

        with self._lock:
            self.served += 1
            self.documents_served += len(documents)
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

    def _send_raw(
        self,
        handler: BaseHTTPRequestHandler,
        status: int,
        raw: bytes,
        headers: dict[str, str] | None = None,
    ) -> None:
        self._wait_turn()
        self._leave()
        handler.send_response(status)
        handler.send_header("content-type", "application/json")
        handler.send_header("content-length", str(len(raw)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(raw)
        handler.wfile.flush()
        if self.linger_s:
            time.sleep(self.linger_s)


def main() -> None:
    """Serve in this process until stdin closes; print the URL first."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per request")
    parser.add_argument("--per-doc", type=float, default=0.0, help="seconds per document")
    parser.add_argument("--slots", type=int, default=None, help="requests served at once")
    parser.add_argument("--rpm", type=float, default=None, help="requests per minute allowed")
    parser.add_argument("--window", type=float, default=60.0, help="rate-limit window, seconds")
    parser.add_argument(
        "--scores",
        choices=sorted(SCORE_FUNCTIONS),
        default="reference",
        help="how pairs are scored: keyword overlap (reference) or a hash of the pair (hashed)",
    )
    args = parser.parse_args()
    server = FakeRerankServer(
        latency_s=args.latency,
        per_doc_s=args.per_doc,
        slots=args.slots,
        requests_per_minute=args.rpm,
        window_s=args.window,
        record_bodies=False,
        score_fn=SCORE_FUNCTIONS[args.scores],
        port=args.port,
    )
    print(server.url, flush=True)
    try:
        sys.stdin.read()
    finally:
        server.close()


if __name__ == "__main__":
    main()
