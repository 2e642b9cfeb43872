"""The HTTP side of the local environment's APIs: a route table per API, and the server.

The Runtime API (2018-06-01), the Extensions API (2020-01-01) and the Telemetry API
(2022-07-01, and the Logs API's 2020-08-15 path) each have a table from a method and a path
to a route: a method of a small object that reads the request, calls what serves that API
(:class:`LambdaEnvironment` for the runtime and telemetry, :class:`ExtensionsApi` for the
extensions) and says what to answer. :class:`ApiServer` serves the tables it is given on
127.0.0.1; anything else is answered 404.
"""

from __future__ import annotations

import io
import json
import socket
import sys
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, cast

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from email.message import Message
    from typing import Any, Self

    from .extensions import ExtensionsApi
    from .lifecycle import LambdaEnvironment

EXTENSION_REGISTER = "/2020-01-01/extension/register"
EXTENSION_NEXT = "/2020-01-01/extension/event/next"
EXTENSION_INIT_ERROR = "/2020-01-01/extension/init/error"
EXTENSION_EXIT_ERROR = "/2020-01-01/extension/exit/error"
RUNTIME_NEXT = "/2018-06-01/runtime/invocation/next"
RUNTIME_RESPONSE = "/2018-06-01/runtime/invocation/{request_id}/response"
RUNTIME_ERROR = "/2018-06-01/runtime/invocation/{request_id}/error"
RUNTIME_INIT_ERROR = "/2018-06-01/runtime/init/error"
RUNTIME_RESTORE_NEXT = "/2018-06-01/runtime/restore/next"
RUNTIME_RESTORE_ERROR = "/2018-06-01/runtime/restore/error"
TELEMETRY_SUBSCRIBE = "/2022-07-01/telemetry"
LOGS_SUBSCRIBE = "/2020-08-15/logs"

GONE_EVENT_TYPE = "_GONE"
"""The type of the event that ends an extension's ``next`` call with 500 Environment.Gone."""


def api_error(error_type: str, message: str) -> dict[str, Any]:
    """An error body as Lambda's APIs answer it."""
    return {"errorType": error_type, "errorMessage": message}


def json_or_text(body: bytes) -> Any:
    """A body decoded from JSON, or as text when it is not JSON."""
    try:
        return json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    """Without the query string."""
    headers: Message[str, str]
    body: bytes
    peer: tuple[str, int] | None = None
    """The client's address and port: which process is calling, for those who need to know."""

    @property
    def parts(self) -> list[str]:
        return self.path.strip("/").split("/")

    @property
    def extension_id(self) -> str | None:
        return self.headers.get("Lambda-Extension-Identifier")


@dataclass(frozen=True)
class Answer:
    status: int
    payload: Any
    """Bytes and text are sent as they are, anything else as JSON."""
    headers: Mapping[str, str] = field(default_factory=dict)
    close: bool = False
    """Close the connection once answered."""
    then: Callable[[], None] | None = None
    """Called once the answer is written."""


if TYPE_CHECKING:
    Routes = dict[tuple[str, str], Callable[[Request], Answer]]
    """A route table: what answers each method and path."""


def gone() -> Answer:
    """Ends a call with 500 Environment.Gone: the environment it was made to is no more."""
    return Answer(500, api_error("Environment.Gone", "the environment was shut down"), close=True)


def accepted() -> Answer:
    return Answer(202, {"status": "OK"})


def _route_path(path: str) -> str:
    """The path a route is filed under: the path itself, or a Runtime API invocation result's
    path with ``{request_id}`` for the request id."""
    parts = path.strip("/").split("/")
    if len(parts) == 5 and parts[:3] == ["2018-06-01", "runtime", "invocation"] and parts[4] in ("response", "error"):
        return f"/2018-06-01/runtime/invocation/{{request_id}}/{parts[4]}"
    return path


class _RouteSet:
    """One API's routes: ``ROUTES`` maps (method, path pattern) to the name of the method that
    answers it; ``owner`` is what those methods act on."""

    ROUTES: ClassVar[dict[tuple[str, str], str]] = {}

    def __init__(self, owner: Any) -> None:
        self.owner = owner

    def table(self) -> Routes:
        return {key: getattr(self, name) for key, name in self.ROUTES.items()}


class ExtensionsRoutes(_RouteSet):
    """The Extensions API's routes, served by an :class:`ExtensionsApi`."""

    owner: ExtensionsApi
    ROUTES: ClassVar[dict[tuple[str, str], str]] = {
        ("POST", EXTENSION_REGISTER): "register",
        ("GET", EXTENSION_NEXT): "next_event",
        ("POST", EXTENSION_INIT_ERROR): "report_error",
        ("POST", EXTENSION_EXIT_ERROR): "report_error",
    }

    def register(self, request: Request) -> Answer:
        name = request.headers.get("Lambda-Extension-Name", "")
        status, payload, headers = self.owner.register(name, json_or_text(request.body))
        return Answer(status, payload, headers)

    def next_event(self, request: Request) -> Answer:
        identifier = request.extension_id
        event = self.owner.next_event(identifier)
        if event is None:
            return Answer(403, api_error("Extension.InvalidExtensionIdentifier", "unknown extension id"))
        if event.get("eventType") == GONE_EVENT_TYPE:
            return gone()
        return Answer(
            200,
            event,
            {"Lambda-Extension-Event-Identifier": str(uuid.uuid4())},
            then=lambda: self.owner.delivered(identifier, event),
        )

    def report_error(self, request: Request) -> Answer:
        kind = request.parts[2]
        error_type = request.headers.get("Lambda-Extension-Function-Error-Type", "Unknown")
        if self.owner.report_error(request.extension_id, kind, error_type, request.body):
            return accepted()
        return Answer(403, api_error("Extension.InvalidExtensionIdentifier", "unknown extension id"))


