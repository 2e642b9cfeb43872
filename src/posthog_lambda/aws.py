"""One line to carry the trace into what a handler sends with boto3: SQS, SNS, Lambda, Step Functions.

    from posthog_lambda import aws

    aws.send_message(sqs, QueueUrl=queue_url, MessageBody=body)
    aws.invoke(lambda_client, FunctionName="worker", Payload=payload)

Each helper calls the client's method of the same name with the same keyword arguments, the
current trace and span written into the request (``posthog_lambda.inject``), and returns the
method's answer unchanged; its exceptions pass through unchanged too. The receiving function's
``@posthog_traced`` finds the carrier where each of these puts it, and its spans nest under the
span that was current here. The caller's arguments are never changed in place.

Where it goes:

- SQS ``send_message``, ``send_message_batch`` (each entry), SNS ``publish``, ``publish_batch``:
  message attributes ``traceparent`` and ``baggage`` (String). A message holds at most 10
  attributes: one that has no room for two more goes without them.
- Lambda ``invoke``: the client context (``ClientContext``), as ``w3c`` (read by
  ``context.w3c()`` in awslambdaric 4.2 and later) and in ``custom`` (read everywhere), merged
  with a client context given; at most 3,583 bytes, as Lambda allows. Lambda passes a client
  context for synchronous invocations only: for ``InvocationType="Event"`` the carrier goes in the
  payload's ``_posthog`` field instead (a payload that is a JSON object).
- Step Functions ``start_execution``, ``start_sync_execution``: the input's ``_posthog`` field
  (an input that is a JSON object; none given is ``{}``). A state passing its input on to a
  Lambda task (the default payload) hands it over.

A request the carrier cannot go into is sent as given; the reason is logged and counted as
``trace_context_not_sent`` (``dropped_counts()``). Outside a trace nothing is written.
"""

from __future__ import annotations

import base64
import json

from ._drops import record_drop
from ._inbound import FIELD
from ._log import logger
from ._propagation import NOT_SENT, inject

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "invoke",
    "publish",
    "publish_batch",
    "send_message",
    "send_message_batch",
    "start_execution",
    "start_sync_execution",
]

MAX_ATTRIBUTES = 10
"""Message attributes an SQS or SNS message may have."""
MAX_CLIENT_CONTEXT = 3583
"""Bytes of base64 a Lambda client context may have."""


def _carrier() -> dict[str, str]:
    return dict(inject())


def _not_sent(what: str, why: str) -> None:
    record_drop(NOT_SENT, 1, f"{what} went without the trace: {why}")


def _attributes(attributes: Any, carrier: dict[str, str], what: str) -> Any:
    """``attributes`` (a message's MessageAttributes) with the carrier's, or as they were."""
    if attributes is None:
        attributes = {}
    if not isinstance(attributes, dict):
        _not_sent(what, f"its MessageAttributes is a {type(attributes).__name__}")
        return attributes
    added = {name: {"DataType": "String", "StringValue": value} for name, value in carrier.items()}
    if len({*attributes, *added}) > MAX_ATTRIBUTES:
        _not_sent(what, f"it has {len(attributes)} message attributes, no room for {len(added)} more")
        return attributes or None
    return {**attributes, **added}


def _with_attributes(kwargs: dict[str, Any], what: str) -> dict[str, Any]:
    carrier = _carrier()
    if not carrier:
        return kwargs
    attributes = _attributes(kwargs.get("MessageAttributes"), carrier, what)
    if attributes is None:
        return kwargs
    return {**kwargs, "MessageAttributes": attributes}


def _with_entry_attributes(kwargs: dict[str, Any], entries_key: str, what: str) -> dict[str, Any]:
    carrier = _carrier()
    entries = kwargs.get(entries_key)
    if not carrier or not isinstance(entries, list):
        return kwargs
    written = []
    for entry in entries:
        if isinstance(entry, dict):
            attributes = _attributes(entry.get("MessageAttributes"), carrier, what)
            entry = entry if attributes is None else {**entry, "MessageAttributes": attributes}
        written.append(entry)
    return {**kwargs, entries_key: written}


