"""Every environment variable posthog-lambda reads, with its default, and how a value is read.

One module for both sides, so that the README's configuration table, the library, the
extension and the tests agree: a test checks that the README documents each name defined here
(a constant whose value is its own name). Each constant's docstring is the documentation of
that variable. Explicit arguments (``configure()``, decorator options) always win over these.
``posthog_lambda.constants`` is this module under its public name.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

POSTHOG_API_KEY = "POSTHOG_API_KEY"
"""PostHog project API key (``phc_...``). Default: unset. Needed by whatever sends to PostHog;
without it and without the extension, events are counted and dropped. Never logged unmasked."""

POSTHOG_HOST = "POSTHOG_HOST"
"""PostHog host. Default ``https://us.i.posthog.com``; EU ``https://eu.i.posthog.com`` or a
self-hosted URL."""

POSTHOG_PRIVACY_MODE = "POSTHOG_PRIVACY_MODE"
"""``true`` drops inputs and outputs (``$ai_input``, ``$ai_output_choices``,
``$ai_input_state``, ``$ai_output_state``) from every event kind, keeping tokens, latency,
model and cost. Default ``false``."""

POSTHOG_DEFAULT_DISTINCT_ID = "POSTHOG_DEFAULT_DISTINCT_ID"
"""distinct_id for traces whose decorator gives none. Default: unset, meaning the trace id is
used with ``$process_person_profile: false`` (no person profile)."""

POSTHOG_LAMBDA_ENABLED = "POSTHOG_LAMBDA_ENABLED"
"""``false`` turns every decorator and span into a pass-through that records nothing.
Default ``true``."""

POSTHOG_LAMBDA_DEBUG = "POSTHOG_LAMBDA_DEBUG"
"""``true`` makes the ``posthog_lambda`` logger print to stderr at DEBUG level. Default
``false``: the library is silent."""

POSTHOG_LAMBDA_CAPTURE_INPUT = "POSTHOG_LAMBDA_CAPTURE_INPUT"
"""``false`` stops recording the handler's event and decorated functions' arguments as
``$ai_input_state``. Default ``true``."""

POSTHOG_LAMBDA_CAPTURE_OUTPUT = "POSTHOG_LAMBDA_CAPTURE_OUTPUT"
"""``false`` stops recording return values as ``$ai_output_state``. Default ``true``."""

POSTHOG_LAMBDA_REDACT = "POSTHOG_LAMBDA_REDACT"
"""``false`` turns off redaction of sensitive keys. Default ``true``."""

POSTHOG_LAMBDA_REDACT_KEYS = "POSTHOG_LAMBDA_REDACT_KEYS"
"""Comma-separated key names whose values are replaced by ``[REDACTED]`` wherever they occur
in captured data (case, ``-`` and ``_`` ignored). Replaces the default list: authorization,
proxy-authorization, cookie, cookies, set-cookie, x-api-key, api-key, apikey, x-auth-token,
password, passwd, secret, client-secret, token, access-token, refresh-token, id-token,
session-token, x-amz-security-token, private-key."""

POSTHOG_LAMBDA_MAX_EVENT_BYTES = "POSTHOG_LAMBDA_MAX_EVENT_BYTES"
"""Largest serialized event in bytes; larger values are truncated with a visible marker, never
dropped. Default 921600 (900 KiB, under ``/batch/``'s per-event limit). ``$ai_*`` events may
be allowed up to 8323072 (``/i/v0/ai/batch/`` takes 8 MiB); other events stay at 900 KiB."""

POSTHOG_LAMBDA_SOCKET = "POSTHOG_LAMBDA_SOCKET"
"""Path of the Unix socket the extension listens on and the library hands events to. Default
``/tmp/posthog-lambda.sock``. The library uses it when it exists, else the direct fallback."""

POSTHOG_LAMBDA_SPOOL_DIR = "POSTHOG_LAMBDA_SPOOL_DIR"
"""Directory where the library appends frames when the socket cannot take them in time, and
which the extension drains. Default ``/tmp/posthog-lambda-spool``."""

POSTHOG_LAMBDA_FLUSH = "POSTHOG_LAMBDA_FLUSH"
"""When the extension sends: ``end`` (after each invocation, before it calls next: billed time,
never response time), ``batch`` (on INVOKE when POSTHOG_FLUSH_AT events or POSTHOG_FLUSH_INTERVAL
ms have accumulated, in parallel with the handler) or ``adaptive`` (``end`` while invocations are
rare, ``batch`` once they come faster than the flush interval). Always everything at SHUTDOWN.
Default ``adaptive``. On Lambda Managed Instances (no INVOKE events, never frozen) the extension
sends from a background thread: ``end`` as soon as an invocation has ended, ``batch`` and
``adaptive`` when POSTHOG_FLUSH_AT events or POSTHOG_FLUSH_INTERVAL ms have accumulated."""

POSTHOG_FLUSH_AT = "POSTHOG_FLUSH_AT"
"""``batch`` mode: flush once this many events are buffered. Default 10 (@mastra/posthog's
serverless setting); 100 on Lambda Managed Instances, where many invocations run at once."""

POSTHOG_FLUSH_INTERVAL = "POSTHOG_FLUSH_INTERVAL"
"""``batch`` mode: flush once the oldest buffered event is this many milliseconds old. Default
2000; 1000 on Lambda Managed Instances, where nothing else wakes the extension."""

POSTHOG_DISABLED = "POSTHOG_DISABLED"
"""``true`` makes the extension register and then discard (counted) whatever it receives,
without sending anything. Default ``false``."""

POSTHOG_LAMBDA_BUFFER_BYTES = "POSTHOG_LAMBDA_BUFFER_BYTES"
"""Most bytes of events the extension keeps while PostHog cannot take them; beyond it the oldest
are dropped and counted. Default: a tenth of the function's memory (12.8 MB at 128 MB)."""

POSTHOG_API_KEY_SECRET_ARN = "POSTHOG_API_KEY_SECRET_ARN"
"""Extension: ARN or name of an AWS Secrets Manager secret holding the project API key, either
as the whole value or as a JSON object's ``POSTHOG_API_KEY`` or ``api_key`` field. Read with
aws-lambda-powertools after the extension registered; when PostHog refuses the key (401/403) it
is read again once, so a rotated key is picked up. Needs ``secretsmanager:GetSecretValue`` (and
``kms:Decrypt`` for a customer managed key). Default: unset. Precedence: ``POSTHOG_API_KEY``, then
this, then ``POSTHOG_API_KEY_SSM_PARAMETER``. If it cannot be read, one line says why and events
are discarded (counted)."""

POSTHOG_API_KEY_SSM_PARAMETER = "POSTHOG_API_KEY_SSM_PARAMETER"
"""Extension: name of an SSM Parameter Store parameter (SecureString, read decrypted) holding
the project API key, read and re-read like ``POSTHOG_API_KEY_SECRET_ARN``, which wins over it
(as ``POSTHOG_API_KEY`` wins over both). Needs ``ssm:GetParameter`` (and ``kms:Decrypt`` for a
customer managed key). Default: unset."""

POSTHOG_LAMBDA_PRICES = "POSTHOG_LAMBDA_PRICES"
"""Extension: the prices behind ``lambda_cost_usd`` (estimated from each invocation's
``platform.report``: memory GB × billed seconds × the architecture's price per GB-second, plus
the price of a request), as a JSON object with any of ``x86_64``, ``arm64`` (USD per GB-second)
and ``request`` (USD per request). Default ``{"x86_64": 0.0000166667, "arm64": 0.0000133334,
"request": 0.0000002}`` (AWS list prices). An invalid value is one log line, then the defaults."""

POSTHOG_LAMBDA_METRIC_EVENTS = "POSTHOG_LAMBDA_METRIC_EVENTS"
"""Extension: ``true`` sends Lambda's figures for an invocation (``platform.report``: billed
duration, memory, Init, restore, cost) as ``$ai_metric`` events when they come after its
``$ai_trace`` was sent. By default they are only ever properties of the ``$ai_trace``, which
waits for its report (until the second INVOKE after it, or SHUTDOWN; 2 s under Managed
Instances): each event costs money in PostHog. Default ``false``."""

POSTHOG_LAMBDA_OTLP_PORT = "POSTHOG_LAMBDA_OTLP_PORT"
"""Extension: the localhost port where it takes OTLP/HTTP traces (``POST /v1/traces``,
protobuf or JSON), so that an app whose OpenTelemetry exports to
``OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318`` needs no change. ``0`` turns it off.
Default ``4318``."""

POSTHOG_LAMBDA_OTEL_ALL_SPANS = "POSTHOG_LAMBDA_OTEL_ALL_SPANS"
"""``true`` sends every OpenTelemetry span (``posthog_lambda.otel``'s processor and OTLP
alike), those that are not GenAI as ``$ai_span``; by default only GenAI spans are sent (those
with ``gen_ai.*``, ``llm.*`` or ``traceloop.*`` attributes). Default ``false``."""


# -- set by Lambda, read by both sides ----------------------------------------------------------

INITIALIZATION_TYPE = "AWS_LAMBDA_INITIALIZATION_TYPE"
"""Set by Lambda for the runtime and the extensions: ``on-demand``, ``provisioned-concurrency``,
``snap-start`` or ``lambda-managed-instances``."""

MANAGED_INSTANCES = "lambda-managed-instances"
"""``INITIALIZATION_TYPE`` on Lambda Managed Instances: many invocations at once, each in its own
runtime process; extensions get SHUTDOWN only; the environment is never frozen."""

MAX_CONCURRENCY = "AWS_LAMBDA_MAX_CONCURRENCY"
"""Set by Lambda Managed Instances for the runtime only: how many invocations run at once (for
Python, how many worker processes the runtime forks)."""


def on_managed_instances(environ: Mapping[str, str]) -> bool:
    """Whether ``environ`` is that of a Lambda Managed Instances environment."""
    return environ.get(INITIALIZATION_TYPE, "").strip() == MANAGED_INSTANCES


SNAP_START = "snap-start"
"""``INITIALIZATION_TYPE`` with Lambda SnapStart: Init runs once, Lambda snapshots the memory of
the whole environment (the runtime's and the extensions' processes) and every invocation runs in
an environment restored from that snapshot, with whatever Init made, copied."""


def on_snap_start(environ: Mapping[str, str]) -> bool:
    """Whether ``environ`` is that of a SnapStart environment (snapshotted after Init, restored
    before any invocation)."""
    return environ.get(INITIALIZATION_TYPE, "").strip() == SNAP_START


# -- reading a value: one parser per kind, shared by the library and the extension -----------

DEFAULT_HOST = "https://us.i.posthog.com"
DEFAULT_SOCKET = "/tmp/posthog-lambda.sock"
DEFAULT_SPOOL = "/tmp/posthog-lambda-spool"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def parse_flag(raw: str) -> bool | None:
    """A boolean setting; None when the text is neither true nor false."""
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    return None


def parse_host(raw: str | None) -> str | None:
    """PostHog's base URL from a setting: empty means the US cloud, a bare host name gets
    ``https://``, a trailing ``/`` goes; None when it is not an http(s) URL."""
    host = (raw or "").strip().rstrip("/") or DEFAULT_HOST
    if "://" not in host:
        host = "https://" + host
    scheme, _, rest = host.partition("://")
    if scheme.lower() not in ("http", "https") or not rest or rest.startswith("/"):
        return None
    return f"{scheme.lower()}://{rest}"


def parse_redact_keys(raw: str | None) -> list[str] | None:
    """``POSTHOG_LAMBDA_REDACT_KEYS``'s key names; None when it is unset (the default list)."""
    if raw is None:
        return None
    return [key.strip() for key in raw.split(",") if key.strip()]


def parse_int(raw: str | None) -> int | None:
    """An integer setting; None when it is unset, empty or not an integer."""
    if raw is None or not raw.strip():
        return None
    try:
        return int(raw.strip())
    except ValueError:
        return None
