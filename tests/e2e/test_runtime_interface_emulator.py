"""The built layer under AWS's Runtime Interface Emulator (what ``sam local`` and container images
run), as the local environment behaves with ``behaviour="runtime-interface-emulator"``: no
Telemetry API, its own shutdown reasons, the caller answered only once every extension is back in
``next``, nothing frozen."""

from __future__ import annotations

import textwrap

import pytest

from posthog_lambda.testing import trace_tree_problems
from tests.e2e.conftest import Deployment
from tests.e2e.test_failures import DYING, by_name

RIE = "runtime-interface-emulator"

UNTRACED = "def handler(event, context):\n    return {'ok': True}\n"


@pytest.mark.parametrize(("how", "status"), [("timeout", "timeout"), ("exit", "failure")])
def test_a_dying_invocation_arrives_as_a_failed_trace_with_its_finished_spans(
    deployment: Deployment, how: str, status: str
) -> None:
    # Its resets say Timeout and ReleaseFail; and with no Telemetry API the process's connection
    # closing is what tells the extension a process died, so it is back in next for SHUTDOWN.
    deployment.code(DYING)
    with deployment.environment("end", timeout_s=2.0, behaviour=RIE) as env:
        failed = env.invoke({"q": "why?", "user": "u1", "how": how})
        after = env.invoke({"q": "again", "user": "u1"})
        env.shutdown()
        shutdowns = list(env.shutdowns)
    assert failed.status == ("timeout" if how == "timeout" else "failure")
    assert after.status == "success"
    reset = shutdowns[0]
    assert reset.reason == ("Timeout" if how == "timeout" else "ReleaseFail")
    assert [e.killed for e in reset.extensions] == [False]  # it had its SHUTDOWN, and used it
    received = deployment.posthog.wait_for_events(8, timeout=10)
    events = [r.event for r in received]
    assert deployment.posthog.duplicates == 0
    assert trace_tree_problems(events) == []
    dead = next(e for e in events if e["event"] == "$ai_trace" and e["properties"]["$ai_is_error"])
    assert dead["properties"]["lambda_status"] == status
    spans = by_name([e for e in events if e["properties"]["$ai_trace_id"] == dead["properties"]["$ai_trace_id"]])
    assert set(spans) == {"agent", "retrieve", "plan", "tools", "answer"}
    assert spans["retrieve"]["properties"]["$ai_is_error"] is False
    assert spans["answer"]["properties"]["$ai_error"].startswith(f"did not end: Lambda status {status}")


def test_its_telemetry_refusal_is_one_line_and_debug_lines_are_printed_once(deployment: Deployment) -> None:
    deployment.code(DYING)
    with deployment.environment("end", behaviour=RIE, POSTHOG_LAMBDA_DEBUG="1") as env:
        assert env.invoke({"q": "hi"}).status == "success"
        env.shutdown()
        logs = list(env.logs)
    refusal = [line for line in logs if "cannot subscribe to the Telemetry API" in line]
    assert len(refusal) == 1
    assert refusal[0].endswith("going on without it")
    assert "Telemetry.NotSupported" in refusal[0]
    # The library's debug line, once (not again through the runtime's root logger).
    assert len([line for line in logs if "events go to the extension" in line]) == 1


def test_an_untraced_handler_is_not_held_for_a_start_it_never_sends(deployment: Deployment) -> None:
    # There the caller waits for the extension too: a wait for a START would be in every response.
    deployment.code(UNTRACED)
    with deployment.environment("end", behaviour=RIE) as env:
        results = [env.invoke({}) for _ in range(3)]
        env.shutdown()
    assert [r.status for r in results] == ["success"] * 3
    for result in results:
        assert result.post_runtime_ms is not None
        assert result.post_runtime_ms < 250, result  # the extension's grace for a START is 500 ms


def test_a_traced_handler_is_still_waited_for_and_its_events_sent_after_each_invocation(
    deployment: Deployment,
) -> None:
    deployment.code(
        textwrap.dedent(
            """
            from posthog_lambda import posthog_traced, span

            @posthog_traced
            def handler(event, context):
                with span("step"):
                    pass
                return {"ok": True}
            """
        )
    )
    with deployment.environment("end", behaviour=RIE) as env:
        first = env.invoke({})
        sent_after_first = len(deployment.posthog.events)
        env.invoke({})
        env.shutdown()
    assert first.status == "success"
    assert sent_after_first == 2  # end mode: sent before the caller was answered
    assert len(deployment.posthog.events) == 4
