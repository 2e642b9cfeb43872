"""``posthog-lambda`` (or ``python -m posthog_lambda``): the project's command-line tools.

posthog-lambda local --function DIR --handler mod.fn [--layer DIR] [--event FILE] [--times N]
posthog-lambda capture [--port N]
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

USAGE = "usage: posthog-lambda {local,capture} ... (add --help to either for its options)"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    command = args.pop(0) if args else ""
    if command == "local":
        from .local.cli import local

        return local(args)
    if command == "capture":
        from .local.cli import capture

        return capture(args)
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
