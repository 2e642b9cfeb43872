"""The extension as a process of its own, driven by a stand-in for Lambda's Extensions API, for the
benchmarks that hand it events directly and read its memory, without a whole Lambda environment.

The extension is started as the layer's launcher starts it (``python -I -S bootstrap.py
posthog-lambda``, from a layer laid out by ``layer/build.py``). The traffic it is fed is what the
library itself writes to the socket: a traced handler is run in a separate interpreter, with the
socket pointing at a recorder here, and the bytes it wrote are replayed at full speed. That keeps
the frames exactly as the library makes them, and keeps the cost of making them out of the figures.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from _common import SRC, rss_mb, serve
from _handlers import POSTHOG_LAMBDA

_STOP: dict[str, Any] = {}
"""Put in a queue of events to end a pending next without an answer."""


class ExtensionsApi:
    """Register, then each ``next`` answers with the next event given to :meth:`send` (until one
    is, it waits, as in an idle environment). The Telemetry API refuses the subscription, so the
    extension goes on without it: the end of an invocation is its END frame."""

    def __init__(self) -> None:
        self.registered = threading.Event()
        self.registered_at = 0.0
        self.next_calls: list[float] = []
        self._calls = threading.Condition()
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.registered_at = time.perf_counter()
                body = {"functionName": "bench", "functionVersion": "$LATEST", "handler": "app.handler"}
                self._answer(200, body, {"Lambda-Extension-Identifier": "bench-extension"})
                outer.registered.set()

            def do_PUT(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self._answer(404, {"errorType": "Bench.NoTelemetry", "errorMessage": "not in this stand-in"})

            def do_GET(self) -> None:
                with outer._calls:
                    outer.next_calls.append(time.perf_counter())
                    outer._calls.notify_all()
                event = outer._events.get()
                if event is _STOP:
                    self.close_connection = True
                    return
                self._answer(200, event)

        self._server = serve(Handler)
        self.address = f"127.0.0.1:{self._server.server_address[1]}"

    def send(self, event: dict[str, Any]) -> None:
        self._events.put(event)

    def invoke(self, request_id: str, timeout_s: float = 60.0) -> None:
        deadline_ms = int((time.time() + timeout_s) * 1000)
        self.send({"eventType": "INVOKE", "requestId": request_id, "deadlineMs": deadline_ms})

    def shutdown(self, budget_s: float = 2.0) -> float:
        """Send SHUTDOWN with Lambda's deadline; the time it was handed over."""
        deadline_ms = int((time.time() + budget_s) * 1000)
        self.send({"eventType": "SHUTDOWN", "shutdownReason": "spindown", "deadlineMs": deadline_ms})
        return time.perf_counter()

    def wait_next(self, calls: int, timeout: float = 30.0) -> float:
        """When the extension made its ``calls``-th next call (waiting for it)."""
        with self._calls:
            if not self._calls.wait_for(lambda: len(self.next_calls) >= calls, timeout):
                raise SystemExit(f"the extension did not call next {calls} times within {timeout:g} s")
            return self.next_calls[calls - 1]

    def close(self) -> None:
        self.send(_STOP)
        self._server.shutdown()
        self._server.server_close()


