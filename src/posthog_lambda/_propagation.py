"""Carrying a trace from one function to the next: W3C Trace Context, PostHog's ids in W3C Baggage.

A carrier is a mapping of names to strings: HTTP headers, SQS or SNS message attributes, the
``_posthog`` field of a Step Functions input or an EventBridge detail, a Lambda client context's
``w3c`` or ``custom``. ``inject`` writes two entries into it:

- ``traceparent``: ``00-<trace>-<span>-01``, the current trace and span as W3C Trace Context
  says: 32 and 16 lowercase hex digits (a UUID's digits; the first 16 of a span's). What an
  OpenTelemetry or X-Ray (W3C mode) service between two functions reads and continues.
- ``baggage``: W3C Baggage members ``posthog.trace_id`` and ``posthog.span_id`` (the ids exactly
  as PostHog holds them: a 16-digit traceparent cannot carry a UUID), ``posthog.distinct_id`` for
  a known user and ``posthog.session_id``, percent-encoded. Members the carrier already had under
  other names are kept: OpenTelemetry propagates them.

Reading (``read``) yields a ``Parent``:

- PostHog's members (``posthog.trace_id`` and ``posthog.span_id``): the trace is PostHog's, and
  the new invocation's root is a span under that span, the last one a PostHog-traced sender had
  current. They win over the traceparent: a hop in between (an OpenTelemetry service, or
  OpenTelemetry's botocore instrumentation writing its own traceparent over ours) names spans
  PostHog never sees, and the tree skips the hop instead of hiding behind it.
- a traceparent alone (an OpenTelemetry service, a browser): the trace is its 32 digits, as the
  OpenTelemetry path names traces, and the root is a top-level span of it (its parent span is
  not in PostHog: pointing at it would hide the root).
- ``x-posthog-distinct-id`` and ``x-posthog-session-id`` (what posthog-js adds to requests to the
  app's own backend) give the user and session, with or without a trace.
- anything malformed or oversized, in any entry: no parent at all, counted and logged under
  ``trace_context_invalid``; the invocation starts a trace of its own.

The trace flags are written as sampled and not read: PostHog keeps every trace it is sent.
"""

from __future__ import annotations

from ._context import current
from ._drops import record_drop

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, MutableMapping
    from typing import Any

TRACEPARENT = "traceparent"
BAGGAGE = "baggage"
USER_HEADER = "x-posthog-distinct-id"
SESSION_HEADER = "x-posthog-session-id"
KEYS = (TRACEPARENT, BAGGAGE, USER_HEADER, SESSION_HEADER)
"""Every carrier entry read, lowercase (HTTP headers are matched without regard to case)."""

MEMBER_TRACE_ID = "posthog.trace_id"
MEMBER_SPAN_ID = "posthog.span_id"
MEMBER_DISTINCT_ID = "posthog.distinct_id"
MEMBER_SESSION_ID = "posthog.session_id"
_OURS = (MEMBER_TRACE_ID, MEMBER_SPAN_ID, MEMBER_DISTINCT_ID, MEMBER_SESSION_ID)

MAX_BAGGAGE = 8192
"""W3C Baggage's limit for the whole entry, in bytes."""
MAX_MEMBERS = 180
"""W3C Baggage's limit on members."""
MAX_ID = 512
"""The longest trace id, span id, distinct id or session id taken from a carrier."""
INVALID = "trace_context_invalid"
"""The drop reason counted for a carrier that cannot be read."""
NOT_SENT = "trace_context_not_sent"
"""The drop reason counted for what could not go into a carrier (and, in ``aws``, a request)."""

_HEX = frozenset("0123456789abcdef")
# Characters a baggage value may hold unencoded: printable ASCII but for these (and "%" itself).
_UNSAFE = frozenset(' ",;\\%')


class Parent:
    """What an invocation continues: a trace (``trace_id``; None for a carrier that only names
    the user), the span its root nests under (``span_id``; None: a top-level span of the trace),
    and who the user is."""

    __slots__ = ("distinct_id", "session_id", "span_id", "trace_id")

    def __init__(
        self,
        trace_id: str | None,
        span_id: str | None = None,
        distinct_id: str | None = None,
        session_id: str | None = None,
    ) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.distinct_id = distinct_id
        self.session_id = session_id

    def __repr__(self) -> str:
        return f"Parent(trace_id={self.trace_id!r}, span_id={self.span_id!r})"


class InvalidCarrier(ValueError):
    """A carrier entry that cannot be read; its message says which and why."""


