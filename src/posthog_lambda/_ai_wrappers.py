"""``posthog_client()``: what posthog-python's AI wrappers take as their PostHog client.

``posthog.ai.openai.OpenAI(posthog_client=...)``, the Anthropic and Gemini wrappers and
LangChain's ``CallbackHandler(client=...)`` only call ``capture(event=, distinct_id=,
properties=, groups=)`` and read ``privacy_mode`` (and, with getattr defaults,
``enable_full_ai_capture`` and ``enable_exception_autocapture``). This object gives them
exactly that, and routes each event the way the decorator's own events go: inside a traced
handler it joins the running trace and leaves with its spans; outside one it is delivered on
its own.

Joining a trace rewrites what the wrapper made up, never what the caller chose:

- ``$ai_trace_id`` becomes the handler's unless the caller set one. The wrappers invent a
  random UUIDv4 per call when given none (and LangChain's handler uses its root run's id,
  which we tell apart by looking at that handler's own ``trace_id`` setting), so a version-4
  UUID from a wrapper is taken as "none given". Any other trace id is the caller's, and kept.
- ``$ai_parent_id`` becomes the running span's when it is missing (a root-level event); a
  LangChain root run's ``$ai_trace`` becomes an ``$ai_span`` under the running span, so its
  children stay nested under it.
- ``distinct_id`` becomes the handler's when the wrapper had no user: it then passes None or
  marks the event ``$process_person_profile: false`` (it uses the trace id as a stand-in).
- The handler's session id, groups (the caller's win per group type), shared properties,
  privacy mode, capture-input/output settings and key redaction apply.

posthog-python 7.91.1 does not measure time to first token; for streams that go through its
stream wrappers (OpenAI and Anthropic, sync and async; Gemini async) this module times the
first content chunk by wrapping those two classes' iteration, and adds
``$ai_time_to_first_token`` to the event.
"""

from __future__ import annotations

import sys
import time
from _collections_abc import Mapping  # collections.abc's, without its import cost
from _thread import allocate_lock
from contextvars import ContextVar

from posthog_lambda_contract import ids as _ids
from posthog_lambda_contract.events import ANONYMOUS, DISTINCT_ID, GROUPS, make_event
from posthog_lambda_contract.jsonable import to_jsonable

from . import _config
from ._context import current
from ._drops import record_drop
from ._log import logger
from ._processor import export_events

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine
    from types import FrameType
    from typing import Any

    from ._spans import Span
    from ._trace import Trace

__all__ = ["PostHogClient", "posthog_client"]

# What not recording inputs / outputs removes (privacy mode turns both off): the trace's
# PRIVATE_PROPERTIES and the Responses API's instructions, which are a prompt too.
_INPUTS = ("$ai_input", "$ai_input_state", "$ai_instructions")
_OUTPUTS = ("$ai_output_choices", "$ai_output_state")

_LANGCHAIN = "posthog.ai.langchain.callbacks"
_FRAMES_SEARCHED = 6
"""capture() is called from posthog.ai.utils, called from the LangChain handler's method."""


class PostHogClient:
    """Takes posthog-python AI wrapper events into posthog-lambda's traces. Use
    ``posthog_client()`` to get one; it is stateless, so one instance serves every wrapper."""

    enable_full_ai_capture = False
    """Keeps the wrappers' media placeholders (no base64 images) and their plain capture()."""
    enable_exception_autocapture = False
    """The handler's trace records the exception that escapes it; wrappers need not."""

    @property
    def privacy_mode(self) -> bool:
        """The running trace's privacy mode, or the configured one outside a trace. The
        wrappers read it when they build an event, so it follows the handler's setting."""
        running = current.get()
        if running is not None and not running._trace.closed:
            return running._trace.privacy_mode
        return (_config.current or _config.get_config()).privacy_mode

    def capture(
        self,
        event: Any = None,
        *positional: Any,
        distinct_id: Any = None,
        properties: Any = None,
        timestamp: Any = None,
        uuid: Any = None,
        groups: Any = None,
        **options: Any,
    ) -> str | None:
        """Record one event, as posthog-python's ``Client.capture`` takes it; returns its uuid,
        or None when it was dropped. Never raises. Feature-flag and GeoIP options are ignored."""
        try:
            if positional:
                record_drop("invalid_capture_call", 1, "capture() takes the event name, then keywords only")
                return None
            stream = _active_stream.get()
            return _capture(event, distinct_id, properties, timestamp, uuid, groups, stream, sys._getframe(1))
        except Exception as exc:
            record_drop("capture_failed", 1, f"{type(exc).__name__}: {exc}")
            return None

    capture_ai = capture
    """posthog-python's AI-lane capture; here the same path (the extension picks the endpoint)."""

    def flush(self) -> None:
        """Nothing to do: events leave with their trace, or at once outside one."""

    def shutdown(self) -> None:
        """Nothing to do: the extension sends after the response, the process needs no drain."""

    def __bool__(self) -> bool:
        # The wrappers fall back to posthog's global client on a falsy object.
        return True

    def __repr__(self) -> str:
        return "<posthog_lambda.posthog_client()>"


