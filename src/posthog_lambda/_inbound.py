"""Where a trace's carrier sits in what Lambda hands a handler (``_propagation`` reads it).

- API Gateway (REST and HTTP APIs), Function URLs, ALB: the request's headers (``headers``, and
  ``multiValueHeaders`` for REST APIs and ALB).
- SQS: each record's message attributes; for a message SNS delivered without raw delivery, the
  attributes inside the SNS envelope that is its body. SNS: each record's message attributes.
  One carrier per record: a batch may hold messages of several traces.
- EventBridge: ``detail._posthog``. Step Functions, or any JSON event: a top-level ``_posthog``.
- A direct invoke: the client context's ``w3c`` (``context.w3c()``, awslambdaric 4.2 and later)
  or its ``custom``.

Only events of these shapes are looked into, and only as deep as said: the cost for any other
event is a few dictionary lookups.
"""

from __future__ import annotations

from ._propagation import KEYS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

FIELD = "_posthog"
"""The carrier's field in a JSON event: Step Functions input, EventBridge detail, a payload."""


def carriers(event: Any, context: Any) -> list[Mapping[str, Any]]:
    """Every carrier the invocation brought, in order: one per record for a batch."""
    found: list[Mapping[str, Any]] = []
    if isinstance(event, dict):
        records = event.get("Records")
        if isinstance(records, list):
            for record in records:
                carrier = _record_carrier(record)
                if carrier is not None:
                    found.append(carrier)
        else:
            carrier = _event_carrier(event)
            if carrier is not None:
                found.append(carrier)
    if not found:
        carrier = _client_context_carrier(context)
        if carrier is not None:
            found.append(carrier)
    return found


def _event_carrier(event: dict[str, Any]) -> Mapping[str, Any] | None:
    headers = event.get("headers")
    if isinstance(headers, dict) and headers:
        multi = event.get("multiValueHeaders")
        if isinstance(multi, dict) and multi:
            return {**multi, **headers}
        return headers
    multi = event.get("multiValueHeaders")
    if isinstance(multi, dict) and multi:
        return multi
    own = event.get(FIELD)
    if isinstance(own, dict):
        return own
    detail = event.get("detail")
    if isinstance(detail, dict) and "detail-type" in event:
        own = detail.get(FIELD)
        if isinstance(own, dict):
            return own
    return None


def _record_carrier(record: Any) -> Mapping[str, Any] | None:
    if not isinstance(record, dict):
        return None
    attributes = record.get("messageAttributes")  # SQS
    if isinstance(attributes, dict):
        carrier = _attribute_values(attributes, "stringValue")
        if carrier:
            return carrier
        body = record.get("body")
        if isinstance(body, str) and body.startswith("{") and '"TopicArn"' in body:
            return _sns_envelope_carrier(body)
        return None
    sns = record.get("Sns")  # SNS
    if isinstance(sns, dict):
        attributes = sns.get("MessageAttributes")
        if isinstance(attributes, dict):
            return _attribute_values(attributes, "Value") or None
    return None


def _sns_envelope_carrier(body: str) -> Mapping[str, Any] | None:
    import json

    try:
        envelope = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(envelope, dict) or envelope.get("Type") != "Notification":
        return None
    attributes = envelope.get("MessageAttributes")
    return (_attribute_values(attributes, "Value") or None) if isinstance(attributes, dict) else None


def _attribute_values(attributes: dict[str, Any], field: str) -> dict[str, Any]:
    # Attributes come as {name: {"stringValue"|"Value": ..., "dataType"|"Type": ...}}.
    carrier: dict[str, Any] = {}
    for name, attribute in attributes.items():
        if isinstance(name, str) and name.lower() in KEYS:
            carrier[name] = attribute.get(field) if isinstance(attribute, dict) else attribute
    return carrier


def _client_context_carrier(context: Any) -> Mapping[str, Any] | None:
    w3c = getattr(context, "w3c", None)
    if callable(w3c):
        try:
            fields = w3c()
        except Exception:
            fields = None
        if isinstance(fields, dict) and fields:
            return fields
    client_context = getattr(context, "client_context", None)
    custom = getattr(client_context, "custom", None) if client_context is not None else None
    if isinstance(custom, dict) and any(isinstance(k, str) and k.lower() in KEYS for k in custom):
        return custom
    return None
