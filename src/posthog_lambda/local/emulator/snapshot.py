"""Snapshot and restore of processes, as SnapStart does it to a whole environment, by raw clones.

Lambda snapshots the memory of a Firecracker microVM once Init is over and later resumes many
VMs from that one image: every process comes back with its memory, its threads and their
registers exactly as they were, and nothing in it is told (no fork handler runs, no signal
arrives). CRIU would do the same for processes, but the CRIU Debian packages here (3.17) fails
`criu check` on this kernel (it does not know the ``[vvar_vclock]`` mapping), so this module
does what is needed by hand, with ``ptrace``:

- :class:`Snapshot` stops every thread of each process where it is (``PTRACE_SEIZE`` +
  ``PTRACE_INTERRUPT``) and records its registers. The stopped processes are the image: they
  never run again.
- :meth:`Snapshot.restore` makes the leader thread of one stopped process execute a raw
  ``clone(CLONE_PARENT | SIGCHLD)`` system call: the kernel copies the memory (copy-on-write)
  and no library code runs, so neither Python's ``os.register_at_fork`` hooks nor libc's
  ``pthread_atfork`` handlers are called (``os.fork()`` would call both). In the copy, the
  other threads are made again with ``clone(CLONE_THREAD | ...)`` on their own stacks and TLS,
  and every thread gets the registers it was stopped with; a thread stopped inside a system
  call repeats it, or sees ``EINTR`` where the kernel would only restart it through its
  restart block, as it does after a signal. The copy then runs, in a process group of its own.

What a VM snapshot gives that this does not:

- **Kernel objects are shared, not copied.** A restored process's file descriptors refer to the
  snapshot's own sockets, pipes, files and epoll instances: only one restored copy may use
  them at a time (the lifecycle restores one environment at a time), and a descriptor that
  must be private is replaced, at restore, by a descriptor of the caller's
  (``replace=``); the copy's code sees the same number.
- **Process and thread ids change** (Lambda's restored processes keep theirs); the C library's
  cached thread ids are corrected, but code that compares ``os.getpid()`` with a pid it saved
  sees a new process.
- **Clocks do not jump.** Lambda's monotonic clock does not count the time spent as an image,
  and its wall clock is corrected after the restore; here both run on.
- Per-thread kernel state that is not memory is not carried over: signal alternate stacks,
  restartable-sequence and robust-futex registrations, thread names.
- x86_64 with glibc only (registers and the C library's thread layout are read here).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import platform
import queue
import signal
import threading
import time
from dataclasses import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any, TypeVar

    T = TypeVar("T")

_PTRACE_PEEKDATA = 2
_PTRACE_POKEDATA = 5
_PTRACE_GETREGS = 12
_PTRACE_SETREGS = 13
_PTRACE_DETACH = 17
_PTRACE_SYSCALL = 24
_PTRACE_GETEVENTMSG = 0x4201
_PTRACE_SEIZE = 0x4206
_PTRACE_INTERRUPT = 0x4207

_O_TRACESYSGOOD = 0x1
_O_TRACEFORK = 0x2
_O_TRACECLONE = 0x8
_O_EXITKILL = 0x100000

_EVENT_FORK = 1
_EVENT_CLONE = 3
_EVENT_STOP = 128
_WALL = 0x40000000

_SYS_CLOSE = 3
_SYS_CLONE = 56
_SYS_SETPGID = 109
_SYS_DUP3 = 292
_SYS_PIDFD_OPEN = 434
_SYS_PIDFD_GETFD = 438

_CLONE_VM = 0x100
_CLONE_FS = 0x200
_CLONE_FILES = 0x400
_CLONE_SIGHAND = 0x800
_CLONE_PARENT = 0x8000
_CLONE_THREAD = 0x10000
_CLONE_SYSVSEM = 0x40000
_CLONE_SETTLS = 0x80000
_CLONE_PARENT_SETTID = 0x100000
_CLONE_CHILD_CLEARTID = 0x200000
_THREAD_FLAGS = (
    _CLONE_VM
    | _CLONE_FS
    | _CLONE_FILES
    | _CLONE_SIGHAND
    | _CLONE_THREAD
    | _CLONE_SYSVSEM
    | _CLONE_SETTLS
    | _CLONE_PARENT_SETTID
    | _CLONE_CHILD_CLEARTID
)
"""What glibc's ``pthread_create`` asks of ``clone``."""
_O_CLOEXEC = 0o2000000

