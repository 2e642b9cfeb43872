"""PostHog's size limits, and keeping every event within them by truncating values, never by
dropping: the one place either side decides how large an event may be.

An event's limit is its endpoint's (``/i/v0/ai/batch/`` for ``$ai_*`` events, ``/batch/`` for
the rest) lowered to the user's ``max_event_bytes``. Serializing is where an event's size
becomes known, so ``encode`` is also where an oversized event is cut down: once, on the way
out. The common case (a small event) costs one ``json.dumps``. Only oversized events pay for
truncation, which cuts the largest values first, shortening long strings inside structures so
that messages keep their shape, and marks every cut visibly.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .schema import Event

BATCH_EVENT_LIMIT = 900 * 1024
"""/batch/ rejects events above ~1 MB; posthog-python caps them at 900 KiB. Also the default
``max_event_bytes``."""
AI_EVENT_LIMIT = 8 * 1024 * 1024 - 64 * 1024
"""/i/v0/ai/batch/ takes 8 MiB per event; keep room for the envelope."""
MIN_EVENT_LIMIT = 16 * 1024
"""The smallest ``max_event_bytes`` accepted, and what a 413 makes an event fit before the last try."""


def clamp(max_event_bytes: int) -> int:
    """``max_event_bytes`` within what PostHog and this module can honour."""
    return max(MIN_EVENT_LIMIT, min(max_event_bytes, AI_EVENT_LIMIT))


def limit_for(kind: str, max_event_bytes: int = BATCH_EVENT_LIMIT) -> int:
    """The most bytes an event named ``kind`` may take, given the user's ``max_event_bytes``."""
    if kind.startswith("$ai_"):
        return max_event_bytes
    return min(max_event_bytes, BATCH_EVENT_LIMIT)


