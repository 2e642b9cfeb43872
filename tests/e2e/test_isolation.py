"""Each local environment has a /tmp of its own, as each Lambda sandbox does: two functions with
the layer's default socket path run side by side and each extension gets only its own events."""

from __future__ import annotations

import contextlib
import textwrap
from pathlib import Path

from posthog_lambda.local import CaptureServer, LambdaEnvironment
from tests.e2e.conftest import KEY

APP = textwrap.dedent(
    """
    import os
    from posthog_lambda import posthog_traced, span

    @posthog_traced(distinct_id=lambda event, context: os.environ["WHO"])
    def handler(event, context):
        with span("work"):
            pass
        with open("/tmp/mine.txt", "w") as f:
            f.write(os.environ["WHO"])
        return sorted(os.listdir("/tmp"))
    """
)


def test_two_environments_with_default_paths_never_meet(tmp_path: Path, layer_dir: Path) -> None:
    servers: dict[str, CaptureServer] = {}
    environments: dict[str, LambdaEnvironment] = {}
    with contextlib.ExitStack() as stack:
        for who in ("alpha", "beta"):
            function = tmp_path / who
            function.mkdir()
            (function / "app.py").write_text(APP)
            servers[who] = stack.enter_context(CaptureServer(api_key=KEY))
            # No POSTHOG_LAMBDA_SOCKET: both extensions listen on /tmp/posthog-lambda.sock.
            env = {"POSTHOG_API_KEY": KEY, "POSTHOG_HOST": servers[who].url, "WHO": who, "POSTHOG_LAMBDA_FLUSH": "end"}
            environments[who] = stack.enter_context(
                LambdaEnvironment(function, "app.handler", layer_dir=layer_dir, env=env)
            )
        for _ in range(3):
            for who, env in environments.items():
                result = env.invoke({})
                assert result.status == "success", result.error
                assert "posthog-lambda.sock" in result.payload
                assert (env.tmp_dir / "mine.txt").read_text() == who
        for env in environments.values():
            env.shutdown()
        for who, server in servers.items():
            # Each invocation: its $ai_trace and span (and Lambda's figures as $ai_metric events).
            traced = server.wait_for_events(6, timeout=10, predicate=lambda e: e.name != "$ai_metric")
            assert sorted(e.name for e in traced) == ["$ai_span"] * 3 + ["$ai_trace"] * 3
            assert {e.event["distinct_id"] for e in server.events} == {who}
    assert not Path("/tmp/mine.txt").exists()
