"""What tracing adds to a Lambda invocation, end to end, in the local Lambda environment.

The same handler (10 steps of work, two of them "model calls") four ways, each in its own
environment with the built layer attached and a local capture server standing in for PostHog:

- undecorated: the baseline;
- posthog-lambda, `end` flush mode: events go to the extension, which sends after the response;
- posthog-lambda, `batch` flush mode under steady load: sent on INVOKE, in parallel;
- posthog-python's Client with ``flush()`` at the end of the handler: what the SDK tells
  serverless users to do, and what posthog-lambda replaces (no extension).

Response latency is what the caller waits; post-runtime duration is the billed time after the
response (the extension's, or the runtime's own return to ``next``). Figures are medians and
p99s over warm invocations, and differences from the undecorated baseline measured in the same
run.

    .venv/bin/python bench/e2e_overhead.py [--write] [--invocations N] [--delay-ms MS]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import SRC, build_layer, median, p99, run_description, write_section

INVOCATIONS = 100
TARGET_LATENCY_MS = 0.2
TARGET_POST_RUNTIME_MS = 1.0

UNDECORATED = """
def handler(event, context):
    total = 0
    for step in range(10):
        total += step
    return {"total": total}
"""

TRACED = """
from posthog_lambda import generation, posthog_traced, span

@posthog_traced
def handler(event, context):
    total = 0
    for step in range(8):
        with span(f"step-{step}", input=event["q"]) as s:
            total += step
            s.update(output=total)
    for call in range(2):
        with generation("answer", model="gpt-4o", provider="openai", input=event["q"]) as g:
            g.update(output="Paris", input_tokens=12, output_tokens=3)
    return {"total": total}
"""

POSTHOG_PYTHON = """
import os, uuid
from posthog import Posthog

client = Posthog(os.environ["POSTHOG_API_KEY"], host=os.environ["POSTHOG_HOST"])

def handler(event, context):
    trace_id = str(uuid.uuid4())
    total = 0
    for step in range(8):
        total += step
        client.capture("$ai_span", distinct_id=trace_id, properties={
            "$ai_trace_id": trace_id, "$ai_span_name": f"step-{step}", "$ai_input_state": event["q"],
            "$ai_output_state": total, "$ai_parent_id": trace_id})
    for call in range(2):
        client.capture("$ai_generation", distinct_id=trace_id, properties={
            "$ai_trace_id": trace_id, "$ai_model": "gpt-4o", "$ai_provider": "openai",
            "$ai_input": [{"role": "user", "content": event["q"]}], "$ai_input_tokens": 12,
            "$ai_output_tokens": 3, "$ai_parent_id": trace_id})
    client.capture("$ai_trace", distinct_id=trace_id, properties={"$ai_trace_id": trace_id})
    client.flush()
    return {"total": total}
"""

POSTHOG_PYTHON_DEPENDENCIES = (
    "posthog",
    "requests",
    "urllib3",
    "idna",
    "certifi",
    "charset-normalizer",
    "backoff",
    "distro",
    "typing-extensions",
)


def environment(name: str, source: str, root: Path, layer: Path | None, env: dict[str, str]) -> Any:
    from posthog_lambda.local import LambdaEnvironment
    from posthog_lambda.local._sandbox import link_distributions

    function = root / name
    function.mkdir()
    (function / "app.py").write_text(source)
    if "posthog import" in source:
        link_distributions(function, POSTHOG_PYTHON_DEPENDENCIES)
    return LambdaEnvironment(function, "app.handler", layer_dir=layer, env=env, timeout_s=10)


def measure(environments: dict[str, Any], invocations: int) -> dict[str, dict[str, Any]]:
    """Round-robin over the environments (each frozen while the others run), so that the
    machine's noise lands on all of them alike."""
    rows: dict[str, dict[str, Any]] = {name: {"latency": [], "post": []} for name in environments}
    for name, env in environments.items():
        cold = env.invoke({"q": "warm-up"})
        rows[name]["init"] = cold.init
        if cold.status != "success":
            raise SystemExit(f"{name}: the cold invocation failed: {cold.error}")
    for n in range(invocations):
        for name, env in environments.items():
            result = env.invoke({"q": f"question {n}"})
            if result.status != "success":
                raise SystemExit(f"{name}: invocation {n} failed: {result.error}")
            rows[name]["latency"].append(result.response_latency_ms or 0.0)
            rows[name]["post"].append(result.post_runtime_ms or 0.0)
    for name, env in environments.items():
        rows[name]["rss"] = _rss_mb(env.pids().get("posthog-lambda"))
    return rows


