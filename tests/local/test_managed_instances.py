"""The local environment in Lambda Managed Instances mode keeps that lifecycle's contract: concurrent
invocations in awslambdaric's worker processes, never frozen, extensions for SHUTDOWN only, the
2025-01-29 Telemetry API, timeouts and crashes that do not reset, non-root processes.

The function and the extension (fixtures/managed_extension.py) report to a hub in this process
over TCP (the environment shares this machine's network): each report is a JSON line, and a report
naming a gate is held until the test opens it, so a test awaits what it checks and handlers wait
for the test without sleeping."""

from __future__ import annotations

import json
import os
import select
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from posthog_lambda.local import InvokeResult, LambdaEnvironment
from tests.local import BACKGROUND_HANDLER, posthog_lambda_command

FIXTURES = Path(__file__).parent / "fixtures"
LMI = "lambda-managed-instances"

HANDLERS = (
    """
import http.client, json, os, signal, socket, threading, time

HUB = os.environ["TEST_HUB"]

def report(what, gate=None, **details):
    host, port = HUB.rsplit(":", 1)
    with socket.create_connection((host, int(port))) as connection:
        record = {"who": "handler", "what": what, "gate": gate, "pid": os.getpid(), "sent": time.monotonic(), **details}
        connection.sendall((json.dumps(record) + "\\n").encode())
        if gate is not None:
            connection.recv(1)

if os.environ.get("TEST_CATCH_SIGTERM"):
    # Blocked in every thread, taken by one: the worker hears SIGTERM and goes on running.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

    def _await_sigterm():
        signal.sigwait({signal.SIGTERM})
        report("sigterm")

    threading.Thread(target=_await_sigterm, daemon=True).start()

report(
    "imported",
    uid=os.getuid(),
    init_type=os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE"),
    max_concurrency=os.environ.get("AWS_LAMBDA_MAX_CONCURRENCY"),
)

def echo(event, context):
    print("hello from the handler", context.aws_request_id)
    return {"echo": event, "pid": os.getpid(), "uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups()}

def gate(event, context):
    report("started", gate=event["gate"], requestId=context.aws_request_id)
    return {"pid": os.getpid()}

def fail(event, context):
    raise ValueError("bad input")

def write(event, context):
    with open("/tmp/" + event["name"], "w") as f:
        f.write("written")
    return echo(event, context)

def late(event, context):
    report("started", gate=event["gate"], requestId=context.aws_request_id)
    # Past its deadline by now: post its result itself, as the runtime client is about to.
    connection = http.client.HTTPConnection(os.environ["AWS_LAMBDA_RUNTIME_API"])
    connection.request("POST", f"/2018-06-01/runtime/invocation/{context.aws_request_id}/response", b'"late"')
    response = connection.getresponse()
    report("late_post", status=response.status, body=json.loads(response.read()))
    return "late"

def crash(event, context):
    report("crashing", requestId=context.aws_request_id)
    if event["how"] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(3)


def main(event, context):
    return globals()[event.get("do", "echo")](event, context)
"""
    + BACKGROUND_HANDLER
)


