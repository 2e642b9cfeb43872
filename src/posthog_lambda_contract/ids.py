"""Identifiers for traces, spans and events.

uuid.uuid4() costs ~1 µs (a syscall and an object); a private Mersenne Twister seeded from the
OS makes the same shape in ~0.3 µs. Private, so that a user's ``random.seed()`` can never make
two sandboxes emit the same ids; reseeded after fork for the same reason. ``random`` is
imported on the first id, not at import time.
"""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

_bits: Callable[[int], int] | None = None


def _random_bits(k: int) -> int:
    global _bits
    if _bits is None:
        import random

        rng = random.Random(os.urandom(32))
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=lambda: rng.seed(os.urandom(32)))
        _bits = rng.getrandbits
    return _bits(k)


def _format(n: int) -> str:
    h = f"{n:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def uuid7(unix_ms: int | None = None) -> str:
    """A UUIDv7: time-ordered, as PostHog's own SDKs make them."""
    if unix_ms is None:
        unix_ms = time.time_ns() // 1_000_000
    rand = _random_bits(74)
    n = (
        (unix_ms & 0xFFFF_FFFF_FFFF) << 80
        | 0x7 << 76
        | (rand >> 62) << 64
        | 0b10 << 62
        | (rand & 0x3FFF_FFFF_FFFF_FFFF)
    )
    return _format(n)


def uuid4() -> str:
    """A random UUIDv4 string."""
    n = _random_bits(128)
    n = (n & ~(0xF << 76) & ~(0b11 << 62)) | 0x4 << 76 | 0b10 << 62
    return _format(n)
