"""Hand events to the extension over its Unix socket, never blocking the handler for long.

One connection per process, frames written whole under a lock. A write that cannot finish
within ``WRITE_BUDGET_S`` (the extension is gone, hung or not reading) closes the connection,
so the extension discards the partial frame, and appends the whole frame to a spool file that
the extension drains. If even that fails the events are counted and logged as dropped.
"""

from __future__ import annotations

import os
import socket
import time
from _thread import allocate_lock

from posthog_lambda_contract import frames as _frames
from posthog_lambda_contract.limits import BATCH_EVENT_LIMIT

from ._log import logger, record_drop
from ._wire import encode, fitted

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    from ._spans import Item, Running
    from ._types import Event

WRITE_BUDGET_S = 0.05
"""The most one frame may wait on the socket before it goes to the spool instead."""


class SocketSink:
    fits_events = True  # encode() applies the size limits as it serializes
    streams = True  # cheap enough to take finished spans while the handler runs

    def __init__(self, path: str, spool_dir: str) -> None:
        self.path = path
        self.spool_dir = spool_dir
        self._socket: socket.socket | None = None
        self._lock = allocate_lock()
        self._spool_file = os.path.join(spool_dir, f"{os.getpid()}-{time.time_ns()}{_frames.SPOOL_SUFFIX}")

    def __repr__(self) -> str:
        return f"SocketSink({self.path!r})"

    def send(self, events: Sequence[Event]) -> None:
        self._write(self._events_frames(events), len(events))

    def send_trace(
        self,
        header: dict[str, Any],
        items: Sequence[Item],
        ended: tuple[str, str] | None,
        running: Running | None,
    ) -> None:
        """A trace's finished spans (as records, with its header) and events, in one write with
        its invocation's END (``ended``) or START/OPEN (``running``)."""
        head = self._running_frame(running) if running is not None else b""
        tail = b""
        if ended is not None:
            tail = _frames.encode(_frames.END, {"request_id": ended[0], "trace_id": ended[1]})
        self._write(head + self._items_frames(header, items) + tail, len(items))

    def _running_frame(self, running: Running) -> bytes:
        """START (first time) or OPEN: the ``$ai_trace`` and running spans as they would be
        sent, cut to their size limits."""
        payload: dict[str, Any] = {"request_id": running.request_id, "trace_id": running.trace_id}
        opened = [fitted(event) for event in running.opened]
        if running.first:
            payload["deadline_ms"] = running.deadline_ms
            if running.trace_event is not None:
                payload["trace"] = fitted(running.trace_event)
            payload["open"] = opened
            return _frames.encode(_frames.START, payload)
        if opened:
            payload["open"] = opened
            return _frames.encode(_frames.OPEN, payload)
        return b""

    def _items_frames(self, header: dict[str, Any], items: Sequence[Item]) -> bytes:
        if not items:
            return b""
        # Usually one small frame: spans as records, the rare other events whole. Within the
        # smallest per-event limit, nothing in it needs cutting: the other events are whole in
        # it, and records stand for $ai_* events, whose limit is far larger than that.
        try:
            records = []
            events = []
            for item in items:
                record = getattr(item, "record", None)
                if record is not None:
                    records.append(record())
                else:
                    events.append(item.to_event())
            frame = _frames.encode(_frames.EVENTS, {"events": events, "trace": header, "spans": records})
            if len(frame) <= BATCH_EVENT_LIMIT:
                return frame
        except (TypeError, ValueError, _frames.FrameError):
            pass
        return self._events_frames([item.to_event() for item in items])

    def _events_frames(self, events: Sequence[Event]) -> bytes:
        if not events:
            return b""
        # Usually one serialization for the lot: if the whole payload is within the smallest
        # per-event limit, so is every event in it.
        try:
            frame = _frames.encode(_frames.EVENTS, {"events": list(events)})
            if len(frame) <= BATCH_EVENT_LIMIT:
                return frame
        except (TypeError, ValueError, _frames.FrameError):
            pass
        encoded = []
        for event in events:
            try:
                encoded.append(encode(event))
            except (TypeError, ValueError) as exc:
                record_drop("unserializable_event", 1, f"{event.get('event')}: {exc}")
        # Frames stay under the protocol's limit: each event is at most 8 MiB.
        frames: list[bytes] = []
        batch: list[bytes] = []
        size = 0
        for data in encoded:
            if batch and size + len(data) > _frames.MAX_PAYLOAD - 1024:
                frames.append(_frames.encode_events(batch))
                batch, size = [], 0
            batch.append(data)
            size += len(data) + 1
        if batch:
            frames.append(_frames.encode_events(batch))
        return b"".join(frames)

    def _write(self, data: bytes, events: int) -> None:
        if not data:
            return
        with self._lock:
            try:
                self._send(data)
                return
            except OSError as exc:
                logger.debug("socket %s refused a frame (%s); spooling it", self.path, exc)
                self._close()
            self._spool(data, events)

    def _send(self, data: bytes) -> None:
        sock = self._socket
        if sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            # Bounds each blocking send: a reader that stops reading makes the first send that
            # finds the buffer full fail after this long.
            sock.settimeout(WRITE_BUDGET_S)
            try:
                sock.connect(self.path)
            except OSError:
                sock.close()
                raise
            self._socket = sock
        sock.sendall(data)

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        # A partly written frame dies with the connection: the extension drops an incomplete one.
        if self._socket is not None:
            try:
                self._socket.close()
            finally:
                self._socket = None

    def _spool(self, frame: bytes, events: int) -> None:
        try:
            _frames.append_to_spool(self._spool_file, frame)
        except OSError as exc:
            record_drop("no_extension_no_spool", events, f"{self.spool_dir}: {exc}")
