"""Events as they leave: JSON, each one within its endpoint's size limit.

Serializing is where an event's size becomes known, so it is also where an oversized event is
cut down (``_size.fit``): once, on the way out, instead of a second serialization per event
when it is built.
"""

from __future__ import annotations

import json

from posthog_lambda_contract.limits import fit

from . import _config

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._types import Event


def _limit(event: Event) -> int:
    return (_config.current or _config.get_config()).limit_for(event["event"])


def _dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def encode(event: Event) -> bytes:
    """The event as compact UTF-8 JSON, its largest values cut if it exceeds its limit."""
    data = _dumps(event)
    limit = _limit(event)
    if len(data) <= limit:
        return data
    return _dumps(_cut(event, limit))


def fitted(event: Event) -> Event:
    """The event itself if it is within its limit, else a copy with its largest values cut."""
    limit = _limit(event)
    # ASCII-escaped JSON is never shorter than the UTF-8 bytes: a cheap upper bound first.
    if len(json.dumps(event, separators=(",", ":"))) <= limit:
        return event
    return _cut(event, limit)


def _cut(event: Event, limit: int) -> Event:
    cut: Event = {**event, "properties": fit(event["properties"], limit)}
    return cut
