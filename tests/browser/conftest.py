"""The browser tests' fixtures: headless Chromium (Debian's ``chromium`` package, at
``/usr/bin/chromium``) driven by Playwright, and a capture server holding the demo's traces
(``examples/demo.py``'s invocations of ``examples/llm_app`` in the local Lambda environment
with the built layer), plus one whose question is markup.

A machine without Chromium or Playwright fails these tests, saying how to install them: a
viewer nobody looked at is not tested.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest

from posthog_lambda.local import CaptureServer
from posthog_lambda.local.capture_server import AI_BATCH_PATH
from posthog_lambda.testing import capture_events
from tests.helpers import ROOT, LambdaContext, built_layer

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Page, Request

CHROMIUM = "/usr/bin/chromium"
# This machine's network is closed: no QUIC, no component updates, sync or background fetches,
# each of which would stall or log errors at start-up; no sandbox, as root in a container.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
INSTALL = (
    "The browser tests need Debian's chromium package at /usr/bin/chromium (`apt-get install -y chromium`, "
    "as .ci/run does) and Playwright's Python package from requirements/dev.txt (`pip install -r "
    "requirements/dev.txt`; not `playwright install`, which downloads its own browsers)."
)
KEY = "phc_local"
MARKUP = '</script><script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"> <b>bold?</b>'
VIEWPORT = {"width": 1400, "height": 1000}


def load(path: Path) -> ModuleType:
    """A Python file as a module of its own name, whatever else is imported."""
    spec = importlib.util.spec_from_file_location(f"{path.stem}_{uuid.uuid4().hex}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # Failed outside the except blocks, so that the report is the message alone.
    problem = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        problem = f"Playwright is not installed ({exc})."
    if problem is not None:
        pytest.fail(f"{problem}\n{INSTALL}", pytrace=False)
    playwright = sync_playwright().start()
    try:
        # Playwright gives each launch a fresh user data directory of its own, removed after.
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS, timeout=30_000)
    except Exception as exc:
        problem = f"Chromium could not start from {CHROMIUM}: {exc}"
    if problem is not None:
        playwright.stop()
        pytest.fail(f"{problem}\n{INSTALL}", pytrace=False)
    yield launched
    launched.close()
    playwright.stop()


class Demo:
    """The capture server with the demo's traces, and ways to add more."""

    def __init__(self, server: CaptureServer) -> None:
        self.server = server
        self.demo = load(ROOT / "examples" / "demo.py")
        self._app = load(ROOT / "examples" / "llm_app" / "app.py")
        self.demo_events: list[dict[str, Any]] = []

    def run_the_demo(self) -> None:
        env = {"POSTHOG_API_KEY": KEY, "POSTHOG_HOST": self.server.url, "POSTHOG_LAMBDA_FLUSH": "end"}
        self.demo.invoke_all(built_layer(), env, say=lambda line: None)
        self.server.wait_for_events(self.demo.expected_events(), timeout=20)
        self.demo_events = [received.event for received in self.server.unique_events()]

    def ask(self, question: str, user: str, conversation: str = "c-9") -> str:
        """One more question to the same app, run here (no Lambda environment: quicker), its
        events sent to the server as the extension would; returns the trace id."""
        with capture_events() as events:
            self._app.handler({"question": question, "user": user, "conversation": conversation}, LambdaContext())
        send(self.server, list(events))
        (trace,) = [e for e in events if e["event"] == "$ai_trace"]
        return str(trace["properties"]["$ai_trace_id"])

    def events(self, name: str, **props: Any) -> list[dict[str, Any]]:
        """The received events named ``name`` whose properties include ``props``."""
        return [
            r.event
            for r in self.server.unique_events()
            if r.name == name and all(r.properties.get(key) == value for key, value in props.items())
        ]

    def trace_of(self, question: str) -> str:
        """The trace id of the demo's invocation that asked ``question``."""
        (trace,) = [e for e in self.events("$ai_trace") if e["properties"]["$ai_input_state"]["question"] == question]
        return str(trace["properties"]["$ai_trace_id"])


def send(server: CaptureServer, events: list[dict[str, Any]]) -> None:
    """POST ``events`` to ``server``'s AI endpoint, as the extension does."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request("POST", AI_BATCH_PATH, json.dumps({"api_key": KEY, "batch": events}))
        response = connection.getresponse()
        assert response.status == 200, response.read()
    finally:
        connection.close()


@pytest.fixture(scope="module")
def demo() -> Iterator[Demo]:
    # Stopped once the module's tests are done (not at the end of the session): other tests
    # check that no capture server's thread is left running.
    with CaptureServer(api_key=KEY) as server:
        shown = Demo(server)
        shown.run_the_demo()
        shown.ask(MARKUP, "mallory")
        yield shown


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A page of its own (light scheme), failing the test on a script error, a console error
    (a Content-Security-Policy refusal among them) or a request anywhere but a local capture
    server or file: the viewer fetches nothing from the internet."""
    context = browser.new_context(viewport=VIEWPORT, color_scheme="light")
    opened = context.new_page()
    problems: list[str] = []
    requests: list[str] = []

    def console(message: ConsoleMessage) -> None:
        if message.type == "error":
            problems.append(f"console: {message.text}")

    def request(sent: Request) -> None:
        requests.append(sent.url)

    opened.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    opened.on("console", console)
    opened.on("dialog", lambda dialog: (problems.append(f"dialog: {dialog.message}"), dialog.dismiss()))
    context.on("request", request)
    yield opened
    context.close()
    assert problems == []
    strangers = [url for url in requests if not url.startswith(("http://127.0.0.1:", "file://"))]
    assert strangers == []
