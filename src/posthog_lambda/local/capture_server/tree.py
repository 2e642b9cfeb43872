"""Render received events as PostHog's LLM trace view arranges them, as plain deterministic text."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = ["render_trace_tree"]

_NODE_KINDS = {"$ai_span": "span", "$ai_generation": "generation", "$ai_embedding": "embedding"}
_MODEL_KINDS = ("generation", "embedding")
# Spans and the trace show the sum of their children where they lack a value of their own.
_SUMMING_KINDS = ("span", "trace")
_INDENT = "  "
_MAX_TEXT = 200
_NO_TIME = datetime.min.replace(tzinfo=UTC)

_SortKey = tuple[int, datetime, int]


@dataclass
class _Totals:
    latency: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost: float | None = None
    summed: set[str] = field(default_factory=set)


@dataclass
class _Node:
    kind: str
    props: Mapping[str, Any]
    key: _SortKey
    node_id: str | None = None
    parent_id: str | None = None
    children: list[_Node] = field(default_factory=list)


@dataclass
class _Trace:
    trace_id: str
    root: _Node | None = None
    nodes: list[_Node] = field(default_factory=list)
    others: list[tuple[_SortKey, Mapping[str, Any]]] = field(default_factory=list)

    def first_key(self) -> _SortKey:
        keys = [node.key for node in self.nodes] + [key for key, _ in self.others]
        if self.root is not None:
            keys.append(self.root.key)
        return min(keys)


def render_trace_tree(events: Iterable[Mapping[str, Any]]) -> str:
    """Lay out events as PostHog's trace view would: one block per ``$ai_trace_id``.

    Span, generation and embedding nodes hang under their ``$ai_parent_id`` (else the trace);
    those whose parent is not in the trace are listed apart, as PostHog does not show them.
    Other events carrying a trace id (``$exception``, ``$ai_feedback``, ``$ai_metric``) are
    listed under their trace. Siblings are ordered by timestamp, then by arrival.
    """
    traces: dict[str, _Trace] = {}
    untraced: list[_Node] = []
    for index, event in enumerate(events):
        name = event.get("event")
        props = event.get("properties")
        if not isinstance(name, str) or not isinstance(props, Mapping):
            continue
        key = _sort_key(event.get("timestamp"), index)
        trace_id = _id(props.get("$ai_trace_id"))
        if trace_id is None:
            if name in _NODE_KINDS or name == "$ai_trace":
                untraced.append(_Node(_NODE_KINDS.get(name, "trace"), props, key))
            continue
        trace = traces.setdefault(trace_id, _Trace(trace_id))
        if name == "$ai_trace" and trace.root is None:
            trace.root = _Node("trace", props, key, node_id=trace_id)
        elif name in _NODE_KINDS:
            node_id = _id(props.get("$ai_generation_id")) or _id(props.get("$ai_span_id"))
            parent_id = _id(props.get("$ai_parent_id")) or trace_id
            trace.nodes.append(_Node(_NODE_KINDS[name], props, key, node_id, parent_id))
        else:
            trace.others.append((key, event))

    if not traces and not untraced:
        return "(no $ai_* events received)"
    blocks = [_render_trace(trace) for trace in sorted(traces.values(), key=lambda t: (t.first_key(), t.trace_id))]
    if untraced:
        lines = ["$ai_* events without $ai_trace_id (in no trace):"]
        lines += [_line(node, 1, _own_totals(node)) for node in sorted(untraced, key=lambda n: n.key)]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _render_trace(trace: _Trace) -> str:
    root = trace.root or _Node("trace", {}, (2, _NO_TIME, -1), node_id=trace.trace_id)
    by_id: dict[str, _Node] = {}
    for node in trace.nodes:
        if node.node_id is not None and node.node_id != trace.trace_id:
            by_id.setdefault(node.node_id, node)
    orphans: list[_Node] = []
    for node in sorted(trace.nodes, key=lambda n: n.key):
        parent = root if node.parent_id == trace.trace_id else by_id.get(node.parent_id or "")
        if parent is None:
            orphans.append(node)
        else:
            parent.children.append(node)

    totals: dict[int, _Totals] = {}
    lines = [_line(root, 0, _totals(root, totals, set()), trace=trace)]
    shown: set[int] = set()
    for child in root.children:
        _render_subtree(child, 1, lines, totals, shown)
    if orphans:
        lines.append(f"{_INDENT}not shown by PostHog (parent not found):")
        for orphan in orphans:
            _render_subtree(orphan, 2, lines, totals, shown, suffix=f"parent {orphan.parent_id}")
    # Nodes whose parents point at each other are reached from neither the trace nor an orphan.
    looping = [node for node in trace.nodes if id(node) not in shown]
    if looping:
        lines.append(f"{_INDENT}not shown by PostHog (parents form a loop):")
        lines += [_line(node, 2, _own_totals(node), suffix=f"parent {node.parent_id}") for node in looping]
    if trace.others:
        lines.append(f"{_INDENT}events:")
        lines += [f"{_INDENT * 2}{_describe_other(event)}" for _, event in sorted(trace.others, key=lambda o: o[0])]
    return "\n".join(lines)


def _render_subtree(
    node: _Node, depth: int, lines: list[str], totals: dict[int, _Totals], shown: set[int], suffix: str = ""
) -> None:
    if id(node) in shown:
        return
    shown.add(id(node))
    lines.append(_line(node, depth, _totals(node, totals, set()), suffix=suffix))
    for child in node.children:
        _render_subtree(child, depth + 1, lines, totals, shown)


def _totals(node: _Node, memo: dict[int, _Totals], visiting: set[int]) -> _Totals:
    if id(node) in memo:
        return memo[id(node)]
    own = _own_totals(node)
    if node.kind in _SUMMING_KINDS and id(node) not in visiting:
        visiting.add(id(node))
        children = [_totals(child, memo, visiting) for child in node.children]
        for name in ("latency", "input_tokens", "output_tokens", "cost"):
            values = [getattr(child, name) for child in children if getattr(child, name) is not None]
            if getattr(own, name) is None and values:
                setattr(own, name, sum(values))
                own.summed.add(name)
    memo[id(node)] = own
    return own


def _own_totals(node: _Node) -> _Totals:
    props = node.props
    cost = _number(props.get("$ai_total_cost_usd"))
    if cost is None:
        parts = [_number(props.get(k)) for k in ("$ai_input_cost_usd", "$ai_output_cost_usd")]
        present = [p for p in parts if p is not None]
        cost = sum(present) if present else None
    return _Totals(
        latency=_number(props.get("$ai_latency")),
        input_tokens=_integer(props.get("$ai_input_tokens")),
        output_tokens=_integer(props.get("$ai_output_tokens")),
        cost=cost,
    )


def _line(node: _Node, depth: int, totals: _Totals, trace: _Trace | None = None, suffix: str = "") -> str:
    props = node.props
    if trace is not None and trace.root is None:
        head = "trace (no $ai_trace event)"
    else:
        head = f"{node.kind} {_text(props.get('$ai_span_name')) or '(unnamed)'}"
    parts = [_INDENT * depth + head]
    if trace is not None:
        parts.append(f"[{trace.trace_id}]")
    if totals.latency is not None:
        parts.append(_sum_mark(_milliseconds(totals.latency), "latency" in totals.summed))
    if node.kind in _MODEL_KINDS and props.get("$ai_model") is not None:
        parts.append(_text(props.get("$ai_model")))
    counts = [f"{n} {way}" for n, way in ((totals.input_tokens, "in"), (totals.output_tokens, "out")) if n is not None]
    if counts:
        tokens = " / ".join(counts) + " tokens"
        parts.append(_sum_mark(tokens, bool(totals.summed & {"input_tokens", "output_tokens"})))
    if totals.cost is not None:
        parts.append(_sum_mark(_dollars(totals.cost), "cost" in totals.summed))
    billed = _number(props.get("lambda_billed_duration_ms")) if trace is not None else None
    if billed is not None:
        # Lambda's figures, properties of the trace: the billed time says the most of them.
        parts.append(f"Lambda billed {billed:g} ms")
    if props.get("$ai_is_error") in (True, "true", "True"):
        error = _text(props.get("$ai_error"))
        parts.append(f"ERROR: {error}" if error else "ERROR")
    if suffix:
        parts.append(suffix)
    return "  ".join(parts)


def _describe_other(event: Mapping[str, Any]) -> str:
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


def _sort_key(timestamp: object, index: int) -> _SortKey:
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
