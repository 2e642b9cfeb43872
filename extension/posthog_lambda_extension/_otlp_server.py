"""OTLP/HTTP on localhost: the endpoint an app's OpenTelemetry exporter already points at.

``OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318`` is what the OTLP/HTTP exporters default
to, so an app exporting OTLP needs no change for its spans to reach the extension. One thread
serves every connection (``selectors``: each runtime process keeps one open, and Lambda Managed
Instances runs many), with as little HTTP as the exporters use: ``POST /v1/traces`` with a
``Content-Length``, protobuf or JSON, gzip or not, keep-alive. The request is read and decoded
(``_otlp_decode``) before it is answered, so a bad one gets its 4xx; what becomes of the spans
is decided later, off the exporter's wait (``_otlp``). Anything else is answered with its 4xx
and counted under its reason; nothing a client sends can stop the thread.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading

from . import _log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from ._drops import Drops

    Receive = Callable[[bytes, str], int]
    """Takes a decoded request's body (after gzip) and its content type; returns how many spans
    it refused, or raises ``_otlp_decode.OtlpError``."""

PATH = "/v1/traces"
MAX_HEAD = 16 * 1024
MAX_BODY = 16 * 1024 * 1024
"""The most a request's body may hold, compressed or not (the socket's frame limit)."""
MAX_CONNECTIONS = 256
MAX_SELECT_FAILURES = 100
READ_SIZE = 256 * 1024
SEND_TIMEOUT_S = 0.5
PROTOBUF = "application/x-protobuf"
JSON = "application/json"

_REASONS = {
    400: "otlp_invalid",
    404: "otlp_not_found",
    405: "otlp_not_found",
    411: "otlp_invalid",
    413: "otlp_too_large",
    415: "otlp_unsupported",
    431: "otlp_too_large",
}
_TEXT = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    431: "Request Header Fields Too Large",
}


class _Refused(Exception):
    def __init__(self, status: int, why: str, close: bool = False) -> None:
        super().__init__(why)
        self.status = status
        self.close = close


class _Connection:
    __slots__ = ("buffer",)

    def __init__(self) -> None:
        self.buffer = bytearray()


class OtlpServer:
    """Serves OTLP/HTTP on ``host:port`` until closed; ``receive`` takes each valid request."""

    def __init__(self, receive: Receive, drops: Drops, host: str = "127.0.0.1", port: int = 4318) -> None:
        self.receive = receive
        self.drops = drops
        self.host = host
        self.port = port
        self.requests = 0
        """Requests taken (answered 200)."""
        self._listener: socket.socket | None = None
        self._selector = selectors.DefaultSelector()
        self._connections: dict[socket.socket, _Connection] = {}
        self._closed = False
        self._thread: threading.Thread | None = None
        self._wake: tuple[socket.socket, socket.socket] | None = None
        """Written to by ``close``: the thread waits for requests with no timeout (it wakes for
        nothing else, so an idle environment spends no CPU on it)."""

    def start(self) -> bool:
        """Listen and serve in a thread; False (said in one line) if the port cannot be had: another
        extension (OpenTelemetry's collector) may hold it."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self.port))
            listener.listen(64)
            listener.setblocking(False)
        except OSError as exc:
            listener.close()
            _log.warn(f"cannot listen for OTLP on {self.host}:{self.port} ({exc}); OTLP spans are not taken")
            return False
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._wake = socket.socketpair()
        self._selector.register(listener, selectors.EVENT_READ)
        self._selector.register(self._wake[0], selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._serve, name="posthog-lambda-otlp", daemon=True)
        self._thread.start()
        return True

    def close(self) -> None:
        """Stop serving: the thread closes every connection and the listener as it ends."""
        self._closed = True
        if self._wake is not None:
            with contextlib.suppress(OSError):
                self._wake[1].send(b"x")
        if self._thread is not None:
            self._thread.join(1.0)

    def _serve(self) -> None:
        try:
            self._loop()
        finally:
            for sock in [*self._connections, self._listener, *(self._wake or ())]:
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()
            self._connections.clear()
            self._selector.close()

    def _loop(self) -> None:
        failures = 0
        while not self._closed:
            try:
                ready = self._selector.select()
                failures = 0
            except (OSError, ValueError) as exc:
                failures += 1
                if self._closed or failures > MAX_SELECT_FAILURES:
                    if not self._closed:
                        _log.warn(f"stopped taking OTLP: waiting for requests keeps failing ({exc!r})")
                    return
                continue
            for key, _ in ready:
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if self._wake is not None and sock is self._wake[0]:
                    return
                try:
                    if sock is self._listener:
                        self._accept(sock)
                    else:
                        self._read(sock)
                except Exception as exc:  # never let a client stop the thread
                    _log.once(f"otlp:{type(exc).__name__}", f"serving OTLP failed unexpectedly: {exc!r}")
                    if sock is not self._listener:
                        self._drop(sock)

    def _accept(self, listener: socket.socket) -> None:
        try:
            sock, _ = listener.accept()
        except OSError:
            return
        if len(self._connections) >= MAX_CONNECTIONS:
            self.drops.add("otlp_refused", 1, f"more than {MAX_CONNECTIONS} OTLP connections at once")
            sock.close()
            return
        sock.settimeout(SEND_TIMEOUT_S)
        self._connections[sock] = _Connection()
        self._selector.register(sock, selectors.EVENT_READ)

    def _drop(self, sock: socket.socket) -> None:
        if self._connections.pop(sock, None) is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)
        with contextlib.suppress(OSError):
            sock.close()

    def _read(self, sock: socket.socket) -> None:
        connection = self._connections.get(sock)
        if connection is None:
            return
        try:
            data = sock.recv(READ_SIZE)
        except OSError:
            data = b""
        if not data:
            self._drop(sock)
            return
        connection.buffer += data
        while connection.buffer and not self._closed:
            try:
                request = _request(connection.buffer)
                if request is None:
                    return  # the rest of it has not come yet
                body, content_type, keep = request
                refused = self._take(body, content_type)
                self.requests += 1
                self._answer(sock, 200, content_type, refused)
            except _Refused as exc:
                reason = _REASONS.get(exc.status, "otlp_invalid")
                self.drops.add(reason, 1, f"an OTLP request was refused ({exc.status}): {exc}")
                self._answer(sock, exc.status, JSON, 0, str(exc), close=exc.close)
                if exc.close:
                    self._drop(sock)
                    return
                keep = True
            if not keep:
                self._drop(sock)
                return

    def _take(self, body: bytes, content_type: str) -> int:
        from ._otlp_decode import OtlpError

        try:
            return self.receive(body, content_type)
        except OtlpError as exc:
            raise _Refused(400, str(exc)) from None

    def _answer(
        self, sock: socket.socket, status: int, content_type: str, refused: int, why: str = "", close: bool = False
    ) -> None:
        body = _response_body(content_type, refused, why)
        head = (
            f"HTTP/1.1 {status} {_TEXT.get(status, 'Error')}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            f"{'Connection: close' if close else 'Connection: keep-alive'}\r\n\r\n"
        )
        try:
            sock.sendall(head.encode("ascii") + body)
        except OSError:
            self._drop(sock)


