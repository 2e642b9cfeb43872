"""Public types that need ``typing`` at run time, kept out of the import path.

``import posthog_lambda`` must stay cheap, and ``typing`` alone costs several milliseconds,
so this module is loaded only when someone asks for ``posthog_lambda.Sink`` or ``Event``.
The library's own modules import it for type checking only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from posthog_lambda_contract.schema import Event

__all__ = ["Event", "Sink"]


@runtime_checkable
class Sink(Protocol):
    """Where finished events go: any object with this method."""

    def send(self, events: Sequence[Event]) -> None:
        """Take ownership of these finished events; may raise (the library counts and logs)."""
