"""The SnapStart lifecycle (``lifecycle="snap-start"``): one Init, one snapshot, many restores.

On Lambda, a SnapStart function's Init runs once, when a version is published: with
``AWS_LAMBDA_INITIALIZATION_TYPE=snap-start`` the runtime client imports the handler, runs the
before-snapshot hooks and calls ``GET /2018-06-01/runtime/restore/next``; once it waits there and
every extension waits in ``next``, Lambda snapshots the environment. Every environment that ever
serves an invocation is then restored from that snapshot: ``platform.restoreStart``, the
runtime's ``restore/next`` call returns, its after-restore hooks run, its first
``invocation/next`` call ends the restore (``platform.restoreRuntimeDone``,
``platform.restoreReport`` with ``durationMs``; ``POST .../restore/error`` when a hook fails),
and the first invocation's ``platform.report`` has ``restoreDurationMs`` in place of
``initDurationMs``. Extensions get no event: their pending ``next`` call returns the first
INVOKE. The rest is on-demand's lifecycle (frozen between invocations; a timeout or crash resets
the environment, and the next invoke restores another from the snapshot, with no new Init).

Here the snapshot is :class:`~.snapshot.Snapshot`: the Init's processes, stopped, are the image,
and each restore is a raw copy of each of them (memory, threads, registers; no fork handler
runs; see that module for what it cannot copy). Because a copy shares the image's kernel objects,
**one restored environment runs at a time**: :meth:`invoke` restores one when none is up, and it
lasts until it is shut down or reset; the next restore starts from the same image again, with
``/tmp`` put back as the snapshot had it. What ties a copy to this emulator is made its own: its
pending Runtime API call (the runtime's ``restore/next``, each extension's ``next``) comes on a
new connection, served as that call; TCP connections that led out of the sandbox are shut down,
as a restored VM's are dead. ``AWS_LAMBDA_LOG_GROUP_NAME`` and ``AWS_LAMBDA_LOG_STREAM_NAME`` are
not set, as on Lambda.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import stat
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import ClassVar

from .behaviour import INIT_FAILURE
from .lifecycle import INIT_LIMIT_S, SNAP_START, LambdaEnvironment, _ms
from .managed import socket_inode, tcp_sockets
from .processes import ExtensionProcess, Process, RuntimeProcess
from .results import InitResult, RestoreResult
from .routing import (
    EXTENSION_NEXT,
    GONE_EVENT_TYPE,
    RUNTIME_RESTORE_ERROR,
    RUNTIME_RESTORE_NEXT,
    Answer,
    ExtensionsRoutes,
    Request,
    _RouteSet,
    accepted,
    json_or_text,
)
from .snapshot import RestoredProcess, Snapshot, shut_down_socket
from .telemetry import Telemetry

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .routing import Routes

_ESTABLISHED = "01"
_LISTEN = "0A"


class _RestoreRoutes(_RouteSet):
    """The runtime's restore calls, and the Extensions API's ``next`` with the caller's port
    noted (the snapshot must find that connection in the stopped process)."""

    owner: SnapStartEnvironment
    ROUTES: ClassVar[dict[tuple[str, str], str]] = {
        ("GET", RUNTIME_RESTORE_NEXT): "restore_next",
        ("POST", RUNTIME_RESTORE_ERROR): "restore_error",
        ("GET", EXTENSION_NEXT): "next_event",
    }

    def restore_next(self, request: Request) -> Answer:
        self.owner.runtime_restore_next(request.peer[1] if request.peer else 0)
        return Answer(200, b"")

    def restore_error(self, request: Request) -> Answer:
        error_type = request.headers.get("Lambda-Runtime-Function-Error-Type", "Runtime.AfterRestoreError")
        self.owner.runtime_restore_error(request.body, error_type)
        return accepted()

    def next_event(self, request: Request) -> Answer:
        if request.extension_id and request.peer:
            self.owner.note_next_call(request.extension_id, request.peer[1])
        return ExtensionsRoutes(self.owner._extensions_api).next_event(request)


def _connected_pair() -> tuple[socket.socket, socket.socket]:
    """Both ends of a new TCP connection on loopback: (the client's, the server's)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return client, server


