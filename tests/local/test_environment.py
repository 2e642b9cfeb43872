"""The local Lambda environment keeps Lambda's contract, shown with extensions written for these
tests (fixtures/sample_extension.py) and handlers run by the real awslambdaric."""

from __future__ import annotations

import os
import shutil
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from posthog_lambda.local import LambdaEnvironment
from tests.local import BACKGROUND_HANDLER, FunctionAndLayer

HANDLERS = (
    """
import json, os, threading, time

LOG = os.environ["TEST_LOG"]

def log(what, **details):
    with open(LOG, "a") as f:
        f.write(json.dumps({"who": "handler", "what": what, "t": time.time(), **details}) + "\\n")

log("imported", env=sorted(os.environ))

def echo(event, context):
    log("invoked", requestId=context.aws_request_id)
    print("hello from the handler")
    return {"echo": event, "requestId": context.aws_request_id}

def fail(event, context):
    raise ValueError("bad input: " + str(event))

def slow(event, context):
    time.sleep(event.get("seconds", 5))
    return "late"

def crash(event, context):
    os._exit(3)


def layer(event, context):
    import greeting
    try:
        open("/opt/written.txt", "w").close()
        writable = True
    except OSError:
        writable = False
    with open("/opt/data.txt") as f:
        return {"greeting": greeting.GREETING, "data": f.read(), "file": greeting.__file__, "writable": writable}
"""
    + BACKGROUND_HANDLER
)


class Setup(FunctionAndLayer):
    def __init__(self, root: Path) -> None:
        super().__init__(root, HANDLERS, "sample_extension.py")

    def environment(self, handler: str = "handlers.echo", **kwargs: Any) -> LambdaEnvironment:
        env = {**self.variables(), "MY_SETTING": "on"}
        return LambdaEnvironment(self.function, handler, layer_dir=self.layer, env=env, share=[self.root], **kwargs)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    return Setup(tmp_path)


def test_init_waits_for_every_extension_to_register_before_starting_the_runtime(setup: Setup) -> None:
    setup.extension("quick")
    setup.extension("slow", register_delay=0.3)
    with setup.environment() as env:
        result = env.invoke({"x": 1})
    assert result.status == "success"
    assert result.payload == {"echo": {"x": 1}, "requestId": result.request_id}
    registered = {r["who"]: r["t"] for r in setup.records(what="registered")}
    [imported] = setup.records("handler", "imported")
    assert imported["t"] > max(registered.values())
    assert result.init is not None
    by_name = {e.name: e for e in result.init.extensions}
    assert by_name["slow"].register_ms is not None
    assert by_name["slow"].register_ms >= 300
    assert by_name["quick"].first_next_ms is not None
    # Init ended when everyone was in next: both extensions had called it before the handler ran.
    first_next = {r["who"]: r["t"] for r in reversed(setup.records(what="next"))}
    [invoked] = setup.records("handler", "invoked")
    assert max(first_next.values()) < invoked["t"]


def test_invoke_reaches_extensions_before_the_runtime(setup: Setup) -> None:
    setup.extension("watcher")
    with setup.environment() as env:
        results = [env.invoke({"n": n}) for n in range(3)]
    handed = [(who, what) for _, who, what in env.timeline if who in ("watcher", "runtime")]
    for result in results:
        # Handed to the extension (the response written) before the runtime got its invocation.
        assert handed.index(("watcher", f"INVOKE {result.request_id}")) < handed.index(
            ("runtime", f"invocation {result.request_id}")
        )
        [got] = [r for r in setup.records("watcher", "event") if r["event"].get("requestId") == result.request_id]
        assert got["event"]["invokedFunctionArn"].endswith(":function:local-function")
        assert got["event"]["tracing"]["value"].startswith("Root=1-")
    assert results[0].init is not None
    assert results[1].init is None
    assert results[2].init is None


def test_a_background_thread_makes_no_progress_while_frozen(setup: Setup) -> None:
    with setup.environment("handlers.background") as env:
        assert env.invoke({}).payload == {"started": True}
        env.idle(0.6)
        later = env.invoke({})
    assert later.status == "success"
    # The thread ticks every 10 ms whenever it can run: a gap as long as the idle time means it
    # was stopped between the invocations.
    assert later.payload["largest_gap"] >= 0.5


def test_timeout_resets_the_environment_and_the_next_invoke_initializes_again(setup: Setup) -> None:
    setup.extension("watcher")
    with setup.environment("handlers.slow", timeout_s=0.5) as env:
        timed_out = env.invoke({"seconds": 5})
        assert timed_out.status == "timeout"
        assert timed_out.error == {"errorType": "Sandbox.Timedout", "errorMessage": "Task timed out after 0.50 seconds"}
        again = env.invoke({"seconds": 0})
    assert again.status == "success"
    assert again.payload == "late"
    assert again.init is not None
    shutdowns = [r["event"] for r in setup.records("watcher", "event") if r["type"] == "SHUTDOWN"]
    assert shutdowns[0]["shutdownReason"] == "timeout"
    assert len(setup.records("handler", "imported")) == 2


