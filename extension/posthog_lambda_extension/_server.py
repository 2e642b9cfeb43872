"""The Unix socket the function's process writes frames to.

Its listening end is bound before the extension registers (``_unix_socket``), so that it exists by
the time the function starts. One thread accepts connections and reads frames from all of them
(``selectors``) for as long as the environment runs, including while the main thread waits in
next: each runtime process has its connection, and Lambda Managed Instances runs up to 1,600 of
them in one environment, which a thread per connection would pay for in memory. A bad header
closes that connection: the rest of its stream cannot be trusted. Before it flushes at the end
of an invocation or at shutdown, the extension lets the reader take in what the function
already wrote (``settle``). The one frame written back is the answer to a SNAPSHOT, which this
thread gives once the extension has sent what it held (the main thread is in next then).
"""

from __future__ import annotations

import contextlib
import os
import select
import selectors
import socket
import threading
import time

from posthog_lambda_contract import frames

from . import _log
from ._unix_socket import bind

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._intake import Intake

READ_SIZE = 256 * 1024
MAX_CONNECTIONS = 1500
"""More than any environment has runtime processes (Managed Instances: up to 1,600 at once, the
Python runtime's default 16 per vCPU); bounded by the file descriptors the process may open."""
SPARE_DESCRIPTORS = 64
"""Kept for everything else: PostHog, the Telemetry API, spool files."""
ANSWER_TIMEOUT_S = 0.5


def connection_limit(wanted: int = MAX_CONNECTIONS) -> int:
    """``wanted``, or fewer if the process may not open that many descriptors besides its others."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return wanted
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - SPARE_DESCRIPTORS))


class Stream:
    """One connection's reading state."""

    __slots__ = ("answers", "mid_invocation", "reader")

    def __init__(self) -> None:
        self.reader = frames.Reader()
        self.mid_invocation = False
        """A frame came since the last END: an invocation is under way in that process."""
        self.answers: list[bytes] = []
        """Frames to write back (the answer to a SNAPSHOT), once what was read is taken in."""


