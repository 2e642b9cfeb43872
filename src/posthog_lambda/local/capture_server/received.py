"""What the local capture server received: the records of accepted events and answered requests,
and the queries and waits over them (deduplicated as PostHog does, by uuid)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

Outcome = Literal["accepted", "rejected", "failed", "dropped"]


@dataclass(frozen=True)
class ReceivedEvent:
    """One event the server accepted, as PostHog would ingest it.

    ``event`` is the event object as sent (for a single-event body, without its ``api_key``,
    ``token`` and ``sent_at``); ``path`` is the endpoint (``/batch/``, ``/i/v0/ai/batch/``,
    ``/e/`` or ``/capture/``); ``sent_at`` is the request's ``sent_at``.
    """

    event: dict[str, Any]
    path: str
    gzip: bool
    sent_at: str | None
    received_at: datetime

    @property
    def name(self) -> str:
        """The event name, e.g. ``$ai_generation``."""
        return str(self.event["event"])

    @property
    def uuid(self) -> str | None:
        """The event's uuid as sent, if any."""
        value = self.event.get("uuid")
        return None if value is None else str(value)

    @property
    def distinct_id(self) -> str:
        """The event's distinct_id as a string."""
        return str(self.event["distinct_id"])

    @property
    def properties(self) -> dict[str, Any]:
        """The event's properties (empty when it sent none)."""
        props = self.event.get("properties")
        return props if isinstance(props, dict) else {}


@dataclass(frozen=True)
class ReceivedRequest:
    """One HTTP request and what the server answered.

    ``status`` is ``None`` when the connection was closed without an answer (``drop_next``).
    ``outcome`` is ``accepted`` (200), ``rejected`` (the contract refused it), ``failed``
    (``fail_next``) or ``dropped`` (``drop_next``); ``fault`` names the injected fault, if any,
    including ``slow_next``, whose requests are otherwise handled normally. ``body_bytes`` is
    the size on the wire, ``decoded_bytes`` after gunzip; ``event_count`` counts the events the
    body held (also for rejected and faulted requests, when it could be parsed).
    """

    method: str
    path: str
    query: str
    status: int | None
    outcome: Outcome
    detail: str
    fault: str | None
    body_bytes: int
    decoded_bytes: int
    gzip: bool
    event_count: int
    headers: dict[str, str]
    received_at: datetime