class Hub:
    """Where the environment's processes report (see the module's doc)."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self.records: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._held: dict[str, list[socket.socket]] = {}
        self._open: set[str] = set()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._receive, args=(connection,), daemon=True).start()

    def _receive(self, connection: socket.socket) -> None:
        data = b""
        while not data.endswith(b"\n"):
            chunk = connection.recv(65536)
            if not chunk:
                break
            data += chunk
        if not data:
            connection.close()
            return
        record = json.loads(data)
        with self._cond:
            record["t"] = time.monotonic()
            self.records.append(record)
            gate = record.get("gate")
            hold = gate is not None and gate not in self._open and not self._closed
            if hold:
                self._held.setdefault(gate, []).append(connection)
            self._cond.notify_all()
        if not hold:
            if gate is not None:
                connection.sendall(b"1")
            connection.close()

    def open(self, gate: str) -> None:
        """Let through every report held at ``gate``, and those to come."""
        with self._cond:
            self._open.add(gate)
            held = self._held.pop(gate, [])
        for connection in held:
            connection.sendall(b"1")
            connection.close()

    def find(
        self,
        who: str | None = None,
        what: str | None = None,
        where: Callable[[dict[str, Any]], bool] = lambda record: True,
        **match: Any,
    ) -> list[dict[str, Any]]:
        """The reports of ``who`` about ``what`` with the values in ``match``, for which ``where`` holds,
        in the order they were made (each comes on a connection of its own: they may arrive in
        another)."""
        with self._cond:
            found = [
                r
                for r in self.records
                if who in (None, r["who"])
                and what in (None, r["what"])
                and all(r.get(k) == v for k, v in match.items())
                and where(r)
            ]
        return sorted(found, key=lambda r: r.get("sent", r["t"]))

    def wait(
        self,
        who: str | None = None,
        what: str | None = None,
        count: int = 1,
        timeout: float = 20.0,
        where: Callable[[dict[str, Any]], bool] = lambda record: True,
        **match: Any,
    ) -> list[dict[str, Any]]:
        """At least ``count`` reports as :meth:`find` finds them, once they are in."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(found := self.find(who, what, where, **match)) < count:
                left = deadline - time.monotonic()
                assert left > 0, f"{len(found)} of {count} reports {who} {what} {match} within {timeout} s"
                self._cond.wait(left)
            return found

    def close(self) -> None:
        with self._cond:
            self._closed = True
            held = [c for connections in self._held.values() for c in connections]
            self._held = {}
        for connection in held:
            connection.close()
        self._listener.close()


class Setup:
    def __init__(self, root: Path, hub: Hub) -> None:
        self.hub = hub
        self.function = root / "function"
        self.function.mkdir()
        (self.function / "handlers.py").write_text(HANDLERS)
        self.layer = root / "layer"
        (self.layer / "extensions").mkdir(parents=True)
        self.extensions: dict[str, dict[str, Any]] = {}

    def extension(self, name: str, **config: Any) -> None:
        path = self.layer / "extensions" / name
        path.write_text(f"#!{sys.executable} -S\n" + (FIXTURES / "managed_extension.py").read_text())
        path.chmod(0o755)
        self.extensions[name] = config

    def environment(self, handler: str = "handlers.main", **kwargs: Any) -> LambdaEnvironment:
        env = {"TEST_HUB": self.hub.address, "TEST_EXTENSIONS": json.dumps(self.extensions)}
        env.update(kwargs.pop("env", {}))
        kwargs.setdefault("max_concurrency", 2)
        return LambdaEnvironment(self.function, handler, layer_dir=self.layer, env=env, lifecycle=LMI, **kwargs)


@pytest.fixture
def hub() -> Iterator[Hub]:
    hub = Hub()
    yield hub
    hub.close()


@pytest.fixture
def setup(tmp_path: Path, hub: Hub) -> Setup:
    return Setup(tmp_path, hub)


def in_thread(call: Callable[[], InvokeResult]) -> Callable[[], InvokeResult]:
    """Run ``call`` in a thread now; what the returned function gives when it is done."""
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(call)
    pool.shutdown(wait=False)
    return lambda: future.result(timeout=30)


