"""What the function's process and the extension agree on, and nothing else.

Both sides import this package; it is the only code the extension takes from the library's
tree, so it stays standard library only and imports nothing on import. Its modules:

- ``environment``: every environment variable either side reads, and how a value is parsed.
- ``frames``: the frame protocol over the Unix socket and the spool.
- ``records``: a finished span's compact record, and the event it stands for.
- ``events``: the one event builder (uuid, timestamp, identity rules, privacy mode).
- ``ids``: trace, span and event identifiers.
- ``limits``: PostHog's per-event size limits, and fitting an event within them.
- ``keys``: masking a secret for a log line.
- ``schema``: the ``Event`` type, for type checking only.

Not a public API: its modules change with the product, on both sides at once.
"""
