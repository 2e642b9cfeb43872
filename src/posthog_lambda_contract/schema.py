"""The shape of one PostHog event, for type checking.

``typing`` costs milliseconds to import, so the other modules import this one only under
``TYPE_CHECKING``; ``posthog_lambda.Event`` re-exports it, loaded on first use.
"""

from __future__ import annotations

from typing import Any, TypedDict


class Event(TypedDict):
    """One event as PostHog's capture API receives it."""

    event: str
    distinct_id: str
    properties: dict[str, Any]
    uuid: str
    timestamp: str
