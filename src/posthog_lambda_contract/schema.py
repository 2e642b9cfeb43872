"""The shape of one PostHog event, and the names of the properties both sides set on Lambda's
behalf where both must agree on them.

``typing`` costs milliseconds to import: the ``Event`` type is made on first use (this module's
``__getattr__``), so that the library and the extension can import the property names at run
time for nothing; ``posthog_lambda.Event`` re-exports it, loaded on first use too.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypedDict

    class Event(TypedDict):
        """One event as PostHog's capture API receives it."""

        event: str
        distinct_id: str
        properties: dict[str, Any]
        uuid: str
        timestamp: str


# -- Lambda SnapStart: properties of the $ai_trace ----------------------------------------------

LAMBDA_RESTORED = "lambda_restored"
"""``true`` on every ``$ai_trace`` of an invocation that ran in an environment restored from a
SnapStart snapshot (on SnapStart that is every invocation); absent elsewhere. Set by the library
in the function's process (known from the runtime's after-restore hook) and by the extension
(the first event after Init, or the Telemetry API's ``platform.restoreStart``): the same word,
the same meaning, whichever side knew first."""

LAMBDA_RESTORE_DURATION_MS = "lambda_restore_duration_ms"
"""On the ``$ai_trace`` of the first invocation after a restore from a SnapStart snapshot only:
how long Lambda took to restore the environment and run the runtime's after-restore hooks, in
ms (the Telemetry API's ``platform.restoreReport`` ``durationMs``, or ``platform.report``'s
``restoreDurationMs``). Set by the extension. What ``lambda_init_duration_ms`` is to other cold
starts: on SnapStart Init ran once, long before, for the snapshot."""

LAMBDA_RESTORE_STATUS = "lambda_restore_status"
"""With ``lambda_restore_duration_ms``, only when Lambda reported the restore as something other
than ``success`` (``platform.restoreRuntimeDone`` or ``platform.restoreReport``'s ``status``, as
Lambda spells it: ``error``, ``failure``, ``timeout``). Set by the extension."""


# -- A trace continued from another function ---------------------------------------------------

LAMBDA_ROOT = "lambda_root"
"""``true`` on the ``$ai_span`` that stands for an invocation in a trace another function began
(``posthog_lambda.inject`` and the handler's carrier): there the invocation is a span under the
sender's, not a trace, and this says which span is the invocation's root, for PostHog users and
for the extension, which gives it what an ``$ai_trace`` gets (Lambda's figures, a restore, a
timeout). Absent elsewhere: an ``$ai_trace`` is always an invocation's root."""


def is_root(event: dict[str, Any]) -> bool:
    """Whether ``event`` stands for a whole invocation: an ``$ai_trace``, or the ``$ai_span`` of
    one that continues another function's trace (``LAMBDA_ROOT``)."""
    name = event.get("event")
    if name == "$ai_trace":
        return True
    if name != "$ai_span":
        return False
    properties = event.get("properties")
    return isinstance(properties, dict) and properties.get(LAMBDA_ROOT) is True


def __getattr__(name: str) -> object:
    if name != "Event":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from typing import Any, TypedDict

    class Event(TypedDict):  # the same as under TYPE_CHECKING above
        """One event as PostHog's capture API receives it."""

        event: str
        distinct_id: str
        properties: dict[str, Any]
        uuid: str
        timestamp: str

    Event.__qualname__ = "Event"
    # The annotations are strings (``from __future__ import annotations``): get_type_hints looks
    # their names up here.
    globals().update(Event=Event, Any=Any)
    return Event
