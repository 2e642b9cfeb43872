"""Cost of carrying a trace across functions, in one process: what ``@posthog_traced`` adds to an
invocation by looking for a carrier in its event (an API Gateway request's headers, an SQS batch)
and continuing it, against the same handler with ``parent=False`` (which never looks) given the
same event; and what ``posthog_lambda.aws.send_message`` adds to a send.

Each invocation is a small RAG handler's (a retrieval span and a generation with realistic
messages: 3 events), sent to a sink that discards them. Every round times a batch of invocations
for each contender, in an order that rotates from round to round; figures are per invocation,
the median over rounds, and "added" is the contender's time minus the plain event's, taken
within each round. The figures scale with the CPU share like the rest of an invocation's Python
code: they are given next to the invocation's own time, at full speed.

    .venv/bin/python bench/propagation.py [--write] [--rounds N] [--batch N]
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from time import perf_counter_ns
from typing import Any

import _payloads as realistic
from _common import SRC, arguments, median, positive, run_description
from _publish import publish

ROUNDS = 15
BATCH = 2000
HEADERS = {
    "accept": "application/json",
    "accept-encoding": "gzip, deflate, br",
    "accept-language": "en-GB,en;q=0.9",
    "authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.e30.signature",
    "content-length": "187",
    "content-type": "application/json",
    "cookie": "session=abc123; theme=dark",
    "host": "abc123.execute-api.eu-west-1.amazonaws.com",
    "origin": "https://app.example.com",
    "referer": "https://app.example.com/chat",
    "sec-ch-ua": '"Chromium";v="131", "Not_A Brand";v="24"',
    "sec-fetch-mode": "cors",
    "user-agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/131.0 Safari/537.36",
    "x-amzn-trace-id": "Root=1-67891233-abcdef012345678912345678",
    "x-forwarded-for": "203.0.113.7",
    "x-forwarded-port": "443",
    "x-forwarded-proto": "https",
}


class NullSink:
    def send(self, events: Any) -> None:
        pass


class Context:
    aws_request_id = "8f5ae6a4-3b0d-4e8e-9d43-c1a2b3c4d5e6"
    function_name = "rag"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:eu-west-1:123456789012:function:rag"
    memory_limit_in_mb = "512"
    log_group_name = "/aws/lambda/rag"
    log_stream_name = "2026/12/04/[$LATEST]0123456789abcdef"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


class StubSqs:
    """Takes a send as boto3's client would be called, and does nothing with it."""

    def send_message(self, **kwargs: Any) -> dict[str, str]:
        return {"MessageId": "m"}


def events(carrier: dict[str, str]) -> dict[str, Any]:
    body = '{"question": "what is the refund policy for orders shipped abroad?"}'
    request = {"version": "2.0", "routeKey": "POST /ask", "rawPath": "/ask", "body": body}

    def record(i: int, attributes: dict[str, str]) -> dict[str, Any]:
        return {
            "messageId": f"m-{i}",
            "body": body,
            "attributes": {"ApproximateReceiveCount": "1"},
            "messageAttributes": {k: {"stringValue": v, "dataType": "String"} for k, v in attributes.items()},
            "eventSource": "aws:sqs",
        }

    return {
        "plain event": {"question": "what is the refund policy for orders shipped abroad?"},
        "API Gateway request, no carrier": {**request, "headers": HEADERS},
        "API Gateway request with a carrier": {**request, "headers": {**HEADERS, **carrier}},
        "SQS batch of 10, no carrier": {"Records": [record(i, {}) for i in range(10)]},
        "SQS batch of 10, one trace": {"Records": [record(i, carrier) for i in range(10)]},
    }


