"""The frame protocol between the function's process and the extension: one module, both sides.

A stream of frames over a Unix socket (or, when the socket cannot take them, appended to a
spool file that the extension drains; same format). Each frame is an 8-byte header, then a
JSON payload:

    b"PL" | version (1 byte) | kind (1 byte) | payload length (4 bytes, big-endian) | payload

Kinds and payloads (version 1):

- START  ``{"request_id", "trace_id", "deadline_ms", "trace", "root"?, "open"?}``: a traced
  invocation is still running a while after it began (deadline in Unix ms). ``trace`` is the
  trace's header (``events``' keys), ``root`` the record of its ``$ai_trace`` and ``open`` the
  records of the spans running at that moment, each with its id, ``LATENCY_NS`` set to
  ``records.RUNNING`` and ``END_US`` to when it started: what the extension completes
  (``records.cut_short``) and sends as failed if the invocation times out or its process dies.
  Invocations that end sooner send no START: their END says it all.
- OPEN   ``{"request_id", "trace_id", "open"}``: more running spans' records, after START.
- EVENTS ``{"events": [event, ...], "trace"?, "spans"?}``: finished PostHog events, each with
  its uuid; and finished spans of one trace as records, with the trace's header: each stands for
  the event ``records.expand(trace, record)`` returns (the reader makes it).
- END    ``{"request_id", "trace_id"}``: the handler returned or raised; no more events.
- SNAPSHOT ``{}``: Init is over and Lambda is about to snapshot the environment (SnapStart): the
  extension sends what it holds now, so that no environment restored from the snapshot holds a
  copy, and answers on the same connection, the one frame that goes the other way: SNAPSHOT
  ``{"sent", "kept"}``, whether PostHog took the events and how many are still buffered.

One shape of span on the wire: a record (``records``), finished or running.

A payload is JSON, or, when the kind byte has ``MARSHALLED`` set, what ``marshal`` (version 4)
wrote of the same object: the library writes its frames so, as marshal writes records (tuples,
and the bytes of inputs and outputs it captured marshalled) several times faster than JSON, and
the extension runs the function's Python. The extension answers in JSON.

A reader rejects, without crashing, anything else: wrong magic, unknown version or kind, a
payload over ``MAX_PAYLOAD`` bytes, invalid JSON, or a payload of the wrong shape. The
extension imports this module before it registers: keep its imports cheap. Worth keeping as it
is: this docstring is the protocol's specification, and ``Reader`` never raises on any input.
"""

from __future__ import annotations

import os
import struct
from marshal import dumps as _marshal_dumps
from marshal import loads as _marshal_loads

from .jsonable import MARSHAL_VERSION

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MAGIC = b"PL"
VERSION = 2
START = 1
EVENTS = 2
END = 3
OPEN = 4
SNAPSHOT = 5
KINDS = {START: "START", EVENTS: "EVENTS", END: "END", OPEN: "OPEN", SNAPSHOT: "SNAPSHOT"}

MARSHALLED = 0x80
"""Set in the kind byte: the payload is written by marshal (``MARSHAL_VERSION``), not JSON."""

HEADER = struct.Struct(">2sBBI")
MAX_PAYLOAD = 16 * 1024 * 1024
"""Above one event's largest size (8 MiB on the AI endpoint) with room for a batch of small ones."""


class FrameError(ValueError):
    """A frame that cannot be accepted; the message says why."""


def encode(kind: int, payload: dict[str, Any], *, marshalled: bool = False) -> bytes:
    """A frame of ``kind``; its payload written by marshal if ``marshalled`` (ValueError if it
    holds what marshal cannot write), else as JSON (TypeError or ValueError likewise)."""
    if marshalled:
        body = _marshal_dumps(payload, MARSHAL_VERSION)
        kind |= MARSHALLED
    else:
        import json  # on first use: the library imports this module on every cold start

        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    if len(body) > MAX_PAYLOAD:
        raise FrameError(f"payload of {len(body)} bytes is over the {MAX_PAYLOAD}-byte frame limit")
    return HEADER.pack(MAGIC, VERSION, kind, len(body)) + body


def encode_events(events: list[bytes]) -> bytes:
    """An EVENTS frame from events already serialized to JSON (``limits.encode``), so that each
    event is serialized exactly once on its way out."""
    body = b'{"events":[' + b",".join(events) + b"]}"
    if len(body) > MAX_PAYLOAD:
        raise FrameError(f"payload of {len(body)} bytes is over the {MAX_PAYLOAD}-byte frame limit")
    return HEADER.pack(MAGIC, VERSION, EVENTS, len(body)) + body


def parse_header(header: bytes) -> tuple[int, int]:
    """(kind, payload length) of an 8-byte header; FrameError if it is not one of ours."""
    magic, version, kind, length = HEADER.unpack(header)
    if magic != MAGIC:
        raise FrameError(f"not a posthog-lambda frame (magic {magic!r})")
    if version != VERSION:
        raise FrameError(f"frame version {version} is not supported (this side speaks {VERSION})")
    if kind & ~MARSHALLED not in KINDS:
        raise FrameError(f"unknown frame kind {kind}")
    if length > MAX_PAYLOAD:
        raise FrameError(f"frame of {length} bytes is over the {MAX_PAYLOAD}-byte limit")
    return kind, length


