"""The trace viewer: its model of what the capture server received (the trace view's rules, the
same as the text tree's), the escaping of the JSON in its page, and the server's live page and
the endpoint it waits on. The page itself, in Chromium: tests/browser."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from posthog_lambda.local import CaptureServer
from posthog_lambda.local.capture_server import AI_BATCH_PATH, BATCH_PATH, build_model, render_trace_tree, write_html
from posthog_lambda.local.capture_server.viewer import EVENTS_PATH, page_html, script_json
from tests.helpers import capture_command

KEY = "phc_local"
XSS = '</script><script>alert(1)</script><img src=x onerror="alert(2)"> & \u2028\u2029 <!-- --!>'


def ai(name: str, second: float, distinct_id: str = "ada", **props: Any) -> dict[str, Any]:
    return {
        "event": name,
        "distinct_id": distinct_id,
        "properties": props,
        "timestamp": f"2025-01-01T00:00:{second:06.3f}+00:00",
        "uuid": str(uuid.uuid4()),
    }


def invocation(trace: str = "t1", **root: Any) -> list[dict[str, Any]]:
    """An invocation as the library and the extension send it: two spans, a generation, the trace."""
    common = {"$ai_trace_id": trace, "$ai_session_id": "c-1", "lambda_request_id": f"req-{trace}"}
    messages = [{"role": "system", "content": "Answer from these notes"}, {"role": "user", "content": "hi?"}]
    return [
        ai("$ai_span", 1.1, **common, **{
            "$ai_span_id": "s1", "$ai_parent_id": trace, "$ai_span_name": "retrieve", "$ai_latency": 0.1,
            "$ai_input_state": {"q": "hi?"}, "$ai_output_state": ["doc"],
        }),
        ai("$ai_span", 1.15, **common, **{"$ai_span_id": "s2", "$ai_parent_id": "s1", "$ai_span_name": "inner",
                                         "$ai_latency": 0.02}),
        ai("$ai_generation", 1.6, **common, **{
            "$ai_span_id": "g1", "$ai_generation_id": "g1", "$ai_parent_id": trace, "$ai_span_name": "answer",
            "$ai_latency": 0.5, "$ai_model": "gpt-4o-mini", "$ai_provider": "openai", "$ai_input": messages,
            "$ai_output_choices": [{"role": "assistant", "content": "hello"}], "$ai_input_tokens": 36,
            "$ai_output_tokens": 29, "$ai_total_cost_usd": 0.0000228, "$ai_time_to_first_token": 0.12,
        }),
        ai("$ai_trace", 1.7, **common, **{
            "$ai_span_name": "ask", "$ai_latency": 0.7, "$ai_input_state": {"question": "hi?"},
            "lambda_cold_start": True, "lambda_billed_duration_ms": 33, "lambda_memory_mb": 128, **root,
        }),
    ]  # fmt: skip


def nodes(tree: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield tree
    for child in tree["children"]:
        yield from nodes(child)


def by_name(trace: dict[str, Any], name: str) -> dict[str, Any]:
    found = [node for top in [trace["tree"], *trace["orphans"], *trace["looping"]] for node in nodes(top)]
    (node,) = [node for node in found if node["name"] == name]
    return node


# -- the model -------------------------------------------------------------------------------


def test_an_invocation_becomes_a_trace_with_its_tree_times_and_figures() -> None:
    model = build_model(invocation(), version=7)
    assert (model["format"], model["version"], model["event_count"]) == (1, 7, 4)
    (trace,) = model["traces"]
    assert (trace["id"], trace["name"], trace["has_trace_event"], trace["failed"]) == ("t1", "ask", True, False)
    assert (trace["distinct_id"], trace["session_id"], trace["cold_start"]) == ("ada", "c-1", True)
    assert trace["duration_ms"] == pytest.approx(700)
    # The trace has no tokens of its own: the sum of its children's, and it says so.
    assert (trace["input_tokens"], trace["output_tokens"], trace["cost_usd"]) == (36, 29, 0.0000228)
    assert trace["summed"] == ["cost", "input_tokens", "output_tokens"]
    assert trace["window"] == {"start_ms": pytest.approx(1735689601000), "end_ms": pytest.approx(1735689601700)}
    assert trace["started_at"] == "2025-01-01T00:00:01+00:00"
    root = trace["tree"]
    assert [(n["kind"], n["name"]) for n in nodes(root)] == [
        ("trace", "ask"), ("span", "retrieve"), ("span", "inner"), ("generation", "answer"),
    ]  # fmt: skip
    assert len({n["uid"] for n in nodes(root)}) == 4
    answer = by_name(trace, "answer")
    assert answer["end_ms"] - answer["start_ms"] == pytest.approx(500)
    assert (answer["model"], answer["provider"], answer["ttft_ms"]) == ("gpt-4o-mini", "openai", pytest.approx(120))
    assert (answer["input_tokens"], answer["output_tokens"], answer["summed"]) == (36, 29, [])
    assert answer["input"] == {"messages": [
        {"role": "system", "text": "Answer from these notes", "json": None},
        {"role": "user", "text": "hi?", "json": None},
    ]}  # fmt: skip
    assert answer["output"] == {"messages": [{"role": "assistant", "text": "hello", "json": None}]}
    assert json.loads(by_name(trace, "retrieve")["output"]["json"]) == ["doc"]
    # Lambda's figures are the invocation's root's; every node says which root it ran in.
    assert root["invocation_root"] is True
    assert root["lambda"] == {
        "lambda_request_id": "req-t1", "lambda_cold_start": True, "lambda_billed_duration_ms": 33,
        "lambda_memory_mb": 128,
    }  # fmt: skip
    assert answer["lambda"] is None
    assert {n["invocation"] for n in nodes(root)} == {root["uid"]}
    assert '"$ai_input"' not in (answer["properties"] or "")  # shown apart, not twice
    assert trace["orphans"] == trace["looping"] == trace["events"] == []


def test_a_timed_out_invocation_is_a_failed_trace_with_its_cut_short_generation() -> None:
    error = "Lambda status timeout: the invocation did not finish within its 3 s timeout"
    events = invocation(**{"$ai_is_error": True, "$ai_error": error, "lambda_status": "timeout"})
    generation = events[2]["properties"]
    del generation["$ai_output_choices"], generation["$ai_output_tokens"]
    generation.update({"$ai_is_error": True, "$ai_error": f"did not end: {error}", "lambda_status": "timeout"})
    (trace,) = build_model(events)["traces"]
    assert (trace["failed"], trace["status"], trace["error"]) == (True, "timeout", error)
    assert (trace["error_count"], trace["cut_short_count"]) == (2, 1)
    answer = by_name(trace, "answer")
    assert (answer["cut_short"], answer["is_error"], answer["output"]) == (True, True, None)
    assert answer["error"] == f"did not end: {error}"
    # The root carries Lambda's status too, but it is the invocation that failed, not cut short.
    assert (trace["tree"]["cut_short"], trace["tree"]["is_error"]) == (False, True)
    assert by_name(trace, "retrieve")["cut_short"] is False


def test_a_handler_that_raised_is_failed_without_a_lambda_status() -> None:
    events = invocation(**{"$ai_is_error": True, "$ai_error": "ValueError: the question is empty"})[3:]
    events.append(ai("$exception", 1.7, **{"$ai_trace_id": "t1", "$exception_list": [{"type": "ValueError",
                                                                                     "value": "empty"}]}))  # fmt: skip
    (trace,) = build_model(events)["traces"]
    assert (trace["failed"], trace["status"], trace["error"]) == (True, None, "ValueError: the question is empty")
    (exception,) = trace["events"]
    assert exception["summary"] == "$exception ValueError: empty"
    assert json.loads(exception["properties"])["$exception_list"][0]["type"] == "ValueError"


def test_what_posthog_would_not_place_in_the_tree_is_listed_not_hidden() -> None:
    events = [
        *invocation(),
        ai("$ai_span", 2, **{"$ai_trace_id": "t1", "$ai_span_id": "lost", "$ai_parent_id": "gone",
                             "$ai_span_name": "lost"}),
        ai("$ai_span", 2.1, **{"$ai_trace_id": "t1", "$ai_span_id": "under", "$ai_parent_id": "lost",
                               "$ai_span_name": "under lost"}),
        ai("$ai_span", 3, **{"$ai_trace_id": "t1", "$ai_span_id": "a", "$ai_parent_id": "b", "$ai_span_name": "A"}),
        ai("$ai_span", 4, **{"$ai_trace_id": "t1", "$ai_span_id": "b", "$ai_parent_id": "a", "$ai_span_name": "B"}),
        ai("$ai_generation", 5, **{"$ai_span_name": "untraced", "$ai_model": "m", "$ai_input_tokens": 3}),
        ai("$pageview", 6),
        {"event": "no properties", "distinct_id": "x"},
    ]  # fmt: skip
    model = build_model(events)
    (trace,) = model["traces"]
    (orphan,) = trace["orphans"]
    assert (orphan["name"], orphan["parent_id"]) == ("lost", "gone")
    assert [child["name"] for child in orphan["children"]] == ["under lost"]
    assert [(n["name"], n["parent_id"]) for n in trace["looping"]] == [("A", "b"), ("B", "a")]
    (untraced,) = model["untraced"]
    assert (untraced["name"], untraced["model"], untraced["input_tokens"]) == ("untraced", "m", 3)
    assert model["ignored"] == {"$pageview": 1, "no properties": 1}
    # The text tree, from the same grouping, puts the same nodes apart.
    text = render_trace_tree(events)
    assert "not shown by PostHog (parent not found):\n    span lost" in text
    assert "not shown by PostHog (parents form a loop):\n    span A  parent b\n    span B  parent a" in text
    assert "$ai_* events without $ai_trace_id (in no trace):\n  generation untraced" in text


def test_an_invocation_continuing_another_functions_trace_has_its_own_root() -> None:
    # The API function's trace (its $ai_trace and the span that sent), and the worker's invocation
    # as a span under that span (lambda_root), with Lambda's figures, and a generation under it.
    worker = {"lambda_request_id": "req-worker"}
    events = [
        ai("$ai_span", 1, **{"$ai_trace_id": "t", "$ai_span_id": "enqueue", "$ai_parent_id": "t",
                             "$ai_span_name": "enqueue", "lambda_request_id": "req-api"}),
        ai("$ai_trace", 1.2, **{"$ai_trace_id": "t", "$ai_span_name": "api", "lambda_request_id": "req-api",
                                "lambda_cold_start": False}),
        ai("$ai_generation", 2.5, "bob", **worker, **{"$ai_trace_id": "t", "$ai_generation_id": "g",
                                                      "$ai_parent_id": "w", "$ai_span_name": "answer"}),
        ai("$ai_span", 2.6, "bob", **worker, **{
            "$ai_trace_id": "t", "$ai_span_id": "w", "$ai_parent_id": "enqueue", "$ai_span_name": "worker",
            "lambda_root": True, "lambda_cold_start": True, "lambda_status": "timeout", "$ai_is_error": True,
            "$ai_error": "Lambda status timeout", "lambda_billed_duration_ms": 3000,
        }),
    ]  # fmt: skip
    (trace,) = build_model(events)["traces"]
    assert [n["name"] for n in nodes(trace["tree"])] == ["api", "enqueue", "worker", "answer"]
    api, worker_root, answer = trace["tree"], by_name(trace, "worker"), by_name(trace, "answer")
    assert (worker_root["invocation_root"], worker_root["continues_trace"]) == (True, True)
    assert worker_root["cut_short"] is False
    assert worker_root["lambda"]["lambda_billed_duration_ms"] == 3000
    assert answer["invocation"] == worker_root["uid"]
    assert by_name(trace, "enqueue")["invocation"] == api["uid"]
    # The worker's timeout fails the trace; the trace's own figures come first.
    assert (trace["failed"], trace["status"]) == (True, "timeout")
    assert (trace["cold_start"], trace["distinct_id"]) == (False, "ada")

    # Only the worker's events arrived here (the API function sent elsewhere): PostHog would not
    # place the worker's root, whose parent is not in the trace; its figures still count.
    (alone,) = build_model(events[2:])["traces"]
    assert (alone["has_trace_event"], alone["name"], alone["tree"]["children"]) == (False, None, [])
    assert alone["tree"]["uid"] == "trace:t"
    (orphan,) = alone["orphans"]
    assert (orphan["name"], orphan["children"][0]["invocation"]) == ("worker", orphan["uid"])
    assert (alone["cold_start"], alone["distinct_id"], alone["failed"]) == (True, "bob", True)


def test_traces_are_listed_newest_first_and_uids_stay_as_events_are_added() -> None:
    first, second = invocation("t1"), invocation("t2")
    for event in second:
        event["timestamp"] = event["timestamp"].replace(":00:0", ":00:1")
    before = build_model(first)
    after = build_model(first + second)
    assert [t["id"] for t in after["traces"]] == ["t2", "t1"]
    assert after["traces"][1]["tree"] == before["traces"][0]["tree"]
    assert after["traces"][1]["revision"] == before["traces"][0]["revision"]


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("plain text", {"text": "plain text"}),
        ([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
         {"messages": [{"role": "user", "text": "a\nb", "json": None}]}),
        ([{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
         {"messages": [{"role": "assistant", "text": "hi", "json": None}]}),
        ([{"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]}],
         {"messages": [{"role": "assistant", "text": None,
                        "json": json.dumps({"tool_calls": [{"id": "c1"}]}, indent=2)}]}),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}],
         {"messages": [{"role": "user", "text": None,
                        "json": json.dumps({"content": [{"type": "image_url", "image_url": "x"}]}, indent=2)}]}),
        (["a", "b"], {"json": '[\n  "a",\n  "b"\n]'}),
        ({"nan": float("nan")}, {"json": '{\n  "nan": "nan"\n}'}),
    ],
    ids=["text", "text-parts", "openai-choices", "tool-calls", "image-part", "list", "nan"],
)  # fmt: skip
def test_inputs_and_outputs_are_messages_when_they_are_messages(value: Any, shown: dict[str, Any]) -> None:
    event = ai("$ai_generation", 1, **{"$ai_trace_id": "t", "$ai_span_id": "g", "$ai_input": value})
    (trace,) = build_model([event])["traces"]
    assert trace["tree"]["children"][0]["input"] == shown


# -- the page's escaping ----------------------------------------------------------------------


def test_script_json_leaves_nothing_that_could_end_the_script_element() -> None:
    value = {"message": XSS, XSS: [XSS], "n": float("inf")}
    text = script_json(value)
    for character in "<>&\u2028\u2029":
        assert character not in text
    assert json.loads(text) == {"message": XSS, XSS: [XSS], "n": "inf"}


class _Scripts(HTMLParser):
    """The page as a browser's tokenizer reads it: each element's tag and each script's text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.scripts: list[tuple[dict[str, str | None], str]] = []
        self.styles: list[str] = []
        self.csp = ""
        self._open: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        named = dict(attrs)
        if tag == "meta" and named.get("http-equiv") == "Content-Security-Policy":
            self.csp = named.get("content") or ""
        if tag in ("script", "style"):
            self._open = tag
            if tag == "script":
                self.scripts.append((named, ""))
            else:
                self.styles.append("")

    def handle_data(self, data: str) -> None:
        if self._open == "script":
            attrs, text = self.scripts[-1]
            self.scripts[-1] = (attrs, text + data)
        elif self._open == "style":
            self.styles[-1] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == self._open:
            self._open = None


