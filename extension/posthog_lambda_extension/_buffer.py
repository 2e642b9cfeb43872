"""Events waiting for PostHog, bounded in bytes, oldest dropped first, kept until acknowledged.

Events are held as the JSON bytes they will be sent as: several times smaller than the parsed
objects, and serialized once. A flush takes a snapshot (``begin``) and settles every entry in
it: ``ack`` on a 2xx, ``drop`` when PostHog refuses it for good, ``end`` for the rest, which
stay for the next flush. An entry evicted while a request carrying it is in flight is counted
as dropped only if that request does not succeed. Worth keeping: ``begin``, then ``ack``/``drop``
for what was settled and ``end`` always (in a ``finally``), is what makes an event leave the
buffer only once PostHog has it (or has refused it for good, counted), however a flush ends.
An entry can be held back from flushes (``hold``, ``release``): an ``$ai_trace`` waiting for
Lambda's report on its invocation, whose figures are then patched into it (``patch``).
"""

from __future__ import annotations

import threading
import time

from ._drops import DROPPED_EVENT, Drops

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

ENTRY_OVERHEAD = 200
"""Bytes an entry costs besides its JSON (the object, its uuid, the index)."""
FULL = "events_buffer_full"


class Entry:
    __slots__ = ("added", "ai", "data", "evicted", "held", "in_flight", "name", "truncated", "uuid")

    def __init__(self, uuid: str, name: str, data: bytes, added: float) -> None:
        self.uuid = uuid
        self.name = name
        self.ai = name.startswith("$ai_")
        self.data = data
        self.added = added
        self.in_flight = False
        self.evicted = False
        self.truncated = False
        self.held = False
        """Kept back from flushes until released (an ``$ai_trace`` waiting for its report)."""

    @property
    def size(self) -> int:
        return len(self.data) + ENTRY_OVERHEAD

    def __repr__(self) -> str:
        return f"Entry({self.name} {self.uuid}, {len(self.data)} bytes)"


class Stats:
    __slots__ = ("count", "oldest", "size")

    def __init__(self, count: int, size: int, oldest: float | None) -> None:
        self.count = count
        self.size = size
        self.oldest = oldest
        """When the oldest entry was added (monotonic seconds), None when empty."""


