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

from . import _frames
from ._config import BATCH_EVENT_LIMIT
from ._log import logger, record_drop
from ._wire import encode

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

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

    def send_final(self, events: Sequence[Event], request_id: str, trace_id: str) -> None:
        """The last events of an invocation and its END, in one write."""
        end = _frames.encode(_frames.END, {"request_id": request_id, "trace_id": trace_id})
        self._write(self._events_frames(events) + end, len(events))

    def invocation_started(self, request_id: str, trace_id: str, deadline_ms: int) -> None:
        payload = {"request_id": request_id, "trace_id": trace_id, "deadline_ms": deadline_ms}
        self._write(_frames.encode(_frames.START, payload), 0)

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
