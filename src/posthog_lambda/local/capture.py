"""A local PostHog capture server: the ingestion contract of ``/batch/``, ``/i/v0/ai/batch/``, ``/e/`` and
``/capture/``, with recording, awaiting, fault injection and a trace view, for tests and demos.

    with CaptureServer() as server:             # http://127.0.0.1:<free port>, key "phc_local"
        send_events(host=server.url)
        events = server.wait_for_events(3)
        print(server.trace_tree())

Run it in the foreground with ``python -m posthog_lambda.local.capture [--port N] [--api-key K]``.
Standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import socket
import socketserver
import sys
import threading
import time
import uuid
import zlib
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any, Literal, cast
from urllib.parse import parse_qs, urlsplit

from ._tree import render_trace_tree

__all__ = [
    "AI_BATCH_PATH",
    "BATCH_PATH",
    "MAX_AI_EVENT_BYTES",
    "MAX_BODY_BYTES",
    "MAX_EVENT_BYTES",
    "SINGLE_EVENT_PATHS",
    "CaptureServer",
    "ReceivedEvent",
    "ReceivedRequest",
    "main",
]

BATCH_PATH = "/batch/"
AI_BATCH_PATH = "/i/v0/ai/batch/"
SINGLE_EVENT_PATHS = ("/e/", "/capture/")
MAX_BODY_BYTES = 20 * 1024 * 1024
MAX_EVENT_BYTES = 1_000_000
MAX_AI_EVENT_BYTES = 8 * 1024 * 1024

Outcome = Literal["accepted", "rejected", "failed", "dropped"]

_ENDPOINTS = (BATCH_PATH, AI_BATCH_PATH, *SINGLE_EVENT_PATHS)
_HEADERS_KEPT = ("content-type", "content-encoding", "content-length", "transfer-encoding", "user-agent")
_FAULT_STATUSES = range(400, 600)
_READ_CHUNK = 64 * 1024
# serve_forever checks for shutdown this often; it bounds how long stop() and refuse_for() take.
_POLL_INTERVAL = 0.05
_REOPEN_ATTEMPTS = 100
_JOIN_TIMEOUT = 2.0


@dataclass(frozen=True)
class ReceivedEvent:
    """One event the server accepted, as PostHog would ingest it.

    ``event`` is the event object as sent (for a single-event body, without its ``api_key``,
    ``token`` and ``sent_at``); ``path`` is the endpoint (``/batch/``, ``/i/v0/ai/batch/``,
    ``/e/`` or ``/capture/``); ``sent_at`` is the request's ``sent_at``.
    """

    event: dict[str, Any]
    path: str
    gzip: bool
    sent_at: str | None
    received_at: datetime

    @property
    def name(self) -> str:
        """The event name, e.g. ``$ai_generation``."""
        return str(self.event["event"])

    @property
    def uuid(self) -> str | None:
        """The event's uuid as sent, if any."""
        value = self.event.get("uuid")
        return None if value is None else str(value)

    @property
    def distinct_id(self) -> str:
        """The event's distinct_id as a string."""
        return str(self.event["distinct_id"])

    @property
    def properties(self) -> dict[str, Any]:
        """The event's properties (empty when it sent none)."""
        props = self.event.get("properties")
        return props if isinstance(props, dict) else {}


@dataclass(frozen=True)
class ReceivedRequest:
    """One HTTP request and what the server answered.

    ``status`` is ``None`` when the connection was closed without an answer (``drop_next``).
    ``outcome`` is ``accepted`` (200), ``rejected`` (the contract refused it), ``failed``
    (``fail_next``) or ``dropped`` (``drop_next``); ``fault`` names the injected fault, if any,
    including ``slow_next``, whose requests are otherwise handled normally. ``body_bytes`` is
    the size on the wire, ``decoded_bytes`` after gunzip; ``event_count`` counts the events the
    body held (also for rejected and faulted requests, when it could be parsed).
    """

    method: str
    path: str
    query: str
    status: int | None
    outcome: Outcome
    detail: str
    fault: str | None
    body_bytes: int
    decoded_bytes: int
    gzip: bool
    event_count: int
    headers: dict[str, str]
    received_at: datetime