def test_runtime_crash_is_a_failure_and_resets(setup: Setup) -> None:
    setup.extension("watcher")
    with setup.environment("handlers.crash") as env:
        crashed = env.invoke({})
    assert crashed.status == "failure"
    assert crashed.error is not None
    assert "exited with status 3" in crashed.error["errorMessage"]
    shutdowns = [r["event"] for r in setup.records("watcher", "event") if r["type"] == "SHUTDOWN"]
    assert shutdowns[0]["shutdownReason"] == "failure"


def test_handler_error_is_reported_and_the_environment_stays(setup: Setup) -> None:
    with setup.environment("handlers.fail") as env:
        failed = env.invoke({"q": 1})
        second = env.invoke({"q": 2})
    assert failed.status == "error"
    assert failed.error is not None
    assert failed.error["errorType"] == "ValueError"
    assert failed.error["errorMessage"] == "bad input: {'q': 1}"
    assert second.init is None  # no reset for an error the handler raised


def test_an_extension_that_exits_is_an_extension_crash(setup: Setup) -> None:
    setup.extension("fragile", on_invoke="crash")
    with setup.environment() as env:
        result = env.invoke({})
        assert result.status == "failure"
        assert result.error is not None
        assert result.error["errorType"] == "Extension.Crash"
        assert setup.records("fragile", "crashing")
        again = env.invoke({})
    assert again.init is not None


def test_an_extension_ignoring_shutdown_is_killed_at_the_deadline(setup: Setup) -> None:
    setup.extension("stubborn", on_shutdown="ignore")
    setup.extension("polite")
    with setup.environment() as env:
        env.invoke({})
        started = time.monotonic()
        result = env.shutdown()
        took = time.monotonic() - started
    by_name = {e.name: e for e in result.extensions}
    assert by_name["stubborn"].killed is True
    assert by_name["polite"].killed is False
    assert by_name["polite"].exit_ms is not None
    assert by_name["polite"].exit_ms < 2000
    assert took >= 1.9  # the whole shutdown budget was given before the kill
    assert result.reason == "spindown"
    assert setup.records("polite", "exiting")


def test_telemetry_runtime_done_before_the_extension_is_done_and_report_after(setup: Setup) -> None:
    setup.extension("listener", telemetry=True, on_invoke="wait_runtime_done", late_subscribe=True)
    with setup.environment() as env:
        first = env.invoke({"n": 1})
        reports = [r for r in setup.records("listener", "telemetry") if r["type"] == "platform.report"]
        assert reports == []  # produced after the extensions finished: the environment is frozen
        second = env.invoke({"n": 2})
        env.shutdown()
    assert setup.records("listener", "subscribed")[0]["status"] == 200
    assert setup.records("listener", "late_subscribe")[0]["status"] == 400
    seen = {r["requestId"]: r["found"] for r in setup.records("listener", "runtime_done_seen")}
    assert seen == {first.request_id: True, second.request_id: True}
    telemetry = setup.records("listener", "telemetry")
    done = [r["record"] for r in telemetry if r["type"] == "platform.runtimeDone"]
    assert [d["requestId"] for d in done] == [first.request_id, second.request_id]
    assert all(d["status"] == "success" for d in done)
    reports = [r["record"] for r in telemetry if r["type"] == "platform.report"]
    assert [r["requestId"] for r in reports] == [first.request_id, second.request_id]
    assert reports[0]["metrics"]["initDurationMs"] > 0
    assert "initDurationMs" not in reports[1]["metrics"]
    assert reports[0]["metrics"]["billedDurationMs"] == first.billed_duration_ms
    assert reports[0]["metrics"]["memorySizeMB"] == 128
    assert reports[0]["metrics"]["maxMemoryUsedMB"] == first.max_memory_used_mb > 0
    starts = [r["record"]["requestId"] for r in telemetry if r["type"] == "platform.start"]
    assert starts == [first.request_id, second.request_id]
    lines = [r["line"] for r in telemetry if r["type"] == "function"]
    assert any("hello from the handler" in line for line in lines)
    # The report of the first invocation arrived while the second ran (after the thaw).
    report_time = next(r["t"] for r in telemetry if r["type"] == "platform.report")
    second_event = next(
        r["t"] for r in setup.records("listener", "event") if r["event"].get("requestId") == second.request_id
    )
    assert report_time >= second_event - 0.5
    assert first.post_runtime_ms is not None
    assert first.post_runtime_ms >= 0