_RESTART = (512, 513, 514)
"""ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND: the kernel repeats such a call."""
_RESTART_BLOCK = 516
"""ERESTART_RESTARTBLOCK: repeated through a per-thread restart block a new thread lacks."""
_MASK = (1 << 64) - 1
_SYSCALL_INSTRUCTION = 0x050F
"""``syscall`` (0f 05), as a little-endian 16-bit word."""


class SnapshotError(RuntimeError):
    """The processes cannot be snapshotted or restored here; the message says why."""


_NAMES = [
    "r15",
    "r14",
    "r13",
    "r12",
    "rbp",
    "rbx",
    "r11",
    "r10",
    "r9",
    "r8",
    "rax",
    "rcx",
    "rdx",
    "rsi",
    "rdi",
    "orig_rax",
    "rip",
    "cs",
    "eflags",
    "rsp",
    "ss",
    "fs_base",
    "gs_base",
    "ds",
    "es",
    "fs",
    "gs",
]


class _Regs(ctypes.Structure):
    """``struct user_regs_struct`` of x86_64 (sys/user.h)."""

    _fields_ = [(name, ctypes.c_ulonglong) for name in _NAMES]


@dataclass(frozen=True)
class Registers:
    """One thread's registers, as :class:`_Regs` holds them, but immutable."""

    values: tuple[int, ...]

    @classmethod
    def of(cls, regs: _Regs) -> Registers:
        return cls(tuple(getattr(regs, name) for name in _NAMES))

    def raw(self, **changes: int) -> _Regs:
        regs = _Regs(*self.values)
        for name, value in changes.items():
            setattr(regs, name, value & _MASK)
        return regs

    def get(self, name: str) -> int:
        return self.values[_NAMES.index(name)]

    def resumed(self) -> Registers:
        """These registers as a thread made from them must start: a system call that the stop
        interrupted is repeated (or fails with EINTR, where only a restart block would repeat
        it), and the kernel is kept from restarting anything itself."""
        orig = _signed(self.get("orig_rax"))
        result = _signed(self.get("rax"))
        changes: dict[str, int] = {"orig_rax": -1}
        if orig >= 0:
            if -result in _RESTART:
                changes["rax"] = orig
                changes["rip"] = self.get("rip") - 2
            elif -result == _RESTART_BLOCK:
                changes["rax"] = -errno.EINTR
        return Registers.of(self.raw(**changes))


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


@dataclass(frozen=True)
class FileDescriptor:
    """One open file descriptor of a stopped process, as ``/proc`` shows it."""

    number: int
    target: str
    """What ``/proc/PID/fd/N`` links to: ``socket:[INODE]``, ``pipe:[INODE]``, a path."""
    cloexec: bool


@dataclass(frozen=True)
class _Frozen:
    pid: int
    threads: dict[int, Registers]
    """Each thread's registers when it stopped, by thread id (the leader's is the pid)."""


_libc: Any = None


def _ptrace(request: int, tid: int, addr: int = 0, data: int = 0) -> int:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.ptrace.restype = ctypes.c_long
        _libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    ctypes.set_errno(0)
    result = int(_libc.ptrace(request, tid, addr, data))
    code = ctypes.get_errno()
    if result == -1 and code != 0:
        raise OSError(code, f"ptrace({request:#x}) on {tid}: {os.strerror(code)}")
    return result


def _getregs(tid: int) -> Registers:
    regs = _Regs()
    _ptrace(_PTRACE_GETREGS, tid, 0, ctypes.addressof(regs))
    return Registers.of(regs)


def _setregs(tid: int, regs: Registers) -> None:
    raw = regs.raw()
    _ptrace(_PTRACE_SETREGS, tid, 0, ctypes.addressof(raw))


