"""The Unix socket the function's process writes frames to.

Its listening end is bound before the extension registers (``_unix_socket``), so that it exists by
the time the function starts. A thread accepts connections for as long as the environment runs
(including while the main thread waits in next) and each connection gets a thread that reads
frames until it closes. A bad header closes that connection: the rest of its stream cannot be
trusted. Before it flushes at the end of an invocation or at shutdown, the main loop lets the
readers take in what the function already wrote (``settle``).
"""

from __future__ import annotations

import contextlib
import os
import select
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
MAX_CONNECTIONS = 64
"""A function has a handful of processes; more connections than this are a runaway writer."""


class FrameServer:
    def __init__(self, path: str, intake: Intake) -> None:
        self.path = path
        self.intake = intake
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._busy = 0
        """Readers taking in data they received (between recv and the end of its frames)."""
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._closed = False
        self._accepter: threading.Thread | None = None

    def start(self, listener: socket.socket | None = None) -> bool:
        """Accept connections on ``listener`` (made by ``_unix_socket.bind``, or here if None);
        False if there is no socket to listen on."""
        if listener is None:
            listener = bind(self.path)
            if listener is None:
                return False
        self._listener = listener
        self._accepter = threading.Thread(target=self._accept, name="posthog-lambda-accept", daemon=True)
        self._accepter.start()
        return True

    def close(self, join_timeout: float = 2.0) -> None:
        """Stop accepting, close every connection, join the threads and remove the socket file."""
        with self._lock:
            self._closed = True
            listener, self._listener = self._listener, None
            connections = dict(self._connections)
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
            listener.close()
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)  # wakes recv()
        current = threading.current_thread()
        for thread in [*connections.values(), self._accepter]:
            # A connection's thread may not have started yet (accepted a moment ago).
            if thread is not None and thread is not current and thread.ident is not None:
                thread.join(join_timeout)

    def settle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until every connection's readers have taken in all the
        function wrote so far (nothing left unread, nothing being read); True if they have.
        Frames written before an END or a SHUTDOWN must not miss the flush that follows."""
        deadline = time.monotonic() + timeout
        while True:
            with self._idle:
                self._idle.wait_for(lambda: self._busy == 0, max(0.0, deadline - time.monotonic()))
                connections = list(self._connections) if self._busy == 0 else None
            if connections is not None:
                try:
                    readable = select.select(connections, [], [], 0)[0] if connections else []
                except (OSError, ValueError):  # one closed meanwhile: look again
                    readable = connections
                # A reader marks itself busy before it takes data out of the socket: nothing
                # unread and still no one busy means all written before was taken in.
                with self._lock:
                    if not readable and self._busy == 0:
                        return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.001)  # a reader is about to take what select saw

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._connections)

    def _accept(self) -> None:
        listener = self._listener
        assert listener is not None
        failures = 0
        while True:
            try:
                connection, _ = listener.accept()
            except OSError as exc:
                with self._lock:
                    if self._closed:
                        return
                failures += 1
                _log.once(f"accept:{exc.errno}", f"accepting a connection on {self.path} failed: {exc}")
                # Out of file descriptors and the like: let the function's side close some.
                threading.Event().wait(min(1.0, 0.01 * 2**failures))
                continue
            failures = 0
            self._serve(connection)

    def _serve(self, connection: socket.socket) -> None:
        with self._lock:
            closed = self._closed
            crowded = len(self._connections) >= MAX_CONNECTIONS
            if not (closed or crowded):
                thread = threading.Thread(
                    target=self._read, args=(connection,), name="posthog-lambda-connection", daemon=True
                )
                self._connections[connection] = thread
        if closed or crowded:
            if crowded and not closed:
                _log.once("connections", f"more than {MAX_CONNECTIONS} connections on {self.path}; refusing more")
            connection.close()
            return
        try:
            thread.start()
        except RuntimeError as exc:  # no thread to be had: lose this connection, keep accepting
            _log.once("thread", f"cannot read a connection on {self.path}: {exc}")
            with self._lock:
                self._connections.pop(connection, None)
            connection.close()

    def _read(self, connection: socket.socket) -> None:
        reader = frames.Reader()
        source = f"a connection to {self.path}"
        try:
            while True:
                # Busy from before the data leaves the socket until it is taken in (settle).
                select.select([connection], [], [])
                with self._lock:
                    self._busy += 1
                try:
                    data = connection.recv(READ_SIZE)
                    fed = bool(data) and self.intake.feed(reader, data, source)
                finally:
                    with self._idle:
                        self._busy -= 1
                        self._idle.notify_all()
                if not fed:
                    break
        except OSError as exc:
            _log.debug(f"connection to {self.path} failed: {exc}")
        except Exception as exc:  # a bug must cost one connection, never the extension
            _log.once(f"read:{type(exc).__name__}", f"reading frames failed unexpectedly: {exc!r}")
        finally:
            with self._lock:
                self._connections.pop(connection, None)
            connection.close()
            self.intake.finish(reader, source)
