"""Arrange received events as PostHog's LLM trace view does (``group_traces``: the one set of
rules, which the browser viewer in ``viewer`` reads too) and render that as plain deterministic
text (``render_trace_tree``)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "Forest",
    "Node",
    "Totals",
    "Trace",
    "describe_other",
    "group_traces",
    "is_error",
    "own_totals",
    "render_trace_tree",
    "totals",
]

_NODE_KINDS = {"$ai_span": "span", "$ai_generation": "generation", "$ai_embedding": "embedding"}
_MODEL_KINDS = ("generation", "embedding")
# Spans and the trace show the sum of their children where they lack a value of their own.
_SUMMING_KINDS = ("span", "trace")
_INDENT = "  "
_MAX_TEXT = 200
_NO_TIME = datetime.min.replace(tzinfo=UTC)

SortKey = tuple[int, datetime, int]
"""(0 if the timestamp parsed else 1, the timestamp, the arrival index): siblings' order."""


@dataclass
class Totals:
    """A node's latency (s), tokens and cost: its own, or for a span or the trace that lacks one,
    the sum of its children's (the names in ``summed``)."""

    latency: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost: float | None = None
    summed: set[str] = field(default_factory=set)


@dataclass
class Node:
    """One ``$ai_trace``, ``$ai_span``, ``$ai_generation`` or ``$ai_embedding`` as the trace view
    places it: ``kind`` is ``trace``, ``span``, ``generation`` or ``embedding``; ``key`` orders it
    among its siblings; ``index`` is its place among the events given (arrival order)."""

    kind: str
    props: Mapping[str, Any]
    key: SortKey
    event: Mapping[str, Any] = field(default_factory=dict)
    node_id: str | None = None
    parent_id: str | None = None
    children: list[Node] = field(default_factory=list)

    @property
    def index(self) -> int:
        return self.key[2]


@dataclass
class Trace:
    """The events sharing one ``$ai_trace_id``.

    ``root`` is its ``$ai_trace`` (``None`` when none arrived: PostHog still groups the events);
    ``tree`` is the node the view hangs the others under (the root, or a stand-in for it). Nodes
    whose parent is not in the trace are ``orphans`` (each with the subtree under it); those
    reached from neither, because their parents point at each other, are ``looping``. ``others``
    are the trace's other events (``$exception``, ``$ai_feedback``, ``$ai_metric``, a second
    ``$ai_trace``), in timestamp order.
    """

    trace_id: str
    root: Node | None = None
    nodes: list[Node] = field(default_factory=list)
    others: list[tuple[SortKey, Mapping[str, Any]]] = field(default_factory=list)
    tree: Node = field(init=False)
    orphans: list[Node] = field(default_factory=list)
    looping: list[Node] = field(default_factory=list)

    def first_key(self) -> SortKey:
        keys = [node.key for node in self.nodes] + [key for key, _ in self.others]
        if self.root is not None:
            keys.append(self.root.key)
        return min(keys)


@dataclass
class Forest:
    """Every trace, in the order of its first event; the ``$ai_*`` nodes that carry no trace id
    (in no trace at all), in timestamp order; and the events that are neither in a trace nor
    such a node (``$pageview``, an ``$exception`` without a trace id, malformed events), which
    the trace view does not show, in arrival order."""

    traces: list[Trace]
    untraced: list[Node]
    ignored: list[Mapping[str, Any]] = field(default_factory=list)


def group_traces(events: Iterable[Mapping[str, Any]]) -> Forest:
    """Group events into traces as PostHog's trace view would: one per ``$ai_trace_id``.

    Span, generation and embedding nodes hang under their ``$ai_parent_id`` (else the trace);
    those whose parent is not in the trace are kept apart, as PostHog does not show them. Other
    events carrying a trace id (``$exception``, ``$ai_feedback``, ``$ai_metric``) are kept with
    their trace; events with no trace id that are not ``$ai_*`` nodes are left out. Siblings are
    ordered by timestamp, then by arrival.
    """
    traces: dict[str, Trace] = {}
    untraced: list[Node] = []
    ignored: list[Mapping[str, Any]] = []
    for index, event in enumerate(events):
        name = event.get("event")
        props = event.get("properties")
        if not isinstance(name, str) or not isinstance(props, Mapping):
            ignored.append(event)
            continue
        key = _sort_key(event.get("timestamp"), index)
        trace_id = _id(props.get("$ai_trace_id"))
        if trace_id is None:
            if name in _NODE_KINDS or name == "$ai_trace":
                untraced.append(Node(_NODE_KINDS.get(name, "trace"), props, key, event))
            else:
                ignored.append(event)
            continue
        trace = traces.setdefault(trace_id, Trace(trace_id))
        if name == "$ai_trace" and trace.root is None:
            trace.root = Node("trace", props, key, event, node_id=trace_id)
        elif name in _NODE_KINDS:
            node_id = _id(props.get("$ai_generation_id")) or _id(props.get("$ai_span_id"))
            parent_id = _id(props.get("$ai_parent_id")) or trace_id
            trace.nodes.append(Node(_NODE_KINDS[name], props, key, event, node_id, parent_id))
        else:
            trace.others.append((key, event))
    ordered = sorted(traces.values(), key=lambda t: (t.first_key(), t.trace_id))
    for trace in ordered:
        _link(trace)
    return Forest(ordered, sorted(untraced, key=lambda n: n.key), ignored)


