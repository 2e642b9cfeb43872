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
from posthog_lambda_contract import limits
from posthog_lambda_contract import records as _records
from posthog_lambda_contract.events import MAX_EVENT_BYTES
from posthog_lambda_contract.limits import BATCH_EVENT_LIMIT

from . import _config
from ._drops import record_drop
from ._log import logger

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    from ._export import Announcement, Ended, Header, Item, Items, Record, Running
    from ._types import Event

WRITE_BUDGET_S = 0.05
"""The most one frame may wait on the socket before it goes to the spool instead."""


class SocketExporter:
    streams = True  # cheap enough to take finished spans while the handler runs

    def __init__(self, path: str, spool_dir: str) -> None:
        self.path = path
        self.spool_dir = spool_dir
        self._socket: socket.socket | None = None
        self._lock = allocate_lock()
        self._pid = os.getpid()
        self._spool_file = self._spool_name()

    def _spool_name(self) -> str:
        return os.path.join(self.spool_dir, f"{self._pid}-{time.time_ns()}{_frames.SPOOL_SUFFIX}")

    def __repr__(self) -> str:
        return f"SocketExporter({self.path!r})"

    def export(self, header: Header | None, items: Items, ended: Ended | None = None, running: Running = None) -> None:
        """A trace's finished spans (as records, with its header) and events, in one write with
        its invocation's END (``ended``) or START/OPEN (``running``)."""
        head = self._running_frame(header or {}, running) if running is not None else b""
        tail = b""
        if ended is not None:
            tail = _frames.encode(_frames.END, {"request_id": ended.request_id, "trace_id": ended.trace_id})
        body = self._items_frames(header, items) if header is not None else self._events_frames(items, None)  # type: ignore[arg-type]
        self._write(head + body + tail, len(items))

    def _running_frame(self, header: dict[str, Any], running: Announcement) -> bytes:
        """START (first time) or OPEN: the records of the ``$ai_trace`` and the running spans."""
        payload: dict[str, Any] = {"request_id": running.request_id, "trace_id": running.trace_id}
        if running.first:
            payload["deadline_ms"] = running.deadline_ms
            payload["trace"] = header
            if running.root is not None:
                payload["root"] = running.root
            payload["open"] = running.opened
            return _frames.encode(_frames.START, payload, marshalled=True)
        if running.opened:
            payload["open"] = running.opened
            return _frames.encode(_frames.OPEN, payload, marshalled=True)
        return b""

    def _items_frames(self, header: dict[str, Any], items: Sequence[Item]) -> bytes:
        if not items:
            return b""
        # Usually one small frame: spans as records, the rare other events whole. The extension
        # fits each record's event to the header's limit; a whole event needs fitting here only
        # when the frame is larger than its limit (within it, no event in it can exceed it).
        max_event_bytes: int = header[MAX_EVENT_BYTES]
        records: list[Record] = []
        events: list[Event] = []
        for item in items:
            if type(item) is dict:
                events.append(item)
            else:
                records.append(item)  # type: ignore[arg-type]
        try:
            payload = {"events": events, "trace": header, "spans": records}
            frame = _frames.encode(_frames.EVENTS, payload, marshalled=True)
            if events and len(frame) > max_event_bytes:
                events = [limits.fitted(e, limits.limit_for(e["event"], max_event_bytes)) for e in events]
                payload["events"] = events
                frame = _frames.encode(_frames.EVENTS, payload, marshalled=True)
            if len(frame) <= BATCH_EVENT_LIMIT:
                return frame
        except (TypeError, ValueError, _frames.FrameError):
            pass
        expanded = [item if type(item) is dict else _records.expand(header, item) for item in items]  # type: ignore[arg-type]
        return self._events_frames(expanded, max_event_bytes)

    def _events_frames(self, events: Sequence[Event], max_event_bytes: int | None) -> bytes:
        if not events:
            return b""
        if max_event_bytes is None:
            max_event_bytes = (_config.current or _config.get_config()).max_event_bytes
        # Usually one serialization for the lot: if the whole payload is within the smallest
        # per-event limit, so is every event in it.
        try:
            frame = _frames.encode(_frames.EVENTS, {"events": list(events)})
            if len(frame) <= min(BATCH_EVENT_LIMIT, max_event_bytes):
                return frame
        except (TypeError, ValueError, _frames.FrameError):
            pass
        encoded = []
        for event in events:
            try:
                encoded.append(limits.encode(event, limits.limit_for(event["event"], max_event_bytes)))
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
        if self._pid != os.getpid():
            # A forked child (a runtime worker, multiprocessing): the connection it inherited is
            # its parent's stream, where its frames would interleave with the parent's. Its own
            # connection and spool file, as every process has.
            self._pid = os.getpid()
            self._spool_file = self._spool_name()
            self._close()
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

    def connect(self) -> None:
        """Connect now if not connected (an extension not there yet is fine: the first write
        tries again)."""
        with self._lock:
            try:
                self._send(b"")
            except OSError as exc:
                logger.debug("socket %s not reachable yet (%s)", self.path, exc)
                self._close()

    def before_snapshot(self, timeout: float) -> dict[str, Any] | None:
        """Tell the extension that the snapshot comes next (SnapStart) and wait up to ``timeout``
        seconds for its answer, once it has sent what it held (``frames.SNAPSHOT``); the answer,
        or None if there was none. The connection is closed then: no restored environment keeps
        a copy of it (``reconnect`` opens its own)."""
        with self._lock:
            try:
                self._send(_frames.encode(_frames.SNAPSHOT, {}))
                sock = self._socket
                assert sock is not None  # _send connected it
                sock.settimeout(timeout)
                reader = _frames.Reader()
                while True:
                    data = sock.recv(4096)
                    if not data:
                        raise OSError("the extension closed the connection without answering")
                    answers, errors = reader.feed(data)
                    if errors:
                        raise OSError(f"the extension's answer cannot be read: {errors[0]}")
                    for kind, answer in answers:
                        if kind == _frames.SNAPSHOT:
                            return answer
            except OSError as exc:
                logger.debug("no answer from the extension before the snapshot (%s)", exc)
                return None
            finally:
                self._close()

    def reconnect(self) -> None:
        """Replace the connection (and the spool file's name) made before a restore from a
        snapshot with new ones, connecting now as ``connect`` does. Every environment restored
        from the snapshot holds a copy of the old ones, made for the one that ran Init."""
        with self._lock:
            self._close()
            self._spool_file = self._spool_name()
            try:
                self._send(b"")
            except OSError as exc:
                logger.debug("socket %s not reachable after the restore (%s)", self.path, exc)
                self._close()

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
