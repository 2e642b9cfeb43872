"""Assemble one PostHog event from a span or a raw event: precedence, privacy, size.

Precedence, lowest first: the trace's shared properties (decorator ``properties``, Lambda
request id), the span's own custom properties, then what the library sets. A user's property
can therefore never overwrite a ``$ai_*`` field the library set.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any

from . import _ids
from ._size import fit

if TYPE_CHECKING:
    from ._sinks import Event
    from ._spans import Trace

PRIVATE_PROPERTIES = ("$ai_input", "$ai_output_choices", "$ai_input_state", "$ai_output_state")
"""What privacy mode removes, from every event kind."""

_UTC = datetime.UTC


def iso(unix_seconds: float) -> str:
    return datetime.datetime.fromtimestamp(unix_seconds, _UTC).isoformat()


def assemble(
    kind: str,
    trace: Trace,
    library: dict[str, Any],
    user: dict[str, Any] | None,
    wall: float,
) -> Event:
    props: dict[str, Any] = dict(trace.common) if trace.common else {}
    if user:
        props.update(user)
    for key, value in library.items():
        if value is not None:
            props[key] = value
    if trace.groups:
        props["$groups"] = trace.groups
    if trace.anonymous:
        props["$process_person_profile"] = False
    if trace.privacy_mode:
        for key in PRIVATE_PROPERTIES:
            props.pop(key, None)
    return {
        "event": kind,
        "distinct_id": trace.distinct_id,
        "properties": fit(props, trace.config.limit_for(kind)),
        "uuid": _ids.uuid7(int(wall * 1000)),
        "timestamp": iso(wall),
    }
