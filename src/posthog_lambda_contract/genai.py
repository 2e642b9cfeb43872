"""An OpenTelemetry span as a record, and the PostHog event a GenAI span stands for.

Spans from OpenTelemetry instrumentations (the OpenTelemetry project's ``openai-v2``,
OpenLLMetry, OpenInference, agent frameworks) reach the extension two ways: from
``posthog_lambda.otel``'s span processor over the socket, and as OTLP/HTTP on localhost. Both
make the same record, so one function here (``expand``, reached through ``records.expand``)
makes their events, in the extension or, for the library's other exporters, in the process.

Its record is a tuple, by position: kind ``SPAN``, name, parent id (what the event's
``$ai_parent_id`` is: the span it joins, already resolved; None at the top of its trace), end
(Unix µs), latency (ns), its id, its error (None, or the status description, "" when it gave
none), what its trace records (``RECORDS_INPUT`` | ``RECORDS_OUTPUT``), its attributes (a dict
of what OpenTelemetry allows: strings, booleans, numbers and tuples of them) and its events
(``(name, Unix µs, attributes or None)`` each). The first six positions are a span record's
(``records``), so that code reading those reads both.

What a span says is read from the current GenAI semantic conventions and from the older names
instrumentations still emit: ``gen_ai.system`` beside ``gen_ai.provider.name``,
``gen_ai.usage.prompt_tokens`` beside ``input_tokens``, prompts and completions as indexed
attributes (``gen_ai.prompt.0.content``), as JSON attributes (``gen_ai.input.messages``) or as
span events (``gen_ai.content.prompt``). Attributes outside the GenAI namespaces become the
event's properties; content never does, except as ``$ai_input`` and its siblings, which privacy
mode removes.

Which agent or LLM framework made a span (``$ai_framework``, as posthog-python's LangChain,
OpenAI Agents and Claude Agent SDK wrappers name it) is read from the instrumentation scope that
made it (``framework``), which both readers carry in the attributes as ``otel.scope.name``
(OpenTelemetry's name for it outside OTLP; not a property itself). An instrumentation of a
provider's SDK (OpenAI, Anthropic, Bedrock...) names none, as posthog-python's OpenAI and
Anthropic wrappers set none: a provider's SDK is not a framework.
"""

from __future__ import annotations

from . import ids
from .events import ANONYMOUS, DISTINCT_ID, SESSION_ID, TRACE_ID, make_event, redact_set
from .jsonable import to_jsonable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

    from .schema import Event

SPAN = "otel"
"""The kind of an OpenTelemetry span's record (its first item)."""
NAME, PARENT, END_US, LATENCY_NS, ID, ERROR, RECORDS, ATTRIBUTES, EVENTS = range(1, 10)
RECORDS_INPUT = 1
"""In RECORDS: the span's trace records inputs (``$ai_input``, ``$ai_input_state``)."""
RECORDS_OUTPUT = 2
"""In RECORDS: the span's trace records outputs."""

NAMESPACES = ("gen_ai.", "llm.", "traceloop.", "ai.")
"""Attribute prefixes that make a span a GenAI span (the ones PostHog's own OTLP intake reads)."""

_GENERATIONS = frozenset({"chat", "text_completion", "completion", "generate_content", "responses", "generate"})
_EMBEDDINGS = frozenset({"embeddings", "embedding"})

SCOPE_NAME = "otel.scope.name"
"""In ATTRIBUTES: the name of the instrumentation scope that made the span, where the span has no
attribute of that name of its own. Not made a property: ``$ai_framework`` says what it tells."""
FRAMEWORK = "$ai_framework"

_DISTINCT_ID_KEYS = ("posthog.distinct_id", "user.id", "enduser.id")
_SESSION_KEYS = ("posthog.session_id", "session.id", "gen_ai.conversation.id")


def is_genai(attributes: Mapping[str, Any]) -> bool:
    """Whether a span's attributes make it a GenAI span."""
    return any(key.startswith(NAMESPACES) for key in attributes)


