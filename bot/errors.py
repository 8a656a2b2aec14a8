"""One place for errors: messages, scheduled jobs and delivery all report here."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

log = logging.getLogger("gridbot.errors")


class ErrorReporter:
    """Logs an exception with its context and counts it by where it happened."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.last: BaseException | None = None

    def report(self, exc: BaseException, *, where: str, **context: Any) -> None:
        self.counts[where] += 1
        self.last = exc
        details = " ".join(f"{k}={v!r}" for k, v in sorted(context.items()))
        log.error("error in %s: %s %s", where, exc.__class__.__name__, details, exc_info=exc)
