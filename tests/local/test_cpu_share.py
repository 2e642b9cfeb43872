"""``LambdaEnvironment(..., cpu_share=True)``: every process of the sandbox (the runtime, the
extension, what they start) runs in a cgroup of the environment's own with Lambda's CPU share for
its memory size as a CFS quota, from its start (Init included) to the environment's close, which
removes the cgroup; where no such cgroup can be made, starting fails and says why."""

from __future__ import annotations

import os
import select
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from posthog_lambda.local import CaptureServer, LambdaEnvironment, SandboxError
from posthog_lambda.local.emulator import cpu
from tests.helpers import built_layer
from tests.local import posthog_lambda_command

HANDLERS = """
import os, subprocess, time

def cpu_cgroup(text):
    return next(line.split(":", 2)[2] for line in text.splitlines() if "cpu" in line.split(":")[1].split(","))

def where(event, context):
    time.sleep(event.get("sleep", 0))
    child = subprocess.run(["cat", "/proc/self/cgroup"], capture_output=True, text=True, check=True).stdout
    return {"pid": os.getpid(), "own": cpu_cgroup(open("/proc/self/cgroup").read()), "child": cpu_cgroup(child)}

def spin(event, context):
    started, used = time.monotonic(), time.process_time()
    while time.monotonic() - started < event["seconds"]:
        pass
    return {"cpu_s": time.process_time() - used, "wall_s": time.monotonic() - started}

def escape(event, context):
    # A process that leaves the runtime's process group: killing the group misses it.
    return {"pid": subprocess.Popen(["sleep", "600"], start_new_session=True).pid}
"""


@pytest.fixture
def function(tmp_path: Path) -> Path:
    directory = tmp_path / "function"
    directory.mkdir()
    (directory / "handlers.py").write_text(HANDLERS)
    return directory


@pytest.fixture(scope="module")
def layer_dir() -> Path:
    return built_layer()


@pytest.fixture
def posthog() -> Iterator[CaptureServer]:
    with CaptureServer(api_key="phc_local") as server:
        yield server


def environment(function: Path, handler: str, **options: Any) -> LambdaEnvironment:
    options.setdefault("timeout_s", 30.0)
    return LambdaEnvironment(function, f"handlers.{handler}", cpu_share=True, **options)


def cgroup_name(env: LambdaEnvironment) -> str:
    """The environment's cgroup as /proc/<pid>/cgroup names it (relative to the hierarchy)."""
    assert env.cpu_cgroup is not None
    return "/" + str(env.cpu_cgroup.relative_to(cpu.CGROUP_ROOT))


def procs(env: LambdaEnvironment) -> set[int]:
    assert env.cpu_cgroup is not None
    return {int(pid) for pid in (env.cpu_cgroup / "cgroup.procs").read_text().split()}


def test_the_quota_is_lambdas_share_of_a_100_ms_period_one_vcpu_at_most() -> None:
    assert cpu.PERIOD_US == 100_000
    assert cpu.lambda_quota_us(128) == 7_236  # 128 / 1769 of a vCPU
    assert cpu.lambda_quota_us(1024) == 57_886
    assert cpu.lambda_quota_us(1769) == 100_000
    assert cpu.lambda_quota_us(10_240) == 100_000
    assert cpu.lambda_quota_us(1) == 1_000  # the kernel's smallest quota


@pytest.mark.parametrize(("memory_mb", "quota_us"), [(128, 7_236), (1769, 100_000)])
def test_the_runtime_the_extension_and_their_children_are_in_the_cgroup_with_the_share(
    function: Path, layer_dir: Path, posthog: CaptureServer, memory_mb: int, quota_us: int
) -> None:
    variables = {"POSTHOG_API_KEY": "phc_local", "POSTHOG_HOST": posthog.url, "POSTHOG_LAMBDA_FLUSH": "end"}
    with environment(function, "where", layer_dir=layer_dir, env=variables, memory_mb=memory_mb) as env:
        assert env.cpu_quota_us == quota_us
        assert env.cpu_cgroup is not None
        assert (env.cpu_cgroup / "cpu.cfs_quota_us").read_text().strip() == str(quota_us)
        assert (env.cpu_cgroup / "cpu.cfs_period_us").read_text().strip() == "100000"
        result = env.invoke({})
        assert result.status == "success", result.error
        pids = env.pids()
        assert set(pids) == {"runtime", "posthog-lambda"}
        assert set(pids.values()) <= procs(env)
        assert result.payload == {"pid": pids["runtime"], "own": cgroup_name(env), "child": cgroup_name(env)}


