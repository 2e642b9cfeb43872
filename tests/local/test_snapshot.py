"""The snapshot behind the local SnapStart mode: a restored copy has the stopped process's memory
exactly (a seeded generator draws the same numbers in every copy), its other threads run again,
no fork hook has run in it, and a descriptor given at restore takes the snapshot's place; a
restore that fails closes the connections made for it."""

from __future__ import annotations

import gc
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from posthog_lambda.local import LambdaEnvironment
from posthog_lambda.local.emulator.snapshot import RestoredProcess, Snapshot, SnapshotError

CHILD = textwrap.dedent(
    """
    import os, random, socket, sys, threading, time
    rng = random.Random(42)
    rng.random()
    forked = []
    os.register_at_fork(after_in_child=lambda: forked.append(True))
    ticks = [0]
    def tick():
        while True:
            time.sleep(0.005)
            ticks[0] += 1
    threading.Thread(target=tick, daemon=True).start()
    control = socket.socket(fileno=int(sys.argv[1]))
    print("ready", flush=True)
    while control.recv(1):
        before = ticks[0]
        while ticks[0] < before + 3:  # the ticking thread must run for this to end
            time.sleep(0.001)
        reply = f"{os.getpid()} {rng.random()} {forked} {threading.get_native_id()}"
        control.sendall(reply.encode() + b"\\n")
    """
)


def ask(control: socket.socket) -> list[str]:
    control.sendall(b"?")
    with control.makefile() as replies:
        return replies.readline().split()


def test_restored_copies_have_the_memory_threads_and_no_fork_hook(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    ours, theirs = socket.socketpair()
    child = subprocess.Popen(
        [sys.executable, str(script), str(theirs.fileno())], pass_fds=[theirs.fileno()], stdout=subprocess.PIPE
    )
    assert child.stdout is not None
    assert child.stdout.readline() == b"ready\n"
    original = ask(ours)
    snapshot = Snapshot([child.pid])
    answers = []
    try:
        for _ in range(2):
            mine, its = socket.socketpair()
            copy = RestoredProcess(snapshot.restore(child.pid, {theirs.fileno(): its.fileno()}))
            its.close()
            answers.append(ask(mine) + ask(mine))
            mine.close()  # its control socket ends: it exits
            assert copy.wait(timeout=10) == 0
    finally:
        snapshot.close()
        child.wait(timeout=10)
        child.stdout.close()
        ours.close()
        theirs.close()
    first, second = answers
    pid, _draw, forked, native = first[:4]
    # The same memory: both copies draw the same numbers, the ones the original would have.
    assert first[1] == second[1] != original[1]
    assert first[5] == second[5]
    assert forked == "[]", "a fork hook ran in a restored copy"
    assert second[2] == "[]", "a fork hook ran in a restored copy"
    assert int(pid) not in (child.pid, int(second[0]))
    assert native == pid


def test_a_failed_restore_closes_the_connections_it_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The restored process's Runtime API connection and any moved Telemetry listener are made
    # before the copy: a restore that fails must not leave them to the garbage collector (whose
    # ResourceWarning, under the suite's filterwarnings = error, fails whichever test runs then).
    (tmp_path / "app.py").write_text("def handler(event, context):\n    return event\n")

    def failing(self: Snapshot, pid: int, replace: object = None) -> int:
        raise SnapshotError(f"process {pid} cannot be copied")

    with LambdaEnvironment(tmp_path, "app.handler", lifecycle="snap-start") as env:
        assert env.init().error is None
        monkeypatch.setattr(Snapshot, "restore", failing)
        with pytest.raises(SnapshotError, match="cannot be copied"):
            env.invoke({})
    gc.collect()
