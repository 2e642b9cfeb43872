"""Process-wide settings: explicit ``configure()`` values over environment variables.

The environment is read once, on first use. ``configure()`` never mutates the current
settings; it swaps in a new object, so a span that already read them keeps a consistent view.
"""

from __future__ import annotations

import os

from posthog_lambda_contract import environment as constants
from posthog_lambda_contract.environment import DEFAULT_SOCKET, DEFAULT_SPOOL
from posthog_lambda_contract.jsonable import DEFAULT_REDACT_KEYS, redact_key_set
from posthog_lambda_contract.limits import AI_EVENT_LIMIT, BATCH_EVENT_LIMIT, MIN_EVENT_LIMIT, clamp

from ._log import logger

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

    from ._types import Sink

DEFAULT_HOST = constants.DEFAULT_HOST


class Config:
    """The settings in force. Treated as immutable: ``configure()`` makes a new one."""

    __slots__ = (
        "api_key",
        "capture_input",
        "capture_output",
        "default_distinct_id",
        "enabled",
        "host",
        "max_event_bytes",
        "privacy_mode",
        "redact_keys",
        "sink",
        "socket_path",
        "spool_dir",
    )

    def __init__(
        self,
        *,
        enabled: bool,
        api_key: str | None,
        host: str | None,
        privacy_mode: bool,
        default_distinct_id: str | None,
        capture_input: bool,
        capture_output: bool,
        redact_keys: frozenset[str],
        max_event_bytes: int,
        sink: Sink | None,
        socket_path: str = DEFAULT_SOCKET,
        spool_dir: str = DEFAULT_SPOOL,
    ) -> None:
        self.enabled = enabled
        self.api_key = api_key
        self.host = host
        """PostHog's base URL for the direct fallback; None when the one given is not a URL."""
        self.privacy_mode = privacy_mode
        self.default_distinct_id = default_distinct_id
        self.capture_input = capture_input
        self.capture_output = capture_output
        self.redact_keys = redact_keys
        """Normalized key names; empty when redaction is off."""
        self.max_event_bytes = max_event_bytes
        self.sink = sink
        self.socket_path = socket_path
        """Where the extension listens; used when it exists."""
        self.spool_dir = spool_dir

    def replace(self, **changes: Any) -> Config:
        values = {name: getattr(self, name) for name in self.__slots__}
        values.update(changes)
        return Config(**values)


