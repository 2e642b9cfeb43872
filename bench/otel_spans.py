"""OpenTelemetry GenAI spans from a Lambda handler to PostHog: what each way costs the function.

One handler (an agent span, an embedding, three chat calls each with its HTTP span, a tool call:
6 GenAI spans and 3 others, with the realistic payloads' messages as the GenAI conventions put
them) runs with a TracerProvider of each contender's, in this process, in turns that rotate
from round to round:

- ``none``: no processor: what the SDK's spans cost on their own, the baseline;
- ``@posthog_traced alone``: the same handler decorated, with no processor: what the
  decorator's own trace costs, to tell the processor's share from it;
- ``posthog-lambda``: ``PostHogLambdaSpanProcessor`` in a ``@posthog_traced`` handler, the
  socket read by a process of its own that discards what it reads;
- ``posthog-lambda OTLP``: ``BatchSpanProcessor`` and the OTLP/HTTP exporter to the extension's
  own OTLP server (its code, in a process of its own) and ``force_flush()`` before returning;
- ``PostHogSpanProcessor``: posthog-python's (``posthog.ai.otel``; a ``BatchSpanProcessor`` and
  the OTLP exporter to PostHog) to a local stand-in, and ``force_flush()`` before returning;
- ``BatchSpanProcessor + OTLP``: the OTLP/HTTP exporter to a local collector stand-in, and
  ``force_flush()`` before returning, as OpenTelemetry on Lambda does.

Figures per invocation: the handler's wall time (what it adds to the response) and the
process's CPU time (the exporters' threads included), each minus the baseline's in the same
round, then the median over rounds; per span, that over the 6 GenAI spans. The stand-ins answer
at once on loopback: PostHog or a collector over a real network adds its round trip to every
``force_flush()``, which the posthog-lambda processor never makes.

    .venv/bin/python bench/otel_spans.py [--write] [--rounds N] [--invocations N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _payloads as realistic
from _common import ROOT, SRC, arguments, median, positive, run_description
from _publish import Target, publish

ROUNDS = 15
INVOCATIONS = 40
GENAI_SPANS = 6
DECORATOR = "@posthog_traced alone"
SHARE_MB = 512
"""Also measured at this memory size's CPU share: what a function running an agent is often given."""

_SINK = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
print(server.server_address[1], flush=True)
server.serve_forever()
"""

_EXTENSION_OTLP = """
import sys
sys.path[:0] = sys.argv[1:3]
from posthog_lambda_extension._drops import Drops
from posthog_lambda_extension._otlp import Otlp
from posthog_lambda_extension._otlp_server import OtlpServer

otlp = Otlp(lambda header, records: None, environ={})
server = OtlpServer(otlp.receive, Drops(), port=0)
server.start()
print(server.port, flush=True)
import time
while True:
    time.sleep(0.5)
    otlp.release()  # what a flush does with them (its events are made, then dropped here)
"""

_DISCARD = """
import os, socket, sys, threading
path = sys.argv[1]
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(path)
listener.listen(16)
print("ready", flush=True)
def drain(conn):
    while conn.recv(1 << 20):
        pass
while True:
    conn, _ = listener.accept()
    threading.Thread(target=drain, args=(conn,), daemon=True).start()
