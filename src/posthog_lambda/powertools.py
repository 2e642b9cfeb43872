"""Powertools for AWS Lambda with posthog-lambda: log lines that name their trace, ids read
from the event.

    from aws_lambda_powertools import Logger
    from posthog_lambda import posthog_traced
    from posthog_lambda.powertools import correlate_logs, from_event

    logger = Logger()
    correlate_logs(logger)  # every line logged inside a trace gets posthog_trace_id, posthog_span_id

    @logger.inject_lambda_context
    @posthog_traced(distinct_id=from_event("requestContext.authorizer.claims.sub"))
    def handler(event, context): ...

Importing this module loads neither Powertools nor jmespath. ``from_event`` loads jmespath to
check its expression, and Powertools' ``jmespath_utils`` on the first event it reads (or at
once, to check the names of Powertools' functions in the expression). A Powertools Logger has
usually loaded both already.
"""

from __future__ import annotations

import logging
from _collections_abc import Mapping  # collections.abc's, without its import cost

from ._context import current
from ._drops import record_drop
from ._log import logger as _library_logger

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

__all__ = ["SPAN_ID_KEY", "TRACE_ID_KEY", "EventValue", "TraceIdFilter", "correlate_logs", "from_event"]

TRACE_ID_KEY = "posthog_trace_id"
"""The log key ``correlate_logs`` writes the PostHog trace id (``$ai_trace_id``) under."""
SPAN_ID_KEY = "posthog_span_id"
"""The log key for the id of the span running when the line was logged (the trace id at the
handler's top level, as ``$ai_parent_id`` would be)."""

_MISSING_EXTRA = "pip install aws-lambda-powertools"


# -- log correlation -------------------------------------------------------------------------


class TraceIdFilter(logging.Filter):
    """A ``logging.Filter`` that adds the current PostHog trace id and span id to each record.

    Powertools' JSON formatter writes a record's extra attributes as keys of the log line, so
    the ids appear as ``posthog_trace_id`` and ``posthog_span_id`` (or the keys given). A
    record made outside any trace gets neither; an id passed explicitly (``extra=``) is kept.
    It reads the current span when the record is handled, in the thread that logs it, and
    never raises or drops a record.
    """

    def __init__(self, trace_id_key: str = TRACE_ID_KEY, span_id_key: str = SPAN_ID_KEY) -> None:
        super().__init__()
        _check_key("trace_id_key", trace_id_key)
        _check_key("span_id_key", span_id_key)
        if trace_id_key == span_id_key:
            raise ValueError("trace_id_key and span_id_key must differ")
        self.trace_id_key = trace_id_key
        self.span_id_key = span_id_key

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            span = current.get()
            if span is not None and span.is_recording():
                if self.trace_id_key not in record.__dict__:
                    record.__dict__[self.trace_id_key] = span.trace_id
                if self.span_id_key not in record.__dict__:
                    record.__dict__[self.span_id_key] = span.span_id
        except Exception:
            _library_logger.exception("adding the PostHog trace id to a log record failed")
        return True


_reserved: frozenset[str] | None = None


def _check_key(option: str, key: object) -> None:
    global _reserved
    if not isinstance(key, str) or not key:
        raise TypeError(f"{option} must be a non-empty string")
    if _reserved is None:
        # What every LogRecord carries already; "message" and "asctime" are set by formatters.
        _reserved = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
    if key in _reserved:
        raise ValueError(f"{option}={key!r} would overwrite a standard log record attribute")


def correlate_logs(logger: Any, *, trace_id_key: str = TRACE_ID_KEY, span_id_key: str = SPAN_ID_KEY) -> TraceIdFilter:
    """Add the PostHog trace id and span id to every line ``logger`` writes inside a trace.

    ``logger`` is a Powertools ``Logger`` (the filter goes on its handler, which its child
    loggers share, so their lines carry the ids too), a ``logging.Logger`` or a
    ``logging.Handler``. Lines logged outside a trace get no such key. Calling it again with
    the same keys changes nothing. Returns the filter, for ``removeFilter``.

    Buffered Powertools log lines (``buffer_config``) are formatted when flushed, so they carry
    the trace current at that moment, if any.
    """
    target = _filter_target(logger)
    for existing in getattr(target, "filters", ()):
        if (
            isinstance(existing, TraceIdFilter)
            and existing.trace_id_key == trace_id_key
            and existing.span_id_key == span_id_key
        ):
            return existing
    added = TraceIdFilter(trace_id_key, span_id_key)
    target.addFilter(added)
    return added


def _filter_target(logger: Any) -> Any:
    if isinstance(logger, (logging.Logger, logging.Handler)):
        return logger
    # A Powertools Logger: records of the service's child loggers only meet at the handler.
    # (It proxies unknown attributes to its logging.Logger, hence the class-level check.)
    if hasattr(type(logger), "registered_handler") and callable(getattr(logger, "addFilter", None)):
        try:
            handler = logger.registered_handler
        except Exception:
            handler = None
        return handler if isinstance(handler, logging.Handler) else logger
    raise TypeError(
        "correlate_logs() takes a Powertools Logger, a logging.Logger or a logging.Handler, "
        f"not {type(logger).__name__}"
    )


