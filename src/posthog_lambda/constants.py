"""Every environment variable posthog-lambda reads: ``posthog_lambda_contract.environment``,
which the extension reads too, under the library's public name."""

from __future__ import annotations

from posthog_lambda_contract.environment import *  # noqa: F403
from posthog_lambda_contract.environment import __doc__ as _contract_doc

__doc__ = _contract_doc
