"""The direct fallback sink: posthog-python's real Client, against a loopback capture server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from posthog_lambda import configure, generation, posthog_traced, span
from posthog_lambda._posthog_sink import PostHogSink
from posthog_lambda._sinks import MemorySink
from tests.helpers import CaptureServer

KEY = "phc_test_project_key"


@pytest.fixture
def capture_server() -> Iterator[CaptureServer]:
    server = CaptureServer()
    yield server
    server.close()


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
    ai = capture_server.events("/i/v0/ai/batch/")
    plain = capture_server.events("/batch/")
    assert sorted(e["event"] for e in ai) == ["$ai_generation", "$ai_span", "$ai_trace"]
    assert [e["event"] for e in plain] == ["$exception"]
    assert all(r["body"]["api_key"] == KEY for r in capture_server.requests)
    received = {e["uuid"]: e for e in ai + plain}
    assert set(received) == {e["uuid"] for e in memory.events}
    for event in memory.events:
        got = received[event["uuid"]]
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
    assert len(capture_server.events("/i/v0/ai/batch/")) == 2
    # Said once, not per invocation.
    records = library_logs.records
    warnings = [r for r in records if r.levelname == "WARNING" and "no posthog-lambda extension" in r.message]
    assert len(warnings) == 1
    from posthog_lambda._sinks import current_sink

    sink = current_sink()
    assert isinstance(sink, PostHogSink)
    assert KEY not in repr(sink)
