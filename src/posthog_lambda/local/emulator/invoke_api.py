"""Lambda's Invoke API (2015-03-31) in front of local environments, so that anything with an AWS
SDK, a function among them, can invoke them as it invokes functions on AWS, as AWS's Runtime
Interface Emulator lets a client invoke the function it runs:

    with LambdaEnvironment(...) as env, InvokeApi({"my-function": env}) as api:
        client = boto3.client("lambda", endpoint_url=api.url, region_name="us-east-1", ...)
        client.invoke(FunctionName="my-function", Payload=b'{"question": "hi"}')

It answers ``POST /2015-03-31/functions/{FunctionName}/invocations`` as Lambda's API reference
says Invoke answers, for the environment the name is mapped to (a name, a name with a qualifier,
a full or partial ARN; the qualifier, there or as ``?Qualifier=``, is accepted and ignored: an
environment has one version, ``$LATEST``):

- ``X-Amz-Invocation-Type: RequestResponse`` (the default) invokes and waits: 200 with the
  function's response, or with its error and ``X-Amz-Function-Error: Unhandled`` when it raised,
  timed out or crashed (Lambda's status code is about the request, not the function); 429
  ``TooManyRequestsException`` when a Managed Instances environment had no worker free. ``Event``
  answers 202 at once and invokes in a thread of its own (:attr:`InvokeApi.event_results` has
  the outcome: Lambda's retries, destinations and dead-letter queues are not reproduced);
  ``DryRun`` checks the request and answers 204. Anything else: 400
  ``InvalidParameterValueException``.
- ``X-Amz-Client-Context``, base64 of a JSON object (3,583 bytes at most as sent), reaches the
  handler as ``context.client_context`` (and its ``"w3c"`` key as ``context.w3c()``); for
  synchronous invocations only, as Lambda documents. Anything else: 400
  ``InvalidRequestContentException``.
- The body is the event, JSON (empty: ``null``); anything else is 400
  ``InvalidRequestContentException``; more than 6 MB (1 MB for ``Event``): 413
  ``RequestTooLargeException``.
- An unknown function is 404 ``ResourceNotFoundException``; another path 404, another method on
  the path 405; a failure while answering 500 ``ServiceException`` (and one log record).

Errors are answered as Lambda answers them, a JSON body ``{"Type", "message"}`` and the error's
name in ``x-amzn-ErrorType``, from which botocore's rest-json parser takes the code: boto3 raises
``client.exceptions.ResourceNotFoundException`` and the rest by name.

An on-demand (or SnapStart) environment runs one invocation at a time: invocations that reach
it together, ``Event`` ones included, wait for each other here (on AWS, Lambda would start
another environment). So a function that invokes itself through the API waits for its own
invocation, and times out. A Managed Instances environment is invoked concurrently, as it is
made to be.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import socket
import socketserver
import sys
import threading
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import cast
from urllib.parse import unquote, urlsplit

from .lifecycle import MANAGED_INSTANCES, LambdaEnvironment

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from email.message import Message
    from types import TracebackType
    from typing import Any, Self

    from .results import InvokeResult

_log = logging.getLogger(__name__)

API_VERSION = "2015-03-31"
REQUEST_RESPONSE = "RequestResponse"
EVENT = "Event"
DRY_RUN = "DryRun"
INVOCATION_TYPES = (REQUEST_RESPONSE, EVENT, DRY_RUN)
MAX_CLIENT_CONTEXT_BYTES = 3583
"""The longest ``X-Amz-Client-Context`` Lambda takes, base64 as sent."""
MAX_PAYLOAD_BYTES = 6 * 1024 * 1024
"""The largest event of a synchronous invocation."""
MAX_EVENT_PAYLOAD_BYTES = 1024 * 1024
"""The largest event of an asynchronous (``Event``) invocation."""
EXECUTED_VERSION = "$LATEST"
_READ_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Reply:
    """What the API answers a request with."""

    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    close: bool = False
    """Close the connection once answered."""


def error_reply(status: int, code: str, message: str, *, kind: str = "User", **extra: Any) -> Reply:
    """An error as Lambda answers it: the code in ``x-amzn-ErrorType`` (where botocore looks
    first), ``Type`` (``User`` or ``Service``) and ``message`` in the body, with ``extra``
    members of the error's shape (``Reason``, say)."""
    body = json.dumps({"Type": kind, "message": message, **extra}).encode()
    return Reply(status, body, {"x-amzn-ErrorType": code, "x-amzn-RequestId": str(uuid.uuid4())})


