"""The local PostHog capture server: a real HTTP server on loopback that answers as PostHog's
capture service does (the rules are in ``ingestion``), records what it accepts (``received``),
injects the faults asked for (``faults``) and lays what it received out as a trace tree (``tree``)
and as a page in the browser (``viewer``: served at ``/``, or written to a file).

    with CaptureServer() as server:             # http://127.0.0.1:<free port>, key "phc_local"
        send_events(host=server.url)
        events = server.wait_for_events(3)
        print(server.trace_tree())
        server.write_html("build/traces.html")  # or open server.viewer_url while it runs

Run it in the foreground with ``posthog-lambda capture [--port N] [--api-key K]``.
Standard library only.
"""

from __future__ import annotations

import contextlib
import json
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

from .faults import Fault, FaultInjection
from .ingestion import MAX_AI_EVENT_BYTES, MAX_BODY_BYTES, MAX_EVENT_BYTES, Rejection, Verdict, judge, reject
from .received import Received, ReceivedEvent, ReceivedRequest
from .tree import render_trace_tree
from .viewer import EVENTS_PATH, PAGE_PATH, build_model, page_html, script_json, write_html

_HEADERS_KEPT = ("content-type", "content-encoding", "content-length", "transfer-encoding", "user-agent")
_READ_CHUNK = 64 * 1024
# serve_forever checks for shutdown this often; it bounds how long stop() and refuse_for() take.
_POLL_INTERVAL = 0.05
_REOPEN_ATTEMPTS = 100
_JOIN_TIMEOUT = 2.0
# The longest a viewer page's request for newer events is held open (it asks for less).
_MAX_VIEWER_WAIT = 60.0


