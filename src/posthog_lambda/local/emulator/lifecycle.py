"""A local Lambda execution environment: the real runtime client, real extensions, real lifecycle.

One HTTP server on 127.0.0.1 serves the Runtime API (2018-06-01), the Extensions API
(2020-01-01) and the Telemetry API (2022-07-01) to the environment's processes (the routes are
in ``routing``), and this module drives them through Init, Invoke and Shutdown as Lambda does
(see the project's reference on Lambda): extensions start in parallel and must all register
before the runtime starts; Init ends when everyone waits in ``next``; INVOKE reaches extensions
before the runtime gets the event; the invocation ends when the runtime and every extension are
back in ``next``; then every process is frozen with SIGSTOP until the next invoke or shutdown. A
timeout, a runtime crash or an extension that exits resets the environment (SHUTDOWN with
reason ``timeout``/``failure``, a new Init on the next invoke). An invocation's client context
(``invoke(..., client_context=...)``) goes to the runtime as Lambda sends it, as compact JSON in
``next``'s ``Lambda-Runtime-Client-Context`` header; ``invoke_api`` serves Lambda's Invoke API in
front of environments, so that a function can invoke another with boto3.

That is the ``on-demand`` lifecycle (also what provisioned concurrency does once initialized).
``LambdaEnvironment(..., lifecycle="lambda-managed-instances")`` is the other one Python
functions can have: many invocations at once in one environment that is never frozen. It is the
same class to its users; its lifecycle is in ``managed`` (:class:`ManagedInstancesEnvironment`,
which this class becomes for that lifecycle), built from the same pieces and the hooks below.

``LambdaEnvironment(..., behaviour="runtime-interface-emulator")`` runs the on-demand lifecycle
as AWS's Runtime Interface Emulator (RIE: ``sam local``, container images run locally) runs it,
where that differs from Lambda (each difference, and where in RIE's source it was found, is in
``behaviour``): SHUTDOWN's reason is spelled ``Timeout``, ``ReleaseFail`` (a runtime or
extension that exits) or ``SandboxTerminated`` (the environment's end: RIE stopped), ``spindown``
after a failed Init; every Telemetry and Logs API subscription is answered 202
``Telemetry.NotSupported`` (``Logs.NotSupported``) and nothing is delivered; the caller is
answered once every extension is back in ``next`` (``response_latency_ms`` is measured to then;
``post_runtime_ms`` still runs from the runtime's response to the last extension's ``next``, time
the caller now waits too), a failed invocation once its reset is over; nothing is frozen between
invocations; at shutdown the runtime has 600 ms after SIGTERM and the extensions get SHUTDOWN
only after it. An extension still busy with the invocation when a reset comes gets SHUTDOWN only
if it calls ``next`` before the deadline; otherwise it is SIGKILLed at the deadline (``killed`` in
the :class:`ShutdownResult`), on Lambda and under RIE alike.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar, cast

from .behaviour import BEHAVIOURS, BY_NAME, INIT_FAILURE, LAMBDA, SPINDOWN
from .cpu import MAX_MEMORY_MB, MIN_MEMORY_MB, CpuShare, lambda_quota_us
from .extensions import ExtensionsApi, epoch_ms_in, function_arn, invoke_event, new_trace_header, shutdown_event
from .processes import ExtensionProcess, Process, RuntimeProcess
from .results import ExtensionInit, ExtensionShutdown, InitResult, InvokeResult, RestoreResult, ShutdownResult
from .routing import ApiServer, ExtensionsRoutes, RuntimeRoutes, TelemetryRoutes, api_error, json_or_text
from .sandbox import (
    Sandbox,
    extension_environment,
    python_path_for,
    runtime_directory,
    signal_group,
)
from .telemetry import Telemetry, validate

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from types import TracebackType
    from typing import Any, Self

    from .routing import Routes

INIT_LIMIT_S = 10.0
SHUTDOWN_LIMIT_S = 2.0
RUNTIME_SHUTDOWN_S = 0.3
"""Of the shutdown budget, what the runtime gets after SIGTERM before SIGKILL."""
ON_DEMAND = "on-demand"
MANAGED_INSTANCES = "lambda-managed-instances"
SNAP_START = "snap-start"
LIFECYCLES = (ON_DEMAND, MANAGED_INSTANCES, SNAP_START)
"""``lifecycle=``: one invocation at a time, frozen in between; Lambda Managed Instances; or
SnapStart (on-demand's, each environment restored from one snapshot of one Init)."""
DEFAULT_MAX_CONCURRENCY = 4
CLIENT_CONTEXT_HEADER = "Lambda-Runtime-Client-Context"
"""The Runtime API's header that carries an invocation's client context to the runtime."""
TELEMETRY_MODES = ("on", "refused", "unreachable")
"""``telemetry_api=``: subscriptions work; are refused (400, as where the API is missing, e.g.
``sam local``); or are accepted but nothing is ever delivered to the listener."""


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def client_context_headers(client_context: Mapping[str, Any] | None) -> dict[str, str]:
    """The header an invocation with ``client_context`` has in ``next``'s answer, as Lambda
    gives it to the runtime: the object as compact JSON (awslambdaric makes
    ``context.client_context`` of it, and ``context.w3c()`` of its ``"w3c"`` key); none without
    one. Raises TypeError for what is not a JSON object, before anything is handed out."""
    if client_context is None:
        return {}
    if not isinstance(client_context, Mapping):
        raise TypeError(f"client_context={client_context!r}: a mapping (a JSON object), or None")
    # ASCII only (json's escapes for the rest): header values are written as Latin-1.
    return {CLIENT_CONTEXT_HEADER: json.dumps(dict(client_context), separators=(",", ":"))}


class LambdaEnvironment:
    """A local Lambda execution environment for one function.

    ``with LambdaEnvironment(function_dir, "app.handler", layer_dir=...) as env:
    result = env.invoke({...})``. Init happens on the first invoke, as for on-demand
    concurrency, or when :meth:`init` is called. Every process it starts is stopped when the
    block ends, also on errors. ``telemetry_api`` breaks the Telemetry API on purpose (see
    ``TELEMETRY_MODES``). ``lifecycle="lambda-managed-instances"`` makes it a Lambda Managed
    Instances environment serving up to ``max_concurrency`` (default 4) invocations at once
    (see ``managed``); ``max_concurrency`` means nothing to the on-demand lifecycle.
    ``behaviour`` (``BEHAVIOURS``) is ``"lambda"`` or, for the on-demand lifecycle only,
    ``"runtime-interface-emulator"``: behave as AWS's emulator does (see ``behaviour``).

    Its processes share a ``/tmp`` of their own (``tmp_dir`` on this machine), as on AWS, so two
    environments never meet there; ``share`` names directories under this machine's ``/tmp``
    that they should also see at their usual paths (a test watching files, say).

    ``cpu_share=True`` gives every process the environment starts (the runtime, each extension,
    and whatever they start) Lambda's CPU for ``memory_mb`` (128 to 10,240): on Lambda 1,769 MB
    is one vCPU and 128 MB 128/1769 of one (7.2 %). Here that is a CFS quota (period 100 ms,
    quota ``round(100 ms * memory_mb / 1769)``, one vCPU at most: :attr:`cpu_quota_us`) on a
    cgroup v1 ``cpu`` cgroup of the environment's own (:attr:`cpu_cgroup`, its
    :meth:`cpu_stat`), made by :meth:`start` and removed by :meth:`close`; each process is in it
    from before it runs anything of its own, so Init is covered too. It needs root and cgroup v1's
    cpu controller (:data:`.cpu.CGROUP_ROOT`); :meth:`start` raises :class:`SandboxError` saying
    which is missing rather than run at full speed. What it cannot reproduce (see ``cpu``): the
    scheduling of Lambda's Firecracker microVM (and its more than one vCPU above 1,769 MB, or a
    faster Init, as Lambda has been seen to give); the platform's own work (the APIs this Python
    serves run outside the quota); and latencies under a quota are bimodal (an invocation fits in
    what is left of the current 100 ms period or waits for the next one), so compare means over
    many invocations. Not for ``lifecycle="lambda-managed-instances"``, whose CPU is set by the
    capacity provider's memory per vCPU (2 to 8 GiB), not by this rule.
    """

    _RUNTIME_GRACE_S = RUNTIME_SHUTDOWN_S
    """At shutdown, what the runtime gets after SIGTERM before SIGKILL."""
    _SIGTERM_ALWAYS = False
    """Whether the runtime gets SIGTERM at shutdown also when no extension is registered."""
    _INVOKE_EVENTS = True
    """Whether extensions may register for INVOKE."""

    _LIFECYCLE = ON_DEMAND
    """The lifecycle this class runs."""
    _BY_LIFECYCLE: ClassVar[dict[str, type[LambdaEnvironment]]] = {}
    """Each other lifecycle's class, registered by defining it (``managed`` is imported with the
    package): this module need not import them."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "_LIFECYCLE" in cls.__dict__:  # a lifecycle's own class, not any subclass
            LambdaEnvironment._BY_LIFECYCLE[cls._LIFECYCLE] = cls

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        # One entry point for every lifecycle: each but on-demand is a subclass of its own.
        if cls is LambdaEnvironment:
            chosen = LambdaEnvironment._BY_LIFECYCLE.get(kwargs.get("lifecycle", ON_DEMAND), cls)
            return cast("Self", object.__new__(chosen))
        return object.__new__(cls)

    def __init__(
        self,
        function_dir: str | Path,
        handler: str,
        *,
        layer_dir: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        memory_mb: int = 128,
        timeout_s: float = 3.0,
        function_name: str = "local-function",
        region: str = "us-east-1",
        echo_logs: Callable[[str], None] | None = None,
        telemetry_api: str = "on",
        share: Sequence[str | Path] = (),
        lifecycle: str = ON_DEMAND,
        max_concurrency: int | None = None,
        behaviour: str = LAMBDA,
        cpu_share: bool = False,
    ) -> None:
        if telemetry_api not in TELEMETRY_MODES:
            raise ValueError(f"telemetry_api={telemetry_api!r}: one of {', '.join(TELEMETRY_MODES)}")
        if lifecycle not in LIFECYCLES:
            raise ValueError(f"lifecycle={lifecycle!r}: one of {', '.join(LIFECYCLES)}")
        if lifecycle != self._LIFECYCLE:
            raise ValueError(f"lifecycle={lifecycle!r} does not go with {type(self).__name__}")
        if lifecycle != MANAGED_INSTANCES and max_concurrency is not None:
            raise ValueError("max_concurrency is for lifecycle='lambda-managed-instances' only")
        if max_concurrency is None:
            max_concurrency = DEFAULT_MAX_CONCURRENCY if lifecycle == MANAGED_INSTANCES else 1
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise ValueError(f"max_concurrency={max_concurrency!r}: a whole number, 1 or more")
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"behaviour={behaviour!r}: one of {', '.join(BEHAVIOURS)}")
        if behaviour != LAMBDA and lifecycle != ON_DEMAND:
            raise ValueError(f"behaviour={behaviour!r} is for the on-demand lifecycle only, not {lifecycle!r}")
        if behaviour != LAMBDA and telemetry_api != "on":
            # The emulator's Telemetry API is a stub of its own: there is nothing left to break.
            raise ValueError(f"telemetry_api={telemetry_api!r} goes with behaviour='lambda' only")
        if not isinstance(cpu_share, bool):
            raise ValueError(f"cpu_share={cpu_share!r}: True or False")
        if cpu_share and lifecycle == MANAGED_INSTANCES:
            raise ValueError(
                "cpu_share is Lambda's 1,769 MB per vCPU; Lambda Managed Instances get their CPU from the "
                "capacity provider's memory per vCPU instead: not for lifecycle='lambda-managed-instances'"
            )
        if cpu_share and (
            isinstance(memory_mb, bool)
            or not isinstance(memory_mb, int)
            or not MIN_MEMORY_MB <= memory_mb <= MAX_MEMORY_MB
        ):
            raise ValueError(
                f"memory_mb={memory_mb!r}: with cpu_share, a whole number of MB from {MIN_MEMORY_MB} to "
                f"{MAX_MEMORY_MB:,}, as on Lambda"
            )
        self.cpu_share = cpu_share
        """Whether the processes get Lambda's CPU share for :attr:`memory_mb` (a CFS quota)."""
        self.cpu_quota_us = lambda_quota_us(memory_mb) if cpu_share else None
        """With :attr:`cpu_share`, the CFS quota per 100,000 µs period; None otherwise."""
        self.behaviour = behaviour
        """Whom the environment behaves as: Lambda, or the Runtime Interface Emulator."""
        self._behaves_as = BY_NAME[behaviour]
        self.lifecycle = lifecycle
        self.max_concurrency = max_concurrency
        """How many invocations the environment serves at once (1 for on-demand)."""
        self.telemetry_api = telemetry_api
        self.share = [Path(path).resolve() for path in share]
        self.function_dir = Path(function_dir).resolve()
        self.handler = handler
        self.layer_dir = Path(layer_dir).resolve() if layer_dir is not None else None
        self.user_env = dict(env or {})
        self.memory_mb = memory_mb
        self.timeout_s = timeout_s
        self.function_name = function_name
        self.region = region
        self.echo_logs = echo_logs
        self.logs: list[str] = []
        """Every log line of every process, prefixed with where it came from."""
        self.shutdowns: list[ShutdownResult] = []
        self.timeline: list[tuple[float, str, str]] = []
        """(monotonic time, who, what) for each event handed out and each freeze and thaw."""
        self._cond = threading.Condition()
        self._phase = "down"
        self._runtime: RuntimeProcess | None = None
        self._extensions: list[ExtensionProcess] = []
        self._extensions_api = ExtensionsApi(
            function_name=function_name,
            handler=handler,
            region=region,
            condition=self._cond,
            in_init=lambda: self._phase == "init",
            note=self.note,
            invoke_events=self._INVOKE_EVENTS,
        )
        self._running = threading.Event()
        self._telemetry = Telemetry(self._running)
        self._request_logs: list[str] | None = None
        self._sandbox: Sandbox | None = None
        self._server: ApiServer | None = None
        self._frozen = False
        self._init_started = 0.0
        self._init_duration_ms: float | None = None
        self._last_init: InitResult | None = None
        self._runtime_dir = Path()

    # -- lifecycle of the emulator itself ------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(self) -> None:
        _live.add(self)
        self._sandbox = self._new_sandbox()
        self._runtime_dir = runtime_directory(Path(self._sandbox.hosts_file).parent / "runtime")
        self._server = ApiServer(*self._route_tables()).start("lambda-api")

    def _new_sandbox(self) -> Sandbox:
        return Sandbox(self.layer_dir, exposed=[self.function_dir, *self.share], cpu=self._new_cpu_share())

    def _new_cpu_share(self) -> CpuShare | None:
        """With :attr:`cpu_share`, the cgroup the sandbox's processes start in (the sandbox
        owns it from then on)."""
        return CpuShare(self.memory_mb) if self.cpu_share else None

    def _route_tables(self) -> list[Routes]:
        return [
            RuntimeRoutes(self).table(),
            ExtensionsRoutes(self._extensions_api).table(),
            TelemetryRoutes(self).table(),
        ]

    @property
    def tmp_dir(self) -> Path:
        """Where the environment's ``/tmp`` is on this machine (its processes share it, and only
        they: the extension's socket, for one, is there)."""
        assert self._sandbox is not None, "start() the environment first"
        return self._sandbox.tmp

    @property
    def cpu_cgroup(self) -> Path | None:
        """With :attr:`cpu_share`, the environment's cgroup (``cpu.stat``, ``cgroup.procs``,
        ``cpu.cfs_quota_us`` are there) from :meth:`start` to :meth:`close`; None otherwise."""
        cpu = self._sandbox.cpu if self._sandbox is not None else None
        return cpu.path if cpu is not None else None

    def cpu_stat(self) -> dict[str, int]:
        """With :attr:`cpu_share`, the cgroup's ``cpu.stat`` so far: ``nr_periods`` (100 ms
        periods in which its processes ran), ``nr_throttled`` (those in which they used the quota
        up and were stopped until the next), ``throttled_time`` (ns stopped)."""
        cpu = self._sandbox.cpu if self._sandbox is not None else None
        assert cpu is not None, "cpu_share=True, and start() the environment first"
        return cpu.stat()

    @property
    def runtime_api(self) -> str:
        assert self._server is not None, "start() the environment first"
        return self._server.address

    def close(self) -> None:
        """Shut the environment down (SHUTDOWN, spindown) if it is up, then stop everything."""
        _live.discard(self)
        try:
            if self._phase != "down":
                self.shutdown()
        finally:
            self._kill_everything()
            if self._server is not None:
                self._server.close()
                self._server = None
            self._close_sandbox()

    def _close_sandbox(self) -> None:
        """Remove the sandbox (its directory, its CPU cgroup), once its processes are gone."""
        sandbox, self._sandbox = self._sandbox, None
        if sandbox is not None:
            sandbox.close()

    # -- environment variables -------------------------------------------------------------

    def function_environment(self) -> dict[str, str]:
        minor = f"{sys.version_info.major}.{sys.version_info.minor}"
        env = {
            # Lambda's PATH starts with the runtime's /var/lang/bin: the layer's launcher finds
            # this interpreter there, not a wrapper first on this machine's PATH (pyenv's shim, a
            # shell script costing about 70 ms of CPU, paid 14-fold in Init at 128 MB's share).
            "PATH": os.pathsep.join(
                [str(Path(sys.executable).parent), os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")]
            ),
            "LANG": "en_US.UTF-8",
            "TZ": ":UTC",
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_LAMBDA_FUNCTION_NAME": self.function_name,
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.memory_mb),
            "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{self.function_name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": time.strftime("%Y/%m/%d/[$LATEST]") + uuid.uuid4().hex,
            "AWS_LAMBDA_RUNTIME_API": self.runtime_api,
            "AWS_EXECUTION_ENV": f"AWS_Lambda_python{minor}",
            "_HANDLER": self.handler,
            "LAMBDA_TASK_ROOT": str(self._task_root()),
            "LAMBDA_RUNTIME_DIR": str(self._runtime_dir),
            "PYTHONPATH": python_path_for(self._task_root(), self._runtime_dir),
        }
        env.update(self.user_env)
        return env

    def _task_root(self) -> Path:
        """Where the runtime finds the function's code (``/var/task`` on Lambda)."""
        return self.function_dir

    def _extension_environment(self, function_env: Mapping[str, str]) -> dict[str, str]:
        return extension_environment(function_env)

    # -- Init ---------------------------------------------------------------------------------

    def _extension_files(self) -> list[Path]:
        directory = self.layer_dir / "extensions" if self.layer_dir is not None else None
        if directory is None or not directory.is_dir():
            return []
        return sorted(p for p in directory.iterdir() if p.is_file() and os.access(p, os.X_OK))

    def init(self) -> InitResult:
        """Run Init now if the environment is down (the next invoke then has no cold start, as
        with provisioned concurrency); otherwise the Init it had. A failed Init leaves it down."""
        if self._phase == "down":
            result = self._init()
            if result.error is not None:
                self._reset(INIT_FAILURE)
            return result
        assert self._last_init is not None
        return self._last_init

    def _init(self) -> InitResult:
        assert self._sandbox is not None, "start() the environment first"
        with self._cond:
            self._phase = "init"
            self._init_started = time.monotonic()
            self._extensions = []
            self._extensions_api.clear()
            self._runtime = None
            self._begin_init()
        self._telemetry = Telemetry(self._running)
        self._running.set()
        function_env = self.function_environment()
        ext_env = self._extension_environment(function_env)
        deadline = self._init_started + INIT_LIMIT_S
        for path in self._extension_files():
            # Inside the sandbox the layer is /opt: start extensions where Lambda starts them.
            process = self._sandbox.start([f"/opt/extensions/{path.name}"], ext_env, cwd="/")
            extension = ExtensionProcess(path.name, process)
            with self._cond:
                self._extensions.append(extension)
                self._extensions_api.add(extension)
            self._watch(extension, f"extension {path.name}")
        error = self._wait(lambda: all(e.registered for e in self._extensions), deadline, "extensions to register")
        if error is None:
            command = [sys.executable, "-S", "-m", "awslambdaric", self.handler]
            runtime = RuntimeProcess("runtime", self._sandbox.start(command, function_env, cwd=self._task_root()))
            with self._cond:
                self._runtime = runtime
            self._watch(runtime, "function")
            error = self._wait(lambda: self._init_done(runtime), deadline, "Init to finish")
        with self._cond:
            measurements = [
                ExtensionInit(
                    e.name,
                    _ms(e.registered - e.started) if e.registered else None,
                    _ms(e.first_next - e.started) if e.first_next else None,
                )
                for e in self._extensions
            ]
            self._init_duration_ms = _ms(time.monotonic() - self._init_started)
            if error is None:
                self._phase = "ready"
            self._last_init = InitResult(self._init_duration_ms, measurements, error)
            return self._last_init

    def _come_up(self) -> tuple[InitResult | None, RestoreResult | None]:
        """Bring the environment up for an invoke (it is down): Init, here."""
        return self._init(), None

    def _begin_init(self) -> None:
        """A new Init starts (lock held): forget what the last one left."""

    def _init_done(self, runtime: RuntimeProcess) -> bool:
        """Whether Init is over (lock held): the runtime and every extension wait in ``next``."""
        return runtime.waiting and all(e.waiting for e in self._extensions)

    def _wait(self, done: Callable[[], bool], deadline: float, what: str) -> str | None:
        """Wait under the lock for ``done``; the reason it failed, or None."""
        with self._cond:
            while True:
                failure = self._failure()
                if failure is not None:
                    return failure
                if done():
                    return None
                left = deadline - time.monotonic()
                if left <= 0:
                    return f"timed out waiting for {what}"
                self._cond.wait(left)

    def _failure(self) -> str | None:
        """What has gone wrong with the environment's processes, if anything (lock held)."""
        runtime = self._runtime
        if runtime is not None:
            if runtime.init_error is not None:
                return f"Runtime.InitError: {runtime.init_error.get('errorMessage', runtime.init_error)}"
            if runtime.exited is not None:
                return f"Runtime.ExitError: runtime exited with status {runtime.process.returncode}"
        for extension in self._extensions:
            if extension.error is not None:
                return f"Extension error from {extension.name}: {extension.error}"
            if extension.exited is not None:
                return f"Extension.Crash: {extension.name} exited with status {extension.process.returncode}"
        return None

    # -- Invoke -------------------------------------------------------------------------------

    def invoke(
        self, event: Any = None, *, timeout_s: float | None = None, client_context: Mapping[str, Any] | None = None
    ) -> InvokeResult:
        """Invoke the function with ``event`` (JSON-serializable) and wait until the
        invocation has ended (runtime and extensions back in ``next``). ``client_context``, a
        JSON object, reaches the handler as ``context.client_context`` (its ``custom``, ``env``
        and ``client``), as one passed to Lambda's Invoke does; a ``"w3c"`` key in it is
        awslambdaric's (4.2 and later) ``context.w3c()`` instead."""
        context_headers = client_context_headers(client_context)
        init: InitResult | None = None
        restore: RestoreResult | None = None
        request_id = str(uuid.uuid4())
        if self._phase == "down":
            init, restore = self._come_up()
            if init is not None and init.error is not None:
                self._reset(INIT_FAILURE)
                return InvokeResult(
                    request_id, "failure", error={"errorType": "InitError", "errorMessage": init.error}, init=init
                )
            if restore is not None and restore.error is not None:
                self._reset(INIT_FAILURE)
                error = {"errorType": "Runtime.RestoreError", "errorMessage": restore.error}
                return InvokeResult(request_id, "failure", error=error, init=init, restore=restore)
        self._thaw()
        timeout = self.timeout_s if timeout_s is None else timeout_s
        started = time.monotonic()
        deadline = started + timeout
        deadline_ms = epoch_ms_in(timeout)
        arn = function_arn(self.region, self.function_name)
        trace_header = new_trace_header()
        logs: list[str] = []
        runtime = self._runtime
        assert runtime is not None
        with self._cond:
            self._phase = "invoke"
            self._request_logs = logs
            runtime.request_id = request_id
            runtime.response = None
            runtime.error = None
            runtime.responded = None
            subscribed = self._extensions_api.hand(invoke_event(request_id, deadline_ms, arn, trace_header))
            expected = {id(e): e.delivered + 1 for e in subscribed}
        # Extensions have the INVOKE event in hand before the runtime gets the invocation.
        failure = self._wait(lambda: all(e.delivered >= expected[id(e)] for e in subscribed), deadline, "INVOKE")
        self._telemetry.emit("platform.start", {"requestId": request_id, "version": "$LATEST"})
        headers = {
            "Lambda-Runtime-Aws-Request-Id": request_id,
            "Lambda-Runtime-Deadline-Ms": str(deadline_ms),
            "Lambda-Runtime-Invoked-Function-Arn": arn,
            "Lambda-Runtime-Trace-Id": trace_header,
            **context_headers,
        }
        with self._cond:
            runtime.queue.append((request_id, json.dumps(event).encode(), headers))
            self._cond.notify_all()
        result = InvokeResult(request_id, "success", init=init, restore=restore, logs=logs)
        if failure is None:
            failure = self._wait(lambda: runtime.responded is not None, deadline, "the response")
        if failure is not None:
            return self._fail(result, failure, started, timeout)
        assert runtime.responded is not None
        result.response_latency_ms = _ms(runtime.responded - started)
        if runtime.error is not None:
            result.status = "error"
            result.error = runtime.error
        else:
            result.payload = json_or_text(runtime.response or b"")
        failure = self._wait(lambda: runtime.waiting, deadline, "the runtime to finish")
        if failure is not None:
            return self._fail(result, failure, started, timeout)
        runtime_ms = _ms((runtime.next_at or time.monotonic()) - started)
        self._telemetry.emit(
            "platform.runtimeDone",
            {"requestId": request_id, "status": result.status, "metrics": {"durationMs": runtime_ms}},
        )
        failure = self._wait(lambda: all(e.done_with_invoke() for e in self._extensions), deadline, "extensions")
        if failure is not None:
            return self._fail(result, failure, started, timeout)
        ended = max([runtime.next_at or 0.0, *(e.last_next or 0.0 for e in self._extensions)])
        result.post_runtime_ms = _ms(max(0.0, ended - runtime.responded))
        if self._behaves_as.replies_after_extensions:
            # The response was held until now: the caller waited for the extensions too.
            result.response_latency_ms = _ms(ended - started)
        result.duration_ms = _ms(ended - started)
        result.billed_duration_ms = math.ceil(result.duration_ms)
        result.max_memory_used_mb = self._max_memory_mb()
        with self._cond:
            self._phase = "ready"
            self._request_logs = None
        self._freeze()
        report: dict[str, Any] = {
            "durationMs": result.duration_ms,
            "billedDurationMs": result.billed_duration_ms,
            "memorySizeMB": self.memory_mb,
            "maxMemoryUsedMB": result.max_memory_used_mb,
        }
        if restore is not None:
            # A restored environment's Init is the snapshot's: Lambda reports the restore instead.
            report["restoreDurationMs"] = restore.duration_ms
        elif init is not None:
            report["initDurationMs"] = init.duration_ms
        # Produced once every extension is done: it waits for the thaw, as on AWS.
        self._telemetry.emit("platform.report", {"requestId": request_id, "status": result.status, "metrics": report})
        return result

    def _fail(self, result: InvokeResult, failure: str, started: float, timeout: float) -> InvokeResult:
        timed_out = failure.startswith("timed out")
        result.status = "timeout" if timed_out else "failure"
        if timed_out:
            message = f"Task timed out after {timeout:.2f} seconds"
            result.error = {"errorType": "Sandbox.Timedout", "errorMessage": message}
        else:
            result.error = {"errorType": failure.split(":")[0], "errorMessage": failure}
        result.duration_ms = _ms(time.monotonic() - started)
        result.billed_duration_ms = math.ceil(result.duration_ms)
        self._telemetry.emit(
            "platform.runtimeDone",
            {"requestId": result.request_id, "status": result.status, "metrics": {"durationMs": result.duration_ms}},
        )
        self._reset(result.status)
        if self._behaves_as.replies_after_extensions:
            # Answered once the reset has run, SHUTDOWN's whole budget if an extension takes it.
            result.response_latency_ms = _ms(time.monotonic() - started)
        return result

    def _max_memory_mb(self) -> int:
        total_kb = 0
        processes = [p for p in [self._runtime, *self._extensions] if p is not None]
        for process in processes:
            try:
                status = Path(f"/proc/{process.process.pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    total_kb += int(line.split()[1])
        return math.ceil(total_kb / 1024)

    # -- freezing -----------------------------------------------------------------------------

    def _processes(self) -> list[Process]:
        with self._cond:
            return [p for p in [self._runtime, *self._extensions] if p is not None and p.exited is None]

    def _freeze(self) -> None:
        if not self._behaves_as.freezes:
            return
        self._running.clear()
        self._telemetry.quiesce()
        for process in self._processes():
            signal_group(process.process, signal.SIGSTOP)
        self._frozen = True
        self.note("environment", "frozen")

    def _thaw(self) -> None:
        if self._frozen:
            for process in self._processes():
                signal_group(process.process, signal.SIGCONT)
            self._frozen = False
            self.note("environment", "thawed")
        self._running.set()

    def pids(self) -> dict[str, int]:
        """The process id of the runtime (``"runtime"``) and of each extension, by name."""
        return {p.name: p.process.pid for p in self._processes()}

    def worker_pids(self) -> list[int]:
        """The processes that run invocations: for on-demand, the runtime alone (when up)."""
        with self._cond:
            runtime = self._runtime
        return [runtime.process.pid] if runtime is not None and runtime.exited is None else []

    def idle(self, seconds: float) -> None:
        """Let time pass between invocations, with the environment frozen as on AWS (running,
        under the Runtime Interface Emulator's behaviour)."""
        time.sleep(seconds)

    # -- Shutdown -----------------------------------------------------------------------------

    def shutdown(self, reason: str = SPINDOWN) -> ShutdownResult:
        """Send SHUTDOWN, give the environment its 2,000 ms, then kill what is left. ``reason``
        is the lifecycle's (``spindown``, ``timeout``, ``failure``); the extensions get it, and
        the result has it, as the behaviour spells it."""
        self._thaw()
        # Records produced while frozen (the last report) are long due: let them arrive first.
        self._telemetry.drain(timeout=0.5)
        started = time.monotonic()
        deadline = started + SHUTDOWN_LIMIT_S
        deadline_ms = epoch_ms_in(SHUTDOWN_LIMIT_S)
        spelled = self._behaves_as.shutdown_reason(reason)
        with self._cond:
            self._phase = "shutdown"
            running = [e for e in self._extensions if e.exited is None]
            runtime = self._runtime
            registered = any(e.id for e in self._extensions)

        def hand_shutdown() -> None:
            # Busy ones find it at their next call to next, if that comes before the deadline.
            with self._cond:
                self._extensions_api.hand(shutdown_event(spelled, deadline_ms), running)

        if not self._behaves_as.runtime_first:
            hand_shutdown()
        if runtime is not None and not self._runtime_exited(runtime):
            # With extensions registered the runtime gets SIGTERM and a moment; without, SIGKILL.
            signal_group(runtime.process, signal.SIGTERM if registered or self._SIGTERM_ALWAYS else signal.SIGKILL)
            grace = self._behaves_as.runtime_grace_s
            grace = self._RUNTIME_GRACE_S if grace is None else grace
            self._wait_until(lambda: self._runtime_exited(runtime), min(deadline, time.monotonic() + grace))
            if not self._runtime_exited(runtime):
                signal_group(runtime.process, signal.SIGKILL)
        if self._behaves_as.runtime_first:
            hand_shutdown()
        for extension in self._extensions:
            # Only those told about the shutdown can act on it; the rest are killed at once.
            if "SHUTDOWN" in extension.events:
                self._wait_exit(extension, deadline)
        measurements = []
        for extension in self._extensions:
            killed = extension.exited is None
            if killed:
                signal_group(extension.process, signal.SIGKILL)
            exit_ms = None if killed or extension.exited is None else _ms(max(0.0, extension.exited - started))
            measurements.append(ExtensionShutdown(extension.name, exit_ms, killed))
        self._kill_everything()
        result = ShutdownResult(spelled, _ms(SHUTDOWN_LIMIT_S), measurements)
        self.shutdowns.append(result)
        return result

    def _wait_exit(self, process: Process, deadline: float) -> None:
        self._wait_until(lambda: process.exited is not None, deadline)

    def _wait_until(self, done: Callable[[], bool], deadline: float) -> None:
        with self._cond:
            while not done():
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(left)

    def _runtime_exited(self, runtime: RuntimeProcess) -> bool:
        """Whether the runtime is gone: its process has exited."""
        return runtime.exited is not None

    def _reset(self, reason: str) -> None:
        """Timeout, crash (``failure``), failed Init (``init-failure``): shut the environment
        down; the next invoke re-inits."""
        self.shutdown(reason)

    def _kill_everything(self) -> None:
        with self._cond:
            processes = [p for p in [self._runtime, *self._extensions] if p is not None]
            self._phase = "down"
            self._extensions_api.release()
            if self._runtime is not None:
                self._runtime.queue.append(("", b"", {}))
            self._cond.notify_all()
        for process in processes:
            signal_group(process.process, signal.SIGCONT)
            signal_group(process.process, signal.SIGKILL)
        for process in processes:
            with contextlib.suppress(Exception):
                process.process.wait(timeout=5)
        self._telemetry.close()
        self._running.set()
        self._frozen = False

    # -- process output and exits -------------------------------------------------------------

    def _watch(self, process: Process, source: str) -> None:
        kind = "function" if isinstance(process, RuntimeProcess) else "extension"

        def read() -> None:
            stream = process.process.stdout
            assert stream is not None
            for raw in iter(stream.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip("\n")
                self._log(source, kind, line)
            stream.close()
            code = process.process.wait()
            with self._cond:
                if process.exited is None:
                    process.exited = time.monotonic()
                self._cond.notify_all()
            self._log(source, kind, f"(exited with status {code})", emit=False)
            self._process_exited(process)

        threading.Thread(target=read, name=f"output-{source}", daemon=True).start()

    def _process_exited(self, process: Process) -> None:
        """``process`` has exited (a thread of its own, no lock held). On-demand notices during
        the invoke it waits for."""

    def _log(self, source: str, kind: str, line: str, emit: bool = True) -> None:
        text = f"[{source}] {line}"
        with self._cond:
            self.logs.append(text)
            if self._request_logs is not None and kind == "function":
                self._request_logs.append(line)
        if emit:
            self._telemetry.emit(kind, line)
        if self.echo_logs is not None:
            self.echo_logs(text)

    # -- the Runtime and Telemetry APIs' calls (from the HTTP server's threads, see routing) -------

    def note(self, who: str, what: str) -> None:
        with self._cond:
            self.timeline.append((time.monotonic(), who, what))

    def subscription_stub(self, path: str) -> bytes | None:
        """The body a subscription to ``path`` is answered 202 with, unserved, if the behaviour
        stubs that API out; otherwise None (see :meth:`telemetry_subscribe`)."""
        return self._behaves_as.subscription_stubs.get(path)

    def telemetry_subscribe(self, identifier: str | None, body: Any) -> tuple[int, dict[str, Any] | str]:
        with self._cond:
            extension = self._extensions_api.find(identifier)
            if extension is None:
                return 403, api_error("Extension.InvalidExtensionIdentifier", "register first")
            if self._phase != "init":
                return 400, api_error("ValidationError", "Telemetry API subscriptions are accepted during Init only")
        if self.telemetry_api == "refused":
            return 400, api_error("ValidationError", "the Telemetry API is not available in this environment")
        problem = validate(body)
        if problem is not None:
            return 400, api_error("ValidationError", problem)
        if self.telemetry_api == "on":
            self._telemetry.subscribe(extension.name, body)
        return 200, "OK"

    def runtime_next(self) -> tuple[bytes, dict[str, str]]:
        with self._cond:
            runtime = self._runtime
            if runtime is None:
                return b"", {}
            runtime.waiting = True
            runtime.next_at = time.monotonic()
            self._cond.notify_all()
            while not runtime.queue:
                self._cond.wait()
            _, body, headers = runtime.queue.pop(0)
            runtime.waiting = False
            return body, headers

    def runtime_result(self, request_id: str, body: bytes, error_type: str | None) -> bool:
        with self._cond:
            runtime = self._runtime
            if runtime is None or runtime.request_id != request_id or runtime.responded is not None:
                return False
            runtime.responded = time.monotonic()
            if error_type is None:
                runtime.response = body
            else:
                decoded = json_or_text(body)
                runtime.error = decoded if isinstance(decoded, dict) else {"errorMessage": str(decoded)}
                runtime.error.setdefault("errorType", error_type)
            self._cond.notify_all()
            return True

    def runtime_init_error(self, body: bytes, error_type: str) -> None:
        with self._cond:
            if self._runtime is not None:
                decoded = json_or_text(body)
                error = decoded if isinstance(decoded, dict) else {"errorMessage": str(decoded)}
                error.setdefault("errorType", error_type)
                self._runtime.init_error = error
                self._cond.notify_all()


_live: weakref.WeakSet[LambdaEnvironment] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    # An environment its user never closed must not outlive the interpreter (frozen, at that).
    for env in list(_live):
        env._kill_everything()
        with contextlib.suppress(Exception):
            env._close_sandbox()
