"""The README's main command (`make demo`): the whole product, locally, in one run.

Runs the example LLM app (examples/llm_app) in the local Lambda environment with the layer as
`make layer` built it (build/layer: the extension and the library), a few invocations including
one that raises and one that times out, then shuts the environment down and prints what PostHog received as trace trees,
with each invocation's response latency and post-runtime duration. Events go to a local
capture server, or to real PostHog when POSTHOG_API_KEY is set (POSTHOG_HOST, default US).

What the local server received is also written as a page (build/traces.html, the trace viewer
in one file); run in a terminal, the demo then keeps the server running, its live viewer at the
address it prints, until Ctrl-C. The browser tests (tests/browser) run `invoke_all` too.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from posthog_lambda.local import CaptureServer, LambdaEnvironment  # noqa: E402

QUESTIONS: list[dict[str, Any]] = [
    {"question": "What does an extension do in Lambda?", "user": "ada", "conversation": "c-1"},
    {"question": "Where is a layer extracted?", "user": "ada", "conversation": "c-1"},
    {"question": "", "user": "grace", "conversation": "c-2"},  # fails: an empty question
    {"question": "What does PostHog show for LLM apps?", "user": "grace", "conversation": "c-2"},
    # The model takes longer than the function's timeout: the extension sends the trace as
    # failed, with the spans that finished and the generation cut short; Lambda then starts a
    # new environment for the next invocation (a cold start).
    {"question": "Why is Lambda billed by the millisecond?", "user": "ada", "conversation": "c-3", "think_s": 30},
    {"question": "What does a layer hold?", "user": "ada", "conversation": "c-3"},
]
TIMEOUT_S = 3.0
HTML = ROOT / "build" / "traces.html"


def invoke_all(layer: Path, env: dict[str, str], say: Callable[[str], None] = print) -> None:
    """The example app in the local Lambda environment with ``layer``: each question of
    ``QUESTIONS`` once, then the shutdown, each result said as it comes."""
    with LambdaEnvironment(
        ROOT / "examples" / "llm_app", "app.handler", layer_dir=layer, env=env, timeout_s=TIMEOUT_S
    ) as lambda_env:
        for number, event in enumerate(QUESTIONS, start=1):
            result = lambda_env.invoke(event)
            cold = f", cold start {result.init.duration_ms:.0f} ms" if result.init else ""
            outcome = result.error["errorMessage"] if result.error else result.payload.get("statusCode")
            latency, post = result.response_latency_ms, result.post_runtime_ms
            timing = (
                f"response latency {latency:.2f} ms, post-runtime {post:.2f} ms"
                if latency is not None and post is not None
                else f"no response, {result.duration_ms:.0f} ms"
            )
            say(f"invocation {number}: {result.status} ({outcome}): {timing}{cold}")
        shutdown = lambda_env.shutdown()
    for extension in shutdown.extensions:
        ending = "killed at the deadline" if extension.killed else f"exited after {extension.exit_ms:.0f} ms"
        say(f"shutdown: extension {extension.name} {ending} (deadline {shutdown.deadline_ms:.0f} ms)")


def expected_events() -> int:
    """How many events PostHog receives from ``invoke_all``: a trace, two spans and a generation
    per question, but for the empty one, which raises: its trace and its ``$exception``."""
    return sum(1 for q in QUESTIONS if q["question"]) * 4 + 2


def main() -> int:
    layer = ROOT / "build" / "layer"
    if not (layer / "extensions" / "posthog-lambda").exists():
        print("build/layer is missing: run `make demo` (it builds the layer first)", file=sys.stderr)
        return 1
    real_key = os.environ.get("POSTHOG_API_KEY")
    with CaptureServer() as local_posthog:
        if real_key:
            host = os.environ.get("POSTHOG_HOST", "https://us.i.posthog.com")
            env = {"POSTHOG_API_KEY": real_key, "POSTHOG_HOST": host}
            print(f"sending to {host} (POSTHOG_API_KEY is set)\n")
        else:
            env = {"POSTHOG_API_KEY": "phc_local", "POSTHOG_HOST": local_posthog.url}
            print(f"sending to a local PostHog capture server at {local_posthog.url}\n")
        env["POSTHOG_LAMBDA_FLUSH"] = os.environ.get("POSTHOG_LAMBDA_FLUSH", "end")
        invoke_all(layer, env)
        if real_key:
            print("\nIn PostHog: LLM analytics > Traces; the six traces are named 'ask'.")
            return 0
        local_posthog.wait_for_events(expected_events(), timeout=10)
        print(f"\nPostHog received {len(local_posthog.events)} events:\n")
        print(local_posthog.trace_tree())
        print(f"\nThe same in the browser, as one file: {local_posthog.write_html(HTML)}")
        # Someone at a terminal gets the live page; CI (no terminal) is done here.
        if sys.stdin.isatty() and sys.stdout.isatty():
            print(f"The trace viewer, live: {local_posthog.viewer_url} (Ctrl-C to stop)", flush=True)
            try:
                threading.Event().wait()
            except KeyboardInterrupt:
                print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