def main() -> None:
    parser = arguments(__doc__, "the propagation section of BENCHMARKS.md and the Targets table")
    parser.add_argument("--rounds", type=positive, default=ROUNDS)
    parser.add_argument("--batch", type=positive, default=BATCH)
    args = parser.parse_args()
    sys.path.insert(0, str(SRC))
    from posthog_lambda import aws, configure, generation, inject, posthog_traced, span

    configure(enabled=True, privacy_mode=False, capture_input=True, capture_output=True, redact=True, sink=NullSink())

    def rag(event: Any, context: Any) -> str:
        with span("retrieve", input=realistic.QUERY) as s:
            s.update(output=realistic.RESULTS)
        with generation("answer", model="gpt-4o-mini", provider="openai", input=realistic.MESSAGES) as g:
            g.update(output=realistic.CHOICES, input_tokens=120, output_tokens=40)
        return "ok"

    handler = posthog_traced(name="rag")(rag)
    unlinked = posthog_traced(name="rag", parent=False)(rag)

    @posthog_traced(name="sender", distinct_id="user-1", session_id="session-1")
    def sender(event: Any, context: Any) -> dict[str, str]:
        with span("enqueue"):
            return dict(inject())

    context = Context()
    carrier = sender({}, context)
    shapes = events(carrier)
    sqs = StubSqs()

    def invocations(event: Any, traced: Callable[[Any, Any], str]) -> Callable[[int], int]:
        def run(n: int) -> int:
            start = perf_counter_ns()
            for _ in range(n):
                traced(event, context)
            return perf_counter_ns() - start

        return run

    def sends(helper: bool) -> Callable[[int], int]:
        @posthog_traced(name="sender")
        def send(event: Any, context: Any) -> int:
            with span("enqueue"):
                start = perf_counter_ns()
                for _ in range(event):
                    if helper:
                        aws.send_message(sqs, QueueUrl="q", MessageBody="hi")
                    else:
                        sqs.send_message(QueueUrl="q", MessageBody="hi")
                return perf_counter_ns() - start

        return lambda n: int(send(n, context))

    contenders: dict[str, Callable[[int], int]] = {}
    for name, event in shapes.items():
        contenders[f"{name}, parent=False"] = invocations(event, unlinked)
        contenders[name] = invocations(event, handler)
    contenders["send_message, as given"] = sends(False)
    contenders["aws.send_message"] = sends(True)
    names = list(contenders)
    per_op: dict[str, list[float]] = {name: [] for name in names}
    for run_index in range(args.rounds + 1):
        order = names[run_index % len(names) :] + names[: run_index % len(names)]
        timed = {name: contenders[name](args.batch) / args.batch / 1000 for name in order}
        if run_index:  # the first round warms up
            for name in names:
                per_op[name].append(timed[name])
    rows = [
        "| Invocation or call | µs each, as given (median) | µs each, looking for a carrier | added, µs |",
        "|---|---:|---:|---:|",
    ]
    added: dict[str, float] = {}
    pairs = [(name, f"{name}, parent=False") for name in shapes]
    pairs.append(("aws.send_message", "send_message, as given"))
    for name, baseline in pairs:
        # Within each round, then the median over rounds: the noise of one round cancels out.
        added[name] = median([a - b for a, b in zip(per_op[name], per_op[baseline], strict=True)])
        rows.append(f"| {name} | {median(per_op[baseline]):.1f} | {median(per_op[name]):.1f} | {added[name]:+.1f} |")
    base = per_op["plain event, parent=False"]
    table = "\n".join(rows)
    print(table)
    body = "\n".join(
        [
            run_description(),
            f"- {args.rounds} rounds × {args.batch} invocations (or sends) per contender; each invocation"
            " a retrieval span and a generation with realistic messages (3 events), to a discarding sink",
            "",
            table,
        ]
    )
    continued = added["API Gateway request with a carrier"]
    summary = [
        f"Continuing a trace from an API Gateway request's carrier adds {continued:.1f} µs to an invocation"
        f" of {median(base):.0f} µs; an SQS batch of 10 from one trace {added['SQS batch of 10, one trace']:.1f} µs;"
        f" `aws.send_message` adds {added['aws.send_message']:.1f} µs to a send (`bench/propagation.py`)",
    ]
    if args.write:
        publish("propagation", body, (), summary)


if __name__ == "__main__":
    main()
