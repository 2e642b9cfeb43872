"""Fixtures every extension test gets: a fresh log (its said-once memory forgotten), and a local
PostHog for those that send."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from posthog_lambda.local import CaptureServer
from posthog_lambda_extension import _log


@pytest.fixture(autouse=True)
def _fresh_log() -> None:
    _log.reset()


@pytest.fixture
def posthog() -> Iterator[CaptureServer]:
    with CaptureServer(api_key="phc_local") as server:
        yield server
