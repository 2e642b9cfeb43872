"""``python -m posthog_lambda_extension [name]``: register as ``name`` and serve until SHUTDOWN."""

import sys

from ._main import main

sys.exit(main(sys.argv[1:]))