def all_gone(pids: list[int], timeout: float = 10.0) -> bool:
    """Whether every process of ``pids`` has exited (zombies count), waiting up to ``timeout``."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            ready, _, _ = select.select([pidfd], [], [], max(0.0, deadline - time.monotonic()))
        finally:
            os.close(pidfd)
        if not ready:
            return False
    return True


def test_lifecycle_and_concurrency_are_validated(setup: Setup) -> None:
    with pytest.raises(ValueError, match="lifecycle"):
        LambdaEnvironment(setup.function, "handlers.main", lifecycle="reserved-concurrency")
    with pytest.raises(ValueError, match="max_concurrency"):
        LambdaEnvironment(setup.function, "handlers.main", max_concurrency=4)
    with pytest.raises(ValueError, match="max_concurrency"):
        LambdaEnvironment(setup.function, "handlers.main", lifecycle="snap-start", max_concurrency=4)
    with pytest.raises(ValueError, match="max_concurrency"):
        LambdaEnvironment(setup.function, "handlers.main", lifecycle=LMI, max_concurrency=0)
    managed = LambdaEnvironment(setup.function, "handlers.main", lifecycle=LMI)
    assert isinstance(managed, LambdaEnvironment)
    assert managed.max_concurrency == 4
    assert LambdaEnvironment(setup.function, "handlers.main").lifecycle == "on-demand"


def test_workers_serve_invocations_at_once_and_one_too_many_is_unavailable(setup: Setup, hub: Hub) -> None:
    with setup.environment(max_concurrency=4) as env:
        init = env.init()
        assert init.error is None
        assert env.wait_for_workers(4)
        workers = env.worker_pids()
        assert len(workers) == 4
        named = {name: pid for name, pid in env.pids().items() if name.startswith("worker-")}
        assert named == {f"worker-{n}": pid for n, pid in enumerate(workers, start=1)}
        results = [in_thread(lambda: env.invoke({"do": "gate", "gate": "together"}, timeout_s=20)) for _ in range(4)]
        # All four handlers are in and none can leave: four workers hold an invocation each.
        started = hub.wait("handler", "started", count=4)
        refused = env.invoke({"do": "gate", "gate": "never"})
        hub.open("together")
        done = [result() for result in results]
    assert len({r["pid"] for r in started}) == 4
    assert refused.status == "unavailable"
    assert refused.error is not None
    assert refused.error["errorType"] == "Runtime.Unavailable"
    assert hub.find("handler", "started", gate="never") == []
    assert [r.status for r in done] == ["success"] * 4
    assert {r.payload["pid"] for r in done} == set(workers)
    assert {r["requestId"] for r in started} == {r.request_id for r in done}
    assert len({r.request_id for r in done}) == 4
    imported = hub.find("handler", "imported")
    assert len(imported) == 4  # every worker imported the handler: an Init each
    assert {r["init_type"] for r in imported} == {LMI}
    assert {r["max_concurrency"] for r in imported} == {"4"}


def test_invoke_registration_is_refused_and_extensions_hear_only_shutdown(setup: Setup, hub: Hub) -> None:
    setup.extension("eager", registrations=[["INVOKE", "SHUTDOWN"], ["SHUTDOWN"]])
    setup.extension("plain")
    with setup.environment() as env:
        results = [env.invoke({"n": n}) for n in range(3)]
        handed = [what for _, who, what in env.timeline if who in ("eager", "plain")]
        first_invocation = min(t for t, _, what in env.timeline if what.startswith("invocation "))
        events_before_shutdown = hub.find(what="event")
        shutdown = env.shutdown()
    assert [r.status for r in results] == ["success"] * 3
    assert results[0].init is not None
    assert results[0].init.error is None
    assert handed == []
    assert events_before_shutdown == []
    refused, accepted = hub.find("eager", "registered")
    assert refused["status"] == 403
    assert refused["body"] == {
        "errorType": "Extension.InvalidEventType",
        "errorMessage": "INVOKE: ErrorInvalidEventType",
    }
    assert accepted["status"] == 200
    assert accepted["events"] == ["SHUTDOWN"]
    assert [r["status"] for r in hub.find("plain", "registered")] == [200]
    for name in ("eager", "plain"):
        # In next since Init; its first answer is SHUTDOWN.
        assert hub.find(name, "next")[0]["t"] < first_invocation
        [event] = hub.wait(name, "event")
        assert event["event"]["eventType"] == "SHUTDOWN"
        assert event["event"]["shutdownReason"] == "spindown"
        assert event["event"]["deadlineMs"] > time.time() * 1000 - 10_000
    assert [(e.name, e.killed) for e in shutdown.extensions] == [("eager", False), ("plain", False)]
    # Everyone is told this is LMI; only the runtime gets the concurrency.
    [started] = hub.find("plain", "started")
    assert started["init_type"] == LMI
    assert "AWS_LAMBDA_MAX_CONCURRENCY" not in started["env"]
    assert "AWS_LAMBDA_INITIALIZATION_TYPE" in started["env"]
    assert {r["max_concurrency"] for r in hub.find("handler", "imported")} == {"2"}


def test_telemetry_takes_the_2025_schema_during_init_only(setup: Setup, hub: Hub) -> None:
    setup.extension("listener", telemetry=["2022-12-13", "2025-01-29"], late_subscribe=True)
    with setup.environment(max_concurrency=1) as env:
        assert env.init().error is None
        hub.open("late_subscribe")
        [late] = hub.wait("listener", "late_subscribed")
        result = env.invoke({})
        hub.wait("listener", "telemetry", type="platform.report")
        # A line the handler printed, delivered as the function's log.
        hub.wait("listener", "telemetry", type="function", where=lambda r: result.request_id in r["record"])
    wrong, right = hub.find("listener", "subscribed")
    assert wrong["schema"] == "2022-12-13"
    assert wrong["status"] == 400
    assert 'value must be "2025-01-29"' in wrong["body"]["errorMessage"]
    assert right["status"] == 200
    assert late["status"] == 403
    assert late["body"]["errorType"] == "Telemetry.SubscriptionClosed"
    assert result.status == "success"
    lines = [r["record"] for r in hub.find("listener", "telemetry", type="function")]
    assert [line for line in lines if result.request_id in line] == [f"hello from the handler {result.request_id}"]


def test_each_invocation_is_reported_with_its_status_and_there_is_no_runtime_done(setup: Setup, hub: Hub) -> None:
    setup.extension("listener", telemetry=["2025-01-29"])
    with setup.environment(max_concurrency=2) as env:
        assert env.init().error is None
        assert env.wait_for_workers(2)
        success = env.invoke({})
        error = env.invoke({"do": "fail"})
        timed_out = env.invoke({"do": "gate", "gate": "slow"}, timeout_s=0.5)
        held = in_thread(lambda: env.invoke({"do": "gate", "gate": "held"}, timeout_s=20))
        hub.wait("handler", "started", gate="held")
        # One worker still runs the timed-out handler, the other this one: none is free.
        unavailable = env.invoke({})
        hub.open("held")
        released = held()
        # Each report arrives as the invocation ends, with nothing else happening: never frozen.
        hub.wait("listener", "telemetry", type="platform.report", count=4)
        hub.open("slow")
    assert [success.status, error.status, timed_out.status, released.status] == [
        "success",
        "error",
        "timeout",
        "success",
    ]
    assert unavailable.status == "unavailable"
    assert error.error is not None
    assert error.error["errorType"] == "ValueError"
    assert error.error["errorMessage"] == "bad input"
    telemetry = hub.find("listener", "telemetry")
    assert "platform.runtimeDone" not in {r["type"] for r in telemetry}
    reports = {r["record"]["requestId"]: r["record"] for r in telemetry if r["type"] == "platform.report"}
    assert {rid: r["status"] for rid, r in reports.items()} == {
        success.request_id: "success",
        error.request_id: "error",
        timed_out.request_id: "timeout",
        released.request_id: "success",
    }
    assert reports[timed_out.request_id]["metrics"]["durationMs"] >= 500
    assert reports[success.request_id]["metrics"]["durationMs"] > 0
    starts = [r["record"] for r in telemetry if r["type"] == "platform.start"]
    expected = [success, error, timed_out, released]  # nothing for the unavailable one
    assert starts == [{"requestId": r.request_id, "version": "$LATEST"} for r in expected]


def test_a_timeout_leaves_the_worker_running_and_its_late_result_is_refused(setup: Setup, hub: Hub) -> None:
    with setup.environment(max_concurrency=2) as env:
        assert env.init().error is None
        assert env.wait_for_workers(2)
        timed_out = env.invoke({"do": "late", "gate": "late"}, timeout_s=0.5)
        [late_start] = hub.wait("handler", "started", gate="late")
        other = in_thread(lambda: env.invoke({"do": "gate", "gate": "other"}, timeout_s=20))
        [other_start] = hub.wait("handler", "started", gate="other")
        hub.open("other")
        untouched = other()
        hub.open("late")
        [late_post] = hub.wait("handler", "late_post")
        # Back in next after its handler returned, the worker is free again.
        assert env.wait_for_workers(2)
        again = [in_thread(lambda: env.invoke({"do": "gate", "gate": "again"}, timeout_s=20)) for _ in range(2)]
        hub.wait("handler", "started", gate="again", count=2)
        hub.open("again")
        served = [result() for result in again]
        shutdowns = list(env.shutdowns)
    assert timed_out.status == "timeout"
    assert timed_out.error == {"errorType": "Sandbox.Timedout", "errorMessage": "Task timed out after 0.50 seconds"}
    assert late_start["requestId"] == timed_out.request_id
    assert untouched.status == "success"
    assert other_start["pid"] != late_start["pid"]
    assert late_post["status"] == 410
    assert late_post["body"]["errorType"] == "Runtime.InvokeTimeout"
    assert [r.status for r in served] == ["success", "success"]
    assert {r.payload["pid"] for r in served} == {late_start["pid"], other_start["pid"]}
    assert shutdowns == []  # never reset
    assert len(hub.find("handler", "imported")) == 2  # no second Init


def test_workers_that_exit_fail_only_their_invocations(setup: Setup, hub: Hub) -> None:
    setup.extension("listener", telemetry=["2025-01-29"])
    with setup.environment(max_concurrency=3) as env:
        assert env.init().error is None
        assert env.wait_for_workers(3)
        held = in_thread(lambda: env.invoke({"do": "gate", "gate": "held"}, timeout_s=20))
        [held_start] = hub.wait("handler", "started", gate="held")
        crashes = [env.invoke({"do": "crash", "how": how}, timeout_s=20) for how in ("exit", "kill")]
        hub.open("held")
        survivor = held()
        remaining = env.worker_pids()
        after = env.invoke({}, timeout_s=20)
        hub.wait("listener", "telemetry", type="platform.report", count=4)
        shutdowns = list(env.shutdowns)
    assert [c.status for c in crashes] == ["failure", "failure"]
    for crash in crashes:
        assert crash.error is not None
        assert crash.error["errorType"] == "Runtime.ExitError"
        assert crash.request_id in crash.error["errorMessage"]
    assert survivor.status == "success"
    assert remaining == [held_start["pid"]]  # the slots of the others are gone
    assert after.status == "success"
    assert after.payload["pid"] == held_start["pid"]
    assert after.init is None
    assert shutdowns == []
    reports = {
        r["record"]["requestId"]: r["record"]["status"]
        for r in hub.find("listener", "telemetry", type="platform.report")
    }
    assert reports == {
        crashes[0].request_id: "failure",
        crashes[1].request_id: "failure",
        survivor.request_id: "success",
        after.request_id: "success",
    }


def test_a_background_thread_runs_between_invocations(setup: Setup) -> None:
    with setup.environment(max_concurrency=1) as env:
        assert env.invoke({"do": "background"}).payload == {"started": True}
        env.idle(1.0)
        later = env.invoke({"do": "background"})
    assert later.status == "success"
    # It ticks every 10 ms; frozen, the gap would be as long as the idle time.
    assert later.payload["largest_gap"] < 0.5
    assert later.payload["ticks"] >= 20


def test_function_and_extensions_do_not_run_as_root(setup: Setup, hub: Hub) -> None:
    setup.extension("plain")
    # Closed to others, as temporary directories are: the layer stays usable all the same.
    setup.layer.chmod(0o700)
    with setup.environment(max_concurrency=1) as env:
        result = env.invoke({"do": "write", "name": "by-the-function"})
        owner = (env.tmp_dir / "by-the-function").stat().st_uid
    assert result.status == "success"
    assert result.payload["uid"] != 0
    assert result.payload["uid"] == 993
    assert result.payload["gid"] == 993
    assert 0 not in result.payload["groups"]
    # Root here: really uid 993 (not root in a user namespace). Not root: this very user outside.
    assert owner == (993 if os.geteuid() == 0 else os.getuid())
    [started] = hub.find("plain", "started")
    assert started["uid"] == 993
    assert hub.find("handler", "imported")[0]["uid"] == 993


def test_an_extension_exiting_shuts_the_environment_down_and_the_next_invoke_initializes(
    setup: Setup, hub: Hub
) -> None:
    setup.extension("fragile", exit_on_gate="leave")
    setup.extension("watcher")
    with setup.environment(max_concurrency=1) as env:
        first = env.invoke({})
        hub.open("leave")
        [event] = hub.wait("watcher", "event")
        again = env.invoke({})
        shutdowns = [s.reason for s in env.shutdowns]
    assert first.status == "success"
    assert event["event"]["eventType"] == "SHUTDOWN"
    assert event["event"]["shutdownReason"] == "failure"
    assert again.status == "success"
    assert again.init is not None
    assert shutdowns[0] == "failure"
    assert len(hub.find("handler", "imported")) == 2


def test_the_runtime_exiting_shuts_the_environment_down(setup: Setup, hub: Hub) -> None:
    setup.extension("watcher")
    with setup.environment(max_concurrency=2) as env:
        assert env.init().error is None
        assert env.wait_for_workers(2)
        workers = env.worker_pids()
        os.kill(env.pids()["runtime"], 9)
        [event] = hub.wait("watcher", "event")
        again = env.invoke({})
    assert event["event"]["shutdownReason"] == "failure"
    assert all_gone(workers)
    assert again.status == "success"
    assert again.init is not None


def test_shutdown_delivers_telemetry_first_and_gives_the_runtime_sigterm(setup: Setup, hub: Hub) -> None:
    # Buffered for 30 s: only the delivery before SHUTDOWN can bring the report this soon.
    setup.extension("listener", telemetry=["2025-01-29"], timeout_ms=30_000)
    with setup.environment(max_concurrency=2, env={"TEST_CATCH_SIGTERM": "1"}) as env:
        assert env.init().error is None
        assert env.wait_for_workers(2)
        workers = env.worker_pids()
        result = env.invoke({})
        started = time.monotonic()
        shutdown = env.shutdown()
        took = time.monotonic() - started
    [event] = hub.wait("listener", "event")
    assert event["event"]["eventType"] == "SHUTDOWN"
    assert "platform.report" in event["seen_types"]
    [report] = hub.wait("listener", "telemetry", type="platform.report")
    assert report["record"]["requestId"] == result.request_id
    # Both workers heard SIGTERM, went on, and were killed 600 ms later.
    assert {r["pid"] for r in hub.wait("handler", "sigterm", count=2)} == set(workers)
    assert took >= 0.55
    assert all_gone(workers, timeout=0)  # no process outlives the environment
    assert shutdown.reason == "spindown"
    assert [(e.name, e.killed) for e in shutdown.extensions] == [("listener", False)]


def test_a_handler_that_cannot_be_imported_fails_init(setup: Setup) -> None:
    (setup.function / "broken.py").write_text("raise RuntimeError('missing configuration')\n")
    with setup.environment("broken.handler", max_concurrency=3) as env:
        init = env.init()
        result = env.invoke({})
    assert init.error is not None
    assert "Runtime.InitError" in init.error
    assert "missing configuration" in init.error
    assert result.status == "failure"
    assert result.init is not None  # tried again, as the environment was down


def test_local_command_sends_invocations_max_concurrency_at_a_time(tmp_path: Path) -> None:
    function = tmp_path / "function"
    function.mkdir()
    (function / "app.py").write_text(
        "import os, time\n\ndef handler(event, context):\n    time.sleep(0.2)\n    return os.getpid()\n"
    )
    done = posthog_lambda_command(
        "local",
        "--function",
        str(function),
        "--handler",
        "app.handler",
        "--lifecycle",
        LMI,
        "--max-concurrency",
        "3",
        "--times",
        "6",
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "environment: lambda-managed-instances, max concurrency 3" in out
    assert out.count("  init: ") == 1
    assert out.count(": success (request ") == 6
    pids = {line.split("response: ")[1] for line in out.splitlines() if "response: " in line}
    assert len(pids) == 3  # each round of three ran in three workers at once
    assert "shutdown (spindown, deadline 2000 ms)" in out


def test_max_concurrency_goes_with_the_managed_lifecycle_only(tmp_path: Path) -> None:
    done = posthog_lambda_command(
        "local", "--function", str(tmp_path), "--handler", "app.handler", "--max-concurrency", "3"
    )
    assert done.returncode == 2
    assert "--max-concurrency goes with --lifecycle lambda-managed-instances" in done.stderr
