"""The command line of the local tools (``posthog-lambda local`` and ``posthog-lambda capture``).

- ``local``: run a function (and a layer) in the local Lambda environment;
- ``capture``: a local PostHog capture server in the foreground, with its trace viewer.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .capture_server import CaptureServer, ReceivedRequest
from .capture_server.received import events_text
from .emulator import BEHAVIOURS, LIFECYCLES, InitResult, InvokeResult, LambdaEnvironment, SandboxError, ShutdownResult
from .emulator.behaviour import LAMBDA
from .emulator.cpu import MAX_MEMORY_MB, MB_PER_VCPU, MIN_MEMORY_MB, PERIOD_US
from .emulator.lifecycle import MANAGED_INSTANCES, ON_DEMAND
from .emulator.managed import ManagedInstancesEnvironment

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import FrameType


# -- posthog-lambda local ----------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="posthog-lambda local",
        description="Invoke a Python Lambda function locally through AWS's runtime interface client, with "
        "the layer at /opt and its extensions running, and print each result with its measurements.",
    )
    parser.add_argument("--function", required=True, type=Path, help="the function's code directory")
    parser.add_argument("--handler", required=True, help="module.function, as in Lambda's Handler setting")
    parser.add_argument("--layer", type=Path, help="a layer's content root (what the zip holds), seen at /opt")
    parser.add_argument("--event", type=Path, help="a JSON file with the event (default: {})")
    parser.add_argument("--times", type=int, default=1, help="how many invocations (default 1)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="a function variable")
    parser.add_argument("--memory", type=int, default=128, help="memory size in MB (default 128)")
    parser.add_argument("--timeout", type=float, default=3.0, help="function timeout in seconds (default 3)")
    parser.add_argument("--logs", action="store_true", help="print the processes' log lines as they come")
    parser.add_argument(
        "--lifecycle",
        choices=LIFECYCLES,
        default=ON_DEMAND,
        help="on-demand (default: one invocation at a time, frozen in between) or lambda-managed-instances "
        "(concurrent invocations, never frozen)",
    )
    parser.add_argument(
        "--max-concurrency",
        type=int,
        help="lambda-managed-instances: invocations served at once, and sent at once (default 4)",
    )
    parser.add_argument(
        "--behaviour",
        choices=BEHAVIOURS,
        default=LAMBDA,
        help="lambda (default) or runtime-interface-emulator: on-demand as AWS's emulator runs it (sam local, "
        "container images): its SHUTDOWN reasons, Telemetry API answered 202 Telemetry.NotSupported, the "
        "response held until every extension is back in next, no freezing",
    )
    parser.add_argument(
        "--cpu-share",
        action="store_true",
        help="give the function's and extensions' processes Lambda's CPU for --memory (1,769 MB is one vCPU, "
        "128 MB 7.2%% of one): a CFS quota on a cgroup of their own; needs root and cgroup v1's cpu controller "
        "at /sys/fs/cgroup/cpu. Latencies under a quota are bimodal (within the current 100 ms period or "
        "after it): compare means over many --times",
    )
    return parser


def _init(result: InitResult) -> list[str]:
    lines = [f"  init: {result.duration_ms:.1f} ms" + (f" FAILED: {result.error}" if result.error else "")]
    for extension in result.extensions:
        lines.append(
            f"    extension {extension.name}: registered at {extension.register_ms} ms, "
            f"first next at {extension.first_next_ms} ms"
        )
    return lines


def _invocation(number: int, result: InvokeResult) -> str:
    lines = [f"invocation {number}: {result.status} (request {result.request_id})"]
    if result.init is not None:
        lines += _init(result.init)
    if result.error is not None:
        lines.append(f"  error: {json.dumps(result.error)}")
    else:
        lines.append(f"  response: {json.dumps(result.payload)}")
    lines.append(
        f"  response latency {result.response_latency_ms} ms, post-runtime {result.post_runtime_ms} ms, "
        f"duration {result.duration_ms} ms (billed {result.billed_duration_ms} ms), "
        f"max memory {result.max_memory_used_mb} MB"
    )
    return "\n".join(lines)


def _cpu_share(lambda_env: LambdaEnvironment) -> str:
    quota = lambda_env.cpu_quota_us
    assert quota is not None
    return (
        f"CPU share: {lambda_env.memory_mb} MB of {MB_PER_VCPU:,} MB per vCPU = {quota / PERIOD_US:.1%} of a vCPU "
        f"(CFS quota {quota} us per {PERIOD_US} us, cgroup {lambda_env.cpu_cgroup})"
    )


def _shutdown(result: ShutdownResult) -> str:
    lines = [f"shutdown ({result.reason}, deadline {result.deadline_ms:.0f} ms)"]
    for extension in result.extensions:
        ending = "killed at the deadline" if extension.killed else f"exited after {extension.exit_ms} ms"
        lines.append(f"  extension {extension.name}: {ending}")
    return "\n".join(lines)


def local(argv: Sequence[str]) -> int:
    """Invoke a function in the local Lambda environment and print each result, then the shutdown."""
    parser = _parser()
    options = parser.parse_args(list(argv))
    if options.max_concurrency is not None and options.lifecycle != MANAGED_INSTANCES:
        parser.error("--max-concurrency goes with --lifecycle lambda-managed-instances")
    if options.max_concurrency is not None and options.max_concurrency < 1:
        parser.error("--max-concurrency must be 1 or more")
    if options.behaviour != LAMBDA and options.lifecycle != ON_DEMAND:
        parser.error(f"--behaviour {options.behaviour} goes with --lifecycle {ON_DEMAND}")
    if options.cpu_share and options.lifecycle == MANAGED_INSTANCES:
        parser.error(f"--cpu-share is Lambda's 1,769 MB per vCPU: not for --lifecycle {MANAGED_INSTANCES}")
    if options.cpu_share and not MIN_MEMORY_MB <= options.memory <= MAX_MEMORY_MB:
        parser.error(f"--cpu-share needs --memory from {MIN_MEMORY_MB} to {MAX_MEMORY_MB} (MB), as on Lambda")
    event = json.loads(options.event.read_text()) if options.event else {}
    env = dict(item.split("=", 1) for item in options.env if "=" in item)
    try:
        with LambdaEnvironment(
            options.function,
            options.handler,
            layer_dir=options.layer,
            env=env,
            memory_mb=options.memory,
            timeout_s=options.timeout,
            echo_logs=print if options.logs else None,
            lifecycle=options.lifecycle,
            max_concurrency=options.max_concurrency,
            behaviour=options.behaviour,
            cpu_share=options.cpu_share,
        ) as lambda_env:
            if lambda_env.cpu_quota_us is not None:
                print(_cpu_share(lambda_env), flush=True)
            if isinstance(lambda_env, ManagedInstancesEnvironment):
                _invoke_concurrently(lambda_env, event, options.times)
            else:
                if options.behaviour != LAMBDA:
                    print(f"environment: {ON_DEMAND}, behaving as the {options.behaviour}", flush=True)
                for number in range(1, options.times + 1):
                    print(_invocation(number, lambda_env.invoke(event)), flush=True)
            print(_shutdown(lambda_env.shutdown()), flush=True)
    except SandboxError as exc:
        print(f"posthog-lambda local: {exc}", file=sys.stderr)
        return 1
    return 0


def _invoke_concurrently(lambda_env: ManagedInstancesEnvironment, event: object, times: int) -> None:
    """Init, then ``times`` invocations in rounds of ``max_concurrency`` sent at once, each
    round once the workers are back in ``next``; results printed in order."""
    init = lambda_env.init()
    header = f"environment: lambda-managed-instances, max concurrency {lambda_env.max_concurrency}"
    print("\n".join([header, *_init(init)]), flush=True)
    if init.error is not None:
        return
    number = 0
    with ThreadPoolExecutor(max_workers=lambda_env.max_concurrency, thread_name_prefix="invoke") as pool:
        while number < times:
            size = min(lambda_env.max_concurrency, times - number)
            # Init is over with one worker in next, the others may still be importing the handler;
            # later, a worker whose invocation timed out may still run it. Each round waits for the
            # workers, so that none of its invocations finds them all busy (unavailable).
            ready = lambda_env.max_concurrency if number == 0 else len(lambda_env.worker_pids())
            lambda_env.wait_for_workers(min(size, ready), timeout=lambda_env.timeout_s)
            for result in [pool.submit(lambda_env.invoke, event) for _ in range(size)]:
                number += 1
                print(_invocation(number, result.result()), flush=True)


# -- posthog-lambda capture --------------------------------------------------------------------


def capture(argv: Sequence[str] | None = None) -> int:
    """Run a capture server in the foreground until Ctrl-C, then print the trace tree."""
    parser = argparse.ArgumentParser(
        prog="posthog-lambda capture",
        description="A local PostHog capture server, with a trace viewer at its address (open it in a browser: "
        "new traces appear as they arrive). Ctrl-C prints what arrived as PostHog's trace view.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default: any free port)")
    keys = parser.add_mutually_exclusive_group()
    keys.add_argument("--api-key", default="phc_local", help="the project key to accept (default phc_local)")
    keys.add_argument("--any-key", action="store_true", help="accept any non-empty project key")
    parser.add_argument("--no-ai-endpoint", action="store_true", help="answer 404 on /i/v0/ai/batch/, as older PostHog")
    parser.add_argument("--verbose", action="store_true", help="also log every HTTP request to stderr")
    parser.add_argument(
        "--html", type=Path, metavar="FILE", help="on Ctrl-C, also write the trace viewer as one HTML file"
    )
    args = parser.parse_args(argv)

    server = CaptureServer(
        args.host,
        args.port,
        api_key=None if args.any_key else args.api_key,
        ai_endpoint=not args.no_ai_endpoint,
        verbose=args.verbose,
        on_request=_print_request,
    )
    try:
        server.start()
    except OSError as exc:
        print(f"cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    key = "any key" if args.any_key else f"api key {args.api_key}"
    ai = "off (404)" if args.no_ai_endpoint else "on"
    # SIGTERM ends it like Ctrl-C, so a supervisor's stop still prints the tree.
    previous = (
        signal.signal(signal.SIGTERM, _interrupt) if threading.current_thread() is threading.main_thread() else None
    )
    # The banner is printed inside the try: a Ctrl-C right after it must still stop cleanly.
    try:
        # One line: scripts read the address from it. The viewer's requests are not printed.
        print(
            f"PostHog capture server on {server.url} ({key}; AI endpoint {ai}); trace viewer at {server.viewer_url}. "
            "Ctrl-C to stop.",
            flush=True,
        )
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    print(server.trace_tree(), flush=True)
    if args.html is not None:
        print(f"trace viewer written to {server.write_html(args.html)}", flush=True)
    return 0


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _print_request(request: ReceivedRequest) -> None:
    when = request.received_at.astimezone().strftime("%H:%M:%S")
    encoding = "gzip, " if request.gzip else ""
    status = "no answer" if request.status is None else str(request.status)
    line = f"{when} {request.method} {request.path} -> {status} {request.outcome}"
    if request.outcome == "accepted":
        line += f": {events_text(request.event_count)} ({encoding}{request.body_bytes} bytes)"
    else:
        line += f": {request.detail}"
    print(line, flush=True)
