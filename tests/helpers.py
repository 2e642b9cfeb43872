"""Shared test helpers."""

from __future__ import annotations

from typing import Any


class LambdaContext:
    """The attributes awslambdaric's context object has."""

    def __init__(self, request_id: str = "req-1") -> None:
        self.aws_request_id = request_id
        self.function_name = "ask"
        self.function_version = "$LATEST"
        self.invoked_function_arn = "arn:aws:lambda:eu-west-1:123456789012:function:ask"
        self.memory_limit_in_mb = "512"
        self.log_group_name = "/aws/lambda/ask"
        self.log_stream_name = "2026/11/27/[$LATEST]abc"

    def get_remaining_time_in_millis(self) -> int:
        return 3000


def by_kind(events: list[Any], kind: str) -> list[Any]:
    return [e for e in events if e["event"] == kind]


def one(events: list[Any], kind: str, name: str | None = None) -> Any:
    found = [e for e in by_kind(events, kind) if name is None or e["properties"].get("$ai_span_name") == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}: {[e['event'] for e in events]}"
    return found[0]


class CaptureServer:
    """A loopback HTTP server that records what PostHog's capture endpoints would receive."""

    def __init__(self) -> None:
        import gzip
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests: list[dict[str, Any]] = []
        self.received = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip" or "compression=gzip" in self.path:
                    body = gzip.decompress(body)
                with outer.received:
                    outer.requests.append({"path": self.path.split("?")[0], "body": json.loads(body)})
                    outer.received.notify_all()
                payload = b'{"status": 1}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def events(self, path: str | None = None) -> list[dict[str, Any]]:
        with self.received:
            return [e for r in self.requests if path in (None, r["path"]) for e in r["body"]["batch"]]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
