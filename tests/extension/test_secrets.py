"""The extension's API key from AWS Secrets Manager or SSM Parameter Store (moto standing in for
AWS), its rotation after a refusal, and that none of it delays registration."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities.parameters.constants import DEFAULT_PROVIDERS
from moto import mock_aws

from posthog_lambda.local.capture_server import AI_BATCH_PATH, BATCH_PATH, CaptureServer
from posthog_lambda_contract import frames as _frames
from posthog_lambda_extension import _log, _loop, _secrets
from posthog_lambda_extension._loop import Extension
from posthog_lambda_extension._secrets import KeyStore, key_from_secret
from posthog_lambda_extension._settings import Settings
from tests.extension import make_event
from tests.extension import start as start_payload
from tests.extension.test_process import ROOT, TIMEOUT, Run, end, events, start

KEY = "phc_local"
SECRET_NAME = "posthog/api-key"
PARAMETER_NAME = "/posthog/api-key"


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    _log.reset()
    DEFAULT_PROVIDERS.clear()  # powertools' providers hold a boto3 client and a cache per process
    yield
    DEFAULT_PROVIDERS.clear()


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name, value in {
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_CONFIG_FILE": "/nonexistent",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        yield


@pytest.fixture
def posthog() -> Iterator[CaptureServer]:
    with CaptureServer(api_key=KEY) as server:
        yield server


def create_secret(value: str) -> str:
    """The new secret's ARN."""
    arn: str = boto3.client("secretsmanager").create_secret(Name=SECRET_NAME, SecretString=value)["ARN"]
    return arn


def extension(tmp_path: Path, posthog: CaptureServer, **env: str) -> Extension:
    return Extension(
        Settings(
            {
                "POSTHOG_HOST": posthog.url,
                "POSTHOG_LAMBDA_FLUSH": "end",
                "POSTHOG_LAMBDA_SOCKET": str(tmp_path / "ph.sock"),
                "POSTHOG_LAMBDA_SPOOL_DIR": str(tmp_path / "spool"),
                **env,
            }
        )
    )


def handled(ext: Extension, request_id: str, *items: dict[str, Any]) -> None:
    """An invocation whose traced handler sent ``items`` and ended; in end mode, flushed after it."""
    ext.intake.frame(_frames.START, start_payload(request_id))
    ext.intake.frame(_frames.EVENTS, {"events": list(items)})
    ext.intake.frame(_frames.END, {"request_id": request_id, "trace_id": "t"})
    deadline_ms = int((time.time() + 30) * 1000)
    ext.invoke({"eventType": "INVOKE", "requestId": request_id, "deadlineMs": deadline_ms})


def read_key(ext: Extension) -> str | None:
    """Wait for the first read from the store (flushes wait only a second, imports can take more)."""
    assert ext.key_store is not None
    done, key = ext.key_store.wait(TIMEOUT)
    assert done
    return key


def delivered(posthog: CaptureServer) -> list[str]:
    return sorted(str(e.uuid) for e in posthog.unique_events())


def close(ext: Extension) -> None:
    if ext.sender is not None:
        ext.sender.close()


# -- where the key comes from -----------------------------------------------------------------


@pytest.mark.usefixtures("aws")
def test_key_from_a_plain_secret_by_arn(
    tmp_path: Path, posthog: CaptureServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_loop, "KEY_WAIT_S", TIMEOUT)  # a busy machine may take over a second to read
    ext = extension(tmp_path, posthog, POSTHOG_API_KEY_SECRET_ARN=create_secret(f"  {KEY}\n"))
    assert ext.sender is None  # nothing read before the extension runs
    items = [make_event(), make_event("$ai_trace")]
    handled(ext, "r1", *items)  # the flush waits for the key
    assert delivered(posthog) == sorted(e["uuid"] for e in items)
    assert ext.drops.totals() == {}
    close(ext)


