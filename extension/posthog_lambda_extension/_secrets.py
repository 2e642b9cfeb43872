"""The PostHog API key read from AWS Secrets Manager or SSM Parameter Store.

The read uses aws-lambda-powertools' Parameters utility (``get_secret``, ``get_parameter`` with
``decrypt=True``) on boto3. Importing both takes about 0.3 s, so nothing here imports them
before :meth:`KeyStore.start`, which the extension calls once registered; the read then runs in a
thread while Lambda starts the runtime, and flushes wait for it only as long as they are told.

In Lambda the extension runs isolated (``python -I -S``, only its own directory on
``sys.path``). boto3 comes from the Python runtime's ``/var/runtime``, added to the end of
``sys.path`` just before the import; aws-lambda-powertools is not there, so the layer must bundle
it (and its dependencies) next to the extension for this feature to work.

Whatever goes wrong (no permission, no such secret, a package missing) becomes one problem text
naming the source, never the value; nothing here raises into the extension's loop.
"""

from __future__ import annotations

import json
import os
import sys
import threading

from posthog_lambda_contract import environment

from . import _log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

RUNTIME_PACKAGES = "/var/runtime"
"""Where AWS's Python runtimes keep boto3 (and botocore, jmespath, ...)."""
JSON_FIELDS = (environment.POSTHOG_API_KEY, "api_key")
"""The fields of a JSON secret that may hold the key, the first present wins."""
PROBLEM_CHARS = 300


class KeyUnavailable(Exception):
    """Why the key could not be read (the text never contains a value)."""


class _Background:
    """``work()`` run once in a daemon thread: a hung AWS call must not hold up the extension."""

    def __init__(self, work: Callable[[], str]) -> None:
        self.done = threading.Event()
        self.key: str | None = None
        self.problem: str | None = None
        self._work = work
        threading.Thread(target=self._run, name="posthog-lambda-key", daemon=True).start()

    def _run(self) -> None:
        try:
            self.key = self._work()
        except Exception as exc:
            self.problem = problem_text(exc)
        finally:
            self.done.set()


class KeyStore:
    """The secret or parameter named by ``variable`` (one of the two constants) = ``name``."""

    def __init__(self, variable: str, name: str) -> None:
        self.variable = variable
        self.name = name
        self._first: _Background | None = None
        self._lock = threading.Lock()
        self._said = False

    def describe(self) -> str:
        """Where the key comes from, for log lines."""
        what = "Secrets Manager secret" if self.variable == environment.POSTHOG_API_KEY_SECRET_ARN else "SSM parameter"
        return f"the {what} {self.name!r} ({self.variable})"

    def start(self) -> None:
        """Start the first read in the background, unless started already."""
        with self._lock:
            if self._first is None:
                self._first = _Background(lambda: self.read(force=False))

    def wait(self, timeout: float) -> tuple[bool, str | None]:
        """``(done, key)`` once the first read ended within ``timeout`` seconds; ``key`` is None
        when it failed, which is said once, here."""
        self.start()
        first = self._first
        assert first is not None
        if not first.done.wait(max(0.0, timeout)):
            return False, None
        if first.key is None and not self._said:
            self._said = True
            _log.warn(
                f"cannot read the PostHog API key from {self.describe()}: {first.problem}; "
                "events from the function are discarded (counted)"
            )
        return True, first.key

    def refetch(self, timeout: float) -> str:
        """The key read again, bypassing powertools' cache (after PostHog refused the one in use);
        KeyUnavailable if that fails or takes longer than ``timeout`` seconds."""
        again = _Background(lambda: self.read(force=True))
        if not again.done.wait(max(0.0, timeout)):
            raise KeyUnavailable(f"no answer within {timeout:.1f} s")
        if again.key is None:
            raise KeyUnavailable(again.problem)
        return again.key

    def read(self, force: bool) -> str:
        """The key, straight from the store when ``force`` (else powertools may use its cache)."""
        _add_runtime_packages()
        from aws_lambda_powertools.utilities.parameters import get_parameter, get_secret

        if self.variable == environment.POSTHOG_API_KEY_SECRET_ARN:
            return key_from_secret(get_secret(self.name, force_fetch=force))
        value = get_parameter(self.name, decrypt=True, force_fetch=force).strip()
        if not value:
            raise KeyUnavailable("it is empty")
        return value


def _add_runtime_packages() -> None:
    # Appended, not prepended: the extension's own directory (and a powertools or boto3 the layer
    # may bundle there) keeps precedence over the runtime's copies.
    if RUNTIME_PACKAGES not in sys.path and os.path.isdir(RUNTIME_PACKAGES):
        sys.path.append(RUNTIME_PACKAGES)


def key_from_secret(value: str | bytes) -> str:
    """The key in a secret's value: the value itself, or a JSON object's key field."""
    if isinstance(value, bytes):  # a SecretBinary
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise KeyUnavailable("its binary value is not UTF-8 text") from None
    text = value.strip()
    if not text:
        raise KeyUnavailable("it is empty")
    if not text.startswith("{"):
        return text
    try:
        fields = json.loads(text)
    except ValueError:
        raise KeyUnavailable("its value starts with '{' but is not a JSON object") from None
    for field in JSON_FIELDS:
        found = fields.get(field)
        if isinstance(found, str) and found.strip():
            return found.strip()
    raise KeyUnavailable(f"its JSON object has no {' or '.join(JSON_FIELDS)} field holding a non-empty string")


def problem_text(exc: BaseException) -> str:
    if isinstance(exc, KeyUnavailable):
        return str(exc)
    if isinstance(exc, ImportError):
        return (
            f"{exc} (the layer must bundle aws-lambda-powertools; boto3 comes from the Lambda runtime's "
            f"{RUNTIME_PACKAGES})"
        )
    # AWS errors name the operation, the error code and the secret, not its value.
    return f"{type(exc).__name__}: {(str(exc) or 'no detail')[:PROBLEM_CHARS]}"
