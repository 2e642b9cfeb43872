"""The extension's life once registered: handle INVOKE and SHUTDOWN until the end.

Each INVOKE is handled as the policy says, everything is flushed at SHUTDOWN within its
deadline, and the process exits 0 only then: an extension that exits earlier fails the
function's invocations, so whatever goes wrong is logged and the loop goes on. Where no INVOKE
comes (Lambda Managed Instances), a background thread sends instead (``_flusher``), and
completes the traces of invocations that timed out or whose process died as Lambda reports them
(``complete_failed``): there such an invocation fails alone, and the environment goes on. With
SnapStart, the first event after Init (or a restore record from the Telemetry API, whichever
comes first) says the environment was restored from its snapshot (``_restore``): what the
snapshot copied is forgotten (``restored``) before anything is decided on it. Before the snapshot,
the function's SNAPSHOT frame has what Init buffered sent (``before_snapshot``): otherwise every
restored environment would send its copy.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from posthog_lambda_contract import limits

from . import _log
from ._api import next_event
from ._buffer import Buffer
from ._drops import DROPPED_EVENT, Drops, dropped_event
from ._intake import HANDLER_BATCHES_KEPT, Intake, trace_max_event_bytes
from ._invocations import Invocations
from ._policy import FLUSH_NOW, WAIT_FOR_END, Policy
from ._restore import Restore
from ._server import FrameServer
from ._settings import Settings
from ._spool import Spool

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from collections.abc import Callable, Mapping
    from typing import Any

    from ._api import ExtensionsApi
    from ._flusher import Flusher
    from ._otlp import Otlp
    from ._otlp_server import OtlpServer
    from ._secrets import KeyStore
    from ._sender import Sender
    from ._telemetry import Telemetry
    from ._traces import Announced

END_MARGIN_S = 0.2
"""Waiting for an invocation's END stops this long before its deadline..."""
FLUSH_MARGIN_S = 0.1
"""...and flushing this long before it, so that next is called in time: an extension late for its
invocation's deadline times the invocation out."""
SHUTDOWN_MARGIN_S = 0.3
START_GRACE_S = 0.5
"""A traced handler sends its END, or START if it runs longer than about 0.3 s, well within this;
neither this long after INVOKE means an untraced one (only without the Telemetry API, whose
runtimeDone ends untraced invocations)."""
END_AFTER_DONE_S = 0.05
"""After runtimeDone, how long an invocation that sent START still waits for its END frame (the
frame is normally read before: the library sends it before the handler returns)."""
REPORT_WAIT_S = 0.3
"""At SHUTDOWN, the most spent waiting for the last invocations' platform.report."""
SETTLE_S = 0.1
"""The most spent letting the socket's readers take in what the function wrote before an END
arrived by another way (the spool, runtimeDone), or before SHUTDOWN."""
SPOOL_POLL_S = 0.1
"""While waiting for END, the spool is checked this often (an END may have been spooled)."""
FLUSH_BUDGET_S = 5.0
"""The most one flush during an invocation may take, retries included: a PostHog outage must
not make every invocation last until its timeout. SHUTDOWN uses all the time it has."""
SHUTDOWN_DEFAULT_S = 2.0
OTLP_HOLD_S = 1.0
"""Under Managed Instances, how long an OTLP span waits for the handler's trace it ran in (an
app's exporter sends before its handler returns; the trace comes as it returns)."""
SHUTDOWN_REASONS = {
    "spindown": "spindown",
    "timeout": "timeout",
    "failure": "failure",
    "releasefail": "failure",
    "reservefail": "failure",
    "sandboxterminated": "failure",
}
"""Each spelling of a shutdown reason, lowercased, as Lambda spells it on the wire. AWS's runtime
interface emulator (``sam local``, container images) resets with ``Timeout``, ``ReleaseFail``
(the runtime died) or ``ReserveFail`` (Init failed) and ends with ``SandboxTerminated`` (stopped,
perhaps in the middle of an invocation, which then did not finish either)."""


def shutdown_reason(raw: object) -> str:
    """A SHUTDOWN event's reason as Lambda spells it (unknown ones as they came)."""
    text = str(raw or "")
    return SHUTDOWN_REASONS.get(text.strip().lower(), text)


