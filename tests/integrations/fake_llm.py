"""A local stand-in for OpenAI's and Anthropic's HTTP APIs, for the real SDKs to talk to.

It speaks enough of each wire format for the official ``openai`` and ``anthropic`` clients
(and so posthog-python's wrappers around them, and LangChain's ``ChatOpenAI``) to run
unchanged: OpenAI Chat Completions and Responses, Anthropic Messages, each plain JSON or
streamed as server-sent events, and OpenAI Embeddings, with usage in the provider's own shape (the final usage chunk
of a Chat Completions stream only when ``stream_options.include_usage`` asks for it, as the
real API does). Answers are deterministic: the reply is ``reply`` and token counts are word
counts (``count_tokens``), so tests can say exactly what to expect. ``first_token_delay_s``
holds back the first streamed content and ``chunk_delay_s`` spaces the rest, so that time to
first token and latency are measurable and different. A model named ``fail-<status>`` gets
that HTTP status with the provider's error body.

    with FakeLLM() as llm:
        client = openai.OpenAI(base_url=llm.openai_url, api_key="sk-test")

Standard library only; run it in the foreground with
``python tests/integrations/fake_llm.py [--port N]``.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["DEFAULT_REPLY", "FakeLLM", "count_tokens"]

DEFAULT_REPLY = "Paris is the capital of France."
CREATED = 1_767_225_600  # a fixed Unix time, so responses are the same on every run


def count_tokens(text: str) -> int:
    """The fake's tokenizer: one token per whitespace-separated word."""
    return len(text.split())


def _text_of(content: Any) -> str:
    """The text in a message's content: a string, or a list of typed parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            _text_of(part.get("text") or part.get("content") or "") for part in content if isinstance(part, dict)
        )
    return ""


def prompt_tokens(body: dict[str, Any]) -> int:
    """What the fake charges for a request's input: the words of every message (and of the
    system prompt or instructions)."""
    words = 0
    for message in body.get("messages") or []:
        words += count_tokens(_text_of(message.get("content")))
    raw_input = body.get("input")
    if isinstance(raw_input, str):
        words += count_tokens(raw_input)
    elif isinstance(raw_input, list):
        words += sum(count_tokens(_text_of(item.get("content"))) for item in raw_input if isinstance(item, dict))
    words += count_tokens(_text_of(body.get("system") or ""))
    words += count_tokens(body.get("instructions") or "")
    return words


class FakeLLM:
    """The fake provider, serving on 127.0.0.1 at a free port while entered."""

    def __init__(
        self, reply: str = DEFAULT_REPLY, first_token_delay_s: float = 0.0, chunk_delay_s: float = 0.0
    ) -> None:
        self.reply = reply
        self.first_token_delay_s = first_token_delay_s
        self.chunk_delay_s = chunk_delay_s
        self.requests: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        """(path, headers with lower-case names, JSON body) of each request, in order."""
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, port: int = 0) -> FakeLLM:
        server = ThreadingHTTPServer(("127.0.0.1", port), _handler_for(self))
        server.daemon_threads = True
        self._server = server
        # A short poll interval: shutdown() waits for the next poll.
        self._thread = threading.Thread(target=server.serve_forever, args=(0.02,), name="fake-llm", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeLLM:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "FakeLLM is not running"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def openai_url(self) -> str:
        """``base_url`` for ``openai.OpenAI`` (its paths start after ``/v1``)."""
        return self.url + "/v1"

    @property
    def anthropic_url(self) -> str:
        """``base_url`` for ``anthropic.Anthropic`` (it adds ``/v1/messages`` itself)."""
        return self.url

    # -- what a request gets ----------------------------------------------------------------

    def record(self, path: str, headers: dict[str, str], body: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append((path, headers, body))

    def pieces(self) -> list[str]:
        """The reply as streamed: one word per chunk, spaces kept on the word before."""
        words = self.reply.split(" ")
        return [word + (" " if i < len(words) - 1 else "") for i, word in enumerate(words)]

    def pause(self, index: int) -> None:
        delay = self.first_token_delay_s if index == 0 else self.chunk_delay_s
        if delay > 0:
            time.sleep(delay)


def _failure_status(body: dict[str, Any]) -> int | None:
    model = str(body.get("model") or "")
    if model.startswith("fail-"):
        try:
            return int(model.split("-", 1)[1])
        except ValueError:
            return 500
    return None


def _handler_for(llm: FakeLLM) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "fake-llm/1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                self._json(400, {"error": {"message": "body is not JSON", "type": "invalid_request_error"}})
                return
            path = self.path.split("?", 1)[0]
            llm.record(path, {k.lower(): v for k, v in self.headers.items()}, body)
            routes = {
                "/v1/chat/completions": _Chat,
                "/v1/responses": _Responses,
                "/v1/embeddings": _Embeddings,
                "/v1/messages": _Messages,
            }
            api = routes.get(path)
            if api is None:
                self._json(404, {"error": {"message": f"no route {path}", "type": "not_found_error"}})
                return
            status = _failure_status(body)
            if status is not None:
                self._json(status, api.error(status))
                return
            if body.get("stream"):
                self._stream(api(llm, body).events())
            else:
                self._json(200, api(llm, body).whole())

        def _json(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.send_header("x-request-id", "req_fake")
            self.end_headers()
            self.wfile.write(data)

        def _stream(self, events: list[tuple[str | None, Any, int | None]]) -> None:
            # HTTP/1.0 without a length: the body ends when the connection closes, and each
            # event is written (and so received) as soon as it is due.
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("cache-control", "no-cache")
            self.send_header("x-request-id", "req_fake")
            self.end_headers()
            for name, data, pause_index in events:
                if pause_index is not None:
                    llm.pause(pause_index)
                text = data if isinstance(data, str) else json.dumps(data)
                frame = (f"event: {name}\n" if name else "") + f"data: {text}\n\n"
                self.wfile.write(frame.encode())
                self.wfile.flush()

    return Handler


class _Call:
    """One request to the fake provider: what it asked for, and what the answer will count."""

    default_model = "gpt-4o-mini"

    def __init__(self, llm: FakeLLM, body: dict[str, Any]) -> None:
        self.llm = llm
        self.body = body
        self.model = str(body.get("model") or self.default_model)
        self.input_tokens = prompt_tokens(body)
        self.output_tokens = count_tokens(llm.reply)

    @staticmethod
    def error(status: int) -> dict[str, Any]:
        """The provider's error body for an HTTP ``status``."""
        raise NotImplementedError

    def whole(self) -> dict[str, Any]:
        """The answer in one response."""
        raise NotImplementedError

    def events(self) -> list[tuple[str | None, Any, int | None]]:
        """The answer as server-sent events: (event name, data, pause before it)."""
        raise NotImplementedError