def _env_str(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def env_flag(name: str, default: bool) -> bool:
    """A boolean environment variable; an unreadable value keeps the default, logged."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = constants.parse_flag(raw)
    if value is None:
        logger.warning("%s=%r is not a boolean; using %s", name, raw, default)
        return default
    return value


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    value = constants.parse_int(raw)
    if value is None:
        if raw is not None and raw.strip():
            logger.warning("%s=%r is not an integer; using %d", name, raw, default)
        return default
    return value


def _host(raw: str | None) -> str | None:
    host = constants.parse_host(raw)
    if host is None:
        logger.warning(
            "%s=%r is not an http(s) URL such as %s; events are not sent to PostHog directly",
            constants.POSTHOG_HOST,
            raw,
            DEFAULT_HOST,
        )
    return host


def _clamp_limit(value: int) -> int:
    clamped = clamp(value)
    if clamped != value:
        logger.warning(
            "max event size %d is outside [%d, %d]; using %d", value, MIN_EVENT_LIMIT, AI_EVENT_LIMIT, clamped
        )
    return clamped


def _from_env() -> Config:
    named = constants.parse_redact_keys(os.environ.get(constants.POSTHOG_LAMBDA_REDACT_KEYS))
    redact_keys: Iterable[str] = DEFAULT_REDACT_KEYS if named is None else named
    redact = env_flag(constants.POSTHOG_LAMBDA_REDACT, True)
    return Config(
        enabled=env_flag(constants.POSTHOG_LAMBDA_ENABLED, True),
        api_key=_env_str(constants.POSTHOG_API_KEY),
        host=_host(os.environ.get(constants.POSTHOG_HOST)),
        privacy_mode=env_flag(constants.POSTHOG_PRIVACY_MODE, False),
        default_distinct_id=_env_str(constants.POSTHOG_DEFAULT_DISTINCT_ID),
        capture_input=env_flag(constants.POSTHOG_LAMBDA_CAPTURE_INPUT, True),
        capture_output=env_flag(constants.POSTHOG_LAMBDA_CAPTURE_OUTPUT, True),
        redact_keys=redact_key_set(redact_keys) if redact else frozenset(),
        max_event_bytes=_clamp_limit(_env_int(constants.POSTHOG_LAMBDA_MAX_EVENT_BYTES, BATCH_EVENT_LIMIT)),
        sink=None,
        socket_path=_env_str(constants.POSTHOG_LAMBDA_SOCKET) or DEFAULT_SOCKET,
        spool_dir=_env_str(constants.POSTHOG_LAMBDA_SPOOL_DIR) or DEFAULT_SPOOL,
    )


current: Config | None = None
"""The settings in force; None until first read. Hot paths read it directly."""


def get_config() -> Config:
    global current
    config = current
    if config is None:
        config = current = _from_env()
    return config


def reset_config() -> None:
    """Forget ``configure()`` calls and read the environment again (for tests)."""
    global current
    current = None


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


UNSET: Any = _Unset()


def _check(name: str, value: object, kind: type) -> None:
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise TypeError(f"configure({name}=...) expects {kind.__name__}, got {type(value).__name__}")


def configure(
    *,
    enabled: bool = UNSET,
    api_key: str | None = UNSET,
    host: str = UNSET,
    privacy_mode: bool = UNSET,
    default_distinct_id: str | None = UNSET,
    capture_input: bool = UNSET,
    capture_output: bool = UNSET,
    redact: bool = UNSET,
    redact_keys: Iterable[str] = UNSET,
    max_event_bytes: int = UNSET,
    sink: Sink | None = UNSET,
) -> None:
    """Set process-wide defaults; each argument left out keeps its current value.

    Environment variables are the fallback for anything never configured; decorator and span
    arguments win over both. ``redact=False`` turns redaction off, ``redact_keys`` replaces
    the list of sensitive keys. ``sink`` takes any object with ``send(events)``.
    """
    base = get_config()
    changes: dict[str, Any] = {}
    flags: tuple[tuple[str, Any], ...] = (
        ("enabled", enabled),
        ("privacy_mode", privacy_mode),
        ("capture_input", capture_input),
        ("capture_output", capture_output),
    )
    for name, value in flags:
        if value is not UNSET:
            _check(name, value, bool)
            changes[name] = value
    texts: tuple[tuple[str, Any], ...] = (("api_key", api_key), ("default_distinct_id", default_distinct_id))
    for name, value in texts:
        if value is not UNSET:
            if value is not None:
                _check(name, value, str)
            changes[name] = value or None
    if host is not UNSET:
        _check("host", host, str)
        changes["host"] = _host(host)
    if max_event_bytes is not UNSET:
        _check("max_event_bytes", max_event_bytes, int)
        changes["max_event_bytes"] = _clamp_limit(max_event_bytes)
    if sink is not UNSET:
        if sink is not None and not callable(getattr(sink, "send", None)):
            raise TypeError("configure(sink=...) expects an object with a send(events) method")
        changes["sink"] = sink
    keys = base.redact_keys
    if redact_keys is not UNSET:
        if isinstance(redact_keys, str):
            raise TypeError("configure(redact_keys=...) expects a list of key names, not a string")
        keys = redact_key_set(redact_keys)
    elif redact is True and not keys:
        keys = redact_key_set(DEFAULT_REDACT_KEYS)
    if redact is not UNSET:
        _check("redact", redact, bool)
        if not redact:
            keys = frozenset()
    changes["redact_keys"] = keys
    global current
    current = base.replace(**changes)
