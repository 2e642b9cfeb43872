"""``behaviour="runtime-interface-emulator"`` makes the local environment behave as AWS's Runtime
Interface Emulator does where it differs from Lambda, shown with extensions written for these
tests (fixtures/rie_extension.py) and handlers run by the real awslambdaric; most tests run the
same thing under both behaviours, so that each difference shows against Lambda's."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from posthog_lambda.local import LambdaEnvironment
from tests.local import BACKGROUND_HANDLER, FunctionAndLayer, posthog_lambda_command

RIE = "runtime-interface-emulator"

HANDLERS = (
    """
import os, threading, time

def main(event, context):
    if event.get("crash"):
        os._exit(3)
    time.sleep(event.get("sleep", 0))
    return {"requestId": context.aws_request_id}

"""
    + BACKGROUND_HANDLER
)

TELEMETRY_NOT_SUPPORTED = '{"errorMessage":"Telemetry API is not supported","errorType":"Telemetry.NotSupported"}\n'
LOGS_NOT_SUPPORTED = '{"errorMessage":"Logs API is not supported","errorType":"Logs.NotSupported"}\n'


class Setup(FunctionAndLayer):
    def __init__(self, root: Path) -> None:
        super().__init__(root, HANDLERS, "rie_extension.py")

    def environment(self, behaviour: str, handler: str = "handlers.main", **kwargs: Any) -> LambdaEnvironment:
        return LambdaEnvironment(
            self.function,
            handler,
            layer_dir=self.layer,
            env=self.variables(),
            share=[self.root],
            behaviour=behaviour,
            **kwargs,
        )

    def shutdown_reasons(self, who: str) -> list[str]:
        return [r["event"]["shutdownReason"] for r in self.records(who, "event") if r["type"] == "SHUTDOWN"]


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


@pytest.mark.parametrize(
    ("behaviour", "spelled"),
    [("lambda", ["timeout", "failure", "spindown"]), (RIE, ["Timeout", "ReleaseFail", "SandboxTerminated"])],
)
def test_shutdown_reasons_are_spelled_as_the_behaviour_spells_them(
    setup: Setup, behaviour: str, spelled: list[str]
) -> None:
    setup.extension("watcher")
    with setup.environment(behaviour, timeout_s=0.5) as env:
        timed_out = env.invoke({"sleep": 5})
        crashed = env.invoke({"crash": True})
        fine = env.invoke({})
    assert [timed_out.status, crashed.status, fine.status] == ["timeout", "failure", "success"]
    # Each reset is followed by a new Init at the next invoke.
    assert crashed.init is not None
    assert fine.init is not None
    assert setup.shutdown_reasons("watcher") == spelled
    assert [s.reason for s in env.shutdowns] == spelled


def test_a_failed_init_shuts_down_with_spindown_under_the_emulator(setup: Setup) -> None:
    (setup.function / "broken.py").write_text("raise RuntimeError('missing configuration')\n")
    setup.extension("watcher")
    with setup.environment(RIE, handler="broken.handler") as env:
        result = env.invoke({})
    assert result.status == "failure"
    assert setup.shutdown_reasons("watcher")[0] == "spindown"


@pytest.mark.parametrize("behaviour", ["lambda", RIE])
def test_telemetry_subscriptions_are_answered_202_not_supported_and_nothing_is_delivered(
    setup: Setup, behaviour: str
) -> None:
    setup.extension("listener", subscribe=True)
    with setup.environment(behaviour) as env:
        assert env.invoke({}).status == "success"
        env.invoke({})
    subscribed = {r["path"]: r for r in setup.records("listener", "subscribed")}
    telemetry = subscribed["/2022-07-01/telemetry"]
    batches = setup.records("listener", "telemetry")
    if behaviour == RIE:
        assert telemetry["status"] == 202
        assert telemetry["body"] == TELEMETRY_NOT_SUPPORTED
        assert telemetry["content_type"] == "application/json"
        assert subscribed["/2020-08-15/logs"]["status"] == 202
        assert subscribed["/2020-08-15/logs"]["body"] == LOGS_NOT_SUPPORTED
        assert batches == []
    else:
        # The same listener does get records where the API is served: the empty list above is
        # the emulator's doing, not a listener that cannot be reached.
        assert telemetry["status"] == 200
        assert any("platform.runtimeDone" in b["types"] for b in batches)


@pytest.mark.parametrize("behaviour", ["lambda", RIE])
def test_the_response_waits_for_a_slow_extension_only_under_the_emulator(setup: Setup, behaviour: str) -> None:
    setup.extension("slow", after_invoke_s=0.3)
    with setup.environment(behaviour) as env:
        env.invoke({})  # the cold start, out of the way
        result = env.invoke({})
    assert result.status == "success"
    assert result.response_latency_ms is not None
    assert result.post_runtime_ms is not None
    # Either way the extension's 300 ms, counted from the INVOKE it gets while the runtime
    # works, run on past the runtime's response, and are billed.
    assert result.post_runtime_ms >= 250
    assert result.duration_ms >= 300
    if behaviour == RIE:
        assert result.response_latency_ms >= 300
        assert result.response_latency_ms == result.duration_ms
    else:
        assert result.response_latency_ms < 250


def test_nothing_is_frozen_between_invocations_under_the_emulator(setup: Setup) -> None:
    with setup.environment(RIE, handler="handlers.background") as env:
        assert env.invoke({}).payload == {"started": True}
        env.idle(0.6)
        later = env.invoke({})
    assert later.status == "success"
    # The thread ticks every 10 ms whenever it can run; frozen, it would leave a 600 ms gap.
    assert later.payload["largest_gap"] < 0.3
    assert not [what for _, who, what in env.timeline if who == "environment"]


@pytest.mark.parametrize(("request_event", "reason"), [({"crash": True}, "ReleaseFail"), ({"sleep": 5}, "Timeout")])
def test_an_extension_busy_when_the_emulator_resets_is_killed_at_the_deadline(
    setup: Setup, request_event: dict[str, Any], reason: str
) -> None:
    setup.extension("busy", after_invoke_s=30)
    setup.extension("idle")
    with setup.environment(RIE, timeout_s=0.5) as env:
        started = time.monotonic()
        result = env.invoke(request_event)
        took = time.monotonic() - started
        [reset] = env.shutdowns
    assert result.status == ("failure" if reason == "ReleaseFail" else "timeout")
    assert reset.reason == reason
    by_name = {e.name: e for e in reset.extensions}
    # Busy with the invocation, it never called next again: it never had SHUTDOWN, and was
    # given the whole budget before the kill.
    assert by_name["busy"].killed is True
    assert by_name["busy"].exit_ms is None
    assert setup.shutdown_reasons("busy") == []
    assert setup.records("busy", "exiting") == []
    assert by_name["idle"].killed is False
    assert setup.shutdown_reasons("idle") == [reason]
    assert took >= 1.9
    # The emulator answers the caller only once the reset is over.
    assert result.response_latency_ms is not None
    assert result.response_latency_ms >= 1900


def test_at_shutdown_the_emulator_stops_the_runtime_before_extensions_hear_of_it(setup: Setup) -> None:
    (setup.function / "stubborn.py").write_text(
        "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n\ndef handler(event, context):\n    return 1\n"
    )
    setup.extension("watcher")
    with setup.environment(RIE, handler="stubborn.handler") as env:
        assert env.invoke({}).payload == 1
        started = time.time()
        result = env.shutdown()
    assert result.reason == "SandboxTerminated"
    [event] = [r for r in setup.records("watcher", "event") if r["type"] == "SHUTDOWN"]
    # The runtime ignores SIGTERM: SHUTDOWN came only once its 600 ms were up and it was killed,
    # and with the deadline of the whole 2,000 ms budget, not of what was left.
    assert event["t"] - started >= 0.55
    assert event["event"]["deadlineMs"] / 1000 - started == pytest.approx(2.0, abs=0.1)


def test_the_behaviour_is_checked(setup: Setup) -> None:
    with pytest.raises(ValueError, match="behaviour='sam'"):
        LambdaEnvironment(setup.function, "handlers.main", behaviour="sam")
    with pytest.raises(ValueError, match="on-demand lifecycle only"):
        LambdaEnvironment(setup.function, "handlers.main", behaviour=RIE, lifecycle="lambda-managed-instances")
    with pytest.raises(ValueError, match="telemetry_api='refused'"):
        LambdaEnvironment(setup.function, "handlers.main", behaviour=RIE, telemetry_api="refused")
    assert LambdaEnvironment(setup.function, "handlers.main").behaviour == "lambda"


def test_local_command_takes_the_behaviour(setup: Setup) -> None:
    done = posthog_lambda_command(
        "local", "--function", str(setup.function), "--handler", "handlers.main", "--behaviour", RIE
    )
    assert done.returncode == 0, done.stderr
    assert f"environment: on-demand, behaving as the {RIE}" in done.stdout
    assert ": success (request " in done.stdout
    assert "shutdown (SandboxTerminated, deadline 2000 ms)" in done.stdout
    refused = posthog_lambda_command(
        "local",
        "--function",
        str(setup.function),
        "--handler",
        "handlers.main",
        "--behaviour",
        RIE,
        "--lifecycle",
        "lambda-managed-instances",
    )
    assert refused.returncode == 2
    assert "--behaviour runtime-interface-emulator goes with --lifecycle on-demand" in refused.stderr
