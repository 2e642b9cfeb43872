"""from_event: distinct_id / session_id read from the event with a JMESPath expression,
evaluated by Powertools' jmespath_utils."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from typing import Any

import pytest
from aws_lambda_powertools.utilities.jmespath_utils import PowertoolsFunctions, envelopes
from jmespath.functions import signature  # type: ignore[import-untyped]

from posthog_lambda import dropped_counts, posthog_traced
from posthog_lambda.powertools import EventValue, from_event
from tests.helpers import LambdaContext, one
from tests.powertools.fakes import COGNITO_SUB, api_gateway_event

SRC = os.path.join(os.path.dirname(__file__), "..", "..", "src")


def drops() -> int:
    return dropped_counts().get("invalid_event_id", 0)


def run_traced(event: Any, events: list[Any], **options: Any) -> dict[str, Any]:
    """Invoke a traced handler with ``event``; its one $ai_trace event."""

    @posthog_traced(**options)
    def handler(event: Any, ctx: Any) -> str:
        return "ok"

    assert handler(event, LambdaContext()) == "ok"
    trace: dict[str, Any] = one(events, "$ai_trace")
    return trace


def test_the_cognito_sub_of_an_api_gateway_request_is_the_distinct_id(events: list[Any]) -> None:
    trace = run_traced(api_gateway_event(), events, distinct_id=from_event("requestContext.authorizer.claims.sub"))

    assert trace["distinct_id"] == COGNITO_SUB
    assert "$process_person_profile" not in trace["properties"]


def test_a_missing_path_gives_an_anonymous_trace(events: list[Any]) -> None:
    unauthenticated = api_gateway_event()
    del unauthenticated["requestContext"]["authorizer"]
    before = drops()

    trace = run_traced(unauthenticated, events, distinct_id=from_event("requestContext.authorizer.claims.sub"))

    trace_id = trace["properties"]["$ai_trace_id"]
    assert trace["distinct_id"] == trace_id
    assert trace["properties"]["$process_person_profile"] is False
    assert drops() == before  # missing is normal, not a loss


def test_envelopes_and_powertools_functions_work(events: list[Any]) -> None:
    trace = run_traced(
        api_gateway_event(),
        events,
        distinct_id=from_event(f"{envelopes.API_GATEWAY_REST}.user"),  # powertools_json(body).user
        session_id=from_event('headers."X-Session-Id"'),
    )

    assert trace["distinct_id"] == "u-body-1"
    assert trace["properties"]["$ai_session_id"] == "conv-42"


def test_a_base64_body(events: list[Any]) -> None:
    encoded = base64.b64encode(json.dumps({"user": "u-b64"}).encode()).decode()
    event = api_gateway_event(body=encoded, isBase64Encoded=True)

    trace = run_traced(event, events, distinct_id=from_event("powertools_json(powertools_base64(body)).user"))

    assert trace["distinct_id"] == "u-b64"


def test_no_body_is_a_missing_value(events: list[Any]) -> None:
    before = drops()

    trace = run_traced(api_gateway_event(body=None), events, distinct_id=from_event("powertools_json(body).user"))

    assert trace["properties"]["$process_person_profile"] is False
    assert drops() == before


def test_a_body_that_is_not_json_is_counted_and_the_trace_goes_on(events: list[Any]) -> None:
    before = drops()

    trace = run_traced(
        api_gateway_event(body="question=hi"), events, distinct_id=from_event("powertools_json(body).user")
    )

    assert trace["properties"]["$process_person_profile"] is False
    assert trace["properties"]["$ai_output_state"] == "ok"
    assert drops() == before + 1


def test_what_the_path_finds_becomes_a_string_or_nothing(library_logs: pytest.LogCaptureFixture) -> None:
    event = {"user": {"id": 42, "ratio": 0.5, "name": "ada", "roles": ["admin"], "admin": True, "empty": ""}}
    before = drops()

    assert from_event("user.id")(event, None) == "42"
    assert from_event("user.ratio")(event, None) == "0.5"
    assert from_event("user.name")(event, None) == "ada"
    assert from_event("user.empty")(event, None) is None
    assert drops() == before
    # An object, a list or a boolean is not an id.
    assert from_event("user")(event, None) is None
    assert from_event("user.roles")(event, None) is None
    assert from_event("user.admin")(event, None) is None
    assert drops() == before + 3
    assert "from_event('user.roles') found a list, not a string" in library_logs.text


def test_the_event_is_never_logged_when_it_cannot_be_read(library_logs: pytest.LogCaptureFixture) -> None:
    event = {"body": "not json", "password": "hunter2"}

    assert from_event("powertools_json(body).user")(event, None) is None

    assert "from_event('powertools_json(body).user') could not read the event: JSONDecodeError" in library_logs.text
    assert "hunter2" not in library_logs.text


def test_bad_expressions_fail_when_decorating() -> None:
    with pytest.raises(ValueError, match=r"from_event\('requestContext\.'\) is not a valid JMESPath expression"):
        from_event("requestContext.")
    with pytest.raises(ValueError, match="is not a valid JMESPath expression"):
        from_event("")
    with pytest.raises(ValueError, match=r"calls unknown JMESPath function\(s\): powertools_jsn"):
        from_event("powertools_jsn(body).user")
    with pytest.raises(TypeError, match="takes a JMESPath expression string"):
        from_event(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="jmespath_options"):
        from_event("a", jmespath_options=["custom_functions"])  # type: ignore[arg-type]


def test_custom_jmespath_options_replace_powertools_functions() -> None:
    class Lower(PowertoolsFunctions):
        @signature({"types": ["string"]})  # type: ignore[untyped-decorator]
        def _func_lower(self, value: str) -> str:
            return value.lower()

    source = from_event("lower(user)", jmespath_options={"custom_functions": Lower()})

    assert source({"user": "ADA"}, None) == "ada"
    with pytest.raises(ValueError, match=r"unknown JMESPath function\(s\): lower"):
        from_event("lower(user)")
    with pytest.raises(ValueError, match=r"unknown JMESPath function\(s\): powertools_json"):
        from_event("powertools_json(body)", jmespath_options={})


def test_it_is_an_id_source_with_a_readable_repr() -> None:
    source = from_event("requestContext.authorizer.claims.sub")

    assert isinstance(source, EventValue)
    assert repr(source) == "from_event('requestContext.authorizer.claims.sub')"
    assert source(api_gateway_event(), LambdaContext()) == COGNITO_SUB


def _fresh(code: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": SRC, "PATH": os.environ["PATH"]},
    )
    return out.stdout.strip().splitlines()


def test_imports_are_lazy() -> None:
    code = (
        "import sys\n"
        "def loaded(): return ['jmespath' in sys.modules, 'aws_lambda_powertools' in sys.modules]\n"
        "import posthog_lambda.powertools as pt\n"
        "print(loaded())\n"
        "source = pt.from_event('requestContext.authorizer.claims.sub')\n"
        "print(loaded())\n"
        "print(source({'requestContext': {'authorizer': {'claims': {'sub': 'u1'}}}}, None))\n"
        "print(loaded(), 'aws_lambda_powertools.utilities.jmespath_utils' in sys.modules)\n"
    )
    assert _fresh(code) == ["[False, False]", "[True, False]", "u1", "[True, True] True"]


def test_without_powertools_the_error_says_what_to_install() -> None:
    code = (
        "import sys\n"
        "sys.modules['jmespath'] = None\n"
        "import posthog_lambda.powertools as pt\n"
        "try:\n"
        "    pt.from_event('a.b')\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    assert _fresh(code) == [
        "posthog_lambda.powertools.from_event needs aws-lambda-powertools: pip install aws-lambda-powertools"
    ]
