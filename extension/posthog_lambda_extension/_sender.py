"""Sends buffered events to PostHog and settles each one: delivered, refused for good, or kept.

``$ai_*`` events go to ``/i/v0/ai/batch/`` (8 MiB per event), the rest to ``/batch/``, in
gzipped requests of at most ``CHUNK_BYTES`` of events (PostHog takes 20 MiB), over one
kept-alive connection. Every uuid is sent unchanged on every attempt, so a resend after an
unknown outcome is deduplicated by PostHog. What each answer means:

- 2xx: delivered. Network errors, 408, 429 and 5xx: retried with jittered exponential backoff
  (at least Retry-After) until the caller's deadline; then the events stay buffered and the
  next flushes wait (Retry-After, else a backoff that grows across failed flushes) so that a
  PostHog outage does not add billed time to every invocation.
- 400: the batch is bisected until the refused events are isolated; only those are dropped.
- 413: the batch is split; a single event still refused is cut once (to 900 KiB, or to half
  its size if it was already smaller) and dropped if refused again.
- 404 on the AI endpoint (older self-hosted PostHog): from then on ``$ai_*`` events go to
  ``/batch/``, cut to its 900 KiB per-event limit.
- 401/403: the key is wrong. A key from a secret store (``refetch``) is read again, at most
  once until something is delivered (no loop); if it changed (rotated), the refused request
  is resent with the new key. Otherwise the key will not change for this environment's life:
  said once, and nothing more is sent (the caller discards events from then on, counted).
- Anything else (a redirect, 404 on ``/batch/``): said once, events kept, flushes back off.

``http.client``, ``ssl`` and ``zlib`` load on the first flush, not at start-up. Worth keeping:
the list above is the sender's specification, one answer per case (tests/extension/test_sender.py
checks them against a real HTTP server); and the clock and the pause are injected, never read
from ``time`` directly, so that deadlines and backoff follow the loop's clock and can be tested
without waiting.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque

from posthog_lambda_contract import events, limits
from posthog_lambda_contract.keys import mask

from . import __version__, _log

TYPE_CHECKING = False
if TYPE_CHECKING:
    import http.client
    import ssl
    import zlib
    from collections.abc import Callable
    from email.message import Message

    from ._buffer import Buffer, Entry

AI_PATH = "/i/v0/ai/batch/"
BATCH_PATH = "/batch/"
CHUNK_BYTES = 5 * 1024 * 1024
"""Events per request, in bytes: well under PostHog's 20 MiB, and a small retry."""
BASE_DELAY_S = 0.1
MAX_DELAY_S = 2.0
MAX_RETRY_AFTER_S = 3600.0
MAX_COOLDOWN_S = 60.0
IDLE_RECONNECT_S = 50.0
"""A connection idle longer than this is replaced before use: load balancers close them."""

# How a chunk's delivery ended when it got no final HTTP status.
GAVE_UP = -1
"""Failed until the deadline left no time for another attempt."""
NO_TIME = -2
"""The deadline had passed before a first attempt."""


class Result:
    __slots__ = ("dropped", "requests", "sent", "stopped")

    def __init__(self) -> None:
        self.sent = 0
        self.dropped = 0
        self.requests = 0
        self.stopped: str | None = None
        """Why the flush ended with events left: ``cooldown`` (backing off after failures),
        ``deadline`` (failed until out of time), ``no_time``, ``refused`` (the key) or
        ``unexpected`` (an answer such as a redirect)."""

    def __repr__(self) -> str:
        return f"Result(sent={self.sent}, dropped={self.dropped}, requests={self.requests}, stopped={self.stopped})"