def parse_payload(kind: int, body: bytes) -> dict[str, Any]:
    """The payload of a frame of ``kind`` (its byte, ``MARSHALLED`` or not), checked for its
    shape; FrameError otherwise."""
    if kind & MARSHALLED:
        kind &= ~MARSHALLED
        try:
            payload = _marshal_loads(body)
        except Exception as exc:  # bad data raises ValueError, EOFError, TypeError, even MemoryError
            raise FrameError(f"{KINDS[kind]} payload is not JSON nor marshal data: {exc}") from None
    else:
        import json

        try:
            payload = json.loads(body)
        except ValueError as exc:
            raise FrameError(f"{KINDS[kind]} payload is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise FrameError(f"{KINDS[kind]} payload is not an object")
    if kind == EVENTS:
        events = payload.get("events")
        if not isinstance(events, list | tuple):
            raise FrameError("EVENTS payload has no events list")
        if "spans" in payload and (
            not isinstance(payload["spans"], list | tuple) or not isinstance(payload.get("trace"), dict)
        ):
            raise FrameError("EVENTS payload has spans without a list of them and their trace's header")
    elif kind == SNAPSHOT:
        if "kept" in payload and (not isinstance(payload["kept"], int) or not isinstance(payload.get("sent"), bool)):
            raise FrameError("SNAPSHOT answer has no integer kept and boolean sent")
    else:
        for key in ("request_id", "trace_id"):
            if not isinstance(payload.get(key), str) or not payload[key]:
                raise FrameError(f"{KINDS[kind]} payload has no {key}")
        if kind == START and not isinstance(payload.get("deadline_ms"), int):
            raise FrameError("START payload has no integer deadline_ms")
        if kind == START and not isinstance(payload.get("trace"), dict):
            raise FrameError("START payload has no trace header")
        if "root" in payload and not isinstance(payload["root"], list | tuple):
            raise FrameError(f"{KINDS[kind]} payload's root is not a record")
        if not isinstance(payload.get("open", []), list | tuple) or (kind == OPEN and "open" not in payload):
            raise FrameError(f"{KINDS[kind]} payload has no open list")
    return payload


def valid_event(event: Any) -> str | None:
    """Why an event from an EVENTS frame cannot be sent to PostHog, or None if it can."""
    if not isinstance(event, dict):
        return "event is not an object"
    if not isinstance(event.get("event"), str) or not event["event"]:
        return "event has no name"
    if not isinstance(event.get("distinct_id"), str) or not event["distinct_id"]:
        return "event has no distinct_id"
    if not isinstance(event.get("uuid"), str) or not event["uuid"]:
        return "event has no uuid"
    if not isinstance(event.get("properties", {}), dict):
        return "event properties are not an object"
    return None


class Reader:
    """Splits a byte stream (a socket's reads, a spool file's content) into frames.

    ``feed(data)`` returns the complete frames found so far as ``(kind, payload)``, and the
    errors of those that were rejected. After a bad header the rest of the stream cannot be
    trusted: the reader stops, and ``broken`` says so (close the connection, or drop the
    rest of the file).
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.broken: str | None = None

    def feed(self, data: bytes) -> tuple[list[tuple[int, dict[str, Any]]], list[str]]:
        frames: list[tuple[int, dict[str, Any]]] = []
        errors: list[str] = []
        if self.broken is not None:
            return frames, errors
        self._buffer += data
        while len(self._buffer) >= HEADER.size:
            try:
                kind, length = parse_header(bytes(self._buffer[: HEADER.size]))
            except FrameError as exc:
                self.broken = str(exc)
                errors.append(str(exc))
                self._buffer.clear()
                break
            end = HEADER.size + length
            if len(self._buffer) < end:
                break
            body = bytes(self._buffer[HEADER.size : end])
            del self._buffer[:end]
            try:
                frames.append((kind & ~MARSHALLED, parse_payload(kind, body)))
            except FrameError as exc:
                errors.append(str(exc))
        return frames, errors

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame still waiting for the rest (a truncated frame at EOF)."""
        return len(self._buffer)


# -- the spool: frames that could not go over the socket -------------------------------------
#
# A writer appends whole frames to its own file, under an exclusive flock. The extension claims
# a file by renaming it, then takes the lock, reads the file whole and removes it before letting
# go. So a file the writer has locked and that still has a name has not been read yet: at the
# path or claimed, it is read whole after the writer lets go. Only a file already read (no
# name left) sends the writer to a fresh one. Nothing is read twice, nothing in between is lost.

SPOOL_SUFFIX = ".frames"
_CLAIMED_SUFFIX = ".claimed"
_SPOOL_ATTEMPTS = 20
"""Files a writer finds claimed and read under it before it gives up. The extension claims at
each drain, so even one during a write is rare; a claimer in a tight loop makes a few."""


def append_to_spool(path: str, frame: bytes) -> None:
    """Append ``frame`` to the spool file at ``path`` (OSError if the file system refuses)."""
    import fcntl

    os.makedirs(os.path.dirname(path), exist_ok=True)
    for _ in range(_SPOOL_ATTEMPTS):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_nlink == 0:
                continue  # claimed and read between open and lock: write to a fresh file
            os.write(fd, frame)
            return
        finally:
            os.close(fd)
    raise OSError(f"spool file {path} kept being claimed while writing")


def claim_spool(directory: str) -> list[bytes]:
    """The content of every spool file in ``directory``, each claimed, read whole and removed."""
    import fcntl

    contents: list[bytes] = []
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return contents
    for name in names:
        if not name.endswith((SPOOL_SUFFIX, _CLAIMED_SUFFIX)):
            continue
        path = os.path.join(directory, name)
        claimed = path if name.endswith(_CLAIMED_SUFFIX) else path[: -len(SPOOL_SUFFIX)] + _CLAIMED_SUFFIX
        try:
            if claimed != path:
                os.rename(path, claimed)
            fd = os.open(claimed, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # a writer that opened it before the rename finishes first
            chunks = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
            contents.append(b"".join(chunks))
            os.unlink(claimed)
        except OSError:
            continue
        finally:
            os.close(fd)
    return contents
