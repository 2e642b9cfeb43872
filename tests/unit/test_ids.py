"""Ids' random bits: the cheap generator, the kernel, and what a snapshot or a fork copies."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator

import pytest

from posthog_lambda_contract import ids

SRC = os.path.join(os.path.dirname(__file__), "..", "..", "src")


@pytest.fixture(autouse=True)
def _source_restored() -> Iterator[None]:
    """Each test leaves the process's source of ids as it found it."""
    saved = ids._bits
    yield
    ids._bits = saved


def generator() -> random.Random:
    """The private generator ids draw from now (the cheap source)."""
    bits = ids._bits
    assert bits is not None
    generator = getattr(bits, "__self__", None)
    assert isinstance(generator, random.Random)
    return generator


def some_ids() -> list[str]:
    return [ids.uuid4(), ids.uuid7(1_700_000_000_000), ids.uuid4()]


def restored_twice(state_of: random.Random) -> tuple[list[str], list[str]]:
    """The ids two environments restored from one snapshot make: the generator's state as it was
    at the snapshot, in each."""
    snapshot = state_of.getstate()
    first = some_ids()
    state_of.setstate(snapshot)
    second = some_ids()
    return first, second


def test_copies_of_the_generator_make_the_same_ids_which_kernel_draws_never_do() -> None:
    ids.reseed()
    rng = generator()
    first, second = restored_twice(rng)
    assert first == second  # the hazard: every restored environment would repeat these
    ids.draw_from_kernel()
    first, second = restored_twice(rng)
    assert set(first).isdisjoint(second)


def test_kernel_draws_read_the_kernel_for_every_id(monkeypatch: pytest.MonkeyPatch) -> None:
    ids.draw_from_kernel()
    calls: list[int] = []
    urandom: Callable[[int], bytes] = os.urandom

    def counted(n: int) -> bytes:
        calls.append(n)
        return urandom(n)

    monkeypatch.setattr(os, "urandom", counted)
    some_ids()
    assert calls == [16, 10, 16]  # 128 bits, 74 bits, 128 bits: whole bytes


def test_both_sources_make_the_same_formats() -> None:
    for switch in (ids.reseed, ids.draw_from_kernel):
        switch()
        four, seven = uuid.UUID(ids.uuid4()), uuid.UUID(ids.uuid7(1_700_000_000_000))
        assert (four.version, four.variant) == (4, uuid.RFC_4122)
        assert (seven.version, seven.variant) == (7, uuid.RFC_4122)
        assert seven.int >> 80 == 1_700_000_000_000
        assert len({ids.uuid4() for _ in range(1000)}) == 1000


def test_reseed_is_a_new_stream_from_the_cheap_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    ids.reseed()
    copied = random.Random()
    copied.setstate(generator().getstate())  # what the snapshot holds
    ids.reseed()
    drawn = ids._random_bits(128)
    assert drawn != copied.getrandbits(128)
    calls: list[int] = []
    urandom: Callable[[int], bytes] = os.urandom
    monkeypatch.setattr(os, "urandom", lambda n: calls.append(n) or urandom(n))
    some_ids()
    assert calls == []  # not drawn from the kernel any more


FORKED = textwrap.dedent(
    """
    import os, sys
    from posthog_lambda_contract import ids

    getattr(ids, sys.argv[1])()
    ids.uuid4()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, ids.uuid4().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    print(os.read(read, 100).decode(), ids.uuid4())
    """
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("source", ["reseed", "draw_from_kernel"])
def test_a_forked_child_never_draws_its_parents_ids(source: str) -> None:
    # In a fresh interpreter: this one runs threads, and fork warns about them.
    done = subprocess.run(
        [sys.executable, "-c", FORKED, source],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": SRC, "PATH": os.environ["PATH"]},
    )
    child, parent = done.stdout.split()
    assert child != parent