def _link(trace: Trace) -> None:
    trace.tree = trace.root or Node("trace", {}, (2, _NO_TIME, -1), node_id=trace.trace_id)
    by_id: dict[str, Node] = {}
    for node in trace.nodes:
        if node.node_id is not None and node.node_id != trace.trace_id:
            by_id.setdefault(node.node_id, node)
    for node in sorted(trace.nodes, key=lambda n: n.key):
        parent = trace.tree if node.parent_id == trace.trace_id else by_id.get(node.parent_id or "")
        if parent is None:
            trace.orphans.append(node)
        else:
            parent.children.append(node)
    reached: set[int] = set()
    for start in [*trace.tree.children, *trace.orphans]:
        _reach(start, reached)
    # Nodes whose parents point at each other are reached from neither the trace nor an orphan.
    trace.looping = [node for node in trace.nodes if id(node) not in reached]
    trace.others.sort(key=lambda other: other[0])


def _reach(node: Node, reached: set[int]) -> None:
    pending = [node]
    while pending:
        current = pending.pop()
        if id(current) not in reached:
            reached.add(id(current))
            pending.extend(current.children)


def render_trace_tree(events: Iterable[Mapping[str, Any]]) -> str:
    """Lay out events as PostHog's trace view would (``group_traces``), one block per trace, as text.

    Nodes whose parent is not in the trace, or whose parents form a loop, are listed apart, as
    PostHog does not show them; so are ``$ai_*`` nodes without a trace id.
    """
    forest = group_traces(events)
    if not forest.traces and not forest.untraced:
        return "(no $ai_* events received)"
    blocks = [_render_trace(trace) for trace in forest.traces]
    if forest.untraced:
        lines = ["$ai_* events without $ai_trace_id (in no trace):"]
        lines += [_line(node, 1, own_totals(node)) for node in forest.untraced]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _render_trace(trace: Trace) -> str:
    memo: dict[int, Totals] = {}
    lines = [_line(trace.tree, 0, totals(trace.tree, memo), trace=trace)]
    shown: set[int] = set()
    for child in trace.tree.children:
        _render_subtree(child, 1, lines, memo, shown)
    if trace.orphans:
        lines.append(f"{_INDENT}not shown by PostHog (parent not found):")
        for orphan in trace.orphans:
            _render_subtree(orphan, 2, lines, memo, shown, suffix=f"parent {orphan.parent_id}")
    if trace.looping:
        lines.append(f"{_INDENT}not shown by PostHog (parents form a loop):")
        lines += [_line(node, 2, own_totals(node), suffix=f"parent {node.parent_id}") for node in trace.looping]
    if trace.others:
        lines.append(f"{_INDENT}events:")
        lines += [f"{_INDENT * 2}{describe_other(event)}" for _, event in trace.others]
    return "\n".join(lines)


def _render_subtree(
    node: Node, depth: int, lines: list[str], memo: dict[int, Totals], shown: set[int], suffix: str = ""
) -> None:
    if id(node) in shown:
        return
    shown.add(id(node))
    lines.append(_line(node, depth, totals(node, memo), suffix=suffix))
    for child in node.children:
        _render_subtree(child, depth + 1, lines, memo, shown)


def totals(node: Node, memo: dict[int, Totals], visiting: set[int] | None = None) -> Totals:
    """``node``'s totals, its own or summed from its subtree (memoised in ``memo``, by node)."""
    if id(node) in memo:
        return memo[id(node)]
    visiting = set() if visiting is None else visiting
    own = own_totals(node)
    if node.kind in _SUMMING_KINDS and id(node) not in visiting:
        visiting.add(id(node))
        children = [totals(child, memo, visiting) for child in node.children]
        for name in ("latency", "input_tokens", "output_tokens", "cost"):
            values = [getattr(child, name) for child in children if getattr(child, name) is not None]
            if getattr(own, name) is None and values:
                setattr(own, name, sum(values))
                own.summed.add(name)
    memo[id(node)] = own
    return own


