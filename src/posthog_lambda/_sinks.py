"""Where finished events go.

A sink is any object with ``send(events)``. It receives each trace's events when the trace
ends (the handler returned or raised, or an outermost span outside a handler ended), and
every event it receives has its uuid already, so resending never duplicates in PostHog.
``send`` should not block for long and may raise: the library catches, counts and logs.
Events reach a sink already within their endpoint's size limit, unless the sink says
``fits_events = True``: then it serializes them with ``_wire.encode``, which cuts them.

Which sink is used, first match wins: a ``testing.capture_events()`` block, the one given to
``configure(sink=...)``, then the direct posthog-python sink when POSTHOG_API_KEY is set,
else nothing (events are counted and dropped, with a logged reason).
"""

from __future__ import annotations

import os
from _thread import allocate_lock

from posthog_lambda_contract.keys import mask

from . import _config
from ._log import logger, record_drop

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._config import Config
    from ._spans import Item, Running, Trace
    from ._types import Event, Sink


class MemorySink:
    """Keeps events in a list, each round-tripped through strict JSON as PostHog would see it."""

    fits_events = True  # its serialization applies the size limits

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._lock = allocate_lock()

    def send(self, events: Sequence[Event]) -> None:
        import json

        from ._wire import encode

        wire = [json.loads(encode(e)) for e in events]
        with self._lock:
            self.events.extend(wire)


class DropSink:
    """Used when nothing can deliver: counts and logs instead of losing silently."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def send(self, events: Sequence[Event]) -> None:
        record_drop("no_destination", len(events), self.reason)


_overrides: list[Sink] = []
_overrides_lock = allocate_lock()
_auto: tuple[Config, Sink] | None = None


def push_override(sink: Sink) -> None:
    with _overrides_lock:
        _overrides.append(sink)


def pop_override(sink: Sink) -> None:
    with _overrides_lock:
        _overrides.remove(sink)


def current_sink() -> Sink:
    if _overrides:
        return _overrides[-1]
    config = _config.current or _config.get_config()
    if config.sink is not None:
        return config.sink
    global _auto
    auto = _auto
    if auto is None or auto[0] is not config:
        auto = _auto = (config, _automatic(config))
    return auto[1]


def _automatic(config: Config) -> Sink:
    if os.path.exists(config.socket_path):
        from ._socket_sink import SocketSink

        logger.debug("events go to the extension at %s", config.socket_path)
        return SocketSink(config.socket_path, config.spool_dir)
    if config.api_key:
        from ._posthog_sink import PostHogSink

        logger.debug("events go to %s with key %s", config.host, mask(config.api_key))
        return PostHogSink(config.api_key, config.host)
    return DropSink("no POSTHOG_API_KEY and no sink configured")


def deliver(events: list[Event]) -> None:
    """Hand events to the current sink. Never raises."""
    try:
        sink = current_sink()
        if events:
            if not getattr(sink, "fits_events", False):
                from ._wire import fitted

                events = [fitted(e) for e in events]
            sink.send(events)
    except Exception as exc:
        record_drop("sink_error", len(events), f"{type(exc).__name__}: {exc}")


def deliver_trace(
    trace: Trace, items: Sequence[Item], ended: tuple[str, str] | None = None, running: Running | None = None
) -> None:
    """Hand a trace's finished spans and events to the current sink. A sink with ``send_trace``
    (the extension's) takes them as they are, and is told in the same write that the handler
    is done (``ended``: request id, trace id) or still running (``running``); any other gets
    the events they stand for. Never raises."""
    try:
        sink = current_sink()
        send_trace = getattr(sink, "send_trace", None)
        if send_trace is not None:
            send_trace(trace.header(), items, ended, running)
            return
        events = [item.to_event() for item in items]
    except Exception as exc:
        record_drop("sink_error", len(items), f"{type(exc).__name__}: {exc}")
        return
    deliver(events)


def streams() -> bool:
    """Whether the current sink takes finished spans while the handler still runs."""
    return bool(getattr(current_sink(), "streams", False))