class _Chat(_Call):
    """OpenAI Chat Completions (``POST /v1/chat/completions``)."""

    @staticmethod
    def error(status: int) -> dict[str, Any]:
        return {"error": {"message": f"fake failure {status}", "type": "invalid_request_error", "code": "fake"}}

    def usage(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.input_tokens,
            "completion_tokens": self.output_tokens,
            "total_tokens": self.input_tokens + self.output_tokens,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        }

    def whole(self) -> dict[str, Any]:
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": CREATED,
            "model": self.model,
            "system_fingerprint": "fp_fake",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": self.llm.reply, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": self.usage(),
        }

    def _chunk(self, delta: dict[str, Any], finish: str | None, with_usage_field: bool) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": self.model,
            "system_fingerprint": "fp_fake",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if with_usage_field:
            chunk["usage"] = None
        return chunk

    def events(self) -> list[tuple[str | None, Any, int | None]]:
        options = self.body.get("stream_options") or {}
        include_usage = bool(options.get("include_usage"))
        out: list[tuple[str | None, Any, int | None]] = [
            (None, self._chunk({"role": "assistant", "content": "", "refusal": None}, None, include_usage), None)
        ]
        for index, piece in enumerate(self.llm.pieces()):
            out.append((None, self._chunk({"content": piece}, None, include_usage), index))
        out.append((None, self._chunk({}, "stop", include_usage), None))
        if include_usage:
            last = self._chunk({}, None, False)
            last["choices"] = []
            last["usage"] = self.usage()
            out.append((None, last, None))
        out.append((None, "[DONE]", None))
        return out


