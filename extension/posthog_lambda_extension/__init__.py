"""The posthog-lambda external extension: receives events from the function over a Unix socket
and sends them to PostHog outside the function's response.

Run as ``python -m posthog_lambda_extension [name]`` by the layer's launcher. This package
imports nothing on import: ``__main__`` loads what registration needs, and the parts that
send to PostHog (``http.client``, ``ssl``) load on the first flush.
"""

__version__ = "0.1.0"