def _guarded(what: str, write: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    # A fault here must never stop the user's request: it goes as given.
    try:
        written: dict[str, Any] = write(kwargs)
        return written
    except Exception:
        logger.exception("writing the trace into %s failed; it goes without it", what)
        return kwargs


def send_message(client: Any, **kwargs: Any) -> Any:
    """``client.send_message(**kwargs)`` (an SQS client), the trace in its message attributes."""
    return client.send_message(**_guarded("an SQS message", lambda k: _with_attributes(k, "an SQS message"), kwargs))


def send_message_batch(client: Any, **kwargs: Any) -> Any:
    """``client.send_message_batch(**kwargs)`` (an SQS client), the trace in each entry's attributes."""
    what = "an SQS batch entry"
    return client.send_message_batch(**_guarded(what, lambda k: _with_entry_attributes(k, "Entries", what), kwargs))


def publish(client: Any, **kwargs: Any) -> Any:
    """``client.publish(**kwargs)`` (an SNS client), the trace in its message attributes."""
    return client.publish(**_guarded("an SNS message", lambda k: _with_attributes(k, "an SNS message"), kwargs))


def publish_batch(client: Any, **kwargs: Any) -> Any:
    """``client.publish_batch(**kwargs)`` (an SNS client), the trace in each entry's attributes."""
    what = "an SNS batch entry"
    write = lambda k: _with_entry_attributes(k, "PublishBatchRequestEntries", what)  # noqa: E731
    return client.publish_batch(**_guarded(what, write, kwargs))


def _with_field(text: Any, carrier: dict[str, str], what: str) -> Any:
    """A request's JSON document (str or bytes) with the carrier in its ``_posthog`` field, the
    rest as written (re-encoding would change numbers like ``1e400``); None, counted, when it is
    not a JSON object."""
    given_bytes = isinstance(text, bytes | bytearray)
    if given_bytes:
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            _not_sent(what, "it is not UTF-8")
            return None
    if not isinstance(text, str):
        _not_sent(what, f"it is a {type(text).__name__} (a file or stream is sent as it is)")
        return None
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        _not_sent(what, "it is not JSON")
        return None
    if not isinstance(document, dict):
        _not_sent(what, f"it is a JSON {type(document).__name__}, not an object")
        return None
    field = f'"{FIELD}":{json.dumps(carrier, separators=(",", ":"))}'
    if FIELD in document:
        # Replaced rather than added twice: the one place the document is written anew.
        document[FIELD] = carrier
        try:
            written = json.dumps(document, separators=(",", ":"), allow_nan=False)
        except ValueError:
            _not_sent(what, f"its {FIELD} field cannot be replaced in it")
            return None
    else:
        inner = text.rstrip()[:-1].rstrip()  # an object's text ends with its closing brace
        written = f"{inner}{field}}}" if inner.endswith("{") else f"{inner},{field}}}"
    return written.encode() if given_bytes else written


def _with_input_field(kwargs: dict[str, Any], key: str, what: str) -> dict[str, Any]:
    carrier = _carrier()
    if not carrier:
        return kwargs
    written = _with_field(kwargs.get(key, "{}"), carrier, what)
    return kwargs if written is None else {**kwargs, key: written}


def _with_client_context(kwargs: dict[str, Any]) -> dict[str, Any]:
    what = "a Lambda invocation"
    if kwargs.get("InvocationType") == "Event":
        # Lambda hands a client context to synchronous invocations only.
        return _with_input_field(kwargs, "Payload", what)
    carrier = _carrier()
    if not carrier:
        return kwargs
    given = kwargs.get("ClientContext")
    context: dict[str, Any] = {}
    if given is not None:
        try:
            decoded = json.loads(base64.b64decode(given, validate=True))
        except (TypeError, ValueError, RecursionError):
            _not_sent(what, "its ClientContext is not base64 of JSON")
            return kwargs
        if not isinstance(decoded, dict):
            _not_sent(what, "its ClientContext is not a JSON object")
            return kwargs
        context = decoded
    custom = context.get("custom")
    context["custom"] = {**custom, **carrier} if isinstance(custom, dict) else dict(carrier)
    context["w3c"] = {**carrier}
    encoded = base64.b64encode(json.dumps(context, separators=(",", ":")).encode()).decode()
    if len(encoded) > MAX_CLIENT_CONTEXT:
        _not_sent(what, f"its ClientContext would be {len(encoded)} bytes, over {MAX_CLIENT_CONTEXT}")
        return kwargs
    return {**kwargs, "ClientContext": encoded}


def invoke(client: Any, **kwargs: Any) -> Any:
    """``client.invoke(**kwargs)`` (a Lambda client), the trace in its client context (in the
    payload for ``InvocationType="Event"``)."""
    return client.invoke(**_guarded("a Lambda invocation", _with_client_context, kwargs))


def start_execution(client: Any, **kwargs: Any) -> Any:
    """``client.start_execution(**kwargs)`` (a Step Functions client), the trace in its input."""
    what = "a Step Functions execution"
    return client.start_execution(**_guarded(what, lambda k: _with_input_field(k, "input", what), kwargs))


def start_sync_execution(client: Any, **kwargs: Any) -> Any:
    """``client.start_sync_execution(**kwargs)`` (Step Functions Express), the trace in its input."""
    what = "a Step Functions execution"
    return client.start_sync_execution(**_guarded(what, lambda k: _with_input_field(k, "input", what), kwargs))