def test_a_cpu_bound_invocation_at_128_mb_is_throttled_to_about_its_share(function: Path) -> None:
    with environment(function, "spin", memory_mb=128) as env:
        assert env.init().error is None
        before = env.cpu_stat()
        result = env.invoke({"seconds": 0.5})
        after = env.cpu_stat()
    assert result.status == "success", result.error
    assert after["nr_throttled"] > before["nr_throttled"]
    # 7.2 % of a vCPU; a 0.5 s window can hold the quotas of six 100 ms periods (8.7 %).
    share = result.payload["cpu_s"] / result.payload["wall_s"]
    assert share < 0.2, f"the handler had {share:.0%} of a CPU"


def test_close_kills_what_left_the_process_groups_and_removes_the_cgroup(function: Path) -> None:
    with environment(function, "escape", memory_mb=1769) as env:
        result = env.invoke({})
        assert result.status == "success", result.error
        escaped = result.payload["pid"]
        assert escaped in procs(env)
        cgroup = env.cpu_cgroup
        pidfd = os.pidfd_open(escaped)
    try:
        readable, _, _ = select.select([pidfd], [], [], 0)
        assert readable, "a process of the sandbox outlived the environment"
    finally:
        os.close(pidfd)
    assert cgroup is not None
    assert not cgroup.exists()
    assert env.cpu_cgroup is None


def test_after_a_reset_the_next_init_runs_in_the_same_cgroup(function: Path) -> None:
    with environment(function, "where", memory_mb=1769, timeout_s=0.5) as env:
        cgroup = env.cpu_cgroup
        first = env.invoke({})
        assert first.status == "success", first.error
        assert env.invoke({"sleep": 5}).status == "timeout"
        second = env.invoke({})
        assert second.status == "success", second.error
        assert second.init is not None
        assert env.cpu_cgroup == cgroup
        assert second.payload["pid"] != first.payload["pid"]
        assert second.payload["own"] == cgroup_name(env)
        assert procs(env) == set(env.pids().values())


def test_snapstart_restores_run_in_the_cgroup_and_close_removes_it(function: Path) -> None:
    with environment(function, "where", memory_mb=1769, lifecycle="snap-start") as env:
        assert env.init().error is None
        restored = env.invoke({})
        assert restored.status == "success", restored.error
        assert restored.restore is not None
        assert restored.payload["own"] == cgroup_name(env)
        cgroup = env.cpu_cgroup
    assert cgroup is not None
    assert not cgroup.exists()


def test_without_the_cpu_controller_start_fails_saying_so(
    function: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cpu, "CGROUP_ROOT", tmp_path / "no-cgroup")
    env = environment(function, "where")
    with pytest.raises(SandboxError, match=r"cgroup v1 cpu controller mounted at .*no-cgroup"):
        env.start()
    assert env.cpu_cgroup is None
    env.close()


def test_a_directory_that_is_not_a_cgroup_hierarchy_fails_and_is_left_as_it_was(
    function: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "fake-cpu"
    fake.mkdir()
    (fake / "cpu.cfs_quota_us").write_text("-1\n")
    monkeypatch.setattr(cpu, "CGROUP_ROOT", fake)
    env = environment(function, "where")
    with pytest.raises(SandboxError, match="is not a cgroup hierarchy"):
        env.start()
    assert [p.name for p in fake.iterdir()] == ["cpu.cfs_quota_us"]
    env.close()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"memory_mb": 64}, r"memory_mb=64: with cpu_share, a whole number of MB from 128 to 10,240"),
        ({"memory_mb": 10_241}, r"memory_mb=10241"),
        ({"lifecycle": "lambda-managed-instances"}, r"not for lifecycle='lambda-managed-instances'"),
    ],
)
def test_cpu_share_refuses_what_lambda_does_not_have(function: Path, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        environment(function, "where", **options)
    with pytest.raises(ValueError, match="cpu_share='yes': True or False"):
        LambdaEnvironment(function, "handlers.where", cpu_share="yes")  # type: ignore[arg-type]


def test_the_command_line_gives_the_share_and_says_so(function: Path) -> None:
    done = posthog_lambda_command(
        "local", "--function", str(function), "--handler", "handlers.where", "--memory", "1769", "--cpu-share"
    )
    assert done.returncode == 0, done.stderr
    assert "CPU share: 1769 MB of 1,769 MB per vCPU = 100.0% of a vCPU (CFS quota 100000 us per 100000 us" in (
        done.stdout
    )
    assert '"own": "/posthog-lambda-' in done.stdout
    assert ": success (request " in done.stdout


def test_the_command_line_refuses_the_share_for_managed_instances(function: Path) -> None:
    done = posthog_lambda_command(
        "local",
        "--function",
        str(function),
        "--handler",
        "handlers.where",
        "--cpu-share",
        "--lifecycle",
        "lambda-managed-instances",
    )
    assert done.returncode == 2
    assert "--cpu-share is Lambda's 1,769 MB per vCPU" in done.stderr
