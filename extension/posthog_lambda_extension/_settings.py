"""The extension's configuration, read once from the environment at start-up.

A value that cannot be used never stops the extension: it falls back to the default (or, for
the key and host, to discarding events) and leaves one line in ``problems`` to log. A key kept
in a secret store is only named here; ``_secrets`` reads it once the extension has registered.
"""

from __future__ import annotations

from posthog_lambda_contract import environment
from posthog_lambda_contract.environment import (
    DEFAULT_HOST,
    DEFAULT_SOCKET,
    DEFAULT_SPOOL,
    on_managed_instances,
    on_snap_start,
    parse_flag,
    parse_host,
    parse_int,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

DEFAULT_NAME = "posthog-lambda"
MODES = ("adaptive", "end", "batch")
DEFAULT_FLUSH_AT = 10
DEFAULT_FLUSH_INTERVAL_MS = 2000
MANAGED_FLUSH_AT = 100
"""On Lambda Managed Instances: a few dozen invocations' traces per request (16 or more run at
once per vCPU), so that PostHog gets a handful of requests a second at most under load..."""
MANAGED_FLUSH_INTERVAL_MS = 1000
"""...and an event waits a second at most while it is quiet: nothing but this timer wakes the
extension there (no INVOKE), and PostHog's live views stay current."""
DEFAULT_MEMORY_MB = 128
DEFAULT_OTLP_PORT = 4318
"""OTLP/HTTP's own default port: what an app's exporter points at unless told otherwise."""
MIN_BUFFER_BYTES = 1024 * 1024
"""Room for a few ordinary events; smaller buffers would drop most traces on arrival."""


class Settings:
    __slots__ = (
        "_env",
        "api_key",
        "buffer_bytes",
        "debug",
        "disabled",
        "flush_at",
        "flush_interval_ms",
        "host",
        "key_store",
        "managed",
        "metric_events",
        "mode",
        "name",
        "otel_all_spans",
        "otlp_port",
        "problems",
        "snap_start",
        "socket_path",
        "spool_dir",
    )

    def __init__(self, environ: Mapping[str, str], argv: Sequence[str] = ()) -> None:
        self.problems: list[str] = []
        self._env = environ
        self.name = argv[0].rsplit("/", 1)[-1] if argv and argv[0] else DEFAULT_NAME
        self.debug = self._flag(environment.POSTHOG_LAMBDA_DEBUG, False)
        self.disabled = self._flag(environment.POSTHOG_DISABLED, False)
        self.api_key = environ.get(environment.POSTHOG_API_KEY, "").strip() or None
        self.key_store = self._key_store()
        self.host = self._host()
        self.managed = on_managed_instances(environ)
        """On Lambda Managed Instances: no INVOKE, so the extension flushes in the background."""
        self.snap_start = on_snap_start(environ)
        """With SnapStart: this process is snapshotted after Init and restored before every
        invocation (``_restore``)."""
        mode = environ.get(environment.POSTHOG_LAMBDA_FLUSH, "").strip().lower() or "adaptive"
        if mode not in MODES:
            self._problem(environment.POSTHOG_LAMBDA_FLUSH, mode, "is not one of adaptive, end, batch; using adaptive")
            mode = "adaptive"
        self.mode = mode
        flush_at, interval_ms = (
            (MANAGED_FLUSH_AT, MANAGED_FLUSH_INTERVAL_MS)
            if self.managed
            else (DEFAULT_FLUSH_AT, DEFAULT_FLUSH_INTERVAL_MS)
        )
        self.flush_at = self._positive(environment.POSTHOG_FLUSH_AT, flush_at)
        self.flush_interval_ms = self._positive(environment.POSTHOG_FLUSH_INTERVAL, interval_ms)
        memory_mb = self._positive("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", DEFAULT_MEMORY_MB)
        buffer_bytes = self._positive(environment.POSTHOG_LAMBDA_BUFFER_BYTES, memory_mb * 1024 * 1024 // 10)
        if buffer_bytes < MIN_BUFFER_BYTES:
            self._problem(
                environment.POSTHOG_LAMBDA_BUFFER_BYTES, str(buffer_bytes), f"is too small; using {MIN_BUFFER_BYTES}"
            )
            buffer_bytes = MIN_BUFFER_BYTES
        self.buffer_bytes = buffer_bytes
        self.socket_path = environ.get(environment.POSTHOG_LAMBDA_SOCKET, "").strip() or DEFAULT_SOCKET
        self.spool_dir = environ.get(environment.POSTHOG_LAMBDA_SPOOL_DIR, "").strip() or DEFAULT_SPOOL
        raw_port = self._env.get(environment.POSTHOG_LAMBDA_OTLP_PORT, "").strip()
        port = DEFAULT_OTLP_PORT if not raw_port else parse_int(raw_port)
        if port is None or not 0 <= port < 65536:
            self._problem(environment.POSTHOG_LAMBDA_OTLP_PORT, raw_port, f"is not a port; using {DEFAULT_OTLP_PORT}")
            port = DEFAULT_OTLP_PORT
        self.otlp_port = port
        """Where OTLP/HTTP is taken on localhost; 0 when not."""
        self.otel_all_spans = self._flag(environment.POSTHOG_LAMBDA_OTEL_ALL_SPANS, False)
        self.metric_events = self._flag(environment.POSTHOG_LAMBDA_METRIC_EVENTS, False)

    @property
    def discard_reason(self) -> str | None:
        """Why events are discarded instead of sent (a drop reason), or None when they are sent."""
        if self.disabled:
            return "events_disabled"
        if self.api_key is None and self.key_store is None:
            return "events_no_api_key"
        if self.host is None:
            return "events_bad_host"
        return None

    def _key_store(self) -> tuple[str, str] | None:
        """The variable naming where to read the key, and its value: the secret wins over the
        parameter, and an explicit POSTHOG_API_KEY over both (each one ignored is a problem)."""
        winner = environment.POSTHOG_API_KEY if self.api_key is not None else None
        store = None
        for variable in (environment.POSTHOG_API_KEY_SECRET_ARN, environment.POSTHOG_API_KEY_SSM_PARAMETER):
            name = self._env.get(variable, "").strip()
            if not name:
                continue
            if winner is not None:
                self._problem(variable, name, f"is ignored: {winner} is set and takes precedence")
                continue
            winner, store = variable, (variable, name)
        return store

    def _problem(self, name: str, value: str, why: str) -> None:
        self.problems.append(f"{name}={value!r} {why}")

    def _flag(self, name: str, default: bool) -> bool:
        raw = self._env.get(name)
        if raw is None:
            return default
        value = parse_flag(raw)
        if value is None:
            self._problem(name, raw, f"is not true or false; using {str(default).lower()}")
            return default
        return value

    def _positive(self, name: str, default: int) -> int:
        raw = self._env.get(name, "").strip()
        if not raw:
            return default
        value = parse_int(raw)
        if value is None or value <= 0:
            self._problem(name, raw, f"is not a positive integer; using {default}")
            return default
        return value

    def _host(self) -> str | None:
        raw = self._env.get(environment.POSTHOG_HOST, "").strip()
        host = parse_host(raw)
        if host is None:
            self._problem(
                environment.POSTHOG_HOST,
                raw,
                f"is not an http(s) URL such as {DEFAULT_HOST}; events from the function are discarded",
            )
        return host
