"""The Lambda Managed Instances lifecycle: one environment serving many invocations at once,
never frozen.

What changes from on-demand (``lifecycle``), as AWS documents Lambda Managed Instances (LMI) and
as its runtime interface emulator behaves in that mode:

- The runtime gets ``AWS_LAMBDA_MAX_CONCURRENCY`` (extensions do not) and every process
  ``AWS_LAMBDA_INITIALIZATION_TYPE=lambda-managed-instances``; awslambdaric then forks that many
  worker processes, each importing the handler (an Init of its own) and calling ``next``. Their
  log lines are plain lines on the runtime's output (no log socket is given).
- Init: extensions start in parallel and must register, then the runtime starts; Init is over
  when every extension waits in ``next`` and at least one worker does (10 s at most). It happens
  on :meth:`~ManagedInstancesEnvironment.init` or on the first invoke.
- Extensions may register for SHUTDOWN only (INVOKE: 403 ``Extension.InvalidEventType``), so
  their ``next`` is answered at shutdown. The Telemetry API takes schema ``2025-01-29`` only
  (400 otherwise), during Init only (403 ``Telemetry.SubscriptionClosed`` after); records flow
  as they come: ``platform.start`` when a worker is handed an invocation, ``platform.report``
  when it ends, no ``platform.runtimeDone``.
- Invoke is safe from many threads: each invocation goes to a worker waiting in ``next`` (or one
  that has just posted its last result: it is on its way there, and gets it from that call); with
  none free it is refused at once (``unavailable``, ``Runtime.Unavailable``). Nothing waits for
  extensions and nothing is frozen: background threads run between invocations.
- A timed-out invocation fails (``Sandbox.Timedout``) but the worker goes on with its handler; its
  late result is answered 410 and it serves again from its next ``next``. A worker that exits
  fails the invocation it holds (``Runtime.ExitError``) and its slot is gone (awslambdaric does not
  fork another). The runtime's main process or an extension exiting shuts the environment down
  (SHUTDOWN ``failure``); the next invoke initializes again.
- Shutdown: telemetry delivered, then SHUTDOWN with its 2 s; the runtime gets SIGTERM, then
  SIGKILL 600 ms later.
- The function's and the extensions' processes run as uid/gid 993, not root (see ``sandbox``).

Which worker calls: the Runtime API carries nothing that names the worker, so its TCP connection
does. The client port of each ``next`` call is looked up in ``/proc/net/tcp`` (and ``tcp6``) for
its socket's inode; the worker is the child of the runtime's main process whose
``/proc/<pid>/fd`` links to ``socket:[inode]`` (the main process itself, for a runtime that does
not fork). Every worker found is watched with a pidfd, readable once the process has exited,
even while it is a zombie its parent has not reaped (``/proc/<pid>/stat`` polled every 20 ms
where there are no pidfds); how it exited is read from the zombie's ``/proc/<pid>/stat`` when it
is still there.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import select
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .extensions import epoch_ms_in, function_arn, new_trace_header
from .lifecycle import MANAGED_INSTANCES, LambdaEnvironment, _ms, client_context_headers
from .processes import WorkerProcess
from .results import InitResult, InvokeResult, ShutdownResult
from .routing import (
    Answer,
    ExtensionsRoutes,
    RuntimeRoutes,
    TelemetryRoutes,
    accepted,
    api_error,
    gone,
    json_or_text,
)
from .sandbox import RUNTIME_ONLY, Sandbox, extension_environment
from .telemetry import validate

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from .processes import Process, RuntimeProcess
    from .routing import Request, Routes

SANDBOX_USER = 993
"""The uid and gid the function's and extensions' processes run as (sbx_user1051 on Lambda)."""
SCHEMA_VERSION = "2025-01-29"
"""The only Telemetry API schema Lambda Managed Instances accept."""
RUNTIME_SHUTDOWN_S = 0.6
RUNTIME_ONLY_MANAGED = RUNTIME_ONLY | {"AWS_LAMBDA_MAX_CONCURRENCY"}
_POLL_S = 0.02


@dataclass
class Invocation:
    """One invocation, from its hand-out to a worker until that worker is done with it."""

    request_id: str
    worker: WorkerProcess
    started: float
    result: InvokeResult
    ended: float | None = None
    """When its outcome was decided (response, error, timeout, failure)."""
    timed_out: bool = False
    """Ended by its deadline: the worker may still post a result, which is refused (410)."""


class ManagedInstancesEnvironment(LambdaEnvironment):
    """A Lambda Managed Instances environment: make it with
    ``LambdaEnvironment(..., lifecycle="lambda-managed-instances", max_concurrency=4)``."""

    _LIFECYCLE = MANAGED_INSTANCES
    _RUNTIME_GRACE_S = RUNTIME_SHUTDOWN_S
    _SIGTERM_ALWAYS = True
    _INVOKE_EVENTS = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("lifecycle", MANAGED_INSTANCES)
        super().__init__(*args, **kwargs)
        self._transitions = threading.RLock()
        """Held through Init and Shutdown: concurrent invokes meet one of each, not several."""
        self._generation = 0
        """Counts Inits and teardowns: workers and invocations of an older one are gone."""
        self._workers: dict[int, WorkerProcess] = {}
        self._idle: list[WorkerProcess] = []
        """Workers waiting in ``next`` with nothing handed to them, longest waiting first."""
        self._returning: list[WorkerProcess] = []
        """Workers that have posted their invocation's result and not called ``next`` again yet."""
        self._invocations: dict[str, Invocation] = {}
        """Invocations a worker has and may still post a result for, by request id."""
        self._worker_next_calls = 0
        self._failed: str | None = None
        """Why the environment is going down (its runtime or an extension exited), if it is."""
        self._task_dir = self.function_dir

    # -- setup --------------------------------------------------------------------------------

    def start(self) -> None:
        super().start()
        assert self._sandbox is not None
        if self._sandbox.drops_privileges:
            self._task_dir = self._sandbox.readable_copy(self.function_dir, "task")
            self._sandbox.make_readable(self._runtime_dir)

    def _new_sandbox(self) -> Sandbox:
        return Sandbox(self.layer_dir, exposed=[self.function_dir, *self.share], user=SANDBOX_USER)

    def _route_tables(self) -> list[Routes]:
        return [
            WorkerRoutes(self).table(),
            ExtensionsRoutes(self._extensions_api).table(),
            TelemetryRoutes(self).table(),
        ]

    def function_environment(self) -> dict[str, str]:
        env = super().function_environment()
        managed = {
            "AWS_LAMBDA_INITIALIZATION_TYPE": MANAGED_INSTANCES,
            "AWS_LAMBDA_MAX_CONCURRENCY": str(self.max_concurrency),
        }
        env.update({key: value for key, value in managed.items() if key not in self.user_env})
        return env

    def _task_root(self) -> Path:
        return self._task_dir

    def _extension_environment(self, function_env: Mapping[str, str]) -> dict[str, str]:
        return extension_environment(function_env, RUNTIME_ONLY_MANAGED)

    # -- Init -----------------------------------------------------------------------------------

    def init(self) -> InitResult:
        """Run Init now if the environment is down; otherwise the Init it had."""
        with self._transitions:
            self._settle()
            return super().init()

    def _settle(self) -> None:
        """Finish shutting down an environment that failed (transitions held)."""
        if self._phase == "failed":
            self.shutdown("failure")

    def _begin_init(self) -> None:
        self._generation += 1
        self._workers = {}
        self._idle = []
        self._returning = []
        self._invocations = {}
        self._worker_next_calls = 0
        self._failed = None
        self._request_logs = None

    def _init_done(self, runtime: RuntimeProcess) -> bool:
        return self._worker_next_calls > 0 and all(e.waiting for e in self._extensions)

    # -- Invoke ---------------------------------------------------------------------------------

    def invoke(
        self, event: Any = None, *, timeout_s: float | None = None, client_context: Mapping[str, Any] | None = None
    ) -> InvokeResult:
        """Hand ``event`` (JSON-serializable) to a free worker (waiting in ``next``, or done with
        its last invocation and on its way there) and wait for its response or error, the
        deadline or its exit. Safe to call from many threads at once; with no worker free,
        ``unavailable`` at once. ``client_context`` goes with the invocation, as on-demand's does
        (see :meth:`LambdaEnvironment.invoke`)."""
        context_headers = client_context_headers(client_context)
        request_id = str(uuid.uuid4())
        init: InitResult | None = None
        with self._transitions:
            self._settle()
            if self._phase == "down":
                init = self._init()
                if init.error is not None:
                    self._reset("failure")
                    error = {"errorType": "InitError", "errorMessage": init.error}
                    return InvokeResult(request_id, "failure", error=error, init=init)
        timeout = self.timeout_s if timeout_s is None else timeout_s
        body = json.dumps(event).encode()
        arn = function_arn(self.region, self.function_name)
        trace_header = new_trace_header()
        with self._cond:
            started = time.monotonic()
            # A worker that has posted its result is as good as back in next: it is on its way.
            free = self._idle or self._returning
            if self._phase != "ready" or not free:
                busy = sum(1 for w in self._workers.values() if w.exited is None and w.current is not None)
                message = f"no runtime worker is free ({busy} busy, {self.max_concurrency} at most)"
                error = {"errorType": "Runtime.Unavailable", "errorMessage": message}
                return InvokeResult(request_id, "unavailable", error=error, init=init)
            worker = free.pop(0)
            headers = {
                "Lambda-Runtime-Aws-Request-Id": request_id,
                "Lambda-Runtime-Deadline-Ms": str(epoch_ms_in(timeout)),
                "Lambda-Runtime-Invoked-Function-Arn": arn,
                "Lambda-Runtime-Trace-Id": trace_header,
                **context_headers,
            }
            invocation = Invocation(request_id, worker, started, InvokeResult(request_id, "success", init=init))
            worker.handed = (body, headers)
            worker.current = invocation
            self._invocations[request_id] = invocation
            self._telemetry.emit("platform.start", {"requestId": request_id, "version": "$LATEST"})
            self._attribute_logs()
            self._cond.notify_all()
            deadline = started + timeout
            while invocation.ended is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            if invocation.ended is None:
                # The worker keeps its handler running: it is not reset, only no longer waited for.
                invocation.timed_out = True
                message = f"Task timed out after {timeout:.2f} seconds"
                self._finish(invocation, "timeout", error={"errorType": "Sandbox.Timedout", "errorMessage": message})
                if worker.current is not invocation:
                    self._invocations.pop(request_id, None)
        invocation.result.max_memory_used_mb = self._max_memory_mb()
        return invocation.result

    def _finish(
        self, invocation: Invocation, status: str, payload: Any = None, error: dict[str, Any] | None = None
    ) -> None:
        """Decide the invocation's outcome, once, and report it (lock held)."""
        if invocation.ended is not None:
            return
        invocation.ended = time.monotonic()
        result = invocation.result
        result.status = status
        result.payload = payload
        result.error = error
        result.duration_ms = _ms(invocation.ended - invocation.started)
        result.billed_duration_ms = math.ceil(result.duration_ms)
        if status in ("success", "error"):
            result.response_latency_ms = result.duration_ms
        metrics = {"durationMs": result.duration_ms}
        self._telemetry.emit(
            "platform.report", {"requestId": invocation.request_id, "status": status, "metrics": metrics}
        )
        self._attribute_logs()
        self._cond.notify_all()

    def _attribute_logs(self) -> None:
        """Function log lines are plain lines from any worker: they go to an invocation's logs
        only while it is the only one running (lock held)."""
        running = [i for i in self._invocations.values() if i.ended is None]
        self._request_logs = running[0].result.logs if len(running) == 1 else None

    def wait_for_workers(self, count: int | None = None, timeout: float = 10.0) -> bool:
        """Wait until ``count`` workers (default ``max_concurrency``) wait in ``next`` with
        nothing handed to them; False if that did not happen within ``timeout`` seconds."""
        wanted = self.max_concurrency if count is None else count
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._idle) < wanted:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def idle(self, seconds: float) -> None:
        """Let time pass between invocations. Nothing is frozen: background threads go on."""
        time.sleep(seconds)

    # -- the workers ----------------------------------------------------------------------------

    def worker_pids(self) -> list[int]:
        """The runtime's worker processes that are still running, oldest first."""
        with self._cond:
            generation = self._generation
        self._discover(generation)
        with self._cond:
            return [w.pid for w in self._workers.values() if w.exited is None]

    def pids(self) -> dict[str, int]:
        """The runtime's (``"runtime"``), each extension's and each worker's (``"worker-1"``..)
        process id, by name."""
        with self._cond:
            generation = self._generation
        self._discover(generation)
        with self._cond:
            workers = {w.name: w.pid for w in self._workers.values() if w.exited is None}
        return {**super().pids(), **workers}

    def _max_memory_mb(self) -> int:
        with self._cond:
            pids = [p.process.pid for p in [self._runtime, *self._extensions] if p is not None]
            pids += [w.pid for w in self._workers.values() if w.exited is None and w.pid not in pids]
        return math.ceil(sum(_high_water_kb(pid) for pid in pids) / 1024)

    def _identify(self, port: int | None) -> WorkerProcess | None:
        """The worker whose connection comes from ``port`` of 127.0.0.1 (see the module's doc)."""
        with self._cond:
            runtime = self._runtime
            generation = self._generation
            known = [w.pid for w in self._workers.values() if w.exited is None]
        if runtime is None or port is None or self._server is None:
            return None
        inode = socket_inode(port, int(self._server.server_address[1]))
        if inode is None:
            return None
        main = runtime.process.pid
        # Workers already known first: the usual call is one of them back for more.
        for pid in [*known, *(p for p in child_pids(main) if p not in known), main]:
            if holds_socket(pid, inode):
                self._discover(generation, pid)
                with self._cond:
                    return self._workers.get(pid)
        return None

    def _discover(self, generation: int, also: int | None = None) -> None:
        """Know and watch every child of the runtime's main process (and ``also``), named in the
        order of their pids (their fork order)."""
        with self._cond:
            runtime = self._runtime
        if runtime is None:
            return
        main = runtime.process.pid
        pids = child_pids(main)
        if also is not None and also not in pids:
            pids.append(also)
        with self._cond:
            if generation != self._generation:
                return
            for pid in pids:
                if pid in self._workers:
                    continue
                number = sum(1 for w in self._workers.values() if w.pid != main) + 1
                worker = WorkerProcess("runtime" if pid == main else f"worker-{number}", pid, generation)
                self._workers[pid] = worker
                threading.Thread(
                    target=self._watch_worker, args=(worker,), name=f"watch-{worker.name}", daemon=True
                ).start()

    def _watch_worker(self, worker: WorkerProcess) -> None:
        await_exit(worker.pid)
        status = exit_status(worker.pid)
        with self._cond:
            worker.exited = time.monotonic()
            worker.exit_status = status
            worker.waiting = False
            if worker in self._idle:
                self._idle.remove(worker)
            if worker in self._returning:
                self._returning.remove(worker)
            invocation, worker.current = worker.current, None
            if invocation is not None and worker.generation == self._generation:
                if invocation.ended is None:
                    reason = (
                        f"Runtime exited with error: {status}"
                        if status
                        else "Runtime exited without providing a reason"
                    )
                    message = f"RequestId: {invocation.request_id} Error: {reason}"
                    self._finish(
                        invocation, "failure", error={"errorType": "Runtime.ExitError", "errorMessage": message}
                    )
                self._invocations.pop(invocation.request_id, None)
            self._cond.notify_all()
        self._log(worker.name, "function", f"(exited: {status or 'how is not known'})", emit=False)

    # -- the Runtime API's calls (from the HTTP server's threads, see WorkerRoutes) --------------

    def worker_next(self, port: int | None) -> tuple[bytes, dict[str, str], str]:
        """A worker's ``next`` call: the invocation handed to it (body, headers) and its name;
        no headers once the environment is gone."""
        worker = self._identify(port)
        with self._cond:
            if self._runtime is None or self._phase == "down":
                return b"", {}, ""
            if worker is None:
                # Not found in /proc: served, but it cannot be told apart or watched.
                worker = WorkerProcess(f"unknown-{port}", 0, self._generation)
                self.note("environment", f"could not tell which process calls next from port {port}")
            generation = worker.generation
            if worker in self._returning:
                self._returning.remove(worker)
            if worker.handed is None:
                # Done with what it had (a late result of a timed-out invocation included).
                previous, worker.current = worker.current, None
                if previous is not None and previous.ended is not None:
                    self._invocations.pop(previous.request_id, None)
                self._idle.append(worker)
            worker.waiting = True
            worker.next_calls += 1
            self._worker_next_calls += 1
            self._cond.notify_all()
            while worker.handed is None and generation == self._generation and worker.exited is None:
                self._cond.wait()
            worker.waiting = False
            if worker.handed is None:
                if worker in self._idle:
                    self._idle.remove(worker)
                return b"", {}, ""
            (body, headers), worker.handed = worker.handed, None
            return body, headers, worker.name

    def worker_result(self, request_id: str, body: bytes, error_type: str | None) -> tuple[int, Any]:
        """A worker's response (``error_type`` None) or error for ``request_id``."""
        with self._cond:
            invocation = self._invocations.get(request_id)
            if invocation is not None and invocation.timed_out:
                message = f"{request_id}: ErrorRuntimeInvokeTimeout: the invocation timed out, its result is not taken"
                return 410, api_error("Runtime.InvokeTimeout", message)
            if invocation is None or invocation.ended is not None:
                return 400, api_error("InvalidRequestID", f"no invocation {request_id} waiting for a result")
            if error_type is None:
                self._finish(invocation, "success", payload=json_or_text(body))
            else:
                decoded = json_or_text(body)
                error = decoded if isinstance(decoded, dict) else {"errorMessage": str(decoded)}
                error.setdefault("errorType", error_type)
                self._finish(invocation, "error", error=error)
            self._invocations.pop(request_id, None)
            worker = invocation.worker
            if worker.current is invocation and worker.exited is None and worker not in self._returning:
                self._returning.append(worker)
            return 202, {"status": "OK"}

    def worker_init_error(self, body: bytes, error_type: str) -> tuple[int, Any]:
        """A worker's Init failed: the first report fails Init; the others are refused (403),
        which awslambdaric's workers expect once one of them has reported."""
        with self._cond:
            runtime = self._runtime
            if runtime is None or self._phase != "init" or runtime.init_error is not None:
                return 403, api_error("Runtime.InvalidStateTransition", "Init is not running or has failed already")
            decoded = json_or_text(body)
            error = decoded if isinstance(decoded, dict) else {"errorMessage": str(decoded)}
            error.setdefault("errorType", error_type)
            runtime.init_error = error
            self._cond.notify_all()
            return 202, {"status": "OK"}

    def telemetry_subscribe(self, identifier: str | None, body: Any) -> tuple[int, dict[str, Any] | str]:
        with self._cond:
            extension = self._extensions_api.find(identifier)
            if extension is None:
                return 403, api_error("Extension.InvalidExtensionIdentifier", "register first")
            in_init = self._phase == "init"
        if self.telemetry_api == "refused":
            return 400, api_error("ValidationError", "the Telemetry API is not available in this environment")
        if not isinstance(body, dict) or body.get("schemaVersion") != SCHEMA_VERSION:
            return 400, api_error("ValidationError", f'schemaVersion: value must be "{SCHEMA_VERSION}"')
        if not in_init:
            return 403, api_error(
                "Telemetry.SubscriptionClosed", "Telemetry API subscriptions are accepted during Init only"
            )
        problem = validate(body, (SCHEMA_VERSION,))
        if problem is not None:
            return 400, api_error("ValidationError", problem)
        if self.telemetry_api == "on":
            self._telemetry.subscribe(extension.name, body)
        return 200, "OK"

    # -- failures and Shutdown -------------------------------------------------------------------

    def _watch(self, process: Process, source: str) -> None:
        super()._watch(process, source)

        # Its output can outlive it: the runtime's workers keep the pipe open after its main
        # process is gone. Its exit is awaited on its own.
        def wait() -> None:
            process.process.wait()
            with self._cond:
                if process.exited is None:
                    process.exited = time.monotonic()
                self._cond.notify_all()
            self._process_exited(process)

        threading.Thread(target=wait, name=f"exit-{source}", daemon=True).start()

    def _process_exited(self, process: Process) -> None:
        with self._cond:
            if self._phase != "ready" or (process is not self._runtime and process not in self._extensions):
                return
            failure = self._failure()
            if failure is None:
                return
            self._phase = "failed"
            self._failed = failure
            generation = self._generation
            self._cond.notify_all()
        threading.Thread(target=self._reset_failed, args=(generation,), name="reset", daemon=True).start()

    def _reset_failed(self, generation: int) -> None:
        with self._transitions:
            if self._generation == generation:
                self._settle()

    def shutdown(self, reason: str = "spindown") -> ShutdownResult:
        """Deliver the telemetry there is, send SHUTDOWN (2,000 ms), SIGTERM the runtime (600 ms
        before SIGKILL), then kill what is left."""
        with self._transitions:
            with self._cond:
                failure = self._failed
                if failure is not None and reason == "spindown":
                    # Closing an environment that has failed: it goes down for that failure.
                    reason = "failure"
                self._phase = "shutdown"
                if failure is not None:
                    error = {"errorType": failure.split(":")[0], "errorMessage": failure}
                    for invocation in list(self._invocations.values()):
                        self._finish(invocation, "failure", error=error)
            # Every worker watched, so that the runtime's grace lasts until the last one is gone.
            self._discover(self._generation)
            # The last reports reach the subscribers before their extensions hear of SHUTDOWN.
            self._telemetry.drain(timeout=1.0, now=True)
            return super().shutdown(reason)

    def _runtime_exited(self, runtime: RuntimeProcess) -> bool:
        """Its main process and every worker have exited."""
        with self._cond:
            return runtime.exited is not None and all(w.exited is not None for w in self._workers.values())

    def _kill_everything(self) -> None:
        with self._cond:
            generation = self._generation
        self._discover(generation)
        with self._cond:
            workers = list(self._workers.values())
            self._generation += 1
            error = {"errorType": "Runtime.ExitError", "errorMessage": "the environment was shut down"}
            for invocation in list(self._invocations.values()):
                self._finish(invocation, "failure", error=error)
            self._invocations = {}
            self._idle = []
            self._returning = []
            self._request_logs = None
            self._failed = None
            self._cond.notify_all()
        super()._kill_everything()
        # Not this process's children, the workers are not waited for with the runtime: their
        # exits are awaited here so that none outlives the environment.
        self._wait_until(lambda: all(w.exited is not None for w in workers), time.monotonic() + 5)