def _response_body(content_type: str, refused: int, why: str) -> bytes:
    """An ``ExportTraceServiceResponse`` (its ``partial_success`` when spans were refused), or, for
    a refused request, a ``google.rpc.Status``-shaped message as OTLP/HTTP asks."""
    if content_type == PROTOBUF:
        if why:
            message = why.encode("utf-8")[:1024]
            return b"\x12" + _varint(len(message)) + message
        if not refused:
            return b""
        partial = b"\x08" + _varint(refused)
        return b"\x0a" + _varint(len(partial)) + partial
    import json

    if why:
        return json.dumps({"message": why}).encode("utf-8")
    if refused:
        return json.dumps({"partialSuccess": {"rejectedSpans": str(refused)}}).encode("utf-8")
    return b"{}"


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _request(buffer: bytearray) -> tuple[bytes, str, bool] | None:
    """The first whole request in ``buffer`` (removed from it): its body (decompressed), content
    type and whether the connection stays open; None until it has all come. Raises _Refused."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        if len(buffer) > MAX_HEAD:
            raise _Refused(431, f"request head over {MAX_HEAD} bytes", close=True)
        return None
    try:
        head = bytes(buffer[:end]).decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover  (latin-1 decodes every byte)
        raise _Refused(400, "request head is not text", close=True) from None
    lines = head.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _Refused(400, "not an HTTP/1.x request line", close=True)
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            raise _Refused(400, "a header line without a colon", close=True)
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise _Refused(411, "chunked bodies are not taken: send a Content-Length", close=True)
    raw_length = headers.get("content-length", "0")
    if not raw_length.isdigit():
        raise _Refused(400, f"Content-Length {raw_length[:40]!r} is not a number", close=True)
    length = int(raw_length)
    if length > MAX_BODY:
        raise _Refused(413, f"a body of {length} bytes is over the {MAX_BODY}-byte limit", close=True)
    if len(buffer) < end + 4 + length:
        return None
    body = bytes(buffer[end + 4 : end + 4 + length])
    del buffer[: end + 4 + length]
    keep = headers.get("connection", "").lower() != "close" and version != "HTTP/1.0"
    if method != "POST":
        raise _Refused(405, f"{method[:16]} is not POST")
    if target.split("?", 1)[0] != PATH:
        raise _Refused(404, f"{target[:80]!r} is not {PATH}")
    content_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type not in (PROTOBUF, JSON):
        raise _Refused(415, f"content type {content_type[:60]!r} is neither {PROTOBUF} nor {JSON}")
    encoding = headers.get("content-encoding", "identity").lower()
    if encoding == "gzip":
        body = _gunzip(body)
    elif encoding not in ("identity", ""):
        raise _Refused(415, f"content encoding {encoding[:40]!r} is not gzip")
    return body, content_type, keep


def _gunzip(body: bytes) -> bytes:
    import zlib

    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        data = inflater.decompress(body, MAX_BODY + 1)
    except zlib.error as exc:
        raise _Refused(400, f"the gzip body cannot be read: {exc}") from None
    if len(data) > MAX_BODY or inflater.unconsumed_tail:
        raise _Refused(413, f"the gzip body inflates past the {MAX_BODY}-byte limit")
    return data