@dataclass(frozen=True)
class _Fault:
    kind: Literal["fail", "slow", "drop"]
    status: int = 0
    retry_after: int | float | str | None = None
    seconds: float = 0.0

    def describe(self) -> str:
        if self.kind == "fail":
            after = "" if self.retry_after is None else f" Retry-After {self.retry_after}"
            return f"fail_next {self.status}{after}"
        if self.kind == "slow":
            return f"slow_next {self.seconds:g}s"
        return "drop_next"


@dataclass
class _Verdict:
    """What the contract says about one request, before any fault is applied."""

    status: int
    outcome: Outcome
    detail: str
    body: dict[str, Any]
    path: str
    events: list[dict[str, Any]] = field(default_factory=list)
    event_count: int = 0
    decoded_bytes: int = 0
    gzip: bool = False
    sent_at: str | None = None


class _Rejection(Exception):
    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


class CaptureServer:
    """A real HTTP server on loopback that answers as PostHog's capture service does and records
    what it accepts.

    The rules, checked in this order, each answered with ``{"type", "code", "detail"}``: body above
    ``max_body_bytes`` after gunzip: 413; not a JSON object: 400; api key (``api_key`` or ``token``)
    missing or not ``api_key`` (``None`` accepts any non-empty key): 401; an event without a name
    or ``distinct_id``, or with an invalid uuid: 400; an event larger than its endpoint's limit
    (``max_event_bytes``; ``max_ai_event_bytes`` on ``/i/v0/ai/batch/``): 413. Any rejection
    refuses the whole request and records none of its events; otherwise 200 ``{"status": 1}``.
    ``ai_endpoint=False`` answers 404 on ``/i/v0/ai/batch/``, as older self-hosted PostHog does.

    ``on_request`` is called (in the server's thread) with each :class:`ReceivedRequest`.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        api_key: str | None = "phc_local",
        ai_endpoint: bool = True,
        max_body_bytes: int = MAX_BODY_BYTES,
        max_event_bytes: int = MAX_EVENT_BYTES,
        max_ai_event_bytes: int = MAX_AI_EVENT_BYTES,
        verbose: bool = False,
        on_request: Callable[[ReceivedRequest], None] | None = None,
    ) -> None:
        self.host = host
        self.api_key = api_key
        self.ai_endpoint = ai_endpoint
        self.max_body_bytes = max_body_bytes
        self.max_event_bytes = max_event_bytes
        self.max_ai_event_bytes = max_ai_event_bytes
        self.verbose = verbose
        self.on_request = on_request
        self._requested_port = port
        self._port: int | None = None

        # One condition guards every record and wakes the waiters.
        self._changed = threading.Condition()
        self._events: list[ReceivedEvent] = []
        self._requests: list[ReceivedRequest] = []
        self._seen_uuids: set[str] = set()
        self._duplicates = 0
        self._faults: deque[_Fault] = deque()

        self._lifecycle = threading.Lock()
        self._httpd: _HTTPServer | None = None
        self._started = False
        self._stopped = False
        self._stopping = threading.Event()
        self._accepting = threading.Event()
        self._refuse_until = 0.0
        self._reopen_error: OSError | None = None
        self._threads: list[threading.Thread] = []
        self._connections_lock = threading.Lock()
        self._connections: set[_Handler] = set()
        self._request_threads: list[threading.Thread] = []

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> CaptureServer:
        """Bind and start serving in daemon threads; returns the server."""
        with self._lifecycle:
            if self._started:
                raise RuntimeError("CaptureServer.start() was already called; create a new server")
            httpd = self._bind(self._requested_port)
            self._port = httpd.server_address[1]
            self._started = True
            self._serve(httpd)
        return self

    def stop(self) -> None:
        """Stop serving, close every socket (listening and open connections) and join the threads.

        Requests waiting on ``slow_next`` are cut short without an answer. Safe to call twice.
        """
        with self._lifecycle:
            if not self._started or self._stopped:
                return
            self._stopped = True
            self._stopping.set()
            self._accepting.clear()
            httpd, self._httpd = self._httpd, None
        if httpd is not None:
            _close_listener(httpd)
        # No listener is left to start request threads, so the lists below are complete; a
        # connection that registers after this look sees _stopping and aborts itself.
        with self._connections_lock:
            connections = list(self._connections)
            threads = list(self._request_threads)
        for handler in connections:
            handler.abort()
        with self._lifecycle:
            threads += self._threads
        current = threading.current_thread()
        for thread in threads:
            if thread is not current:
                thread.join(_JOIN_TIMEOUT)

    def __enter__(self) -> CaptureServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port the server listens on (chosen by the system when constructed with ``port=0``)."""
        if self._port is None:
            raise RuntimeError("the server is not started; call start() or use it as a context manager")
        return self._port

    @property
    def url(self) -> str:
        """Base URL to give an SDK as its host, e.g. ``http://127.0.0.1:54321``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def accepting(self) -> bool:
        """Whether the listening socket is open (false while ``refuse_for`` is in effect)."""
        return self._accepting.is_set()

    def wait_until_accepting(self, timeout: float = 5.0) -> None:
        """Block until connections are accepted again after ``refuse_for``; TimeoutError otherwise."""
        if self._accepting.wait(timeout):
            return
        reason = f": reopening failed: {self._reopen_error}" if self._reopen_error else ""
        raise TimeoutError(f"the capture server was not accepting connections after {timeout:g}s{reason}")

    # -- what was received -------------------------------------------------------------------

    @property
    def events(self) -> list[ReceivedEvent]:
        """Every accepted event, in the order received (a copy)."""
        with self._changed:
            return list(self._events)

    @property
    def requests(self) -> list[ReceivedRequest]:
        """Every request, whatever was answered, in the order answered (a copy)."""
        with self._changed:
            return list(self._requests)

    @property
    def duplicates(self) -> int:
        """How many accepted events carried a uuid already accepted before (PostHog keeps one)."""
        with self._changed:
            return self._duplicates

    def unique_events(self) -> list[ReceivedEvent]:
        """Accepted events with each uuid kept once (its first arrival), as PostHog deduplicates."""
        seen: set[str] = set()
        unique = []
        for received in self.events:
            key = _uuid_key(received.event.get("uuid"))
            if key is not None:
                if key in seen:
                    continue
                seen.add(key)
            unique.append(received)
        return unique

    def clear(self) -> None:
        """Forget every recorded event and request, the duplicate count and pending faults."""
        with self._changed:
            self._events.clear()
            self._requests.clear()
            self._seen_uuids.clear()
            self._duplicates = 0
            self._faults.clear()
            self._changed.notify_all()

    def wait_for_events(
        self, count: int, timeout: float = 5.0, predicate: Callable[[ReceivedEvent], bool] | None = None
    ) -> list[ReceivedEvent]:
        """Block until at least ``count`` accepted events match ``predicate`` (all when ``None``);
        return every matching event so far. Raises TimeoutError saying what did arrive."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                matching = [e for e in self._events if predicate is None or predicate(e)]
                if len(matching) >= count:
                    return matching
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(self._waited_too_long(f"{count} events", len(matching), timeout, predicate))
                self._changed.wait(remaining)

    def wait_for_requests(
        self, count: int, timeout: float = 5.0, predicate: Callable[[ReceivedRequest], bool] | None = None
    ) -> list[ReceivedRequest]:
        """Like :meth:`wait_for_events`, for answered requests (rejected and faulted ones too)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                matching = [r for r in self._requests if predicate is None or predicate(r)]
                if len(matching) >= count:
                    return matching
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(self._waited_too_long(f"{count} requests", len(matching), timeout, predicate))
                self._changed.wait(remaining)

    def trace_tree(self) -> str:
        """The received events (each uuid once) laid out as PostHog's trace view would show them."""
        return render_trace_tree(received.event for received in self.unique_events())

    # -- fault injection ---------------------------------------------------------------------

    def fail_next(self, n: int = 1, status: int = 503, retry_after: int | float | str | None = None) -> None:
        """Answer the next ``n`` requests with ``status`` (e.g. 500, 503, 429) without recording their
        events; ``retry_after`` (seconds or an HTTP date) is sent as the ``Retry-After`` header."""
        if status not in _FAULT_STATUSES:
            raise ValueError(f"fail_next status must be a 4xx or 5xx status, not {status}")
        self._add_faults(n, _Fault("fail", status=status, retry_after=retry_after))

    def slow_next(self, n: int, seconds: float) -> None:
        """Hold each of the next ``n`` requests for ``seconds`` before handling it normally.

        The events are recorded when the delay ends even if the client gave up meanwhile: a real
        server that answers late has still ingested them, which is what makes a retry a duplicate.
        """
        if seconds < 0:
            raise ValueError("slow_next seconds must not be negative")
        self._add_faults(n, _Fault("slow", seconds=seconds))

    def drop_next(self, n: int = 1) -> None:
        """Read each of the next ``n`` requests, then close the connection without any HTTP answer."""
        self._add_faults(n, _Fault("drop"))

    def refuse_for(self, seconds: float) -> None:
        """Close the listening socket (and idle kept-alive connections) so that connecting is refused
        (ECONNREFUSED) for ``seconds``, then listen again on the same port. Returns once refusing;
        :meth:`wait_until_accepting` awaits the reopening. Calling it again extends the refusal."""
        with self._lifecycle:
            if not self._started or self._stopped:
                raise RuntimeError("refuse_for() needs a running server")
            self._refuse_until = max(self._refuse_until, time.monotonic() + seconds)
            httpd, self._httpd = self._httpd, None
            if httpd is None:
                return  # already refusing; its reopener reads the new deadline
            self._accepting.clear()
            self._reopen_error = None
            _close_listener(httpd)
            reopener = threading.Thread(target=self._reopen_when_due, name="capture-server-reopen", daemon=True)
            self._threads.append(reopener)
            reopener.start()
        self._close_kept_alive()

    @property
    def pending_faults(self) -> int:
        """How many requests the faults already asked for will still affect."""
        with self._changed:
            return len(self._faults)

    def _add_faults(self, n: int, fault: _Fault) -> None:
        if n < 0:
            raise ValueError("the number of requests must not be negative")
        with self._changed:
            self._faults.extend([fault] * n)

    def _take_fault(self) -> _Fault | None:
        with self._changed:
            return self._faults.popleft() if self._faults else None

    # -- sockets and threads -----------------------------------------------------------------

    def _bind(self, port: int) -> _HTTPServer:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        return _HTTPServer((self.host, port), self, family)

    def _serve(self, httpd: _HTTPServer) -> None:
        # Called with self._lifecycle held.
        self._httpd = httpd
        thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": _POLL_INTERVAL},
            name=f"capture-server-{self._port}",
            daemon=True,
        )
        self._threads = [t for t in self._threads if t.is_alive()]
        self._threads.append(thread)
        thread.start()
        self._accepting.set()

    def _reopen_when_due(self) -> None:
        attempts = 0
        while True:
            with self._lifecycle:
                if self._stopped:
                    return
                wait = self._refuse_until - time.monotonic()
                if wait <= 0:
                    try:
                        self._serve(self._bind(self.port))
                        return
                    except OSError as exc:
                        # Someone else may hold the port for a moment; give up after a few seconds.
                        attempts += 1
                        if attempts >= _REOPEN_ATTEMPTS:
                            self._reopen_error = exc
                            return
                        wait = _POLL_INTERVAL
            if self._stopping.wait(wait):
                return

    def _spawned(self, thread: threading.Thread) -> None:
        with self._connections_lock:
            self._request_threads = [t for t in self._request_threads if t.is_alive()]
            self._request_threads.append(thread)

    def _opened(self, handler: _Handler) -> None:
        with self._connections_lock:
            self._connections.add(handler)
        if self._stopping.is_set():
            handler.abort()

    def _closed(self, handler: _Handler) -> None:
        with self._connections_lock:
            self._connections.discard(handler)

    def _close_kept_alive(self) -> None:
        # Otherwise a client holding a kept-alive connection would never meet the refusal.
        with self._connections_lock:
            for handler in self._connections:
                if handler.busy:
                    handler.closing = True  # closed once its answer is written
                else:
                    handler.abort()

    def _request_started(self, handler: _Handler) -> None:
        with self._connections_lock:
            handler.busy = True

    def _request_ended(self, handler: _Handler) -> None:
        with self._connections_lock:
            handler.busy = False
            if handler.closing:
                handler.close_connection = True

    # -- handling one request ----------------------------------------------------------------

    def _handle(self, handler: _Handler, method: str) -> None:
        received_at = datetime.now(UTC)
        target = urlsplit(handler.path)
        headers = {name: value for name in _HEADERS_KEPT if (value := handler.headers.get(name)) is not None}
        try:
            raw, body_bytes = _read_body(handler, self.max_body_bytes)
        except (ValueError, OSError) as exc:
            verdict = _Verdict(200, "accepted", "", {}, target.path)
            _reject(verdict, _Rejection(400, "invalid_body", f"could not read the request body: {exc}"))
            self._finish(handler, method, target.path, target.query, verdict, None, 0, headers, received_at, True)
            return
        fault = self._take_fault()
        if fault is not None and fault.kind == "slow" and self._stopping.wait(fault.seconds):
            handler.close_connection = True
            return
        verdict = self._judge(method, target.path, target.query, raw, body_bytes, handler)
        self._finish(handler, method, target.path, target.query, verdict, fault, body_bytes, headers, received_at)

    def _judge(self, method: str, path: str, query: str, raw: bytes, body_bytes: int, handler: _Handler) -> _Verdict:
        endpoint = path if path.endswith("/") else path + "/"
        compression = parse_qs(query).get("compression", [""])[-1]
        encoding = (handler.headers.get("Content-Encoding") or "").strip().lower()
        gzipped = encoding in ("gzip", "x-gzip") or compression in ("gzip", "gzip-js")
        # Filled in as the request is understood, so a rejection still reports what was learned.
        verdict = _Verdict(200, "accepted", "", {"status": 1}, endpoint, gzip=gzipped)
        try:
            if endpoint not in _ENDPOINTS:
                raise _Rejection(404, "not_found", f"no capture endpoint at {path}")
            if endpoint == AI_BATCH_PATH and not self.ai_endpoint:
                raise _Rejection(
                    404, "not_found", f"{AI_BATCH_PATH} is switched off here (ai_endpoint=False), as on older PostHog"
                )
            if method != "POST":
                raise _Rejection(405, "method_not_allowed", f"{endpoint} takes POST, not {method}")
            if encoding not in ("", "identity", "gzip", "x-gzip"):
                raise _Rejection(400, "unsupported_encoding", f"Content-Encoding {encoding!r} is not supported")
            if compression not in ("", "gzip", "gzip-js"):
                raise _Rejection(400, "unsupported_encoding", f"compression={compression!r} is not supported")
            body = self._decode(raw, body_bytes, gzipped)
            verdict.decoded_bytes = len(body)
            self._check_body(endpoint, body, verdict)
        except _Rejection as rejection:
            _reject(verdict, rejection)
        return verdict

    def _decode(self, raw: bytes, body_bytes: int, gzipped: bool) -> bytes:
        limit = self.max_body_bytes
        # The raw body is not buffered past the limit: a gzip stream larger than the limit
        # decompresses to more than it in practice, so both are answered 413.
        if body_bytes > limit:
            raise _Rejection(413, "payload_too_large", f"request body is {body_bytes} bytes; the limit is {limit}")
        if not gzipped:
            return raw
        try:
            body = _gunzip(raw, limit)
        except ValueError as exc:
            raise _Rejection(400, "invalid_body", f"body is not valid gzip: {exc}") from None
        if body is None:
            raise _Rejection(413, "payload_too_large", f"request body is above {limit} bytes after decompression")
        return body

    def _check_body(self, endpoint: str, body: bytes, verdict: _Verdict) -> None:
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise _Rejection(400, "invalid_payload", f"body is not JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise _Rejection(400, "invalid_payload", f"body must be a JSON object, not {type(payload).__name__}")
        sent_at = payload.get("sent_at")
        verdict.sent_at = sent_at if isinstance(sent_at, str) else None
        is_batch = "batch" in payload or endpoint in (BATCH_PATH, AI_BATCH_PATH)
        batch = payload.get("batch") if is_batch else None
        verdict.event_count = len(batch) if isinstance(batch, list) else 0 if is_batch else 1

        key = payload.get("api_key") or payload.get("token")
        if not isinstance(key, str) or not key:
            raise _Rejection(401, "invalid_api_key", "no project api key: the body has no api_key or token")
        if self.api_key is not None and key != self.api_key:
            raise _Rejection(
                401, "invalid_api_key", f"api key {_mask(key)} is not this server's ({_mask(self.api_key)})"
            )

        if is_batch:
            if not isinstance(batch, list):
                raise _Rejection(400, "invalid_payload", "body has no 'batch' list of events")
            if not batch:
                raise _Rejection(400, "invalid_payload", "the batch is empty")
            events: list[Any] = batch
        else:
            events = [{k: v for k, v in payload.items() if k not in ("api_key", "token", "sent_at")}]

        for index, event in enumerate(events):
            problem = _event_problem(event)
            if problem:
                where = f"event {index + 1} of {len(events)}" if is_batch else "the event"
                raise _Rejection(400, "invalid_event", f"{where} {problem}; the whole request is rejected")
        limit = self.max_ai_event_bytes if endpoint == AI_BATCH_PATH else self.max_event_bytes
        for index, event in enumerate(events):
            size = len(json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode())
            if size > limit:
                raise _Rejection(
                    413,
                    "event_too_large",
                    f"event {index + 1} ({event['event']}) is {size} bytes; {endpoint} takes at most {limit} per event",
                )
        verdict.events = events
        verdict.detail = _events_text(len(events))

    def _finish(
        self,
        handler: _Handler,
        method: str,
        path: str,
        query: str,
        verdict: _Verdict,
        fault: _Fault | None,
        body_bytes: int,
        headers: dict[str, str],
        received_at: datetime,
        close: bool = False,
    ) -> None:
        status: int | None = verdict.status
        outcome, detail, body = verdict.outcome, verdict.detail, verdict.body
        extra_headers: dict[str, str] = {}
        if fault is not None and fault.kind == "fail":
            status, outcome = fault.status, "failed"
            detail = f"injected by {fault.describe()}"
            body = {"type": "server_error" if fault.status >= 500 else "client_error", "detail": detail}
            if fault.retry_after is not None:
                extra_headers["Retry-After"] = _retry_after(fault.retry_after)
        elif fault is not None and fault.kind == "drop":
            status, outcome, detail = None, "dropped", "connection closed without an answer (drop_next)"
        record = ReceivedRequest(
            method=method,
            path=path,
            query=query,
            status=status,
            outcome=outcome,
            detail=detail,
            fault=None if fault is None else fault.describe(),
            body_bytes=body_bytes,
            decoded_bytes=verdict.decoded_bytes,
            gzip=verdict.gzip,
            event_count=verdict.event_count,
            headers=headers,
            received_at=received_at,
        )
        # Recorded before answering, so a client that has its answer finds it recorded.
        with self._changed:
            if outcome == "accepted":
                for event in verdict.events:
                    self._remember(event, verdict, received_at)
            self._requests.append(record)
            self._changed.notify_all()
        if self.on_request is not None:
            try:
                self.on_request(record)
            except Exception as exc:  # a broken callback must not leave the client unanswered
                print(f"capture server: on_request callback failed: {exc!r}", file=sys.stderr)
        if status is None:
            handler.close_connection = True
            return
        handler.respond(status, body, extra_headers, close)

    def _remember(self, event: dict[str, Any], verdict: _Verdict, received_at: datetime) -> None:
        key = _uuid_key(event.get("uuid"))
        if key is not None:
            if key in self._seen_uuids:
                self._duplicates += 1
            self._seen_uuids.add(key)
        self._events.append(ReceivedEvent(event, verdict.path, verdict.gzip, verdict.sent_at, received_at))

    def _waited_too_long(self, wanted: str, got: int, timeout: float, predicate: object) -> str:
        matching = "" if predicate is None else " matching the predicate"
        events = [f"{e.name} on {e.path}" for e in self._events[-20:]]
        answers = [f"{r.method} {r.path} -> {r.status} {r.outcome}: {r.detail}" for r in self._requests[-10:]]
        return (
            f"waited {timeout:g}s for {wanted}{matching}, got {got}. "
            f"Events received ({len(self._events)}): {events or 'none'}. "
            f"Requests ({len(self._requests)}, last 10): {answers or 'none'}"
        )


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], capture: CaptureServer, family: socket.AddressFamily) -> None:
        self.address_family = family
        self.capture = capture
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, a DNS lookup that can stall; skip it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        # As ThreadingMixIn does, but the server learns of each thread before it runs, so that
        # stop() can join even a thread whose connection it never saw open.
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name="capture-server-request",
            daemon=True,
        )
        self.capture._spawned(thread)
        thread.start()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that hang up mid-request are normal in fault tests; say so only when asked.
        if self.capture.verbose:
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "posthog-lambda-capture"
    # Idle kept-alive connections are closed after this long.
    timeout = 60
    # Both guarded by the server's _connections_lock: busy from the request line to the answer,
    # closing when refuse_for wants the connection gone after the answer.
    busy = False
    closing = False

    @property
    def capture(self) -> CaptureServer:
        return cast(_HTTPServer, self.server).capture

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without this, Nagle's algorithm and the
        # client's delayed ACK add 40 ms to every kept-alive exchange.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.capture._opened(self)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.capture._closed(self)

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        finally:
            self.capture._request_ended(self)

    def parse_request(self) -> bool:
        self.capture._request_started(self)
        return super().parse_request()

    def do_POST(self) -> None:
        self.capture._handle(self, "POST")

    def do_GET(self) -> None:
        self.capture._handle(self, "GET")

    def respond(self, status: int, body: Mapping[str, Any], headers: Mapping[str, str], close: bool) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in headers.items():
            self.send_header(name, value)
        if close:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)

    def abort(self) -> None:
        """Shut the connection down so its thread stops waiting on it."""
        # OSError: already closed by the client or by finish().
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def log_message(self, format: str, *args: Any) -> None:
        if self.capture.verbose:
            super().log_message(format, *args)


