"""``posthog-lambda local``: run a function (and a layer) in the local Lambda environment."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ._environment import InvokeResult, LambdaEnvironment, ShutdownResult
from ._sandbox import SandboxError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence


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
    return parser


def _invocation(number: int, result: InvokeResult) -> str:
    lines = [f"invocation {number}: {result.status} (request {result.request_id})"]
    if result.init is not None:
        lines.append(
            f"  init: {result.init.duration_ms:.1f} ms" + (f" FAILED: {result.init.error}" if result.init.error else "")
        )
        for extension in result.init.extensions:
            lines.append(
                f"    extension {extension.name}: registered at {extension.register_ms} ms, "
                f"first next at {extension.first_next_ms} ms"
            )
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


def _shutdown(result: ShutdownResult) -> str:
    lines = [f"shutdown ({result.reason}, deadline {result.deadline_ms:.0f} ms)"]
    for extension in result.extensions:
        ending = "killed at the deadline" if extension.killed else f"exited after {extension.exit_ms} ms"
        lines.append(f"  extension {extension.name}: {ending}")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    options = _parser().parse_args(list(argv))
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
        ) as lambda_env:
            for number in range(1, options.times + 1):
                print(_invocation(number, lambda_env.invoke(event)), flush=True)
            print(_shutdown(lambda_env.shutdown()), flush=True)
    except SandboxError as exc:
        print(f"posthog-lambda local: {exc}", file=sys.stderr)
        return 1
    return 0
