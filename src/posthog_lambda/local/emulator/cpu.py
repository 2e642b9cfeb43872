"""Lambda's CPU share for a memory size, given to a sandbox's processes with a CFS quota.

On Lambda the CPU a function gets is proportional to its memory: 1,769 MB is one full vCPU, so
128 MB is 128/1769 (7.2 %) of one. Here that share is a cgroup v1 ``cpu`` cgroup of its own per
environment, ``posthog-lambda-<pid>-<n>`` under this Python's own cpu cgroup, with a period of
100 ms and a quota of that share of it (one vCPU at most, 1 ms at least: the kernel's smallest
quota). Every process the sandbox starts moves itself into the cgroup before it runs what it was
started for (see ``sandbox``); what those processes start is born in it. When the environment
closes, whatever is still in the cgroup (a process that left its process group, say) is killed
and the cgroup removed.

What a quota cannot reproduce:

- **Bimodal latencies.** A CFS quota lets the group run at full speed until it has used its
  quota in the current 100 ms period, then stops it until the next period: an invocation either
  fits in what is left of the current period or waits for the next one. Report means over many
  invocations, not single ones; a median can land on either mode.
- **Firecracker's scheduling.** Lambda's share is also a matter of how the microVM's vCPU is
  scheduled on the host (and, above 1,769 MB, of more vCPUs: up to six at 10,240 MB; the quota
  here stops at one). Lambda has also been seen to run Init with more CPU than the share; here
  Init gets the same quota as invocations, so a cold start here is at most as fast as Lambda's.
- **The platform's own work.** The Runtime, Extensions and Telemetry APIs are served by this
  Python, outside the quota; on Lambda that work happens inside the microVM, on the same share.
  The sandbox's own set-up of each process (its private mounts) runs before it joins the cgroup.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import select
import signal
import subprocess
import time
from pathlib import Path

from .sandbox import SandboxError

CGROUP_ROOT = Path("/sys/fs/cgroup/cpu")
"""Where the cgroup v1 ``cpu`` controller is mounted."""
MB_PER_VCPU = 1769
"""Lambda's memory size with one full vCPU."""
MAX_VCPUS = 1
"""The most vCPUs the quota gives (Lambda gives more above 1,769 MB; this stops at one)."""
PERIOD_US = 100_000
"""The CFS period, µs: the kernel's default, and the slice an invocation fits in or waits for."""
MIN_QUOTA_US = 1_000
"""The smallest quota the kernel accepts, µs."""
MIN_MEMORY_MB = 128
MAX_MEMORY_MB = 10_240
"""Lambda's range of memory sizes."""

_numbers = itertools.count(1)


def lambda_quota_us(memory_mb: int, period_us: int = PERIOD_US) -> int:
    """The CFS quota, per ``period_us``, that gives Lambda's CPU share for ``memory_mb``."""
    share = round(period_us * memory_mb / MB_PER_VCPU)
    return max(MIN_QUOTA_US, min(period_us * MAX_VCPUS, share))