@pytest.mark.usefixtures("aws")
@pytest.mark.parametrize("field", ["POSTHOG_API_KEY", "api_key"])
def test_key_from_a_json_secret_by_name(tmp_path: Path, posthog: CaptureServer, field: str) -> None:
    create_secret(json.dumps({"other": "phc_not_this", field: KEY}))
    ext = extension(tmp_path, posthog, POSTHOG_API_KEY_SECRET_ARN=SECRET_NAME)
    assert read_key(ext) == KEY
    item = make_event()
    handled(ext, "r1", item)
    assert delivered(posthog) == [item["uuid"]]
    close(ext)


@pytest.mark.usefixtures("aws")
def test_key_from_an_ssm_secure_string(tmp_path: Path, posthog: CaptureServer) -> None:
    boto3.client("ssm").put_parameter(Name=PARAMETER_NAME, Value=KEY, Type="SecureString")
    ext = extension(tmp_path, posthog, POSTHOG_API_KEY_SSM_PARAMETER=PARAMETER_NAME)
    assert read_key(ext) == KEY  # decrypted: moto returns the ciphertext otherwise
    item = make_event()
    handled(ext, "r1", item)
    assert delivered(posthog) == [item["uuid"]]
    close(ext)


@pytest.mark.usefixtures("aws")
def test_an_explicit_key_wins_then_the_secret_then_the_parameter(tmp_path: Path, posthog: CaptureServer) -> None:
    arn = create_secret("phc_from_the_secret")
    boto3.client("ssm").put_parameter(Name=PARAMETER_NAME, Value="phc_from_the_parameter", Type="SecureString")
    both = {"POSTHOG_API_KEY_SECRET_ARN": arn, "POSTHOG_API_KEY_SSM_PARAMETER": PARAMETER_NAME}

    ext = extension(tmp_path, posthog, POSTHOG_API_KEY=KEY, **both)
    assert ext.key_store is None
    item = make_event()
    handled(ext, "r1", item)
    assert delivered(posthog) == [item["uuid"]]
    assert [p.split("=")[0] for p in ext.settings.problems] == list(both)  # each ignored one is said
    close(ext)

    ext = extension(tmp_path, posthog, **both)
    assert read_key(ext) == "phc_from_the_secret"
    assert ext.settings.problems == [
        f"POSTHOG_API_KEY_SSM_PARAMETER={PARAMETER_NAME!r} is ignored: "
        "POSTHOG_API_KEY_SECRET_ARN is set and takes precedence"
    ]


def test_what_a_secret_may_hold() -> None:
    assert key_from_secret(" phc_a ") == "phc_a"
    assert key_from_secret(b"phc_a") == "phc_a"
    assert key_from_secret('{"api_key": "phc_b", "POSTHOG_API_KEY": "phc_a"}') == "phc_a"
    assert key_from_secret('{"POSTHOG_API_KEY": "", "api_key": "phc_b"}') == "phc_b"
    for bad in ("", "  ", '{"token": "phc_a"}', '{"api_key": 1}', "{not json", b"\xff"):
        with pytest.raises(_secrets.KeyUnavailable) as caught:
            key_from_secret(bad)
        assert "phc_a" not in str(caught.value)


def test_the_runtime_packages_join_the_end_of_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr("aws_lambda_powertools.utilities.parameters.get_parameter", lambda *a, **k: " phc_a ")
    store = KeyStore("POSTHOG_API_KEY_SSM_PARAMETER", "/x")
    monkeypatch.setattr(_secrets, "RUNTIME_PACKAGES", str(tmp_path / "absent"))
    assert store.read(force=False) == "phc_a"
    assert str(tmp_path / "absent") not in sys.path  # only where the runtime has them
    monkeypatch.setattr(_secrets, "RUNTIME_PACKAGES", str(tmp_path))
    store.read(force=False)
    store.read(force=False)
    assert sys.path[-1] == str(tmp_path)  # after the extension's own directory
    assert sys.path.count(str(tmp_path)) == 1


# -- when it cannot be read -------------------------------------------------------------------


