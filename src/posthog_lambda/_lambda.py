"""What the library reads from Lambda: the context object, the environment, cold starts, restores."""

from __future__ import annotations

import os
import time

from posthog_lambda_contract import environment
from posthog_lambda_contract.schema import LAMBDA_RESTORED

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_fresh = True
"""This process has not begun a traced invocation yet."""
_managed = environment.on_managed_instances(os.environ)
"""Read once: Lambda sets it before the runtime starts."""
ALREADY_INITIALIZED = ("provisioned-concurrency", environment.MANAGED_INSTANCES)
"""Where no invocation ever waits for an Init: it happens before any request is routed."""


_restored = False
"""This process was restored from a SnapStart snapshot (``_restore``)."""


def mark_restored() -> None:
    """This process was just restored from a SnapStart snapshot: each of its traces says so, and
    its next traced invocation is its first in this environment, whatever Init did (a warm-up
    call there happened once, for every environment restored from the snapshot)."""
    global _fresh, _restored
    _restored = True
    _fresh = True


def on_managed_instances() -> bool:
    """Whether this process is a runtime worker on Lambda Managed Instances."""
    return _managed


def take_first_invocation() -> bool:
    """True for this process's first traced invocation only."""
    global _fresh
    first, _fresh = _fresh, False
    return first


def set_cold_start(cold: bool) -> None:
    """Whether the next traced invocation counts as this process's first, its cold start
    (``testing.reset()``)."""
    global _fresh
    _fresh = cold


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


def lambda_properties(context: Any, first: bool) -> dict[str, Any]:
    """Properties of the ``$ai_trace`` that describe the invocation; none carries a ``$``.
    ``first``: the process's first invocation (``take_first_invocation``).

    ``lambda_cold_start`` is true when the invocation waited for its process's Init: the first
    one, except where Init happens before any request is routed (provisioned concurrency, and
    Lambda Managed Instances, where each worker process has its own Init but none delays an
    invocation); there ``lambda_first_invocation_in_process`` says which invocation a process
    served first (its module-level caches were empty). With SnapStart, the first invocation
    after a restore is the cold start (it waited for the restore), and ``lambda_restored`` is
    true on every invocation of a restored process (``schema.LAMBDA_RESTORED``)."""
    cold_start = first and os.environ.get(environment.INITIALIZATION_TYPE) not in ALREADY_INITIALIZED
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
    if _managed:
        # Many runtime processes, one environment: which lifecycle, and whether this process was
        # fresh (its module-level caches empty), say what lambda_cold_start cannot there.
        props["lambda_initialization_type"] = environment.MANAGED_INSTANCES
        props["lambda_first_invocation_in_process"] = first
        concurrency = environment.parse_int(os.environ.get(environment.MAX_CONCURRENCY, ""))
        if concurrency is not None:
            props["lambda_max_concurrency"] = concurrency
    if _restored:
        props[LAMBDA_RESTORED] = True
    return {k: v for k, v in props.items() if v is not None}
