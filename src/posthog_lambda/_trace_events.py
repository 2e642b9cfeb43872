"""``capture_feedback`` and ``capture_metric``: events about a trace, from anywhere."""

from __future__ import annotations

from posthog_lambda_contract.jsonable import to_jsonable

from ._config import get_config
from ._context import current
from ._drops import record_drop
from ._log import logger
from ._processor import export_events
from ._trace import Trace

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any


def _emit(
    kind: str, trace_id: str, library: dict[str, Any], properties: Mapping[str, Any] | None, distinct_id: str | None
) -> None:
    config = get_config()
    if not config.enabled:
        return
    if not isinstance(trace_id, str) or not trace_id:
        record_drop("invalid_trace_id", 1, f"{kind} needs the trace id it is about, got {trace_id!r:.80}")
        return
    running = current.get()
    if running is not None and not running._trace.closed:
        # Inside a traced handler: the event waits with that trace and takes its user.
        host = running._trace
        known = None if host.anonymous else host.distinct_id
        trace = Trace(
            config,
            trace_id=trace_id,
            distinct_id=distinct_id or known,
            privacy_mode=host.privacy_mode,
            groups=host.groups,
            detached=True,
        )
    else:
        trace = host = Trace(config, trace_id=trace_id, distinct_id=distinct_id, detached=True)
    props = trace.snapshot(dict(properties)) if properties else {}
    props.update(library)
    props["$ai_trace_id"] = trace_id
    event = trace.event(kind, props)
    if host is trace:
        export_events([event])
    else:
        host.batch.add(event)


def capture_feedback(
    trace_id: str,
    text: str,
    *,
    properties: Mapping[str, Any] | None = None,
    distinct_id: str | None = None,
) -> None:
    """Send ``$ai_feedback`` about a trace (a user's thumbs-down and comment). Never raises."""
    try:
        _emit("$ai_feedback", trace_id, {"$ai_feedback_text": str(text)}, properties, distinct_id)
    except Exception:
        logger.exception("capture_feedback failed")


def capture_metric(
    trace_id: str,
    name: str,
    value: Any,
    *,
    properties: Mapping[str, Any] | None = None,
    distinct_id: str | None = None,
) -> None:
    """Send ``$ai_metric`` (a score, a label, an evaluation result) about a trace. Never raises."""
    try:
        library = {"$ai_metric_name": str(name), "$ai_metric_value": to_jsonable(value)}
        _emit("$ai_metric", trace_id, library, properties, distinct_id)
    except Exception:
        logger.exception("capture_metric failed")
