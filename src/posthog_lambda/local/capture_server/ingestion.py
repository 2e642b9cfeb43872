"""PostHog's ingestion rules as the local capture server applies them: its endpoints, what is
answered 400, 401, 404, 405 and 413, how gzip bodies (by header or ``?compression=``) are read,
and that an escaped lone surrogate (``"\\udce9"``, which JSON allows and no UTF-8 holds) is
stored as U+FFFD, as PostHog's capture does; each request judged into a :class:`Verdict` before
any injected fault applies."""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qs

from posthog_lambda_contract.limits import well_formed

from .received import Outcome, events_text, uuid_key

BATCH_PATH = "/batch/"
AI_BATCH_PATH = "/i/v0/ai/batch/"
SINGLE_EVENT_PATHS = ("/e/", "/capture/")
MAX_BODY_BYTES = 20 * 1024 * 1024
MAX_EVENT_BYTES = 1_000_000
MAX_AI_EVENT_BYTES = 8 * 1024 * 1024

_ENDPOINTS = (BATCH_PATH, AI_BATCH_PATH, *SINGLE_EVENT_PATHS)


class IngestionSettings(Protocol):
    """What the rules depend on (a :class:`CaptureServer`'s settings, read at each request)."""

    api_key: str | None
    ai_endpoint: bool
    max_body_bytes: int
    max_event_bytes: int
    max_ai_event_bytes: int


@dataclass
class Verdict:
    """What the contract says about one request, before any fault is applied."""

    status: int
    outcome: Outcome
    detail: str
    body: dict[str, Any]
    path: str
    events: list[dict[str, Any]] = field(default_factory=list)
    event_count: int = 0
    decoded_bytes: int = 0
    gzip: bool = False
    sent_at: str | None = None


class Rejection(Exception):
    """Raised for what PostHog refuses: the status, its ``code`` and the ``detail`` it answers."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


def judge(
    settings: IngestionSettings,
    method: str,
    path: str,
    query: str,
    raw: bytes,
    body_bytes: int,
    content_encoding: str | None,
) -> Verdict:
    """What PostHog's capture answers to a request, as a verdict (rejections included)."""
    endpoint = path if path.endswith("/") else path + "/"
    compression = parse_qs(query).get("compression", [""])[-1]
    encoding = (content_encoding or "").strip().lower()
    gzipped = encoding in ("gzip", "x-gzip") or compression in ("gzip", "gzip-js")
    # Filled in as the request is understood, so a rejection still reports what was learned.
    verdict = Verdict(200, "accepted", "", {"status": 1}, endpoint, gzip=gzipped)
    try:
        if endpoint not in _ENDPOINTS:
            raise Rejection(404, "not_found", f"no capture endpoint at {path}")
        if endpoint == AI_BATCH_PATH and not settings.ai_endpoint:
            raise Rejection(
                404, "not_found", f"{AI_BATCH_PATH} is switched off here (ai_endpoint=False), as on older PostHog"
            )
        if method != "POST":
            raise Rejection(405, "method_not_allowed", f"{endpoint} takes POST, not {method}")
        if encoding not in ("", "identity", "gzip", "x-gzip"):
            raise Rejection(400, "unsupported_encoding", f"Content-Encoding {encoding!r} is not supported")
        if compression not in ("", "gzip", "gzip-js"):
            raise Rejection(400, "unsupported_encoding", f"compression={compression!r} is not supported")
        body = _decoded(settings, raw, body_bytes, gzipped)
        verdict.decoded_bytes = len(body)
        _check_body(settings, endpoint, body, verdict)
    except Rejection as rejection:
        reject(verdict, rejection)
    return verdict


def _decoded(settings: IngestionSettings, raw: bytes, body_bytes: int, gzipped: bool) -> bytes:
    limit = settings.max_body_bytes
    # The raw body is not buffered past the limit: a gzip stream larger than the limit
    # decompresses to more than it in practice, so both are answered 413.
    if body_bytes > limit:
        raise Rejection(413, "payload_too_large", f"request body is {body_bytes} bytes; the limit is {limit}")
    if not gzipped:
        return raw
    try:
        body = _gunzip(raw, limit)
    except ValueError as exc:
        raise Rejection(400, "invalid_body", f"body is not valid gzip: {exc}") from None
    if body is None:
        raise Rejection(413, "payload_too_large", f"request body is above {limit} bytes after decompression")
    return body


