"""How many events the extension takes in and sends per second, how long it needs to send 10,000
buffered events at SHUTDOWN, and how its memory grows with what it holds.

The extension runs as its own process (started as the layer's launcher starts it) against a
stand-in Extensions API, and sends to a local capture server. It is fed what the library itself
writes to the socket (traced handlers of 999 spans each: 1,000 events with the ``$ai_trace``),
recorded beforehand and written at full speed in one connection, so the figures are the
extension's, not the writer's. Its debug output says when it has read an invocation's END frame:
everything before it on the connection has been taken in by then.

- Throughput (`end` mode): INVOKE, then 10,000 events; taken in = first byte written to the
  END frame read; sent = END read to the extension's next ``next`` call (everything acknowledged
  by the capture server by then).
- SHUTDOWN: `batch` mode with a threshold never reached, so the 10,000 events stay buffered;
  then SHUTDOWN with Lambda's 2,000 ms deadline; time from SHUTDOWN to the process's exit, with
  the capture server answering at once and after 50 ms.
- Memory: the same, fed 1,000 events at a time with nothing sent (as while PostHog is
  unreachable), RSS after each step, past the buffer's bound (a tenth of 128 MB).
- CPU per 1,000 events (`batch` mode, the default thresholds): the extension's own CPU time
  (user+sys of its process, all threads, to the ns: the process's CPU clock) while it takes in and
  sends invocations of the realistic handler (``POSTHOG_LAMBDA_REALISTIC`` in ``_handlers.py``: 10
  spans with a dict query in and its results out, 2 generations with a system and a user message
  in and an assistant message with a tool call out, and the ``$ai_trace``: 13 events), written to
  one connection as a decorated function's process does, one invocation per INVOKE, until the
  capture server has every event. Split by thread: the socket's reader (taking in: frames read,
  records made into events) and the main thread (INVOKE and next, sending).

    .venv/bin/python bench/extension_throughput.py [--write] [--rounds N] [--cpu-invocations N]
"""

from __future__ import annotations

import re
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _common import SRC, arguments, build_layer, capture_server, median, p99, positive, process_cpu_s, run_description
from _extension import DEADLINE_S, Extension, Traffic, extension_env, extensions_api, record, record_traffic, replay
from _handlers import POSTHOG_LAMBDA_REALISTIC
from _publish import Target, publish, verdict

if TYPE_CHECKING:
    from posthog_lambda.local.emulator import ExtensionsApi

ROUNDS = 8
EVENTS = 10_000
SPANS = 999
"""Spans per recorded invocation: with its $ai_trace, 1,000 events."""
SHUTDOWN_BUDGET_S = 2.0
TARGET_SHUTDOWN_S = 1.0
"""10,000 events sent within half of SHUTDOWN's 2 s at 50 ms per request: the margin."""
DELAYS_MS = (0.0, 50.0)
MEMORY_STEPS = (0, 1, 2, 5, 10, 15, 20, 25, 30, 40)
"""Thousands of events held, in the memory part."""
CPU_INVOCATIONS = 100
"""Invocations per round of the CPU part (13 events each)."""
CPU_WARM_UP = 20
"""Invocations before the first round: the first flushes load what sending needs (json,
http.client, zlib) and open the connection, once per environment."""
REALISTIC_SPANS, REALISTIC_GENERATIONS = 10, 2
REALISTIC_EVENTS = REALISTIC_SPANS + REALISTIC_GENERATIONS + 1


