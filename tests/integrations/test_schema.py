"""The schema PostHog's SDKs send now: ``$ai_lib`` and its version on every event the product
makes, the wrappers' own values passed through, where the token counts came from, and the set of
``$ai_*`` properties the installed posthog-python sends, pinned so that an upgrade adding one is
noticed."""

from __future__ import annotations

import logging
import re
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

import posthog_lambda
from posthog_lambda import capture_feedback, capture_metric, generation, posthog_client, posthog_traced, span
from posthog_lambda_contract import events as contract_events
from tests.helpers import LambdaContext

ROOT = Path(__file__).resolve().parents[2]

POSTHOG_AI_PROPERTIES = frozenset(
    {
        "$ai_agent_handoffs",
        "$ai_agent_output_type",
        "$ai_agent_tools",
        "$ai_base_url",
        "$ai_cache_creation_1h_input_tokens",
        "$ai_cache_creation_5m_input_tokens",
        "$ai_cache_creation_input_tokens",
        "$ai_cache_read_input_tokens",
        "$ai_cache_reporting_exclusive",
        "$ai_custom_data",
        "$ai_embedding",
        "$ai_error",
        "$ai_error_type",
        "$ai_framework",
        "$ai_generation",
        "$ai_group_id",
        "$ai_guardrail_triggered",
        "$ai_handoff_from_agent",
        "$ai_handoff_to_agent",
        "$ai_http_status",
        "$ai_input",
        "$ai_input_state",
        "$ai_input_tokens",
        "$ai_instructions",
        "$ai_is_error",
        "$ai_latency",
        "$ai_lib",
        "$ai_lib_version",
        "$ai_mcp_data",
        "$ai_mcp_server",
        "$ai_mcp_tools",
        "$ai_model",
        "$ai_model_parameters",
        "$ai_output_choices",
        "$ai_output_state",
        "$ai_output_tokens",
        "$ai_parent_id",
        "$ai_provider",
        "$ai_reasoning_tokens",
        "$ai_response_id",
        "$ai_service_tier",
        "$ai_session_id",
        "$ai_span",
        "$ai_span_data",
        "$ai_span_id",
        "$ai_span_name",
        "$ai_span_type",
        "$ai_stop_reason",
        "$ai_tokens_source",
        "$ai_tools",
        "$ai_total_cost_usd",
        "$ai_total_tokens",
        "$ai_trace",
        "$ai_trace_id",
        "$ai_trace_metadata",
        "$ai_trace_name",
        "$ai_usage",
        "$ai_web_search_count",
    }
)
"""Every ``$ai_*`` name in posthog-python 7.91.1's ``posthog/ai/`` (property and event names)."""


def test_the_installed_posthog_python_sends_the_pinned_properties() -> None:
    assert metadata.version("posthog") == "7.91.1"
    package = Path(metadata.distribution("posthog").locate_file("posthog/ai"))
    found = set()
    for path in package.rglob("*.py"):
        if "test" not in path.relative_to(package).parts[0]:
            found |= set(re.findall(r'"(\$ai_[a-z0-9_]+)"', path.read_text(encoding="utf-8")))
    # An upgrade that adds one fails here: decide whether posthog-lambda sets it, passes it, or both.
    assert found == POSTHOG_AI_PROPERTIES, (
        f"new: {sorted(found - POSTHOG_AI_PROPERTIES)}, gone: {sorted(POSTHOG_AI_PROPERTIES - found)}"
    )


def test_the_version_is_the_packages() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert posthog_lambda.__version__ == contract_events.VERSION == project["version"]


def test_every_event_the_product_makes_names_its_library(events: list[Any], context: LambdaContext) -> None:
    @posthog_traced(name="handler")
    def handler(event: Any, context: Any) -> None:
        with span("step"), generation("answer", model="m") as answer:
            answer.update(input_tokens=3, output_tokens=1)
            capture_metric(posthog_lambda.current_span().trace_id, "quality", 1.0)
            capture_feedback(posthog_lambda.current_span().trace_id, "good")
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        handler({}, context)
    kinds = {e["event"] for e in events}
    assert {"$ai_trace", "$ai_span", "$ai_generation", "$ai_metric", "$ai_feedback"} <= kinds
    for event in events:
        assert (event["properties"]["$ai_lib"], event["properties"]["$ai_lib_version"]) == (
            "posthog-lambda",
            contract_events.VERSION,
        ), event["event"]
    (answer,) = [e for e in events if e["event"] == "$ai_generation"]
    assert answer["properties"]["$ai_tokens_source"] == "passthrough"  # counts the user gave


def test_a_wrappers_own_values_pass_through_unchanged(events: list[Any]) -> None:
    own = {"$ai_lib": "posthog-ai", "$ai_lib_version": "7.91.1", "$ai_tokens_source": "sdk", "$ai_framework": "x"}
    posthog_client().capture(event="$ai_generation", distinct_id="u1", properties={"$ai_model": "m", **own})
    (event,) = events
    assert {k: event["properties"][k] for k in own} == own


def test_a_wrapper_pointed_at_posthogs_ai_gateway_is_warned_about_once(
    events: list[Any], library_logs: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import posthog.ai.gateway  # noqa: F401  (loaded with the wrappers, whose host list it holds)

    from posthog_lambda import _ai_wrappers

    monkeypatch.setattr(_ai_wrappers, "_gateway_warned", False)
    for _ in range(3):
        posthog_client().capture(
            event="$ai_generation", distinct_id="u1", properties={"$ai_base_url": "https://gateway.us.posthog.com/v1"}
        )
    posthog_client().capture(
        event="$ai_generation", distinct_id="u1", properties={"$ai_base_url": "https://api.openai.com"}
    )
    warnings = [r for r in library_logs.records if r.levelno == logging.WARNING and "AI gateway" in r.getMessage()]
    assert len(warnings) == 1
    assert "counted twice" in warnings[0].getMessage()
    assert len(events) == 4  # warned, never dropped
