"""The trace viewer: what the capture server received, as a page in the browser.

``build_model`` arranges events with ``tree.group_traces`` (the rules of the text tree and of
PostHog's trace view) into plain JSON: the traces, each with its tree, the times of every node
for the waterfall, the input and output of each (chat messages as messages, anything else as
pretty-printed JSON), its model, tokens, cost and time to first token, Lambda's figures of each
invocation's root, and what PostHog would not place in the tree (parents not found, parents in
a loop, nodes with no trace id). ``page_html`` puts a model into the page (``viewer.html``,
``viewer.css`` and ``viewer.js`` beside this module: plain HTML, CSS and JavaScript, nothing
fetched); the capture server serves it live at ``/`` and the page waits on ``EVENTS_PATH`` for
more, and ``write_html`` writes it as one self-contained file.

Every value in the model is user data: the page builds its DOM with ``textContent`` only, and
the JSON in the page is escaped so that no value can end the ``<script>`` element that holds it.
Standard library only.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from posthog_lambda_contract.schema import LAMBDA_ROOT

from .tree import Node, Totals, Trace, describe_other, group_traces, is_error, own_totals, totals

__all__ = ["EVENTS_PATH", "PAGE_PATH", "build_model", "page_html", "script_json", "write_html"]

PAGE_PATH = "/"
EVENTS_PATH = "/viewer/traces.json"
"""The page waits here for a newer model: ``?after=<version>&wait=<seconds>`` answers as soon as
the received events are no longer those of ``version``, else after ``wait`` with the same."""

FORMAT = 1
"""The model's shape; changes when ``viewer.js`` would read it differently."""

# What a node's input and output are, by kind: a generation's messages, a span's state.
_INPUT_KEYS = ("$ai_input", "$ai_input_state")
_OUTPUT_KEYS = ("$ai_output_choices", "$ai_output_state")
_SHOWN_APART = {*_INPUT_KEYS, *_OUTPUT_KEYS}
_LAMBDA_PREFIX = "lambda_"
_LAMBDA_STATUS = "lambda_status"
# Inside a <script> element only "</script" (and "<!--") end or change it; escaping every "<", ">"
# and "&" rules out both, and U+2028/U+2029 are line ends to older JavaScript parsers. Each can
# only occur inside a JSON string, where the \u escape reads back as the same character.
_SCRIPT_SAFE = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"})
_ASSETS = ("viewer.html", "viewer.css", "viewer.js")


def build_model(
    events: Iterable[Mapping[str, Any]], *, version: int = 0, generated_at: datetime | None = None
) -> dict[str, Any]:
    """The viewer's model of ``events`` as plain JSON. Give it what PostHog keeps: each uuid once
    (a capture server's ``unique_events()``, or ``capture_events()``'s list).

    Traces come newest first, as PostHog lists them. Each node has a ``uid`` unique in the model
    and stable while events are only added (``e`` and its place among ``events``), so that the
    page keeps its selection when a newer model arrives; ``version`` says which received events
    the model shows.
    """
    listed = list(events)
    forest = group_traces(listed)
    ignored: dict[str, int] = {}
    for event in forest.ignored:
        name = event.get("event")
        label = name if isinstance(name, str) else "(no event name)"
        ignored[label] = ignored.get(label, 0) + 1
    return {
        "format": FORMAT,
        "version": version,
        "generated_at": (generated_at or datetime.now(UTC)).isoformat(),
        "event_count": len(listed),
        "traces": [_trace(trace) for trace in reversed(forest.traces)],
        "untraced": [_node(node, _Context(in_trace=False)) for node in forest.untraced],
        "ignored": ignored,
    }


def script_json(value: Any) -> str:
    """``value`` as JSON that can sit inside an HTML ``<script>`` element: no ``<``, ``>``, ``&``,
    U+2028 or U+2029 left unescaped, so no string in it can end the element."""
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=str)
    except ValueError:
        # NaN and infinity are not JSON (Python's parser takes them, the browser's does not).
        text = json.dumps(_finite(value), ensure_ascii=False, separators=(",", ":"), default=str)
    return text.translate(_SCRIPT_SAFE)


