"""The Lambda Extensions API (2020-01-01) as the local environment serves it, also on its own.

Extensions register during Init, by the name of their file in ``/opt/extensions``, for
``INVOKE`` and/or ``SHUTDOWN``; each ``next`` call then waits until the next event is handed to
them. :class:`LambdaEnvironment` serves it next to the Runtime and Telemetry APIs and hands
out the events as its lifecycle goes; a test or a benchmark that starts an extension process
itself can serve it alone, as a stand-in for Lambda:

    with ExtensionsApi() as api:                       # http on 127.0.0.1:<free port>
        state = api.expect("my-extension")             # the name it registers under
        start the extension with AWS_LAMBDA_RUNTIME_API=api.address
        api.wait_next(1)                               # registered, waiting in next: Init is over
        api.invoke("request-1")
        api.wait_next(2)                               # done with the invocation
        api.shutdown()

Alone, it has no Telemetry API (subscribing is answered 404) and Init lasts until the first
event is handed out. ``invoke_events=False`` serves it as Lambda Managed Instances do: there is
no INVOKE event, and registering for it is refused.
"""

from __future__ import annotations

import threading
import time
import uuid

from .routing import GONE_EVENT_TYPE, ApiServer, ExtensionsRoutes, api_error

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from types import TracebackType
    from typing import Any, Self

ACCOUNT_ID = "123456789012"
EVENT_TYPES = frozenset({"INVOKE", "SHUTDOWN"})


def epoch_ms_in(seconds: float) -> int:
    """A deadline as Lambda gives it: milliseconds since the epoch, ``seconds`` from now."""
    return int((time.time() + seconds) * 1000)


def function_arn(region: str, function_name: str) -> str:
    return f"arn:aws:lambda:{region}:{ACCOUNT_ID}:function:{function_name}"


def new_trace_header() -> str:
    """A fresh X-Ray trace header, sampled, as Lambda passes one to each invocation."""
    return f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};Parent={uuid.uuid4().hex[:16]};Sampled=1"


def invoke_event(request_id: str, deadline_ms: int, invoked_function_arn: str, trace_header: str) -> dict[str, Any]:
    return {
        "eventType": "INVOKE",
        "deadlineMs": deadline_ms,
        "requestId": request_id,
        "invokedFunctionArn": invoked_function_arn,
        "tracing": {"type": "X-Amzn-Trace-Id", "value": trace_header},
    }


def shutdown_event(reason: str, deadline_ms: int) -> dict[str, Any]:
    return {"eventType": "SHUTDOWN", "shutdownReason": reason, "deadlineMs": deadline_ms}