class WorkerRoutes(RuntimeRoutes):
    """The Runtime API's routes as the workers of a Lambda Managed Instances environment use
    them: ``next`` knows which worker calls, a late result is answered 410."""

    owner: ManagedInstancesEnvironment

    def next_invocation(self, request: Request) -> Answer:
        body, headers, who = self.owner.worker_next(request.peer[1] if request.peer else None)
        if not headers:
            return gone()
        request_id = headers["Lambda-Runtime-Aws-Request-Id"]
        return Answer(200, body, headers, then=lambda: self.owner.note(who, f"invocation {request_id}"))

    def result(self, request: Request) -> Answer:
        parts = request.parts
        error_type = None
        if parts[4] == "error":
            error_type = request.headers.get("Lambda-Runtime-Function-Error-Type", "Unhandled")
        status, payload = self.owner.worker_result(parts[3], request.body, error_type)
        return accepted() if status == 202 else Answer(status, payload)

    def init_error(self, request: Request) -> Answer:
        error_type = request.headers.get("Lambda-Runtime-Function-Error-Type", "Unknown")
        status, payload = self.owner.worker_init_error(request.body, error_type)
        return accepted() if status == 202 else Answer(status, payload)


# -- which process is which, from /proc ------------------------------------------------------------


def tcp_sockets() -> list[tuple[int, int, str, int]]:
    """(local port, remote port, state as /proc spells it, inode) of this machine's open TCP
    sockets (closed ones waiting out TIME_WAIT have inode 0 and no process: left out)."""
    rows = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) >= 10 and int(fields[9]):
                local, remote = fields[1], fields[2]
                rows.append(
                    (int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16), fields[3], int(fields[9]))
                )
    return rows


