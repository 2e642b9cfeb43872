"""Assemble one PostHog event from a span or a raw event: precedence and privacy.

Size limits are applied when the event is serialized (``_wire``).

Precedence, lowest first: the trace's shared properties (decorator ``properties``, Lambda
request id), the span's own custom properties, then what the library sets. A user's property
can therefore never overwrite a ``$ai_*`` field the library set.
"""

from __future__ import annotations

import time

from . import _ids

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ._types import Event

PRIVATE_PROPERTIES = ("$ai_input", "$ai_output_choices", "$ai_input_state", "$ai_output_state")
"""What privacy mode removes, from every event kind."""

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


# What every event of a trace shares: its header (``Trace.header``), sent once per frame with
# the trace's span records, so short keys.
TRACE_ID = "t"
DISTINCT_ID = "d"
ANONYMOUS = "a"
SESSION_ID = "s"
GROUPS = "g"
PRIVACY = "pm"
COMMON = "c"


def make_event(
    kind: str,
    header: dict[str, Any],
    library: dict[str, Any],
    user: dict[str, Any] | None,
    wall: float,
) -> Event:
    """The event: the trace's shared properties, then ``user``'s, then ``library``'s (a fresh
    dict made for this event, so it can be the result itself); its groups, person profile and
    privacy mode; a UUIDv7 and the timestamp of ``wall`` (Unix seconds)."""
    common = header.get(COMMON)
    if user:
        props = {**common, **user, **library} if common else {**user, **library}
    elif common:
        props = {**common, **library}
    else:
        props = library
    groups = header.get(GROUPS)
    if groups:
        props["$groups"] = groups
    if header.get(ANONYMOUS):
        props["$process_person_profile"] = False
    if header.get(PRIVACY):
        for key in PRIVATE_PROPERTIES:
            props.pop(key, None)
    return {
        "event": kind,
        "distinct_id": header[DISTINCT_ID],
        "properties": props,
        "uuid": _ids.uuid7(int(wall * 1000)),
        "timestamp": iso(wall),
    }