def own_totals(node: Node) -> Totals:
    """``node``'s own latency, tokens and cost (the total cost, else input plus output cost)."""
    props = node.props
    cost = _number(props.get("$ai_total_cost_usd"))
    if cost is None:
        parts = [_number(props.get(k)) for k in ("$ai_input_cost_usd", "$ai_output_cost_usd")]
        present = [p for p in parts if p is not None]
        cost = sum(present) if present else None
    return Totals(
        latency=_number(props.get("$ai_latency")),
        input_tokens=_integer(props.get("$ai_input_tokens")),
        output_tokens=_integer(props.get("$ai_output_tokens")),
        cost=cost,
    )


def _line(node: Node, depth: int, sums: Totals, trace: Trace | None = None, suffix: str = "") -> str:
    props = node.props
    if trace is not None and trace.root is None:
        head = "trace (no $ai_trace event)"
    else:
        head = f"{node.kind} {_text(props.get('$ai_span_name')) or '(unnamed)'}"
    parts = [_INDENT * depth + head]
    if trace is not None:
        parts.append(f"[{trace.trace_id}]")
    if sums.latency is not None:
        parts.append(_sum_mark(_milliseconds(sums.latency), "latency" in sums.summed))
    if node.kind in _MODEL_KINDS and props.get("$ai_model") is not None:
        parts.append(_text(props.get("$ai_model")))
    counts = [f"{n} {way}" for n, way in ((sums.input_tokens, "in"), (sums.output_tokens, "out")) if n is not None]
    if counts:
        tokens = " / ".join(counts) + " tokens"
        parts.append(_sum_mark(tokens, bool(sums.summed & {"input_tokens", "output_tokens"})))
    if sums.cost is not None:
        parts.append(_sum_mark(_dollars(sums.cost), "cost" in sums.summed))
    billed = _number(props.get("lambda_billed_duration_ms")) if trace is not None else None
    if billed is not None:
        # Lambda's figures, properties of the trace: the billed time says the most of them.
        parts.append(f"Lambda billed {billed:g} ms")
    if is_error(props):
        error = _text(props.get("$ai_error"))
        parts.append(f"ERROR: {error}" if error else "ERROR")
    if suffix:
        parts.append(suffix)
    return "  ".join(parts)


def is_error(props: Mapping[str, Any]) -> bool:
    """Whether the event says it failed (``$ai_is_error``, as a boolean or as text)."""
    return props.get("$ai_is_error") in (True, "true", "True")


def describe_other(event: Mapping[str, Any]) -> str:
    """One line for a trace's event that is not a node: an exception's type and message, the
    feedback's text, the metric's name and value, else the event's name."""
    name = str(event.get("event"))
    props: Mapping[str, Any] = event.get("properties") or {}
    if name == "$exception":
        exceptions = props.get("$exception_list")
        first = exceptions[0] if isinstance(exceptions, list) and exceptions else {}
        if not isinstance(first, Mapping):
            first = {}
        kind = _text(first.get("type") or props.get("$exception_type"))
        message = _text(first.get("value") or props.get("$exception_message"))
        return f"{name} {kind}: {message}" if kind and message else f"{name} {kind or message}".rstrip()
    if name == "$ai_feedback":
        return f"{name} {json.dumps(_text(props.get('$ai_feedback_text')), ensure_ascii=False)}"
    if name == "$ai_metric":
        value = props.get("$ai_metric_value")
        shown = value if _number(value) is not None else _text(value)
        return f"{name} {_text(props.get('$ai_metric_name'))} = {shown}"
    return name


def _sort_key(timestamp: object, index: int) -> SortKey:
    # Unparseable or missing timestamps sort after real ones, by arrival.
    if isinstance(timestamp, str):
        try:
            when = datetime.fromisoformat(timestamp)
        except ValueError:
            return (1, _NO_TIME, index)
        return (0, when if when.tzinfo else when.replace(tzinfo=UTC), index)
    return (1, _NO_TIME, index)


def _id(value: object) -> str | None:
    if value is None or value == "":
        return None
    return str(value)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _integer(value: object) -> int | None:
    number = _number(value)
    return None if number is None else int(number)


def _text(value: object) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 1] + "…"


def _milliseconds(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:.0f} ms" if ms >= 10 else f"{ms:.1f} ms"


def _dollars(value: float) -> str:
    return "$" + f"{value:.6f}".rstrip("0").rstrip(".")


def _sum_mark(text: str, summed: bool) -> str:
    return f"{text} (sum)" if summed else text
