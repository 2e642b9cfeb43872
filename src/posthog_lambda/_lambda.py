"""What the library reads from Lambda: the context object, the environment, cold starts."""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_cold = True


def take_cold_start() -> bool:
    """True for the first invocation of this process only (never for provisioned concurrency,
    whose initialization happened long before the first request)."""
    global _cold
    cold, _cold = _cold, False
    return cold and os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE") != "provisioned-concurrency"


def set_cold_start(cold: bool) -> None:
    """Whether the next traced invocation counts as this process's cold start (``testing.reset()``)."""
    global _cold
    _cold = cold


def _xray_root(header: str | None) -> str | None:
    if not header:
        return None
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == "Root" and value:
            return value
    return None


def _text(context: Any, attribute: str, env_name: str | None = None) -> str | None:
    # Test doubles (MagicMock) answer every attribute: keep only real strings.
    value = getattr(context, attribute, None)
    if isinstance(value, str) and value:
        return value
    return os.environ.get(env_name) if env_name else None


def request_id(context: Any) -> str | None:
    return _text(context, "aws_request_id")


def deadline_ms(context: Any) -> int:
    """When the invocation times out, in Unix ms (a minute from now if the context cannot say)."""
    now = int(time.time() * 1000)
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    try:
        left = remaining() if callable(remaining) else None
    except Exception:
        left = None
    return now + (left if isinstance(left, int) and not isinstance(left, bool) and left >= 0 else 60_000)


def lambda_properties(context: Any, cold_start: bool) -> dict[str, Any]:
    """Properties of the ``$ai_trace`` that describe the invocation; none carries a ``$``."""
    memory: int | None
    try:
        memory = int(_text(context, "memory_limit_in_mb", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE") or "")
    except ValueError:
        raw = getattr(context, "memory_limit_in_mb", None)
        memory = raw if isinstance(raw, int) and not isinstance(raw, bool) else None
    props: dict[str, Any] = {
        "lambda_request_id": request_id(context),
        "lambda_function_name": _text(context, "function_name", "AWS_LAMBDA_FUNCTION_NAME"),
        "lambda_function_version": _text(context, "function_version", "AWS_LAMBDA_FUNCTION_VERSION"),
        "lambda_function_arn": _text(context, "invoked_function_arn"),
        "lambda_memory_mb": memory,
        "lambda_region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
        "lambda_log_group": _text(context, "log_group_name"),
        "lambda_log_stream": _text(context, "log_stream_name"),
        "lambda_cold_start": cold_start,
        "lambda_xray_trace_id": _xray_root(os.environ.get("_X_AMZN_TRACE_ID")),
    }
    return {k: v for k, v in props.items() if v is not None}