# -- ids from the event ----------------------------------------------------------------------


class EventValue:
    """What ``from_event`` returns: a ``distinct_id`` / ``session_id`` source for
    ``@posthog_traced``, called with ``(event, context)``, that answers the value the JMESPath
    expression finds in the event, as a string, or None."""

    __slots__ = ("_options", "_query", "expression")

    def __init__(self, expression: str, jmespath_options: dict[str, Any] | None) -> None:
        self.expression = expression
        self._options = jmespath_options
        self._query: Callable[..., Any] | None = None

    def __repr__(self) -> str:
        return f"from_event({self.expression!r})"

    def __call__(self, event: Any, context: Any = None) -> str | None:
        try:
            search = self._query
            if search is None:
                from aws_lambda_powertools.utilities.jmespath_utils import query

                search = self._query = query
            value = search(data=_raw_event(event), envelope=self.expression, jmespath_options=self._options)
        except Exception as exc:
            if getattr(exc, "actual_type", None) == "null":
                # A function given a missing value (powertools_json(body) without a body):
                # the value is missing, like any other path that leads nowhere.
                return None
            # Never the message: Powertools puts the whole event in it.
            record_drop("invalid_event_id", 1, f"{self!r} could not read the event: {type(exc).__name__}")
            return None
        if value is None or value == "":
            return None
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        record_drop("invalid_event_id", 1, f"{self!r} found a {type(value).__name__}, not a string")
        return None


def _raw_event(event: Any) -> Any:
    """The event as Lambda delivered it: Powertools' data classes (``@event_source``) wrap it."""
    if type(event) is dict:
        return event
    raw = getattr(event, "raw_event", None)
    return raw if isinstance(raw, dict) else event


def from_event(expression: str, *, jmespath_options: Mapping[str, Any] | None = None) -> EventValue:
    """A ``distinct_id`` or ``session_id`` for ``@posthog_traced`` read from the event with a
    JMESPath expression, evaluated by Powertools' ``jmespath_utils``.

    ``from_event("requestContext.authorizer.claims.sub")`` is the Cognito user of an API
    Gateway REST request; Powertools' functions work too, as in
    ``from_event("powertools_json(body).user_id")``. A path that leads nowhere gives None (the
    trace goes on without that id); a number becomes a string; an object, a list, or a body
    that is not valid JSON also gives None and is counted (``dropped_counts()``). With an
    ``@event_source`` data class as the event, the expression reads the raw event.

    The expression is checked now: a syntax error or an unknown function raises ValueError.
    ``jmespath_options`` replaces Powertools' default options (its custom functions), as in
    ``jmespath_utils.query``. Needs aws-lambda-powertools.
    """
    if not isinstance(expression, str):
        raise TypeError(f"from_event() takes a JMESPath expression string, not {type(expression).__name__}")
    if jmespath_options is not None and not isinstance(jmespath_options, Mapping):
        raise TypeError("from_event(jmespath_options=...) takes a mapping of jmespath.Options arguments")
    options = dict(jmespath_options) if jmespath_options is not None else None
    try:
        import jmespath  # type: ignore[import-untyped]
        from jmespath.exceptions import JMESPathError  # type: ignore[import-untyped]
        from jmespath.functions import Functions  # type: ignore[import-untyped]
    except ImportError as exc:
        raise ImportError(
            f"posthog_lambda.powertools.from_event needs aws-lambda-powertools: {_MISSING_EXTRA}"
        ) from exc
    try:
        parsed = jmespath.compile(expression)
    except JMESPathError as exc:
        raise ValueError(f"from_event({expression!r}) is not a valid JMESPath expression: {exc}") from None
    unknown = _function_names(parsed.parsed) - set(Functions.FUNCTION_TABLE)
    if unknown:
        unknown -= set(_custom_functions(options))
        if unknown:
            names = ", ".join(sorted(unknown))
            raise ValueError(f"from_event({expression!r}) calls unknown JMESPath function(s): {names}")
    return EventValue(expression, options)


def _function_names(node: Any) -> set[str]:
    """The names of the functions a parsed JMESPath expression calls."""
    names: set[str] = set()
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("type") == "function_expression" and isinstance(item.get("value"), str):
                names.add(item["value"])
            stack.extend(item.get("children") or ())
        elif isinstance(item, list):
            stack.extend(item)
    return names


def _custom_functions(options: dict[str, Any] | None) -> Any:
    """The function table the expression will be evaluated with, beyond JMESPath's own."""
    if options is not None:
        functions = options.get("custom_functions")
        return getattr(functions, "FUNCTION_TABLE", {}) if functions is not None else {}
    try:
        from aws_lambda_powertools.utilities.jmespath_utils import PowertoolsFunctions
    except ImportError as exc:
        raise ImportError(
            f"posthog_lambda.powertools.from_event needs aws-lambda-powertools: {_MISSING_EXTRA}"
        ) from exc
    return PowertoolsFunctions.FUNCTION_TABLE