class Sender:
    def __init__(
        self,
        host: str,
        api_key: str,
        buffer: Buffer,
        *,
        base_delay: float = BASE_DELAY_S,
        max_delay: float = MAX_DELAY_S,
        chunk_bytes: int = CHUNK_BYTES,
        clock: Callable[[], float] = time.monotonic,
        pause: Callable[[float], None] = time.sleep,
        key_origin: str = "POSTHOG_API_KEY",
        refetch: Callable[[float], str] | None = None,
    ) -> None:
        """``key_origin`` says where the key came from; ``refetch(timeout_s)`` reads it again from
        there (raising on failure), None when it cannot change."""
        self.host = host
        self.buffer = buffer
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.chunk_bytes = chunk_bytes
        self._clock = clock
        self._pause = pause
        self._set_key(api_key)
        self.key_origin = key_origin
        self._refetch = refetch
        self._refetched = False
        """A refused key was read again and nothing was delivered since: not again (no loop)."""
        scheme, _, rest = host.partition("://")
        self._https = scheme == "https"
        self._netloc, _, path = rest.partition("/")
        self._prefix = "/" + path.strip("/") if path.strip("/") else ""
        self._connection: http.client.HTTPConnection | None = None
        self._last_used = 0.0
        self._ssl: ssl.SSLContext | None = None
        self.ai_endpoint = True
        self.refused: str | None = None
        """Set, with the reason, once PostHog refused the key: nothing is sent any more."""
        self.not_before = 0.0
        """Flushes before this time (clock seconds) are skipped, unless forced."""
        self._failed_flushes = 0

    # -- a flush ------------------------------------------------------------------------------

    def ready(self, force: bool = False) -> bool:
        """Whether a flush now would send (not after a refused key, nor backing off unless forced)."""
        return self.refused is None and (force or self._clock() >= self.not_before)

    def flush(self, deadline: float, *, force: bool = False) -> Result:
        """Send what is buffered, each request retried until ``deadline`` (clock seconds) at the
        latest. ``force`` ignores the backoff between failed flushes (the last chance at SHUTDOWN)."""
        result = Result()
        if self.refused is not None:
            result.stopped = "refused"
            return result
        if not force and self._clock() < self.not_before:
            result.stopped = "cooldown"
            return result
        entries = self.buffer.begin()
        try:
            self._send(entries, deadline, result)
        finally:
            self.buffer.end(entries)
        if result.stopped in ("deadline", "unexpected"):
            self._failed_flushes += 1
            cooldown = min(MAX_COOLDOWN_S, 2.0 ** (self._failed_flushes - 1))
            self.not_before = max(self.not_before, self._clock() + cooldown)
        elif result.stopped is None:
            self._failed_flushes = 0
        return result

    def _send(self, entries: list[Entry], deadline: float, result: Result) -> None:
        work: deque[tuple[str, list[Entry]]] = deque(self._chunks(entries))
        while work:
            path, chunk = work.popleft()
            status, detail = self._deliver(path, chunk, deadline, result)
            if 200 <= status < 300:
                self.buffer.ack(chunk)
                result.sent += len(chunk)
                self._refetched = False
            elif status == 400 and len(chunk) > 1:
                work.extendleft(reversed(_halves(path, chunk)))
            elif status == 400:
                self.buffer.drop(chunk, "events_rejected_by_posthog", f"{chunk[0].name} {chunk[0].uuid}: {detail}")
                result.dropped += 1
            elif status == 413 and len(chunk) > 1:
                work.extendleft(reversed(_halves(path, chunk)))
            elif status == 413:
                if self._shrink(chunk[0]):
                    work.appendleft((path, chunk))
                else:
                    detail = f"{chunk[0].name} {chunk[0].uuid} of {len(chunk[0].data)} bytes: {detail}"
                    self.buffer.drop(chunk, "events_too_large", detail)
                    result.dropped += 1
            elif status == 404 and path == AI_PATH:
                self.ai_endpoint = False
                _log.warn(
                    f"PostHog at {self.host} has no {AI_PATH} (404: older self-hosted PostHog?); sending $ai_* "
                    f"events to {BATCH_PATH} from now on, each cut to {limits.BATCH_EVENT_LIMIT} bytes"
                )
                work.extendleft(reversed(self._chunks(chunk)))
            elif status in (401, 403):
                renewed, outcome = self._renew_key(deadline, status)
                if renewed:
                    work.appendleft((path, chunk))
                    continue
                self.refused = (
                    f"PostHog at {self.host} refused the project API key {mask(self._key)} ({status}: {detail}); "
                    f"{outcome}check {self.key_origin}. Nothing more will be sent from this environment"
                )
                _log.warn(self.refused)
                self.close()
                result.stopped = "refused"
                return
            elif status in (GAVE_UP, NO_TIME):
                result.stopped = "deadline" if status == GAVE_UP else "no_time"
                return
            else:
                _log.once(
                    f"status:{status}",
                    f"PostHog at {self.host} answered {status} to {path} ({detail}); "
                    f"events stay buffered and later flushes back off",
                )
                result.stopped = "unexpected"
                return

    def _renew_key(self, deadline: float, status: int) -> tuple[bool, str]:
        """After a refusal: whether the key was read again and changed; else what the attempt
        found, to say in the refusal's line."""
        if self._refetch is None or self._refetched:
            return False, ""
        self._refetched = True
        try:
            key = self._refetch(max(0.0, deadline - self._clock()))
        except Exception as exc:
            return False, f"reading it again failed ({exc}); "
        if key == self._key:
            return False, "it is unchanged in its store; "
        _log.warn(
            f"PostHog at {self.host} refused the project API key {mask(self._key)} ({status}); "
            f"{self.key_origin} now holds {mask(key)}: sending with it"
        )
        self._set_key(key)
        return True, ""

    def _set_key(self, key: str) -> None:
        self._key = key
        self._key_json = json.dumps(key).encode()

    def _chunks(self, entries: list[Entry]) -> list[tuple[str, list[Entry]]]:
        ai: list[Entry] = []
        plain: list[Entry] = []
        for entry in entries:
            if entry.ai and self.ai_endpoint:
                ai.append(entry)
            else:
                if entry.ai and len(entry.data) > limits.BATCH_EVENT_LIMIT:
                    self.buffer.replace(entry, limits.encode(json.loads(entry.data), limits.BATCH_EVENT_LIMIT))
                plain.append(entry)
        chunks: list[tuple[str, list[Entry]]] = []
        for path, group in ((AI_PATH, ai), (BATCH_PATH, plain)):
            chunk: list[Entry] = []
            size = 0
            for entry in group:
                if chunk and size + len(entry.data) > self.chunk_bytes:
                    chunks.append((path, chunk))
                    chunk, size = [], 0
                chunk.append(entry)
                size += len(entry.data) + 1
            if chunk:
                chunks.append((path, chunk))
        return chunks

    def _shrink(self, entry: Entry) -> bool:
        """Cut an event PostHog found too large, once; False if it was cut already."""
        if entry.truncated:
            return False
        size = len(entry.data)
        # Cut even if it is within that limit: PostHog refused it, and the cut leaves room for the envelope.
        data = limits.dumps(limits.cut(json.loads(entry.data), limits.limit_after_413(size)))
        if len(data) >= size:
            return False
        self.buffer.replace(entry, data)
        return True

    # -- one chunk, with retries ---------------------------------------------------------------

    def _deliver(self, path: str, chunk: list[Entry], deadline: float, result: Result) -> tuple[int, str]:
        """The final status for ``chunk`` (or GAVE_UP, NO_TIME) and the server's detail."""
        import http.client

        if self._clock() >= deadline:
            return NO_TIME, "no time left"
        body = _Body(self._key_json, chunk)
        attempt = 0
        while True:
            retry_after: float | None = None
            result.requests += 1
            try:
                status, headers, text = self._post(path, body.with_sent_at(events.iso(events.now())), deadline)
            except (OSError, http.client.HTTPException) as exc:  # ssl errors are OSErrors
                problem = f"cannot reach PostHog at {self.host}: {exc or type(exc).__name__}"
                key = f"network:{type(exc).__name__}"
            else:
                detail = _detail(text)
                if 200 <= status < 300 or status in (400, 401, 403, 404, 413):
                    return status, detail
                if status not in (408, 429) and status < 500:
                    location = headers.get("Location")
                    return status, detail + (f"; Location: {location}" if location else "")
                problem = f"PostHog at {self.host} answered {status} ({detail})"
                key = f"status:{status}"
                retry_after = _retry_after(headers.get("Retry-After"))
            delay = self._backoff(attempt)
            if retry_after is not None:
                delay = max(delay, retry_after)
            now = self._clock()
            if now + delay >= deadline:
                _log.once(key, f"{problem}; events stay buffered until it accepts them")
                if retry_after is not None:
                    self.not_before = max(self.not_before, now + retry_after)
                return GAVE_UP, problem
            _log.debug(f"{problem}; retrying in {delay:.2f} s")
            self._pause(delay)
            attempt += 1

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.max_delay, self.base_delay * 2.0**attempt)
        jitter = int.from_bytes(os.urandom(2), "big") / 65535
        return ceiling / 2 + ceiling / 2 * jitter

    # -- HTTP ---------------------------------------------------------------------------------

    def _post(self, path: str, body: bytes, deadline: float) -> tuple[int, Message, bytes]:
        import http.client

        headers = {
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
            "User-Agent": f"posthog-lambda-extension/{__version__}",
        }
        for fresh in (False, True):
            connection, reused = self._connect(deadline, fresh)
            try:
                connection.request("POST", self._prefix + path, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                if reused:
                    continue  # the server had closed the kept-alive connection: once more, fresh
                raise
            except BaseException:
                self.close()
                raise
            if response.will_close:
                self.close()
            else:
                self._last_used = self._clock()
            return response.status, response.headers, data
        raise AssertionError("unreachable")

    def _connect(self, deadline: float, fresh: bool) -> tuple[http.client.HTTPConnection, bool]:
        import http.client

        timeout = max(0.05, deadline - self._clock())
        connection = self._connection
        if connection is not None and (fresh or self._clock() - self._last_used > IDLE_RECONNECT_S):
            self.close()
            connection = None
        if connection is not None:
            connection.timeout = timeout
            if connection.sock is not None:
                connection.sock.settimeout(timeout)
            return connection, True
        if self._https:
            connection = http.client.HTTPSConnection(self._netloc, timeout=timeout, context=self._context())
        else:
            connection = http.client.HTTPConnection(self._netloc, timeout=timeout)
        self._connection = connection
        return connection, False

    def _context(self) -> ssl.SSLContext:
        if self._ssl is None:
            import ssl

            self._ssl = ssl.create_default_context()
        return self._ssl

    def restored(self) -> None:
        """After a restore from a snapshot: the connection kept alive then is dropped unused (each
        restored environment holds a copy of its TLS state, and PostHog's end is long gone), so
        the next request connects afresh; and the backoff, whose times were read on the clock
        before the snapshot, starts over."""
        self.close()
        self._last_used = 0.0
        self.not_before = 0.0
        self._failed_flushes = 0

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()


class _Body:
    """A request body compressed once, whatever the number of attempts: only ``sent_at``, at its
    end, changes between them (PostHog corrects event times by it)."""

    def __init__(self, key_json: bytes, chunk: list[Entry]) -> None:
        import zlib

        self._compressor: zlib._Compress = zlib.compressobj(1, zlib.DEFLATED, 31)  # gzip framing, fast level
        prefix = b'{"api_key":' + key_json + b',"batch":[' + b",".join(e.data for e in chunk) + b'],"sent_at":"'
        self._head = self._compressor.compress(prefix)

    def with_sent_at(self, sent_at: str) -> bytes:
        compressor = self._compressor.copy()
        return self._head + compressor.compress(sent_at.encode() + b'"}') + compressor.flush()


def _halves(path: str, chunk: list[Entry]) -> list[tuple[str, list[Entry]]]:
    middle = len(chunk) // 2
    return [(path, chunk[:middle]), (path, chunk[middle:])]


def _detail(text: bytes) -> str:
    try:
        payload = json.loads(text)
    except ValueError:
        payload = None
    if isinstance(payload, dict) and isinstance(payload.get("detail"), str):
        return str(payload["detail"])[:300]
    return text[:300].decode("utf-8", "replace").strip() or "no detail"


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: the backoff will do
    if seconds != seconds or seconds < 0:
        return None
    return min(seconds, MAX_RETRY_AFTER_S)
