"""Signed (and encrypted) WeChat / WeCom callbacks as Tencent sends them, and their replies.

Tests build requests with these and post them through the real app; replies are verified and
decrypted the way Tencent would.
"""

from __future__ import annotations

import json
import secrets
import time
from itertools import count
from pathlib import Path
from typing import Any

from bot.channels.wxprotocol import MessageCrypto, safe_parse_xml, url_signature

MP_TOKEN = "mp-test-token"
WECOM_TOKEN = "wecom-test-token"
AES_KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"
ACCOUNT = "gh_test_account"

_ids = count(7_000_000_000_000_000_000)


def next_msg_id() -> int:
    """A fresh MsgId."""
    return next(_ids)


def xml(**fields: Any) -> str:
    """A callback document: ints plain, everything else in CDATA, in the given order."""
    nodes = []
    for name, value in fields.items():
        if value is None:
            continue
        if isinstance(value, int):
            nodes.append(f"<{name}>{value}</{name}>")
        else:
            nodes.append(f"<{name}><![CDATA[{value}]]></{name}>")
    return "<xml>" + "".join(nodes) + "</xml>"


def text_message(
    sender: str,
    text: str,
    *,
    msg_id: int | None = None,
    to: str = ACCOUNT,
    agent_id: int | None = None,
    chat_id: str | None = None,
) -> str:
    return xml(
        ToUserName=to,
        FromUserName=sender,
        CreateTime=int(time.time()),
        MsgType="text",
        Content=text,
        MsgId=msg_id if msg_id is not None else next_msg_id(),
        AgentID=agent_id,
        ChatId=chat_id,
    )


def event_message(
    sender: str,
    event: str,
    *,
    key: str | None = None,
    to: str = ACCOUNT,
    agent_id: int | None = None,
    **more: Any,
) -> str:
    return xml(
        ToUserName=to,
        FromUserName=sender,
        CreateTime=int(time.time()),
        MsgType="event",
        Event=event,
        EventKey=key,
        AgentID=agent_id,
        **more,
    )


def signed_query(
    token: str = MP_TOKEN, *, timestamp: int | str | None = None, nonce: str | None = None
) -> dict[str, str]:
    """The official account's URL signature query (plaintext mode)."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    nonce = nonce or str(secrets.randbelow(10**9))
    return {"signature": url_signature(token, ts, nonce), "timestamp": ts, "nonce": nonce}


def encrypt(
    crypto: MessageCrypto,
    plaintext: str,
    *,
    timestamp: int | str | None = None,
    nonce: str | None = None,
    to: str = ACCOUNT,
    plain_fields: str = "",
) -> tuple[dict[str, str], bytes]:
    """A safe-mode request: ``(query with msg_signature, body with Encrypt)``.

    ``plain_fields`` (compatible mode) are put into the body beside ``Encrypt``.
    """
    ts = str(int(time.time()) if timestamp is None else timestamp)
    nonce = nonce or str(secrets.randbelow(10**9))
    envelope = safe_parse_xml(crypto.encrypt_reply(plaintext, nonce, ts))
    body = (
        f"<xml><ToUserName><![CDATA[{to}]]></ToUserName>{plain_fields}"
        f"<Encrypt><![CDATA[{envelope['Encrypt']}]]></Encrypt></xml>"
    ).encode()
    query = {"msg_signature": envelope["MsgSignature"], "timestamp": ts, "nonce": nonce}
    return query, body


def mp_safe_request(
    crypto: MessageCrypto, plaintext: str, **kw: Any
) -> tuple[dict[str, str], bytes]:
    """The official account's safe-mode request: URL signature and msg_signature."""
    query, body = encrypt(crypto, plaintext, **kw)
    query.update(
        signature=url_signature(crypto.token, query["timestamp"], query["nonce"]),
        encrypt_type="aes",
    )
    return query, body


def open_reply(crypto: MessageCrypto, body: str) -> dict[str, str]:
    """Verify an encrypted passive reply's MsgSignature, decrypt it, return its fields."""
    envelope = safe_parse_xml(body)
    plaintext = crypto.decrypt_body(
        body.encode(), envelope["MsgSignature"], envelope["TimeStamp"], envelope["Nonce"]
    )
    return safe_parse_xml(plaintext)


def mp_crypto(app_id: str, token: str = MP_TOKEN) -> MessageCrypto:
    return MessageCrypto("wechat_mp", token=token, encoding_aes_key=AES_KEY, app_id=app_id)


def wecom_crypto(corp_id: str, token: str = WECOM_TOKEN) -> MessageCrypto:
    return MessageCrypto("wecom", token=token, encoding_aes_key=AES_KEY, corp_id=corp_id)


VECTORS_PATH = Path(__file__).resolve().parent / "data" / "wechat-crypto-vectors.json"


def load_vectors() -> list[dict[str, str]]:
    """Tencent's published encryption samples (WXBizMsgCrypt and wechatpy's tests), kept with
    the tests so that they always run."""
    return list(json.loads(VECTORS_PATH.read_text(encoding="utf-8"))["vectors"])
