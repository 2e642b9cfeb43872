"""What the extension had to drop, by reason, and the event that makes the loss visible in PostHog.

Reasons name their unit: ``frames_*`` count frames that could not be read (their events are
unknown), ``events_*`` count events. Each reason is logged the first time it happens; the
counts since the last report travel to PostHog as one ``posthog_lambda_dropped`` event. Worth
keeping: every drop, wherever it happens, is counted here (``Drops.add``) and so reported; a
loss that is only logged is invisible to whoever reads PostHog.
"""

from __future__ import annotations

import json
import os
import threading

from posthog_lambda_contract.events import ANONYMOUS, DISTINCT_ID, make_event, now

from . import _log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from posthog_lambda_contract.schema import Event

DROPPED_EVENT = "posthog_lambda_dropped"
REPORTER = "posthog-lambda"
"""The drop reports' distinct id: they belong to no user of the function."""
HEADER = {DISTINCT_ID: REPORTER, ANONYMOUS: True}


class Drops:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, int] = {}
        self._totals: dict[str, int] = {}

    def add(self, reason: str, count: int = 1, detail: str = "", *, log: bool = True) -> None:
        """Count ``count`` losses; ``log=False`` when the cause was already said."""
        if count <= 0:
            return
        with self._lock:
            self._pending[reason] = self._pending.get(reason, 0) + count
            self._totals[reason] = self._totals.get(reason, 0) + count
        if log:
            suffix = f": {detail}" if detail else ""
            _log.once(f"drop:{reason}", f"dropped {count} ({reason}){suffix}")

    def take(self) -> dict[str, int]:
        """The counts since the last ``take``, which starts a new count."""
        with self._lock:
            pending, self._pending = self._pending, {}
        return pending

    def restore(self, data: bytes) -> bool:
        """A report (``dropped_event``'s JSON) was itself lost before PostHog had it: its counts
        are pending again, for the next report (so a long outage's losses are all reported once
        PostHog is back). False if ``data`` is not such a report."""
        counts = counts_of(data)
        if counts is None:
            return False
        with self._lock:
            for reason, count in counts.items():
                self._pending[reason] = self._pending.get(reason, 0) + count
        return True

    def totals(self) -> dict[str, int]:
        """Everything dropped since start-up, by reason."""
        with self._lock:
            return dict(self._totals)


TOTAL = "posthog_lambda_dropped_total"
FUNCTION = "lambda_function_name"
NOT_COUNTS = (TOTAL, FUNCTION)
"""A report's properties that are not a reason's count."""


def counts_of(data: bytes) -> dict[str, int] | None:
    """The counts a report's JSON carries; None if it is not a report."""
    try:
        event = json.loads(data)
    except ValueError:
        return None
    if not isinstance(event, dict) or event.get("event") != DROPPED_EVENT:
        return None
    properties = event.get("properties")
    if not isinstance(properties, dict):
        return None
    return {
        key: value
        for key, value in properties.items()
        if key not in NOT_COUNTS and isinstance(value, int) and not isinstance(value, bool)
    }


def dropped_event(counts: dict[str, int]) -> Event:
    """The event carrying ``counts``, made by the one event builder: no person profile."""
    properties: dict[str, Any] = dict(counts)
    properties[TOTAL] = sum(counts.values())
    function = os.environ.get("AWS_LAMBDA_FUNCTION_NAME")
    if function:
        properties[FUNCTION] = function
    return make_event(DROPPED_EVENT, HEADER, properties, None, now())
