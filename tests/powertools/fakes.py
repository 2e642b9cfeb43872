"""Stand-ins for what Powertools needs from outside this machine, and a realistic event.

aws-xray-sdk is not installed here (and reaches an X-Ray daemon): Tracer takes any
``BaseProvider``, so ``RecordingProvider`` records the subsegments, annotations and metadata
the Tracer decorator writes, which is what proves that it ran.
"""

from __future__ import annotations

import contextlib
import copy
import json
import types
from collections.abc import AsyncGenerator, Generator, Sequence
from typing import Any

from aws_lambda_powertools.tracing.base import BaseProvider, BaseSegment

from posthog_lambda import current_span


class RecordedSegment(BaseSegment):
    """One subsegment, with what was written on it and the PostHog trace it was opened in."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.annotations: dict[str, Any] = {}
        self.metadata: dict[tuple[str, str], Any] = {}
        self.exceptions: list[BaseException] = []
        self.closed = False
        # Which PostHog trace was current when the subsegment opened ("" outside any).
        self.posthog_trace_id = current_span().trace_id

    def close(self, end_time: int | None = None) -> None:
        self.closed = True

    def add_subsegment(self, subsegment: Any) -> None:
        pass

    def remove_subsegment(self, subsegment: Any) -> None:
        pass

    def put_annotation(self, key: str, value: Any) -> None:
        self.annotations[key] = value

    def put_metadata(self, key: str, value: Any, namespace: str = "default") -> None:
        self.metadata[(namespace, key)] = value

    def add_exception(self, exception: BaseException, stack: list[Any], remote: bool = False) -> None:
        self.exceptions.append(exception)


class RecordingProvider(BaseProvider):
    """A tracing provider that keeps every subsegment in memory."""

    def __init__(self) -> None:
        self.segments: list[RecordedSegment] = []

    @contextlib.contextmanager
    def in_subsegment(self, name: str = "", **kwargs: Any) -> Generator[RecordedSegment, None, None]:
        segment = RecordedSegment(name)
        self.segments.append(segment)
        try:
            yield segment
        finally:
            segment.close()

    @contextlib.asynccontextmanager
    async def in_subsegment_async(self, name: str = "", **kwargs: Any) -> AsyncGenerator[RecordedSegment, None]:
        with self.in_subsegment(name) as segment:
            yield segment

    def put_annotation(self, key: str, value: Any) -> None:
        pass

    def put_metadata(self, key: str, value: Any, namespace: str = "default") -> None:
        pass

    def patch(self, modules: Sequence[str]) -> None:
        pass

    def patch_all(self) -> None:
        pass

    def configure(self, **kwargs: Any) -> None:
        pass


def fake_xray_sdk(provider: RecordingProvider) -> dict[str, types.ModuleType]:
    """Modules named ``aws_xray_sdk`` and ``aws_xray_sdk.core`` whose recorder is ``provider``:
    what ``Tracer()`` imports when no provider is given."""
    package = types.ModuleType("aws_xray_sdk")
    core = types.ModuleType("aws_xray_sdk.core")
    enabled: list[bool] = []
    package.global_sdk_config = types.SimpleNamespace(set_sdk_enabled=enabled.append)  # type: ignore[attr-defined]
    package.core = core  # type: ignore[attr-defined]
    core.xray_recorder = provider  # type: ignore[attr-defined]
    core.patch = provider.patch  # type: ignore[attr-defined]
    core.patch_all = provider.patch_all  # type: ignore[attr-defined]
    return {"aws_xray_sdk": package, "aws_xray_sdk.core": core}


_API_GATEWAY_REST_EVENT: dict[str, Any] = {
    "resource": "/ask",
    "path": "/ask",
    "httpMethod": "POST",
    "headers": {
        "Accept": "application/json",
        "Authorization": "eyJraWQiOiJrMSIsImFsZyI6IlJTMjU2In0.eyJzdWIiOiJ1In0.c2ln",
        "Content-Type": "application/json",
        "Host": "abc123.execute-api.eu-west-1.amazonaws.com",
        "X-Session-Id": "conv-42",
        "X-Forwarded-For": "203.0.113.7",
    },
    "multiValueHeaders": {
        "Authorization": ["eyJraWQiOiJrMSIsImFsZyI6IlJTMjU2In0.eyJzdWIiOiJ1In0.c2ln"],
        "Content-Type": ["application/json"],
    },
    "queryStringParameters": None,
    "multiValueQueryStringParameters": None,
    "pathParameters": None,
    "stageVariables": None,
    "requestContext": {
        "accountId": "123456789012",
        "apiId": "abc123",
        "authorizer": {
            "claims": {
                "sub": "7d8ca528-4931-4254-9273-ea5ee853f271",
                "cognito:username": "ada",
                "email": "ada@example.com",
                "token_use": "id",
            }
        },
        "domainName": "abc123.execute-api.eu-west-1.amazonaws.com",
        "httpMethod": "POST",
        "identity": {"sourceIp": "203.0.113.7", "userAgent": "curl/8.5.0"},
        "path": "/prod/ask",
        "protocol": "HTTP/1.1",
        "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
        "requestTimeEpoch": 1795000000000,
        "resourceId": "1a2b3c",
        "resourcePath": "/ask",
        "stage": "prod",
    },
    "body": json.dumps({"question": "What is a Lambda layer?", "user": "u-body-1"}),
    "isBase64Encoded": False,
}

COGNITO_SUB = "7d8ca528-4931-4254-9273-ea5ee853f271"


def api_gateway_event(**changes: Any) -> dict[str, Any]:
    """A fresh API Gateway REST (proxy integration) event, with a Cognito user pool authorizer."""
    event = copy.deepcopy(_API_GATEWAY_REST_EVENT)
    event.update(changes)
    return event
