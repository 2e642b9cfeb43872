"""``@posthog_traced``: one ``$ai_trace`` per Lambda invocation."""

from __future__ import annotations

from _collections_abc import Mapping  # collections.abc's, without its import cost

from posthog_lambda_contract.jsonable import to_jsonable

from ._config import get_config
from ._context import current
from ._decorate import instrument
from ._lambda import deadline_ms, lambda_properties, request_id, take_first_invocation
from ._log import logger
from ._spans import Span, TraceSpan
from ._trace import Trace
from ._wraps import overload

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeAlias, TypeVar

    F = TypeVar("F", bound=Callable[..., Any])
    IdSource: TypeAlias = str | Callable[[Any, Any], str | None] | None


def _check_id_source(option: str, value: object) -> None:
    if value is not None and not isinstance(value, str) and not callable(value):
        raise TypeError(f"posthog_traced({option}=...) takes a string or a callable (event, context) -> str | None")


def _resolve(option: str, source: IdSource, event: Any, context: Any) -> str | None:
    if source is None or isinstance(source, str):
        return source or None
    try:
        value = source(event, context)
    except Exception:
        logger.exception("posthog_traced(%s=...) raised; the trace goes on without it", option)
        return None
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else str(value)


def _handler_arguments(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
    code = getattr(func, "__code__", None)
    skip = 1 if code is not None and code.co_argcount and code.co_varnames[0] in ("self", "cls") else 0
    event = args[skip] if len(args) > skip else kwargs.get("event")
    context = args[skip + 1] if len(args) > skip + 1 else kwargs.get("context")
    return event, context


@overload
def posthog_traced(func: F) -> F: ...
@overload
def posthog_traced(
    func: None = None,
    *,
    name: str | None = None,
    distinct_id: IdSource = None,
    session_id: IdSource = None,
    properties: Mapping[str, Any] | None = None,
    groups: Mapping[str, str] | None = None,
    capture_input: bool | None = None,
    capture_output: bool | None = None,
    privacy_mode: bool | None = None,
) -> Callable[[F], F]: ...


def posthog_traced(
    func: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    distinct_id: IdSource = None,
    session_id: IdSource = None,
    properties: Mapping[str, Any] | None = None,
    groups: Mapping[str, str] | None = None,
    capture_input: bool | None = None,
    capture_output: bool | None = None,
    privacy_mode: bool | None = None,
) -> Any:
    """Trace each invocation of a Lambda handler (sync or async) as one PostHog ``$ai_trace``.

    Works bare (``@posthog_traced``) or with options. ``distinct_id`` and ``session_id`` take a
    string or a callable ``(event, context) -> str | None``. Options left as None fall back to
    ``configure()`` and then to the environment, read when the decorator is applied. The
    handler's return value and exceptions pass through unchanged; tracing problems are logged,
    never raised. Applied to a function called inside an already traced handler, it records a
    span of that trace instead of a new trace.
    """
    _check_id_source("distinct_id", distinct_id)
    _check_id_source("session_id", session_id)
    for option, value in (
        ("capture_input", capture_input),
        ("capture_output", capture_output),
        ("privacy_mode", privacy_mode),
    ):
        if value is not None and not isinstance(value, bool):
            raise TypeError(f"posthog_traced({option}=...) takes True, False or None")
    if properties is not None and not isinstance(properties, Mapping):
        raise TypeError("posthog_traced(properties=...) takes a mapping")
    if groups is not None and not isinstance(groups, Mapping):
        raise TypeError("posthog_traced(groups=...) takes a mapping of group type to group key")
    if name is not None and not isinstance(name, str):
        raise TypeError("posthog_traced(name=...) takes a string")

    def decorate(handler: F) -> F:
        config = get_config()
        if config.enabled:
            from ._destination import connect_early  # where events go is known by now: Init

            connect_early()
        trace_name = name or getattr(handler, "__qualname__", None) or "handler"
        shared = to_jsonable(dict(properties), config.redact_keys) if properties else {}
        group_map = {str(k): str(v) for k, v in groups.items()} if groups else None

        def start(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Span | None:
            config = get_config()
            if not config.enabled:
                return None
            event, context = _handler_arguments(handler, args, kwargs)
            parent = current.get()
            if parent is not None and not parent._trace.closed:
                return Span(trace_name, event).__enter__()
            common = dict(shared)
            rid = request_id(context)
            if rid is not None:
                common["lambda_request_id"] = rid
            trace = Trace(
                config,
                distinct_id=_resolve("distinct_id", distinct_id, event, context),
                session_id=_resolve("session_id", session_id, event, context),
                privacy_mode=privacy_mode,
                capture_input=capture_input,
                capture_output=capture_output,
                groups=group_map,
                common=common,
            )
            trace.request_id = rid
            if rid is not None:
                trace.deadline_ms = deadline_ms(context)
            root = TraceSpan(trace_name, trace, event)
            root.lambda_properties = lambda_properties(context, take_first_invocation())
            return root.__enter__()

        return instrument(handler, start)

    if func is not None:
        return decorate(func)
    return decorate
