"""The local PostHog capture server, by topic.

- ``server``: :class:`CaptureServer`, the HTTP server, its sockets and threads;
- ``ingestion``: PostHog's acceptance rules (endpoints, gzip, what is 400, 401, 404, 405, 413);
- ``received``: the records of accepted events and answered requests, and the queries over them;
- ``faults``: fault injection (fail, slow, drop);
- ``tree``: what was received, laid out as PostHog's trace view (the rules, and as text);
- ``viewer``: the same in the browser: the page the server serves at ``/``, or one HTML file.
"""

from __future__ import annotations

from .ingestion import (
    AI_BATCH_PATH,
    BATCH_PATH,
    MAX_AI_EVENT_BYTES,
    MAX_BODY_BYTES,
    MAX_EVENT_BYTES,
    SINGLE_EVENT_PATHS,
)
from .received import ReceivedEvent, ReceivedRequest
from .server import CaptureServer
from .tree import render_trace_tree
from .viewer import build_model, write_html

__all__ = [
    "AI_BATCH_PATH",
    "BATCH_PATH",
    "MAX_AI_EVENT_BYTES",
    "MAX_BODY_BYTES",
    "MAX_EVENT_BYTES",
    "SINGLE_EVENT_PATHS",
    "CaptureServer",
    "ReceivedEvent",
    "ReceivedRequest",
    "build_model",
    "render_trace_tree",
    "write_html",
]