def _close_listener(httpd: _HTTPServer) -> None:
    # On Linux this refuses new connections at once and wakes serve_forever's select, so the
    # shutdown below does not wait out a poll interval; elsewhere it may fail, and the poll remains.
    with contextlib.suppress(OSError):
        httpd.socket.shutdown(socket.SHUT_RDWR)
    httpd.shutdown()
    httpd.server_close()


def _read_body(handler: _Handler, limit: int) -> tuple[bytes, int]:
    """Read the whole body, keeping at most ``limit + 1`` bytes; return them and the full size.

    Reading it all (rather than answering early) lets the client see our answer instead of a reset.
    """
    kept = bytearray()
    total = 0

    def take(size: int) -> None:
        nonlocal total
        while size > 0:
            chunk = handler.rfile.read(min(size, _READ_CHUNK))
            if not chunk:
                raise ValueError("the client closed the connection before sending the whole body")
            size -= len(chunk)
            total += len(chunk)
            if len(kept) <= limit:
                kept.extend(chunk[: limit + 1 - len(kept)])

    if "chunked" in (handler.headers.get("Transfer-Encoding") or "").lower():
        while True:
            line = handler.rfile.readline(1024)
            size = int(line.split(b";")[0].strip() or b"x", 16)
            if size == 0:
                while handler.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                break
            take(size)
            handler.rfile.readline(1024)
    else:
        length = handler.headers.get("Content-Length")
        size = int(length) if length is not None else 0
        if size < 0:
            raise ValueError(f"Content-Length {length} is negative")
        take(size)
    return bytes(kept), total