class _Responses(_Call):
    """OpenAI Responses (``POST /v1/responses``)."""

    @staticmethod
    def error(status: int) -> dict[str, Any]:
        return _Chat.error(status)

    def _response(self, status: str, text: str | None) -> dict[str, Any]:
        output = []
        if text is not None:
            output.append(
                {
                    "type": "message",
                    "id": "msg_fake",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}],
                }
            )
        response: dict[str, Any] = {
            "id": "resp_fake",
            "object": "response",
            "created_at": CREATED,
            "status": status,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "instructions": self.body.get("instructions"),
            "incomplete_details": None,
            "error": None,
            "usage": None,
        }
        if status == "completed":
            response["usage"] = {
                "input_tokens": self.input_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": self.output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": self.input_tokens + self.output_tokens,
            }
        return response

    def whole(self) -> dict[str, Any]:
        return self._response("completed", self.llm.reply)

    def events(self) -> list[tuple[str | None, Any, int | None]]:
        out: list[tuple[str | None, Any, int | None]] = []
        sequence = 0

        def add(kind: str, payload: dict[str, Any], pause_index: int | None = None) -> None:
            nonlocal sequence
            out.append((kind, {"type": kind, "sequence_number": sequence, **payload}, pause_index))
            sequence += 1

        add("response.created", {"response": self._response("in_progress", None)})
        item = {"type": "message", "id": "msg_fake", "status": "in_progress", "role": "assistant", "content": []}
        add("response.output_item.added", {"output_index": 0, "item": item})
        part = {"type": "output_text", "text": "", "annotations": []}
        add("response.content_part.added", {"item_id": "msg_fake", "output_index": 0, "content_index": 0, "part": part})
        for index, piece in enumerate(self.llm.pieces()):
            add(
                "response.output_text.delta",
                {"item_id": "msg_fake", "output_index": 0, "content_index": 0, "delta": piece},
                index,
            )
        done = {"item_id": "msg_fake", "output_index": 0, "content_index": 0}
        add("response.output_text.done", {**done, "text": self.llm.reply})
        add("response.content_part.done", {**done, "part": {**part, "text": self.llm.reply}})
        finished = self._response("completed", self.llm.reply)
        add("response.output_item.done", {"output_index": 0, "item": finished["output"][0]})
        add("response.completed", {"response": finished})
        return out


class _Embeddings(_Chat):
    """OpenAI Embeddings (``POST /v1/embeddings``): a fixed small vector per input text."""

    def whole(self) -> dict[str, Any]:
        raw = self.body.get("input")
        texts = [raw] if isinstance(raw, str) else list(raw or [])
        tokens = sum(count_tokens(str(text)) for text in texts)
        return {
            "object": "list",
            "model": self.model,
            "data": [{"object": "embedding", "index": i, "embedding": [0.25, -0.5, 1.0]} for i in range(len(texts))],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }


class _Messages(_Call):
    """Anthropic Messages (``POST /v1/messages``)."""

    default_model = "claude-haiku-4-5"

    @staticmethod
    def error(status: int) -> dict[str, Any]:
        return {"type": "error", "error": {"type": "invalid_request_error", "message": f"fake failure {status}"}}

    def _message(self, content: list[dict[str, Any]], stop: str | None, output_tokens: int) -> dict[str, Any]:
        return {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {
                "input_tokens": self.input_tokens,
                "output_tokens": output_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
        }

    def whole(self) -> dict[str, Any]:
        return self._message([{"type": "text", "text": self.llm.reply}], "end_turn", self.output_tokens)

    def events(self) -> list[tuple[str | None, Any, int | None]]:
        out: list[tuple[str | None, Any, int | None]] = []

        def add(kind: str, payload: dict[str, Any], pause_index: int | None = None) -> None:
            out.append((kind, {"type": kind, **payload}, pause_index))

        # As the real API does: input usage up front, output usage on message_delta.
        add("message_start", {"message": self._message([], None, 1)})
        add("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
        add("ping", {})
        for index, piece in enumerate(self.llm.pieces()):
            add("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": piece}}, index)
        add("content_block_stop", {"index": 0})
        add(
            "message_delta",
            {
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": self.output_tokens},
            },
        )
        add("message_stop", {})
        return out


def main() -> None:
    """Serve in the foreground until Ctrl-C (for running the examples without an API key)."""
    import argparse

    parser = argparse.ArgumentParser(description="A fake OpenAI and Anthropic API, for the examples and tests.")
    parser.add_argument("--port", type=int, default=0, help="port (default: any free port)")
    parser.add_argument("--first-token-delay", type=float, default=0.2, help="seconds before the first token")
    parser.add_argument("--chunk-delay", type=float, default=0.05, help="seconds between streamed chunks")
    options = parser.parse_args()
    llm = FakeLLM(first_token_delay_s=options.first_token_delay, chunk_delay_s=options.chunk_delay)
    llm.start(options.port)
    print(f"fake LLM: OPENAI_BASE_URL={llm.openai_url} ANTHROPIC_BASE_URL={llm.anthropic_url}", flush=True)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    finally:
        llm.stop()


if __name__ == "__main__":
    main()