class Received:
    """Every event a capture server accepted and every request it answered, in order, with the
    queries over them and the waits for them (a :class:`CaptureServer` is one)."""

    def __init__(self) -> None:
        # One condition guards every record and wakes the waiters.
        self._changed = threading.Condition()
        self._events: list[ReceivedEvent] = []
        self._requests: list[ReceivedRequest] = []
        self._seen_uuids: set[str] = set()
        self._duplicates = 0
        # Changes whenever the accepted events do (more arrive, or clear()): the cursor the
        # trace viewer's page waits on. A count of events would come round again after a clear().
        self._version = 0
        # How many wait_for_change calls are waiting: tests wait for a waiter instead of sleeping.
        self._change_waiters = 0

    @property
    def events(self) -> list[ReceivedEvent]:
        """Every accepted event, in the order received (a copy)."""
        with self._changed:
            return list(self._events)

    @property
    def requests(self) -> list[ReceivedRequest]:
        """Every request, whatever was answered, in the order answered (a copy)."""
        with self._changed:
            return list(self._requests)

    @property
    def duplicates(self) -> int:
        """How many accepted events carried a uuid already accepted before (PostHog keeps one)."""
        with self._changed:
            return self._duplicates

    def unique_events(self) -> list[ReceivedEvent]:
        """Accepted events with each uuid kept once (its first arrival), as PostHog deduplicates."""
        return _unique(self.events)

    def wait_for_change(
        self, version: int | None, timeout: float, stopping: threading.Event | None = None
    ) -> tuple[int, list[ReceivedEvent]]:
        """Block until the accepted events are no longer those of ``version`` (a version this method
        or :meth:`snapshot` returned; ``None`` returns at once), ``timeout`` passes or ``stopping``
        is set; return :meth:`snapshot`: the version now and its unique events."""
        deadline = time.monotonic() + timeout
        with self._changed:
            self._change_waiters += 1
            self._changed.notify_all()
            try:
                while version == self._version and not (stopping is not None and stopping.is_set()):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._changed.wait(remaining)
            finally:
                self._change_waiters -= 1
        return self.snapshot()

    def snapshot(self) -> tuple[int, list[ReceivedEvent]]:
        """The current version (what :meth:`wait_for_change` waits to change) and the unique events
        (:meth:`unique_events`) of that version, taken together."""
        with self._changed:
            current, events = self._version, list(self._events)
        return current, _unique(events)

    def clear(self) -> None:
        """Forget every recorded event and request and the duplicate count."""
        with self._changed:
            self._events.clear()
            self._requests.clear()
            self._seen_uuids.clear()
            self._duplicates = 0
            self._version += 1
            self._changed.notify_all()

    def wait_for_events(
        self, count: int, timeout: float = 5.0, predicate: Callable[[ReceivedEvent], bool] | None = None
    ) -> list[ReceivedEvent]:
        """Block until at least ``count`` accepted events match ``predicate`` (all when ``None``);
        return every matching event so far. Raises TimeoutError saying what did arrive."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                matching = [e for e in self._events if predicate is None or predicate(e)]
                if len(matching) >= count:
                    return matching
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(self._waited_too_long(f"{count} events", len(matching), timeout, predicate))
                self._changed.wait(remaining)

    def wait_for_requests(
        self, count: int, timeout: float = 5.0, predicate: Callable[[ReceivedRequest], bool] | None = None
    ) -> list[ReceivedRequest]:
        """Like :meth:`wait_for_events`, for answered requests (rejected and faulted ones too)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                matching = [r for r in self._requests if predicate is None or predicate(r)]
                if len(matching) >= count:
                    return matching
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(self._waited_too_long(f"{count} requests", len(matching), timeout, predicate))
                self._changed.wait(remaining)

    def _record(self, request: ReceivedRequest, events: list[ReceivedEvent]) -> None:
        """Record an answered request and the events it had accepted (before answering it, so a
        client that has its answer finds it recorded)."""
        with self._changed:
            for event in events:
                self._remember(event)
            if events:
                self._version += 1
            self._requests.append(request)
            self._changed.notify_all()

    def _remember(self, received: ReceivedEvent) -> None:
        key = uuid_key(received.event.get("uuid"))
        if key is not None:
            if key in self._seen_uuids:
                self._duplicates += 1
            self._seen_uuids.add(key)
        self._events.append(received)

    def _waited_too_long(self, wanted: str, got: int, timeout: float, predicate: object) -> str:
        matching = "" if predicate is None else " matching the predicate"
        events = [f"{e.name} on {e.path}" for e in self._events[-20:]]
        answers = [f"{r.method} {r.path} -> {r.status} {r.outcome}: {r.detail}" for r in self._requests[-10:]]
        return (
            f"waited {timeout:g}s for {wanted}{matching}, got {got}. "
            f"Events received ({len(self._events)}): {events or 'none'}. "
            f"Requests ({len(self._requests)}, last 10): {answers or 'none'}"
        )


def _unique(events: list[ReceivedEvent]) -> list[ReceivedEvent]:
    seen: set[str] = set()
    unique = []
    for received in events:
        key = uuid_key(received.event.get("uuid"))
        if key is not None:
            if key in seen:
                continue
            seen.add(key)
        unique.append(received)
    return unique


def uuid_key(value: object) -> str | None:
    """The uuid an event is deduplicated by, in canonical form; None when it is not a uuid."""
    if not isinstance(value, str):
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def events_text(count: int) -> str:
    return f"{count} event" if count == 1 else f"{count} events"