class CaptureServer(Received, FaultInjection):
    """A real HTTP server on loopback that answers as PostHog's capture service does and records
    what it accepts.

    The rules, checked in this order, each answered with ``{"type", "code", "detail"}``: body above
    ``max_body_bytes`` after gunzip: 413; not a JSON object: 400; api key (``api_key`` or ``token``)
    missing or not ``api_key`` (``None`` accepts any non-empty key): 401; an event without a name
    or ``distinct_id``, or with an invalid uuid: 400; an event larger than its endpoint's limit
    (``max_event_bytes``; ``max_ai_event_bytes`` on ``/i/v0/ai/batch/``): 413. Any rejection
    refuses the whole request and records none of its events; otherwise 200 ``{"status": 1}``.
    ``ai_endpoint=False`` answers 404 on ``/i/v0/ai/batch/``, as older self-hosted PostHog does.

    ``on_request`` is called (in the server's thread) with each :class:`ReceivedRequest`. What
    was received is queried with the methods of :class:`Received`; faults are asked for with
    those of :class:`FaultInjection`.

    ``GET /`` is the trace viewer (:attr:`viewer_url`): a page showing what was received, which
    waits on ``GET /viewer/traces.json`` for more. Those two requests are not PostHog's: they are
    not recorded, take no injected fault and call no ``on_request``; every other request is
    answered as above.
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

        Received.__init__(self)
        # Pending faults are guarded by the records' condition too, so clear() forgets both at once.
        FaultInjection.__init__(self, self._changed)

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
        with self._changed:
            self._changed.notify_all()  # viewer pages waiting for events are answered now
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

    @property
    def viewer_url(self) -> str:
        """The trace viewer's address, e.g. ``http://127.0.0.1:54321/``: open it in a browser."""
        return self.url + PAGE_PATH

    def viewer_model(self) -> dict[str, Any]:
        """The trace viewer's model (``viewer.build_model``) of the received events, each uuid once."""
        version, events = self.snapshot()
        return build_model((received.event for received in events), version=version)

    def write_html(self, path: str | Path) -> Path:
        """Write the trace viewer for the received events (each uuid once) to ``path``, as one
        self-contained HTML file that needs no server; returns the path."""
        return write_html((received.event for received in self.unique_events()), path)

    def clear(self) -> None:
        """Forget every recorded event and request, the duplicate count and pending faults."""
        with self._changed:
            super().clear()
            self._forget_faults()

    def trace_tree(self) -> str:
        """The received events (each uuid once) laid out as PostHog's trace view would show them."""
        return render_trace_tree(received.event for received in self.unique_events())

    # -- refusing connections --------------------------------------------------------------

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

    # -- the trace viewer --------------------------------------------------------------------

    def _serve_viewer(self, handler: _Handler) -> bool:
        """Answer a viewer request (the page, or the page waiting for newer events); False for any
        other request, which is PostHog's to answer."""
        target = urlsplit(handler.path)
        if target.path not in (PAGE_PATH, EVENTS_PATH):
            return False
        # A GET rarely has a body; read one anyway so that a kept-alive connection stays in step.
        with contextlib.suppress(ValueError, OSError):
            _read_body(handler, 0)
        if target.path == PAGE_PATH:
            page = page_html(self.viewer_model(), live=True)
            handler.respond_bytes(200, "text/html; charset=utf-8", page.encode())
            return True
        query = parse_qs(target.query)
        try:
            after: int | None = int(query["after"][-1]) if "after" in query else None
            wait = float(query.get("wait", ["0"])[-1])
        except ValueError:
            handler.respond(
                400,
                {"type": "validation_error", "code": "invalid_query", "detail": "after and wait are numbers"},
                {},
                False,
            )
            return True
        # "not >= 0" also catches NaN, which no comparison would clamp.
        wait = min(wait, _MAX_VIEWER_WAIT) if wait >= 0 else 0.0
        version, events = self.wait_for_change(after, wait, self._stopping)
        model = build_model((received.event for received in events), version=version)
        handler.respond_bytes(200, "application/json", script_json(model).encode())
        return True

    # -- handling one request ----------------------------------------------------------------

    def _handle(self, handler: _Handler, method: str) -> None:
        received_at = datetime.now(UTC)
        target = urlsplit(handler.path)
        headers = {name: value for name in _HEADERS_KEPT if (value := handler.headers.get(name)) is not None}
        try:
            raw, body_bytes = _read_body(handler, self.max_body_bytes)
        except (ValueError, OSError) as exc:
            verdict = Verdict(200, "accepted", "", {}, target.path)
            reject(verdict, Rejection(400, "invalid_body", f"could not read the request body: {exc}"))
            self._finish(handler, method, target.path, target.query, verdict, None, 0, headers, received_at, True)
            return
        fault = self._take_fault()
        if fault is not None and fault.kind == "slow" and self._stopping.wait(fault.seconds):
            handler.close_connection = True
            return
        encoding = handler.headers.get("Content-Encoding")
        verdict = judge(self, method, target.path, target.query, raw, body_bytes, encoding)
        self._finish(handler, method, target.path, target.query, verdict, fault, body_bytes, headers, received_at)

    def _finish(
        self,
        handler: _Handler,
        method: str,
        path: str,
        query: str,
        verdict: Verdict,
        fault: Fault | None,
        body_bytes: int,
        headers: dict[str, str],
        received_at: datetime,
        close: bool = False,
    ) -> None:
        status: int | None = verdict.status
        outcome, detail, body = verdict.outcome, verdict.detail, verdict.body
        extra_headers: dict[str, str] = {}
        if fault is not None:
            status, outcome, detail, body, extra_headers = fault.answer(verdict)
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
        events = verdict.events if outcome == "accepted" else []
        # Recorded before answering, so a client that has its answer finds it recorded.
        self._record(
            record, [ReceivedEvent(e, verdict.path, verdict.gzip, verdict.sent_at, received_at) for e in events]
        )
        if self.on_request is not None:
            try:
                self.on_request(record)
            except Exception as exc:  # a broken callback must not leave the client unanswered
                print(f"capture server: on_request callback failed: {exc!r}", file=sys.stderr)
        if status is None:
            handler.close_connection = True
            return
        handler.respond(status, body, extra_headers, close)


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
        if not self.capture._serve_viewer(self):
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

    def respond_bytes(self, status: int, content_type: str, payload: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        # Always what was received just now; and what the page shows is data, never a program.
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
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