"""


def _parts(messages: list[dict[str, Any]]) -> str:
    """Messages as the current GenAI conventions record them (``gen_ai.input.messages``)."""
    shaped = []
    for message in messages:
        parts: list[dict[str, Any]] = [{"type": "text", "content": message["content"]}]
        for call in message.get("tool_calls", ()):
            function = call["function"]
            parts.append(
                {"type": "tool_call", "id": call["id"], "name": function["name"], "arguments": function["arguments"]}
            )
        shaped.append({"role": message["role"], "parts": parts})
    return json.dumps(shaped)


CHAT = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o-mini",
    "gen_ai.request.temperature": 0.2,
    "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
    "gen_ai.response.finish_reasons": ("tool_calls",),
    "gen_ai.usage.input_tokens": 412,
    "gen_ai.usage.output_tokens": 57,
    "gen_ai.input.messages": _parts(realistic.MESSAGES),
    "gen_ai.output.messages": _parts(realistic.CHOICES),
}
EMBEDDING = {
    "gen_ai.operation.name": "embeddings",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "text-embedding-3-small",
    "gen_ai.usage.input_tokens": 11,
}
AGENT = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "support"}
TOOL = {
    "gen_ai.operation.name": "execute_tool",
    "gen_ai.tool.name": "lookup_order",
    "gen_ai.tool.call.arguments": json.dumps(realistic.QUERY),
    "gen_ai.tool.call.result": json.dumps(realistic.RESULTS),
}
HTTP = {
    "http.request.method": "POST",
    "url.full": "https://api.openai.com/v1/chat/completions",
    "http.response.status_code": 200,
}


def handle(tracer: Any) -> None:
    with tracer.start_as_current_span("invoke_agent support", attributes=AGENT):
        with tracer.start_as_current_span("embeddings text-embedding-3-small", attributes=EMBEDDING):
            pass
        for _ in range(3):
            with (
                tracer.start_as_current_span("chat gpt-4o-mini", attributes=CHAT),
                tracer.start_as_current_span("POST", attributes=HTTP),
            ):
                pass
        with tracer.start_as_current_span("execute_tool lookup_order", attributes=TOOL):
            pass


def _started(script: str, *args: str) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


def contenders(socket_path: str, sink_port: str, otlp_port: str) -> dict[str, Callable[[], None]]:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from posthog.ai.otel import PostHogSpanProcessor

    from posthog_lambda import posthog_traced
    from posthog_lambda.otel import PostHogLambdaSpanProcessor

    def plain(provider: TracerProvider) -> Callable[[], None]:
        tracer = provider.get_tracer("bench")

        def invocation() -> None:
            handle(tracer)
            provider.force_flush()

        return invocation

    def traced(provider: TracerProvider) -> Callable[[], None]:
        """``plain``'s invocation as a ``@posthog_traced`` handler."""
        run = plain(provider)
        handler = posthog_traced(name="handler", capture_input=False, capture_output=False)(
            lambda event, context: run()
        )
        return lambda: handler({}, None)

    none = TracerProvider()
    ours = TracerProvider()
    ours.add_span_processor(PostHogLambdaSpanProcessor())

    over_otlp = TracerProvider()
    over_otlp.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=f"http://127.0.0.1:{otlp_port}/v1/traces"))
    )
    posthog_python = TracerProvider()
    posthog_python.add_span_processor(PostHogSpanProcessor(api_key="phc_bench", host=f"http://127.0.0.1:{sink_port}"))
    collector = TracerProvider()
    collector.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=f"http://127.0.0.1:{sink_port}/v1/traces"))
    )
    return {
        "none": plain(none),
        DECORATOR: traced(TracerProvider()),
        "posthog-lambda": traced(ours),
        "posthog-lambda OTLP": plain(over_otlp),
        "PostHogSpanProcessor": plain(posthog_python),
        "BatchSpanProcessor + OTLP": plain(collector),
    }


def measure(runs: dict[str, Callable[[], None]], rounds: int, invocations: int) -> dict[str, dict[str, list[float]]]:
    """Per contender, per round: the median and mean wall ms of an invocation and its mean CPU ms."""
    names = list(runs)
    found: dict[str, dict[str, list[float]]] = {name: {"wall": [], "mean": [], "cpu": []} for name in names}
    for run in runs.values():  # warm-up: connections, imports, caches
        for _ in range(5):
            run()
    for index in range(rounds):
        order = names[index % len(names) :] + names[: index % len(names)]
        for name in order:
            run = runs[name]
            walls = []
            cpu_started = time.process_time()
            for _ in range(invocations):
                started = time.perf_counter()
                run()
                walls.append((time.perf_counter() - started) * 1000)
            found[name]["cpu"].append((time.process_time() - cpu_started) * 1000 / invocations)
            found[name]["wall"].append(median(walls))
            found[name]["mean"].append(sum(walls) / len(walls))
    return found


