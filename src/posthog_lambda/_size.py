"""Keep every event under its endpoint's size limit by truncating values, never by dropping.

The common case (a small event) costs one ``json.dumps``. Only oversized events pay for
truncation, which cuts the largest values first, shortening long strings inside structures so
that messages keep their shape, and marks every cut visibly.
"""

from __future__ import annotations

import json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MARK = "…[truncated by posthog-lambda: {} of {} chars kept]"
TRUNCATED_PROPERTY = "posthog_lambda_truncated"
_ENVELOPE = 1024
"""Room for event name, distinct_id, uuid and timestamp around the properties."""
_MIN_KEEP = 256
_PROTECTED = frozenset({"$ai_trace_id", "$ai_span_id", "$ai_parent_id", "$ai_generation_id"})


def json_size(value: Any) -> int:
    """UTF-8 bytes of ``value`` as compact JSON."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def fit(props: dict[str, Any], limit: int) -> dict[str, Any]:
    """``props`` if it fits in ``limit`` bytes, else a copy whose largest values are cut down
    to a common size, so that no single value is emptied to make room for another."""
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
