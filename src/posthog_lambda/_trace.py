"""A trace: what every event of it shares, and the settings it was started with.

The model's side only: who the user is, session, groups, privacy, redaction, the Lambda request
it belongs to. When and how its spans leave is the processor's (``_processor.Batch``, made here
when the trace starts and kept as ``batch``).
"""

from __future__ import annotations

import time

from posthog_lambda_contract import ids
from posthog_lambda_contract.events import (
    ANONYMOUS,
    COMMON,
    DISTINCT_ID,
    GROUPS,
    MAX_EVENT_BYTES,
    PRIVACY,
    REDACT,
    SESSION_ID,
    TRACE_ID,
    make_event,
)
from posthog_lambda_contract.jsonable import to_jsonable

from . import _processor

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ._config import Config
    from ._types import Event

_perf = time.perf_counter
_wall = time.time


_redact_lists: dict[frozenset[str], tuple[str, ...]] = {}
"""Each redaction set as the header carries it (few distinct sets: the configurations')."""


class Trace:
    """What all events of one trace share. ``detached``: it only describes events that wait in
    another trace's batch (never handed off on its own)."""

    __slots__ = (
        "_header",
        "_wall0",
        "anonymous",
        "batch",
        "common",
        "config",
        "deadline_ms",
        "distinct_id",
        "groups",
        "privacy_mode",
        "record_input",
        "record_output",
        "redact",
        "request_id",
        "session_id",
        "trace_id",
    )

    def __init__(
        self,
        config: Config,
        *,
        trace_id: str | None = None,
        distinct_id: str | None = None,
        session_id: str | None = None,
        privacy_mode: bool | None = None,
        capture_input: bool | None = None,
        capture_output: bool | None = None,
        groups: dict[str, Any] | None = None,
        common: dict[str, Any] | None = None,
        detached: bool = False,
    ) -> None:
        self.config = config
        self.trace_id = trace_id or ids.uuid7()
        self.distinct_id = distinct_id or config.default_distinct_id or self.trace_id
        # PostHog's own SDKs: without a known user, the trace id stands in and no person
        # profile is made, rather than one fake person that merges everyone.
        self.anonymous = not (distinct_id or config.default_distinct_id)
        self.session_id = session_id
        self.privacy_mode = config.privacy_mode if privacy_mode is None else privacy_mode
        # Privacy mode means inputs and outputs are never even captured.
        capture_input = config.capture_input if capture_input is None else capture_input
        capture_output = config.capture_output if capture_output is None else capture_output
        self.record_input = capture_input and not self.privacy_mode
        self.record_output = capture_output and not self.privacy_mode
        self.redact = config.redact_keys
        self.groups = groups
        self.common = common
        self._header: dict[str, Any] | None = None
        # One wall-clock reading per trace; spans take their wall time from perf_counter.
        self._wall0 = _wall() - _perf()
        self.request_id: str | None = None
        """The Lambda request this trace belongs to, when a traced handler started it."""
        self.deadline_ms = 0
        """When that request times out (Unix ms)."""
        self.batch = _processor.begin(self, detached)

    @property
    def closed(self) -> bool:
        """Its events have been handed over: a span starting now starts a trace of its own."""
        return self.batch.closed

    def header(self) -> dict[str, Any]:
        """What every event of this trace shares (``posthog_lambda_contract.events``' keys)."""
        header = self._header
        if header is None:
            header = self._header = {
                TRACE_ID: self.trace_id,
                DISTINCT_ID: self.distinct_id,
                ANONYMOUS: self.anonymous,
                SESSION_ID: self.session_id,
                GROUPS: self.groups,
                PRIVACY: self.privacy_mode,
                COMMON: self.common,
                MAX_EVENT_BYTES: self.config.max_event_bytes,
            }
            if self.redact:
                keys = _redact_lists.get(self.redact)
                if keys is None:
                    keys = _redact_lists[self.redact] = tuple(sorted(self.redact))
                header[REDACT] = keys
        return header

    def wall_at(self, perf: float) -> float:
        """The wall-clock time (Unix seconds) of a perf_counter() reading."""
        return self._wall0 + perf

    def snapshot(self, value: Any) -> Any:
        """``value`` as JSON-safe data, redacted: a copy later changes cannot reach (for what the
        library reads itself: properties, model parameters; span inputs and outputs are kept as
        ``jsonable.captured`` makes them)."""
        return to_jsonable(value, self.redact)

    def event(self, kind: str, properties: dict[str, Any]) -> Event:
        """An event of this trace that is not a span (an exception, feedback, a metric), made now."""
        return make_event(kind, self.header(), properties, None, _wall())
