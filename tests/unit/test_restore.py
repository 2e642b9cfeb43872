"""Lambda SnapStart in the function's process: ids safe from Init on, and after the restore a new
seed, a new connection to the extension, and traces that say they ran in a restored process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from posthog_lambda import _destination, _lambda, _restore, posthog_traced
from posthog_lambda._socket_exporter import SocketExporter
from posthog_lambda_contract import frames as _frames
from posthog_lambda_contract import ids
from tests.helpers import LambdaContext, by_kind

SRC = os.path.join(os.path.dirname(__file__), "..", "..", "src")


@pytest.fixture(autouse=True)
def _fresh_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts in a process that was not restored, and leaves ids' source as it was."""
    monkeypatch.setattr(_lambda, "_restored", False)
    saved = ids._bits
    yield
    ids._bits = saved


class Hooks(types.ModuleType):
    """What the managed runtime's ``snapshot_restore_py`` offers, recording what is registered."""

    def __init__(self) -> None:
        super().__init__("snapshot_restore_py")
        self.after: list[Callable[[], None]] = []
        self.before: list[Callable[[], None]] = []

    def register_before_snapshot(self, func: Callable[[], None]) -> Callable[[], None]:
        self.before.append(func)
        return func

    def register_after_restore(self, func: Callable[[], None]) -> Callable[[], None]:
        self.after.append(func)
        return func


@pytest.fixture
def hooks(monkeypatch: pytest.MonkeyPatch) -> Hooks:
    fake = Hooks()
    monkeypatch.setitem(sys.modules, "snapshot_restore_py", fake)
    return fake


def imported(**env: str) -> list[str]:
    """What ``import posthog_lambda`` does in a fresh process with ``env``: whether it imported
    snapshot_restore_py, the hooks it registered there, and whether ids come from the kernel."""
    code = (
        "import sys\n"
        "import posthog_lambda\n"
        "from posthog_lambda_contract import ids\n"
        "hooks = sys.modules.get('snapshot_restore_py')\n"
        "print(hooks is not None)\n"
        "print([f'{f.__module__}.{f.__name__}' for f, _, _ in hooks.get_before_snapshot()] if hooks else [])\n"
        "print([f'{f.__module__}.{f.__name__}' for f, _, _ in hooks.get_after_restore()] if hooks else [])\n"
        "print(ids._bits is ids._kernel_bits)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": SRC, "PATH": os.environ["PATH"], **env},
    )
    return done.stdout.splitlines()


def test_on_snap_start_importing_the_package_registers_the_hook_and_draws_from_the_kernel() -> None:
    assert imported(AWS_LAMBDA_INITIALIZATION_TYPE="snap-start") == [
        "True",
        "['posthog_lambda._restore.before_snapshot']",
        "['posthog_lambda._restore.after_restore']",
        "True",
    ]


@pytest.mark.parametrize("initialization", ["", "on-demand", "provisioned-concurrency", "lambda-managed-instances"])
def test_elsewhere_importing_the_package_imports_and_registers_nothing(initialization: str) -> None:
    assert imported(AWS_LAMBDA_INITIALIZATION_TYPE=initialization) == ["False", "[]", "[]", "False"]


def test_without_the_runtime_hooks_ids_stay_drawn_from_the_kernel(
    monkeypatch: pytest.MonkeyPatch, library_logs: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "snapshot_restore_py", None)  # import fails
    assert _restore.arm({"AWS_LAMBDA_INITIALIZATION_TYPE": "snap-start"}) is False
    assert ids._bits is ids._kernel_bits
    assert [r.levelname for r in library_logs.records] == ["DEBUG"]
    assert "ids stay drawn from the kernel" in library_logs.records[0].getMessage()


def test_arm_registers_only_on_snap_start(hooks: Hooks) -> None:
    ids.reseed()
    assert _restore.arm({"AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand"}) is False
    assert hooks.after == hooks.before == []
    assert ids._bits is not ids._kernel_bits
    assert _restore.arm({"AWS_LAMBDA_INITIALIZATION_TYPE": "snap-start"}) is True
    assert hooks.before == [_restore.before_snapshot]
    assert hooks.after == [_restore.after_restore]
    assert ids._bits is ids._kernel_bits


class Extension:
    """The extension's socket, reduced to accepting connections (each one awaited)."""

    def __init__(self, path: Path) -> None:
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen()
        self.server.settimeout(5)

    def accept(self) -> socket.socket:
        connection, _ = self.server.accept()
        connection.settimeout(5)
        return connection

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def extension(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Extension]:
    path = tmp_path / "ph.sock"
    monkeypatch.setenv("POSTHOG_LAMBDA_SOCKET", str(path))
    monkeypatch.setenv("POSTHOG_LAMBDA_SPOOL_DIR", str(tmp_path / "spool"))
    server = Extension(path)
    yield server
    server.close()


def test_after_restore_reseeds_reconnects_and_marks_the_process_restored(extension: Extension, hooks: Hooks) -> None:
    _restore.arm({"AWS_LAMBDA_INITIALIZATION_TYPE": "snap-start"})
    _destination.connect_early()  # Init: the handler is decorated
    exporter = _destination.exporter()
    assert isinstance(exporter, SocketExporter)
    before = extension.accept()
    spool_before = exporter._spool_file
    (hook,) = hooks.after
    hook()
    assert ids._bits is not None
    assert ids._bits is not ids._kernel_bits  # the cheap generator again, freshly seeded
    assert before.recv(1) == b""  # the connection made before the snapshot is closed...
    after = extension.accept()  # ...and a new one made at once, before the first invocation
    assert exporter._socket is not None
    exporter.export(None, [{"event": "e", "distinct_id": "d", "properties": {}, "uuid": "u", "timestamp": "t"}])
    assert after.recv(1)  # the next frame goes over the new connection
    assert exporter._spool_file != spool_before
    assert _lambda.lambda_properties(LambdaContext(), False)["lambda_restored"] is True
    before.close()
    after.close()


