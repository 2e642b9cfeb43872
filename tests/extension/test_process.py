"""``python -m posthog_lambda_extension`` as Lambda runs it: a separate process, standard library
only, against the local Lambda environment's Extensions API and a local PostHog capture server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from posthog_lambda.local import CaptureServer
from posthog_lambda.local.emulator import ExtensionsApi, ExtensionState
from posthog_lambda_contract import frames as _frames
from posthog_lambda_extension._main import NICENESS
from tests.extension import make_event

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 10.0
_STOP: dict[str, Any] = {"eventType": "_STOP"}


class Api:
    """The local Lambda environment's own Extensions API, with what registration saw."""

    def __init__(self, socket_path: str) -> None:
        self.registrations: list[dict[str, Any]] = []

        def seen(state: ExtensionState) -> None:
            self.registrations.append(
                {"name": state.name, "events": set(state.events), "socket_existed": os.path.exists(socket_path)}
            )

        self.server = ExtensionsApi(function_name="f", on_register=seen).start()
        self.server.expect("my-extension")

    @property
    def address(self) -> str:
        return self.server.address

    def wait_next(self, calls: int) -> None:
        """Until the extension has called next ``calls`` times (and so waits in it)."""
        self.server.wait_next(calls, TIMEOUT)

    def invoke(self, request_id: str, seconds: float = 10.0) -> None:
        self.server.invoke(request_id, seconds)

    def shutdown(self, seconds: float = 2.0) -> None:
        self.server.shutdown(budget_s=seconds)

    def close(self) -> None:
        self.server.close()


class Run:
    def __init__(self, tmp_path: Path, posthog: CaptureServer) -> None:
        self.socket_path = str(tmp_path / "ph.sock")
        self.spool_dir = str(tmp_path / "spool")
        self.api = Api(self.socket_path)
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

    def connect(self) -> socket.socket:
        """A connection to the extension's socket, as a decorated handler's library makes during
        Init (so the extension knows the function is traced when the first INVOKE comes)."""
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.settimeout(TIMEOUT)
        client.connect(self.socket_path)
        return client

    def send(self, *frames: bytes) -> None:
        with self.connect() as client:
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
    payload = {"request_id": request_id, "trace_id": "t", "deadline_ms": deadline, "trace": {"t": "t", "d": "u"}}
    return _frames.encode(_frames.START, payload)


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
        "events": {"INVOKE", "SHUTDOWN"},
        "socket_existed": True,  # before registering, so before the function can start
    }
    # Once registered it yields the CPU to the function: nice value 10 above the test's.
    assert run.process is not None
    fields = Path(f"/proc/{run.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    assert int(fields[16]) == os.getpriority(os.PRIO_PROCESS, 0) + NICENESS
    sent = [make_event("$ai_generation"), make_event("$ai_span"), make_event("$ai_trace")]
    # Connected before the INVOKE, as in Init: connecting only after it raced the extension's
    # look at whether the function is traced (not yet: it stopped waiting for END at once).
    with run.connect() as client:
        run.api.invoke("req-1")
        client.sendall(start("req-1") + events(*sent) + end("req-1"))
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