@pytest.mark.usefixtures("aws")
def test_a_missing_secret_is_one_line_and_events_are_discarded_counted(
    tmp_path: Path, posthog: CaptureServer, capsys: pytest.CaptureFixture[str]
) -> None:
    arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:posthog-missing-AbCdEf"
    ext = extension(tmp_path, posthog, POSTHOG_API_KEY_SECRET_ARN=arn)
    ext.intake.frame(_frames.EVENTS, {"events": [make_event(), make_event()]})  # buffered while reading
    assert read_key(ext) is None
    handled(ext, "r1", make_event())  # the failure is seen here: what waited is discarded, counted
    handled(ext, "r2", make_event())  # and what arrives from now on
    ext.shutdown({"eventType": "SHUTDOWN", "deadlineMs": int(time.time() * 1000) + 2000})
    assert posthog.requests == []
    assert ext.drops.totals() == {"events_no_api_key": 4}
    lines = capsys.readouterr().out.splitlines()
    (said,) = [line for line in lines if "cannot read the PostHog API key" in line]
    assert f"the Secrets Manager secret {arn!r} (POSTHOG_API_KEY_SECRET_ARN)" in said
    assert "ResourceNotFoundException" in said
    assert "events from the function are discarded (counted)" in said
    assert lines[-1] == "[posthog-lambda] dropped during this environment's life: events_no_api_key=4"


@pytest.mark.usefixtures("aws")
def test_a_secret_without_the_key_field_never_logs_its_value(
    tmp_path: Path, posthog: CaptureServer, capsys: pytest.CaptureFixture[str]
) -> None:
    create_secret(json.dumps({"token": "phc_do_not_print_me"}))
    ext = extension(tmp_path, posthog, POSTHOG_API_KEY_SECRET_ARN=SECRET_NAME)
    assert read_key(ext) is None
    handled(ext, "r1", make_event())
    out = capsys.readouterr().out
    assert "has no POSTHOG_API_KEY or api_key field" in out
    assert "do_not_print_me" not in out
    assert posthog.requests == []
    assert ext.drops.totals() == {"events_no_api_key": 1}


# -- rotation ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("aws")
def test_a_refused_key_is_read_again_and_a_rotated_one_resends_the_batch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with CaptureServer(api_key="phc_key_b") as posthog:
        arn = create_secret("phc_key_a")
        ext = extension(tmp_path, posthog, POSTHOG_API_KEY_SECRET_ARN=arn)
        assert read_key(ext) == "phc_key_a"  # now in powertools' cache, which a re-read must bypass
        boto3.client("secretsmanager").put_secret_value(SecretId=arn, SecretString="phc_key_b")
        items = [make_event(), make_event("$exception")]
        handled(ext, "r1", *items)
        # The refused request (the $ai_* chunk) once more, with B, then the other endpoint's chunk.
        assert [(r.status, r.path) for r in posthog.requests] == [
            (401, AI_BATCH_PATH),
            (200, AI_BATCH_PATH),
            (200, BATCH_PATH),
        ]
        assert delivered(posthog) == sorted(e["uuid"] for e in items)
        assert posthog.duplicates == 0
        assert ext.sender is not None
        assert ext.sender.refused is None
        later = make_event()
        handled(ext, "r2", later)  # goes on with the new key
        assert later["uuid"] in delivered(posthog)
        close(ext)
    out = capsys.readouterr().out
    assert out.count("now holds phc_****ey_b: sending with it") == 1
    assert "phc_key_a" not in out
    assert "phc_key_b" not in out


