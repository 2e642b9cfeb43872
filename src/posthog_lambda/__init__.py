"""PostHog LLM analytics for AWS Lambda: traces, spans, generations, tokens and cost.

Importing this package imports only the standard library, and only its cheap parts: it runs
on every cold start. ``ContextExecutor``, ``Sink``, ``Event`` and ``inject`` load on first use.
"""

from __future__ import annotations

from posthog_lambda_contract.events import VERSION as __version__  # noqa: F401  (the package's version)

from . import _restore
from ._config import configure
from ._context import carry_context
from ._drops import dropped_counts
from ._factories import current_span, embedding, generation, span
from ._handler import posthog_traced
from ._noop import NoOpSpan
from ._spans import Embedding, Generation, Span
from ._trace_events import capture_feedback, capture_metric

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ._executor import ContextExecutor
    from ._propagation import inject
    from ._types import Event, Sink


_restore.arm()  # on SnapStart, before anything can make an id

__all__ = [
    "ContextExecutor",
    "Embedding",
    "Event",
    "Generation",
    "NoOpSpan",
    "Sink",
    "Span",
    "capture_feedback",
    "capture_metric",
    "carry_context",
    "configure",
    "current_span",
    "dropped_counts",
    "embedding",
    "generation",
    "inject",
    "posthog_client",
    "posthog_traced",
    "span",
]

_LAZY = {"ContextExecutor": "._executor", "Event": "._types", "Sink": "._types", "inject": "._propagation"}


def posthog_client() -> Any:
    """A PostHog client for posthog-python's AI wrappers: ``posthog_client=`` of
    ``posthog.ai.openai.OpenAI``, ``posthog.ai.anthropic.Anthropic`` (their async and Gemini
    siblings too), ``client=`` of ``posthog.ai.langchain.CallbackHandler``. Inside a
    ``@posthog_traced`` handler their events join its trace under the running span, with its
    user, session, groups, privacy mode and redaction; outside one they are sent as they are.
    No flush needed. Its module loads on the first call, off the import path."""
    from ._ai_wrappers import posthog_client as client

    return client()


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'posthog_lambda' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(module, __name__), name)
    globals()[name] = value
    return value