class Extension:
    """A running extension process and what it printed, with when."""

    def __init__(self, bootstrap: Path, api: ExtensionsApi, env: dict[str, str]) -> None:
        self.socket_path = env.get("POSTHOG_LAMBDA_SOCKET", "")
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-I", "-S", str(bootstrap), "posthog-lambda"],
            env={"PATH": os.environ.get("PATH", ""), "AWS_LAMBDA_RUNTIME_API": api.address, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.lines: list[tuple[float, str]] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, name="bench-extension-output", daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in iter(self.process.stdout.readline, b""):
            with self._changed:
                self.lines.append((time.perf_counter(), raw.decode("utf-8", "replace").rstrip()))
                self._changed.notify_all()

    def wait_line(self, text: str, timeout: float = 30.0) -> float:
        """When the extension first printed a line containing ``text`` (waiting for it)."""

        def found() -> float | None:
            return next((at for at, line in self.lines if text in line), None)

        with self._changed:
            if not self._changed.wait_for(lambda: found() is not None, timeout):
                raise SystemExit(f"the extension printed no line with {text!r} within {timeout:g} s")
            at = found()
            assert at is not None
            return at

    def memory_mb(self) -> tuple[float, float]:
        """(RSS now, peak RSS) of the extension process."""
        return rss_mb(self.process.pid)

    def wait_exit(self, timeout: float = 10.0) -> float:
        self.process.wait(timeout)
        return time.perf_counter()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def extension_env(tmp: Path, host: str, **settings: str) -> dict[str, str]:
    """The extension's environment as in a 128 MB function, with its socket in ``tmp``."""
    return {
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128",
        "POSTHOG_API_KEY": "phc_local",
        "POSTHOG_HOST": host,
        "POSTHOG_LAMBDA_SOCKET": str(tmp / f"ext-{uuid.uuid4().hex[:8]}.sock"),
        "POSTHOG_LAMBDA_SPOOL_DIR": str(tmp / "spool"),
        **settings,
    }


@dataclass(frozen=True)
class Traffic:
    data: bytes
    """Everything the library wrote to the socket, in order."""
    last_request_id: str
    """The request id of the last invocation in it, whose END frame ends the traffic."""


_GENERATE = (
    POSTHOG_LAMBDA
    + """
import sys, types, uuid

invocations, spans = int(sys.argv[1]), int(sys.argv[2])
for n in range(invocations):
    request_id = str(uuid.uuid4())
    context = types.SimpleNamespace(
        aws_request_id=request_id, function_name="bench", get_remaining_time_in_millis=lambda: 900_000
    )
    handler({"q": f"question {n}", "spans": spans, "generations": 0}, context)
print(request_id)
"""
)


def record_traffic(invocations: int, spans: int) -> Traffic:
    """What ``invocations`` calls of the traced handler with ``spans`` spans each write to the
    extension's socket (each span an event, plus each invocation's ``$ai_trace``)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "recorder.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen()
        chunks: list[bytes] = []
        state = threading.Condition()
        connections = {"open": 0, "closed": 0}

        def take() -> None:
            while True:
                try:
                    connection, _ = listener.accept()
                except OSError:
                    return  # the listener was closed
                with state:
                    connections["open"] += 1
                with connection:
                    while data := connection.recv(1 << 20):
                        chunks.append(data)
                with state:
                    connections["open"] -= 1
                    connections["closed"] += 1
                    state.notify_all()

        threading.Thread(target=take, name="bench-recorder", daemon=True).start()
        done = subprocess.run(
            [sys.executable, "-c", _GENERATE, str(invocations), str(spans)],
            env={
                "PATH": os.environ.get("PATH", ""),
                "PYTHONPATH": str(SRC),
                "POSTHOG_LAMBDA_SOCKET": path,
                "POSTHOG_LAMBDA_SPOOL_DIR": str(Path(tmp) / "spool"),
            },
            capture_output=True,
            text=True,
            check=True,
        )
        # The generator has exited, so its connections are closed: wait until all are read.
        with state:
            if not state.wait_for(lambda: connections["closed"] and not connections["open"], 10):
                raise SystemExit("the traced handler wrote nothing to the socket")
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        spool = Path(tmp) / "spool"
        if spool.exists() and any(spool.iterdir()):
            raise SystemExit("the library spooled part of the traffic instead of writing it to the socket")
    return Traffic(b"".join(chunks), done.stdout.strip().splitlines()[-1])


def replay(socket_path: str, traffic: Traffic) -> float:
    """Write the traffic to the extension's socket as one connection; when writing began."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.connect(socket_path)
        started = time.perf_counter()
        connection.sendall(traffic.data)
    return started
