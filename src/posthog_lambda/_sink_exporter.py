"""The exporter in front of a ``Sink``: records become the events they stand for, and every event
reaches the sink within its size limit, in the order the trace's items finished."""

from __future__ import annotations

from posthog_lambda_contract import limits
from posthog_lambda_contract import records as _records
from posthog_lambda_contract.events import MAX_EVENT_BYTES

from . import _config

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._export import Ended, Header, Items, Running
    from ._types import Event, Sink


class SinkExporter:
    streams = False  # a sink gets a trace's events when it ends

    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    def __repr__(self) -> str:
        return f"SinkExporter({self.sink!r})"

    def export(self, header: Header | None, items: Items, ended: Ended | None = None, running: Running = None) -> None:
        if header is not None:
            max_event_bytes = header[MAX_EVENT_BYTES]
        else:
            max_event_bytes = (_config.current or _config.get_config()).max_event_bytes
        events: list[Event] = []
        for item in items:
            event = item if type(item) is dict else _records.expand(header or {}, item)  # type: ignore[arg-type]
            events.append(limits.fitted(event, limits.limit_for(event["event"], max_event_bytes)))
        if events:
            self.sink.send(events)

    def close(self) -> None:
        close = getattr(self.sink, "close", None)
        if callable(close):
            close()