# Each framework by the words of a scope name that name it (a scope name's words are its
# dotted, underscored or hyphenated parts: ``openinference.instrumentation.llama_index`` is
# openinference, instrumentation, llama, index). Whole words, so that "agno" is not found in
# "diagnostics" nor "dspy" in "dspyx". The scopes they come from: OpenLLMetry's and OpenInference's
# instrumentations (``opentelemetry.instrumentation.<package>``, ``openinference.instrumentation.
# <package>``: each names its tracer after its module) and the frameworks' own tracers
# (``pydantic-ai``, ``strands.telemetry.tracer``, ``haystack``, ``autogen-core``, and Google ADK's
# ``gcp.vertex.agent``).
_FRAMEWORK_WORDS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("langchain",), "langchain"),
    (("llama", "index"), "llamaindex"),
    (("llamaindex",), "llamaindex"),
    (("crewai",), "crewai"),
    (("openai", "agents"), "openai-agents"),
    (("haystack",), "haystack"),
    (("dspy",), "dspy"),
    (("pydantic", "ai"), "pydantic-ai"),
    (("strands",), "strands-agents"),
    (("google", "adk"), "google-adk"),
    (("gcp", "vertex", "agent"), "google-adk"),
    (("autogen",), "autogen"),
    (("smolagents",), "smolagents"),
    (("agno",), "agno"),
    (("claude", "agent", "sdk"), "claude-agent-sdk"),
)
# By first word, so that a scope name is read in one pass over its words.
_FRAMEWORKS: dict[str, list[tuple[tuple[str, ...], str]]] = {}
for _entry in _FRAMEWORK_WORDS:
    _FRAMEWORKS.setdefault(_entry[0][0], []).append(_entry)
del _entry
_WORD_BREAKS = str.maketrans("_-/: ", ".....")
_NAMED: dict[str, str | None] = {}
"""The framework each scope name read names: a process has a few instrumentations, a scope each,
so that each name is read once."""


def framework(scope_name: str | None, attributes: Mapping[str, Any]) -> str | None:
    """The framework a span says made it (``$ai_framework``): the span's own ``$ai_framework``
    attribute when it has one (a string), else the one its instrumentation scope's name names
    (None for an instrumentation of a provider's SDK, or a scope not known here)."""
    own = attributes.get(FRAMEWORK)
    if type(own) is str and own:
        return own
    if type(scope_name) is not str or not scope_name:
        return None
    if scope_name in _NAMED:
        return _NAMED[scope_name]
    named = _named_by(scope_name)
    # Not kept: past the first few names, and a name longer than a module's (a span's own
    # attribute can be anything).
    if len(_NAMED) < 64 and len(scope_name) <= 256:
        _NAMED[scope_name] = named
    return named


def _named_by(scope_name: str) -> str | None:
    words = scope_name.lower().translate(_WORD_BREAKS).split(".")
    for at, word in enumerate(words):
        for sought, name in _FRAMEWORKS.get(word, ()):
            if len(sought) == 1 or tuple(words[at : at + len(sought)]) == sought:
                return name
    return None


