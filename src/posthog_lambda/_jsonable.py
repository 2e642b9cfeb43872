"""Turn anything a handler passes us into JSON-safe data, redacting sensitive keys on the way.

It runs when a value is captured (not when the event is sent) so that later mutation of the
user's objects (an agent appending to its message list) cannot rewrite what was recorded, and
so that secrets are gone before anything leaves the handler's process. It never raises: what
cannot be represented becomes a descriptive string.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import enum
import math
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from decimal import Decimal
from pathlib import PurePath
from typing import Any

REDACTED = "[REDACTED]"
MAX_DEPTH = 48
_REPR_LIMIT = 2_000

DEFAULT_REDACT_KEYS = (
    "authorization",
    "proxy-authorization",
    "cookie",
    "cookies",
    "set-cookie",
    "x-api-key",
    "api-key",
    "apikey",
    "x-auth-token",
    "password",
    "passwd",
    "secret",
    "client-secret",
    "token",
    "access-token",
    "refresh-token",
    "id-token",
    "session-token",
    "x-amz-security-token",
    "private-key",
)


def normalize_key(key: str) -> str:
    """``X-Api-Key``, ``x_api_key`` and ``xApiKey`` are the same key for redaction."""
    return key.lower().replace("-", "").replace("_", "")


def redact_key_set(keys: Iterable[str]) -> frozenset[str]:
    return frozenset(normalize_key(str(k)) for k in keys)


_SCALARS = (str, int, bool, type(None))


def to_jsonable(value: Any, redact: frozenset[str] = frozenset()) -> Any:
    """A JSON-safe copy of ``value`` with values under keys in ``redact`` replaced."""
    if type(value) in _SCALARS:
        return value
    return _convert(value, redact, 0, set())


def _float(value: float) -> float | str:
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _convert(value: Any, redact: frozenset[str], depth: int, active: set[int]) -> Any:
    try:
        return _convert_unsafe(value, redact, depth, active)
    except Exception as exc:  # a user's __repr__ or model_dump can raise anything
        return f"<unserializable {type(value).__name__}: {type(exc).__name__}>"


def _convert_unsafe(value: Any, redact: frozenset[str], depth: int, active: set[int]) -> Any:
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is float:
        return _float(value)
    if isinstance(value, enum.Enum):
        return _convert(value.value, redact, depth, active)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return _float(float(value))
    if depth >= MAX_DEPTH:
        return "<max depth reached>"
    marker = id(value)
    if marker in active:
        return "<circular reference>"
    if isinstance(value, Mapping):
        active.add(marker)
        try:
            out: dict[str, Any] = {}
            for key, item in value.items():
                name = key if type(key) is str else _key(key)
                if redact and normalize_key(name) in redact:
                    out[name] = REDACTED
                else:
                    out[name] = _convert(item, redact, depth + 1, active)
            return out
        finally:
            active.discard(marker)
    if isinstance(value, (list, tuple, deque)):
        active.add(marker)
        try:
            return [_convert(item, redact, depth + 1, active) for item in value]
        finally:
            active.discard(marker)
    if isinstance(value, (set, frozenset)):
        items = [_convert(item, redact, depth + 1, active) for item in value]
        try:
            return sorted(items)
        except TypeError:
            return items
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return "base64:" + base64.b64encode(raw).decode("ascii")
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        if not value.is_finite():
            return "NaN" if value.is_nan() else ("Infinity" if value > 0 else "-Infinity")
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (uuid.UUID, PurePath)):
        return str(value)
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        active.add(marker)
        try:
            return {
                f.name: _convert(getattr(value, f.name, None), redact, depth + 1, active)
                for f in dataclasses.fields(value)
            }
        finally:
            active.discard(marker)
    dumped = _model_dump(value)
    if dumped is not None:
        return _convert(dumped, redact, depth + 1, active)
    text = repr(value)
    return text if len(text) <= _REPR_LIMIT else text[:_REPR_LIMIT] + "...<repr truncated>"


def _key(key: Any) -> str:
    converted = to_jsonable(key)
    return converted if isinstance(converted, str) else str(converted)


def _model_dump(value: Any) -> Any:
    """pydantic v2 (``model_dump``), v1 (``dict``); None when the object is neither."""
    dump = getattr(value, "model_dump", None)
    if callable(dump) and not isinstance(value, type):
        try:
            return dump(mode="json")
        except TypeError:
            return dump()
    if hasattr(value, "__fields__") and callable(getattr(value, "dict", None)):
        return value.dict()
    return None