def page_html(model: Mapping[str, Any], *, live: bool = False, wait_s: float = 25.0) -> str:
    """The viewer page with ``model`` in it. ``live``: the page also waits on ``EVENTS_PATH`` of
    the server that served it for newer models (``wait_s`` per request); else it is a snapshot.

    The page's Content-Security-Policy allows only its own script and style (by hash) and
    connections to where it came from: no inline handler, image or other origin, even if a
    value ever reached the DOM as markup.
    """
    template, style, script = (_asset(name) for name in _ASSETS)
    boot = {"model": model, "live": {"endpoint": EVENTS_PATH, "wait_s": wait_s} if live else None}
    policy = (
        f"default-src 'none'; script-src '{_sha256(script)}'; style-src '{_sha256(style)}'; "
        "connect-src 'self'; img-src 'none'; base-uri 'none'; form-action 'none'"
    )
    # One pass over the template's markers, so nothing inserted is itself searched for markers.
    parts = {"CSP": policy, "STYLE": style, "SCRIPT": script, "DATA": script_json(boot)}
    pieces = template.split("{{")
    out = [pieces[0]]
    for piece in pieces[1:]:
        marker, _, rest = piece.partition("}}")
        out.append(parts[marker] + rest)
    return "".join(out)


def write_html(events: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Write the viewer for ``events`` to ``path`` as one self-contained HTML file (the model in
    it, no server needed; parent directories made); return the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(page_html(build_model(events)), encoding="utf-8")
    return target


# -- the model ---------------------------------------------------------------------------------


@dataclass
class _Context:
    """What the nodes of one trace share while they are made into JSON."""

    memo: dict[int, Totals] = field(default_factory=dict)
    invocations: dict[int, str | None] = field(default_factory=dict)
    in_trace: bool = True


def _trace(trace: Trace) -> dict[str, Any]:
    context = _Context(invocations=_invocations(trace))
    nodes = [trace.tree, *trace.nodes] if trace.root is not None else list(trace.nodes)
    roots = [node for node in nodes if _is_invocation_root(node)]
    moments = [moment for node in nodes for moment in _times(node) if moment is not None]
    window = {"start_ms": min(moments), "end_ms": max(moments)} if moments else None
    ordered = sorted(nodes, key=lambda n: n.key)
    root_sums = totals(trace.tree, context.memo)
    failing = [node for node in roots if is_error(node.props) or node.props.get(_LAMBDA_STATUS)]
    status = _str(_first(root.props.get(_LAMBDA_STATUS) for root in roots))
    erring = [node for node in ordered if is_error(node.props)]
    # The invocation's own error says why the trace failed; a node's is what went wrong inside.
    error_node = next((node for node in failing if is_error(node.props)), erring[0] if erring else None)
    error = _error(error_node.props) if error_node is not None else None
    if error is None and status is not None:
        error = f"Lambda status {status}"
    duration_ms = _ms(root_sums.latency)
    if duration_ms is None and window is not None:
        duration_ms = window["end_ms"] - window["start_ms"]
    cold = _first(root.props.get("lambda_cold_start") for root in roots)
    indices = [node.index for node in nodes] + [key[2] for key, _ in trace.others]
    return {
        "id": trace.trace_id,
        "name": _str(trace.root.props.get("$ai_span_name")) if trace.root is not None else None,
        "has_trace_event": trace.root is not None,
        "started_at": _iso(window["start_ms"]) if window is not None else None,
        "window": window,
        "duration_ms": duration_ms,
        **_sums(root_sums),
        "failed": bool(failing),
        "status": status,
        "error": error,
        "error_count": len(erring),
        "cut_short_count": sum(1 for node in nodes if _cut_short(node)),
        "distinct_id": _str(_first(node.event.get("distinct_id") for node in [*roots, *ordered])),
        "session_id": _str(_first(node.props.get("$ai_session_id") for node in [*roots, *ordered])),
        "cold_start": cold if isinstance(cold, bool) else None,
        # Changes whenever an event of this trace arrives: the page redraws an open trace only then.
        "revision": f"{len(indices)}:{max(indices, default=-1)}",
        "tree": _node(trace.tree, context, placeholder=f"trace:{trace.trace_id}"),
        "orphans": [_node(node, context) for node in trace.orphans],
        "looping": [_node(node, context, children=False) for node in trace.looping],
        "events": [_other(key[2], event) for key, event in trace.others],
    }


def _node(node: Node, context: _Context, *, children: bool = True, placeholder: str = "") -> dict[str, Any]:
    props = node.props
    start, end = _times(node)
    own = own_totals(node)
    sums = totals(node, context.memo) if context.in_trace else own
    rest = {key: value for key, value in props.items() if key not in _SHOWN_APART}
    root = _is_invocation_root(node)
    return {
        "uid": _uid(node) if node.index >= 0 else placeholder,
        "kind": node.kind,
        "event": node.event.get("event"),
        "name": _str(props.get("$ai_span_name")),
        "id": node.node_id,
        "parent_id": node.parent_id,
        "timestamp": _str(node.event.get("timestamp")),
        "start_ms": start,
        "end_ms": end,
        "own": _sums(own),
        **_sums(sums),
        "model": _str(props.get("$ai_model")),
        "provider": _str(props.get("$ai_provider")),
        "ttft_ms": _ms(_number(props.get("$ai_time_to_first_token"))),
        "is_error": is_error(props),
        "error": _error(props) if is_error(props) else None,
        "cut_short": _cut_short(node),
        "lambda_status": _str(props.get(_LAMBDA_STATUS)),
        "invocation_root": root,
        "continues_trace": props.get(LAMBDA_ROOT) is True,
        "lambda": {key: value for key, value in props.items() if key.startswith(_LAMBDA_PREFIX)} if root else None,
        "invocation": context.invocations.get(id(node)),
        "distinct_id": _str(node.event.get("distinct_id")),
        "input": _payload(next((props[key] for key in _INPUT_KEYS if key in props), None)),
        "output": _payload(next((props[key] for key in _OUTPUT_KEYS if key in props), None)),
        "properties": _pretty(rest) if rest else None,
        "children": [_node(child, context) for child in node.children] if children else [],
    }


def _other(index: int, event: Mapping[str, Any]) -> dict[str, Any]:
    props = event.get("properties")
    return {
        "uid": f"e{index}",
        "event": event.get("event"),
        "summary": describe_other(event),
        "timestamp": _str(event.get("timestamp")),
        "distinct_id": _str(event.get("distinct_id")),
        "properties": _pretty(props) if props else None,
    }


def _is_invocation_root(node: Node) -> bool:
    # schema.is_root's rule: an $ai_trace, or the $ai_span of an invocation continuing a trace.
    name = node.event.get("event")
    return name == "$ai_trace" or (name == "$ai_span" and node.props.get(LAMBDA_ROOT) is True)


def _invocations(trace: Trace) -> dict[int, str | None]:
    """Each node's invocation root (its uid), by node: its nearest ancestor that is one, else (a
    node outside the tree) the root with its ``lambda_request_id``, which every event of an
    invocation carries."""
    found: dict[int, str | None] = {}
    pending: list[tuple[Node, str | None]] = [(trace.tree, None), *((node, None) for node in trace.orphans)]
    while pending:
        node, above = pending.pop()
        if id(node) in found:
            continue
        mine = _uid(node) if _is_invocation_root(node) else above
        found[id(node)] = mine
        pending.extend((child, mine) for child in node.children)
    by_request = {
        node.props.get("lambda_request_id"): _uid(node)
        for node in reversed([trace.tree, *trace.nodes])
        if _is_invocation_root(node) and node.index >= 0
    }
    for node in [trace.tree, *trace.nodes]:
        if found.get(id(node)) is None:
            found[id(node)] = by_request.get(node.props.get("lambda_request_id"))
    return found


def _uid(node: Node) -> str:
    return f"e{node.index}"


def _cut_short(node: Node) -> bool:
    # The extension marks what it sent for an invocation that timed out or crashed with Lambda's
    # status: on the invocation's root that says the invocation failed; on any other node, that
    # the node was still running then and was ended at the deadline.
    return bool(node.props.get(_LAMBDA_STATUS)) and not _is_invocation_root(node)


def _times(node: Node) -> tuple[float | None, float | None]:
    """When ``node`` started and ended (ms since the epoch): events are stamped when they end."""
    if node.key[0] != 0:
        return None, None
    end = node.key[1].timestamp() * 1000
    latency = _number(node.props.get("$ai_latency"))
    return (end - latency * 1000 if latency is not None and latency >= 0 else None), end


def _sums(sums: Totals) -> dict[str, Any]:
    return {
        "latency_ms": _ms(sums.latency),
        "input_tokens": sums.input_tokens,
        "output_tokens": sums.output_tokens,
        "cost_usd": sums.cost,
        "summed": sorted(sums.summed),
    }


def _payload(value: object) -> dict[str, Any] | None:
    """An input or output as the page shows it: ``messages`` (each with its role), ``text``, or
    ``json`` (pretty-printed)."""
    if value is None:
        return None
    if isinstance(value, str):
        return {"text": value}
    messages = _messages(value)
    if messages is not None:
        return {"messages": messages}
    return {"json": _pretty(value)}


def _messages(value: object) -> list[dict[str, Any]] | None:
    if not isinstance(value, list) or not value:
        return None
    # OpenAI's raw choices hold the message under "message".
    unwrapped = [
        m.get("message") if isinstance(m, Mapping) and isinstance(m.get("message"), Mapping) else m for m in value
    ]
    if not all(isinstance(m, Mapping) and isinstance(m.get("role"), str) for m in unwrapped):
        return None
    shown = []
    for message in unwrapped:
        assert isinstance(message, Mapping)
        content = message.get("content")
        text = content if isinstance(content, str) else _parts_text(content)
        extra = {key: item for key, item in message.items() if key not in ("role", "content")}
        if text is None and content is not None:
            extra["content"] = content
        shown.append({"role": message["role"], "text": text, "json": _pretty(extra) if extra else None})
    return shown


def _parts_text(content: object) -> str | None:
    # Content as a list of parts ({"type": "text", "text": ...}, as OpenAI and Anthropic send it)
    # reads as its text when every part is text; anything else is shown as JSON.
    if not isinstance(content, list) or not content:
        return None
    texts = [part.get("text") for part in content if isinstance(part, Mapping) and part.get("type") == "text"]
    if len(texts) != len(content) or not all(isinstance(text, str) for text in texts):
        return None
    return "\n".join(str(text) for text in texts)


def _error(props: Mapping[str, Any]) -> str:
    error = props.get("$ai_error")
    if error is None or error == "":
        return "error"
    return error if isinstance(error, str) else _pretty(error)


def _pretty(value: object) -> str:
    return json.dumps(_finite(value), indent=2, ensure_ascii=False, default=str)


def _finite(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, Mapping):
        return {str(key): _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def _first(values: Iterable[object]) -> object:
    return next((value for value in values if value is not None and value != ""), None)


def _str(value: object) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _iso(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


# -- the page ----------------------------------------------------------------------------------


def _asset(name: str) -> str:
    return resources.files(__package__ or __name__).joinpath(name).read_text(encoding="utf-8")


def _sha256(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
