"""The library's one logger, ``posthog_lambda``.

It is silent unless POSTHOG_LAMBDA_DEBUG is set: a tracing library must not write into its
users' logs on its own. ``logging`` itself is imported on the first message, not at import
time (it costs more than the rest of the package).
"""

from __future__ import annotations

import os
import sys

from posthog_lambda_contract.environment import POSTHOG_LAMBDA_DEBUG, parse_flag

TYPE_CHECKING = False
if TYPE_CHECKING:
    import logging
    from typing import Any

NAME = "posthog_lambda"


class _Logger:
    """Stands for ``logging.getLogger("posthog_lambda")``, set up on first use."""

    _real: logging.Logger | None = None

    def _get(self) -> logging.Logger:
        real = self._real
        if real is None:
            real = self._real = _setup()
        return real

    def debug(self, msg: str, *args: Any) -> None:
        self._get().debug(msg, *args, stacklevel=2)

    def warning(self, msg: str, *args: Any) -> None:
        self._get().warning(msg, *args, stacklevel=2)

    def exception(self, msg: str, *args: Any) -> None:
        self._get().error(msg, *args, exc_info=True, stacklevel=2)


logger = _Logger()


def _setup() -> logging.Logger:
    import logging

    real = logging.getLogger(NAME)
    if not any(isinstance(h, logging.NullHandler) for h in real.handlers):
        real.addHandler(logging.NullHandler())
    if parse_flag(os.environ.get(POSTHOG_LAMBDA_DEBUG, "")) is True:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[posthog_lambda] %(levelname)s %(message)s"))
        real.addHandler(handler)
        real.setLevel(logging.DEBUG)
        # Printed once: the runtime's root logger (awslambdaric installs a handler there) would
        # print every line again.
        real.propagate = False
    elif real.level == logging.NOTSET:
        # Above CRITICAL: nothing reaches the user's handlers unless they lower it themselves.
        real.setLevel(logging.CRITICAL + 1)
    return real
