"""Values made to fit what both databases hold: keys within their column, text they can store.

PostgreSQL refuses a string longer than its ``VARCHAR(n)`` column, except under an explicit
cast (the batch inserts' ``unnest`` of typed arrays), which truncates it silently: two keys
that share their first ``n`` characters then become one.  A key that does not fit is stored as
a digest instead, the same for every attempt, so it deduplicates as the key would.
"""

from __future__ import annotations

import hashlib
import re

_UNENCODABLE = re.compile("[\ud800-\udfff]")


def fit_key(key: str, length: int, suffix: str = "") -> str:
    """``key + suffix``, or the SHA-256 hex digest of ``key`` followed by ``suffix`` when that
    would be longer than ``length`` characters."""
    if len(key) + len(suffix) <= length:
        return key + suffix
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest() + suffix


def storable_text(text: str, *, nul: str = "") -> str:
    """``text`` with NUL (which PostgreSQL text cannot hold) replaced by ``nul`` and each lone
    surrogate (which no UTF-8 encoder takes: half an emoji cut at a UTF-16 boundary) by
    U+FFFD."""
    if "\x00" in text:
        text = text.replace("\x00", nul)
    return _UNENCODABLE.sub("\ufffd", text)