class Buffer:
    def __init__(self, limit: int, drops: Drops, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._drops = drops
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, Entry] = {}
        self._size = 0
        self._held = 0

    def add(self, uuid: str, name: str, data: bytes) -> bool:
        """Keep an event; False if it was not kept (a duplicate uuid, or larger than the buffer)."""
        entry = Entry(uuid, name, data, self._clock())
        if entry.size > self.limit:
            self._drops.add(FULL, 1, f"a {len(data)}-byte {name} is larger than the whole buffer ({self.limit} bytes)")
            return False
        with self._lock:
            if uuid in self._entries:
                return False
            self._entries[uuid] = entry
            self._size += entry.size
            evicted = self._evict()
        if evicted:
            self._drops.add(FULL, evicted, f"more than {self.limit} bytes of events waiting; the oldest went first")
        return True

    def _evict(self) -> int:
        # Called with the lock held; returns how many entries are lost for good.
        lost = 0
        while self._size > self.limit and self._entries:
            oldest = self._entries.pop(next(iter(self._entries)))
            self._size -= oldest.size
            if oldest.held:
                oldest.held = False
                self._held -= 1
            if oldest.in_flight:
                oldest.evicted = True  # counted by end() unless its request succeeds
            elif not self._lost(oldest):
                lost += 1
        return lost

    def _lost(self, entry: Entry) -> bool:
        """An entry is gone before PostHog had it: True if it was a drop report, whose counts go
        back to the pending ones (a loss is reported, never lost itself)."""
        return entry.name == DROPPED_EVENT and self._drops.restore(entry.data)

    def stats(self) -> Stats:
        """What a flush could send now: the entries not held back."""
        with self._lock:
            if not self._held:
                oldest = next(iter(self._entries.values()), None)
                return Stats(len(self._entries), self._size, None if oldest is None else oldest.added)
            ready = [e for e in self._entries.values() if not e.held]
            return Stats(len(ready), sum(e.size for e in ready), ready[0].added if ready else None)

    def restamp(self) -> None:
        """After a restore from a snapshot: what waits counts as added now, since the times it
        was added were read on the clock before the snapshot (no flush decision on them)."""
        now = self._clock()
        with self._lock:
            for entry in self._entries.values():
                entry.added = now

    def begin(self) -> list[Entry]:
        """The entries no flush holds yet and not held back, oldest first, now held by the
        caller's flush."""
        with self._lock:
            taken = [e for e in self._entries.values() if not e.in_flight and not e.held]
            for entry in taken:
                entry.in_flight = True
        return taken

    def ack(self, entries: Iterable[Entry]) -> None:
        """PostHog accepted these: forget them."""
        with self._lock:
            for entry in entries:
                entry.in_flight = False
                entry.evicted = False  # delivered after all
                self._remove(entry)

    def drop(self, entries: Iterable[Entry], reason: str, detail: str = "") -> None:
        """These can never be delivered: forget and count them."""
        count = 0
        with self._lock:
            for entry in entries:
                entry.in_flight = False
                entry.evicted = False
                self._remove(entry)
                count += 1
        self._drops.add(reason, count, detail)

    def end(self, entries: Iterable[Entry]) -> None:
        """The flush holding these is over; those it did not settle wait for the next one."""
        lost = 0
        with self._lock:
            for entry in entries:
                if entry.evicted:
                    entry.evicted = False
                    lost += 0 if self._lost(entry) else 1
                entry.in_flight = False
        if lost:
            self._drops.add(FULL, lost, f"more than {self.limit} bytes of events waiting; the oldest went first")

    def hold(self, uuid: str) -> bool:
        """Keep a waiting entry back from flushes until ``release``; False if it is not waiting."""
        with self._lock:
            entry = self._entries.get(uuid)
            if entry is None or entry.in_flight or entry.held:
                return False
            entry.held = True
            self._held += 1
            return True

    def release(self, uuid: str | None = None) -> int:
        """Let a held entry (None: every one) go with the next flush; how many were released."""
        with self._lock:
            if not self._held:
                return 0
            if uuid is None:
                held = [e for e in self._entries.values() if e.held]
            else:
                entry = self._entries.get(uuid)
                held = [entry] if entry is not None and entry.held else []
            for entry in held:
                entry.held = False
            self._held -= len(held)
            return len(held)

    @property
    def held(self) -> int:
        """How many entries are held back."""
        with self._lock:
            return self._held

    def replace(self, entry: Entry, data: bytes) -> None:
        """Swap an entry's JSON for a smaller version of it (truncated for a stricter endpoint)."""
        with self._lock:
            if self._entries.get(entry.uuid) is entry:
                self._size += len(data) - len(entry.data)
            entry.data = data
            entry.truncated = True

    def patch(self, uuid: str, update: Callable[[bytes], bytes | None]) -> bool:
        """Replace a waiting entry's JSON with ``update(data)``; False when the entry is gone, is
        held by a flush (it may be on its way already), or ``update`` gave None."""
        with self._lock:
            entry = self._entries.get(uuid)
            if entry is None or entry.in_flight:
                return False
            data = update(entry.data)
            if data is None:
                return False
            self._size += len(data) - len(entry.data)
            entry.data = data
            evicted = self._evict()
        if evicted:
            self._drops.add(FULL, evicted, f"more than {self.limit} bytes of events waiting; the oldest went first")
        return True

    def discard(self, reason: str) -> int:
        """Forget everything not held by a flush, counted (not logged) under ``reason``; how many."""
        with self._lock:
            gone = [e for e in self._entries.values() if not e.in_flight]
            for entry in gone:
                self._remove(entry)
        self._drops.add(reason, len(gone), log=False)
        return len(gone)

    def _remove(self, entry: Entry) -> None:
        if self._entries.get(entry.uuid) is entry:
            del self._entries[entry.uuid]
            self._size -= entry.size
            if entry.held:
                entry.held = False
                self._held -= 1

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
