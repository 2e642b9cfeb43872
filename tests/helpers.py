"""Shared test helpers."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def layer_build() -> Any:
    """``layer/build.py`` as a module: the one recipe for the layer, its supported runtimes and
    how it finds an interpreter for each."""
    spec = importlib.util.spec_from_file_location("layer_build", ROOT / "layer" / "build.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def built_layer() -> Path:
    """build/layer exactly as `make layer` built it (`make test` builds it first); built here
    with the same recipe only when a test run started without it."""
    built = ROOT / "build" / "layer"
    if not (built / "extensions" / "posthog-lambda").exists():
        layer_build().build(built)
    return built
