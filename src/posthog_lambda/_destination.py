"""Which exporter the current trace's items go to; the first that applies:

1. inside ``testing.capture_events()``: kept in memory for the test;
2. ``configure(sink=...)``;
3. the extension's socket exists (the layer is attached): the socket exporter;
4. POSTHOG_API_KEY set but no extension: posthog-python's Client, from the handler;
5. otherwise nothing: events are counted and dropped, with a logged reason.
"""

from __future__ import annotations

import os
from _thread import allocate_lock

from posthog_lambda_contract.keys import mask

from . import _config
from ._log import logger
from ._sink_exporter import SinkExporter
from ._sinks import DropSink

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ._config import Config
    from ._export import Exporter
    from ._types import Sink

_overrides: list[SinkExporter] = []
_overrides_lock = allocate_lock()
_chosen: tuple[Config, Exporter] | None = None
"""The exporter chosen for the settings in force (chosen again when they change)."""


def push_override(sink: Sink) -> None:
    with _overrides_lock:
        _overrides.append(SinkExporter(sink))


def pop_override(sink: Sink) -> None:
    with _overrides_lock:
        for index in range(len(_overrides) - 1, -1, -1):
            if _overrides[index].sink is sink:
                del _overrides[index]
                return


def exporter() -> Exporter:
    if _overrides:
        return _overrides[-1]
    config = _config.current or _config.get_config()
    global _chosen
    chosen = _chosen
    if chosen is None or chosen[0] is not config:
        chosen = _chosen = (config, _choose(config))
    return chosen[1]


def _choose(config: Config) -> Exporter:
    if config.sink is not None:
        return SinkExporter(config.sink)
    if os.path.exists(config.socket_path):
        from ._socket_exporter import SocketExporter

        logger.debug("events go to the extension at %s", config.socket_path)
        return SocketExporter(config.socket_path, config.spool_dir)
    if config.api_key and config.host:
        from ._posthog_sink import PostHogSink

        logger.debug("events go to %s with key %s", config.host, mask(config.api_key))
        return SinkExporter(PostHogSink(config.api_key, config.host))
    if config.api_key:
        return SinkExporter(DropSink(f"POSTHOG_HOST is not an http(s) URL; key {mask(config.api_key)}"))
    return SinkExporter(DropSink("no POSTHOG_API_KEY and no sink configured"))


def connect_early() -> None:
    """Open the extension's connection now, if events go there: done while a handler is
    decorated (Init), so that the extension knows a traced process is there before the first
    invocation and, without the Telemetry API, need not wait for a START to tell. Never raises."""
    try:
        chosen = exporter()
        connect = getattr(chosen, "connect", None)
        if callable(connect):
            connect()
    except Exception:
        logger.exception("connecting to the extension early failed; it connects at the first hand-off")


def before_snapshot(timeout: float) -> dict[str, Any] | None:
    """Before a snapshot (SnapStart): the extension, if events go there, sends what it holds;
    its answer (``SocketExporter.before_snapshot``), or None. Never raises."""
    chosen = _chosen
    if chosen is None:
        return None  # nothing was exported during Init: nothing to send
    try:
        ask = getattr(chosen[1], "before_snapshot", None)
        if callable(ask):
            answer: dict[str, Any] | None = ask(timeout)
            return answer
    except Exception:
        logger.exception("asking the extension to send before the snapshot failed")
    return None


def reconnect() -> None:
    """After a restore from a snapshot: the extension's connection opened during Init is
    replaced by a new one, opened now (as ``connect_early`` does in Init). Never raises."""
    chosen = _chosen
    if chosen is None:
        return  # nothing chose the extension before the snapshot: nothing to replace
    try:
        renew = getattr(chosen[1], "reconnect", None)
        if callable(renew):
            renew()
    except Exception:
        logger.exception("reconnecting to the extension after the restore failed; it connects at the first hand-off")


def reset() -> None:
    """Forget the chosen exporter, closing its connection (``testing.reset()``)."""
    global _chosen
    chosen, _chosen = _chosen, None
    if chosen is not None and chosen[0].sink is None:  # the user's own sink is theirs to close
        close = getattr(chosen[1], "close", None)
        if callable(close):
            close()
