"""Processes of the local environment: their file system view, environment and signals.

On AWS a layer is extracted to ``/opt``, ``sandbox.localdomain`` resolves to the sandbox's own
address and ``/tmp`` belongs to the sandbox. Here each process of the environment starts in a
private mount namespace where the layer directory is bind-mounted on ``/opt``, a hosts file
naming sandbox.localdomain on ``/etc/hosts``, and the environment's own directory on ``/tmp``
(shared by its processes, as on AWS: the extension's socket is there), with the host
directories under ``/tmp`` that the environment itself uses (the function's code, the runtime
client) at their usual paths. The machine's own ``/opt``, ``/etc/hosts`` and ``/tmp`` are never
touched. Each process leads its own process group, so that freezing (SIGSTOP) and killing
reach its children too.

A sandbox made with ``user=`` (Lambda Managed Instances: uid 993, ``sbx_user1051`` on Lambda)
runs its processes as that non-root user, after the mounts. When this Python is root that is a
real drop (``setpriv --reuid --regid --clear-groups``), so what they need must be usable by that
uid: the environment's directory becomes traversable (0711) and what the lifecycle puts there
readable (:meth:`Sandbox.readable_copy`, :meth:`Sandbox.make_readable`; the layer too, when its
directory is closed to others, as a temporary directory is); a directory outside
``/tmp`` on the way to the interpreter or the runtime client that others may not enter (``/root``
for an interpreter under ``~/.pyenv``) is covered, in the private namespace only, by an empty
tmpfs holding just those paths. When this Python is not root, the processes are the caller
outside whatever they are inside (the user namespace of ``--map-root-user``): there is nothing to
drop, and a nested user namespace only maps ``user`` onto that caller so that they do not see
themselves as root.

A sandbox made with ``cpu=`` (a :class:`~.cpu.CpuShare`: Lambda's CPU share for the memory size)
starts each process in that CPU cgroup: its shell opens the cgroup's ``cgroup.procs`` before the
mounts and, once they are made (as root, before any drop to ``user``), writes its own pid there
and closes it, then execs the command. The process is in the cgroup before anything of the
command runs, and what it starts is born there (the runtime's workers, an extension's children).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence, Set

    from .cpu import CpuShare

SANDBOX_HOST = "sandbox.localdomain"

RUNTIME_ONLY = frozenset(
    {
        "_HANDLER",
        "AWS_EXECUTION_ENV",
        "LAMBDA_TASK_ROOT",
        "LAMBDA_RUNTIME_DIR",
        "PYTHONPATH",
        "_X_AMZN_TRACE_ID",
    }
)
"""Variables only the runtime gets; extensions get the rest (and AWS_LAMBDA_LOG_* stay out too)."""

_RUNTIME_DISTRIBUTIONS = ("awslambdaric", "simplejson", "snapshot-restore-py")


class SandboxError(RuntimeError):
    """The local environment cannot be set up on this machine; the message says what is missing."""


def extension_environment(function_env: Mapping[str, str], runtime_only: Set[str] = RUNTIME_ONLY) -> dict[str, str]:
    return {
        key: value
        for key, value in function_env.items()
        if key not in runtime_only and not key.startswith("AWS_LAMBDA_LOG_")
    }


def _which(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        raise SandboxError(f"the local Lambda environment needs `{tool}` (util-linux) on PATH")
    return found


class Sandbox:
    """The file system view shared by every process of one environment."""

    def __init__(
        self,
        layer_dir: Path | None,
        exposed: Sequence[Path] = (),
        user: int | None = None,
        cpu: CpuShare | None = None,
    ) -> None:
        self.layer_dir = layer_dir.resolve() if layer_dir is not None else None
        self.user = user
        """The uid (and gid) the processes run as; None: as this Python (or root, inside)."""
        self.drops_privileges = user is not None and os.geteuid() == 0
        """A real drop from root: what the processes use must be usable by :attr:`user`."""
        self.cpu = cpu
        """The CPU cgroup every process starts in (Lambda's CPU share), if any; the sandbox
        owns it: :meth:`close` removes it."""
        self._work = Path(tempfile.mkdtemp(prefix="posthog-lambda-local-"))
        try:
            self._set_up(exposed)
        except BaseException:
            # Nothing is left behind: the directory, and the cgroup handed over.
            self.close()
            raise

    def _set_up(self, exposed: Sequence[Path]) -> None:
        self.tmp = self._work / "tmp"
        """What the environment's processes see as ``/tmp``."""
        self.tmp.mkdir()
        self.tmp.chmod(0o1777)
        self._binds: list[tuple[Path, Path]] = []
        self._masks: list[tuple[Path, list[tuple[Path, Path]]]] = []
        """(a directory covered by a tmpfs, [(a path kept visible under it, where it is staged)])."""
        # This interpreter (a virtual environment under /tmp, say) runs the runtime client.
        interpreter = [Path(sys.prefix), Path(sys.base_prefix), Path(sys.executable).resolve().parent]
        for path in _outermost([self._work, *exposed, *interpreter]):
            self._expose(path)
        self.hosts_file = self._work / "hosts"
        self.hosts_file.write_text(
            f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.0.1\t{SANDBOX_HOST}\n"
        )
        self.empty_opt = self._work / "opt"
        self.empty_opt.mkdir()
        self._unshare = _which("unshare")
        self._setpriv = ""
        if self.drops_privileges:
            self._setpriv = _which("setpriv")
            self._open_up([*interpreter, *_distribution_roots(_RUNTIME_DISTRIBUTIONS)])
        self._check()

    def _check(self) -> None:
        """Fail now, with a clear message, if this machine cannot make private mounts."""
        probe = subprocess.run(
            self.wrap(["true"]),
            capture_output=True,
            text=True,
            timeout=10,
        )
        if probe.returncode != 0:
            raise SandboxError(
                "cannot give the environment's processes a private /opt: `unshare --mount` and "
                f"`mount --bind` failed ({probe.stderr.strip() or probe.returncode}); this needs "
                "root or a user namespace with CAP_SYS_ADMIN (unshare --map-root-user)"
            )

    def _open_up(self, needed: Sequence[Path]) -> None:
        """Make what the processes need usable by :attr:`user` once they are no longer root."""
        assert self.user is not None
        self._work.chmod(0o711)
        self.make_readable(self.hosts_file)
        self.make_readable(self.empty_opt)
        if self.layer_dir is not None and not _enterable(self.layer_dir, self.user, read=True):
            # A temporary directory, most likely (0700): what Lambda extracts is open to the user.
            self.layer_dir = self.readable_copy(self.layer_dir, "layer")
        host_tmp = Path("/tmp").resolve()
        masks: dict[Path, list[Path]] = {}
        for path in _outermost(needed):
            if not path.exists():
                continue
            if path.is_relative_to(host_tmp):
                # Seen through the private /tmp, whose directories on the way are the sandbox's.
                blocked = None
            else:
                blocked = next((p for p in reversed(path.parents) if not _enterable(p, self.user)), None)
            if not _enterable(path, self.user, read=True):
                raise SandboxError(
                    f"{path} is needed by the environment's processes, which run as uid {self.user} "
                    "(as on Lambda Managed Instances), and that user may not read it"
                )
            if blocked is not None:
                masks.setdefault(blocked, []).append(path)
        stage = self._work / "stage"
        for number, (blocked, paths) in enumerate(masks.items()):
            kept = []
            for index, path in enumerate(paths):
                staged = stage / f"{number}-{index}"
                staged.mkdir(parents=True)
                kept.append((path, staged))
            self._masks.append((blocked, kept))

    def _expose(self, path: Path) -> None:
        """Keep ``path``, if it is under the machine's /tmp, at the same path in the private one."""
        host_tmp = Path("/tmp").resolve()
        if not path.is_relative_to(host_tmp):
            return
        inside = self.tmp / path.relative_to(host_tmp)
        inside.mkdir(parents=True, exist_ok=True)
        self._binds.append((path, inside))

    def wrap(self, command: Sequence[str]) -> list[str]:
        """``command`` run in a private mount namespace with the layer on /opt and the
        environment's own /tmp."""
        opt = str(self.layer_dir or self.empty_opt)
        # The exposed directories are bound into the private /tmp while the machine's is still
        # visible, then the whole tree goes on /tmp (--rbind keeps those binds).
        binds = "".join(f"mount --bind {shlex.quote(str(a))} {shlex.quote(str(b))} && " for a, b in self._binds)
        opened = joined = ""
        arguments = [opt, str(self.hosts_file), str(self.tmp)]
        if self.cpu is not None:
            # cgroup.procs is opened on the machine's file system, before the mounts; the process
            # moves itself in once they are made (they are this environment's set-up, not the
            # function's: Lambda's sandbox is ready before Init), then runs the command there.
            opened = 'exec 9>"$4" && '
            joined = "echo $$ >&9 && exec 9>&- && "
            arguments.append(str(self.cpu.procs))
        # Read-only, as Lambda's /opt is: nothing (bytecode included) can be written into the layer.
        script = (
            f'{opened}mount --bind "$1" /opt && mount -o remount,bind,ro /opt && mount --bind "$2" /etc/hosts && '
            f'{self._mask_script()}{binds}mount --rbind "$3" /tmp && {joined}shift {len(arguments)} && '
            f'exec {self._as_user()}"$@"'
        )
        prefix = [] if os.geteuid() == 0 else ["--map-root-user"]
        return [
            self._unshare,
            "--mount",
            "--propagation",
            "private",
            *prefix,
            "sh",
            "-c",
            script,
            "sandbox",
            *arguments,
            *command,
        ]

    def _mask_script(self) -> str:
        """Shell commands covering each blocked directory with a tmpfs that holds only the paths
        kept under it: staged first (bind mounts keep their source), then bound back in place."""
        if not self._masks:
            return ""
        quote = shlex.quote
        stage = "".join(f"mount --bind {quote(str(p))} {quote(str(s))} && " for _, kept in self._masks for p, s in kept)
        cover = "".join(
            f"mount -t tmpfs -o mode=0755 sandbox-mask {quote(str(blocked))} && "
            + "".join(f"mkdir -p {quote(str(p))} && mount --bind {quote(str(s))} {quote(str(p))} && " for p, s in kept)
            for blocked, kept in self._masks
        )
        return f"umask 022 && {stage}{cover}"

    def _as_user(self) -> str:
        """What the script's ``exec`` puts before the command to run it as :attr:`user`."""
        if self.user is None:
            return ""
        ids = f"{self.user:d}"
        if self.drops_privileges:
            return f"{shlex.quote(self._setpriv)} --reuid {ids} --regid {ids} --clear-groups -- "
        # Not root: nothing to drop; the nested namespace only renames the caller.
        return f"{shlex.quote(self._unshare)} --user --map-user={ids} --map-group={ids} -- "

    def make_readable(self, path: Path) -> None:
        """Let :attr:`user` read ``path`` (and, for a directory, all it holds) and enter its
        directories; executables stay executable. Symbolic links are left alone."""
        paths = [path]
        if path.is_dir() and not path.is_symlink():
            for root, dirs, files in os.walk(path):
                paths += [Path(root, name) for name in [*dirs, *files]]
        for each in paths:
            if each.is_symlink():
                continue
            mode = each.stat().st_mode
            executable = each.is_dir() or mode & 0o111
            each.chmod((mode & 0o7000) | (0o755 if executable else 0o644))

    def readable_copy(self, source: Path, name: str) -> Path:
        """A copy of the directory ``source`` in the environment's directory that :attr:`user`
        can read: a function's code may sit below directories only its owner may enter (a test's
        ``tmp_path``). Owned by root and read-only to the user, as ``/var/task`` is on Lambda."""
        copy = self._work / name
        shutil.copytree(source, copy, symlinks=True)
        self.make_readable(copy)
        return copy

    def start(
        self,
        command: Sequence[str],
        env: Mapping[str, str],
        cwd: Path | str | None = None,
    ) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.wrap(command),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def close(self) -> None:
        """Remove the environment's directory and its CPU cgroup (killing what is still in it:
        called once the environment's processes are gone)."""
        shutil.rmtree(self._work, ignore_errors=True)
        cpu, self.cpu = self.cpu, None
        if cpu is not None:
            cpu.close()


def _outermost(paths: Sequence[Path]) -> list[Path]:
    """``paths`` resolved, without those inside another of them (binding that one covers them)."""
    resolved = sorted({path.resolve() for path in paths}, key=lambda path: len(path.parts))
    kept: list[Path] = []
    for path in resolved:
        if not any(path.is_relative_to(outer) for outer in kept):
            kept.append(path)
    return kept


def _enterable(path: Path, user: int, read: bool = False) -> bool:
    """Whether ``user`` (uid and gid, no other groups) may enter (and, with ``read``, list)
    ``path``, by its permission bits."""
    try:
        info = path.stat()
    except OSError:
        return False
    if info.st_uid == user:
        bits = 0o500 if read else 0o100
    elif info.st_gid == user:
        bits = 0o050 if read else 0o010
    else:
        bits = 0o005 if read else 0o001
    return info.st_mode & bits == bits


def _distribution_roots(names: Sequence[str]) -> list[Path]:
    """Where the installed distributions ``names`` are (their site-packages directories)."""
    roots = []
    for name in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            roots.append(Path(str(importlib.metadata.distribution(name).locate_file(""))).resolve())
    return roots


def signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Send ``sig`` to the process and everything it started; gone processes are fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def runtime_directory(into: Path) -> Path:
    """A directory holding only AWS's runtime interface client and its dependencies, linked
    from this interpreter's installation: what ``/var/runtime`` is on AWS, so the function sees
    that and nothing else of this machine's packages."""
    try:
        return link_distributions(into, _RUNTIME_DISTRIBUTIONS)
    except importlib.metadata.PackageNotFoundError as exc:
        raise SandboxError(
            "the local Lambda environment runs functions with AWS's runtime interface client: "
            "pip install 'posthog-lambda[local]' (awslambdaric)"
        ) from exc


def link_distributions(into: Path, names: Sequence[str]) -> Path:
    """Symlink the importable files of installed distributions ``names`` into ``into``, the
    way ``pip install --target`` would lay them out, without copying or downloading."""
    into.mkdir(parents=True, exist_ok=True)
    for name in names:
        dist = importlib.metadata.distribution(name)
        base = Path(str(dist.locate_file("")))
        for top in {str(f).split("/")[0] for f in dist.files or () if not str(f).startswith("..")}:
            if top.endswith((".dist-info", ".egg-info")) or top == "__pycache__":
                continue
            link = into / top
            if not link.exists():
                link.symlink_to(base / top)
    return into


def python_path_for(function_dir: Path, runtime_dir: Path) -> str:
    """The function's import path as on AWS: code, then the layer's python/ directories."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    return os.pathsep.join(
        [str(function_dir), f"/opt/python/lib/{version}/site-packages", "/opt/python", str(runtime_dir)]
    )