def limit_after_413(size: int) -> int:
    """What an event of ``size`` bytes that PostHog refused as too large (413) is cut to for its
    last try: ``/batch/``'s limit, or half its size if it was within that already (never below
    ``MIN_EVENT_LIMIT``)."""
    return BATCH_EVENT_LIMIT if size > BATCH_EVENT_LIMIT else max(MIN_EVENT_LIMIT, size // 2)


def dumps(value: object) -> bytes:
    """Compact, strict UTF-8 JSON: what goes on the wire. A lone surrogate (which ``json.loads``
    of ``"\\ud800"`` and ``surrogateescape`` decoding both make) is written as U+FFFD."""
    import json  # on first use: the library imports this module on every cold start

    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # Surrogates only occur inside JSON strings, so the replacement cannot break the document.
        return _replaced(text).encode("utf-8")


def well_formed(value: Any) -> Any:
    """``value`` itself if every string in it (keys too) is one UTF-8 can hold, else a copy with
    each lone surrogate written as U+FFFD: what ``dumps`` writes, and what PostHog's capture
    stores of an escaped one."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return _replaced(value)
        return value
    if isinstance(value, dict):
        mended = {well_formed(k): well_formed(v) for k, v in value.items()}
        same = all(k in value and value[k] is v for k, v in mended.items()) and len(mended) == len(value)
        return value if same else mended
    if isinstance(value, list | tuple):
        items = [well_formed(v) for v in value]
        return value if all(a is b for a, b in zip(value, items, strict=True)) else items
    return value


def _replaced(text: str) -> str:
    # No UTF-8 holds a lone surrogate, and one bad character must not lose the event; a pair
    # written in two halves is joined again.
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def encode(event: Event, limit: int) -> bytes:
    """The event as ``dumps`` writes it, its largest values cut if it exceeds ``limit`` bytes."""
    data = dumps(event)
    if len(data) <= limit:
        return data
    return dumps(cut(event, limit))


def fitted(event: Event, limit: int) -> Event:
    """The event itself if it is ``well_formed`` and within ``limit`` bytes, else a copy: each
    lone surrogate written as U+FFFD, and its largest values cut if it exceeds ``limit``."""
    import json

    # ASCII-escaped JSON is never shorter than the UTF-8 bytes: a cheap upper bound. A surrogate
    # shows in it as "\\ud...", and only then is the exact check worth its second dumps.
    text = json.dumps(event, separators=(",", ":"))
    if "\\ud" in text:
        try:
            json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            event = well_formed(event)
            text = json.dumps(event, separators=(",", ":"))
    return event if len(text) <= limit else cut(event, limit)


def cut(event: Event, limit: int) -> Event:
    """A copy of the event whose properties are fitted to ``limit`` with room for the envelope,
    whether or not the event already fits: for an event PostHog refused as too large."""
    properties = event.get("properties")
    cut: Event = {**event, "properties": fit(properties if isinstance(properties, dict) else {}, limit)}
    return cut


MARK = "…[truncated by posthog-lambda: {} of {} chars kept]"
TRUNCATED_PROPERTY = "posthog_lambda_truncated"
_ENVELOPE = 1024
"""Room for event name, distinct_id, uuid and timestamp around the properties."""
_MIN_KEEP = 256
_PROTECTED = frozenset({"$ai_trace_id", "$ai_span_id", "$ai_parent_id", "$ai_generation_id"})


def json_size(value: Any) -> int:
    """UTF-8 bytes of ``value`` as compact JSON."""
    import json

    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def fit(props: dict[str, Any], limit: int) -> dict[str, Any]:
    """``props`` if it fits in ``limit`` bytes, else a copy whose largest values are cut down
    to a common size, so that no single value is emptied to make room for another."""
    import json

    budget = limit - _ENVELOPE
    # ASCII-escaped JSON is never shorter than its UTF-8 bytes: a cheap upper bound first.
    if len(json.dumps(props, separators=(",", ":"))) <= budget:
        return props
    sizes = {key: json_size(value) for key, value in props.items()}
    total = sum(sizes.values()) + sum(len(k) + 4 for k in props)
    if total <= budget:
        return props
    out = dict(props)
    candidates = [k for k in props if k not in _PROTECTED]
    cut: list[str] = []
    excess = total - budget
    for _ in range(4):
        cap = _level(sorted(sizes[k] for k in candidates), excess, 64)
        if cap is None:
            cap = _MIN_KEEP
        for key in candidates:
            if sizes[key] > cap:
                out[key] = truncate(out[key], max(cap, _MIN_KEEP))
                sizes[key] = json_size(out[key])
                if key not in cut:
                    cut.append(key)
        excess = sum(sizes.values()) + sum(len(k) + 4 for k in props) + 64 - budget
        if excess <= 0 or cap <= _MIN_KEEP:
            break
    out[TRUNCATED_PROPERTY] = cut
    return out


def truncate(value: Any, budget: int) -> Any:
    """A version of ``value`` whose JSON fits in about ``budget`` bytes, cuts marked."""
    import json

    if isinstance(value, str):
        return _cut_string(value, budget)
    if isinstance(value, (dict, list)):
        lengths = sorted(len(s) for s in _strings(value))
        excess = json_size(value) - budget
        cap = _cap_for(lengths, excess)
        for _ in range(6):
            if cap is None:
                break
            shortened = _cap_strings(value, cap)
            if json_size(shortened) <= budget:
                return shortened
            cap = cap // 2 if cap > 64 else None
    # Many small values, or a scalar: keep the beginning of its JSON text.
    return _cut_string(json.dumps(value, ensure_ascii=False), budget)


def _cut_string(text: str, budget: int) -> str:
    keep = max(0, budget - len(MARK) - 24)
    # Non-ASCII and escaped characters take more than one byte each: shrink until it fits.
    while True:
        candidate = text[:keep] + MARK.format(keep, len(text))
        if keep == 0 or json_size(candidate) <= budget:
            return candidate
        keep = keep * 3 // 4


def _strings(value: Any) -> list[str]:
    found: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def _cap_for(lengths: list[int], excess: int) -> int | None:
    """The longest string length L such that capping every string at L saves ``excess``."""
    cap = _level(lengths, excess, len(MARK) + 16)
    return cap if cap is not None and cap > 64 else None


def _level(sizes: list[int], excess: int, overhead: int) -> int | None:
    """Water-filling over ascending ``sizes``: the highest cap C such that cutting everything
    above C down to C (each cut costing ``overhead``) saves at least ``excess``."""
    total = 0
    for count, i in enumerate(range(len(sizes) - 1, -1, -1), start=1):
        total += sizes[i]
        cap = (total - overhead * count - excess) // count
        if cap >= (sizes[i - 1] if i > 0 else 0):
            return cap if cap > 0 else None
    return None


def _cap_strings(value: Any, cap: int) -> Any:
    if isinstance(value, str):
        return value if len(value) <= cap else value[:cap] + MARK.format(cap, len(value))
    if isinstance(value, dict):
        return {k: _cap_strings(v, cap) for k, v in value.items()}
    if isinstance(value, list):
        return [_cap_strings(v, cap) for v in value]
    return value
