"""End-to-end fixtures: the real layer (as layer/build.py lays it out) with the real extension,
in the local Lambda environment, sending to a local PostHog capture server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from posthog_lambda.local import CaptureServer, LambdaEnvironment
from tests.helpers import built_layer

ROOT = Path(__file__).resolve().parents[2]
KEY = "phc_local"


@pytest.fixture(scope="session")
def layer_dir() -> Path:
    return built_layer()


@pytest.fixture
def posthog() -> Iterator[CaptureServer]:
    with CaptureServer(api_key=KEY) as server:
        yield server


class Deployment:
    """A function with the layer attached, configured to send to the local capture server."""

    def __init__(self, root: Path, layer: Path, posthog: CaptureServer) -> None:
        self.root = root
        self.layer = layer
        self.posthog = posthog
        self.function = root / "function"
        self.function.mkdir()
        self.socket = root / "posthog.sock"
        self.spool = root / "spool"

    def code(self, source: str) -> None:
        (self.function / "app.py").write_text(source)

    def environment(
        self,
        flush: str = "end",
        timeout_s: float = 5.0,
        telemetry_api: str = "on",
        behaviour: str = "lambda",
        **env: str,
    ) -> LambdaEnvironment:
        variables = {
            "POSTHOG_LAMBDA_FLUSH": flush,
            "POSTHOG_LAMBDA_SOCKET": str(self.socket),
            "POSTHOG_LAMBDA_SPOOL_DIR": str(self.spool),
            **env,
        }
        return self._environment(
            variables,
            timeout_s=timeout_s,
            telemetry_api=telemetry_api,
            behaviour=behaviour,
            share=[self.root],  # the socket and spool paths above, which tests also use
        )

    def managed_instances(self, concurrency: int = 4, timeout_s: float = 5.0, **env: str) -> LambdaEnvironment:
        """On Lambda Managed Instances, with the product's defaults: the socket and spool in the
        environment's own /tmp (its processes are not root there: a test's directory is closed
        to them)."""
        return self._environment(
            env, timeout_s=timeout_s, lifecycle="lambda-managed-instances", max_concurrency=concurrency
        )

    def _environment(self, env: dict[str, str], **options: Any) -> LambdaEnvironment:
        variables = {"POSTHOG_API_KEY": KEY, "POSTHOG_HOST": self.posthog.url, **env}
        return LambdaEnvironment(self.function, "app.handler", layer_dir=self.layer, env=variables, **options)


@pytest.fixture
def deployment(tmp_path: Path, layer_dir: Path, posthog: CaptureServer) -> Deployment:
    return Deployment(tmp_path, layer_dir, posthog)
