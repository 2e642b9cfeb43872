"""Frames the function wrote to spool files because the socket could not take them in time."""

from __future__ import annotations

from posthog_lambda_contract import frames

from . import _log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._intake import Intake


class Spool:
    def __init__(self, directory: str, intake: Intake) -> None:
        self.directory = directory
        self.intake = intake

    def drain(self) -> int:
        """Read, act on and remove every spool file; how many files there were. Never raises."""
        try:
            contents = frames.claim_spool(self.directory)
        except OSError as exc:
            _log.once("spool", f"cannot read the spool directory {self.directory}: {exc}")
            return 0
        for content in contents:
            reader = frames.Reader()
            source = f"a spool file in {self.directory}"
            self.intake.feed(reader, content, source)
            self.intake.finish(reader, source)
        if contents:
            _log.debug(f"drained {len(contents)} spool file(s)")
        return len(contents)
