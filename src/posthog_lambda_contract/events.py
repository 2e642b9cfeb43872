"""The one event builder: every event either side sends to PostHog is made by ``make_event``.

Spans (through ``records.expand``), traces, feedback, metrics, exceptions, the wrappers'
events, failed traces, drop reports and Lambda's figures alike: so every event has a UUIDv7
made once when it is built, one timestamp format, and the same identity rules (a trace
without a known user uses its trace id as distinct id, with ``$process_person_profile:
false``, as PostHog's own SDKs do). Size limits are applied when the event is serialized
(``limits``).

Precedence, lowest first: the trace's shared properties (decorator ``properties``, Lambda
request id), the span's own custom properties, then what the library sets. A user's property
can therefore never overwrite a ``$ai_*`` field the library set.
"""

from __future__ import annotations

import time

from . import ids

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .schema import Event

PRIVATE_PROPERTIES = ("$ai_input", "$ai_output_choices", "$ai_input_state", "$ai_output_state")
"""What privacy mode removes, from every event kind."""

LIB = "posthog-lambda"
"""``$ai_lib`` of every event this product makes (posthog-python's wrappers send ``posthog-ai``:
their events keep it)."""
VERSION = "0.1.0"
"""The product's version (``posthog_lambda.__version__``, pyproject's): ``$ai_lib_version``."""

_second: tuple[int, str] = (-1, "")


def iso(unix_seconds: float) -> str:
    """ISO 8601 in UTC with microseconds, as datetime.isoformat() writes it; the events of a
    trace mostly share their second, so its text is kept."""
    global _second
    whole = int(unix_seconds)
    micros = int((unix_seconds - whole) * 1_000_000)
    second, text = _second
    if whole != second:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _second = (whole, text)
    return f"{text}.{micros:06d}+00:00"


# What every event of a trace shares: its header, sent once per frame with the trace's span
# records, so short keys. Only DISTINCT_ID is required; the others default to absent/false.
TRACE_ID = "t"
DISTINCT_ID = "d"
ANONYMOUS = "a"
"""True: no known user; DISTINCT_ID is the trace id and no person profile is made."""
SESSION_ID = "s"
GROUPS = "g"
PRIVACY = "pm"
COMMON = "c"
"""Properties every event of the trace carries (the decorator's, the Lambda request id)."""
MAX_EVENT_BYTES = "m"
"""The ``max_event_bytes`` the trace was made with: the extension fits its events to it."""
REDACT = "r"
"""The normalized keys (``jsonable.redact_key_set``) whose values are redacted from the trace's
marshalled inputs and outputs, which are redacted as they are expanded (``records``)."""


_redact_sets: dict[tuple[str, ...], frozenset[str]] = {}


def redact_set(header: dict[str, Any]) -> frozenset[str]:
    """The header's REDACT keys as a set, made once per distinct list (a tuple when marshalled,
    a list when it came as JSON)."""
    keys = header.get(REDACT)
    if not keys:
        return frozenset()
    keys = keys if type(keys) is tuple else tuple(keys)
    found = _redact_sets.get(keys)
    if found is None:
        found = frozenset(str(k) for k in keys)
        if len(_redact_sets) < 64:
            _redact_sets[keys] = found
    return found


def header_of(event: dict[str, Any]) -> dict[str, Any]:
    """The identity part of an event's header, read back from an event this module made: what
    a later event about the same trace (a Lambda figure) needs to share its user, person
    profile rule, session and groups."""
    props = event.get("properties") or {}
    header: dict[str, Any] = {
        DISTINCT_ID: event["distinct_id"],
        ANONYMOUS: props.get("$process_person_profile") is False,
    }
    trace_id = props.get("$ai_trace_id")
    if trace_id is not None:
        header[TRACE_ID] = trace_id
    if props.get("$ai_session_id") is not None:
        header[SESSION_ID] = props["$ai_session_id"]
    if props.get("$groups"):
        header[GROUPS] = props["$groups"]
    return header


def now() -> float:
    """The wall clock, Unix seconds: the ``wall`` of an event made now."""
    return time.time()


def make_event(
    kind: str,
    header: dict[str, Any],
    library: dict[str, Any],
    user: dict[str, Any] | None,
    wall: float,
    *,
    uuid: str | None = None,
    timestamp: str | None = None,
) -> Event:
    """The event: the trace's shared properties, then ``user``'s, then ``library``'s (a fresh
    dict made for this event, so it can be the result itself); its session, groups, person
    profile and privacy mode; a UUIDv7 and the timestamp of ``wall`` (Unix seconds), unless
    the caller of a posthog-python wrapper chose its own ``uuid`` or ``timestamp``."""
    common = header.get(COMMON)
    if user:
        props = {**common, **user, **library} if common else {**user, **library}
    elif common:
        props = {**common, **library}
    else:
        props = library
    session_id = header.get(SESSION_ID)
    if session_id is not None:
        props["$ai_session_id"] = session_id
    groups = header.get(GROUPS)
    if groups:
        props["$groups"] = groups
    if header.get(ANONYMOUS):
        props["$process_person_profile"] = False
    if header.get(PRIVACY):
        for key in PRIVATE_PROPERTIES:
            props.pop(key, None)
    if "$ai_lib" not in props:  # a posthog-python wrapper's event says which library made it
        props["$ai_lib"] = LIB
        props["$ai_lib_version"] = VERSION
    return {
        "event": kind,
        "distinct_id": header[DISTINCT_ID],
        "properties": props,
        "uuid": uuid or ids.uuid7(int(wall * 1000)),
        "timestamp": timestamp or iso(wall),
    }
