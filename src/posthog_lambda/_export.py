"""What an exporter receives, and the interface every exporter has.

An exporter is the SDK's last step (as in OpenTelemetry): it gets a trace's header and its
items in the order they finished (spans as immutable records, ``posthog_lambda_contract.records``;
other events already built) and sends them on. It never sees a live span. The processor
(``_processor``) decides when that happens. A user's ``Sink`` (``send(events)``) is reached through
``_sink_exporter``, which turns records into the events they stand for.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any, Protocol, TypeAlias

    from ._types import Event

    Record: TypeAlias = tuple[Any, ...]
    Item: TypeAlias = Record | Event
    """What an exporter is handed: a span's record or another event."""
    Items: TypeAlias = Sequence[Item]
    Header: TypeAlias = dict[str, Any]
    """A trace's header (``posthog_lambda_contract.events``' keys)."""
    Running: TypeAlias = "Announcement | None"

    class Exporter(Protocol):
        streams: bool
        """Whether it takes finished spans while the handler still runs (and announcements)."""

        def export(
            self, header: Header | None, items: Items, ended: Ended | None = None, running: Running = None
        ) -> None:
            """Send ``items`` (records made with ``header``, or events); in the same write, say
            that the handler is done (``ended``) or still running (``running``). May raise."""


class Ended:
    """A traced invocation's handler returned or raised: no more of its events will come."""

    __slots__ = ("request_id", "trace_id")

    def __init__(self, request_id: str, trace_id: str) -> None:
        self.request_id = request_id
        self.trace_id = trace_id


class Announcement:
    """A traced invocation still running: what the extension needs to report it as failed if it
    never ends. ``root`` is the ``$ai_trace``'s record (first announcement only), ``opened`` the
    records of spans running now and not announced before (``records.RUNNING``)."""

    __slots__ = ("deadline_ms", "first", "opened", "request_id", "root", "trace_id")

    def __init__(
        self,
        request_id: str,
        trace_id: str,
        deadline_ms: int,
        first: bool,
        root: tuple[Any, ...] | None,
        opened: list[tuple[Any, ...]],
    ) -> None:
        self.request_id = request_id
        self.trace_id = trace_id
        self.deadline_ms = deadline_ms
        self.first = first
        self.root = root
        self.opened = opened
