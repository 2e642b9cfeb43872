"""The Extensions API client: HTTP/1.1 answers in every framing, and retries that never give up."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from posthog_lambda_extension import _api
from posthog_lambda_extension._api import ApiError, ExtensionsApi, next_event, register

Answer = Callable[[bytes], bytes]


class RawServer:
    """Answers each connection's request with the next scripted bytes, then closes it."""

    def __init__(self, answers: list[Answer]) -> None:
        self.answers = answers
        self.requests: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.listener.getsockname()[1]}"

    def _serve(self) -> None:
        for answer in self.answers:
            connection, _ = self.listener.accept()
            with connection:
                request = b""
                while b"\r\n\r\n" not in request:
                    request += connection.recv(65536)
                head, _, body = request.partition(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    ),
                    0,
                )
                while len(body) < length:
                    body += connection.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + body)
                connection.sendall(answer(request))

    def close(self) -> None:
        self.thread.join(5)
        self.listener.close()


@pytest.fixture
def serve() -> Iterator[Callable[[list[Answer]], RawServer]]:
    servers: list[RawServer] = []

    def start(answers: list[Answer]) -> RawServer:
        servers.append(RawServer(answers))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def fixed(data: bytes) -> Answer:
    return lambda request: data


def test_register_sends_name_and_events_and_returns_the_identifier(serve: Callable[[list[Answer]], RawServer]) -> None:
    server = serve([fixed(b"HTTP/1.1 200 OK\r\nLambda-Extension-Identifier: abc\r\nContent-Length: 2\r\n\r\n{}")])
    assert ExtensionsApi(server.address).register("my-ext", ["INVOKE", "SHUTDOWN"]) == "abc"
    server.close()
    (request,) = server.requests
    assert request.startswith(b"POST /2020-01-01/extension/register HTTP/1.1\r\n")
    assert b"\r\nLambda-Extension-Name: my-ext\r\n" in request
    assert request.endswith(b'{"events": ["INVOKE", "SHUTDOWN"]}')


@pytest.mark.parametrize(
    "answer",
    [
        b'HTTP/1.1 200 OK\r\nContent-Length: 24\r\n\r\n{"eventType": "INVOKE"}\n',
        b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\n{"even\r\n11\r\ntType": "INVOKE"}\r\n0\r\n\r\n',
        b'HTTP/1.0 200 OK\r\n\r\n{"eventType": "INVOKE"}',  # ended by closing the connection
    ],
)
def test_next_reads_any_framing(serve: Callable[[list[Answer]], RawServer], answer: bytes) -> None:
    server = serve([fixed(answer)])
    assert ExtensionsApi(server.address).next("abc") == {"eventType": "INVOKE"}
    server.close()
    assert b"\r\nLambda-Extension-Identifier: abc\r\n" in server.requests[0]


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nnope", "answered 403: nope"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n{x}", "not JSON"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]", "not an object"),
        (b"SSH-2.0-nonsense\r\n\r\n", "answered 'SSH-2.0-nonsense'"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{}", "in the middle of its answer"),
    ],
)
def test_bad_answers_are_api_errors(serve: Callable[[list[Answer]], RawServer], answer: bytes, message: str) -> None:
    server = serve([fixed(answer)])
    with pytest.raises(ApiError, match=message):
        ExtensionsApi(server.address).next("abc")


def test_an_address_that_is_not_host_port_is_refused() -> None:
    with pytest.raises(ApiError, match="is not host:port"):
        ExtensionsApi("")


def test_register_and_next_retry_until_they_work(
    serve: Callable[[list[Answer]], RawServer], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(_api, "RETRY_MAX_S", 0.0)
    server = serve(
        [
            fixed(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n"),
            fixed(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n"),
            fixed(b"HTTP/1.1 200 OK\r\nLambda-Extension-Identifier: abc\r\nContent-Length: 0\r\n\r\n"),
            fixed(b""),  # closed without a word
            fixed(b'HTTP/1.1 200 OK\r\nContent-Length: 25\r\n\r\n{"eventType": "SHUTDOWN"}'),
        ]
    )
    api = ExtensionsApi(server.address)
    assert register(api, "ext") == ("abc", True)
    assert next_event(api, "abc") == {"eventType": "SHUTDOWN"}
    out = capsys.readouterr().out
    assert out.count("registering as 'ext' failed") == 1  # said once, however often it is retried
    assert out.count("waiting for the next event failed") == 1


def test_a_refused_invoke_registration_falls_back_to_shutdown_only(
    serve: Callable[[list[Answer]], RawServer], capsys: pytest.CaptureFixture[str]
) -> None:
    # Lambda Managed Instances' answer to INVOKE: retrying it would hold Init until it times out.
    refusal = b'{"errorType":"Extension.InvalidEventType","errorMessage":"INVOKE: ErrorInvalidEventType"}'
    server = serve(
        [
            fixed(b"HTTP/1.1 403 Forbidden\r\nContent-Length: %d\r\n\r\n%s" % (len(refusal), refusal)),
            fixed(b"HTTP/1.1 200 OK\r\nLambda-Extension-Identifier: abc\r\nContent-Length: 0\r\n\r\n"),
        ]
    )
    assert register(ExtensionsApi(server.address), "ext") == ("abc", False)
    bodies = [json.loads(request.partition(b"\r\n\r\n")[2]) for request in server.requests]
    assert bodies == [{"events": ["INVOKE", "SHUTDOWN"]}, {"events": ["SHUTDOWN"]}]
    assert "refuses INVOKE events" in capsys.readouterr().out


def test_on_managed_instances_it_registers_for_shutdown_only(serve: Callable[[list[Answer]], RawServer]) -> None:
    server = serve([fixed(b"HTTP/1.1 200 OK\r\nLambda-Extension-Identifier: abc\r\nContent-Length: 0\r\n\r\n")])
    assert register(ExtensionsApi(server.address), "ext", invoke=False) == ("abc", False)
    assert json.loads(server.requests[0].partition(b"\r\n\r\n")[2]) == {"events": ["SHUTDOWN"]}
