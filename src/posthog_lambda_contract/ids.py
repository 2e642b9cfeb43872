"""Identifiers for traces, spans and events.

Their random bits come from one of two sources:

- a private Mersenne Twister seeded from the OS (the default): ``uuid.uuid4()`` costs ~1 µs (a
  syscall and an object), this makes the same shape in ~0.3 µs. Private, so that a user's
  ``random.seed()`` can never make two sandboxes emit the same ids; reseeded after fork for the
  same reason. ``random`` is imported on the first id, not at import time.
- ``os.urandom`` for every id (``draw_from_kernel``), where the process may be copied without a
  fork: Lambda SnapStart snapshots the memory of an environment after Init and restores many
  environments from it, each with the generator's state as it was, and no fork hook runs.
  Every environment would then draw the same bits in the same order (the same span ids, trace
  ids and event uuids, which PostHog deduplicates away). The kernel's generator is not copied
  that way (Lambda makes sure it yields new bits after a restore), so no id drawn from it
  repeats; the draw costs ~0.7 µs instead of ~0.15. Once past the restore, ``reseed`` goes back
  to the cheap generator with a fresh seed.

Either way the format is the same: a UUIDv7 (``uuid7``) or UUIDv4 (``uuid4``) string.
"""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

_bits: Callable[[int], int] | None = None
"""The source in use; None until the first id (or ``draw_from_kernel``/``reseed``) picks one."""
_fork_hooked = False


def _kernel_bits(k: int) -> int:
    # Whole bytes from the kernel, the surplus low bits shifted out.
    return int.from_bytes(os.urandom((k + 7) // 8), "big") >> (-k % 8)


def _seeded() -> Callable[[int], int]:
    import random

    return random.Random(os.urandom(32)).getrandbits


def _after_fork_in_child() -> None:
    global _bits
    # The child holds its parent's generator state: it must not draw its parent's next ids. Kernel
    # draws need nothing: every one is new.
    if _bits is not None and _bits is not _kernel_bits:
        _bits = _seeded()


def _hook_fork() -> None:
    global _fork_hooked
    if not _fork_hooked and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _fork_hooked = True


def draw_from_kernel() -> None:
    """From now on, take every id's random bits from ``os.urandom``: nothing a memory snapshot
    copies can make two processes draw the same id (see the module's docstring). Until
    ``reseed``."""
    global _bits
    _hook_fork()
    _bits = _kernel_bits


def reseed() -> None:
    """From now on, take ids' random bits from a new private generator seeded from
    ``os.urandom``: the cheap source, safe once this process is its own (after a restore from a
    snapshot). Whatever the generator held before is forgotten."""
    global _bits
    _hook_fork()
    _bits = _seeded()


def _random_bits(k: int) -> int:
    global _bits
    bits = _bits
    if bits is None:
        _hook_fork()
        bits = _bits = _seeded()
    return bits(k)


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