_client: PostHogClient | None = None


def posthog_client() -> Any:
    """A client for posthog-python's AI wrappers that sends through posthog-lambda.

    Pass it as ``posthog_client=`` to ``posthog.ai.openai.OpenAI`` / ``AsyncOpenAI``,
    ``posthog.ai.anthropic.Anthropic`` / ``AsyncAnthropic`` or the Gemini client, or as
    ``client=`` to ``posthog.ai.langchain.CallbackHandler``. Inside a ``@posthog_traced``
    handler their ``$ai_generation`` events join the handler's trace under the current span,
    with the handler's user, session, groups, privacy mode and redaction; outside one they are
    sent as they are. No flush or shutdown call is needed.

    Typed ``Any`` so that type checkers accept it where the wrappers declare posthog's
    ``Client``; it is a ``PostHogClient``.
    """
    global _client
    _instrument_streams()
    if _client is None:
        _client = PostHogClient()
    return _client


# -- one event ------------------------------------------------------------------------------


def _capture(
    event: Any,
    distinct_id: Any,
    properties: Any,
    timestamp: Any,
    event_uuid: Any,
    groups: Any,
    stream: Any,
    caller: FrameType | None,
) -> str | None:
    now = time.perf_counter()
    config = _config.current or _config.get_config()
    if not config.enabled:
        return None
    if not _instrumented:
        _instrument_streams()
    if not isinstance(event, str) or not event:
        record_drop("invalid_event", 1, f"capture() needs an event name, got {event!r:.80}")
        return None
    if properties is not None and not isinstance(properties, Mapping):
        record_drop("invalid_event", 1, f"{event}: properties must be a mapping, got {type(properties).__name__}")
        return None
    user = _user(distinct_id)
    extra_groups = _groups(groups)
    raw = dict(properties) if properties else {}
    # The wrappers mark an event without a user this way, using the trace id as its distinct id.
    no_user = user is None or raw.get("$process_person_profile") is False

    running = current.get()
    host = None if running is None or running._trace.closed else running._trace
    if running is not None and host is not None:
        props = to_jsonable(raw, host.redact)
        event = _join(event, props, running, host, caller)
        if host.session_id is not None:
            props.setdefault("$ai_session_id", host.session_id)
        if host.common:
            props = {**host.common, **props}
        record_input, record_output = host.record_input, host.record_output
        all_groups = {**host.groups, **extra_groups} if host.groups else extra_groups
        who, anonymous = (user, False) if user is not None and not no_user else (host.distinct_id, host.anonymous)
    else:
        props = to_jsonable(raw, config.redact_keys)
        record_input = config.capture_input and not config.privacy_mode
        record_output = config.capture_output and not config.privacy_mode
        all_groups = extra_groups
        if user is not None and not no_user:
            who, anonymous = user, False
        else:
            # Without a user the wrapper's stand-in (the trace id) is kept, as it would be sent.
            stand_in = user or props.get("$ai_trace_id")
            who = config.default_distinct_id or (str(stand_in) if stand_in else _ids.uuid7())
            anonymous = not config.default_distinct_id

    if not record_input:
        for key in _INPUTS:
            props.pop(key, None)
    if not record_output:
        for key in _OUTPUTS:
            props.pop(key, None)
    if no_user:
        # Whether the event's user gets a person profile is ours to say now, not the stand-in's.
        props.pop("$process_person_profile", None)
    if event == "$ai_generation" and stream is not None:
        _add_first_token(props, stream, now)
    if not _gateway_warned and props.get("$ai_base_url"):
        _warn_if_gateway(props["$ai_base_url"])

    header = {DISTINCT_ID: who, ANONYMOUS: anonymous, GROUPS: all_groups}
    uuid, stamp = _uuid(event_uuid), _timestamp(timestamp)
    built = make_event(event, header, props, None, time.time(), uuid=uuid, timestamp=stamp)
    if host is not None:
        host.batch.add(built)
    else:
        export_events([built])
    return built["uuid"]


_gateway_warned = False