def test_after_restore_never_raises(
    extension: Extension, hooks: Hooks, monkeypatch: pytest.MonkeyPatch, library_logs: pytest.LogCaptureFixture
) -> None:
    _restore.arm({"AWS_LAMBDA_INITIALIZATION_TYPE": "snap-start"})
    _destination.connect_early()
    extension.accept().close()
    exporter = _destination.exporter()

    def refused(data: bytes) -> None:
        raise ConnectionRefusedError("the extension is gone")

    monkeypatch.setattr(exporter, "_send", refused)
    _restore.after_restore()  # reconnecting fails: said in debug, nothing raised
    assert _lambda._restored
    assert ids._bits is not ids._kernel_bits

    def broken() -> None:
        raise RuntimeError("a bug")

    ids.draw_from_kernel()
    monkeypatch.setattr(_destination, "reconnect", broken)
    _restore.after_restore()  # a bug: logged, nothing raised, ids still safe
    assert ids._bits is ids._kernel_bits
    assert any(r.levelname == "ERROR" and "after the restore" in r.getMessage() for r in library_logs.records)


def read_frames(connection: socket.socket, count: int) -> list[tuple[int, dict[str, Any]]]:
    reader = _frames.Reader()
    found: list[tuple[int, dict[str, Any]]] = []
    while len(found) < count:
        data = connection.recv(65536)
        assert data, f"the connection closed after {found}"
        got, errors = reader.feed(data)
        assert not errors
        found += got
    return found


def test_before_the_snapshot_the_extension_is_asked_to_send_and_answered(extension: Extension, hooks: Hooks) -> None:
    _restore.arm({"AWS_LAMBDA_INITIALIZATION_TYPE": "snap-start"})
    exporter = _destination.exporter()
    assert isinstance(exporter, SocketExporter)
    exporter.export(None, [{"event": "e", "distinct_id": "d", "properties": {}, "uuid": "u", "timestamp": "t"}])
    connection = extension.accept()
    answered: list[dict[str, Any] | None] = []
    asking = threading.Thread(target=lambda: answered.append(_destination.before_snapshot(5)))
    asking.start()
    # The Init's events, then the request, on the one connection: the extension has both in order.
    kinds = [kind for kind, _ in read_frames(connection, 2)]
    assert kinds == [_frames.EVENTS, _frames.SNAPSHOT]
    assert asking.is_alive()  # it waits for the answer
    connection.sendall(_frames.encode(_frames.SNAPSHOT, {"sent": True, "kept": 0}))
    asking.join(5)
    assert answered == [{"sent": True, "kept": 0}]
    assert exporter._socket is None  # no restored environment keeps a copy of the connection
    assert connection.recv(1) == b""
    connection.close()


def test_before_the_snapshot_waits_no_longer_than_its_budget(
    extension: Extension, hooks: Hooks, monkeypatch: pytest.MonkeyPatch
) -> None:
    _restore.arm({"AWS_LAMBDA_INITIALIZATION_TYPE": "snap-start"})
    _destination.connect_early()
    connection = extension.accept()
    monkeypatch.setattr(_restore, "SNAPSHOT_WAIT_S", 0.05)
    (hook,) = hooks.before
    hook()  # an extension that never answers: the hook returns after its wait, the connection closed
    assert [kind for kind, _ in read_frames(connection, 1)] == [_frames.SNAPSHOT]
    assert connection.recv(1) == b""
    connection.close()


def test_before_the_snapshot_nothing_is_asked_when_nothing_chose_the_extension(hooks: Hooks) -> None:
    _destination.reset()
    assert _destination.before_snapshot(0.05) is None


def test_before_the_snapshot_never_raises(
    hooks: Hooks, monkeypatch: pytest.MonkeyPatch, library_logs: pytest.LogCaptureFixture
) -> None:
    def broken(timeout: float) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(_destination, "before_snapshot", broken)
    _restore.before_snapshot()  # a hook that raised would fail the Init
    assert any(r.levelname == "ERROR" and "before the snapshot" in r.getMessage() for r in library_logs.records)


def test_every_trace_of_a_restored_process_says_so_and_none_elsewhere(events: list[Any]) -> None:
    @posthog_traced
    def handler(event: Any, context: Any) -> str:
        return "ok"

    handler({}, LambdaContext("r0"))
    _restore.after_restore()
    handler({}, LambdaContext("r1"))
    handler({}, LambdaContext("r2"))
    traces = [e["properties"] for e in by_kind(events, "$ai_trace")]
    assert ["lambda_restored" in p for p in traces] == [False, True, True]
    assert all(p["lambda_restored"] is True for p in traces[1:])
    assert all("lambda_restored" not in e["properties"] for e in events if e["event"] != "$ai_trace")


def test_the_first_invocation_after_the_restore_is_its_cold_start(
    events: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_LAMBDA_INITIALIZATION_TYPE", "snap-start")

    @posthog_traced
    def handler(event: Any, context: Any) -> str:
        return "ok"

    _lambda.set_cold_start(True)
    handler({}, LambdaContext("warm-up"))  # a warm-up call during Init, copied into every restore
    _restore.after_restore()
    handler({}, LambdaContext("r1"))
    handler({}, LambdaContext("r2"))
    assert [e["properties"]["lambda_cold_start"] for e in by_kind(events, "$ai_trace")] == [True, True, False]