def socket_inode(local_port: int, remote_port: int) -> int | None:
    """The inode of this machine's TCP socket from ``local_port`` to ``remote_port``."""
    return next(
        (inode for local, remote, _, inode in tcp_sockets() if (local, remote) == (local_port, remote_port)), None
    )


def holds_socket(pid: int, inode: int) -> bool:
    """Whether process ``pid`` has the socket ``inode`` among its open files."""
    target = f"socket:[{inode}]"
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                return True
    return False


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is ``pid``, by pid."""
    children: set[int] = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    try:
        for task in tasks:
            with contextlib.suppress(FileNotFoundError):
                children.update(int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split())
    except OSError:
        # No /proc/<pid>/task/<tid>/children in this kernel: ask every process for its parent.
        children = {p for p in _all_pids() if _parent(p) == pid}
    return sorted(children)


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` from its third field on (the command name may hold spaces)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def _parent(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else None


def _running(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def await_exit(pid: int) -> None:
    """Return once process ``pid`` has exited (reaped or not)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except (AttributeError, OSError):
        while _running(pid):
            time.sleep(_POLL_S)
        return
    try:
        select.select([pidfd], [], [])
    finally:
        os.close(pidfd)


def exit_status(pid: int) -> str | None:
    """How the exited process ``pid`` ended, worded as Lambda does; None once it is reaped."""
    fields = _stat_fields(pid)
    # Field 52, exit_code, in waitpid's encoding; the list starts at field 3.
    if fields is None or fields[0] not in ("Z", "X") or len(fields) < 50:
        return None
    code = int(fields[49])
    if os.WIFSIGNALED(code):
        number = os.WTERMSIG(code)
        return f"signal: {(signal.strsignal(number) or f'signal {number}').lower()}"
    if os.WIFEXITED(code):
        return f"exit status {os.WEXITSTATUS(code)}"
    return None


def _high_water_kb(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0
