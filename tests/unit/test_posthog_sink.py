"""The direct fallback sink: posthog-python's real Client, against a loopback capture server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from posthog_lambda import configure, generation, posthog_traced, span
from posthog_lambda._posthog_sink import PostHogSink
from posthog_lambda._sinks import MemorySink
from posthog_lambda.local import CaptureServer

KEY = "phc_test_project_key"


@pytest.fixture
def capture_server() -> Iterator[CaptureServer]:
    with CaptureServer(api_key=KEY) as server:
        yield server


def received(server: CaptureServer, path: str) -> list[dict[str, Any]]:
    return [e.event for e in server.events if e.path == path]


class Tee:
    def __init__(self, *sinks: Any) -> None:
        self.sinks = sinks

    def send(self, events: Any) -> None:
        for sink in self.sinks:
            sink.send(events)


def test_events_reach_posthog_endpoints_before_the_handler_returns(capture_server: CaptureServer) -> None:
    memory = MemorySink()
    configure(sink=Tee(memory, PostHogSink(KEY, capture_server.url)))

    @posthog_traced(distinct_id="user-1")
    def handler(event: Any, context: Any) -> str:
        with span("retrieve"), generation("answer", model="gpt-4o") as g:
            g.update(input_tokens=3)
        raise KeyError("missing")

    with pytest.raises(KeyError):
        handler({"q": "hi"}, None)

    # Already delivered when the handler returned: no background flush is relied on.
    ai = received(capture_server, "/i/v0/ai/batch/")
    plain = received(capture_server, "/batch/")
    assert sorted(e["event"] for e in ai) == ["$ai_generation", "$ai_span", "$ai_trace"]
    assert [e["event"] for e in plain] == ["$exception"]
    # The server checks the key (401 otherwise) and PostHog's other rules (400, 413).
    assert [r.status for r in capture_server.requests] == [200, 200]
    by_uuid = {e["uuid"]: e for e in ai + plain}
    assert set(by_uuid) == {e["uuid"] for e in memory.events}
    for event in memory.events:
        got = by_uuid[event["uuid"]]
        assert got["distinct_id"] == "user-1"
        assert got["timestamp"][:19] == event["timestamp"][:19]
        for key, value in event["properties"].items():
            assert got["properties"][key] == value


def test_api_key_selects_the_posthog_sink_which_is_reused(
    capture_server: CaptureServer, monkeypatch: pytest.MonkeyPatch, library_logs: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("POSTHOG_API_KEY", KEY)
    monkeypatch.setenv("POSTHOG_HOST", capture_server.url)

    @posthog_traced
    def handler(event: Any, context: Any) -> None:
        return None

    handler({}, None)
    handler({}, None)
    assert len(received(capture_server, "/i/v0/ai/batch/")) == 2
    # Said once, not per invocation.
    records = library_logs.records
    warnings = [r for r in records if r.levelname == "WARNING" and "no posthog-lambda extension" in r.message]
    assert len(warnings) == 1
    from posthog_lambda._destination import exporter

    chosen = exporter()
    assert isinstance(getattr(chosen, "sink", None), PostHogSink)
    assert KEY not in repr(chosen)