class ExtensionState:
    """One extension as the Extensions API knows it: its registration, its ``next`` calls and
    the events waiting for it. Times are ``time.monotonic()``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.id: str | None = None
        """Its identifier, once registered."""
        self.events: frozenset[str] = frozenset()
        """What it registered for: ``INVOKE``, ``SHUTDOWN``."""
        self.registered: float | None = None
        self.next_calls: list[float] = []
        """When it called ``next``, each time."""
        self.waiting = False
        """In a ``next`` call that has no event yet."""
        self.queue: list[dict[str, Any]] = []
        self.delivered = 0
        """How many events it has been answered with."""
        self.handed_at = 0.0
        """When its last event left the queue: a next call after that means it is done with it."""
        self.error: str | None = None
        """What it reported to ``init/error`` or ``exit/error``."""

    @property
    def first_next(self) -> float | None:
        return self.next_calls[0] if self.next_calls else None

    @property
    def last_next(self) -> float | None:
        return self.next_calls[-1] if self.next_calls else None

    def done_with_invoke(self) -> bool:
        """Back in ``next`` since it was handed the last INVOKE (or never subscribed to it)."""
        return self.waiting and ("INVOKE" not in self.events or (self.last_next or 0.0) > self.handed_at)


class ExtensionsApi:
    """The Extensions API: registration, ``next``, ``init/error`` and ``exit/error``.

    ``function_name``, ``handler`` and ``region`` are what registration answers and INVOKE
    events name. The environment that serves it passes ``condition`` (one lock and condition
    for its whole state), ``in_init`` (whether registering is allowed now) and ``note`` (called
    with the extension's name and the event each time an event is delivered); alone, it has a
    condition of its own and Init lasts until the first event is handed out. ``on_register`` is
    called with each extension as it registers, before it is answered. With
    ``invoke_events=False`` (Lambda Managed Instances) a registration naming INVOKE is refused
    with 403 Extension.InvalidEventType, and the extension stays unregistered (it may try again).
    """

    def __init__(
        self,
        *,
        function_name: str = "local-function",
        handler: str = "app.handler",
        region: str = "us-east-1",
        condition: threading.Condition | None = None,
        in_init: Callable[[], bool] | None = None,
        note: Callable[[str, str], None] | None = None,
        on_register: Callable[[ExtensionState], None] | None = None,
        invoke_events: bool = True,
    ) -> None:
        self.function_name = function_name
        self.handler = handler
        self.region = region
        self._cond = condition if condition is not None else threading.Condition()
        self._in_init = in_init if in_init is not None else self._before_any_event
        self._note = note
        self._on_register = on_register
        self.invoke_events = invoke_events
        self._extensions: list[ExtensionState] = []
        self._handed_out = False
        self._server: ApiServer | None = None

    # -- serving it alone -------------------------------------------------------------------

    def start(self) -> Self:
        """Serve it on a free port of 127.0.0.1 (see :attr:`address`)."""
        self._server = ApiServer(ExtensionsRoutes(self).table()).start("lambda-extensions-api")
        return self

    def close(self) -> None:
        """End every ``next`` call, pending or to come, with 500 Environment.Gone; stop serving."""
        self.release()
        if self._server is not None:
            self._server.close()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def address(self) -> str:
        """``host:port``, for the extension's ``AWS_LAMBDA_RUNTIME_API``."""
        assert self._server is not None, "start() the Extensions API first"
        return self._server.address

    def _before_any_event(self) -> bool:
        return not self._handed_out

    # -- the extensions it expects ------------------------------------------------------------

    def expect(self, name: str) -> ExtensionState:
        """Let an extension named ``name`` register (once); what the API will know of it."""
        return self.add(ExtensionState(name))

    def add(self, extension: ExtensionState) -> ExtensionState:
        with self._cond:
            self._extensions.append(extension)
        return extension

    def clear(self) -> None:
        """Forget every extension (a new Init expects its own)."""
        with self._cond:
            self._extensions = []

    @property
    def extensions(self) -> list[ExtensionState]:
        with self._cond:
            return list(self._extensions)

    def find(self, identifier: str | None) -> ExtensionState | None:
        return next((e for e in self._extensions if identifier and e.id == identifier), None)

    # -- handing out events ---------------------------------------------------------------------

    def hand(self, event: dict[str, Any], to: Iterable[ExtensionState] | None = None) -> list[ExtensionState]:
        """Queue ``event`` for every extension (of ``to``, default all) registered for its type;
        returns them. Each gets it from its next ``next`` call, or the one it is waiting in."""
        with self._cond:
            recipients = [e for e in (self._extensions if to is None else to) if event["eventType"] in e.events]
            for extension in recipients:
                extension.queue.append(dict(event))
            self._handed_out = True
            self._cond.notify_all()
        return recipients

    def invoke(self, request_id: str, timeout_s: float = 3.0) -> list[ExtensionState]:
        """Hand an INVOKE event, its deadline ``timeout_s`` from now, to those registered for it."""
        arn = function_arn(self.region, self.function_name)
        return self.hand(invoke_event(request_id, epoch_ms_in(timeout_s), arn, new_trace_header()))

    def shutdown(self, reason: str = "spindown", budget_s: float = 2.0) -> list[ExtensionState]:
        """Hand a SHUTDOWN event, its deadline ``budget_s`` (Lambda's 2 s) from now, to those
        registered for it."""
        return self.hand(shutdown_event(reason, epoch_ms_in(budget_s)))

    def release(self) -> None:
        """End every extension's ``next`` call, pending or to come, with 500 Environment.Gone."""
        with self._cond:
            for extension in self._extensions:
                extension.queue.append({"eventType": GONE_EVENT_TYPE})
            self._cond.notify_all()

    def wait_next(self, calls: int, timeout: float = 30.0, name: str | None = None) -> float:
        """Wait until the extension ``name`` (default: the only one expected) has called ``next``
        ``calls`` times; when it made that call. TimeoutError otherwise."""
        with self._cond:
            matching = [e for e in self._extensions if name is None or e.name == name]
            if len(matching) != 1:
                raise ValueError(f"wait_next needs one extension, not {[e.name for e in matching]}: pass name=")
            (extension,) = matching
            if not self._cond.wait_for(lambda: len(extension.next_calls) >= calls, timeout):
                made = len(extension.next_calls)
                raise TimeoutError(f"{extension.name} called next {made} times, not {calls}, within {timeout:g} s")
            return extension.next_calls[calls - 1]

    # -- the API's calls (from the HTTP server's threads) ---------------------------------------

    def register(self, name: str, body: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self._cond:
            if not self._in_init():
                return 403, api_error("Extension.RegistrationNotAllowed", "extensions register during Init only"), {}
            candidates = [e for e in self._extensions if e.name == name and e.id is None]
            if not candidates:
                message = f"no extension named {name!r} in /opt/extensions is waiting to register"
                return 403, api_error("Extension.InvalidExtensionName", message), {}
            events = body.get("events") if isinstance(body, dict) else None
            if not isinstance(events, list) or not set(events) <= EVENT_TYPES:
                return 400, api_error("InvalidRequest", "events must be a list of INVOKE and SHUTDOWN"), {}
            if "INVOKE" in events and not self.invoke_events:
                return 403, api_error("Extension.InvalidEventType", "INVOKE: ErrorInvalidEventType"), {}
            extension = candidates[0]
            extension.id = str(uuid.uuid4())
            extension.events = frozenset(events)
            extension.registered = time.monotonic()
            self._cond.notify_all()
            identity = {"Lambda-Extension-Identifier": extension.id}
        if self._on_register is not None:
            self._on_register(extension)
        payload = {
            "functionName": self.function_name,
            "functionVersion": "$LATEST",
            "handler": self.handler,
            "accountId": ACCOUNT_ID,
        }
        return 200, payload, identity

    def next_event(self, identifier: str | None) -> dict[str, Any] | None:
        with self._cond:
            extension = self.find(identifier)
            if extension is None:
                return None
            extension.waiting = True
            extension.next_calls.append(time.monotonic())
            self._cond.notify_all()
            while not extension.queue:
                self._cond.wait()
            event = extension.queue.pop(0)
            extension.waiting = False
            # Before the answer is written: its next call can be served by another thread
            # before this one finishes writing.
            extension.handed_at = time.monotonic()
            return event

    def delivered(self, identifier: str | None, event: dict[str, Any]) -> None:
        with self._cond:
            extension = self.find(identifier)
            if extension is not None:
                if self._note is not None:
                    self._note(extension.name, f"{event['eventType']} {event.get('requestId', '')}".strip())
                extension.delivered += 1
                self._cond.notify_all()

    def report_error(self, identifier: str | None, kind: str, error_type: str, body: bytes) -> bool:
        with self._cond:
            extension = self.find(identifier)
            if extension is None:
                return False
            extension.error = f"{kind} {error_type}: {body.decode('utf-8', 'replace')[:500]}"
            self._cond.notify_all()
            return True
