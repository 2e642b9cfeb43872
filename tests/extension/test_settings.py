"""Configuration from the environment: defaults, and a clear problem (never a failure) for bad values."""

from __future__ import annotations

from posthog_lambda_contract import environment
from posthog_lambda_extension._settings import MIN_BUFFER_BYTES, Settings


def test_defaults() -> None:
    s = Settings({"POSTHOG_API_KEY": " phc_abc "})
    assert s.name == "posthog-lambda"
    assert s.api_key == "phc_abc"
    assert s.host == "https://us.i.posthog.com"
    assert (s.mode, s.flush_at, s.flush_interval_ms) == ("adaptive", 10, 2000)
    assert s.buffer_bytes == 128 * 1024 * 1024 // 10
    assert (s.socket_path, s.spool_dir) == (environment.DEFAULT_SOCKET, environment.DEFAULT_SPOOL)
    assert (s.debug, s.disabled, s.discard_reason, s.problems) == (False, False, None, [])


def test_every_variable_is_read() -> None:
    s = Settings(
        {
            "POSTHOG_API_KEY": "phc_abc",
            "POSTHOG_HOST": "http://127.0.0.1:8000/",
            "POSTHOG_LAMBDA_FLUSH": "END",
            "POSTHOG_FLUSH_AT": "50",
            "POSTHOG_FLUSH_INTERVAL": "500",
            "POSTHOG_LAMBDA_DEBUG": "yes",
            "POSTHOG_LAMBDA_BUFFER_BYTES": "5000000",
            "POSTHOG_LAMBDA_SOCKET": "/tmp/x.sock",
            "POSTHOG_LAMBDA_SPOOL_DIR": "/tmp/spool-x",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1024",
        },
        ["/opt/extensions/my-ext"],
    )
    assert s.name == "my-ext"
    assert s.host == "http://127.0.0.1:8000"
    assert (s.mode, s.flush_at, s.flush_interval_ms, s.debug) == ("end", 50, 500, True)
    assert (s.buffer_bytes, s.socket_path, s.spool_dir) == (5_000_000, "/tmp/x.sock", "/tmp/spool-x")
    assert s.problems == []


def test_the_buffer_defaults_to_a_tenth_of_the_function_memory() -> None:
    assert Settings({"AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "2048"}).buffer_bytes == 2048 * 1024 * 1024 // 10


def test_bad_values_fall_back_with_one_problem_each() -> None:
    s = Settings(
        {
            "POSTHOG_API_KEY": "phc_abc",
            "POSTHOG_LAMBDA_FLUSH": "sometimes",
            "POSTHOG_FLUSH_AT": "ten",
            "POSTHOG_FLUSH_INTERVAL": "-5",
            "POSTHOG_LAMBDA_DEBUG": "maybe",
            "POSTHOG_LAMBDA_BUFFER_BYTES": "10",
        }
    )
    assert (s.mode, s.flush_at, s.flush_interval_ms, s.debug) == ("adaptive", 10, 2000, False)
    assert s.buffer_bytes == MIN_BUFFER_BYTES
    assert len(s.problems) == 5
    assert any("POSTHOG_LAMBDA_FLUSH='sometimes'" in p for p in s.problems)


def test_a_host_without_scheme_is_https_and_an_unusable_one_discards() -> None:
    assert Settings({"POSTHOG_HOST": "eu.i.posthog.com"}).host == "https://eu.i.posthog.com"
    bad = Settings({"POSTHOG_API_KEY": "phc_abc", "POSTHOG_HOST": "ftp://posthog"})
    assert bad.host is None
    assert bad.discard_reason == "events_bad_host"
    assert len(bad.problems) == 1


def test_why_events_are_discarded() -> None:
    assert Settings({}).discard_reason == "events_no_api_key"
    assert Settings({"POSTHOG_API_KEY": "phc_abc", "POSTHOG_DISABLED": "true"}).discard_reason == "events_disabled"
