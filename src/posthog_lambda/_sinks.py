"""The sinks the library itself provides. A sink is any object with ``send(events)``
(``posthog_lambda.Sink``): what ``configure(sink=...)`` takes, reached through
``_sink_exporter`` with events already within their size limits."""

from __future__ import annotations

from _thread import allocate_lock

from posthog_lambda_contract import limits

from ._drops import record_drop

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._types import Event


class MemorySink:
    """Keeps events in a list, each round-tripped through strict JSON as PostHog would see it."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._lock = allocate_lock()

    def send(self, events: Sequence[Event]) -> None:
        import json

        wire = [json.loads(limits.dumps(e)) for e in events]
        with self._lock:
            self.events.extend(wire)


class DropSink:
    """Used when nothing can deliver: counts and logs instead of losing silently."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def send(self, events: Sequence[Event]) -> None:
        record_drop("no_destination", len(events), self.reason)