def _warn_if_gateway(base_url: Any) -> None:
    """Once per process: a wrapper pointed at PostHog's AI gateway, which records an
    ``$ai_generation`` of its own for each call, so each is counted (and billed) twice. The
    gateway's hosts are posthog-python's own list (loaded with its wrappers)."""
    global _gateway_warned
    gateway = sys.modules.get("posthog.ai.gateway")
    is_gateway = getattr(gateway, "is_posthog_ai_gateway_url", None)
    if is_gateway is not None and is_gateway(base_url):
        _gateway_warned = True
        logger.warning(
            "a posthog-python wrapper calls PostHog's AI gateway (%s), which records its own $ai_generation: "
            "each call is counted twice; point the provider client at the provider, or drop the wrapper",
            base_url,
        )


def _join(event: str, props: dict[str, Any], running: Span, host: Trace, caller: FrameType | None) -> str:
    """Put a wrapper's event into the running trace, unless the caller chose another trace;
    returns the event's name (a LangChain root's ``$ai_trace`` becomes an ``$ai_span``)."""
    trace_id = props.get("$ai_trace_id")
    handler = _langchain_handler(caller)
    if trace_id not in (None, "", host.trace_id):
        # LangChain's handler knows whether it was given one; the other wrappers invent a UUIDv4.
        made_up = getattr(handler, "_trace_id", None) is None if handler is not None else _is_uuid4(trace_id)
        if not made_up:
            return event
    props["$ai_trace_id"] = host.trace_id
    if event == "$ai_trace":
        # LangChain's root run: a span of this trace now, keeping its id for its children.
        event = "$ai_span"
        props["$ai_span_id"] = props.get("$ai_span_id") or trace_id or _ids.uuid4()
        props["$ai_parent_id"] = None
    parent = props.get("$ai_parent_id")
    # A LangChain event whose parent is its root run keeps it (that run is a span now); any
    # other event pointing at the made-up trace id is at the top of it, so under our span.
    if parent in (None, "") or (parent == trace_id and handler is None):
        props["$ai_parent_id"] = running.span_id
    return event


def _langchain_handler(frame: FrameType | None) -> Any:
    """posthog-python's LangChain CallbackHandler that is capturing, or None."""
    for _ in range(_FRAMES_SEARCHED):
        if frame is None:
            return None
        if frame.f_globals.get("__name__") == _LANGCHAIN:
            return frame.f_locals.get("self")
        frame = frame.f_back
    return None


_HEX = frozenset("0123456789abcdefABCDEF")


def _is_uuid4(value: Any) -> bool:
    """A random UUID in text form, as ``str(uuid.uuid4())`` makes them."""
    if type(value) is not str or len(value) != 36:
        return False
    if value[8] != "-" or value[13] != "-" or value[18] != "-" or value[23] != "-":
        return False
    digits = value.replace("-", "")
    return len(digits) == 32 and set(digits) <= _HEX and value[14] == "4" and value[19] in "89abAB"


def _user(distinct_id: Any) -> str | None:
    if distinct_id is None or distinct_id == "":
        return None
    if isinstance(distinct_id, str):
        return distinct_id
    if (isinstance(distinct_id, int) and not isinstance(distinct_id, bool)) or _is_uuid_object(distinct_id):
        return str(distinct_id)
    record_drop("invalid_distinct_id", 1, f"distinct_id must be a string, got {type(distinct_id).__name__}")
    return None


def _is_uuid_object(value: Any) -> bool:
    uuid_type = getattr(sys.modules.get("uuid"), "UUID", None)
    return uuid_type is not None and isinstance(value, uuid_type)


def _groups(groups: Any) -> dict[str, str]:
    if not groups:
        return {}
    if not isinstance(groups, Mapping):
        record_drop("invalid_groups", 1, f"groups must map group type to key, got {type(groups).__name__}")
        return {}
    return {str(kind): str(key) for kind, key in groups.items()}


def _uuid(value: Any) -> str | None:
    """The caller's event uuid when it is one (posthog-python replaces invalid ones too)."""
    if value is None:
        return None
    text = str(value) if _is_uuid_object(value) else value
    if type(text) is str and len(text) == 36 and set(text.replace("-", "")) <= _HEX and text.count("-") == 4:
        return text
    return None


