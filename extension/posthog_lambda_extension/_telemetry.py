"""The Telemetry API: when the runtime is done with an invocation, and what the invocation cost.

The extension subscribes during Init (after registering, before its first ``next``) to the
``platform`` records, delivered by HTTP POST to a small receiver (``TelemetryReceiver``) on
``sandbox.localdomain``:

- ``platform.runtimeDone`` ends an invocation for the main loop even when the handler is not
  decorated or its process died, so ``end`` mode never waits for a START or the deadline.
- ``platform.report`` (delivered late: at the next invoke, or at shutdown) carries the billed
  duration and memory. Its figures, and the estimated cost, are properties of that invocation's
  ``$ai_trace``, which the buffer holds back until the report comes (``awaits``, ``apply``):
  each event costs the user money, and five figures as events would double a small trace's
  count. A report that does not come never keeps its trace: it goes without the figures once
  two more INVOKEs and a second have passed (``_overdue``), and at SHUTDOWN. Only when asked
  (``POSTHOG_LAMBDA_METRIC_EVENTS``) do figures that find their trace sent anyway go as
  ``$ai_metric`` events linked to it, made by the one event builder with the trace's header
  (``events.header_of``): same user, person-profile rule, session and groups as the trace.

On Lambda Managed Instances the subscription must use schema ``2025-01-29`` (others are refused),
no ``runtimeDone`` comes, and each ``platform.report`` arrives as its invocation ends, with its
status: a ``timeout`` or ``failure`` there is an invocation that failed alone (the environment
goes on), whose trace the extension completes as failed (``take_failed``). Its figures are the
duration only, and its cost is not per GB-second (the user pays for the instances), so no
``lambda_cost_usd``; figures that find their trace already sent are left out rather than sent
as ``$ai_metric`` events: the trace's own latency says the same, and each event costs money.

With SnapStart every invocation runs in an environment restored from a snapshot taken after
Init, which Init's own records describe (after a restore they may arrive again, from the
snapshot's Init, hours old: they carry no request id and are not used). A ``platform.restore*``
record is a sign of the restore (``_restore``); ``platform.restoreReport``'s duration (or the
first ``platform.report``'s ``restoreDurationMs``) goes on the first invocation's trace as
``lambda_restore_duration_ms``, with ``lambda_restore_status`` when the restore did not succeed;
and a report's ``initDurationMs``, if one came, would be the snapshot's Init, not this
environment's: it is left out.

A receiver that cannot bind or a subscription that is refused is one log line; the extension
goes on without it (as before: START/END frames and the deadline).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time

from posthog_lambda_contract import environment, limits
from posthog_lambda_contract.events import make_event, now
from posthog_lambda_contract.schema import LAMBDA_RESTORE_DURATION_MS, LAMBDA_RESTORE_STATUS

from . import _log
from ._invocations import RECENT, forget_oldest

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

    from posthog_lambda_contract.schema import Event

    from ._api import ExtensionsApi
    from ._intake import Intake
    from ._invocations import Invocations
    from ._traces import BufferedTrace, Traces

SANDBOX_HOST = "sandbox.localdomain"
SCHEMA_VERSION = "2022-12-13"
MANAGED_SCHEMA_VERSION = "2025-01-29"
"""The only schema Lambda Managed Instances accepts."""
FAILED = ("timeout", "failure")
"""Statuses of an invocation that ended without its handler's end (a report's ``status``)."""
BUFFERING = {"maxItems": 1000, "maxBytes": 262144, "timeoutMs": 25}
"""The smallest delivery delay Lambda allows: runtimeDone must arrive while the loop waits."""
MAX_BODY = 8 * 1024 * 1024
CONNECTION_TIMEOUT_S = 2.0
PRICES_VARIABLE = environment.POSTHOG_LAMBDA_PRICES
DEFAULT_PRICES = {"x86_64": 0.0000166667, "arm64": 0.0000133334, "request": 0.0000002}
"""USD per GB-second by architecture, and per request (AWS's list prices, us-east-1)."""

HOLD_INVOKES = 2
HOLD_S = 1.0
"""On-demand, an ``$ai_trace`` waits for its report until ``HOLD_INVOKES`` more INVOKEs have come
and ``HOLD_S`` has passed on the clock (which stands still while the environment is frozen): a
report comes at least 25 ms after its invocation (Lambda's shortest buffering), so under
frequent short invocations several later ones may end before it does."""
MANAGED_HOLD_S = 2.0
"""On Managed Instances, where a report comes as its invocation ends, an ``$ai_trace`` waits for
it this long at most."""
INIT_DURATION = "lambda_init_duration_ms"
# platform.report metric -> property on the $ai_trace (and $ai_metric_name)
FIGURES = (
    ("billedDurationMs", "lambda_billed_duration_ms"),
    ("durationMs", "lambda_duration_ms"),
    ("memorySizeMB", "lambda_memory_size_mb"),
    ("maxMemoryUsedMB", "lambda_max_memory_used_mb"),
    ("initDurationMs", INIT_DURATION),
    ("restoreDurationMs", LAMBDA_RESTORE_DURATION_MS),
)
COST = "lambda_cost_usd"
RESTORE_RECORDS = ("platform.restoreStart", "platform.restoreRuntimeDone", "platform.restoreReport")
RESTORE_FIGURES = (LAMBDA_RESTORE_DURATION_MS, LAMBDA_RESTORE_STATUS)
"""What the restore gives the first invocation's trace, once."""


def subscription(port: int, managed: bool = False) -> dict[str, Any]:
    """The subscription request's body for a receiver on ``port`` (``managed``: on Lambda
    Managed Instances)."""
    return {
        "schemaVersion": MANAGED_SCHEMA_VERSION if managed else SCHEMA_VERSION,
        "destination": {"protocol": "HTTP", "URI": f"http://{SANDBOX_HOST}:{port}"},
        "types": ["platform"],
        "buffering": dict(BUFFERING),
    }


def architecture(machine: str | None = None) -> str:
    """``arm64`` or ``x86_64``: the price list's name for this machine."""
    machine = (machine if machine is not None else os.uname().machine).lower()
    return "arm64" if machine in ("aarch64", "arm64") or machine.startswith("armv8") else "x86_64"


def prices(environ: Mapping[str, str]) -> tuple[dict[str, float], str | None]:
    """The price table (defaults overridden by ``POSTHOG_LAMBDA_PRICES``) and a problem to log."""
    table = dict(DEFAULT_PRICES)
    raw = environ.get(PRICES_VARIABLE, "").strip()
    if not raw:
        return table, None
    try:
        given = json.loads(raw)
    except ValueError:
        given = None
    if not isinstance(given, dict) or not given:
        return table, f"{PRICES_VARIABLE} is not a JSON object of prices; using the default prices"
    for name, value in given.items():
        if name not in table:
            return table, f"{PRICES_VARIABLE} has an unknown key {name!r} (x86_64, arm64, request); using the defaults"
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e6:
            return table, f"{PRICES_VARIABLE}: {name} is not a non-negative number; using the default prices"
    table.update({name: float(value) for name, value in given.items()})
    return table, None


def cost_usd(memory_mb: float, billed_ms: float, table: Mapping[str, float], arch: str) -> float:
    """GB-seconds times the architecture's price, plus the request's price."""
    return memory_mb / 1024 * billed_ms / 1000 * table[arch] + table["request"]


class Telemetry:
    """Records from the receiver: runtimeDone goes straight to the invocation tracker, reports
    wait for the main loop (``apply``), which owns the buffer's edits."""

    def __init__(
        self,
        invocations: Invocations,
        traces: Traces,
        environ: Mapping[str, str] = os.environ,
        *,
        managed: bool = False,
        snap_start: bool = False,
        metric_events: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.invocations = invocations
        self.traces = traces
        self.managed = managed
        self.snap_start = snap_start
        self.metric_events = metric_events
        """Figures that find their trace sent already go as ``$ai_metric`` events (else not)."""
        self._clock = clock
        self._held: dict[str, tuple[str, int, float]] = {}
        """Request id -> (uuid of its ``$ai_trace`` held back in the buffer, how many INVOKEs had
        come when it was, when on the clock)."""
        self._invoked = 0
        self._reported: dict[str, None] = {}
        """Request ids whose report came: an ``$ai_trace`` of any other invocation waits for its
        own (``awaits``)."""
        self._unmatched: dict[str, dict[str, Any]] = {}
        """Request id -> its report, come before its trace (or for an untraced invocation)."""
        self.restore_seen: Callable[[str], object] | None = None
        """Called with the record's type when a ``platform.restore*`` record arrives (``snap_start``
        only): the sign of the restore (``_restore``)."""
        self.restore_request: str | None = None
        """The first invocation after the restore (``snap_start``: the first one invoked)."""
        self._restore: dict[str, Any] = {}
        """The restore's figures from its own records (``RESTORE_FIGURES``)."""
        self._restore_given: set[str] = set()
        """Those of ``RESTORE_FIGURES`` already on the first invocation's trace."""
        self.failed: threading.Event | None = None
        """Set when a report says an invocation timed out or failed (``managed`` only)."""
        self._failed: list[tuple[str, str]] = []
        self.prices, problem = prices(environ)
        if problem is not None:
            _log.warn(problem)
        self.arch = architecture()
        self.subscribed = False
        self._arrived = threading.Condition()
        self._reports: list[dict[str, Any]] = []
        self._awaited: dict[str, None] = {}
        """Request ids invoked whose report has not arrived."""
        self._receiver: TelemetryReceiver | None = None

    # -- set-up ----------------------------------------------------------------------------------

    def start(self, api: ExtensionsApi, identifier: str, environ: Mapping[str, str] = os.environ) -> bool:
        """Listen and subscribe; False (said in one line) when either fails."""
        host = "0.0.0.0" if environ.get("AWS_SAM_LOCAL") else SANDBOX_HOST
        try:
            receiver = TelemetryReceiver(host, self.receive_body)
        except OSError as exc:
            _log.warn(f"cannot listen for the Telemetry API on {host} ({exc}); going on without it")
            return False
        try:
            api.subscribe_telemetry(identifier, subscription(receiver.port, self.managed))
        except Exception as exc:
            _log.warn(f"cannot subscribe to the Telemetry API ({exc}); going on without it")
            receiver.close()
            return False
        self._receiver = receiver
        self.subscribed = True
        _log.debug(f"subscribed to the Telemetry API on port {receiver.port}")
        return True

    def close(self) -> None:
        receiver, self._receiver = self._receiver, None
        if receiver is not None:
            receiver.close()

    # -- records ---------------------------------------------------------------------------------

    def receive_body(self, body: bytes) -> None:
        try:
            records = json.loads(body)
        except ValueError:
            _log.once("telemetry:json", "the Telemetry API sent a batch that is not JSON")
            return
        self.receive(records)

    def receive(self, records: Any) -> None:
        """A batch POSTed by Lambda: a list of ``{time, type, record}``."""
        if not isinstance(records, list):
            return
        for item in records:
            if not isinstance(item, dict) or not isinstance(item.get("record"), dict):
                continue
            record: dict[str, Any] = item["record"]
            kind = item.get("type")
            if kind in RESTORE_RECORDS and self.snap_start:
                self._restored(str(kind), record)
                continue
            request_id = record.get("requestId")
            if not isinstance(request_id, str) or not request_id:
                continue  # platform.initStart, initReport... (on SnapStart, the snapshot's)
            if kind == "platform.runtimeDone":
                status = record.get("status")
                _log.debug(f"runtimeDone {request_id} ({status})")
                self.invocations.runtime_done(request_id, status if isinstance(status, str) else "")
            elif kind == "platform.report":
                status = record.get("status")
                failed = self.managed and status in FAILED
                with self._arrived:
                    self._reports.append(record)
                    del self._reports[:-RECENT]
                    self._awaited.pop(request_id, None)
                    self._reported[request_id] = None
                    forget_oldest(self._reported)
                    if failed:
                        self._failed.append((request_id, str(status)))
                        del self._failed[:-RECENT]
                    self._arrived.notify_all()
                if failed and self.failed is not None:
                    self.failed.set()

    def _restored(self, kind: str, record: Mapping[str, Any]) -> None:
        """A ``platform.restore*`` record: the restore's figures, and the sign."""
        figures: dict[str, Any] = {}
        metrics = record.get("metrics")
        duration = metrics.get("durationMs") if isinstance(metrics, dict) else None
        if kind == "platform.restoreReport" and isinstance(duration, int | float) and not isinstance(duration, bool):
            figures[LAMBDA_RESTORE_DURATION_MS] = duration
        status = record.get("status")
        if isinstance(status, str) and status and status != "success":
            figures[LAMBDA_RESTORE_STATUS] = status
            _log.once("restore:status", f"Lambda reports the restore from the snapshot as {status} ({kind})")
        if figures:
            with self._arrived:
                self._restore.update(figures)
        if self.restore_seen is not None:
            self.restore_seen(kind)

    def invoked(self, request_id: str) -> None:
        """An INVOKE: its report is to come."""
        if self.subscribed:
            with self._arrived:
                if request_id not in self._awaited:
                    self._invoked += 1
                self._awaited[request_id] = None
                forget_oldest(self._awaited)
                if self.snap_start and self.restore_request is None:
                    self.restore_request = request_id

    def awaits(self, request_id: str, uuid: str) -> bool:
        """Whether the ``$ai_trace`` ``uuid`` of ``request_id``, just buffered and held back, is to
        wait for its report (subscribed, every invocation gets one); if so, it waits until
        ``apply`` puts the report's figures on it (or gives up on them: ``_overdue``)."""
        with self._arrived:
            if not self.subscribed:
                return False
            # Its report has not come yet (its INVOKE may be taken in after its frames), or it came
            # first and waits for it.
            coming = request_id in self._unmatched or request_id not in self._reported
            if coming:
                self._held[request_id] = (uuid, self._invoked, self._clock())
                forget_oldest(self._held)
            return coming

    def take_failed(self) -> list[tuple[str, str]]:
        """(request id, status) of each invocation reported timed out or failed since the last
        call (``managed`` only: elsewhere the environment resets and SHUTDOWN says so)."""
        with self._arrived:
            failed, self._failed = self._failed, []
        return failed

    def wait_reports(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every invocation's report; True if all came."""
        with self._arrived:
            return self._arrived.wait_for(lambda: not self._awaited, max(0.0, timeout))

    # -- figures ---------------------------------------------------------------------------------

    def apply(self, intake: Intake, force: bool = False) -> int:
        """Put the reports received so far on their traces while they wait in the buffer (else,
        when asked, send them as ``$ai_metric`` events, taken in like any other event), and let
        the traces held for them go; ``force`` (SHUTDOWN): every held trace goes. How many
        reports found their trace."""
        with self._arrived:
            reports, self._reports = self._reports, []
            # Reports that came before their trace (its frames read late), now that it is here.
            reports += [self._unmatched.pop(rid) for rid in list(self._unmatched) if self.traces.get(rid)]
        applied = 0
        for report in reports:
            request_id = report["requestId"]
            trace = self.traces.get(request_id)
            if trace is None:
                # An untraced invocation, or a trace still on its way: kept for a while.
                with self._arrived:
                    self._unmatched[request_id] = report
                    forget_oldest(self._unmatched)
                continue
            figures: dict[str, Any] = self.figures(report)
            if self.snap_start:
                self._with_restore(request_id, figures)
            if not figures:
                continue
            applied += 1
            self._give(intake, trace, request_id, figures)
        if self.snap_start:
            self._give_restore(intake)
        # Each report's trace can go now, figures on; and those whose report did not come in time.
        for report in reports:
            self._let_go(intake, report["requestId"])
        for request_id in self._overdue(force):
            _log.debug(
                f"no platform.report for invocation {request_id} in time: its trace goes without Lambda's figures"
            )
            self._let_go(intake, request_id)
        return applied

    def _let_go(self, intake: Intake, request_id: str) -> None:
        with self._arrived:
            held = self._held.pop(request_id, None)
        if held is not None:
            intake.buffer.release(held[0])

    def _overdue(self, force: bool) -> list[str]:
        """Held traces not to wait for any longer: all of them when ``force`` (SHUTDOWN); on-demand
        those held ``HOLD_INVOKES`` INVOKEs and ``HOLD_S`` ago or more; on Managed Instances, where
        reports come as invocations end, those held ``MANAGED_HOLD_S``."""
        now = self._clock()
        with self._arrived:
            if force:
                return list(self._held)
            if self.managed:
                return [rid for rid, (_, _, at) in self._held.items() if now - at >= MANAGED_HOLD_S]
            return [
                rid
                for rid, (_, seen, at) in self._held.items()
                if self._invoked - seen >= HOLD_INVOKES and now - at >= HOLD_S
            ]

    def _give(self, intake: Intake, trace: BufferedTrace, request_id: str, figures: Mapping[str, Any]) -> None:
        """``figures`` onto the buffered trace, else as ``$ai_metric`` events (numbers only)."""
        if self.snap_start:
            with self._arrived:
                self._restore_given.update(name for name in RESTORE_FIGURES if name in figures)
        if intake.buffer.patch(trace.uuid, _adder(figures)) or self.managed:
            return
        if not self.metric_events:
            _log.debug(f"Lambda's figures for trace {trace.trace_id} came after it was sent: left out")
            return
        numbers = {k: v for k, v in figures.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        for event in metric_events(trace, request_id, numbers):
            intake.event(event)

    def _with_restore(self, request_id: str, figures: dict[str, Any]) -> None:
        """A report's figures on SnapStart: the restore's go to the first invocation, once (from
        the report itself, else from the restore's records); Init's are the snapshot's, left out."""
        figures.pop(INIT_DURATION, None)
        with self._arrived:
            first = request_id == self.restore_request
            for name in RESTORE_FIGURES:
                value = figures.pop(name, None)
                if not first or name in self._restore_given:
                    continue
                value = self._restore.get(name) if value is None else value
                if value is not None:
                    figures[name] = value

    def _give_restore(self, intake: Intake) -> None:
        """The restore's figures that came after the first invocation's report (or before its
        trace), onto that trace once it is there."""
        with self._arrived:
            request_id = self.restore_request
            left = {name: value for name, value in self._restore.items() if name not in self._restore_given}
        if request_id is None or not left:
            return
        trace = self.traces.get(request_id)
        if trace is not None:
            self._give(intake, trace, request_id, left)

    def figures(self, report: Mapping[str, Any]) -> dict[str, float]:
        """The properties a report gives its trace, the estimated cost included."""
        metrics = report.get("metrics")
        if not isinstance(metrics, dict):
            return {}
        figures: dict[str, float] = {}
        for key, name in FIGURES:
            value = metrics.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                figures[name] = value
        memory = figures.get("lambda_memory_size_mb")
        billed = figures.get("lambda_billed_duration_ms")
        if memory is not None and billed is not None and not self.managed:
            figures[COST] = cost_usd(memory, billed, self.prices, self.arch)
        return figures


def metric_events(trace: BufferedTrace, request_id: str, figures: Mapping[str, float]) -> list[Event]:
    """One ``$ai_metric`` event per figure, linked to the trace and sharing its header."""
    wall = now()
    return [
        make_event(
            "$ai_metric",
            trace.header,
            {
                "$ai_trace_id": trace.trace_id,
                "$ai_metric_name": name,
                "$ai_metric_value": value,
                "lambda_request_id": request_id,
            },
            None,
            wall,
        )
        for name, value in figures.items()
    ]


def _adder(figures: Mapping[str, Any]) -> Callable[[bytes], bytes | None]:
    return lambda data: _with_properties(data, figures)


def _with_properties(data: bytes, figures: Mapping[str, Any]) -> bytes | None:
    try:
        event = json.loads(data)
    except ValueError:
        return None
    properties = event.get("properties") if isinstance(event, dict) else None
    if not isinstance(properties, dict):
        return None
    properties.update(figures)
    return limits.dumps(event)


class TelemetryReceiver:
    """A minimal HTTP/1.1 server for Lambda's POSTs: one connection at a time, each answered 200
    and closed. Not ``http.server``: it would double the extension's imports and memory."""

    def __init__(self, host: str, sink: Callable[[bytes], None]) -> None:
        self._sink = sink
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.bind((host, 0))  # port 0: the system picks a free one
            self._sock.listen(16)
        except OSError:
            self._sock.close()
            raise
        self.port: int = self._sock.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._serve, name="telemetry", daemon=True).start()

    def _serve(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                if self._closed:
                    return
                continue
            try:
                with conn:
                    conn.settimeout(CONNECTION_TIMEOUT_S)
                    status, body = _read_request(conn)
                    # Taken in before the answer: once Lambda (or a test) has its 200, the
                    # records are known.
                    if body is not None:
                        self._sink(body)
                    conn.sendall(f"HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
            except Exception as exc:  # one bad connection must not stop the receiver
                _log.once(f"telemetry:{type(exc).__name__}", f"reading telemetry failed: {exc!r}")

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()


def _read_request(conn: socket.socket) -> tuple[str, bytes | None]:
    """The status to answer and the request's body (None: nothing to use)."""
    data = bytearray()
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return "400 Bad Request", None
        data += chunk
        if len(data) > MAX_BODY:
            return "413 Content Too Large", None
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    length = None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            length = int(value.strip())
    if not head.startswith(b"POST ") or length is None:
        return "400 Bad Request", None
    if length > MAX_BODY:
        return "413 Content Too Large", None
    rest = bytearray(body)
    while len(rest) < length:
        chunk = conn.recv(min(65536, length - len(rest)))
        if not chunk:
            return "400 Bad Request", None
        rest += chunk
    return "200 OK", bytes(rest[:length])