def test_extensions_get_the_function_environment_without_runtime_only_variables(setup: Setup) -> None:
    setup.extension("inspector")
    with setup.environment() as env:
        env.invoke({})
    [started] = setup.records("inspector", "started")
    extension_env = set(started["env"])
    [imported] = setup.records("handler", "imported")
    function_env = set(imported["env"])
    for name in ("_HANDLER", "AWS_EXECUTION_ENV", "LAMBDA_TASK_ROOT", "AWS_LAMBDA_LOG_GROUP_NAME"):
        assert name in function_env
        assert name not in extension_env
    for name in ("AWS_LAMBDA_RUNTIME_API", "AWS_REGION", "AWS_LAMBDA_FUNCTION_NAME", "TZ", "MY_SETTING"):
        assert name in extension_env
        assert name in function_env


def test_layer_is_visible_at_opt_and_the_real_opt_is_untouched(setup: Setup) -> None:
    (setup.layer / "python").mkdir()
    (setup.layer / "python" / "greeting.py").write_text('GREETING = "hello from the layer"\n')
    (setup.layer / "data.txt").write_text("layer data")
    setup.extension("inspector")
    before = sorted(os.listdir("/opt")) if os.path.isdir("/opt") else []
    with setup.environment("handlers.layer") as env:
        result = env.invoke({})
    assert result.payload == {
        "greeting": "hello from the layer",
        "data": "layer data",
        "file": "/opt/python/greeting.py",
        "writable": False,  # /opt is read-only, as on Lambda
    }
    assert not (setup.layer / "written.txt").exists()
    [started] = setup.records("inspector", "started")
    assert "extensions" in started["opt"]
    assert "data.txt" in started["opt"]
    after = sorted(os.listdir("/opt")) if os.path.isdir("/opt") else []
    assert after == before
    assert "data.txt" not in after


def test_an_extension_reporting_an_init_error_fails_init(setup: Setup) -> None:
    setup.extension("misconfigured", init_error=True)
    with setup.environment() as env:
        result = env.invoke({})
    assert setup.records("misconfigured", "init_error_sent")[0]["status"] == 202
    assert result.status == "failure"
    assert result.init is not None
    assert result.init.error is not None
    assert "Extension.ConfigInvalid" in result.init.error
    assert setup.records("handler", "invoked") == []


def test_a_handler_that_cannot_be_imported_fails_init(setup: Setup) -> None:
    (setup.function / "broken.py").write_text("raise RuntimeError('missing configuration')\n")
    with setup.environment("broken.handler") as env:
        result = env.invoke({})
    assert result.status == "failure"
    assert result.init is not None
    assert result.init.error is not None
    assert "Runtime.InitError" in result.init.error
    assert "missing configuration" in result.init.error


def test_an_extension_must_register_under_its_file_name(setup: Setup) -> None:
    setup.extension("honest")
    setup.extension("impostor", register_as="someone-else")
    with setup.environment(timeout_s=1) as env:
        result = env.invoke({})
    assert setup.records("impostor", "registered")[0]["status"] == 403
    assert setup.records("honest", "registered")[0]["status"] == 200
    # Init cannot finish without every extension registered.
    assert result.status == "failure"
    assert result.init is not None
    assert result.init.error is not None


def test_no_process_outlives_the_environment(setup: Setup) -> None:
    setup.extension("stubborn", on_shutdown="ignore")
    with setup.environment() as env:
        env.invoke({})
        pids = [p.process.pid for p in env._processes()]
    assert pids
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_function_without_layer_runs_through_awslambdaric(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(
        textwrap.dedent(
            """
            import sys
            def handler(event, context):
                return {"sum": sum(event), "runtime": [p for p in sys.path if "awslambdaric" in p or "runtime" in p]}
            """
        )
    )
    with LambdaEnvironment(tmp_path, "app.handler") as env:
        results = [env.invoke([1, 2, n]) for n in range(5)]
    assert [r.payload["sum"] for r in results] == [3, 4, 5, 6, 7]
    assert all(r.status == "success" for r in results)
    assert all(r.response_latency_ms is not None for r in results)


def test_python3_on_path_is_the_runtimes_interpreter_as_var_lang_bin_is_on_lambda(tmp_path: Path) -> None:
    # The layer's launcher runs the first python3 on PATH where /var/lang/bin/python3 is missing;
    # this machine's PATH may start with a wrapper (pyenv's shim: a shell script, 70 ms of CPU).
    with LambdaEnvironment(tmp_path, "app.handler") as lambda_env:
        path = lambda_env.function_environment()["PATH"]
    found = shutil.which("python3", path=path)
    assert found is not None
    assert Path(found).parent == Path(sys.executable).parent
    assert os.path.realpath(found) == os.path.realpath(sys.executable)
