"""Secrets in log lines: enough of a key to recognise it, never enough to use it."""

from __future__ import annotations


def mask(secret: str | None) -> str:
    """``phc_****wxyz`` for a key; ``<unset>`` for none."""
    if not secret:
        return "<unset>"
    if len(secret) <= 8:
        return "****"
    return f"{secret[:4]}****{secret[-4:]}"