def added(found: dict[str, dict[str, list[float]]], name: str, what: str) -> float:
    return median([value - base for value, base in zip(found[name][what], found["none"][what], strict=True)])


def run(rounds: int, invocations: int, procs: str | None = None) -> dict[str, dict[str, list[float]]]:
    """The measurement, in this process. ``procs``: a cgroup's ``cgroup.procs`` to join first
    (Lambda's CPU share), with the extension's stand-ins, which share the sandbox's CPU on
    Lambda; the PostHog and collector stand-ins stay out: they are elsewhere."""
    with tempfile.TemporaryDirectory() as tmp:
        socket_path = str(Path(tmp) / "posthog.sock")
        os.environ["POSTHOG_LAMBDA_SOCKET"] = socket_path
        os.environ["POSTHOG_LAMBDA_SPOOL_DIR"] = str(Path(tmp) / "spool")
        os.environ["POSTHOG_API_KEY"] = "phc_bench"
        sys.path.insert(0, str(SRC))
        processes = []
        try:
            sink, sink_port = _started(_SINK)
            processes.append(sink)
            if procs is not None:
                Path(procs).write_text(str(os.getpid()))
            discard, _ = _started(_DISCARD, socket_path)
            server, otlp_port = _started(_EXTENSION_OTLP, str(SRC), str(ROOT / "extension"))
            processes += [discard, server]
            return measure(contenders(socket_path, sink_port, otlp_port), rounds, invocations)
        finally:
            for process in processes:
                process.kill()
                process.wait()


def at_share(memory_mb: int, rounds: int, invocations: int) -> dict[str, dict[str, list[float]]]:
    """The measurement in a child process given Lambda's CPU share for ``memory_mb``."""
    sys.path.insert(0, str(SRC))
    from posthog_lambda.local.emulator.cpu import CpuShare

    share = CpuShare(memory_mb)
    try:
        command = [sys.executable, __file__, "--join", str(share.procs), "--rounds", str(rounds)]
        done = subprocess.run(
            [*command, "--invocations", str(invocations)], cwd=ROOT, capture_output=True, text=True, check=False
        )
        if done.returncode:
            raise SystemExit(f"otel_spans.py at {memory_mb} MB's share failed:\n{done.stderr[-2000:]}")
        found: dict[str, dict[str, list[float]]] = json.loads(done.stdout.strip().splitlines()[-1])
        return found
    finally:
        share.close()


def table(
    found: dict[str, dict[str, list[float]]], stat: str = "wall"
) -> tuple[list[str], dict[str, tuple[float, float]]]:
    """The rows, and per contender (added wall ms, added CPU ms); ``stat`` ``wall`` (the median
    invocation) or ``mean`` (under a CPU quota, where a few invocations wait for the next period)."""
    base_wall, base_cpu = median(found["none"][stat]), median(found["none"]["cpu"])
    which = "median" if stat == "wall" else "mean"
    rows = [
        f"| Contender | response ms ({which}) | adds to the response | CPU ms per invocation "
        "| adds CPU per GenAI span |",
        "|---|---:|---:|---:|---:|",
        f"| none (the SDK's spans alone) | {base_wall:.3f} | | {base_cpu:.3f} | |",
    ]
    summary = {}
    for name in list(found)[1:]:
        wall, cpu = added(found, name, stat), added(found, name, "cpu")
        summary[name] = (wall, cpu)
        rows.append(
            f"| {name} | {median(found[name][stat]):.3f} | +{wall:.3f} ms | {median(found[name]['cpu']):.3f} "
            f"| +{cpu * 1000 / GENAI_SPANS:.0f} µs |"
        )
    return rows, summary