class CpuShare:
    """A cgroup v1 cpu cgroup with Lambda's CPU share for ``memory_mb``, made now, removed by
    :meth:`close`. ``root`` is where the cpu controller is mounted (:data:`CGROUP_ROOT`). Fails
    with :class:`SandboxError`, saying why, where no such cgroup can be made: the environment
    must never run at full speed when a share was asked for."""

    def __init__(self, memory_mb: int, root: Path | None = None) -> None:
        root = CGROUP_ROOT if root is None else root
        self.memory_mb = memory_mb
        self.period_us = PERIOD_US
        self.quota_us = lambda_quota_us(memory_mb, self.period_us)
        if not (root / "cpu.cfs_quota_us").is_file():
            raise SandboxError(
                f"cpu_share needs the cgroup v1 cpu controller mounted at {root} (cpu.cfs_quota_us is not there"
                f"{'' if root.is_dir() else ': no such directory'}); a machine with cgroup v2 only, or without "
                "the cpu controller, cannot give the environment Lambda's CPU share"
            )
        parent = _own_cgroup(root)
        self.path = self._make(parent)
        try:
            _write(self.path / "cpu.cfs_period_us", self.period_us)
            _write(self.path / "cpu.cfs_quota_us", self.quota_us)
            self._check_joining()
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _make(parent: Path) -> Path:
        """A new cgroup under ``parent``, named after this process and a count."""
        while True:
            path = parent / f"posthog-lambda-{os.getpid()}-{next(_numbers)}"
            try:
                path.mkdir()
            except FileExistsError:
                continue  # left by an earlier process with the same pid
            except OSError as exc:
                raise SandboxError(
                    f"cpu_share: cannot make the cgroup {path} ({exc.strerror}): making a cgroup needs root "
                    "(or a cpu cgroup delegated to this user)"
                ) from exc
            if not (path / "cgroup.procs").exists():
                with contextlib.suppress(OSError):
                    path.rmdir()
                raise SandboxError(f"cpu_share: {parent} is not a cgroup hierarchy (no cgroup.procs in {path})")
            return path

    def _check_joining(self) -> None:
        """Fail now if a process cannot move itself into the cgroup, as each of the sandbox's
        does (a shell writing its own pid, see ``sandbox``)."""
        probe = subprocess.run(
            ["sh", "-c", 'echo $$ > "$1"', "cpu-share-probe", str(self.procs)],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if probe.returncode != 0:
            raise SandboxError(
                f"cpu_share: a process cannot move itself into {self.path} "
                f"({probe.stderr.strip() or f'exit status {probe.returncode}'})"
            )

    @property
    def procs(self) -> Path:
        """The cgroup's ``cgroup.procs``: a process writing its pid there moves into it."""
        return self.path / "cgroup.procs"

    def pids(self) -> list[int]:
        """The processes in the cgroup now (none once it is removed)."""
        try:
            return sorted(int(line) for line in self.procs.read_text().split())
        except FileNotFoundError:
            return []

    def quota(self) -> tuple[int, int]:
        """(quota, period) in µs, as the kernel has them."""
        quota = int((self.path / "cpu.cfs_quota_us").read_text())
        period = int((self.path / "cpu.cfs_period_us").read_text())
        return quota, period

    def stat(self) -> dict[str, int]:
        """The cgroup's ``cpu.stat``: ``nr_periods`` (periods in which it ran), ``nr_throttled``
        (periods in which it used its quota up and was stopped), ``throttled_time`` (ns)."""
        fields = {}
        for line in (self.path / "cpu.stat").read_text().splitlines():
            name, _, value = line.partition(" ")
            if value.strip().lstrip("-").isdigit():
                fields[name] = int(value)
        return fields

    def close(self, timeout_s: float = 5.0) -> None:
        """Kill what is still in the cgroup and remove it. Called once the environment's
        processes are gone; what is left got out of their process groups (killpg misses it)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise SandboxError(f"cpu_share: cannot remove the cgroup {self.path}: {exc.strerror}") from exc
            left = deadline - time.monotonic()
            pids = self.pids()
            if left <= 0:
                raise SandboxError(
                    f"cpu_share: the cgroup {self.path} still holds processes {pids} after "
                    f"{timeout_s:.0f} s: it is left in place"
                )
            _kill_and_await(pids, left)


def _own_cgroup(root: Path) -> Path:
    """This process's own cpu cgroup under ``root`` (the new cgroup goes inside it, so that
    what limits this Python limits the sandbox too); ``root`` when it cannot be told."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return root
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(","):
            own = root / path.lstrip("/")
            return own if (own / "cgroup.procs").exists() else root
    return root


def _write(path: Path, value: int) -> None:
    try:
        path.write_text(f"{value}\n")
    except OSError as exc:
        raise SandboxError(f"cpu_share: cannot write {value} to {path} ({exc.strerror})") from exc


def _kill_and_await(pids: list[int], timeout_s: float) -> None:
    """SIGKILL ``pids`` and wait, at most ``timeout_s``, until they have all exited."""
    pidfds = []
    for pid in pids:
        try:
            pidfds.append(os.pidfd_open(pid))
        except OSError:
            continue  # gone already
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    try:
        deadline = time.monotonic() + timeout_s
        waiting = list(pidfds)
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            ready, _, _ = select.select(waiting, [], [], left)
            waiting = [fd for fd in waiting if fd not in ready]
        if not pidfds:
            # Nothing listed yet busy: a process on its way out; look again shortly.
            time.sleep(min(0.01, timeout_s))
    finally:
        for fd in pidfds:
            os.close(fd)