def _check_body(settings: IngestionSettings, endpoint: str, body: bytes, verdict: Verdict) -> None:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejection(400, "invalid_payload", f"body is not UTF-8: {exc}") from None
    try:
        payload = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise Rejection(400, "invalid_payload", f"body is not JSON: {exc}") from None
    if "\\ud" in text or "\\uD" in text:
        payload = well_formed(payload)
    if not isinstance(payload, dict):
        raise Rejection(400, "invalid_payload", f"body must be a JSON object, not {type(payload).__name__}")
    sent_at = payload.get("sent_at")
    verdict.sent_at = sent_at if isinstance(sent_at, str) else None
    is_batch = "batch" in payload or endpoint in (BATCH_PATH, AI_BATCH_PATH)
    batch = payload.get("batch") if is_batch else None
    verdict.event_count = len(batch) if isinstance(batch, list) else 0 if is_batch else 1

    key = payload.get("api_key") or payload.get("token")
    if not isinstance(key, str) or not key:
        raise Rejection(401, "invalid_api_key", "no project api key: the body has no api_key or token")
    if settings.api_key is not None and key != settings.api_key:
        raise Rejection(
            401, "invalid_api_key", f"api key {_mask(key)} is not this server's ({_mask(settings.api_key)})"
        )

    if is_batch:
        if not isinstance(batch, list):
            raise Rejection(400, "invalid_payload", "body has no 'batch' list of events")
        if not batch:
            raise Rejection(400, "invalid_payload", "the batch is empty")
        events: list[Any] = batch
    else:
        events = [{k: v for k, v in payload.items() if k not in ("api_key", "token", "sent_at")}]

    for index, event in enumerate(events):
        problem = _event_problem(event)
        if problem:
            where = f"event {index + 1} of {len(events)}" if is_batch else "the event"
            raise Rejection(400, "invalid_event", f"{where} {problem}; the whole request is rejected")
    limit = settings.max_ai_event_bytes if endpoint == AI_BATCH_PATH else settings.max_event_bytes
    for index, event in enumerate(events):
        size = len(json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode())
        if size > limit:
            raise Rejection(
                413,
                "event_too_large",
                f"event {index + 1} ({event['event']}) is {size} bytes; {endpoint} takes at most {limit} per event",
            )
    verdict.events = events
    verdict.detail = events_text(len(events))


def _gunzip(raw: bytes, limit: int) -> bytes | None:
    """Decompress a (possibly multi-member) gzip body; ``None`` when it exceeds ``limit`` bytes.

    Decompressing in bounded steps keeps a small gzip bomb from taking the memory it asks for.
    """
    out = bytearray()
    data = raw
    try:
        while True:
            decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
            out += decompressor.decompress(data, limit + 1 - len(out))
            if len(out) > limit or decompressor.unconsumed_tail:
                return None
            if not decompressor.eof:
                raise ValueError("the gzip stream is truncated")
            data = decompressor.unused_data
            if not data.strip(b"\0"):
                return bytes(out)
    except zlib.error as exc:
        raise ValueError(str(exc)) from None


def _event_problem(event: object) -> str | None:
    if not isinstance(event, dict):
        return f"is not a JSON object but {type(event).__name__}"
    name = event.get("event")
    if not isinstance(name, str) or not name:
        return "has no event name"
    distinct_id = event.get("distinct_id")
    if isinstance(distinct_id, bool) or not isinstance(distinct_id, str | int | float) or distinct_id == "":
        return f"({name}) has no distinct_id"
    properties = event.get("properties")
    if properties is not None and not isinstance(properties, dict):
        return f"({name}) has properties that are not a JSON object"
    value = event.get("uuid")
    if value is not None and uuid_key(value) is None:
        return f"({name}) has an invalid uuid {value!r}"
    return None


def reject(verdict: Verdict, rejection: Rejection) -> None:
    kind = {401: "authentication_error", 404: "not_found"}.get(rejection.status, "validation_error")
    verdict.status, verdict.outcome, verdict.detail = rejection.status, "rejected", rejection.detail
    verdict.body = {"type": kind, "code": rejection.code, "detail": rejection.detail}
    verdict.events = []


def _mask(key: str) -> str:
    return repr(key[:8] + "…") if len(key) > 8 else repr(key)
