"""The local Telemetry API's delivery to a subscriber whose listener fails: each failure is
recorded, and the connection it was tried on is closed (not left for the garbage collector, which
the suite's ``filterwarnings = error`` turns into a failure of whichever test runs then)."""

from __future__ import annotations

import gc
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from posthog_lambda.local.emulator import telemetry
from posthog_lambda.local.emulator.telemetry import Subscriber


def hang_up(connection: socket.socket, stop: threading.Event) -> None:
    """Reads the request, then closes without an answer."""
    connection.recv(65536)


def never_answer(connection: socket.socket, stop: threading.Event) -> None:
    """Reads the request, then keeps the connection open without an answer."""
    connection.recv(65536)
    stop.wait()


def answer_garbage(connection: socket.socket, stop: threading.Event) -> None:
    """Reads the request, then answers with what is not HTTP."""
    connection.recv(65536)
    connection.sendall(b"not a status line\r\n\r\n")


@pytest.fixture(params=[hang_up, never_answer, answer_garbage], ids=["hangs-up", "never-answers", "answers-garbage"])
def listener(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """A port whose listener takes each connection and fails it as the parameter says."""
    behave: Callable[[socket.socket, threading.Event], None] = request.param
    monkeypatch.setattr(telemetry, "POST_TIMEOUT_S", 0.2)
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while True:
            connection, _ = server.accept()
            with connection:
                if stop.is_set():
                    return
                behave(connection, stop)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    port = server.getsockname()[1]
    yield port
    stop.set()
    # Closing a listener does not wake its accept(): a last connection does.
    socket.create_connection(("127.0.0.1", port), timeout=5).close()
    thread.join(5)
    server.close()
    assert not thread.is_alive()


def test_a_failed_delivery_is_recorded_and_its_connection_closed(listener: int) -> None:
    running = threading.Event()
    running.set()
    body = {"types": ["platform"], "destination": {"protocol": "HTTP", "URI": f"http://127.0.0.1:{listener}/t"}}
    subscriber = Subscriber("ext", body, running)
    try:
        for n in range(2):
            subscriber.add({"type": "platform.start", "record": {"n": n}})
            subscriber.drain(time.monotonic() + 10, now=True)
            # What the delivery dropped is garbage now; an unclosed socket among it would warn here.
            gc.collect()
    finally:
        subscriber.stop()
    assert len(subscriber.failures) == 2
    assert subscriber.delivered == []