OVERDUE_S = 2.0
"""Without INVOKE events and without a Telemetry report saying how it ended, an announced
invocation whose trace has not come this long after its deadline is taken to have timed out."""
SNAPSHOT_BUDGET_S = 3.0
"""The most sending before the snapshot may take, retries included (the function waits a little
longer for the answer: ``posthog_lambda._restore``). What is not sent by then stays buffered, and
every environment restored from the snapshot sends its copy, under the same uuids."""
KEY_WAIT_S = 1.0
"""The most a flush waits for a key still being read from a secret store (started at Init, it is
normally there long before); events stay buffered meanwhile. SHUTDOWN waits until its deadline."""


class Extension:
    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self.drops = Drops()
        self.buffer = Buffer(settings.buffer_bytes, self.drops, clock)
        self.invocations = Invocations()
        self.intake = Intake(self.buffer, self.invocations, self.drops)
        self.intake.discard = settings.discard_reason
        self.server = FrameServer(settings.socket_path, self.intake)
        self.spool = Spool(settings.spool_dir, self.intake)
        self.policy = Policy(settings.mode, settings.flush_at, settings.flush_interval_ms / 1000, settings.buffer_bytes)
        self.sender: Sender | None = None
        self.key_store: KeyStore | None = None
        """Set while the key is read from a secret store, and after for re-reading it."""
        if self.intake.discard is None and settings.host is not None and settings.api_key is not None:
            from ._sender import Sender

            self.sender = Sender(settings.host, settings.api_key, self.buffer, clock=clock)
        elif self.intake.discard is None and settings.key_store is not None:
            from ._secrets import KeyStore

            self.key_store = KeyStore(*settings.key_store)
        self._announced = 0
        self._accepted = 0
        self.telemetry: Telemetry | None = None
        """Set once subscribed to the Telemetry API."""
        self.flusher: Flusher | None = None
        """Set where no INVOKE comes: the thread that sends."""
        self.restore = Restore(self.restored) if settings.snap_start else None
        """With SnapStart: waiting for the sign of the restore from the snapshot."""
        self.intake.before_snapshot = self.before_snapshot
        self.otlp: Otlp | None = None
        """Set at the first OTLP request (``start_otlp``)."""
        self.otlp_server: OtlpServer | None = None
        self._in_flight_since: float | None = None
        """When the invocation under way began (on this clock); None between invocations."""
        self._flushing = threading.Lock()
        """One flush at a time, whichever thread: the main one, the background flusher (SHUTDOWN's
        waits for the one under way), the socket's reader before a snapshot (a restored copy of
        that one may still be under way when its environment is first invoked)."""

    def run(self, api: ExtensionsApi, identifier: str, listener: socket.socket | None, *, invokes: bool = True) -> int:
        """Serve frames on ``listener`` (None: there is no socket) and events from ``api``
        until SHUTDOWN; 0. ``invokes`` False: registered for SHUTDOWN only, so a background
        thread sends."""
        if listener is not None:
            self.server.start(listener)
        if self.key_store is not None:
            self.key_store.start()  # registered already: read while Lambda starts the runtime
        self._announce()
        self.start_telemetry(api, identifier)  # still Init: before this extension's first next
        if self.settings.otlp_port and self.intake.discard is None:
            self.start_otlp()
        if not invokes and self.intake.discard is None:
            self.start_flusher()
        while True:
            event = next_event(api, identifier)
            kind = event.get("eventType")
            restore = self.restore
            if restore is not None and restore.awaiting:
                restore.sign(f"the first event after Init, {kind}")
            try:
                if kind == "SHUTDOWN":
                    self.shutdown(event)
                    return 0
                if kind == "INVOKE":
                    self.invoke(event)
                else:
                    _log.debug(f"ignoring event {kind!r}")
            except Exception as exc:
                if kind == "SHUTDOWN":
                    _log.warn(f"shutdown did not finish cleanly: {exc!r}")
                    return 0
                _log.once(f"loop:{type(exc).__name__}", f"handling {kind} failed unexpectedly: {exc!r}")

    def _announce(self) -> None:
        for problem in self.settings.problems:
            _log.warn(problem)
        reason = self.intake.discard
        if reason == "events_disabled":
            _log.warn("POSTHOG_DISABLED is true: events from the function are discarded")
        elif reason == "events_no_api_key":
            _log.warn(
                "POSTHOG_API_KEY is not set: events from the function are discarded (counted); "
                "set it to your PostHog project API key (phc_...), or name a secret holding it in "
                "POSTHOG_API_KEY_SECRET_ARN or POSTHOG_API_KEY_SSM_PARAMETER"
            )
        if self.key_store is not None:
            _log.debug(f"reading the PostHog API key from {self.key_store.describe()}")
        _log.debug(
            f"listening on {self.settings.socket_path}; flush {self.settings.mode}, "
            f"buffer {self.settings.buffer_bytes} bytes, host {self.settings.host}"
        )

    def start_telemetry(self, api: ExtensionsApi, identifier: str) -> None:
        if self.intake.discard is not None:
            return  # nothing would be sent: no reason to know when invocations end
        try:
            from ._telemetry import Telemetry

            telemetry = Telemetry(
                self.invocations,
                self.intake.traces,
                managed=self.settings.managed,
                snap_start=self.settings.snap_start,
                metric_events=self.settings.metric_events,
                clock=self._clock,
            )
            if self.restore is not None:
                restore = self.restore
                telemetry.restore_seen = lambda kind: restore.sign(f"the Telemetry API's {kind}")
            if telemetry.start(api, identifier):
                self.telemetry = telemetry
                self.intake.awaits_report = telemetry.awaits
        except Exception as exc:
            _log.warn(f"cannot use the Telemetry API ({exc!r}); going on without it")

    def start_otlp(self) -> None:
        """Take OTLP/HTTP on localhost (``_otlp_server``). Only the listener and its thread start
        now; what decodes and places the spans (``_otlp``) loads with the first request."""
        try:
            from ._otlp_server import OtlpServer

            self.intake.handlers = deque(maxlen=HANDLER_BATCHES_KEPT)
            server = OtlpServer(self._receive_otlp, self.drops, port=self.settings.otlp_port)
            if server.start():
                self.otlp_server = server
                _log.debug(f"taking OTLP/HTTP on 127.0.0.1:{server.port}")
        except Exception as exc:
            _log.warn(f"cannot take OTLP ({exc!r}); going on without it")

    def _receive_otlp(self, body: bytes, content_type: str) -> int:
        otlp = self.otlp
        if otlp is None:
            from ._otlp import Otlp

            otlp = self.otlp = Otlp(
                self.intake.spans, self.intake.handlers, all_spans=self.settings.otel_all_spans, clock=self._clock
            )
        return otlp.receive(body, content_type)

    def release_otlp(self, force: bool = False) -> None:
        """Hand the OTLP spans that can be placed now to the intake: all of them when ``force`` or
        between invocations; those that came before the invocation under way began otherwise
        (under Managed Instances, where many run at once: those that waited ``OTLP_HOLD_S``)."""
        otlp = self.otlp
        if otlp is None:
            return
        if force:
            before = None
        elif self.settings.managed:
            before = self._clock() - OTLP_HOLD_S
        else:
            before = self._in_flight_since
        try:
            otlp.release(before)
        except Exception as exc:
            _log.once(f"otlp-release:{type(exc).__name__}", f"handing on OTLP spans failed: {exc!r}")

    def start_flusher(self) -> None:
        from ._flusher import Flusher

        self.flusher = Flusher(self, self._clock)
        self.intake.arrived = self.flusher.wake
        if self.telemetry is not None:
            self.telemetry.failed = self.flusher.wake
        self.flusher.start()
        _log.debug(
            f"no INVOKE events: sending in the background ({self.settings.mode}: "
            f"{self.settings.flush_at} events or {self.settings.flush_interval_ms} ms)"
        )

    def restored(self) -> None:
        """The environment was restored from its SnapStart snapshot (``_restore``): the connection
        to PostHog made before it is dropped, times read on the clock before it are forgotten
        (the sender's backoff, the policy's INVOKE gaps, when buffered events were added), the
        function's connections made before it are not mid-invocation, and from now on each trace
        says it ran in a restored environment."""
        if self.sender is not None:
            self.sender.restored()
        self.policy.restored()
        self.buffer.restamp()
        self.server.restored()
        self.intake.restored = True

    def before_snapshot(self) -> dict[str, Any]:
        """A SNAPSHOT frame: the function's Init is over and Lambda snapshots the environment next
        (SnapStart). What is buffered (spans made during Init, drops counted so far) is sent now,
        once, rather than by every environment restored from the snapshot. The answer says
        whether PostHog took it and how many events are still buffered."""
        restore = self.restore
        if restore is None or not restore.awaiting:
            _log.debug("a SNAPSHOT frame after Init or outside SnapStart: nothing sent for it")
            return {"sent": False, "kept": len(self.buffer)}
        self.spool.drain()
        sent = self.flush(self._clock() + SNAPSHOT_BUDGET_S, force=True)
        kept = len(self.buffer)
        if kept:
            _log.warn(
                f"{kept} events made during Init could not be sent before the snapshot: every "
                "environment restored from it sends its copy (under the same uuids: PostHog keeps one)"
            )
        else:
            _log.debug("before the snapshot: everything buffered was sent")
        return {"sent": sent, "kept": kept}

    # -- events from the Extensions API --------------------------------------------------------

    def invoke(self, event: Mapping[str, Any]) -> None:
        now = self._clock()
        self._in_flight_since = now
        deadline = self._deadline(event.get("deadlineMs"), 0.0, now + FLUSH_BUDGET_S)
        request_id = event.get("requestId")
        if self.telemetry is not None and isinstance(request_id, str) and request_id:
            self.telemetry.invoked(request_id)
        self.spool.drain()
        if self.invocations.announced != self._announced:
            self._announced = self.invocations.announced
            self.policy.saw_start()
        if self.telemetry is not None and self.intake.accepted != self._accepted:
            self.policy.saw_start()  # the function sends events: wait for the end of invocations again
        if self._sender(now) is None and self.key_store is None:
            return
        if self.telemetry is None and not self.policy.untraced and not self._traced():
            # Without runtimeDone to end the wait, waiting for a START that an untraced handler
            # never sends would only add its grace to the invocation.
            self.policy.missed_start()
        stats = self.buffer.stats()
        action = self.policy.on_invoke(now, stats.count, stats.size, stats.oldest)
        _log.debug(f"INVOKE {request_id}: {action} ({stats.count} events buffered)")
        flush_by = deadline - FLUSH_MARGIN_S
        if action == WAIT_FOR_END and isinstance(request_id, str) and request_id:
            outcome = self.wait_for_end(request_id, deadline - END_MARGIN_S)
            if outcome == "died":
                # Lambda resets the environment: SHUTDOWN comes at the next call of next, with
                # its own deadline, and sends what came and the failed trace. A flush now could
                # outlast that deadline (AWS's emulator kills an extension not back in next).
                _log.debug(f"the function's process died during invocation {request_id}: on to SHUTDOWN")
                self._accepted = self.intake.accepted
                return
            self._in_flight_since = None  # ended: its OTLP spans, sent before it returned, can go
            self.release_otlp()
            silent = self.intake.accepted == self._accepted  # no event since the last INVOKE
            if outcome == "runtime_done" and silent and not self.invocations.started(request_id):
                # runtimeDone comes at least 25 ms after the runtime (the shortest telemetry
                # buffering): no need to spend that on every invocation of an untraced function
                # that sends nothing.
                self.policy.missed_start()
                _log.debug("untraced invocation sent no events: not waiting until a START or an event comes")
            elif outcome == "no_start":
                self.policy.missed_start()
                _log.once(
                    "no-start",
                    f"no START frame from the function within {START_GRACE_S:g} s of invocation {request_id}: "
                    "not waiting for the end of invocations until one arrives (is the handler decorated with "
                    "@posthog_traced?); events are sent at later invocations and at shutdown",
                )
            self.server.settle(min(SETTLE_S, max(0.0, flush_by - self._clock())))
            self.spool.drain()
            self.flush(min(flush_by, self._clock() + FLUSH_BUDGET_S))
        elif action in (WAIT_FOR_END, FLUSH_NOW):
            self.flush(min(flush_by, now + FLUSH_BUDGET_S))
        self._accepted = self.intake.accepted

    def _traced(self) -> bool:
        """Whether anything says the function is traced: a process connected (a traced one does
        while its handler is decorated, in Init), or frames or events came (also by the spool)."""
        return self.invocations.announced > 0 or self.intake.accepted > 0 or self.server.ever_connected()

    def wait_for_end(self, request_id: str, until: float) -> str:
        """``ended`` (END frame), ``runtime_done`` (platform.runtimeDone), ``died`` (the
        function's process closed its connection mid-invocation), ``deadline`` or ``no_start``
        (without the Telemetry API: no START frame within the grace period)."""
        start_by = self._clock() + START_GRACE_S
        done_at: float | None = None
        telemetry = self.telemetry is not None
        invocations = self.invocations
        deaths = invocations.deaths
        while True:
            if invocations.ended(request_id):
                return "ended"
            if invocations.deaths != deaths:
                return "died"
            now = self._clock()
            if now >= until:
                return "deadline"
            started = invocations.started(request_id)
            done = invocations.done(request_id)
            limit = until
            if done:
                if done_at is None:
                    done_at = now
                if not started or now >= done_at + END_AFTER_DONE_S:
                    return "runtime_done"
                limit = min(until, done_at + END_AFTER_DONE_S)
            elif not started and not telemetry:
                if now >= start_by:
                    return "no_start"
                limit = min(until, start_by)

            def changed(started: bool = started, done: bool = done) -> bool:
                return (
                    invocations.ended(request_id)
                    or invocations.deaths != deaths
                    or invocations.started(request_id) != started
                    or invocations.done(request_id) != done
                )

            if not invocations.wait(changed, min(SPOOL_POLL_S, limit - now)):
                self.spool.drain()

    def shutdown(self, event: Mapping[str, Any]) -> None:
        now = self._clock()
        deadline = self._deadline(event.get("deadlineMs"), SHUTDOWN_MARGIN_S, now + SHUTDOWN_DEFAULT_S)
        _log.debug(f"SHUTDOWN ({event.get('shutdownReason')}), {deadline - now:.3f} s to flush")
        flusher, self.flusher = self.flusher, None
        if flusher is not None:  # a flush under way goes on; the last one waits for it (flush)
            flusher.stop((deadline - self._clock()) / 2)
        try:
            self.server.settle(min(SETTLE_S, (deadline - self._clock()) / 4))
            self.spool.drain()
            if self.telemetry is not None:  # the last reports come after the last invocation
                self.telemetry.wait_reports(min(REPORT_WAIT_S, (deadline - self._clock()) / 4))
            if flusher is not None:
                self.complete_failed()
            reason = shutdown_reason(event.get("shutdownReason"))
            if reason in ("timeout", "failure"):
                self.report_failed(reason)
            if self.sender is not None or self.key_store is not None:
                self.flush(deadline, force=True)
                left = len(self.buffer)
                if left:
                    _log.warn(f"{left} events could not be sent to PostHog before shutdown and are lost")
            if self.sender is not None:
                self.sender.close()
        finally:
            self.server.close(join_timeout=0.1)
            if self.otlp_server is not None:
                self.otlp_server.close()
            if self.telemetry is not None:
                self.telemetry.close()
            totals = self.drops.totals()
            if totals:
                listed = ", ".join(f"{reason}={count}" for reason, count in sorted(totals.items()))
                _log.warn(f"dropped during this environment's life: {listed}")

    def report_failed(self, reason: str) -> None:
        """The environment is reset because an invocation timed out or its runtime died: each
        announced trace that never arrived goes to PostHog as failed (see ``_traces``)."""
        for announced in self.intake.traces.take_unfinished():
            status = self.invocations.status(announced.request_id)
            if status not in ("timeout", "failure", "error"):
                status = reason
            self._send_failed(announced, status)

    def complete_failed(self) -> int:
        """Where invocations fail alone (no INVOKE events): the trace of each invocation Lambda
        reported as timed out or failed (``platform.report``), or that is well past its deadline,
        completed as failed as at a reset; how many. Its handler may still finish (a timed-out
        process lives on): what it sends then of the spans sent cut short is dropped (``late``)."""
        reported = self.telemetry.take_failed() if self.telemetry is not None else []
        overdue = self.intake.traces.overdue(int((time.time() - OVERDUE_S) * 1000))
        if not reported and not overdue:
            return 0
        # What the function wrote before it timed out or died is taken in first: its $ai_trace
        # may be among it, and a trace that came is not cut.
        self.server.settle(SETTLE_S)
        completed = 0
        for request_id, status in [*reported, *((request_id, "timeout") for request_id in overdue)]:
            announced = self.intake.traces.take(request_id)
            if announced is not None:
                self._send_failed(announced, status)
                completed += 1
        return completed

    def _send_failed(self, announced: Announced, status: str) -> None:
        """Send ``announced``'s trace as failed with Lambda's ``status`` (see ``_traces``)."""
        from ._traces import failed_events

        events, unreadable = failed_events(announced, status, time.time())
        _log.warn(
            f"invocation {announced.request_id} ended with Lambda status {status}: sending its trace "
            f"{announced.trace_id} as failed, with {len(announced.open)} spans that did not end"
        )
        assert announced.header is not None  # take and take_unfinished return only those with one
        max_event_bytes = trace_max_event_bytes(announced.header)
        for event in events:
            self.intake.event(event, max_event_bytes)
        self.intake.traces.cut(announced)
        detail = f"a running span's record of trace {announced.trace_id} cannot be completed"
        self.drops.add("events_invalid", unreadable, detail)

    # -- flushing -------------------------------------------------------------------------------

    def flush(self, deadline: float, *, force: bool = False) -> bool:
        """Send what is buffered (and the drops counted since the last report) until ``deadline``;
        False when nothing could be sent (no sender yet, backing off, PostHog failing)."""
        if not self._flushing.acquire(timeout=max(0.0, deadline - self._clock())):
            _log.debug("the flush under way did not end in time for this one")
            return False
        try:
            return self._flush(deadline, force)
        finally:
            self._flushing.release()

    def _flush(self, deadline: float, force: bool) -> bool:
        self.release_otlp(force)
        if self.telemetry is not None:
            self.telemetry.apply(self.intake, force)
        sender = self._sender(deadline if force else min(deadline, self._clock() + KEY_WAIT_S))
        if sender is None or not sender.ready(force):
            return False
        counts = self.drops.take()
        if counts:
            report = dropped_event(counts)
            self.buffer.add(report["uuid"], DROPPED_EVENT, limits.dumps(report))
        if not len(self.buffer):
            return True
        started = self._clock()
        result = sender.flush(deadline, force=force)
        _log.debug(f"flush: {result} in {(self._clock() - started) * 1000:.0f} ms, {len(self.buffer)} left")
        if sender.refused is not None:
            self.intake.discard = "events_api_key_refused"
            self.buffer.discard("events_api_key_refused")
        return result.stopped is None

    def _sender(self, wait_until: float) -> Sender | None:
        """The sender, made once a key read from a secret store is there (waiting for it until
        ``wait_until`` at most); None while it is not, or when there is no key."""
        store = self.key_store
        if self.sender is not None or store is None:
            return self.sender
        done, key = store.wait(wait_until - self._clock())
        if not done:
            return None  # still reading: events stay buffered
        if key is None:  # failed, said by the store: from now on as without a key
            self.key_store = None
            self.intake.discard = "events_no_api_key"
            self.buffer.discard("events_no_api_key")
            return None
        from ._sender import Sender

        host = self.settings.host
        assert host is not None  # a store is only used when events are not discarded for the host
        self.sender = Sender(
            host, key, self.buffer, clock=self._clock, key_origin=store.describe(), refetch=store.refetch
        )
        return self.sender

    def _deadline(self, deadline_ms: object, margin: float, default: float) -> float:
        """A deadline in Unix ms as a time on this extension's clock, ``margin`` seconds earlier."""
        if isinstance(deadline_ms, int | float) and not isinstance(deadline_ms, bool):
            return self._clock() + (deadline_ms / 1000 - time.time()) - margin
        return default