def _rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="also rewrite the e2e_overhead section of BENCHMARKS.md")
    parser.add_argument("--invocations", type=int, default=INVOCATIONS)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="the capture server's added answer delay")
    args = parser.parse_args()
    sys.path.insert(0, str(SRC))
    from posthog_lambda.local import CaptureServer

    with tempfile.TemporaryDirectory() as tmp, CaptureServer(api_key="phc_local") as posthog:
        if args.delay_ms:
            posthog.slow_next(10**9, args.delay_ms / 1000)
        root = Path(tmp)
        layer = build_layer(root / "layer")
        base = {"POSTHOG_API_KEY": "phc_local", "POSTHOG_HOST": posthog.url}
        specs = {
            "undecorated handler": ("plain", UNDECORATED, layer, base),
            "posthog-lambda, `end` mode": ("end", TRACED, layer, {**base, "POSTHOG_LAMBDA_FLUSH": "end"}),
            "posthog-lambda, `batch` mode": ("batch", TRACED, layer, {**base, "POSTHOG_LAMBDA_FLUSH": "batch"}),
            "posthog-python Client + flush()": ("sdk", POSTHOG_PYTHON, None, base),
        }
        with contextlib.ExitStack() as stack:
            environments = {
                label: stack.enter_context(environment(name, source, root, layer_dir, env))
                for label, (name, source, layer_dir, env) in specs.items()
            }
            rows = measure(environments, args.invocations)
    plain = rows["undecorated handler"]["latency"]

    def added_p50(label: str) -> float:
        """Median over rounds of this row's latency minus the undecorated one's, same round."""
        return median([x - b for x, b in zip(rows[label]["latency"], plain, strict=True)])

    lines = [
        run_description(),
        f"- {args.invocations} warm invocations per row after one cold one; capture server delay "
        f"{args.delay_ms:.0f} ms; 10 spans (8 spans, 2 generations) per invocation",
        "",
        "| Handler | response latency p50 ms | p99 ms | minus undecorated (p50 of same-round differences) ms "
        "| post-runtime p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, row in rows.items():
        latency, post = row["latency"], row["post"]
        lines.append(
            f"| {label} | {median(latency):.3f} | {p99(latency):.3f} | {added_p50(label):+.3f} "
            f"| {median(post):.3f} | {p99(post):.3f} |"
        )
    added = added_p50("posthog-lambda, `end` mode")
    batch_post = median(rows["posthog-lambda, `batch` mode"]["post"])
    sdk_added = added_p50("posthog-python Client + flush()")
    init = rows["posthog-lambda, `end` mode"]["init"]
    extension = next((e for e in init.extensions if e.name == "posthog-lambda"), None) if init else None
    rss = rows["posthog-lambda, `end` mode"]["rss"]
    lines += [
        "",
        f"target: decorated minus undecorated response latency p50 <= {TARGET_LATENCY_MS} ms: "
        f"{'MET' if added <= TARGET_LATENCY_MS else 'MISSED'} ({added:.3f} ms)",
        f"target: post-runtime duration in `batch` mode, median <= {TARGET_POST_RUNTIME_MS} ms: "
        f"{'MET' if batch_post <= TARGET_POST_RUNTIME_MS else 'MISSED'} ({batch_post:.3f} ms)",
        f"posthog-python with flush() adds {sdk_added:.3f} ms to every response (posthog-lambda, `end` mode: "
        f"{added:.3f} ms)",
    ]
    if extension is not None:
        lines.append(
            f"extension: start to register {extension.register_ms} ms (includes the local environment's "
            f"mount-namespace wrapper), start to first next {extension.first_next_ms} ms; idle RSS "
            f"{rss:.1f} MB"
            if rss is not None
            else ""
        )
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section("e2e_overhead", text)


if __name__ == "__main__":
    main()