class RuntimeRoutes(_RouteSet):
    """The Runtime API's routes, served by the environment."""

    owner: LambdaEnvironment
    ROUTES: ClassVar[dict[tuple[str, str], str]] = {
        ("GET", RUNTIME_NEXT): "next_invocation",
        ("POST", RUNTIME_RESPONSE): "result",
        ("POST", RUNTIME_ERROR): "result",
        ("POST", RUNTIME_INIT_ERROR): "init_error",
    }

    def next_invocation(self, request: Request) -> Answer:
        body, headers = self.owner.runtime_next()
        if not headers:
            return gone()
        request_id = headers["Lambda-Runtime-Aws-Request-Id"]
        return Answer(200, body, headers, then=lambda: self.owner.note("runtime", f"invocation {request_id}"))

    def result(self, request: Request) -> Answer:
        parts = request.parts
        error_type = None
        if parts[4] == "error":
            error_type = request.headers.get("Lambda-Runtime-Function-Error-Type", "Unhandled")
        if self.owner.runtime_result(parts[3], request.body, error_type):
            return accepted()
        return Answer(400, api_error("InvalidRequestID", f"no invocation {parts[3]} waiting for a result"))

    def init_error(self, request: Request) -> Answer:
        self.owner.runtime_init_error(
            request.body, request.headers.get("Lambda-Runtime-Function-Error-Type", "Unknown")
        )
        return accepted()


class TelemetryRoutes(_RouteSet):
    """The Telemetry API's subscription route (and the older Logs API's), served by the environment."""

    owner: LambdaEnvironment
    ROUTES: ClassVar[dict[tuple[str, str], str]] = {
        ("PUT", TELEMETRY_SUBSCRIBE): "subscribe",
        ("PUT", LOGS_SUBSCRIBE): "subscribe",
    }

    def subscribe(self, request: Request) -> Answer:
        stub = self.owner.subscription_stub(request.path)
        if stub is not None:
            # Where the API is a stub (the Runtime Interface Emulator), nothing is checked.
            return Answer(202, stub)
        status, payload = self.owner.telemetry_subscribe(request.extension_id, json_or_text(request.body))
        return Answer(status, payload)


class ApiServer(ThreadingHTTPServer):
    """The route tables given, served on a free port of 127.0.0.1 in daemon threads."""

    daemon_threads = True

    def __init__(self, *tables: Routes) -> None:
        self.routes: Routes = {}
        for table in tables:
            self.routes.update(table)
        self._sent_before: dict[socket.socket, bytes] = {}
        super().__init__(("127.0.0.1", 0), _RequestHandler)

    def adopt(self, connection: socket.socket, sent_before: bytes) -> None:
        """Serve ``connection`` as if it had been accepted here and ``sent_before`` (a whole
        request) had come on it first: a restored process's call, made before the snapshot,
        carried on a connection of its own (see ``snapstart``)."""
        self._sent_before[connection] = sent_before
        self.process_request(connection, connection.getpeername())

    def sent_before(self, connection: socket.socket) -> bytes | None:
        return self._sent_before.pop(connection, None)

    @property
    def address(self) -> str:
        """``127.0.0.1:port``, as ``AWS_LAMBDA_RUNTIME_API`` gives it."""
        return f"127.0.0.1:{self.server_address[1]}"

    def start(self, thread_name: str) -> Self:
        threading.Thread(target=self.serve_forever, name=thread_name, daemon=True).start()
        return self

    def close(self) -> None:
        self.shutdown()
        self.server_close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A process killed mid-request (timeout, reset, shutdown) is part of the lifecycle.
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class _Prefixed(io.RawIOBase):
    """A connection's input, with bytes that came before it in front."""

    def __init__(self, first: bytes, connection: socket.socket) -> None:
        self._first = first
        self._connection = connection

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._first:
            n = min(len(buffer), len(self._first))
            buffer[:n] = self._first[:n]
            self._first = self._first[n:]
            return n
        return self._connection.recv_into(buffer)


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        sent_before = cast(ApiServer, self.server).sent_before(self.connection)
        if sent_before is not None:
            self.rfile = io.BufferedReader(_Prefixed(sent_before, self.connection))
        # Headers and body go out in separate writes: without this, Nagle's algorithm and
        # delayed ACKs add ~40 ms to every exchange with the runtime client.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> None:
        if isinstance(payload, bytes):
            body = payload
        elif isinstance(payload, str):
            body = payload.encode()
        else:
            body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _route(self, method: str, body: bytes) -> None:
        path = self.path.split("?")[0]
        route = cast(ApiServer, self.server).routes.get((method, _route_path(path)))
        if route is None:
            answer = Answer(404, api_error("NotFound", f"no {method} {path}"))
        else:
            answer = route(Request(method, path, self.headers, body, (self.client_address[0], self.client_address[1])))
        if answer.close:
            self.close_connection = True
        self._send(answer.status, answer.payload, answer.headers)
        if answer.then is not None:
            answer.then()

    def do_GET(self) -> None:
        self._route("GET", b"")

    def do_POST(self) -> None:
        self._route("POST", self._body())

    def do_PUT(self) -> None:
        self._route("PUT", self._body())