class Refused(Exception):
    """The request is refused with :attr:`reply`."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


def invoked_function(path: str) -> str | None:
    """The FunctionName of an invocations path (percent-decoded), or None for any other path."""
    parts = path.split("/")
    if len(parts) != 5 or parts[0] != "" or parts[1:3] != [API_VERSION, "functions"] or parts[4] != "invocations":
        return None
    return unquote(parts[3]) or None


def function_name_in(identifier: str) -> str:
    """The function's name in a FunctionName as Lambda takes it: ``my-function``,
    ``arn:aws:lambda:us-east-1:123456789012:function:my-function`` or the partial
    ``123456789012:function:my-function``, each perhaps with ``:qualifier`` after it."""
    parts = identifier.split(":")
    if len(parts) >= 7 and parts[0] == "arn" and parts[5] == "function":
        return parts[6]
    if len(parts) >= 3 and parts[1] == "function":
        return parts[2]
    return parts[0]


def client_context_from(header: str | None) -> dict[str, Any] | None:
    """The client context an ``X-Amz-Client-Context`` header carries (None without one).
    Raises :class:`Refused` (400 ``InvalidRequestContentException``) for one Lambda refuses:
    longer than 3,583 bytes, or not base64 of a JSON object."""
    if not header:
        return None
    if len(header) > MAX_CLIENT_CONTEXT_BYTES:
        # Header values arrive decoded as Latin-1: one character per byte sent.
        message = f"Client context must be {MAX_CLIENT_CONTEXT_BYTES} bytes at most, base64-encoded: {len(header)} sent"
        raise Refused(error_reply(400, "InvalidRequestContentException", message))
    try:
        decoded = json.loads(base64.b64decode(header, validate=True))
    except ValueError:  # binascii.Error, JSONDecodeError and UnicodeDecodeError all are
        decoded = None
    if not isinstance(decoded, dict):
        message = "Client context must be a valid Base64-encoded JSON object."
        raise Refused(error_reply(400, "InvalidRequestContentException", message))
    return decoded


def event_from(body: bytes) -> Any:
    """The event a request's body carries: its JSON (an empty body is ``null``). Raises
    :class:`Refused` (400 ``InvalidRequestContentException``) for a body that is not JSON."""
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError as exc:
        message = f"Could not parse request body into json: Could not parse payload into json: {exc}"
        raise Refused(error_reply(400, "InvalidRequestContentException", message)) from None


def invocation_reply(result: InvokeResult) -> Reply:
    """A synchronous invocation's answer: 200 with the response, or with the error and
    ``X-Amz-Function-Error`` (raised, timed out, crashed: the function failed, not the request);
    429 when nothing ran for want of a free worker."""
    headers = {"X-Amz-Executed-Version": EXECUTED_VERSION, "x-amzn-RequestId": result.request_id}
    if result.status == "success":
        # The environment keeps the response decoded; a JSON one is sent again as JSON.
        body = json.dumps(result.payload, ensure_ascii=False).encode()
        return Reply(200, body, headers)
    if result.status == "unavailable":
        message = (result.error or {}).get("errorMessage", "Rate Exceeded.")
        return error_reply(429, "TooManyRequestsException", message, Reason="ConcurrentInvocationLimitExceeded")
    error = result.error or {"errorType": "Unknown", "errorMessage": f"the invocation ended as {result.status}"}
    return Reply(200, json.dumps(error).encode(), {**headers, "X-Amz-Function-Error": "Unhandled"})


class InvokeApi:
    """Lambda's Invoke API for ``functions`` (name -> environment) on 127.0.0.1, at :attr:`url`,
    from :meth:`start` (or entering the ``with`` block) to :meth:`close`; what it answers is in
    the module's docstring. The environments are the caller's: started and closed by it, and
    closed after this (``with`` them first), so that no invocation outlives its environment.
    """

    def __init__(self, functions: Mapping[str, LambdaEnvironment]) -> None:
        for name, env in functions.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"function name {name!r}: a non-empty string")
            if not isinstance(env, LambdaEnvironment):
                raise TypeError(f"functions[{name!r}]: a LambdaEnvironment, not {type(env).__name__}")
        self.functions = dict(functions)
        self.event_results: list[tuple[str, InvokeResult]] = []
        """The outcome of each ``Event`` invocation, (function name, result), as each ends."""
        self._one_at_a_time = {
            id(env): threading.Lock() for env in self.functions.values() if env.lifecycle != MANAGED_INSTANCES
        }
        """For each environment that runs one invocation at a time, held through each."""
        self._cond = threading.Condition()
        self._requests = 0
        """Requests being answered."""
        self._events = 0
        """``Event`` invocations accepted and not ended yet."""
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._closing = False

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(self) -> Self:
        """Listen on a free port of 127.0.0.1 and serve, in daemon threads."""
        if self._server is not None or self._closing:
            raise RuntimeError("InvokeApi.start() was already called; make a new one")
        self._server = _Server(self)
        threading.Thread(target=self._server.serve_forever, name="invoke-api", daemon=True).start()
        return self

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``: boto3's ``endpoint_url``."""
        assert self._server is not None, "start() the Invoke API first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        """Stop listening, let the requests being answered and the ``Event`` invocations
        running end (each by its deadline at the latest), then close every connection. Safe to
        call twice."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
        server = self._server
        if server is not None:
            server.shutdown()
            server.server_close()
        with self._cond:
            while self._requests or self._events:
                self._cond.wait()
            connections = list(self._connections)
        for connection in connections:
            # Wakes a kept-alive connection's thread, which waits for a next request.
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def wait_for_events(self, timeout: float | None = None) -> bool:
        """Wait until every ``Event`` invocation accepted so far has ended (its outcome is in
        :attr:`event_results`); False if some had not within ``timeout`` seconds."""
        with self._cond:
            return self._cond.wait_for(lambda: self._events == 0, timeout)

    # -- answering (in the server's threads) -----------------------------------------------------

    @contextlib.contextmanager
    def _request(self) -> Iterator[bool]:
        """Counts a request while it is answered; yields False once the API is closing."""
        with self._cond:
            if self._closing:
                accepted = False
            else:
                accepted = True
                self._requests += 1
        try:
            yield accepted
        finally:
            if accepted:
                with self._cond:
                    self._requests -= 1
                    self._cond.notify_all()

    def _opened(self, connection: socket.socket) -> None:
        with self._cond:
            self._connections.add(connection)

    def _closed(self, connection: socket.socket) -> None:
        with self._cond:
            self._connections.discard(connection)

    def answer(self, method: str, target: str, headers: Message[str, str], body: bytes, size: int) -> Reply:
        """The reply to ``method`` ``target`` (path and query) with ``headers`` and ``body``
        (its first bytes, when it was larger than any event may be: ``size`` in all)."""
        path = urlsplit(target).path
        identifier = invoked_function(path)
        if identifier is None:
            return error_reply(404, "UnknownOperationException", f"no operation at {method} {path}")
        if method != "POST":
            reply = error_reply(405, "MethodNotAllowedException", f"{method} {path}: Invoke is POST")
            return Reply(reply.status, reply.body, {**reply.headers, "Allow": "POST"})
        name = function_name_in(identifier)
        env = self.functions.get(name)
        if env is None:
            return error_reply(404, "ResourceNotFoundException", f"Function not found: {identifier}")
        invocation_type = headers.get("X-Amz-Invocation-Type") or REQUEST_RESPONSE
        if invocation_type not in INVOCATION_TYPES:
            message = (
                f"1 validation error detected: Value '{invocation_type}' at 'invocationType' failed to satisfy "
                f"constraint: Member must satisfy enum value set: [{', '.join(INVOCATION_TYPES)}]"
            )
            return error_reply(400, "InvalidParameterValueException", message)
        limit = MAX_EVENT_PAYLOAD_BYTES if invocation_type == EVENT else MAX_PAYLOAD_BYTES
        if size > limit:
            message = f"{size} bytes: the payload of an {invocation_type} invocation is {limit} bytes at most"
            return error_reply(413, "RequestTooLargeException", message)
        try:
            client_context = client_context_from(headers.get("X-Amz-Client-Context"))
            event = event_from(body)
        except Refused as refused:
            return refused.reply
        if invocation_type == DRY_RUN:
            return Reply(204, headers={"x-amzn-RequestId": str(uuid.uuid4())})
        if invocation_type == EVENT:
            self._start_event(name, env, event)
            return Reply(202, headers={"x-amzn-RequestId": str(uuid.uuid4())})
        return invocation_reply(self._invoke(env, event, client_context))

    def _invoke(self, env: LambdaEnvironment, event: Any, client_context: dict[str, Any] | None) -> InvokeResult:
        lock = self._one_at_a_time.get(id(env))
        with lock if lock is not None else contextlib.nullcontext():
            return env.invoke(event, client_context=client_context)

    def _start_event(self, name: str, env: LambdaEnvironment, event: Any) -> None:
        with self._cond:
            self._events += 1
        thread = threading.Thread(target=self._run_event, args=(name, env, event), name=f"invoke-{name}", daemon=True)
        thread.start()

    def _run_event(self, name: str, env: LambdaEnvironment, event: Any) -> None:
        result: InvokeResult | None = None
        try:
            # Lambda passes a client context to synchronous invocations only.
            result = self._invoke(env, event, None)
        except Exception:
            _log.exception("Invoke API: the Event invocation of %s failed", name)
        finally:
            with self._cond:
                if result is not None:
                    self.event_results.append((name, result))
                self._events -= 1
                self._cond.notify_all()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, api: InvokeApi) -> None:
        self.api = api
        super().__init__(("127.0.0.1", 0), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the host's name up (getfqdn), which can stall; not needed.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "127.0.0.1", int(self.server_address[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up (or a connection closed by close()) is no failure of the API's.
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            _log.error("Invoke API: a connection from %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "posthog-lambda-invoke-api"

    @property
    def api(self) -> InvokeApi:
        return cast(_Server, self.server).api

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle's algorithm and the
        # client's delayed ACK add ~40 ms to every kept-alive exchange.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.api._opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.api._closed(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self._handle()

    do_GET = do_HEAD = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_POST

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # http.server's own refusals (a malformed request line, an unknown method) in JSON too.
        phrase = HTTPStatus(code).phrase
        self._reply(error_reply(code, phrase.replace(" ", "").replace("-", ""), message or phrase), close=True)

    def _handle(self) -> None:
        with self.api._request() as accepted:
            if not accepted:
                self._drain()
                closed = error_reply(503, "ServiceException", "the Invoke API is closed", kind="Service")
                self._reply(closed, close=True)
                return
            try:
                reply = self._answer()
            except Exception:
                _log.exception("Invoke API: answering %s %s failed", self.command, self.path)
                reply = error_reply(500, "ServiceException", "the Invoke API failed to answer", kind="Service")
            self._reply(reply)

    def _answer(self) -> Reply:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            # Not what AWS SDKs send; refused rather than read, and the connection closed.
            reply = error_reply(411, "LengthRequiredException", "Content-Length is required")
            return Reply(reply.status, reply.body, reply.headers, close=True)
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if length < 0:
                raise ValueError(length)
        except ValueError:
            reply = error_reply(400, "InvalidRequestContentException", "Content-Length is not a length")
            return Reply(reply.status, reply.body, reply.headers, close=True)
        body = self._read(length, MAX_PAYLOAD_BYTES + 1)
        return self.api.answer(self.command, self.path, self.headers, body, length)

    def _read(self, length: int, keep: int) -> bytes:
        """The body's first ``keep`` bytes; the rest is read and dropped, so that the connection
        can carry the next request."""
        kept = self.rfile.read(min(length, keep))
        left = length - len(kept)
        while left > 0:
            chunk = self.rfile.read(min(left, _READ_CHUNK))
            if not chunk:
                break
            left -= len(chunk)
        return kept

    def _drain(self) -> None:
        with contextlib.suppress(ValueError):
            self._read(int(self.headers.get("Content-Length") or 0), 0)

    def _reply(self, reply: Reply, close: bool = False) -> None:
        if reply.close or close:
            self.close_connection = True
        self.send_response(reply.status)
        no_body = self.command == "HEAD" or reply.status in (204, 304) or reply.status < 200
        if reply.status != 204:
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply.body)))
        for key, value in reply.headers.items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if not no_body:
            self.wfile.write(reply.body)
        self.wfile.flush()
