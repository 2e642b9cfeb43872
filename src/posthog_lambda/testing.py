"""Helpers for testing your own traced handlers.

from posthog_lambda.testing import capture_events

def test_my_handler():
    with capture_events() as events:
        handler({"question": "hi"}, None)
    assert [e["event"] for e in events][-1] == "$ai_trace"
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from ._config import reset_config
from ._destination import pop_override, push_override
from ._destination import reset as reset_destination
from ._drops import reset_drops
from ._lambda import set_cold_start
from ._sinks import MemorySink
from ._types import Event

__all__ = ["capture_events", "reset", "trace_tree_problems"]


def reset(*, cold_start: bool = True) -> None:
    """Put posthog_lambda back as a new process finds it, between tests: ``configure()``
    forgotten and the environment read again on next use, the destination (the extension's
    socket, posthog-python's client) closed and chosen again, drop counts cleared, and the next
    traced invocation a cold start (``cold_start=False``: a warm one). Spans still running keep
    what they had."""
    reset_config()
    reset_destination()
    reset_drops()
    set_cold_start(cold_start)


@contextmanager
def capture_events() -> Iterator[list[Event]]:
    """Collect, instead of sending, every event emitted inside the block (in any thread).

    Each event is a dict with ``event``, ``distinct_id``, ``properties``, ``uuid`` and
    ``timestamp``, exactly as PostHog's capture API would receive it.
    """
    sink = MemorySink()
    push_override(sink)
    try:
        yield sink.events
    finally:
        pop_override(sink)


_NODES = ("$ai_span", "$ai_generation", "$ai_embedding")


def trace_tree_problems(events: Sequence[Event]) -> list[str]:
    """Why PostHog's trace view would not show these events as one tree; empty when it would.

    Each span-like event needs a trace id and a parent (``$ai_parent_id``, else the trace id)
    that is either the trace id or the id of another event of the same trace.
    """
    problems: list[str] = []
    ids: dict[str, set[str]] = {}
    for event in events:
        props = event["properties"]
        trace_id = props.get("$ai_trace_id")
        if event["event"] in _NODES:
            if not trace_id:
                problems.append(f"{event['event']} {event['uuid']} has no $ai_trace_id")
                continue
            node = props.get("$ai_generation_id") or props.get("$ai_span_id")
            if node:
                ids.setdefault(trace_id, set()).add(node)
    for event in events:
        if event["event"] not in _NODES:
            continue
        props = event["properties"]
        trace_id = props.get("$ai_trace_id")
        if not trace_id:
            continue
        parent = props.get("$ai_parent_id") or trace_id
        if parent != trace_id and parent not in ids.get(trace_id, set()):
            name = props.get("$ai_span_name")
            problems.append(f"{event['event']} {name!r} points at parent {parent}, not in trace {trace_id}")
    return problems
