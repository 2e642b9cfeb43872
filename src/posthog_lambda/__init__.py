"""PostHog LLM analytics for AWS Lambda: traces, spans, generations, tokens and cost.

Importing this package imports only the standard library.
"""

from __future__ import annotations

from ._capture import capture_feedback, capture_metric
from ._config import configure
from ._context import ContextExecutor, carry_context
from ._handler import posthog_traced
from ._log import dropped_counts
from ._scope import NoOpSpan, SpanScope, current_span, embedding, generation, span
from ._sinks import Event, Sink
from ._spans import Embedding, Generation, Span

__version__ = "0.1.0"

__all__ = [
    "ContextExecutor",
    "Embedding",
    "Event",
    "Generation",
    "NoOpSpan",
    "Sink",
    "Span",
    "SpanScope",
    "capture_feedback",
    "capture_metric",
    "carry_context",
    "configure",
    "current_span",
    "dropped_counts",
    "embedding",
    "generation",
    "posthog_traced",
    "span",
]
