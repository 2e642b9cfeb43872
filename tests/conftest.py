from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from posthog_lambda.testing import capture_events, reset
from tests.helpers import LambdaContext

_OUR_ENV = ("POSTHOG_", "AWS_LAMBDA_", "AWS_REGION", "_X_AMZN_TRACE_ID")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts with no PostHog/Lambda environment and fresh settings."""
    for name in list(os.environ):
        if name.startswith(_OUR_ENV):
            monkeypatch.delenv(name)
    reset(cold_start=False)
    yield
    reset(cold_start=False)


@pytest.fixture
def events() -> Iterator[list[Any]]:
    with capture_events() as captured:
        yield captured


@pytest.fixture
def context() -> LambdaContext:
    return LambdaContext()


@pytest.fixture
def library_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """The posthog_lambda logger, normally silent, opened for the test and closed after."""
    import logging

    library = logging.getLogger("posthog_lambda")
    previous = library.level
    library.setLevel(logging.DEBUG)
    yield caplog
    library.setLevel(previous)
