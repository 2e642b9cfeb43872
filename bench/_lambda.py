"""The same handler, traced in each way a user could choose, each in its own local Lambda
environment (``posthog_lambda.local``: the real runtime interface client, the real extension,
Lambda's freeze between invocations), invoked in turns so the machine's noise lands on all.

Each setup that sends has its own receiver, answering every request after the same delay: a
local PostHog capture server, or for Langfuse a stand-in that accepts whatever Langfuse posts
(``/api/public/otel/v1/traces``, OpenTelemetry's protobuf, is all Langfuse 5 sends for traces;
its batch ingestion endpoint is answered too) and counts the spans in it. After a run, each
setup must have delivered every event or span of every invocation: a setup that lost its data
would look cheap.
"""

from __future__ import annotations

import contextlib
import gzip
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from _common import RemoteCaptureServer, link_with_dependencies, median, p99, serve
from _handlers import (
    LANGFUSE,
    POSTHOG_LAMBDA,
    POSTHOG_LAMBDA_REALISTIC,
    POSTHOG_PYTHON,
    UNTRACED,
    UNTRACED_REALISTIC,
    expected_total,
)

# A layer whose extension only registers and waits for events: what any extension costs in this
# environment, to tell it apart from what posthog-lambda's costs. Started the way posthog-lambda's
# launcher starts its extension, and as frugal before registering (plain socket HTTP).
NOOP_LAUNCHER = """#!/bin/sh
exec python3 -I -S /opt/noop.py
"""
NOOP_EXTENSION = """
import json, os, socket

host, port = os.environ["AWS_LAMBDA_RUNTIME_API"].split(":")

def call(method, path, headers, body=b""):
    head = [f"{method} /2020-01-01/extension{path} HTTP/1.1", f"Host: {host}", "Connection: close",
            f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers.items())]
    with socket.create_connection((host, int(port))) as connection:
        connection.sendall("\\r\\n".join(head).encode() + b"\\r\\n\\r\\n" + body)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\\r\\n\\r\\n")
    return head.decode("latin-1").lower(), body

events = json.dumps({"events": ["INVOKE", "SHUTDOWN"]}).encode()
head, _ = call("POST", "/register", {"Lambda-Extension-Name": "noop"}, events)
identifier = head.split("lambda-extension-identifier:")[1].split("\\r\\n")[0].strip()
while True:
    _, event = call("GET", "/event/next", {"Lambda-Extension-Identifier": identifier})
    if json.loads(event).get("eventType") == "SHUTDOWN":
        break
"""


def noop_layer(into: Path) -> Path:
    (into / "extensions").mkdir(parents=True)
    launcher = into / "extensions" / "noop"
    launcher.write_text(NOOP_LAUNCHER)
    launcher.chmod(0o755)
    (into / "noop.py").write_text(NOOP_EXTENSION)
    return into


@dataclass(frozen=True)
class Setup:
    key: str
    label: str
    source: str
    layer: str = ""
    """``posthog-lambda``, ``noop`` (a do-nothing extension) or none."""
    env: Mapping[str, str] = field(default_factory=dict)
    packages: tuple[str, ...] = ()
    """Installed distributions linked into the function's directory, with their dependencies."""
    sends: str | None = None
    """``posthog`` or ``langfuse``: what its receiver is."""


LAYER = "posthog-lambda"


def _posthog_lambda(mode: str, label: str, source: str = POSTHOG_LAMBDA, key: str = "") -> Setup:
    return Setup(key or mode, label, source, LAYER, {"POSTHOG_LAMBDA_FLUSH": mode}, sends="posthog")