def _sha256(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


def test_a_message_with_markup_cannot_break_out_of_the_page() -> None:
    events = invocation()
    events[2]["properties"]["$ai_input"][1]["content"] = XSS
    events[2]["properties"]["$ai_span_name"] = XSS
    page = page_html(build_model(events))
    assert "</script><script>alert" not in page
    assert "<img" not in page
    parsed = _Scripts()
    parsed.feed(page)
    parsed.close()
    # Exactly the page's own two scripts (the data, the code); no element came from the data.
    assert [attrs.get("type") for attrs, _ in parsed.scripts] == ["application/json", None]
    assert "img" not in parsed.tags
    data = json.loads(parsed.scripts[0][1])
    assert data["live"] is None
    answer = by_name(data["model"]["traces"][0], XSS)
    assert answer["input"]["messages"][1]["text"] == XSS
    # Only the page's own script and style run (by hash), and it connects nowhere but home.
    assert f"script-src '{_sha256(parsed.scripts[1][1])}'" in parsed.csp
    assert f"style-src '{_sha256(parsed.styles[0])}'" in parsed.csp
    assert "default-src 'none'" in parsed.csp
    assert "connect-src 'self'" in parsed.csp
    assert re.search(r"\binnerHTML\b|insertAdjacentHTML|outerHTML|document\.write", parsed.scripts[1][1]) is None


def test_write_html_makes_one_self_contained_file(tmp_path: Path) -> None:
    path = write_html(invocation(), tmp_path / "out" / "traces.html")
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert re.search(r"""(src|href)=["']?(https?:)?//""", page) is None  # nothing fetched
    assert '"name":"ask"' in page


# -- the live page and its endpoint -----------------------------------------------------------


@pytest.fixture
def server() -> Iterator[CaptureServer]:
    with CaptureServer() as running:
        yield running


def request(server: CaptureServer, method: str, path: str, body: Any = None) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request(method, path, None if body is None else json.dumps(body))
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def send(server: CaptureServer, events: list[dict[str, Any]]) -> None:
    status, _, answer = request(server, "POST", AI_BATCH_PATH, {"api_key": KEY, "batch": events})
    assert status == 200, answer


def test_the_server_serves_the_live_page(server: CaptureServer) -> None:
    send(server, invocation())
    assert server.viewer_url == f"{server.url}/"
    status, headers, body = request(server, "GET", "/")
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Cache-Control"] == "no-store"
    parsed = _Scripts()
    parsed.feed(body.decode())
    data = json.loads(parsed.scripts[0][1])
    assert data["live"] == {"endpoint": EVENTS_PATH, "wait_s": 25.0}
    assert [t["name"] for t in data["model"]["traces"]] == ["ask"]
    assert data["model"]["version"] == server.viewer_model()["version"]


def test_the_endpoint_answers_at_once_when_the_page_is_behind(server: CaptureServer) -> None:
    send(server, invocation())
    status, headers, body = request(server, "GET", f"{EVENTS_PATH}?after=-1&wait=30")
    assert (status, headers["Content-Type"]) == (200, "application/json")
    model = json.loads(body)
    assert model["event_count"] == 4
    assert [t["id"] for t in model["traces"]] == ["t1"]
    # Up to date and told not to wait: the same version again, at once.
    status, _, again = request(server, "GET", f"{EVENTS_PATH}?after={model['version']}&wait=0")
    assert json.loads(again)["version"] == model["version"]


def test_the_endpoint_waits_for_a_new_event_and_wakes_when_it_arrives(server: CaptureServer) -> None:
    version = server.viewer_model()["version"]
    answers: list[dict[str, Any]] = []

    def wait() -> None:
        answers.append(json.loads(request(server, "GET", f"{EVENTS_PATH}?after={version}&wait=30")[2]))

    waiter = threading.Thread(target=wait)
    waiter.start()
    with server._changed:
        assert server._changed.wait_for(lambda: server._change_waiters == 1, timeout=10)
    assert answers == []
    send(server, invocation("t9"))
    waiter.join(10)
    assert not waiter.is_alive()
    (model,) = answers
    assert model["version"] != version
    assert [t["id"] for t in model["traces"]] == ["t9"]


def test_clear_and_stop_wake_waiting_pages(server: CaptureServer) -> None:
    send(server, invocation())
    version = server.viewer_model()["version"]
    answers: list[int] = []

    def wait() -> None:
        try:
            answers.append(json.loads(request(server, "GET", f"{EVENTS_PATH}?after={version}&wait=30")[2])["version"])
        except (OSError, http.client.HTTPException, ValueError):
            answers.append(-1)  # stop() may close the connection before the answer is written

    for wake in (server.clear, server.stop):
        waiter = threading.Thread(target=wait)
        waiter.start()
        with server._changed:
            assert server._changed.wait_for(lambda: server._change_waiters == 1, timeout=10)
        started = time.monotonic()
        wake()
        waiter.join(10)
        assert not waiter.is_alive()
        assert time.monotonic() - started < 2  # not the 30 s asked for, nor stop()'s join timeout
        version = answers[-1] if answers[-1] != -1 else version
    assert answers[0] != -1


def test_viewer_requests_are_not_posthogs(server: CaptureServer) -> None:
    server.fail_next(1, 503)
    assert request(server, "GET", "/")[0] == 200
    assert request(server, "GET", f"{EVENTS_PATH}?after=-1")[0] == 200
    assert request(server, "GET", f"{EVENTS_PATH}?after=soon")[0] == 400
    assert request(server, "GET", f"{EVENTS_PATH}?after=0&wait=nan")[0] == 200  # at once
    assert server.requests == []  # not recorded, and the fault is still pending
    status, _, _ = request(server, "POST", BATCH_PATH, {"api_key": KEY, "batch": invocation()})
    assert status == 503
    # Ingestion answers as before, on every other path and method.
    assert request(server, "POST", "/", {"api_key": KEY, "batch": invocation()})[0] == 404
    assert request(server, "GET", BATCH_PATH)[0] == 405
    assert request(server, "GET", "/viewer/")[0] == 404
    assert [(r.method, r.path, r.status) for r in server.requests] == [
        ("POST", BATCH_PATH, 503), ("POST", "/", 404), ("GET", BATCH_PATH, 405), ("GET", "/viewer/", 404),
    ]  # fmt: skip


def test_capture_server_write_html_shows_each_event_once(server: CaptureServer, tmp_path: Path) -> None:
    events = invocation()
    send(server, events)
    send(server, events[:2])  # a retry: PostHog keeps each uuid once
    page = server.write_html(tmp_path / "traces.html").read_text(encoding="utf-8")
    parsed = _Scripts()
    parsed.feed(page)
    model = json.loads(parsed.scripts[0][1])["model"]
    assert model["event_count"] == 4
    assert len(list(nodes(model["traces"][0]["tree"]))) == 4


# -- command line -------------------------------------------------------------------------------


def test_capture_command_prints_the_viewer_and_writes_the_page_on_ctrl_c(tmp_path: Path) -> None:
    html = tmp_path / "traces.html"
    with capture_command("--html", str(html)) as run:
        assert f"trace viewer at http://127.0.0.1:{run.port}/." in run.banner
        connection = http.client.HTTPConnection("127.0.0.1", run.port, timeout=10)
        connection.request("GET", "/")
        response = connection.getresponse()
        assert response.status == 200
        response.read()
        connection.request("POST", AI_BATCH_PATH, json.dumps({"api_key": KEY, "batch": invocation()}))
        assert connection.getresponse().status == 200
        connection.close()
    assert run.returncode == 0, run.err
    lines = run.out.splitlines()
    assert "POST /i/v0/ai/batch/ -> 200 accepted: 4 events" in lines[0]  # the GET / is not printed
    assert lines[1].startswith("trace ask  [t1]")
    assert lines[-1] == f"trace viewer written to {html}"
    assert '"name":"ask"' in html.read_text(encoding="utf-8")