def throughput(bootstrap: Path, tmp: Path, rounds: int) -> dict[str, list[float]]:
    traffics = [record_traffic(EVENTS // (SPANS + 1), SPANS) for _ in range(rounds + 1)]
    samples: dict[str, list[float]] = {"in": [], "out": [], "both": [], "bytes": [len(traffics[0].data) / EVENTS]}
    server = capture_server(0)
    api = extensions_api()
    extension = Extension(
        bootstrap, api, extension_env(tmp, server.url, POSTHOG_LAMBDA_FLUSH="end", POSTHOG_LAMBDA_DEBUG="true")
    )
    try:
        api.wait_next(1)
        # As the library does while a handler is decorated (Init): the extension then knows the
        # function is traced, and waits for each invocation's END.
        decorated = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        decorated.connect(extension.socket_path)
        for n, traffic in enumerate(traffics):
            before = len(server.unique_events())
            api.invoke(traffic.last_request_id, DEADLINE_S)
            extension.wait_line(f"INVOKE {traffic.last_request_id}")
            started = replay(extension.socket_path, traffic)
            taken = extension.wait_line(f"END {traffic.last_request_id}")
            sent = api.wait_next(n + 2)
            events = len(server.unique_events()) - before
            if events != EVENTS:
                raise SystemExit(f"the capture server got {events} of the {EVENTS} events")
            if n == 0:
                continue  # warm-up: the first flush also opens the connection and loads the sender
            samples["in"].append(events / (taken - started))
            samples["out"].append(events / (sent - taken))
            samples["both"].append(events / (sent - started))
        decorated.close()
    finally:
        extension.kill()
        api.close()
        server.stop()
    return samples


def buffered(bootstrap: Path, tmp: Path, server: Any, traffics: list[Traffic]) -> tuple[Extension, ExtensionsApi]:
    """An extension holding ``traffics`` in `batch` mode with a threshold never reached."""
    api = extensions_api()
    settings = {"POSTHOG_LAMBDA_FLUSH": "batch", "POSTHOG_FLUSH_AT": "10000000", "POSTHOG_FLUSH_INTERVAL": "3600000"}
    extension = Extension(bootstrap, api, extension_env(tmp, server.url, POSTHOG_LAMBDA_DEBUG="true", **settings))
    api.wait_next(1)
    api.invoke(traffics[-1].last_request_id, DEADLINE_S)
    api.wait_next(2)  # nothing to send yet: straight back to next
    return extension, api


def shutdown_flush(bootstrap: Path, tmp: Path, rounds: int, delay_ms: float) -> list[float]:
    """Milliseconds from SHUTDOWN to the extension's exit, all 10,000 events delivered."""
    samples = []
    for _ in range(rounds):
        traffic = record_traffic(EVENTS // (SPANS + 1), SPANS)
        server = capture_server(delay_ms)
        extension, api = buffered(bootstrap, tmp, server, [traffic])
        try:
            replay(extension.socket_path, traffic)
            extension.wait_line(f"END {traffic.last_request_id}")
            api.shutdown(budget_s=SHUTDOWN_BUDGET_S)
            told = time.monotonic()
            exited = extension.wait_exit()
            delivered = len(server.unique_events())
            if delivered != EVENTS:
                raise SystemExit(f"SHUTDOWN delivered {delivered} of {EVENTS} events (delay {delay_ms:g} ms)")
            samples.append((exited - told) * 1000)
        finally:
            extension.kill()
            api.close()
            server.stop()
    return samples


def memory(bootstrap: Path, tmp: Path) -> tuple[list[tuple[int, float, float]], str]:
    """(events fed, RSS MB, peak RSS MB) after each step, and what the extension said it dropped."""
    steps = [record_traffic(1, SPANS) for _ in range(MEMORY_STEPS[-1])]
    server = capture_server(0)
    extension, api = buffered(bootstrap, tmp, server, steps)
    rows = []
    try:
        fed = 0
        for thousands in MEMORY_STEPS:
            while fed < thousands:
                replay(extension.socket_path, steps[fed])
                extension.wait_line(f"END {steps[fed].last_request_id}")
                fed += 1
            rss, peak = extension.memory_mb()
            rows.append((fed * (SPANS + 1), rss, peak))
        api.shutdown(budget_s=SHUTDOWN_BUDGET_S)
        extension.wait_exit()
    finally:
        extension.kill()
        api.close()
        server.stop()
    said = [line for _, line in extension.lines if "dropped during" in line]
    dropped = re.sub(r"^\[posthog-lambda\]\s*", "", said[-1]) if said else "nothing dropped"
    return rows, dropped


# -- CPU per 1,000 events -------------------------------------------------------------------------

_GENERATE_REALISTIC = (
    POSTHOG_LAMBDA_REALISTIC
    + """
import sys, types, uuid

invocations, spans, generations = (int(arg) for arg in sys.argv[1:4])
for n in range(invocations):
    request_id = str(uuid.uuid4())
    context = types.SimpleNamespace(
        aws_request_id=request_id, function_name="bench", get_remaining_time_in_millis=lambda: 900_000
    )
    handler({"spans": spans, "generations": generations}, context)
    print(request_id)
"""
)


def record_invocations(invocations: int) -> list[Traffic]:
    """What ``invocations`` calls of the realistic traced handler, in one process, write to the
    extension's socket: each invocation's bytes (up to and with its END frame) and request id."""
    from posthog_lambda_contract import frames

    data, printed = record(_GENERATE_REALISTIC, str(invocations), str(REALISTIC_SPANS), str(REALISTIC_GENERATIONS))
    request_ids = printed.split()
    chunks: list[bytes] = []
    start = offset = 0
    while offset < len(data):
        kind, length = frames.parse_header(data[offset : offset + frames.HEADER.size])
        offset += frames.HEADER.size + length
        if kind & ~frames.MARSHALLED == frames.END:
            chunks.append(data[start:offset])
            start = offset
    if len(chunks) != len(request_ids) or start != len(data):
        raise SystemExit(f"{len(chunks)} END frames in the recorded stream for {len(request_ids)} invocations")
    return [Traffic(chunk, request_id) for chunk, request_id in zip(chunks, request_ids, strict=True)]


def thread_cpu_s(pid: int, tid: int) -> float:
    """User+sys seconds of one thread of ``pid`` (schedstat: the scheduler's count, in ns)."""
    return int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0]) / 1e9


def cpu_per_event(bootstrap: Path, tmp: Path, rounds: int, per_round: int) -> dict[str, list[float]]:
    """CPU ms per 1,000 events over each round (all threads, the socket's reader, the main
    thread), and the mean size of an event as PostHog got it (bytes of JSON)."""
    import json

    invocations = record_invocations(CPU_WARM_UP + rounds * per_round)
    samples: dict[str, list[float]] = {"total": [], "reader": [], "main": [], "event_bytes": [], "frame_bytes": []}
    server = capture_server(0)
    api = extensions_api()
    extension = Extension(bootstrap, api, extension_env(tmp, server.url, POSTHOG_LAMBDA_FLUSH="batch"))
    pid = extension.process.pid
    calls = 1
    try:
        api.wait_next(calls)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as function:
            function.connect(extension.socket_path)
            batches = [invocations[:CPU_WARM_UP]]
            batches += [invocations[CPU_WARM_UP + n * per_round :][:per_round] for n in range(rounds)]
            for n, batch in enumerate(batches):
                expected = len(server.unique_events()) + len(batch) * REALISTIC_EVENTS
                total, main = process_cpu_s(pid), thread_cpu_s(pid, pid)
                for invocation in batch:
                    api.invoke(invocation.last_request_id, DEADLINE_S)
                    function.sendall(invocation.data)
                    calls += 1
                    api.wait_next(calls)
                # What the last invocation left buffered goes with the next INVOKE's flush (`batch`
                # sends at INVOKE): one more, with nothing written, as the next invocation would.
                deadline = time.monotonic() + 30
                while len(server.unique_events()) < expected:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"the capture server got {len(server.unique_events())} of {expected} events")
                    api.invoke(f"bench-flush-{n}-{calls}", DEADLINE_S)
                    calls += 1
                    api.wait_next(calls)
                    time.sleep(0.01)
                total, main = process_cpu_s(pid) - total, thread_cpu_s(pid, pid) - main
                if n == 0:
                    continue  # warm-up
                thousands = len(batch) * REALISTIC_EVENTS / 1000
                samples["total"].append(total * 1000 / thousands)
                samples["main"].append(main * 1000 / thousands)
                samples["reader"].append((total - main) * 1000 / thousands)
        events = server.unique_events()
        if len(events) != len(invocations) * REALISTIC_EVENTS:
            raise SystemExit(f"the capture server got {len(events)} of {len(invocations) * REALISTIC_EVENTS} events")
        sizes = [len(json.dumps(e.event, separators=(",", ":"))) for e in events]
        samples["event_bytes"].append(sum(sizes) / len(sizes))
        samples["frame_bytes"].append(sum(len(i.data) for i in invocations) / len(events))
    finally:
        extension.kill()
        api.close()
        server.stop()
    return samples