def _gunzip(raw: bytes, limit: int) -> bytes | None:
    """Decompress a (possibly multi-member) gzip body; ``None`` when it exceeds ``limit`` bytes.

    Decompressing in bounded steps keeps a small gzip bomb from taking the memory it asks for.
    """
    out = bytearray()
    data = raw
    try:
        while True:
            decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
            out += decompressor.decompress(data, limit + 1 - len(out))
            if len(out) > limit or decompressor.unconsumed_tail:
                return None
            if not decompressor.eof:
                raise ValueError("the gzip stream is truncated")
            data = decompressor.unused_data
            if not data.strip(b"\0"):
                return bytes(out)
    except zlib.error as exc:
        raise ValueError(str(exc)) from None


def _event_problem(event: object) -> str | None:
    if not isinstance(event, dict):
        return f"is not a JSON object but {type(event).__name__}"
    name = event.get("event")
    if not isinstance(name, str) or not name:
        return "has no event name"
    distinct_id = event.get("distinct_id")
    if isinstance(distinct_id, bool) or not isinstance(distinct_id, str | int | float) or distinct_id == "":
        return f"({name}) has no distinct_id"
    properties = event.get("properties")
    if properties is not None and not isinstance(properties, dict):
        return f"({name}) has properties that are not a JSON object"
    value = event.get("uuid")
    if value is not None and _uuid_key(value) is None:
        return f"({name}) has an invalid uuid {value!r}"
    return None


