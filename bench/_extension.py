"""The extension as a process of its own, driven by a stand-in for Lambda's Extensions API (the
local environment's, served alone), for the benchmarks that hand it events directly and read its
memory, without a whole Lambda environment. Times are ``time.monotonic()``, as the API's.

The extension is started as the layer's launcher starts it (``python -I -S bootstrap.py
posthog-lambda``, from a layer laid out by ``layer/build.py``). The traffic it is fed is what the
library itself writes to the socket: a traced handler is run in a separate interpreter, with the
socket pointing at a recorder here, and the bytes it wrote are replayed at full speed. That keeps
the frames exactly as the library makes them, and keeps the cost of making them out of the figures.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from _common import SRC, rss_mb
from _handlers import POSTHOG_LAMBDA

if TYPE_CHECKING:
    from posthog_lambda.local.emulator import ExtensionsApi

NAME = "posthog-lambda"
"""The name the extension registers under: its launcher's, in the layer's ``extensions/``."""
DEADLINE_S = 60.0
"""How far ahead each INVOKE's deadline is: beyond any benchmark's wait."""


def extensions_api() -> ExtensionsApi:
    """A started stand-in for Lambda's Extensions API: the local environment's own, on its own
    (``posthog_lambda.local.emulator``; src/ must be on the path). It has no Telemetry API, so
    the extension goes on without it: the end of an invocation is its END frame."""
    from posthog_lambda.local.emulator import ExtensionsApi

    return ExtensionsApi(function_name="bench").start()


class Extension:
    """A running extension process, what the Extensions API knows of it, and what it printed, with when."""

    def __init__(self, bootstrap: Path, api: ExtensionsApi, env: dict[str, str]) -> None:
        self.socket_path = env.get("POSTHOG_LAMBDA_SOCKET", "")
        self.state = api.expect(NAME)
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-I", "-S", str(bootstrap), NAME],
            env={"PATH": os.environ.get("PATH", ""), "AWS_LAMBDA_RUNTIME_API": api.address, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.lines: list[tuple[float, str]] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, name="bench-extension-output", daemon=True).start()

    @property
    def registered_at(self) -> float:
        """When it called register (once it has)."""
        assert self.state.registered is not None, "the extension has not registered"
        return self.state.registered

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in iter(self.process.stdout.readline, b""):
            with self._changed:
                self.lines.append((time.monotonic(), raw.decode("utf-8", "replace").rstrip()))
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
        return time.monotonic()

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
    data, printed = record(_GENERATE, str(invocations), str(spans))
    return Traffic(data, printed.strip().splitlines()[-1])


def record(generator: str, *args: str) -> tuple[bytes, str]:
    """What the Python program ``generator`` (calling a traced handler, with ``args``) writes to
    the extension's socket, on every connection it makes, and what it printed."""
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
            [sys.executable, "-c", generator, *args],
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
    return b"".join(chunks), done.stdout


def replay(socket_path: str, traffic: Traffic) -> float:
    """Write the traffic to the extension's socket as one connection; when writing began."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.connect(socket_path)
        started = time.monotonic()
        connection.sendall(traffic.data)
    return started
