"""The one shape of a service's refusal, shared by the notice and rumor services.

A refusal names a ``reason``; the sentence is the template ``<feature>/refused/<reason>``
rendered with ``values`` (chat says it, the API sends it as the error message, the console
shows it, preferring ``<feature>/console/<reason>`` where a form needs other wording);
``http_status`` is what the API answers with.
"""

from __future__ import annotations

from typing import Any, ClassVar


class Refused(Exception):
    """Bad input or a forbidden action of a service; subclasses name their ``feature``."""

    feature: ClassVar[str]

    def __init__(self, reason: str, http_status: int = 400, **values: Any) -> None:
        super().__init__(reason)
        self.reason = reason
        self.http_status = http_status
        self.values = values

    @property
    def template(self) -> str:
        return f"{self.feature}/refused/{self.reason}"
