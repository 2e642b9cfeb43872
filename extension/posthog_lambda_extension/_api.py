"""A client for the Lambda Extensions API, over a plain socket.

``http.client`` would double what the extension imports before it registers; the API is
local, HTTP/1.1, and three calls are all it takes. One connection per call (``Connection:
close``), so nothing stale survives a freeze.
"""

from __future__ import annotations

import json
import socket
import time

from . import _log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

BASE = "/2020-01-01/extension"
TELEMETRY_PATH = "/2022-07-01/telemetry"
REGISTER_TIMEOUT_S = 10.0
"""Init as a whole has 10 s."""
MAX_RESPONSE = 16 * 1024 * 1024
RETRY_MAX_S = 1.0


class ApiError(Exception):
    """The Extensions API could not be reached or answered something unexpected."""

    def __init__(self, message: str, status: int | None = None, error_type: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        """The answer's ``errorType`` (``Extension.InvalidEventType``...), "" if it gave none."""


class Response:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        """Lower-cased names."""
        self.body = body


class ExtensionsApi:
    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ApiError(f"AWS_LAMBDA_RUNTIME_API={address!r} is not host:port")
        self.address = address
        self._host = host.strip("[]")
        self._port = int(port)

    def register(self, name: str, events: list[str]) -> str:
        """Register as ``name`` for ``events``; the extension identifier."""
        body = json.dumps({"events": events}).encode()
        response = self._call("POST", "/register", {"Lambda-Extension-Name": name}, body, REGISTER_TIMEOUT_S)
        identifier = response.headers.get("lambda-extension-identifier")
        if response.status != 200 or not identifier:
            message = f"register answered {response.status}: {_text(response.body)}"
            raise ApiError(message, response.status, _error_type(response.body))
        return identifier

    def next(self, identifier: str) -> dict[str, Any]:
        """Block until the next event (no timeout: the environment may stay frozen for hours)."""
        response = self._call("GET", "/event/next", {"Lambda-Extension-Identifier": identifier}, b"", None)
        if response.status != 200:
            raise ApiError(f"event/next answered {response.status}: {_text(response.body)}", response.status)
        try:
            event = json.loads(response.body)
        except ValueError as exc:
            raise ApiError(f"event/next answered with a body that is not JSON: {exc}") from None
        if not isinstance(event, dict):
            raise ApiError("event/next answered with a body that is not an object")
        return event

    def subscribe_telemetry(self, identifier: str, subscription: dict[str, Any]) -> None:
        """Subscribe to the Telemetry API (accepted during Init only)."""
        body = json.dumps(subscription).encode()
        headers = {"Lambda-Extension-Identifier": identifier}
        response = self._call("PUT", "", headers, body, REGISTER_TIMEOUT_S, base=TELEMETRY_PATH)
        if response.status != 200:
            raise ApiError(
                f"telemetry subscription answered {response.status}: {_text(response.body)}", response.status
            )

    def _call(
        self, method: str, path: str, headers: dict[str, str], body: bytes, timeout: float | None, base: str = BASE
    ) -> Response:
        lines = [f"{method} {base}{path} HTTP/1.1", f"Host: {self.address}", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if body or method in ("POST", "PUT"):
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        try:
            with socket.create_connection((self._host, self._port), timeout=REGISTER_TIMEOUT_S) as sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.settimeout(timeout)
                sock.sendall(request)
                return _read_response(sock)
        except OSError as exc:
            raise ApiError(f"{method} {base}{path} failed: {exc}") from None


INVALID_EVENT_TYPE = "Extension.InvalidEventType"


def register(api: ExtensionsApi, name: str, invoke: bool = True) -> tuple[str, bool]:
    """Register for SHUTDOWN and, if ``invoke``, INVOKE, retrying (with a small backoff) until it
    works; the identifier, and whether INVOKE events will come. An environment that refuses
    INVOKE (Lambda Managed Instances does, with 403 ``Extension.InvalidEventType``) gets a
    registration for SHUTDOWN only: retrying the refused one would hold Init until it times out,
    and with it every invocation of the function."""
    failures = 0
    while True:
        events = ["INVOKE", "SHUTDOWN"] if invoke else ["SHUTDOWN"]
        try:
            identifier = api.register(name, events)
        except ApiError as exc:
            if invoke and exc.error_type == INVALID_EVENT_TYPE:
                _log.warn(f"this environment refuses INVOKE events ({exc}); registering for SHUTDOWN only")
                invoke = False
                continue
            failures += 1
            _log.once(f"register:{exc.status}", f"registering as {name!r} failed: {exc}; retrying")
            time.sleep(min(RETRY_MAX_S, 0.01 * 2**failures))
            continue
        _log.debug(f"registered as {name!r} for {', '.join(events)}")
        return identifier, invoke


def next_event(api: ExtensionsApi, identifier: str) -> dict[str, Any]:
    """The next event, retrying (with a small backoff) whatever goes wrong: the extension must
    stay in its loop until SHUTDOWN."""
    failures = 0
    while True:
        try:
            return api.next(identifier)
        except ApiError as exc:
            failures += 1
            _log.once(f"next:{exc.status}", f"waiting for the next event failed: {exc}; retrying")
            time.sleep(min(RETRY_MAX_S, 0.01 * 2**failures))


def _read_response(sock: socket.socket) -> Response:
    data = bytearray()
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ApiError("the Extensions API closed the connection before answering")
        data += chunk
        if len(data) > MAX_RESPONSE:
            raise ApiError("the Extensions API sent headers without end")
    head, _, rest = bytes(data).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ApiError(f"the Extensions API answered {status_line!r}")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = bytearray(rest)
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return Response(int(parts[1]), headers, _dechunk(sock, body))
    length = headers.get("content-length")
    expected = int(length) if length is not None and length.isdigit() else None
    while expected is None or len(body) < expected:
        chunk = sock.recv(65536)
        if not chunk:
            if expected is not None:
                raise ApiError("the Extensions API closed the connection in the middle of its answer")
            break
        body += chunk
        if len(body) > MAX_RESPONSE:
            raise ApiError("the Extensions API's answer is too large")
    return Response(int(parts[1]), headers, bytes(body if expected is None else body[:expected]))


def _dechunk(sock: socket.socket, data: bytearray) -> bytes:
    # Read to the end (the server closes the connection), then take the chunks apart.
    while not data.endswith(b"0\r\n\r\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_RESPONSE:
            raise ApiError("the Extensions API's answer is too large")
    body = bytearray()
    rest = bytes(data)
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
        except ValueError:
            raise ApiError("the Extensions API sent a malformed chunked answer") from None
        if size == 0:
            return bytes(body)
        body += rest[:size]
        rest = rest[size + 2 :]


def _error_type(body: bytes) -> str:
    try:
        answer = json.loads(body)
    except ValueError:
        return ""
    error_type = answer.get("errorType") if isinstance(answer, dict) else None
    return error_type if isinstance(error_type, str) else ""


def _text(body: bytes) -> str:
    """An answer's body for a log line: one line (AWS's emulator ends its bodies with a newline)."""
    return " ".join(body[:300].decode("utf-8", "replace").split()) or "(no body)"