def main() -> None:
    parser = arguments(__doc__, "the extension_throughput section")
    parser.add_argument("--rounds", type=positive, default=ROUNDS)
    parser.add_argument("--cpu-invocations", type=positive, default=CPU_INVOCATIONS, help="per round of the CPU part")
    args = parser.parse_args()
    sys.path.insert(0, str(SRC))
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        bootstrap = build_layer(tmp / "layer") / "posthog-lambda-extension" / "bootstrap.py"
        rates = throughput(bootstrap, tmp, args.rounds)
        shutdowns = {delay: shutdown_flush(bootstrap, tmp, args.rounds, delay) for delay in DELAYS_MS}
        grows, dropped = memory(bootstrap, tmp)
        cpu = cpu_per_event(bootstrap, tmp, args.rounds, args.cpu_invocations)

    lines = [
        run_description(),
        f"- {args.rounds} rounds of {EVENTS:,} events (10 invocations of {SPANS} spans and their `$ai_trace`, "
        f"{rates['bytes'][0]:.0f} bytes per event as the library writes them); 128 MB function memory",
        "",
        "| Throughput, `end` mode | median events/s | slowest round, events/s |",
        "|---|---:|---:|",
    ]
    for key, label in (
        ("in", "taken in from the socket (first byte written to END read)"),
        ("out", "sent to the capture server (END read to the extension's next `next`)"),
        ("both", "end to end (first byte written to next `next`)"),
    ):
        lines.append(f"| {label} | {median(rates[key]):,.0f} | {min(rates[key]):,.0f} |")
    lines += [
        "",
        f"| {EVENTS:,} buffered events at SHUTDOWN ({SHUTDOWN_BUDGET_S * 1000:.0f} ms deadline) "
        "| median ms to exit | p99 ms | all delivered |",
        "|---|---:|---:|---|",
    ]
    for delay, values in shutdowns.items():
        lines.append(
            f"| capture server answering after {delay:.0f} ms | {median(values):.0f} | {p99(values):.0f} | yes |"
        )
    lines += [
        "",
        "| Events held (nothing sent) | RSS MB | peak RSS MB |",
        "|---:|---:|---:|",
        *(f"| {events:,} | {rss:.1f} | {peak:.1f} |" for events, rss, peak in grows),
        "",
        f"at SHUTDOWN the extension said: {dropped}",
        "",
        f"| CPU per 1,000 events, `batch` mode, realistic payloads ({args.rounds} rounds of {args.cpu_invocations} "
        f"invocations of {REALISTIC_EVENTS} events; {cpu['event_bytes'][0]:.0f} bytes per event as sent, "
        f"{cpu['frame_bytes'][0]:.0f} as the library writes them) | median ms | p99 ms |",
        "|---|---:|---:|",
    ]
    for key, label in (
        ("total", "the extension's process, all threads"),
        ("reader", "taking in: the socket's reader (and the Telemetry API's receiver, idle here)"),
        ("main", "sending, INVOKE and next: the main thread"),
    ):
        lines.append(f"| {label} | {median(cpu[key]):.1f} | {p99(cpu[key]):.1f} |")
    lines += [""]
    slowest = max(p99(values) for values in shutdowns.values())
    met = slowest <= TARGET_SHUTDOWN_S * 1000
    lines.append(
        f"target: {EVENTS:,} buffered events sent at SHUTDOWN within {TARGET_SHUTDOWN_S * 1000:.0f} ms "
        f"(half the 2 s budget): {verdict(met)} (p99 {slowest:.0f} ms, the slower of 0 and 50 ms per request)"
    )
    first, last = grows[1], grows[-1]
    per_thousand = (grows[MEMORY_STEPS.index(10)][1] - grows[0][1]) / 10
    text = "\n".join(lines)
    print(text)
    if args.write:
        taken_in, sent = round(median(rates["in"]), -3), round(median(rates["out"]), -3)
        at_once, slow = median(shutdowns[0.0]), median(shutdowns[50.0])
        summary = [
            f"the extension takes in {taken_in:,.0f} events/s from the socket and sends {sent:,.0f} events/s to a "
            f"local capture server; 10,000 buffered events go out at SHUTDOWN in {at_once:.0f} ms ({slow:.0f} ms "
            f"with 50 ms per request) of the 2,000 ms Lambda gives; holding events costs about {per_thousand:.1f} MB "
            f"per 1,000 (RSS {first[1]:.0f} MB with 1,000, {last[1]:.0f} MB with {last[0]:,} fed, capped by the "
            f"buffer); taking in and sending 1,000 events of a realistic handler costs it "
            f"{median(cpu['total']):.0f} ms of CPU (`batch` mode)",
        ]
        targets = [
            Target(
                8,
                "10,000 buffered events sent at SHUTDOWN within half of its 2 s (p99, 0 and 50 ms per request)",
                f"{slowest:.0f} ms",
                met,
            )
        ]
        publish("extension_throughput", text, targets, summary)


if __name__ == "__main__":
    main()