def main() -> None:
    parser = arguments(__doc__, "BENCHMARKS.md's otel_spans section and the Targets table")
    parser.add_argument("--rounds", type=positive, default=ROUNDS)
    parser.add_argument("--invocations", type=positive, default=INVOCATIONS)
    parser.add_argument("--memory", type=positive, default=SHARE_MB, help="also at this memory size's CPU share")
    parser.add_argument("--join", help=argparse.SUPPRESS)  # the child at_share starts: a cgroup.procs to join
    args = parser.parse_args()
    if args.join:
        print(json.dumps(run(args.rounds, args.invocations, args.join)))
        return
    found = run(args.rounds, args.invocations)
    from posthog_lambda.local.emulator.cpu import MB_PER_VCPU

    rows, summary = table(found)
    share_rounds = args.rounds
    shared_rows, shared = table(at_share(args.memory, share_rounds, args.invocations), "mean")
    ours_wall, ours_cpu = summary["posthog-lambda"]
    own_cpu = median([a - b for a, b in zip(found["posthog-lambda"]["cpu"], found[DECORATOR]["cpu"], strict=True)])
    otlp_wall, _ = summary["BatchSpanProcessor + OTLP"]
    python_wall, _ = summary["PostHogSpanProcessor"]
    lines = [
        run_description(),
        "",
        f"`.venv/bin/python bench/otel_spans.py --rounds {args.rounds} --invocations {args.invocations}`: "
        f"{args.rounds} rounds of {args.invocations} invocations per contender, each invocation "
        f"{GENAI_SPANS} GenAI spans and 3 HTTP spans.",
        "",
        "At full speed (this machine's vCPU):",
        "",
        *rows,
        "",
        f"At {args.memory} MB's CPU share ({args.memory / MB_PER_VCPU:.0%} of a vCPU: a CFS quota on this process and "
        f"the extension's stand-ins, `posthog_lambda.local`'s `CpuShare`), {share_rounds} rounds; means, since a "
        "quota lets most invocations run at full speed and stops the few that find it spent until the next "
        "100 ms period:",
        "",
        *shared_rows,
        "",
        f"The span processor adds {ours_wall:.3f} ms to the response, the decorator's trace included "
        f"({ours_cpu * 1000 / GENAI_SPANS:.0f} µs of CPU per GenAI span; {own_cpu * 1000 / GENAI_SPANS:.0f} µs "
        f"beyond the decorator's own); exporting OTLP from the function with "
        f"`force_flush()` adds {otlp_wall:.3f} ms, and posthog-python's `PostHogSpanProcessor` "
        f"{python_wall:.3f} ms, before any network round trip. To the extension's OTLP server the same "
        f"export adds {summary['posthog-lambda OTLP'][0]:.3f} ms: it answers once it has decoded the request "
        "(so that a bad one gets its 4xx), which the collector stand-in does not. At "
        f"{args.memory} MB's share: {shared['posthog-lambda'][0]:.3f} ms against "
        f"{shared['BatchSpanProcessor + OTLP'][0]:.3f} ms (and {shared['posthog-lambda OTLP'][0]:.3f} ms to the "
        "extension's OTLP server, whose decoding now shares the function's quota).",
    ]
    targets = [
        Target(
            16,
            "OpenTelemetry GenAI spans: the span processor adds less to the response than OTLP + force_flush()",
            f"+{ours_wall:.3f} vs +{otlp_wall:.3f} ms",
            ours_wall < otlp_wall,
        )
    ]
    summary_lines = [
        f"OpenTelemetry GenAI spans: `PostHogLambdaSpanProcessor` adds {ours_wall:.2f} ms to a response "
        f"with {GENAI_SPANS} GenAI spans; OTLP with `force_flush()` adds {otlp_wall:.2f} ms and posthog-python's "
        f"`PostHogSpanProcessor` {python_wall:.2f} ms on loopback, plus a network round trip on Lambda "
        f"({shared['posthog-lambda'][0]:.2f} against {shared['BatchSpanProcessor + OTLP'][0]:.2f} ms at "
        f"{args.memory} MB's CPU share)"
    ]
    body = "\n".join(lines)
    print(body)
    if args.write:
        publish("otel_spans", body, targets, summary_lines)


if __name__ == "__main__":
    main()