def _timestamp(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    isoformat = getattr(value, "isoformat", None)
    if callable(isoformat) and getattr(value, "tzinfo", None) is not None:
        utc = sys.modules["datetime"].timezone.utc
        return str(value.astimezone(utc).isoformat())
    if callable(isoformat) and hasattr(value, "hour"):
        # A naive datetime: taken as UTC, as PostHog reads a timestamp without an offset.
        return str(isoformat()) + "+00:00"
    record_drop("invalid_timestamp", 1, f"timestamp must be a datetime or ISO 8601 text, got {type(value).__name__}")
    return None


# -- time to first token --------------------------------------------------------------------

_FIRST = "_posthog_lambda_first_chunk"
"""Set on a stream wrapper instance: perf_counter() when its first content chunk came."""
_active_stream: ContextVar[Any] = ContextVar("posthog_lambda_ai_stream", default=None)
"""The posthog stream wrapper whose iteration is running now: the event its generator
captures when it ends belongs to it."""
_instrumented = False
_instrument_lock = allocate_lock()


def _add_first_token(props: dict[str, Any], stream: Any, now: float) -> None:
    props.setdefault("$ai_stream", True)
    first = stream.__dict__.get(_FIRST)
    latency = props.get("$ai_latency")
    if first is None or type(latency) not in (float, int) or "$ai_time_to_first_token" in props:
        return
    # The wrapper measured latency from the request to just now; the first chunk came
    # (now - first) seconds before now.
    props["$ai_time_to_first_token"] = min(max(latency - (now - first), 0.0), latency)


def _carries_content(chunk: Any) -> bool:
    """Whether a streamed chunk holds generated output, not just a preamble (an Anthropic
    message_start, an OpenAI role-only first chunk, a Responses lifecycle event)."""
    kind = getattr(chunk, "type", None)
    if isinstance(kind, str):
        return kind == "content_block_delta" or kind.endswith(".delta")
    choices = getattr(chunk, "choices", None)
    if choices is None:
        return True  # Gemini: every chunk is content
    for choice in choices:
        delta = getattr(choice, "delta", None)
        if delta is not None and (
            getattr(delta, "content", None) or getattr(delta, "tool_calls", None) or getattr(delta, "refusal", None)
        ):
            return True
    return False


def _mark(stream: Any, chunk: Any) -> None:
    try:
        if _FIRST not in stream.__dict__ and _carries_content(chunk):
            stream.__dict__[_FIRST] = time.perf_counter()
    except Exception:
        logger.debug("timing a streamed chunk failed")


def _timed_next(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def __next__(self: Any) -> Any:
        token = _active_stream.set(self)
        try:
            chunk = original(self)
        finally:
            _active_stream.reset(token)
        _mark(self, chunk)
        return chunk

    return __next__


def _timed_close(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    # Closing a stream early ends its generator, which captures the event then.
    def close(self: Any) -> Any:
        token = _active_stream.set(self)
        try:
            return original(self)
        finally:
            _active_stream.reset(token)

    return close


def _timed_anext(original: Callable[[Any], Coroutine[Any, Any, Any]]) -> Callable[[Any], Coroutine[Any, Any, Any]]:
    async def __anext__(self: Any) -> Any:
        token = _active_stream.set(self)
        try:
            chunk = await original(self)
        finally:
            _active_stream.reset(token)
        _mark(self, chunk)
        return chunk

    return __anext__


def _timed_aclose(original: Callable[[Any], Coroutine[Any, Any, Any]]) -> Callable[[Any], Coroutine[Any, Any, Any]]:
    async def close(self: Any) -> Any:
        token = _active_stream.set(self)
        try:
            return await original(self)
        finally:
            _active_stream.reset(token)

    return close


_PATCHES: tuple[tuple[str, str, Callable[[Any], Any]], ...] = (
    ("_StreamWrapper", "__next__", _timed_next),
    ("_StreamWrapper", "close", _timed_close),
    ("AsyncStreamWrapper", "__anext__", _timed_anext),
    ("AsyncStreamWrapper", "close", _timed_aclose),
)


def _instrument_streams() -> None:
    """Time posthog-python's stream wrappers, once it is loaded (never imported from here:
    wrapper code imports it before it makes a client or a call)."""
    global _instrumented
    module = sys.modules.get("posthog.ai.stream")
    if _instrumented or module is None:
        return
    with _instrument_lock:
        if _instrumented:
            return
        try:
            for class_name, method, timed in _PATCHES:
                cls = getattr(module, class_name, None)
                original = getattr(cls, method, None) if cls is not None else None
                if original is None or getattr(original, "_posthog_lambda", False):
                    continue
                replacement = timed(original)
                replacement.__name__ = method
                replacement.__qualname__ = f"{class_name}.{method}"
                replacement._posthog_lambda = True
                setattr(cls, method, replacement)
        except Exception:
            logger.exception("timing posthog's AI streams failed; events go without time to first token")
        _instrumented = True