class SnapStartEnvironment(LambdaEnvironment):
    """A SnapStart function's environments, restored one at a time from one snapshot (see the
    module). :meth:`init` runs the Init and takes the snapshot; :meth:`invoke` restores an
    environment first when none is up (its result's ``restore``); :attr:`restores` counts them."""

    _LIFECYCLE = SNAP_START

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._snapshot: Snapshot | None = None
        self._images: list[Process] = []
        """The Init's processes, extensions first, as the snapshot holds them."""
        self._image_pids: dict[str, int] = {}
        self._pending_calls: dict[str, tuple[int, bytes]] = {}
        """By process name: its pending call's file descriptor in the image, and the call."""
        self._next_ports: dict[str, int] = {}
        self._subscriptions: dict[str, dict[str, Any]] = {}
        self._tmp_image: Path | None = None
        self._listeners: dict[str, int] = {}
        self._image_popens: list[Any] = []
        self._restore_state = "none"
        """The runtime's ``restore/next`` call: none, waiting (in Init), go (restoring), done."""
        self._restore_port = 0
        self._restore_error: dict[str, Any] | None = None
        self.restores = 0
        """How many environments have been restored from the snapshot."""

    def _route_tables(self) -> list[Routes]:
        return [*super()._route_tables(), _RestoreRoutes(self).table()]

    def function_environment(self) -> dict[str, str]:
        env = super().function_environment()
        env["AWS_LAMBDA_INITIALIZATION_TYPE"] = SNAP_START
        for key in ("AWS_LAMBDA_LOG_GROUP_NAME", "AWS_LAMBDA_LOG_STREAM_NAME"):
            if key not in self.user_env:
                env.pop(key, None)
        return env

    # -- the calls ------------------------------------------------------------------------------

    def note_next_call(self, identifier: str, port: int) -> None:
        with self._cond:
            self._next_ports[identifier] = port

    def runtime_restore_next(self, port: int) -> None:
        with self._cond:
            if self._restore_state == "go":
                return  # a restored runtime's call, made before the snapshot: the restore begins
            self._restore_state = "waiting"
            self._restore_port = port
            self._cond.notify_all()
            while self._restore_state == "waiting":
                self._cond.wait()

    def runtime_restore_error(self, body: bytes, error_type: str) -> None:
        with self._cond:
            decoded = json_or_text(body)
            error = decoded if isinstance(decoded, dict) else {"errorMessage": str(decoded)}
            error.setdefault("errorType", error_type)
            self._restore_error = error
            self._cond.notify_all()

    def telemetry_subscribe(self, identifier: str | None, body: Any) -> tuple[int, dict[str, Any] | str]:
        status, payload = super().telemetry_subscribe(identifier, body)
        if status == 200:
            with self._cond:
                extension = self._extensions_api.find(identifier)
            if extension is not None:
                self._subscriptions[extension.name] = body
        return status, payload

    # -- Init and the snapshot ------------------------------------------------------------------

    def _init_done(self, runtime: RuntimeProcess) -> bool:
        return self._restore_state == "waiting" and all(e.waiting for e in self._extensions)

    def init(self) -> InitResult:
        """Run the Init and take the snapshot, if not done yet; otherwise the Init it had. No
        environment is up afterwards: each is restored from the snapshot."""
        if self._snapshot is None and self._phase == "down":
            with self._cond:
                self._restore_state = "none"
            result = self._init()
            if result.error is not None:
                self._reset(INIT_FAILURE)
                return result
            self._take_snapshot()
            return result
        assert self._last_init is not None
        return self._last_init

    def _come_up(self) -> tuple[InitResult | None, RestoreResult | None]:
        init = None
        if self._snapshot is None:
            init = self.init()
            if init.error is not None:
                return init, None
        return init, self.restore()

    def _take_snapshot(self) -> None:
        assert self._runtime is not None
        assert self._server is not None
        assert self._sandbox is not None
        self._telemetry.drain(timeout=0.5, now=True)
        runtime = self._runtime
        images: list[Process] = [*self._extensions, runtime]
        snapshot = Snapshot([p.process.pid for p in images])
        self._snapshot = snapshot
        self._images = images
        # Held, so that no Popen is collected and polled by subprocess: a wait from outside the
        # tracer would take the stops it waits for.
        self._image_popens = [p.process for p in images]
        self._image_pids = {p.name: p.process.pid for p in images}
        api_port = int(self._server.address.rsplit(":", 1)[1])
        host = self._server.address
        for extension in self._extensions:
            assert extension.id is not None
            call = (
                f"GET {EXTENSION_NEXT} HTTP/1.1\r\nHost: {host}\r\nLambda-Extension-Identifier: {extension.id}\r\n\r\n"
            )
            port = self._next_ports[extension.id]
            self._pending_calls[extension.name] = (self._fd_of(extension.process.pid, port, api_port), call.encode())
        call = f"GET {RUNTIME_RESTORE_NEXT} HTTP/1.1\r\nHost: {host}\r\n\r\n"
        self._pending_calls[runtime.name] = (
            self._fd_of(runtime.process.pid, self._restore_port, api_port),
            call.encode(),
        )
        self._cut_outside_connections(api_port)
        self._listeners = self._telemetry_listeners()
        # The image's own pending calls end now: their answers reach sockets only it reads.
        with self._cond:
            for extension in self._extensions:
                extension.queue.append({"eventType": GONE_EVENT_TYPE})
            self._restore_state = "snapshotted"
            self._cond.notify_all()
            deadline = time.monotonic() + 5
            while any(e.waiting for e in self._extensions) and time.monotonic() < deadline:
                self._cond.wait(0.1)
            self._runtime = None
            self._extensions = []
            self._phase = "down"
        self._telemetry.close()
        self._tmp_image = Path(self._sandbox.hosts_file).parent / "tmp-snapshot"
        shutil.copytree(self._sandbox.tmp, self._tmp_image, symlinks=True, ignore=_special_files)
        # A socket's file cannot be copied, but a link to it reaches the image's listening
        # socket: an environment that removes the file (an extension at shutdown) leaves it for
        # the next, as each restored VM has its own /tmp.
        for path in self._sandbox.tmp.rglob("*"):
            if stat.S_ISSOCK(path.lstat().st_mode):
                kept = self._tmp_image / path.relative_to(self._sandbox.tmp)
                kept.parent.mkdir(parents=True, exist_ok=True)
                os.link(path, kept)
        self.note("environment", "snapshot taken")

    def _fd_of(self, pid: int, client_port: int, api_port: int) -> int:
        assert self._snapshot is not None
        inode = socket_inode(client_port, api_port)
        for fd in self._snapshot.file_descriptors(pid):
            if inode is not None and fd.target == f"socket:[{inode}]":
                return fd.number
        raise RuntimeError(f"process {pid} has no connection from port {client_port} to the Runtime API")

    def _telemetry_listeners(self) -> dict[str, int]:
        """By extension: the file descriptor of the socket its Telemetry API subscription is
        delivered to. Each restore gets a listening socket of its own in its place: one copy
        closing the image's (at its shutdown) must not close it for the next."""
        assert self._snapshot is not None
        inodes = {inode: local for local, _, state, inode in tcp_sockets() if state == _LISTEN}
        found = {}
        for name, body in self._subscriptions.items():
            port = urllib.parse.urlsplit(body["destination"]["URI"]).port
            for fd in self._snapshot.file_descriptors(self._image_pids[name]):
                if fd.target.startswith("socket:[") and inodes.get(int(fd.target[8:-1])) == port:
                    found[name] = fd.number
        return found

    def _cut_outside_connections(self, api_port: int) -> None:
        """Shut down the image's TCP connections that leave the sandbox (to PostHog, say)."""
        assert self._snapshot is not None
        table = tcp_sockets()
        by_inode = {inode: (local, remote, state) for local, remote, state, inode in table}
        listening = {local for local, _, state, _ in table if state == _LISTEN}
        for pid in self._image_pids.values():
            for fd in self._snapshot.file_descriptors(pid):
                if not fd.target.startswith("socket:["):
                    continue
                found = by_inode.get(int(fd.target[8:-1]))
                if found is None:
                    continue
                local, remote, state = found
                if state == _ESTABLISHED and remote != api_port and remote not in listening and local not in listening:
                    shut_down_socket(pid, fd.number)

    # -- restore --------------------------------------------------------------------------------

    def restore(self) -> RestoreResult:
        """Restore an environment from the snapshot (taking it first if needed); none may be up."""
        if self._snapshot is None:
            init = self.init()
            if init.error is not None:
                return RestoreResult(0.0, init.error)
        if self._phase != "down":
            raise RuntimeError("an environment restored from the snapshot is up: shut it down first")
        snapshot, server, sandbox = self._snapshot, self._server, self._sandbox
        assert snapshot is not None
        assert server is not None
        assert sandbox is not None
        started = time.monotonic()
        self._put_tmp_back(sandbox.tmp)
        self._telemetry = Telemetry(self._running)
        listening: dict[str, socket.socket] = {}
        for name, body in self._subscriptions.items():
            if name in self._listeners:
                listening[name] = listener = socket.create_server(("127.0.0.1", 0))
                uri = urllib.parse.urlsplit(body["destination"]["URI"])
                moved = uri._replace(netloc=f"{uri.hostname}:{listener.getsockname()[1]}").geturl()
                body = {**body, "destination": {**body["destination"], "URI": moved}}
            self._telemetry.subscribe(name, body)
        self._running.set()
        self._telemetry.emit(
            "platform.restoreStart",
            {
                "functionName": self.function_name,
                "functionVersion": "$LATEST",
                "instanceId": uuid.uuid4().hex,
                "instanceMaxMemory": self.memory_mb,
            },
        )
        extensions = [p for p in self._images if isinstance(p, ExtensionProcess)]
        runtime = next(p for p in self._images if isinstance(p, RuntimeProcess))
        with self._cond:
            self._phase = "restore"
            self._restore_state = "go"
            self._restore_error = None
            for extension in extensions:
                extension.queue.clear()
                extension.waiting = False
            runtime.waiting = False
            runtime.queue.clear()
            runtime.init_error = None
            self._runtime = runtime
            self._extensions = extensions
        # Extensions first: the runtime's after-restore hooks may talk to them.
        try:
            for process in [*extensions, runtime]:
                number, call = self._pending_calls[process.name]
                client, server_side = _connected_pair()
                replace = {number: client.fileno()}
                moved = listening.pop(process.name, None)
                if moved is not None:
                    replace[self._listeners[process.name]] = moved.fileno()
                try:
                    pid = snapshot.restore(self._image_pids[process.name], replace)
                except BaseException:
                    server_side.close()
                    raise
                finally:
                    # The restored process holds its own copies now.
                    client.close()
                    if moved is not None:
                        moved.close()
                with self._cond:
                    on_exit = functools.partial(self._on_restored_exit, process)
                    process.process = RestoredProcess(pid, on_exit=on_exit)  # type: ignore[assignment]
                    process.exited = None
                    process.started = time.monotonic()
                server.adopt(server_side, call)
        finally:
            # What a failed restore never handed over.
            for listener in listening.values():
                listener.close()
        self.restores += 1
        error = self._wait(
            lambda: runtime.waiting or self._restore_error is not None, started + INIT_LIMIT_S, "the restore"
        )
        if error is None and self._restore_error is not None:
            error = f"{self._restore_error.get('errorType')}: {self._restore_error.get('errorMessage')}"
        duration_ms = _ms(time.monotonic() - started)
        status = "success" if error is None else "error"
        done: dict[str, Any] = {"status": status}
        report: dict[str, Any] = {"status": status, "metrics": {"durationMs": duration_ms}}
        if error is not None:
            done["errorType"] = report["errorType"] = error.split(":")[0]
        self._telemetry.emit("platform.restoreRuntimeDone", done)
        self._telemetry.emit("platform.restoreReport", report)
        with self._cond:
            self._restore_state = "done"
            if error is None:
                self._phase = "ready"
        self.note("environment", f"restored ({status})")
        return RestoreResult(duration_ms, error)

    def _on_restored_exit(self, process: Process, _code: int) -> None:
        with self._cond:
            if process.exited is None:
                process.exited = time.monotonic()
            self._cond.notify_all()
        self._process_exited(process)

    def _put_tmp_back(self, tmp: Path) -> None:
        """``/tmp`` as the snapshot had it: what came since goes, what changed comes back. Its
        sockets are the image's own, which the copies share: they stay."""
        image = self._tmp_image
        assert image is not None
        for path in sorted(tmp.rglob("*"), reverse=True):
            relative = path.relative_to(tmp)
            mode = path.lstat().st_mode
            if (image / relative).exists() and stat.S_ISSOCK(mode) == stat.S_ISSOCK((image / relative).lstat().st_mode):
                continue
            if stat.S_ISDIR(mode):
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        shutil.copytree(image, tmp, symlinks=True, dirs_exist_ok=True, ignore=_special_files)
        for kept in image.rglob("*"):
            if stat.S_ISSOCK(kept.lstat().st_mode):
                path = tmp / kept.relative_to(image)
                if not path.exists():
                    os.link(kept, path)

    def _close_sandbox(self) -> None:
        # The snapshot's stopped processes go first: they are the sandbox's too (in its CPU
        # cgroup, with cpu_share), and the snapshot's tracer must be the one to reap them.
        try:
            if self._snapshot is not None:
                self._snapshot.close()
                self._snapshot = None
                for popen in self._image_popens:
                    popen.returncode = -signal.SIGKILL  # killed and reaped by the snapshot
        finally:
            super()._close_sandbox()


def _special_files(directory: str, names: list[str]) -> list[str]:
    """Sockets, pipes and devices: not copied (a socket's file cannot be)."""
    skipped = []
    for name in names:
        mode = os.lstat(os.path.join(directory, name)).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
            skipped.append(name)
    return skipped
