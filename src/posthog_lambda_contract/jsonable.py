"""Turn anything a handler passes us into JSON-safe data, redacting sensitive keys on the way.

A captured value is copied when it is captured (not when the event is sent) so that later
mutation of the user's objects (an agent appending to its message list) cannot rewrite what was
recorded. A span's input and output are copied by ``captured``: ``marshal`` writes plain data
(dicts, lists, strings, numbers) to bytes in C, several times faster than any Python-level copy,
and those bytes are both the immutable copy and what travels to the extension; ``to_jsonable``
turns them into JSON-safe data, redacted, where the event is made (``records.expand``: in the
extension, or in-process for the other exporters). Anything ``marshal`` cannot write (a
datetime, a model, a subclass of a built-in) is copied by ``to_jsonable`` at once, redacted. Either
way secrets never reach an event. Nothing here raises: what cannot be represented becomes a
descriptive string.

It imports no module for the types it recognises: a value of type ``decimal.Decimal`` can
only exist if ``decimal`` is already in ``sys.modules``, so that is where it looks. Both sides
import it (the contract): standard library only.
"""

from __future__ import annotations

import math
import sys
from _collections_abc import Mapping  # what collections.abc re-exports, without its import cost
from marshal import dumps as _dumps
from marshal import loads as _loads

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
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


_normalized: dict[str, str] = {}
"""The same few keys (role, content, headers...) come back all the time: remember them."""


def _normalize(key: str) -> str:
    normal = normalize_key(key)
    if len(_normalized) < 4096:
        _normalized[key] = normal
    return normal


SCALARS = frozenset({str, int, bool, type(None)})
MARSHAL_VERSION = 4
"""What every Python the layer supports (3.11 to 3.14) reads and writes alike for plain data."""


def captured(value: Any, redact: frozenset[str] = frozenset()) -> tuple[Any, bool]:
    """What a span keeps of a captured value, and whether it is marshal's bytes: a plain scalar
    as it is; plain data as marshal wrote it, redacted only when expanded (``unmarshalled``);
    anything else as a JSON-safe copy, redacted now (``to_jsonable``)."""
    if type(value) in SCALARS:
        return value, False
    try:
        return _dumps(value, MARSHAL_VERSION), True
    except (ValueError, TypeError, RecursionError):  # not plain data, or nested too deep for marshal
        return to_jsonable(value, redact), False


def unmarshalled(data: bytes, redact: frozenset[str] = frozenset()) -> Any:
    """The JSON-safe, redacted form of a value ``captured`` marshalled. Raises ValueError (or
    EOFError, TypeError) for bytes it did not write."""
    return to_jsonable(_loads(data), redact)


def to_jsonable(value: Any, redact: frozenset[str] = frozenset()) -> Any:
    """A JSON-safe copy of ``value`` with values under keys in ``redact`` replaced."""
    kind = type(value)
    if kind in SCALARS:
        return value
    if kind is list:
        # The common capture: a short list of plain values.
        for item in value:
            if type(item) not in SCALARS:
                break
        else:
            return value[:]
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


def _loaded(module: str, name: str) -> Any:
    found = sys.modules.get(module)
    return getattr(found, name, None) if found is not None else None


def _convert_unsafe(value: Any, redact: frozenset[str], depth: int, active: set[int]) -> Any:
    kind = type(value)
    if kind in SCALARS:
        return value
    if kind is float:
        return _float(value)
    if depth >= MAX_DEPTH:
        return "<max depth reached>"
    marker = id(value)
    if marker in active:
        return "<circular reference>"
    if kind is list or kind is tuple:
        active.add(marker)
        try:
            return [item if type(item) in SCALARS else _convert(item, redact, depth + 1, active) for item in value]
        finally:
            active.discard(marker)
    if kind is dict or isinstance(value, Mapping):
        active.add(marker)
        try:
            out: dict[str, Any] = {}
            for key, item in value.items():
                name = key if type(key) is str else _key(key)
                if redact and (_normalized.get(name) or _normalize(name)) in redact:
                    out[name] = REDACTED
                elif type(item) in SCALARS:
                    out[name] = item
                else:
                    out[name] = _convert(item, redact, depth + 1, active)
            return out
        finally:
            active.discard(marker)
    return _convert_other(value, redact, depth, active)


def _convert_other(value: Any, redact: frozenset[str], depth: int, active: set[int]) -> Any:
    """Everything that is not a plain scalar, dict, list or tuple."""
    enum_type = _loaded("enum", "Enum")
    if enum_type is not None and isinstance(value, enum_type):
        return _convert(value.value, redact, depth, active)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return _float(float(value))
    marker = id(value)
    if isinstance(value, (list, tuple, set, frozenset)) or _is_instance(value, "collections", "deque"):
        active.add(marker)
        try:
            items = [_convert(item, redact, depth + 1, active) for item in value]
        finally:
            active.discard(marker)
        if isinstance(value, (set, frozenset)):
            try:
                return sorted(items)
            except TypeError:
                return items
        return items
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            import base64

            return "base64:" + base64.b64encode(raw).decode("ascii")
    if _is_instance(value, "datetime", "date") or _is_instance(value, "datetime", "time"):
        return value.isoformat()
    if _is_instance(value, "datetime", "timedelta"):
        return value.total_seconds()
    if _is_instance(value, "decimal", "Decimal"):
        if not value.is_finite():
            return "NaN" if value.is_nan() else ("Infinity" if value > 0 else "-Infinity")
        return int(value) if value == value.to_integral_value() else float(value)
    if _is_instance(value, "uuid", "UUID") or _is_instance(value, "pathlib", "PurePath"):
        return str(value)
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    if hasattr(type(value), "__dataclass_fields__") and not isinstance(value, type):
        # A dataclass instance exists, so ``dataclasses`` is loaded.
        fields = sys.modules["dataclasses"].fields(value)
        active.add(marker)
        try:
            return {f.name: _convert(getattr(value, f.name, None), redact, depth + 1, active) for f in fields}
        finally:
            active.discard(marker)
    dumped = _model_dump(value)
    if dumped is not None:
        return _convert(dumped, redact, depth + 1, active)
    text = repr(value)
    return text if len(text) <= _REPR_LIMIT else text[:_REPR_LIMIT] + "...<repr truncated>"


def _is_instance(value: Any, module: str, name: str) -> bool:
    kind = _loaded(module, name)
    return kind is not None and isinstance(value, kind)


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
