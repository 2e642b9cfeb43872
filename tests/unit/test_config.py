"""Settings: environment variables, configure(), and the README's configuration table."""

from __future__ import annotations

import ast
import pathlib
from typing import Any

import pytest

from posthog_lambda import configure, constants
from posthog_lambda._config import DEFAULT_HOST, get_config
from posthog_lambda_contract import environment
from posthog_lambda_contract.limits import BATCH_EVENT_LIMIT

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _env_names() -> dict[str, str]:
    """Each environment variable's name (a constant whose value is its name) with its docstring."""
    assert constants.POSTHOG_API_KEY == environment.POSTHOG_API_KEY  # the public name of the same module
    tree = ast.parse(pathlib.Path(environment.__file__).read_text())
    names: dict[str, str] = {}
    body = tree.body
    for node, following in zip(body, [*body[1:], None], strict=True):
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Constant)
            and [getattr(t, "id", None) for t in node.targets] == [node.value.value]
        ):
            assert isinstance(following, ast.Expr), f"{ast.unparse(node)} has no docstring"
            names[node.value.value] = ast.literal_eval(following.value)
    return names


def test_every_environment_variable_has_a_docstring_and_a_readme_row() -> None:
    names = _env_names()
    assert len(names) >= 10
    readme = (ROOT / "README.md").read_text()
    table_rows = [line for line in readme.splitlines() if line.startswith("| `")]
    for name in names:
        assert any(row.startswith(f"| `{name}`") for row in table_rows), f"README lacks a row for {name}"
    documented = {row.split("`")[1] for row in table_rows if row.split("`")[1].isupper()}
    assert documented - set(names) == set(), "README documents variables the code does not read"


def test_defaults() -> None:
    config = get_config()
    assert config.enabled is True
    assert config.api_key is None
    assert config.host == DEFAULT_HOST
    assert config.privacy_mode is False
    assert config.default_distinct_id is None
    assert config.max_event_bytes == BATCH_EVENT_LIMIT
    assert "authorization" in config.redact_keys
    assert "setcookie" in config.redact_keys


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTHOG_API_KEY", "phc_abc")
    monkeypatch.setenv("POSTHOG_HOST", "https://eu.i.posthog.com/")
    monkeypatch.setenv("POSTHOG_PRIVACY_MODE", "TRUE")
    monkeypatch.setenv("POSTHOG_LAMBDA_MAX_EVENT_BYTES", "2000000")
    config = get_config()
    assert config.api_key == "phc_abc"
    assert config.host == "https://eu.i.posthog.com"
    assert config.privacy_mode is True
    assert config.max_event_bytes == 2_000_000


def test_unreadable_values_keep_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTHOG_PRIVACY_MODE", "maybe")
    monkeypatch.setenv("POSTHOG_LAMBDA_MAX_EVENT_BYTES", "lots")
    config = get_config()
    assert config.privacy_mode is False
    assert config.max_event_bytes == BATCH_EVENT_LIMIT


def test_configure_wins_over_environment_and_keeps_what_it_is_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTHOG_PRIVACY_MODE", "true")
    monkeypatch.setenv("POSTHOG_DEFAULT_DISTINCT_ID", "env-id")
    before = get_config()
    configure(privacy_mode=False)
    after = get_config()
    assert after.privacy_mode is False
    assert after.default_distinct_id == "env-id"
    assert before.privacy_mode is True  # settings are replaced, never mutated
    configure(default_distinct_id=None)
    assert get_config().default_distinct_id is None


def test_configure_sink(events: list[Any]) -> None:
    class Collect:
        def __init__(self) -> None:
            self.got: list[Any] = []

        def send(self, events: Any) -> None:
            self.got.extend(events)

    sink = Collect()
    configure(sink=sink)
    from posthog_lambda import span

    with span("x"):
        pass
    # testing.capture_events() is active in this test, and it wins over the configured sink.
    assert len(events) == 1
    assert sink.got == []
