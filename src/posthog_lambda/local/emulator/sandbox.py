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
    from collections.abc import Mapping, Sequence

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


def extension_environment(function_env: Mapping[str, str]) -> dict[str, str]:
    return {
        key: value
        for key, value in function_env.items()
        if key not in RUNTIME_ONLY and not key.startswith("AWS_LAMBDA_LOG_")
    }


def _which(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        raise SandboxError(f"the local Lambda environment needs `{tool}` (util-linux) on PATH")
    return found


class Sandbox:
    """The file system view shared by every process of one environment."""

    def __init__(self, layer_dir: Path | None, exposed: Sequence[Path] = ()) -> None:
        self.layer_dir = layer_dir.resolve() if layer_dir is not None else None
        self._work = Path(tempfile.mkdtemp(prefix="posthog-lambda-local-"))
        self.tmp = self._work / "tmp"
        """What the environment's processes see as ``/tmp``."""
        self.tmp.mkdir()
        self.tmp.chmod(0o1777)
        self._binds: list[tuple[Path, Path]] = []
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
        # Read-only, as Lambda's /opt is: nothing (bytecode included) can be written into the layer.
        script = (
            'mount --bind "$1" /opt && mount -o remount,bind,ro /opt && mount --bind "$2" /etc/hosts && '
            f'{binds}mount --rbind "$3" /tmp && shift 3 && exec "$@"'
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
            opt,
            str(self.hosts_file),
            str(self.tmp),
            *command,
        ]

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
        shutil.rmtree(self._work, ignore_errors=True)


def _outermost(paths: Sequence[Path]) -> list[Path]:
    """``paths`` resolved, without those inside another of them (binding that one covers them)."""
    resolved = sorted({path.resolve() for path in paths}, key=lambda path: len(path.parts))
    kept: list[Path] = []
    for path in resolved:
        if not any(path.is_relative_to(outer) for outer in kept):
            kept.append(path)
    return kept


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