class FrameServer:
    def __init__(self, path: str, intake: Intake, max_connections: int | None = None) -> None:
        self.path = path
        self.intake = intake
        self.max_connections = connection_limit() if max_connections is None else max_connections
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._busy = False
        """The reader is taking in data it received (between recv and the end of its frames)."""
        self._connections: dict[socket.socket, Stream] = {}
        self._closed = False
        self._accepted = 0
        """Connections taken from the backlog so far (a settle that saw it change looks again)."""
        self._thread: threading.Thread | None = None
        self._selector: selectors.BaseSelector | None = None
        self._waker: tuple[socket.socket, socket.socket] | None = None

    def start(self, listener: socket.socket | None = None) -> bool:
        """Accept connections on ``listener`` (made by ``_unix_socket.bind``, or here if None);
        False if there is no socket to listen on."""
        if listener is None:
            listener = bind(self.path)
            if listener is None:
                return False
        self._listener = listener
        listener.setblocking(False)
        selector = selectors.DefaultSelector()
        waker = socket.socketpair()  # close() writes to it: the reader leaves select at once
        waker[0].setblocking(False)
        selector.register(listener, selectors.EVENT_READ, None)
        selector.register(waker[0], selectors.EVENT_READ, None)
        self._selector, self._waker = selector, waker
        self._thread = threading.Thread(target=self._serve, name="posthog-lambda-frames", daemon=True)
        self._thread.start()
        return True

    def close(self, join_timeout: float = 2.0) -> None:
        """Stop accepting, close every connection, join the thread and remove the socket file."""
        with self._lock:
            self._closed = True
            listener, self._listener = self._listener, None
        waker = self._waker
        if waker is not None:
            with contextlib.suppress(OSError):
                waker[1].send(b"x")
        thread = self._thread
        if thread is not None and thread is not threading.current_thread() and thread.ident is not None:
            thread.join(join_timeout)
        if listener is not None:
            listener.close()
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        self._close_all()

    def settle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until the reader has taken in all the function wrote
        so far on every connection (nothing left unread, nothing being read); True if it has.
        Frames written before an END or a SHUTDOWN must not miss the flush that follows."""
        deadline = time.monotonic() + timeout
        while True:
            with self._idle:
                self._idle.wait_for(lambda: not self._busy, max(0.0, deadline - time.monotonic()))
                connections = list(self._connections) if not self._busy else None
                accepted = self._accepted
            if connections is not None:
                listener = self._listener
                # A connection still waiting to be accepted may have written already.
                readable = _readable(connections if listener is None else [*connections, listener])
                # The reader marks itself busy before it takes data out of a socket: nothing
                # unread and still not busy means all written before was taken in.
                # One accepted meanwhile is in neither the list nor the listener's backlog.
                with self._lock:
                    if not readable and not self._busy and self._accepted == accepted:
                        return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.001)  # the reader is about to take what select saw

    def ever_connected(self) -> bool:
        """Whether a function process has connected (or is waiting to be accepted): a traced
        handler's connects while it is decorated, during Init."""
        with self._lock:  # the reader accepts and notes it under the lock: never neither seen
            if self._accepted:
                return True
            listener = self._listener
            return listener is not None and bool(_readable([listener]))

    def restored(self) -> None:
        """After a restore from a snapshot: no invocation was under way on a connection made
        before it (the function replaces it after the restore: its closing is not a death)."""
        with self._lock:
            for stream in self._connections.values():
                stream.mid_invocation = False

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._connections)

    def _serve(self) -> None:
        selector, listener = self._selector, self._listener
        assert selector is not None
        assert listener is not None
        failures = 0
        try:
            while True:
                with self._lock:
                    if self._closed:
                        return
                try:
                    ready = selector.select()
                    for key, _ in ready:
                        sock = key.fileobj
                        if sock is listener:
                            failures = self._accept(listener, selector, failures)
                        elif isinstance(sock, socket.socket) and sock in self._connections:
                            self._read(sock, selector)
                except OSError as exc:  # EINTR is retried by Python; anything else, once more
                    _log.once(f"select:{exc.errno}", f"waiting for frames on {self.path} failed: {exc}")
                    threading.Event().wait(0.01)
                except Exception as exc:  # a bug must not end the reading: log it, serve on
                    _log.once(f"serve:{type(exc).__name__}", f"serving frames failed unexpectedly: {exc!r}")
        finally:
            self._close_all()

    def _accept(self, listener: socket.socket, selector: selectors.BaseSelector, failures: int) -> int:
        """Take every pending connection; the new count of consecutive failures."""
        while True:
            try:
                # Under the lock, from the backlog into the connections: settle and
                # ever_connected never find a connection in neither.
                with self._lock:
                    connection, _ = listener.accept()
                    self._accepted += 1
                    crowded = len(self._connections) >= self.max_connections
                    if not crowded:
                        self._connections[connection] = Stream()
            except BlockingIOError:
                return 0
            except OSError as exc:
                failures += 1
                _log.once(f"accept:{exc.errno}", f"accepting a connection on {self.path} failed: {exc}")
                # Out of file descriptors and the like: let the function's side close some.
                threading.Event().wait(min(1.0, 0.01 * 2**failures))
                return failures
            if crowded:
                _log.once("connections", f"more than {self.max_connections} connections on {self.path}; refusing more")
                connection.close()  # the library spools what it cannot write
                continue
            connection.setblocking(False)
            selector.register(connection, selectors.EVENT_READ, None)

    def _read(self, connection: socket.socket, selector: selectors.BaseSelector) -> None:
        stream = self._connections[connection]
        reader = stream.reader
        source = f"a connection to {self.path}"
        with self._lock:
            self._busy = True  # from before the data leaves the socket until it is taken in (settle)
        fed = False
        try:
            data = connection.recv(READ_SIZE)
            fed = bool(data) and self.intake.feed(reader, data, source, stream)
            if stream.answers:
                _answer(connection, stream)
        except BlockingIOError:
            fed = True  # nothing after all
        except OSError as exc:
            _log.debug(f"connection to {self.path} failed: {exc}")
        except Exception as exc:  # a bug must cost one connection, never the extension
            _log.once(f"read:{type(exc).__name__}", f"reading frames failed unexpectedly: {exc!r}")
        finally:
            if not fed:
                with contextlib.suppress(KeyError, ValueError, OSError):
                    selector.unregister(connection)
                with self._lock:
                    self._connections.pop(connection, None)
                connection.close()
                self.intake.finish(reader, source)
                if stream.mid_invocation:
                    # The function's process closed its connection between an invocation's first
                    # frame and its END: it died (os._exit, a crash, killed).
                    self.intake.invocations.process_died()
            with self._idle:
                self._busy = False
                self._idle.notify_all()

    def _close_all(self) -> None:
        """Close the connections (counting frames cut short), the selector and the waker; the
        reader's last act, and close()'s if the reader is gone or never ran (idempotent)."""
        with self._lock:
            connections, self._connections = dict(self._connections), {}
            selector, self._selector = self._selector, None
            waker, self._waker = self._waker, None
        for connection, stream in connections.items():
            connection.close()
            self.intake.finish(stream.reader, f"a connection to {self.path}")
        if selector is not None:
            with contextlib.suppress(OSError, KeyError, ValueError):
                selector.close()
        if waker is not None:
            for end in waker:
                end.close()


def _answer(connection: socket.socket, stream: Stream) -> None:
    """Write ``stream``'s answers back: a few bytes, to a function that waits for them."""
    answers, stream.answers = b"".join(stream.answers), []
    connection.settimeout(ANSWER_TIMEOUT_S)
    try:
        connection.sendall(answers)
    except OSError as exc:
        _log.warn(f"answering the function on {connection.getsockname() or 'the socket'} failed: {exc}")
    finally:
        connection.setblocking(False)


def _readable(connections: list[socket.socket]) -> list[socket.socket]:
    """Those of ``connections`` with data waiting (poll: no limit on descriptor numbers)."""
    poller = select.poll()
    by_fd: dict[int, socket.socket] = {}
    for connection in connections:
        try:
            fd = connection.fileno()
        except OSError:
            continue
        if fd >= 0:
            by_fd[fd] = connection
            poller.register(fd, select.POLLIN)
    try:
        return [by_fd[fd] for fd, _ in poller.poll(0) if fd in by_fd]
    except OSError:
        return connections  # one closed meanwhile: look again