SETUPS = {
    setup.key: setup
    for setup in (
        Setup("none", "a. no tracing", UNTRACED),
        Setup("none_noop", "a'. no tracing, a do-nothing extension", UNTRACED, layer="noop"),
        # The same layer, configuration and receiver as b. `end` mode: only the decorator differs.
        Setup(
            "none_layer",
            "a''. no tracing, posthog-lambda's layer attached (`end` mode)",
            UNTRACED,
            LAYER,
            {"POSTHOG_LAMBDA_FLUSH": "end"},
            sends="posthog",
        ),
        _posthog_lambda("end", "b. posthog-lambda, `end` mode"),
        _posthog_lambda("batch", "b. posthog-lambda, `batch` mode"),
        _posthog_lambda("adaptive", "b. posthog-lambda, `adaptive` mode (default)"),
        # The payloads real apps record (``_payloads``): the same comparison as a'' against b.
        Setup(
            "none_layer_real",
            "e. no tracing, realistic payloads, posthog-lambda's layer attached (`end` mode)",
            UNTRACED_REALISTIC,
            LAYER,
            {"POSTHOG_LAMBDA_FLUSH": "end"},
            sends="posthog",
        ),
        Setup(
            "none_layer_real_batch",
            "e. no tracing, realistic payloads, posthog-lambda's layer attached (`batch` mode)",
            UNTRACED_REALISTIC,
            LAYER,
            {"POSTHOG_LAMBDA_FLUSH": "batch"},
            sends="posthog",
        ),
        _posthog_lambda(
            "end", "f. posthog-lambda, realistic payloads, `end` mode", POSTHOG_LAMBDA_REALISTIC, "end_real"
        ),
        _posthog_lambda(
            "batch", "f. posthog-lambda, realistic payloads, `batch` mode", POSTHOG_LAMBDA_REALISTIC, "batch_real"
        ),
        Setup("posthog", "c. posthog-python Client + flush()", POSTHOG_PYTHON, packages=("posthog",), sends="posthog"),
        Setup("langfuse", "d. Langfuse `@observe` + flush()", LANGFUSE, packages=("langfuse",), sends="langfuse"),
    )
}