@pytest.mark.usefixtures("aws")
def test_an_unchanged_key_after_a_refusal_stops_sending_as_before(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with CaptureServer(api_key="phc_key_b") as posthog:
        arn = create_secret("phc_key_a")
        ext = extension(tmp_path, posthog, POSTHOG_API_KEY_SECRET_ARN=arn)
        handled(ext, "r1", make_event(), make_event())
        read_key(ext)
        handled(ext, "r2", make_event())
    assert [r.status for r in posthog.requests] == [401]
    assert ext.drops.totals() == {"events_api_key_refused": 3}
    (line,) = [line for line in capsys.readouterr().out.splitlines() if "refused" in line]
    assert "it is unchanged in its store; check the Secrets Manager secret" in line
    assert "Nothing more will be sent" in line


@pytest.mark.usefixtures("aws")
def test_a_key_is_read_again_once_per_refusal_not_in_a_loop(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with CaptureServer(api_key="phc_key_b") as posthog:
        arn = create_secret("phc_key_a")
        ext = extension(tmp_path, posthog, POSTHOG_API_KEY_SECRET_ARN=arn)
        read_key(ext)
        boto3.client("secretsmanager").put_secret_value(SecretId=arn, SecretString="phc_key_c")
        assert ext.key_store is not None
        reads = 0
        refetch = ext.key_store.refetch

        def counted(timeout: float) -> str:
            nonlocal reads
            reads += 1
            # Rotated again behind the extension's back: reading once more would find a new key.
            key = refetch(timeout)
            boto3.client("secretsmanager").put_secret_value(SecretId=arn, SecretString=f"phc_key_{reads}x")
            return key

        ext.key_store.refetch = counted  # type: ignore[method-assign]
        handled(ext, "r1", make_event())
    assert reads == 1
    assert [r.status for r in posthog.requests] == [401, 401]  # with A, then with C; then it stops
    assert ext.drops.totals() == {"events_api_key_refused": 1}
    assert "phc_****ey_c" in capsys.readouterr().out


# -- start-up, as Lambda runs the extension ---------------------------------------------------

_HELD_IMPORT = """\
import os

# Held until the test opens the FIFO for writing and closes it, then fails as a missing package.
with open(os.environ["TEST_IMPORT_GATE"], "rb") as gate:
    gate.read()
raise ImportError("No module named 'aws_lambda_powertools'", name="aws_lambda_powertools")
"""


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Run]:
    with CaptureServer(api_key=KEY) as posthog:
        r = Run(tmp_path, posthog)
        try:
            yield r
        finally:
            r.close()


def test_it_registers_before_importing_powertools_and_survives_its_absence(run: Run, tmp_path: Path) -> None:
    """A stand-in aws_lambda_powertools whose import blocks: had the import been on the way to
    registration, the extension would never register."""
    packages = tmp_path / "packages"
    (packages / "aws_lambda_powertools").mkdir(parents=True)
    (packages / "aws_lambda_powertools" / "__init__.py").write_text(_HELD_IMPORT)
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:unreachable"
    run.start(
        POSTHOG_API_KEY="",
        POSTHOG_API_KEY_SECRET_ARN=arn,
        POSTHOG_LAMBDA_FLUSH="end",
        PYTHONPATH=os.pathsep.join([str(ROOT / "extension"), str(ROOT / "src"), str(packages)]),
        TEST_IMPORT_GATE=str(gate),
    )
    run.api.wait_next(1)  # registered, and waiting in next
    assert len(run.api.registrations) == 1
    writer: list[int] = []
    opener = threading.Thread(target=lambda: writer.append(os.open(gate, os.O_WRONLY)), daemon=True)
    opener.start()
    opener.join(TIMEOUT)  # returns once the import has started and waits on the gate
    try:
        assert writer, "the extension never imported aws_lambda_powertools"
    finally:
        if opener.is_alive():  # release the opener so that nothing is left blocked
            os.close(os.open(gate, os.O_RDONLY | os.O_NONBLOCK))
            opener.join(TIMEOUT)
        for fd in writer:
            os.close(fd)  # the import fails now
    run.api.invoke("req-1")
    run.send(start("req-1"), events(make_event(), make_event()), end("req-1"))
    run.api.wait_next(2)
    run.api.shutdown()
    code, output = run.finish()
    assert code == 0, output
    assert run.posthog.requests == []
    (said,) = [line for line in output.splitlines() if "cannot read the PostHog API key" in line]
    assert f"from the Secrets Manager secret {arn!r} (POSTHOG_API_KEY_SECRET_ARN)" in said
    assert "the layer must bundle aws-lambda-powertools" in said
    assert "events_no_api_key=2" in output
    assert all(line.startswith("[posthog-lambda] ") for line in output.splitlines())