def _peek(tid: int, address: int) -> int:
    return _ptrace(_PTRACE_PEEKDATA, tid, address) & _MASK


def _poke_int32(tid: int, address: int, value: int) -> None:
    word = _peek(tid, address)
    word = (word & ~0xFFFF_FFFF & _MASK) | (value & 0xFFFF_FFFF)
    _ptrace(_PTRACE_POKEDATA, tid, address, word)


def _wait_stop(tid: int, timeout_s: float = 10.0) -> tuple[int, int]:
    """Wait until ``tid`` stops; (the stop signal, the ptrace event). Signals the snapshot's
    processes would get meanwhile are not theirs to see (they are images)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found, status = os.waitpid(tid, _WALL | os.WNOHANG)
        if found == 0:
            if time.monotonic() > deadline:
                raise SnapshotError(f"thread {tid} did not stop within {timeout_s} s")
            time.sleep(0.0005)
            continue
        if not os.WIFSTOPPED(status):
            raise SnapshotError(f"thread {tid} ended while being snapshotted (wait status {status:#x})")
        return os.WSTOPSIG(status), status >> 16


def _syscall(tid: int, at: int, base: Registers, number: int, *args: int) -> tuple[int, int | None]:
    """Make the stopped thread ``tid`` execute system call ``number`` at address ``at`` (a
    ``syscall`` instruction); (its result, the id of a process or thread it made, if any).
    The thread is left stopped after the call."""
    names = ("rdi", "rsi", "rdx", "r10", "r8", "r9")
    changes = {"rax": number, "rip": at, "orig_rax": -1, **dict(zip(names, args, strict=False))}
    _setregs(tid, Registers.of(base.raw(**changes)))
    made: int | None = None
    _ptrace(_PTRACE_SYSCALL, tid)
    sig, _ = _wait_stop(tid)
    if sig != signal.SIGTRAP | 0x80:
        raise SnapshotError(f"thread {tid} did not enter system call {number} (stopped by {sig})")
    while True:
        _ptrace(_PTRACE_SYSCALL, tid)
        sig, event = _wait_stop(tid)
        if event in (_EVENT_FORK, _EVENT_CLONE):
            message = ctypes.c_ulong()
            _ptrace(_PTRACE_GETEVENTMSG, tid, 0, ctypes.addressof(message))
            made = message.value
            continue
        if sig == signal.SIGTRAP | 0x80:
            break
    result = _signed(_getregs(tid).get("rax"))
    return result, made


class Snapshot:
    """Processes stopped as Lambda snapshots an environment, and the copies made from them.

    ``Snapshot([pid, ...])`` stops them; :meth:`restore` makes a running copy of one of them
    (as often as wanted); :meth:`close` kills the stopped processes. Every ``ptrace`` call is
    made from one thread of this object's own, as Linux requires of a tracer.
    """

    def __init__(self, pids: Sequence[int]) -> None:
        if platform.machine() != "x86_64":
            raise SnapshotError(f"snapshots are made on x86_64 only, not {platform.machine()}")
        self._jobs: queue.Queue[tuple[Callable[[], Any], queue.Queue[tuple[bool, Any]]] | None] = queue.Queue()
        self._tracer = threading.Thread(target=self._serve, name="snapshot-tracer", daemon=True)
        self._tracer.start()
        self._frozen: dict[int, _Frozen] = {}
        self._tid_offset: int | None = None
        self._syscall_at: dict[int, int] = {}
        self.restores = 0
        """How many copies have been made."""
        try:
            for pid in pids:
                self._frozen[pid] = self._run(functools.partial(self._freeze, pid))
            self._run(self._find_tid_offset)
        except BaseException:
            self.close()
            raise

    # -- the tracer thread ---------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            work, answer = job
            try:
                answer.put((True, work()))
            except BaseException as error:  # handed to the caller, raised there
                answer.put((False, error))

    def _run(self, work: Callable[[], T]) -> T:
        answer: queue.Queue[tuple[bool, Any]] = queue.Queue()
        self._jobs.put((work, answer))
        ok, value = answer.get()
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    # -- snapshot --------------------------------------------------------------------------

    def _freeze(self, pid: int) -> _Frozen:
        options = _O_TRACESYSGOOD | _O_TRACEFORK | _O_TRACECLONE | _O_EXITKILL
        stopped: dict[int, Registers] = {}
        # Threads may start while others are being stopped: go round until none is new.
        while True:
            tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
            new = [t for t in tids if t not in stopped]
            if not new:
                break
            for tid in new:
                _ptrace(_PTRACE_SEIZE, tid, 0, options)
                _ptrace(_PTRACE_INTERRUPT, tid)
            for tid in new:
                _wait_stop(tid)
                stopped[tid] = _getregs(tid)
        at = next((a for r in stopped.values() if (a := self._syscall_address(pid, r)) is not None), None)
        if at is None:
            raise SnapshotError(f"no thread of process {pid} is in a system call: nowhere to make one from")
        self._syscall_at[pid] = at
        return _Frozen(pid, stopped)

    @staticmethod
    def _syscall_address(pid: int, regs: Registers) -> int | None:
        if _signed(regs.get("orig_rax")) < 0:
            return None
        at = regs.get("rip") - 2
        return at if _peek(pid, at) & 0xFFFF == _SYSCALL_INSTRUCTION else None

    def _find_tid_offset(self) -> None:
        """Where glibc keeps a thread's id in its thread descriptor (at the TLS pointer), found
        by looking for each stopped thread's id there: a copy's threads must hold their own."""
        for offset in (0x2D0, *range(0, 0x800, 4)):
            if all(
                _peek(frozen.pid, regs.get("fs_base") + offset) & 0xFFFF_FFFF == tid
                for frozen in self._frozen.values()
                for tid, regs in frozen.threads.items()
            ):
                self._tid_offset = offset
                return
        raise SnapshotError("cannot find where the C library keeps thread ids: glibc on x86_64 is needed")

    def file_descriptors(self, pid: int) -> list[FileDescriptor]:
        """The open file descriptors of stopped process ``pid``."""
        found = []
        for name in os.listdir(f"/proc/{pid}/fd"):
            number = int(name)
            try:
                target = os.readlink(f"/proc/{pid}/fd/{name}")
                with open(f"/proc/{pid}/fdinfo/{name}") as info:
                    flags = next(int(line.split()[1], 8) for line in info if line.startswith("flags:"))
            except (OSError, StopIteration):
                continue
            found.append(FileDescriptor(number, target, bool(flags & _O_CLOEXEC)))
        return sorted(found, key=lambda fd: fd.number)

    # -- restore ---------------------------------------------------------------------------

    def restore(self, pid: int, replace: Mapping[int, int] | None = None) -> int:
        """A running copy of stopped process ``pid``: its memory, its threads with their
        registers, no fork handler run, in a process group of its own, a child of the process
        that started ``pid``. ``replace`` maps file descriptor numbers of the copy to
        descriptors of this process: the copy gets a duplicate of each under that number, in
        place of the snapshot's. Returns the copy's pid."""
        if pid not in self._frozen:
            raise SnapshotError(f"process {pid} is not in the snapshot")
        copy = self._run(lambda: self._restore(self._frozen[pid], dict(replace or {})))
        self.restores += 1
        return copy

    def _restore(self, frozen: _Frozen, replace: dict[int, int]) -> int:
        assert self._tid_offset is not None
        at = self._syscall_at[frozen.pid]
        leader = frozen.threads[frozen.pid]
        result, made = _syscall(frozen.pid, at, leader, _SYS_CLONE, _CLONE_PARENT | signal.SIGCHLD, 0, 0, 0, 0)
        if result < 0 or made is None:
            raise SnapshotError(f"clone in process {frozen.pid} failed: {os.strerror(-result)}")
        copy = made
        threads: list[int] = []
        try:
            _wait_stop(copy)
            base = _getregs(copy)
            # The leader's thread descriptor still holds the snapshot's id: its own, now.
            _poke_int32(copy, leader.get("fs_base") + self._tid_offset, copy)
            self._check(copy, at, base, "setpgid", _SYS_SETPGID, 0, 0)
            if replace:
                pidfd = self._check(copy, at, base, "pidfd_open", _SYS_PIDFD_OPEN, os.getpid(), 0)
                cloexec = {fd.number: fd.cloexec for fd in self.file_descriptors(frozen.pid)}
                for number, mine in replace.items():
                    got = self._check(copy, at, base, "pidfd_getfd", _SYS_PIDFD_GETFD, pidfd, mine, 0)
                    flags = _O_CLOEXEC if cloexec.get(number, True) else 0
                    self._check(copy, at, base, "dup3", _SYS_DUP3, got, number, flags)
                    self._check(copy, at, base, "close", _SYS_CLOSE, got)
                self._check(copy, at, base, "close", _SYS_CLOSE, pidfd)
            for tid, regs in frozen.threads.items():
                if tid == frozen.pid:
                    continue
                slot = regs.get("fs_base") + self._tid_offset
                flags = _THREAD_FLAGS
                result, thread = _syscall(
                    copy, at, base, _SYS_CLONE, flags, regs.get("rsp"), slot, slot, regs.get("fs_base")
                )
                if result < 0 or thread is None:
                    raise SnapshotError(f"making thread {tid} again failed: {os.strerror(-result)}")
                threads.append(thread)
                _wait_stop(thread)
                _setregs(thread, regs.resumed())
            _setregs(copy, leader.resumed())
        except BaseException:
            for tid in (copy, *threads):
                with contextlib.suppress(OSError):
                    os.kill(tid, signal.SIGKILL)
            raise
        for tid in (*threads, copy):
            _ptrace(_PTRACE_DETACH, tid)
        return copy

    @staticmethod
    def _check(tid: int, at: int, base: Registers, what: str, number: int, *args: int) -> int:
        result, _ = _syscall(tid, at, base, number, *args)
        if result < 0:
            raise SnapshotError(f"{what} in the restored process failed: {os.strerror(-result)}")
        return result

    def close(self) -> None:
        """Kill the stopped processes (their copies go on), reap them, stop the tracer thread."""
        if self._tracer.is_alive():
            self._run(self._kill)
        self._jobs.put(None)

    def _kill(self) -> None:
        for frozen in self._frozen.values():
            try:
                os.kill(frozen.pid, signal.SIGKILL)
            except OSError:
                continue
            # A traced thread that dies waits for its tracer, the leader last.
            for tid in sorted(frozen.threads, key=lambda t: t == frozen.pid):
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(tid, _WALL)
        self._frozen.clear()


class RestoredProcess:
    """A restored copy as :mod:`subprocess` shows a process it started: ``pid``, ``poll``,
    ``wait``, ``returncode``, signals; ``on_exit`` is called (from a thread of its own) with the
    exit code once it has exited and been reaped. Its output goes where the snapshot's went."""

    stdout = None

    def __init__(self, pid: int, on_exit: Callable[[int], None] | None = None) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._exited = threading.Event()
        self._on_exit = on_exit
        threading.Thread(target=self._reap, name=f"restored-{pid}", daemon=True).start()

    def _reap(self) -> None:
        try:
            _, status = os.waitpid(self.pid, 0)
            code = os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            code = -1
        self.returncode = code
        self._exited.set()
        if self._on_exit is not None:
            self._on_exit(code)

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._exited.wait(timeout):
            import subprocess

            raise subprocess.TimeoutExpired(f"restored process {self.pid}", timeout or 0.0)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def shut_down_socket(pid: int, number: int) -> None:
    """Shut down, both ways, the socket that process ``pid`` has as file descriptor ``number``
    (for every process that shares it): a connection that a restore leaves dead."""
    import socket

    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        mine = int(libc.syscall(_SYS_PIDFD_GETFD, pidfd, number, 0))
        if mine < 0:
            raise OSError(ctypes.get_errno(), f"pidfd_getfd of fd {number} of {pid} failed")
    finally:
        os.close(pidfd)
    connection = socket.socket(fileno=mine)
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        connection.close()


__all__ = ["FileDescriptor", "Registers", "RestoredProcess", "Snapshot", "SnapshotError", "shut_down_socket"]
