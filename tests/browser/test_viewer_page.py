"""The trace viewer in Chromium: the demo's traces in the live page and in the written file, a
failed trace and its cut-short generation, a generation's messages and tokens, markup shown as
text, new traces arriving while the page is open, both colour schemes, and the screenshot the
README shows (build/trace-view.png)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from posthog_lambda.local import CaptureServer
from tests.browser.conftest import KEY, MARKUP, VIEWPORT, Demo, send
from tests.helpers import ROOT

try:
    from playwright.sync_api import expect
except ImportError:  # the browser fixture, which every test uses, fails saying how to install it
    expect: Any = None

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Locator, Page

SCREENSHOT = ROOT / "build" / "trace-view.png"


def open_viewer(page: Page, address: str) -> None:
    page.goto(address)
    expect(page.locator("body")).to_have_attribute("data-ready", "true")


def trace_row(page: Page, trace_id: str) -> Locator:
    return page.locator(f'#traces tr[data-trace-id="{trace_id}"]')


def open_trace(page: Page, trace_id: str) -> None:
    trace_row(page, trace_id).click()
    expect(trace_row(page, trace_id)).to_have_attribute("aria-selected", "true")


def generation_row(page: Page) -> Locator:
    return page.locator('#trace .wf-row[data-kind="generation"]')


def timed_out(demo: Demo) -> str:
    (trace,) = demo.events("$ai_trace", lambda_status="timeout")
    return str(trace["properties"]["$ai_trace_id"])


def test_the_demos_traces_appear_in_the_live_page(page: Page, demo: Demo) -> None:
    open_viewer(page, demo.server.viewer_url)
    expect(page.locator("#status")).to_contain_text("Live")
    for question in demo.demo.QUESTIONS:
        row = trace_row(page, demo.trace_of(question["question"]))
        expect(row).to_be_visible()
        expect(row.locator("td").first).to_contain_text("ask")
        expect(row).to_contain_text(question["user"])
        expect(row).to_contain_text(question["conversation"])
    # The one that raised and the one that timed out are failed; the others are not.
    failed = page.locator('#traces tr[data-failed="true"]')
    expect(failed).to_have_count(2)
    expect(trace_row(page, demo.trace_of(""))).to_contain_text("ValueError: the question is empty")
    first = trace_row(page, demo.trace_of(demo.demo.QUESTIONS[0]["question"]))
    expect(first).to_contain_text("cold start")
    expect(first).to_contain_text(re.compile(r"\d+ in / \d+ out"))


def test_the_timed_out_trace_is_failed_with_its_cut_short_generation(page: Page, demo: Demo) -> None:
    open_viewer(page, demo.server.viewer_url)
    trace_id = timed_out(demo)
    expect(trace_row(page, trace_id)).to_contain_text("FAILED: timeout")
    open_trace(page, trace_id)
    expect(page.get_by_test_id("failed-banner")).to_contain_text("did not finish within its 3 s timeout")
    generation = generation_row(page)
    expect(generation).to_have_attribute("data-cut-short", "true")
    expect(generation).to_contain_text("cut short")
    expect(generation.locator(".wf-bar")).to_have_class(re.compile(r"\bcut-short\b"))
    # In red: the page's colour for errors.
    error = page.evaluate("getComputedStyle(document.documentElement).getPropertyValue('--error').trim()")
    expect(generation.locator(".wf-name")).to_have_css("color", _rgb(error))
    generation.click()
    expect(page.get_by_test_id("node-error")).to_contain_text("did not end: Lambda status timeout")
    expect(page.locator("#detail")).to_contain_text("still running when the invocation ended (cut short)")
    # Its spans that finished are not marked.
    expect(page.locator('#trace .wf-row[data-kind="span"][data-cut-short="true"]')).to_have_count(0)


def test_clicking_a_generation_shows_its_messages_and_tokens(page: Page, demo: Demo) -> None:
    question = demo.demo.QUESTIONS[0]["question"]
    trace_id = demo.trace_of(question)
    (sent,) = demo.events("$ai_generation", **{"$ai_trace_id": trace_id})
    props = sent["properties"]
    open_viewer(page, demo.server.viewer_url)
    open_trace(page, trace_id)
    generation_row(page).click()
    detail = page.locator("#detail")
    expect(detail.get_by_test_id("detail-title")).to_contain_text("answer")
    messages = detail.get_by_test_id("input").locator(".message")
    expect(messages).to_have_count(2)
    expect(messages.nth(0).locator(".role")).to_have_text("system")
    expect(messages.nth(0).locator(".content")).to_have_text(props["$ai_input"][0]["content"])
    expect(messages.nth(1).locator(".role")).to_have_text("user")
    expect(messages.nth(1).locator(".content")).to_have_text(question)
    answer = detail.get_by_test_id("output").locator(".message")
    expect(answer.locator(".role")).to_have_text("assistant")
    expect(answer.locator(".content")).to_have_text(props["$ai_output_choices"][0]["content"])
    tokens = f"{props['$ai_input_tokens']} in / {props['$ai_output_tokens']} out"
    expect(detail.get_by_test_id("tokens")).to_have_text(tokens)
    expect(detail).to_contain_text("gpt-4o-mini (openai)")
    expect(detail).to_contain_text("Time to first token")
    # Lambda's figures are the invocation's, shown for any node of it.
    expect(detail.get_by_test_id("lambda")).to_contain_text("lambda_billed_duration_ms")


def test_a_message_holding_markup_is_shown_as_text(page: Page, demo: Demo) -> None:
    (trace,) = [e for e in demo.events("$ai_trace") if e["distinct_id"] == "mallory"]
    open_viewer(page, demo.server.viewer_url)
    open_trace(page, str(trace["properties"]["$ai_trace_id"]))
    generation_row(page).click()
    user = page.locator('#detail [data-testid="input"] .message[data-role="user"] .content')
    expect(user).to_have_text(MARKUP)
    expect(user).to_be_visible()
    # Nothing was made of it: no image, no bold, no script beyond the page's own two.
    expect(page.locator("img")).to_have_count(0)
    expect(page.locator("#detail b")).to_have_count(0)
    expect(page.locator("script")).to_have_count(2)
    assert page.evaluate("window.__pwned") is None


def test_new_traces_appear_while_the_page_is_open(page: Page, demo: Demo) -> None:
    open_viewer(page, demo.server.viewer_url)
    rows = page.locator("#traces tbody tr")
    before = rows.count()
    trace_id = demo.ask("Does a new trace show up?", "late-comer")
    # Playwright waits for it (the page is waiting on the server, which answers on arrival).
    expect(trace_row(page, trace_id)).to_contain_text("late-comer")
    expect(rows).to_have_count(before + 1)
    expect(rows.first).to_have_attribute("data-trace-id", trace_id)  # newest first


def test_the_written_file_shows_the_same(page: Page, demo: Demo, tmp_path: Path) -> None:
    path = demo.server.write_html(tmp_path / "traces.html")
    model = demo.server.viewer_model()
    open_viewer(page, path.as_uri())
    expect(page.locator("#status")).to_contain_text("Snapshot")
    expect(page.locator("#traces tbody tr")).to_have_count(len(model["traces"]))
    expect(page.locator('#traces tr[data-failed="true"]')).to_have_count(sum(t["failed"] for t in model["traces"]))
    open_trace(page, timed_out(demo))
    expect(generation_row(page)).to_have_attribute("data-cut-short", "true")
    mallory = next(t["id"] for t in model["traces"] if t["distinct_id"] == "mallory")
    open_trace(page, mallory)
    generation_row(page).click()
    expect(page.locator('#detail .message[data-role="user"] .content')).to_have_text(MARKUP)
    expect(page.locator("img")).to_have_count(0)


def test_light_and_dark_themes_follow_the_system(browser: Browser, demo: Demo) -> None:
    seen = {}
    for scheme in ("light", "dark"):
        context = browser.new_context(viewport=VIEWPORT, color_scheme=scheme)
        try:
            page = context.new_page()
            open_viewer(page, demo.server.viewer_url)
            open_trace(page, timed_out(demo))
            seen[scheme] = (
                _luminance(page.evaluate("getComputedStyle(document.body).backgroundColor")),
                _luminance(page.evaluate("getComputedStyle(document.body).color")),
            )
            expect(page.get_by_test_id("failed-banner")).to_be_visible()
        finally:
            context.close()
    assert seen["light"][0] > 0.8 > 0.2 > seen["light"][1]
    assert seen["dark"][0] < 0.2 < 0.8 < seen["dark"][1]


def test_screenshot_of_the_trace_view(page: Page, demo: Demo) -> None:
    """build/trace-view.png, the picture in the README: the live page with the demo's traces (on a
    server of its own: the other tests add theirs), one open, its generation's messages shown."""
    with CaptureServer(api_key=KEY) as server:
        send(server, demo.demo_events)
        open_viewer(page, server.viewer_url)
        _screenshot(page, demo)
        page.goto("about:blank")  # before the server stops under the page's waiting request


def _screenshot(page: Page, demo: Demo) -> None:
    open_trace(page, demo.trace_of(demo.demo.QUESTIONS[0]["question"]))
    generation_row(page).click()
    expect(page.locator('#detail [data-testid="output"] .message')).to_be_visible()
    expect(page.locator("#trace .wf-bar")).to_have_count(4)
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOT, full_page=True)
    assert SCREENSHOT.stat().st_size > 10_000


def _rgb(hex_colour: str) -> str:
    value = hex_colour.lstrip("#")
    red, green, blue = (int(value[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgb({red}, {green}, {blue})"


def _luminance(css: str) -> float:
    red, green, blue = (int(part) / 255 for part in re.findall(r"\d+", css)[:3])
    return 0.2126 * red + 0.7152 * green + 0.0722 * blue
