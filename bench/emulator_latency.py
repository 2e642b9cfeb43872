"""What the local Lambda environment itself adds to an invocation, so later end-to-end figures
can subtract it.

A handler that returns its event, no layer, run by AWS's runtime interface client in the local
environment: one cold invocation, then warm ones. The baseline is the same handler called
directly in this process, measured in the same run.

    .venv/bin/python bench/emulator_latency.py [--write] [--invocations N]
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path
from time import perf_counter_ns

from _common import SRC, arguments, median, p99, positive, run_description
from _publish import publish

INVOCATIONS = 20
HANDLER = "def handler(event, context):\n    return {'echo': event}\n"
EVENT = {"question": "what is the capital of france"}


def direct_us(function_dir: Path, calls: int) -> list[float]:
    spec = importlib.util.spec_from_file_location("bench_app", function_dir / "app.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    samples = []
    for _ in range(calls):
        start = perf_counter_ns()
        module.handler(EVENT, None)
        samples.append((perf_counter_ns() - start) / 1000)
    return samples


def main() -> None:
    parser = arguments(__doc__, "the emulator section of BENCHMARKS.md")
    parser.add_argument("--invocations", type=positive, default=INVOCATIONS, help="warm invocations")
    args = parser.parse_args()
    sys.path.insert(0, str(SRC))
    from posthog_lambda.local import LambdaEnvironment

    with tempfile.TemporaryDirectory() as tmp:
        function_dir = Path(tmp)
        (function_dir / "app.py").write_text(HANDLER)
        with LambdaEnvironment(function_dir, "app.handler") as env:
            cold = env.invoke(EVENT)
            warm = [env.invoke(EVENT) for _ in range(args.invocations)]
        direct = direct_us(function_dir, args.invocations)
    if any(r.status != "success" or r.payload != {"echo": EVENT} for r in [cold, *warm]):
        raise SystemExit("an invocation did not return the event: the figures would mean nothing")
    latency = [r.response_latency_ms or 0.0 for r in warm]
    post = [r.post_runtime_ms or 0.0 for r in warm]
    duration = [r.duration_ms for r in warm]
    assert cold.init is not None
    lines = [
        run_description(),
        f"- 1 cold invocation, then {args.invocations} warm ones; handler-only function, no layer",
        "",
        "| Measure | median ms | p99 ms |",
        "|---|---:|---:|",
        f"| response latency (invoke to response posted), warm | {median(latency):.3f} | {p99(latency):.3f} |",
        f"| post-runtime (response to the runtime's next `next`), warm | {median(post):.3f} | {p99(post):.3f} |",
        f"| invocation duration, warm | {median(duration):.3f} | {p99(duration):.3f} |",
        f"| the same handler called directly in-process | {median(direct) / 1000:.4f} | {p99(direct) / 1000:.4f} |",
        "",
        f"cold start: Init {cold.init.duration_ms:.1f} ms (awslambdaric start-up and handler import), "
        f"response latency {cold.response_latency_ms:.3f} ms",
        "",
        f"the emulator's round trip is {median(latency) * 1000 / median(direct):.0f}x a direct call of the handler: "
        f"subtract {median(latency):.2f} ms from end-to-end response latencies measured in it",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        publish("emulator", text)


if __name__ == "__main__":
    main()
