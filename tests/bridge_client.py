"""Signed bridge requests for tests and benchmarks."""

from __future__ import annotations

import json
import time
from typing import Any

from bot.channels.bridge import sign


def signed(
    body: dict[str, Any] | bytes,
    secret: str,
    *,
    timestamp: int | None = None,
) -> tuple[bytes, dict[str, str]]:
    raw = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
    ts = str(int(time.time()) if timestamp is None else timestamp)
    return raw, {
        "Content-Type": "application/json",
        "X-Bridge-Timestamp": ts,
        "X-Bridge-Signature": sign(secret, ts, raw),
    }


def message(
    message_id: str, sender: str, text: str, *, chat: str | None = None, name: str = ""
) -> dict[str, Any]:
    return {
        "message_id": message_id,
        "sender": {"id": sender, "name": name},
        "chat": {"id": chat, "type": "group"} if chat else {"type": "direct"},
        "text": text,
        "timestamp": int(time.time()),
    }
