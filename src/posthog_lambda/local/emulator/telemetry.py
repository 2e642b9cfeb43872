"""The Telemetry API's delivery side: records batched per subscriber and POSTed to it.

Delivery honours each subscriber's buffering (maxItems, maxBytes, timeoutMs) and happens only
while the environment runs: a frozen listener cannot answer, so records wait for the thaw, as
``platform.report`` does on AWS (it arrives at the next invoke or at shutdown). Lambda Managed
Instances never freeze, so there records flow as they come.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.parse

from .sandbox import SANDBOX_HOST

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

TYPES = frozenset({"platform", "function", "extension"})
LIMITS = {"maxItems": (1_000, 10_000), "maxBytes": (262_144, 1_048_576), "timeoutMs": (25, 30_000)}
DEFAULT_BUFFERING = {"maxItems": 10_000, "maxBytes": 262_144, "timeoutMs": 1_000}
SCHEMA_VERSIONS = ("2022-07-01", "2022-12-13")
"""What on-demand Lambda accepts; Lambda Managed Instances accept only ``2025-01-29``."""
POST_TIMEOUT_S = 10.0
"""How long a delivery waits for the subscriber's listener to answer."""


def iso_now() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


def validate(body: Any, schema_versions: Sequence[str] = SCHEMA_VERSIONS) -> str | None:
    """Why a subscription request is invalid, or None."""
    if not isinstance(body, dict):
        return "body must be a JSON object"
    if body.get("schemaVersion") not in schema_versions:
        return f"schemaVersion must be {' or '.join(schema_versions)}"
    destination = body.get("destination")
    if not isinstance(destination, dict) or destination.get("protocol") != "HTTP":
        return "destination.protocol must be HTTP"
    uri = destination.get("URI")
    if not isinstance(uri, str) or urllib.parse.urlsplit(uri).scheme != "http":
        return "destination.URI must be an http:// URI"
    types = body.get("types")
    if not isinstance(types, list) or not types or not set(types) <= TYPES:
        return f"types must be a non-empty subset of {sorted(TYPES)}"
    buffering = body.get("buffering", {})
    if not isinstance(buffering, dict):
        return "buffering must be an object"
    for key, (low, high) in LIMITS.items():
        value = buffering.get(key, DEFAULT_BUFFERING[key])
        if not isinstance(value, int) or not low <= value <= high:
            return f"buffering.{key} must be an integer in [{low}, {high}]"
    return None


class Subscriber:
    """One extension's subscription: its own buffer and delivery thread."""

    def __init__(self, extension: str, body: dict[str, Any], running: threading.Event) -> None:
        self.extension = extension
        self.types = frozenset(body["types"])
        buffering = {**DEFAULT_BUFFERING, **body.get("buffering", {})}
        self.max_items: int = buffering["maxItems"]
        self.max_bytes: int = buffering["maxBytes"]
        self.timeout_s: float = buffering["timeoutMs"] / 1000
        parts = urllib.parse.urlsplit(body["destination"]["URI"])
        # The listener binds sandbox.localdomain, which resolves to loopback inside the sandbox.
        host = parts.hostname or "127.0.0.1"
        self.host = "127.0.0.1" if host == SANDBOX_HOST else host
        self.port = parts.port or 80
        self.path = parts.path or "/"
        self.delivered: list[list[dict[str, Any]]] = []
        self.failures: list[str] = []
        self._running = running
        self._pending: list[dict[str, Any]] = []
        self._pending_bytes = 0
        self._first_at = 0.0
        self._wake = threading.Condition()
        self._stopped = False
        self._sending = False
        self._hurry = False
        self._posting = threading.Lock()
        self._thread = threading.Thread(target=self._deliver_loop, name=f"telemetry-{extension}", daemon=True)
        self._thread.start()

    def add(self, record: dict[str, Any]) -> None:
        kind = str(record["type"]).split(".")[0]
        if kind not in self.types:
            return
        with self._wake:
            if not self._pending:
                self._first_at = time.monotonic()
            self._pending.append(record)
            self._pending_bytes += len(json.dumps(record))
            self._wake.notify_all()

    def drain(self, deadline: float, now: bool = False) -> None:
        """Wait until everything pending is delivered; ``now``: send it without waiting for
        the subscriber's buffering timeout."""
        with self._wake:
            if now:
                self._hurry = True
                self._wake.notify_all()
            try:
                while (self._pending or self._sending) and not self._stopped:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return
                    self._wake.wait(left)
            finally:
                self._hurry = False

    def stop(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify_all()

    def _due(self) -> float | None:
        """Seconds until the pending batch is due (0: now); None when nothing is pending."""
        if not self._pending:
            return None
        if self._hurry or len(self._pending) >= self.max_items or self._pending_bytes >= self.max_bytes:
            return 0.0
        return max(0.0, self._first_at + self.timeout_s - time.monotonic())

    def _deliver_loop(self) -> None:
        while True:
            with self._wake:
                while not self._stopped:
                    due = self._due()
                    if due == 0.0:
                        break
                    self._wake.wait(due)
                if self._stopped:
                    return
                batch = self._pending[: self.max_items]
                self._pending = self._pending[self.max_items :]
                self._sending = True
                self._pending_bytes = sum(len(json.dumps(r)) for r in self._pending)
                self._first_at = time.monotonic()
            # A frozen listener cannot answer: wait for the environment to run again.
            while True:
                self._running.wait()
                with self._posting:
                    if self._running.is_set():
                        self._post(batch)
                        break
            with self._wake:
                self._sending = False
                self._wake.notify_all()

    def quiesce(self) -> None:
        """Wait for a delivery in progress to finish (the environment is about to freeze)."""
        with self._posting:
            pass

    def _post(self, batch: list[dict[str, Any]]) -> None:
        body = json.dumps(batch).encode()
        connection = http.client.HTTPConnection(self.host, self.port, timeout=POST_TIMEOUT_S)
        try:
            connection.request("POST", self.path, body, {"Content-Type": "application/json"})
            connection.getresponse().read()
            self.delivered.append(batch)
        except (OSError, http.client.HTTPException) as exc:
            self.failures.append(f"{type(exc).__name__}: {exc}")
        finally:
            # http.client closes the connection itself only when the listener hangs up.
            connection.close()


class Telemetry:
    """All subscriptions of one environment."""

    def __init__(self, running: threading.Event) -> None:
        self._running = running
        self._subscribers: dict[str, Subscriber] = {}
        self._lock = threading.Lock()

    def subscribe(self, extension: str, body: dict[str, Any]) -> None:
        with self._lock:
            old = self._subscribers.pop(extension, None)
            self._subscribers[extension] = Subscriber(extension, body, self._running)
        if old is not None:
            old.stop()

    def emit(self, kind: str, record: Any) -> None:
        entry = {"time": iso_now(), "type": kind, "record": record}
        with self._lock:
            subscribers = list(self._subscribers.values())
        for subscriber in subscribers:
            subscriber.add(entry)

    def quiesce(self) -> None:
        for subscriber in self.subscribers():
            subscriber.quiesce()

    def drain(self, timeout: float, now: bool = False) -> None:
        """Give what is already due (a report waiting since the last invoke) time to arrive;
        ``now``: also what is pending but not yet due."""
        deadline = time.monotonic() + timeout
        for subscriber in self.subscribers():
            subscriber.drain(deadline, now)

    def subscribers(self) -> list[Subscriber]:
        with self._lock:
            return list(self._subscribers.values())

    def close(self) -> None:
        with self._lock:
            subscribers, self._subscribers = list(self._subscribers.values()), {}
        for subscriber in subscribers:
            subscriber.stop()