class LangfuseSink:
    """Answers Langfuse's requests after ``delay_ms`` and counts the spans it was sent."""

    def __init__(self, delay_ms: float) -> None:
        self.spans = 0
        self.requests = 0
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                spans = _otlp_spans(body) if self.path.endswith("/v1/traces") else 0
                time.sleep(delay_ms / 1000)
                with outer._lock:
                    outer.requests += 1
                    outer.spans += spans
                # OTLP takes any 2xx; batch ingestion answers 207 with per-event results.
                status, answer = (207, b'{"successes": [], "errors": []}') if "ingestion" in self.path else (200, b"")
                self.send_response(status)
                self.send_header("Content-Type", "application/json" if answer else "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self._server = serve(Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _otlp_spans(body: bytes) -> int:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    return sum(len(scope.spans) for resource in request.resource_spans for scope in resource.scope_spans)


@dataclass
class Samples:
    latency: list[float] = field(default_factory=list)
    """Response latency, ms: what the caller waits."""
    post: list[float] = field(default_factory=list)
    """Post-runtime duration, ms: billed time after the response."""
    duration: list[float] = field(default_factory=list)
    """Invocation duration, ms: what is billed (rounded up to the ms by Lambda)."""
    init: list[float] = field(default_factory=list)
    """Init duration of cold starts, ms."""
    register: list[float] = field(default_factory=list)
    """The extension's start to its register call, at cold starts, ms."""


class Functions:
    """One local Lambda environment per setup, with its receiver, in a temporary ``root``."""

    def __init__(self, keys: list[str], root: Path, layer: Path, delay_ms: float) -> None:
        self.setups = [SETUPS[key] for key in keys]
        self.root = root
        self.layer = layer
        self.delay_ms = delay_ms
        self.invocations = {setup.key: Counts() for setup in self.setups}
        self.noop = noop_layer(root / f"noop-layer-{delay_ms:g}ms")
        self.envs: dict[str, Any] = {}
        self.receivers: dict[str, Any] = {}
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Functions:
        from posthog_lambda.local import LambdaEnvironment

        for setup in self.setups:
            function = self.root / f"{setup.key}-{self.delay_ms:g}ms"
            function.mkdir()
            (function / "app.py").write_text(setup.source)
            if setup.packages:
                link_with_dependencies(function, *setup.packages)
            # Each environment has a /tmp of its own, as on AWS: the default socket path is theirs.
            env = dict(setup.env)
            if setup.sends == "posthog":
                server = RemoteCaptureServer(self.delay_ms)
                self._stack.callback(server.stop)
                env |= {"POSTHOG_API_KEY": "phc_local", "POSTHOG_HOST": server.url}
                self.receivers[setup.key] = server
            elif setup.sends == "langfuse":
                sink = LangfuseSink(self.delay_ms)
                self._stack.callback(sink.stop)
                env |= {
                    "LANGFUSE_PUBLIC_KEY": "pk-lf-local",
                    "LANGFUSE_SECRET_KEY": "sk-lf-local",
                    "LANGFUSE_BASE_URL": sink.url,
                }
                self.receivers[setup.key] = sink
            layer = {LAYER: self.layer, "noop": self.noop}.get(setup.layer)
            environment = LambdaEnvironment(function, "app.handler", layer_dir=layer, env=env, timeout_s=30)
            self.envs[setup.key] = self._stack.enter_context(environment)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def invoke(self, key: str, spans: int = 10, generations: int = 2) -> Any:
        result = self.envs[key].invoke(
            {"q": "what is the capital of france", "spans": spans, "generations": generations}
        )
        if result.status != "success" or result.payload != {"total": expected_total(spans, generations)}:
            raise SystemExit(f"{key}: the invocation failed: {result.status} {result.error} {result.logs[-5:]}")
        self.invocations[key].add(spans, generations)
        return result

    def run(
        self, rounds: int, spans: int = 10, generations: int = 2, cold: bool = False, keys: list[str] | None = None
    ) -> dict[str, Samples]:
        """Invoke every setup (or those of ``keys``) once per round, in an order rotating from
        round to round; warm, or after a shutdown (``cold``). Samples in round order."""
        keys = keys or [setup.key for setup in self.setups]
        samples = {key: Samples() for key in keys}
        for n in range(rounds):
            shift = n % len(keys)
            for key in keys[shift:] + keys[:shift]:
                if cold:
                    self.envs[key].shutdown()
                result = self.invoke(key, spans, generations)
                taken = samples[key]
                if cold:
                    assert result.init is not None
                    taken.init.append(result.init.duration_ms)
                    taken.register += [e.register_ms for e in result.init.extensions if e.register_ms is not None]
                else:
                    taken.latency.append(result.response_latency_ms or 0.0)
                    taken.post.append(result.post_runtime_ms or 0.0)
                    taken.duration.append(result.duration_ms)
        return samples

    def check_delivered(self) -> None:
        """After the environments have shut down (flushing what they hold): every setup that
        sends delivered everything, exactly what its invocations made."""
        for setup in self.setups:
            counts = self.invocations[setup.key]
            receiver = self.receivers.get(setup.key)
            if receiver is None:
                continue
            if setup.sends == "langfuse":
                got = {"spans": receiver.spans}
                wanted = {"spans": counts.invocations + counts.spans + counts.generations}
            else:
                names = [e.name for e in receiver.unique_events()]
                got = {name: names.count(name) for name in ("$ai_trace", "$ai_span", "$ai_generation")}
                traced = setup.source not in (UNTRACED, UNTRACED_REALISTIC)
                wanted = {
                    "$ai_trace": counts.invocations * traced,
                    "$ai_span": counts.spans * traced,
                    "$ai_generation": counts.generations * traced,
                }
            if got != wanted:
                raise SystemExit(
                    f"{setup.label} delivered {got}, not {wanted}: its figures would mean nothing"
                    + _surplus(receiver, setup.sends)
                )


def _surplus(receiver: Any, sends: str | None) -> str:
    """Some of what a capture server received that a handler did not make, to say what went wrong."""
    if sends != "posthog":
        return ""
    odd = [
        e.event
        for e in receiver.unique_events()
        if e.name == "$ai_generation" or (e.name == "$ai_trace" and e.properties.get("$ai_is_error"))
    ]
    return f"; for instance: {odd[:3]}" if odd else ""


@dataclass
class Counts:
    invocations: int = 0
    spans: int = 0
    generations: int = 0

    def add(self, spans: int, generations: int) -> None:
        self.invocations += 1
        self.spans += spans
        self.generations += generations


def paired(values: list[float], baseline: list[float], how: Callable[[float, float], float]) -> float:
    """Median over rounds of ``how(value, baseline)``, each value paired with the baseline's
    sample from the same round."""
    return median([how(v, b) for v, b in zip(values, baseline, strict=True)])


def minus(value: float, baseline: float) -> float:
    return value - baseline


def over(value: float, baseline: float) -> float:
    return value / baseline


def ms(values: list[float]) -> str:
    """``p50 / p99`` in ms for a table cell."""
    return f"{median(values):.2f} / {p99(values):.2f}"
