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
    ParentSource: TypeAlias = Mapping[str, Any] | Callable[[Any, Any], Mapping[str, Any] | None] | bool | None

    from ._propagation import Parent


LINKED_TRACES = "linked_trace_ids"
"""On the ``$ai_trace`` of an invocation whose batch held messages of several traces: their
``$ai_trace_id`` values, in the order the messages came."""
MAX_LINKED = 100


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


_readers: (
    tuple[Callable[[Any, Any], list[Mapping[str, Any]]], Callable[..., tuple[Parent | None, list[str]]]] | None
) = None
"""``_inbound.carriers`` and ``_propagation.parent_of``, once the first invocation loaded them."""


def _check_parent_source(value: object) -> None:
    if value is not None and not isinstance(value, bool | Mapping) and not callable(value):
        raise TypeError(
            "posthog_traced(parent=...) takes a carrier (a mapping), a callable (event, context) -> carrier | None, "
            "or False"
        )


def _parent(source: ParentSource, event: Any, context: Any) -> tuple[Parent | None, list[str]]:
    """What the invocation continues (``_propagation.parent_of``): from ``parent=``, else from
    wherever the event or the context carries one (``_inbound``); ``parent=False``: nothing."""
    if source is False:
        return None, []
    global _readers
    if _readers is None:
        # Loaded with the first invocation rather than with the package, and bound once: an
        # import statement costs microseconds each time it runs.
        from ._inbound import carriers
        from ._propagation import parent_of

        _readers = carriers, parent_of
    found_in, parent_of = _readers
    try:
        if source is None or source is True:
            return parent_of(found_in(event, context))
        carrier = source(event, context) if callable(source) else source
        if carrier is None:
            return None, []
        if not isinstance(carrier, Mapping):
            from ._drops import record_drop
            from ._propagation import INVALID

            record_drop(INVALID, 1, f"posthog_traced(parent=...) gave a {type(carrier).__name__}, not a mapping")
            return None, []
        return parent_of([carrier])
    except Exception:
        logger.exception("reading the trace to continue failed; the invocation starts a trace of its own")
        return None, []


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
    parent: ParentSource = None,
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
    parent: ParentSource = None,
) -> Any:
    """Trace each invocation of a Lambda handler (sync or async) as one PostHog ``$ai_trace``.

    Works bare (``@posthog_traced``) or with options. ``distinct_id`` and ``session_id`` take a
    string or a callable ``(event, context) -> str | None``. Options left as None fall back to
    ``configure()`` and then to the environment, read when the decorator is applied. The
    handler's return value and exceptions pass through unchanged; tracing problems are logged,
    never raised. Applied to a function called inside an already traced handler, it records a
    span of that trace instead of a new trace.

    An invocation continues the trace of the function that sent its event when the event carries
    one (``posthog_lambda.inject``; see ``_inbound`` for where): its root is then a span under the
    sender's, and the sender's user and session apply unless ``distinct_id``/``session_id`` say
    otherwise. ``parent`` chooses instead: a carrier, a callable ``(event, context) -> carrier |
    None``, or False to start every invocation's trace afresh.
    """
    _check_id_source("distinct_id", distinct_id)
    _check_id_source("session_id", session_id)
    _check_parent_source(parent)
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
            running = current.get()
            if running is not None and not running._trace.closed:
                return Span(trace_name, event).__enter__()
            common = dict(shared)
            rid = request_id(context)
            if rid is not None:
                common["lambda_request_id"] = rid
            continued, linked = _parent(parent, event, context)
            trace = Trace(
                config,
                trace_id=continued.trace_id if continued is not None else None,
                distinct_id=_resolve("distinct_id", distinct_id, event, context)
                or (continued.distinct_id if continued is not None else None),
                session_id=_resolve("session_id", session_id, event, context)
                or (continued.session_id if continued is not None else None),
                privacy_mode=privacy_mode,
                capture_input=capture_input,
                capture_output=capture_output,
                groups=group_map,
                common=common,
            )
            trace.request_id = rid
            if rid is not None:
                trace.deadline_ms = deadline_ms(context)
            under = None
            if continued is not None and continued.trace_id is not None:
                under = continued.span_id or continued.trace_id
            root = TraceSpan(trace_name, trace, event, under)
            root.lambda_properties = lambda_properties(context, take_first_invocation())
            root.__enter__()
            if linked:
                # Messages of several traces: this invocation is a trace of its own, naming theirs.
                root.update(properties={LINKED_TRACES: linked[:MAX_LINKED]})
            return root

        return instrument(handler, start)

    if func is not None:
        return decorate(func)
    return decorate
