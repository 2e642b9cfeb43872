"""``python -m posthog_lambda_extension`` as Lambda runs it: a separate process, standard library
only, against a tiny Extensions API written here and a local PostHog capture server."""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from posthog_lambda.local.capture import CaptureServer
from posthog_lambda_contract import frames as _frames
from posthog_lambda_extension._main import NICENESS
from tests.extension import make_event

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 10.0
_STOP: dict[str, Any] = {"eventType": "_STOP"}


class FakeExtensionsApi:
    """Register, then hand out the events a test pushes, one per call to next."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.changed = threading.Condition()
        self.registrations: list[dict[str, Any]] = []
        self.next_calls = 0
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                assert self.path == "/2020-01-01/extension/register"
                with api.changed:
                    api.registrations.append(
                        {
                            "name": self.headers.get("Lambda-Extension-Name"),
                            "body": json.loads(body),
                            "socket_existed": os.path.exists(api.socket_path),
                        }
                    )
                    api.changed.notify_all()
                self.answer(200, {"functionName": "f", "functionVersion": "$LATEST", "handler": "app.handler"})

            def do_GET(self) -> None:
                assert self.path == "/2020-01-01/extension/event/next"
                assert self.headers.get("Lambda-Extension-Identifier") == "ext-id-1"
                with api.changed:
                    api.next_calls += 1
                    api.changed.notify_all()
                event = api.events.get()
                if event is _STOP:
                    self.close_connection = True
                    self.answer(500, {"errorType": "Environment.Gone"})
                    return
                self.answer(200, event)

            def answer(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 200 and self.command == "POST":
                    self.send_header("Lambda-Extension-Identifier", "ext-id-1")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.httpd.server_address[1]}"

    def wait_next(self, calls: int) -> None:
        """Until the extension has called next ``calls`` times (and so waits in it)."""
        with self.changed:
            assert self.changed.wait_for(lambda: self.next_calls >= calls, TIMEOUT), f"{self.next_calls} next calls"

    def invoke(self, request_id: str, seconds: float = 10.0) -> None:
        deadline = int((time.time() + seconds) * 1000)
        self.events.put({"eventType": "INVOKE", "requestId": request_id, "deadlineMs": deadline})

    def shutdown(self, seconds: float = 2.0) -> None:
        deadline = int((time.time() + seconds) * 1000)
        self.events.put({"eventType": "SHUTDOWN", "shutdownReason": "spindown", "deadlineMs": deadline})

    def close(self) -> None:
        for _ in range(4):
            self.events.put(_STOP)  # releases any handler still waiting in next
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(TIMEOUT)


class Run:
    def __init__(self, tmp_path: Path, posthog: CaptureServer) -> None:
        self.socket_path = str(tmp_path / "ph.sock")
        self.spool_dir = str(tmp_path / "spool")
        self.api = FakeExtensionsApi(self.socket_path)
        self.posthog = posthog
        self.process: subprocess.Popen[str] | None = None

    def start(self, **env: str) -> subprocess.Popen[str]:
        environ = {
            "PATH": os.environ.get("PATH", ""),
            # Only the standard library and the two packages, as the layer's launcher gives it.
            "PYTHONPATH": f"{ROOT / 'extension'}{os.pathsep}{ROOT / 'src'}",
            "AWS_LAMBDA_RUNTIME_API": self.api.address,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128",
            "POSTHOG_API_KEY": "phc_local",
            "POSTHOG_HOST": self.posthog.url,
            "POSTHOG_LAMBDA_SOCKET": self.socket_path,
            "POSTHOG_LAMBDA_SPOOL_DIR": self.spool_dir,
            **env,
        }
        self.process = subprocess.Popen(
            [sys.executable, "-S", "-m", "posthog_lambda_extension", "my-extension"],
            env=environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        return self.process

    def send(self, *frames: bytes) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(TIMEOUT)
            client.connect(self.socket_path)
            client.sendall(b"".join(frames))

    def finish(self) -> tuple[int, str]:
        assert self.process is not None
        output, _ = self.process.communicate(timeout=TIMEOUT)
        return self.process.returncode, output

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.communicate(timeout=TIMEOUT)
        self.api.close()


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Run]:
    with CaptureServer(api_key="phc_local") as posthog:
        r = Run(tmp_path, posthog)
        try:
            yield r
        finally:
            r.close()


def start(request_id: str) -> bytes:
    deadline = int((time.time() + 10) * 1000)
    return _frames.encode(_frames.START, {"request_id": request_id, "trace_id": "t", "deadline_ms": deadline})


def end(request_id: str) -> bytes:
    return _frames.encode(_frames.END, {"request_id": request_id, "trace_id": "t"})


def events(*items: dict[str, Any]) -> bytes:
    return _frames.encode(_frames.EVENTS, {"events": list(items)})


def test_register_invoke_shutdown(run: Run) -> None:
    run.start(POSTHOG_LAMBDA_FLUSH="end")
    run.api.wait_next(1)
    (registration,) = run.api.registrations
    assert registration == {
        "name": "my-extension",
        "body": {"events": ["INVOKE", "SHUTDOWN"]},
        "socket_existed": True,  # before registering, so before the function can start
    }
    # Once registered it yields the CPU to the function: nice value 10 above the test's.
    assert run.process is not None
    fields = Path(f"/proc/{run.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    assert int(fields[16]) == os.getpriority(os.PRIO_PROCESS, 0) + NICENESS
    sent = [make_event("$ai_generation"), make_event("$ai_span"), make_event("$ai_trace")]
    run.api.invoke("req-1")
    run.send(start("req-1"), events(*sent), end("req-1"))
    run.api.wait_next(2)
    # end mode: flushed before calling next, so it is all there already
    assert sorted(str(e.uuid) for e in run.posthog.events) == sorted(e["uuid"] for e in sent)
    run.api.shutdown()
    code, output = run.finish()
    assert code == 0, output
    assert not os.path.exists(run.socket_path)
    assert run.posthog.duplicates == 0


def test_frames_that_arrive_before_the_invoke_and_the_spool(run: Run) -> None:
    run.start(POSTHOG_LAMBDA_FLUSH="end")
    run.api.wait_next(1)
    early, spooled = make_event(), make_event("$exception")
    run.send(start("req-1"), events(early))
    os.makedirs(run.spool_dir, exist_ok=True)
    _frames.append_to_spool(os.path.join(run.spool_dir, f"9-1{_frames.SPOOL_SUFFIX}"), events(spooled) + end("req-1"))
    started = time.monotonic()
    run.api.invoke("req-1", seconds=30)
    run.api.wait_next(2)
    assert time.monotonic() - started < 5  # the END in the spool ended the wait, not the deadline
    # Both in that invocation's flush: the socket's reader, a thread of its own, had taken in
    # what was written before the flush began.
    assert sorted(str(e.uuid) for e in run.posthog.events) == sorted([early["uuid"], spooled["uuid"]])
    assert not os.listdir(run.spool_dir)
    run.api.shutdown()
    assert run.finish()[0] == 0


def test_batch_mode_keeps_events_until_shutdown_then_sends_them(run: Run) -> None:
    run.start(POSTHOG_LAMBDA_FLUSH="batch", POSTHOG_FLUSH_INTERVAL="60000")
    run.api.wait_next(1)
    run.api.invoke("req-1")
    item = make_event()
    run.send(start("req-1"), events(item), end("req-1"))
    run.api.wait_next(2)
    assert run.posthog.events == []  # one event, young: buffered
    run.api.shutdown()
    code, output = run.finish()
    assert code == 0, output
    assert [e.uuid for e in run.posthog.events] == [item["uuid"]]


def test_without_a_key_it_registers_says_so_once_and_exits_at_shutdown(run: Run) -> None:
    run.start(POSTHOG_API_KEY="", POSTHOG_LAMBDA_FLUSH="end")
    run.api.wait_next(1)
    os.makedirs(run.spool_dir, exist_ok=True)  # drained at INVOKE, so counted before SHUTDOWN
    _frames.append_to_spool(
        os.path.join(run.spool_dir, f"9-1{_frames.SPOOL_SUFFIX}"), events(make_event(), make_event())
    )
    run.api.invoke("req-1")
    run.api.wait_next(2)
    run.api.shutdown()
    code, output = run.finish()
    assert code == 0
    assert run.posthog.requests == []
    assert output.count("POSTHOG_API_KEY is not set") == 1
    assert output.count("events_no_api_key") == 1  # in the shutdown summary only: the cause was said
    assert "events_no_api_key=2" in output
    assert all(line.startswith("[posthog-lambda] ") for line in output.splitlines())