def _uuid_key(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def _reject(verdict: _Verdict, rejection: _Rejection) -> None:
    kind = {401: "authentication_error", 404: "not_found"}.get(rejection.status, "validation_error")
    verdict.status, verdict.outcome, verdict.detail = rejection.status, "rejected", rejection.detail
    verdict.body = {"type": kind, "code": rejection.code, "detail": rejection.detail}
    verdict.events = []


def _retry_after(value: int | float | str) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _events_text(count: int) -> str:
    return f"{count} event" if count == 1 else f"{count} events"


def _mask(key: str) -> str:
    return repr(key[:8] + "…") if len(key) > 8 else repr(key)


# -- command line ------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run a capture server in the foreground until Ctrl-C, then print the trace tree."""
    parser = argparse.ArgumentParser(
        prog="python -m posthog_lambda.local.capture",
        description="A local PostHog capture server. Ctrl-C prints what arrived as PostHog's trace view.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default: any free port)")
    keys = parser.add_mutually_exclusive_group()
    keys.add_argument("--api-key", default="phc_local", help="the project key to accept (default phc_local)")
    keys.add_argument("--any-key", action="store_true", help="accept any non-empty project key")
    parser.add_argument("--no-ai-endpoint", action="store_true", help="answer 404 on /i/v0/ai/batch/, as older PostHog")
    parser.add_argument("--verbose", action="store_true", help="also log every HTTP request to stderr")
    args = parser.parse_args(argv)

    server = CaptureServer(
        args.host,
        args.port,
        api_key=None if args.any_key else args.api_key,
        ai_endpoint=not args.no_ai_endpoint,
        verbose=args.verbose,
        on_request=_print_request,
    )
    try:
        server.start()
    except OSError as exc:
        print(f"cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    key = "any key" if args.any_key else f"api key {args.api_key}"
    ai = "off (404)" if args.no_ai_endpoint else "on"
    # SIGTERM ends it like Ctrl-C, so a supervisor's stop still prints the tree.
    previous = (
        signal.signal(signal.SIGTERM, _interrupt) if threading.current_thread() is threading.main_thread() else None
    )
    # The banner is printed inside the try: a Ctrl-C right after it must still stop cleanly.
    try:
        print(f"PostHog capture server on {server.url} ({key}; AI endpoint {ai}). Ctrl-C to stop.", flush=True)
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    print(server.trace_tree(), flush=True)
    return 0


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _print_request(request: ReceivedRequest) -> None:
    when = request.received_at.astimezone().strftime("%H:%M:%S")
    encoding = "gzip, " if request.gzip else ""
    status = "no answer" if request.status is None else str(request.status)
    line = f"{when} {request.method} {request.path} -> {status} {request.outcome}"
    if request.outcome == "accepted":
        line += f": {_events_text(request.event_count)} ({encoding}{request.body_bytes} bytes)"
    else:
        line += f": {request.detail}"
    print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