def _first(attributes: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        value = attributes.get(key)
        if value is not None and value != "":
            return value
    return None


def _count(value: Any) -> int | None:
    if type(value) is int:
        return value
    if type(value) is float and value.is_integer():
        return int(value)
    if type(value) is str and value.isdigit():
        return int(value)
    return None


def _json(value: Any, scalars: bool = False) -> Any:
    """An attribute that holds JSON text (messages, tool definitions) as data; a string that is
    not JSON stays a string. ``scalars``: a JSON string or number is read too (an entity's
    input or output, a tool's arguments or result, which are JSON whatever they hold)."""
    if type(value) is not str:
        return value
    text = value.strip()
    if not text or (text[0] not in "[{" and not scalars):
        return value
    import json

    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # a hostile nesting depth too
        return value


def kind_of(attributes: Mapping[str, Any]) -> str:
    """``$ai_generation``, ``$ai_embedding`` or ``$ai_span``: what a span's operation makes it."""
    operation = _first(attributes, "gen_ai.operation.name", "llm.request.type", "traceloop.span.kind")
    if isinstance(operation, str):
        operation = operation.lower()
        if operation in _GENERATIONS:
            return "$ai_generation"
        if operation in _EMBEDDINGS:
            return "$ai_embedding"
        return "$ai_span"
    if _first(attributes, "gen_ai.request.model", "gen_ai.response.model") is not None and _tokens(attributes):
        return "$ai_generation"
    return "$ai_span"


def _tokens(attributes: Mapping[str, Any]) -> dict[str, int]:
    found: dict[str, int] = {}
    for prop, keys in _TOKEN_KEYS:
        value = _count(_first(attributes, *keys))
        if value is not None:
            found[prop] = value
    return found


_TOKEN_KEYS = (
    ("$ai_input_tokens", ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.usage.prompt_tokens")),
    (
        "$ai_output_tokens",
        ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens", "llm.usage.completion_tokens"),
    ),
    (
        "$ai_cache_read_input_tokens",
        (
            "gen_ai.usage.cache_read.input_tokens",
            "gen_ai.usage.cache_read_input_tokens",
            "gen_ai.usage.cached_tokens",
        ),
    ),
    (
        "$ai_cache_creation_input_tokens",
        (
            "gen_ai.usage.cache_creation.input_tokens",
            "gen_ai.usage.cache_write.input_tokens",
            "gen_ai.usage.cache_creation_input_tokens",
        ),
    ),
    ("$ai_reasoning_tokens", ("gen_ai.usage.reasoning.output_tokens", "gen_ai.usage.reasoning_tokens")),
    ("$ai_total_tokens", ("gen_ai.usage.total_tokens", "llm.usage.total_tokens")),
)

_PARAMETERS = (
    ("temperature", "gen_ai.request.temperature"),
    ("max_tokens", "gen_ai.request.max_tokens"),
    ("top_p", "gen_ai.request.top_p"),
    ("top_k", "gen_ai.request.top_k"),
    ("frequency_penalty", "gen_ai.request.frequency_penalty"),
    ("presence_penalty", "gen_ai.request.presence_penalty"),
    ("stop", "gen_ai.request.stop_sequences"),
    ("seed", "gen_ai.request.seed"),
    ("reasoning_effort", "gen_ai.request.reasoning_effort"),
)


# -- messages ---------------------------------------------------------------------------------


def _content(parts: Any) -> Any:
    """A message's parts (the current conventions' ``[{type, content}]``) as PostHog shows
    content: the text when all parts are text, else the parts in OpenAI's shape."""
    if not isinstance(parts, list):
        return parts
    texts = [p["content"] for p in parts if isinstance(p, dict) and isinstance(p.get("content"), str)]
    if len(texts) == len(parts) and all(p.get("type") == "text" for p in parts):
        return texts[0] if len(texts) == 1 else "\n".join(texts)
    shaped: list[Any] = []
    for part in parts:
        if isinstance(part, dict) and part.get("type") == "text":
            shaped.append({"type": "text", "text": part.get("content")})
        elif not (isinstance(part, dict) and part.get("type") in ("tool_call", "tool_call_response")):
            shaped.append(part)
    return shaped


def _message(message: Any) -> Any:
    """One message of the current conventions (``{role, parts, finish_reason?}``) as PostHog
    renders it (``{role, content}``, tool calls in OpenAI's shape); other shapes as they are."""
    if not isinstance(message, dict) or "parts" not in message:
        return message
    parts = message.get("parts")
    shaped: dict[str, Any] = {"role": message.get("role") or "user"}
    calls = []
    if isinstance(parts, list):
        for part in parts:
            if not isinstance(part, dict):
                continue
            if part.get("type") == "tool_call":
                arguments = part.get("arguments")
                calls.append(
                    {
                        "type": "function",
                        "id": part.get("id"),
                        "function": {
                            "name": part.get("name"),
                            "arguments": arguments if isinstance(arguments, str) else _dumps(arguments),
                        },
                    }
                )
            elif part.get("type") == "tool_call_response":
                shaped["role"] = "tool"
                shaped["tool_call_id"] = part.get("id")
                shaped["content"] = part.get("response", part.get("result"))
    if "content" not in shaped:
        content = _content([p for p in parts or () if not (isinstance(p, dict) and p.get("type") == "tool_call")])
        shaped["content"] = "" if content == [] else content
    if calls:
        shaped["tool_calls"] = calls
    return shaped


def _dumps(value: Any) -> str:
    import json

    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except ValueError:
        return str(value)


def _messages(value: Any) -> Any:
    value = _json(value)
    if isinstance(value, list):
        return [_message(m) for m in value]
    if isinstance(value, dict):
        return [_message(value)]
    return value


def _indexed(attributes: Mapping[str, Any], prefix: str, role: str | None) -> list[dict[str, Any]]:
    """OpenLLMetry's older flat messages: ``gen_ai.prompt.0.role``, ``gen_ai.prompt.0.content``,
    ``gen_ai.prompt.0.tool_calls.0.name``..."""
    found: dict[int, dict[str, Any]] = {}
    for key, value in attributes.items():
        if not key.startswith(prefix):
            continue
        index, _, field = key[len(prefix) :].partition(".")
        if not index.isdigit() or not field:
            continue
        message = found.setdefault(int(index), {})
        if field.startswith("tool_calls."):
            position, _, name = field[len("tool_calls.") :].partition(".")
            if position.isdigit() and name:
                calls = message.setdefault("_calls", {})
                call = calls.setdefault(int(position), {"type": "function", "function": {}})
                if name in ("name", "arguments"):
                    call["function"][name] = value
                else:
                    call[name] = value
        else:
            message[field] = _json(value) if field == "content" else value
    messages = []
    for number in sorted(found):
        message = found[number]
        numbered = message.pop("_calls", None)
        if numbered:
            message["tool_calls"] = [numbered[i] for i in sorted(numbered)]
        if role is not None:
            message.setdefault("role", role)
        messages.append(message)
    return messages


def _from_events(events: Sequence[Any], attribute: str, names: tuple[str, ...]) -> Any:
    """Messages sent as span events: the older conventions' ``gen_ai.content.prompt`` (a JSON
    attribute), or one event per message (``gen_ai.user.message``...)."""
    messages: list[Any] = []
    for name, _, attrs in events:
        if not isinstance(attrs, dict):
            continue
        if name in names and attribute in attrs:
            value = _json(attrs[attribute])
            if isinstance(value, list):
                messages.extend(_message(m) for m in value)
            else:
                messages.append(value)
        elif name.startswith("gen_ai.") and name.endswith(".message") and attribute == "gen_ai.prompt":
            role = name[len("gen_ai.") : -len(".message")]
            messages.append({"role": attrs.get("role", role), "content": _json(attrs.get("content"))})
        elif name == "gen_ai.choice" and attribute == "gen_ai.completion":
            message = _json(attrs.get("message"))
            if isinstance(message, dict):
                messages.append({"role": message.get("role", "assistant"), **message})
            elif "content" in attrs:
                messages.append({"role": "assistant", "content": _json(attrs["content"])})
    return messages or None


def _input(attributes: Mapping[str, Any], events: Sequence[Any]) -> Any:
    messages = _first(attributes, "gen_ai.input.messages", "gen_ai.prompt", "llm.prompts")
    if messages is not None:
        shaped = _messages(messages)
    else:
        shaped = _indexed(attributes, "gen_ai.prompt.", "user") or _from_events(
            events, "gen_ai.prompt", ("gen_ai.content.prompt",)
        )
    instructions = attributes.get("gen_ai.system_instructions")
    if instructions is not None:
        system = {"role": "system", "content": _content(_json(instructions))}
        shaped = [system, *shaped] if isinstance(shaped, list) else [system] if shaped is None else [system, shaped]
    return shaped


def _output(attributes: Mapping[str, Any], events: Sequence[Any]) -> Any:
    messages = _first(attributes, "gen_ai.output.messages", "gen_ai.completion", "llm.completions")
    if messages is not None:
        return _messages(messages)
    return _indexed(attributes, "gen_ai.completion.", "assistant") or _from_events(
        events, "gen_ai.completion", ("gen_ai.content.completion",)
    )


def _embedding_input(attributes: Mapping[str, Any], events: Sequence[Any]) -> Any:
    """Embedding input is a string or a list of strings, not chat messages."""
    messages = _input(attributes, events)
    if not isinstance(messages, list):
        return messages
    texts = [m.get("content") if isinstance(m, dict) else m for m in messages]
    return texts[0] if len(texts) == 1 else texts


def _tools(attributes: Mapping[str, Any]) -> Any:
    tools = attributes.get("gen_ai.tool.definitions")
    if tools is not None:
        return _json(tools)
    functions = _indexed(attributes, "llm.request.functions.", None)
    return [{"type": "function", "function": f} for f in functions] or None


# -- the event --------------------------------------------------------------------------------


def _error(record: Sequence[Any], attributes: Mapping[str, Any], events: Sequence[Any]) -> str | None:
    error = record[ERROR]
    if error is None:
        return None
    if isinstance(error, str) and error:
        return error
    for name, _, attrs in events:
        if name == "exception" and isinstance(attrs, dict):
            kind = attrs.get("exception.type")
            message = attrs.get("exception.message")
            if kind or message:
                return f"{kind}: {message}" if kind and message else str(kind or message)
    return str(attributes.get("error.type") or "error")


def _first_token_s(attributes: Mapping[str, Any], events: Sequence[Any], start_us: int) -> float | None:
    given = _first(attributes, "gen_ai.response.time_to_first_chunk", "gen_ai.response.time_to_first_token")
    if isinstance(given, int | float) and not isinstance(given, bool):
        return float(given)
    for name, at_us, _ in events:
        if isinstance(name, str) and name.endswith(".chunk") and isinstance(at_us, int):
            return max(0, at_us - start_us) / 1e6
    return None


def expand(header: dict[str, Any], record: Sequence[Any]) -> Event:
    """The event an OpenTelemetry span's record stands for (``records.expand`` calls this for
    kind ``SPAN``). Raises KeyError, IndexError, TypeError or ValueError for a malformed one."""
    attributes = record[ATTRIBUTES]
    events = record[EVENTS] or ()
    end_us = record[END_US]
    latency_ns = record[LATENCY_NS]
    if not isinstance(attributes, dict) or not isinstance(end_us, int) or not isinstance(latency_ns, int):
        raise TypeError(f"not an OpenTelemetry span record: {record!r:.80}")
    for event in events:
        if (
            len(event) != 3
            or not isinstance(event[0], str)
            or not isinstance(event[1], int)
            or not isinstance(event[2], dict | None)
        ):
            raise ValueError(f"not a span event: {event!r:.80}")
    kind = kind_of(attributes)
    mask = record[RECORDS]
    redact = redact_set(header)
    span_id = record[ID] or ids.uuid4()
    name = record[NAME]
    if kind == "$ai_span":
        name = _first(attributes, "gen_ai.agent.name", "gen_ai.tool.name", "traceloop.entity.name") or name
    props: dict[str, Any] = {
        "$ai_trace_id": header[TRACE_ID],
        "$ai_span_id": span_id,
        "$ai_parent_id": record[PARENT] or header[TRACE_ID],
        "$ai_span_name": name,
        "$ai_latency": latency_ns / 1e9,
    }
    error = _error(record, attributes, events)
    props["$ai_is_error"] = error is not None
    if error is not None:
        props["$ai_error"] = error
    if kind != "$ai_span":
        if kind == "$ai_generation":
            props["$ai_generation_id"] = span_id
        model = _first(attributes, "gen_ai.response.model", "gen_ai.request.model", "llm.response.model")
        if model is not None:
            props["$ai_model"] = model
        provider = _first(attributes, "gen_ai.provider.name", "gen_ai.system", "llm.vendor")
        if provider is not None:
            props["$ai_provider"] = str(provider).lower()
        tokens = _tokens(attributes)
        if tokens:
            props.update(tokens)
            props["$ai_tokens_source"] = "sdk"  # read from the provider's answer by the instrumentation
        parameters = {parameter: attributes[key] for parameter, key in _PARAMETERS if key in attributes}
        if parameters:
            props["$ai_model_parameters"] = to_jsonable(parameters)
            for parameter in ("temperature", "max_tokens"):
                if parameter in parameters:
                    props[f"$ai_{parameter}"] = parameters[parameter]
        reasons = attributes.get("gen_ai.response.finish_reasons")
        if isinstance(reasons, list | tuple) and reasons:
            props["$ai_stop_reason"] = reasons[0]
        response_id = attributes.get("gen_ai.response.id")
        if response_id is not None:
            props["$ai_response_id"] = response_id
        base_url = _first(attributes, "gen_ai.openai.api_base", "llm.openai.api_base")
        if base_url is not None:
            props["$ai_base_url"] = base_url
        first_token = _first_token_s(attributes, events, end_us - latency_ns // 1000)
        stream = _first(attributes, "gen_ai.is_streaming", "llm.is_streaming", "gen_ai.request.stream")
        if first_token is not None:
            props["$ai_time_to_first_token"] = first_token
            stream = True if stream is None else stream
        if stream is not None:
            props["$ai_stream"] = bool(stream)
        tools = _tools(attributes)
        if tools:
            props["$ai_tools"] = to_jsonable(tools, redact)
        if mask & RECORDS_INPUT:
            value = _embedding_input(attributes, events) if kind == "$ai_embedding" else _input(attributes, events)
            if value is not None:
                props["$ai_input"] = to_jsonable(value, redact)
        if mask & RECORDS_OUTPUT and kind == "$ai_generation":
            value = _output(attributes, events)
            if value is not None:
                props["$ai_output_choices"] = to_jsonable(value, redact)
    else:
        if mask & RECORDS_INPUT:
            value = _first(attributes, "gen_ai.tool.call.arguments", "traceloop.entity.input", "gen_ai.input.messages")
            if value is not None:
                props["$ai_input_state"] = to_jsonable(_json(value, True), redact)
        if mask & RECORDS_OUTPUT:
            value = _first(attributes, "gen_ai.tool.call.result", "traceloop.entity.output", "gen_ai.output.messages")
            if value is not None:
                props["$ai_output_state"] = to_jsonable(_json(value, True), redact)
    # What the span says of its user and session, where its trace does not already know them.
    distinct_id = _first(attributes, *_DISTINCT_ID_KEYS)
    if distinct_id is not None and header.get(ANONYMOUS):
        header = {**header, DISTINCT_ID: str(distinct_id), ANONYMOUS: False}
    session = _first(attributes, *_SESSION_KEYS)
    if session is not None and header.get(SESSION_ID) is None:
        header = {**header, SESSION_ID: str(session)}
    if FRAMEWORK not in attributes:  # a span's own is among its properties below, as it is
        named = framework(attributes.get(SCOPE_NAME), attributes)
        if named is not None:
            props[FRAMEWORK] = named
    # The scope's name would be a property on every span, saying nothing $ai_framework does not.
    others = {
        k: v
        for k, v in attributes.items()
        if not k.startswith(NAMESPACES) and not k.startswith("posthog.") and k != SCOPE_NAME
    }
    return make_event(kind, header, props, to_jsonable(others, redact) if others else None, end_us / 1e6)