def hex_digits(value: str, digits: int) -> str:
    """``value`` (a UUID, or already hex) as ``digits`` lowercase hex digits, never all zeros:
    its own first digits when it has them, else a digest of it (an id of another shape)."""
    text = value.replace("-", "").lower()
    head = text[:digits]
    if len(head) == digits and _HEX.issuperset(head) and head.strip("0"):
        return head
    from hashlib import blake2b  # only for ids not made here

    return blake2b(value.encode(), digest_size=digits // 2).hexdigest()


def inject(carrier: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
    """Write the current trace and span into ``carrier`` (a new dict when None) and return it:
    ``traceparent`` and ``baggage`` (see the module's docstring), for another function to continue
    the trace. Outside a trace it writes nothing. Never raises."""
    target: MutableMapping[str, str] = {} if carrier is None else carrier
    try:
        span = current.get()
        if span is None or span._start is None:
            return target
        trace = span._trace
        span_id = span._id or span.span_id
        ours = {MEMBER_TRACE_ID: trace.trace_id, MEMBER_SPAN_ID: span_id}
        if not trace.anonymous:
            ours[MEMBER_DISTINCT_ID] = trace.distinct_id
        if trace.session_id:
            ours[MEMBER_SESSION_ID] = trace.session_id
        members = []
        for key, value in ours.items():
            if len(value) > MAX_ID:
                # What the receiver would refuse is left out, so that the rest still counts.
                record_drop(NOT_SENT, 1, f"{key} is over {MAX_ID} characters: the carrier goes without it")
                continue
            members.append(f"{key}={_quote(value)}")
        if len(members) < 2:
            return target  # the trace's own ids do not fit: nothing a receiver could continue
        members.extend(_foreign_members(target.get(BAGGAGE), members))
        target[TRACEPARENT] = f"00-{hex_digits(trace.trace_id, 32)}-{hex_digits(span_id, 16)}-01"
        target[BAGGAGE] = ",".join(members)
    except Exception:
        from ._log import logger

        logger.exception("writing the trace into a carrier failed; the message goes without it")
    return target


def _foreign_members(baggage: object, ours: list[str]) -> list[str]:
    """The members of a carrier's baggage under other names than ours, as many as fit beside
    ``ours`` within W3C's limits (those left out are counted)."""
    if not isinstance(baggage, str) or not baggage.strip():
        return []
    size = sum(len(m.encode()) + 1 for m in ours)
    kept: list[str] = []
    left_out = 0
    for member in baggage.split(","):
        member = member.strip()
        if not member or member.split("=", 1)[0].strip() in _OURS:
            continue
        cost = len(member.encode("utf-8", "replace")) + 1
        if len(ours) + len(kept) >= MAX_MEMBERS or size + cost > MAX_BAGGAGE + 1:
            left_out += 1
            continue
        kept.append(member)
        size += cost
    if left_out:
        record_drop(NOT_SENT, left_out, f"baggage members beyond W3C's {MAX_MEMBERS} or {MAX_BAGGAGE} bytes")
    return kept


def read(carrier: Mapping[str, Any]) -> Parent | None:
    """The parent a carrier names; None when it names none. Raises InvalidCarrier for one that
    cannot be read (``parent_of`` counts it)."""
    entries = _entries(carrier)
    ours = _baggage(entries[BAGGAGE]) if BAGGAGE in entries else {}
    trace_hex = _traceparent(entries[TRACEPARENT]) if TRACEPARENT in entries else None
    distinct_id = ours.get(MEMBER_DISTINCT_ID) or _id(entries, USER_HEADER)
    session_id = ours.get(MEMBER_SESSION_ID) or _id(entries, SESSION_HEADER)
    if MEMBER_TRACE_ID in ours or MEMBER_SPAN_ID in ours:
        if MEMBER_TRACE_ID not in ours or MEMBER_SPAN_ID not in ours:
            raise InvalidCarrier(f"baggage has only one of {MEMBER_TRACE_ID} and {MEMBER_SPAN_ID}")
        return Parent(ours[MEMBER_TRACE_ID], ours[MEMBER_SPAN_ID], distinct_id, session_id)
    if trace_hex is not None:
        return Parent(trace_hex, None, distinct_id, session_id)
    if distinct_id is None and session_id is None:
        return None
    return Parent(None, None, distinct_id, session_id)


def _entries(carrier: Mapping[str, Any]) -> dict[str, str]:
    found: dict[str, str] = {}
    for key, value in carrier.items():
        if not isinstance(key, str):
            continue
        name = key.lower()
        if name not in KEYS:
            continue
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            # Repeated headers: baggage's combine, as W3C says; the others' first counts.
            value = ",".join(value) if name == BAGGAGE else (value[0] if value else None)
        if not isinstance(value, str):
            raise InvalidCarrier(f"{name} is a {type(value).__name__}, not a string")
        if len(value) > MAX_BAGGAGE:
            raise InvalidCarrier(f"{name} is {len(value)} characters long")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate, as JSON can carry: no event could hold it
            raise InvalidCarrier(f"{name} is not valid Unicode") from exc
        found[name] = value
    return found


def _id(entries: Mapping[str, str], name: str) -> str | None:
    value = entries.get(name)
    if value is None or not value.strip():
        return None
    if len(value) > MAX_ID:
        raise InvalidCarrier(f"{name} is {len(value)} characters long")
    return value.strip()


def _traceparent(value: str) -> str:
    """The trace id of a valid traceparent."""
    text = value.strip()
    version = text[:2]
    if len(version) != 2 or not _HEX.issuperset(version) or version == "ff":
        raise InvalidCarrier(f"traceparent has no valid version: {text[:60]!r}")
    # A later version may append fields after a dash; version 00 has exactly four.
    if len(text) < 55 or (version == "00" and len(text) != 55) or (len(text) > 55 and text[55] != "-"):
        raise InvalidCarrier(f"traceparent is not 00-<32 hex>-<16 hex>-<2 hex>: {text[:60]!r}")
    trace, span, flags = text[3:35], text[36:52], text[53:55]
    if text[2] != "-" or text[35] != "-" or text[52] != "-" or not _HEX.issuperset(trace + span + flags):
        raise InvalidCarrier(f"traceparent is not 00-<32 hex>-<16 hex>-<2 hex>: {text[:60]!r}")
    if not trace.strip("0") or not span.strip("0"):
        raise InvalidCarrier("traceparent's trace or span id is all zeros")
    return trace


def _baggage(value: str) -> dict[str, str]:
    if len(value.encode()) > MAX_BAGGAGE:
        raise InvalidCarrier(f"baggage is over {MAX_BAGGAGE} bytes")
    members = value.split(",")
    if len(members) > MAX_MEMBERS:
        raise InvalidCarrier(f"baggage has {len(members)} members, over {MAX_MEMBERS}")
    ours: dict[str, str] = {}
    for member in members:
        key, sep, rest = member.partition("=")
        key = key.strip()
        if key not in _OURS:
            continue
        if not sep:
            raise InvalidCarrier(f"baggage member {key} has no value")
        decoded = _unquote(rest.split(";", 1)[0].strip())
        if not decoded or len(decoded) > MAX_ID:
            raise InvalidCarrier(f"baggage member {key} is empty or over {MAX_ID} characters")
        ours[key] = decoded
    return ours


def _quote(value: str) -> str:
    if all(" " < c <= "~" and c not in _UNSAFE for c in value):
        return value
    out = []
    for c in value:
        if " " < c <= "~" and c not in _UNSAFE:
            out.append(c)
        else:
            out.extend(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass"))
    return "".join(out)


def _unquote(value: str) -> str:
    if "%" not in value:
        return value
    data = bytearray()
    parts = value.split("%")
    data += parts[0].encode()
    for part in parts[1:]:
        digits = part[:2]
        if len(digits) != 2 or not _HEX.issuperset(digits.lower()):
            raise InvalidCarrier(f"baggage value has a bad percent escape: {value[:60]!r}")
        data.append(int(digits, 16))
        data += part[2:].encode()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidCarrier("baggage value is not UTF-8 once decoded") from exc


def parent_of(carriers: list[Mapping[str, Any]]) -> tuple[Parent | None, list[str]]:
    """The parent of an invocation whose event brought ``carriers`` (one per message of a batch),
    and the trace ids of the others when they name more than one trace: then none is the
    parent (a batch of messages from several traces is a trace of its own, never one of theirs).
    Carriers that cannot be read count as ``trace_context_invalid``; the rest still count."""
    parents: list[Parent] = []
    # The messages of a batch sent from one span carry the same entries: each is read once.
    seen: dict[tuple[Any, ...], Parent | InvalidCarrier | None] = {}
    for carrier in carriers:
        key = _key(carrier) if len(carriers) > 1 else None
        if key is not None and key in seen:
            found = seen[key]
        else:
            found = _read_or_why(carrier)
            if key is not None:
                seen[key] = found
        if isinstance(found, InvalidCarrier):
            record_drop(INVALID, 1, f"{found}; the invocation is not joined to that trace")
        elif found is not None:
            parents.append(found)
    if not parents:
        return None, []
    traces = list(dict.fromkeys(p.trace_id for p in parents if p.trace_id is not None))
    if len(traces) > 1:
        return None, traces
    # The first that names a trace: a message naming only the user must not hide the trace.
    return next((p for p in parents if p.trace_id is not None), parents[0]), []


def _read_or_why(carrier: Mapping[str, Any]) -> Parent | InvalidCarrier | None:
    try:
        return read(carrier)
    except InvalidCarrier as exc:
        return exc


def _key(carrier: Mapping[str, Any]) -> tuple[Any, ...] | None:
    key = tuple(carrier.items())
    try:
        hash(key)
    except TypeError:  # a value that cannot be hashed: read each time
        return None
    return key
