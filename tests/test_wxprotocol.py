"""WeChat / WeCom callback protocol: signatures, AES envelope, safe XML, mapping to Inbound."""

from __future__ import annotations

from typing import Any

import pytest
from wechat_client import load_vectors
from wechatpy import parse_message as wechatpy_parse_mp
from wechatpy.enterprise import parse_message as wechatpy_parse_wecom
from wechatpy.replies import TextReply

from bot.channels.wxprotocol import (
    MAX_BODY,
    MessageCrypto,
    ProtocolError,
    parse_callback,
    render_text_reply,
    safe_parse_xml,
    to_inbound,
    url_signature,
    verify_url_signature,
    within_skew,
)

VECTORS = load_vectors()
MESSAGE_VECTORS = [v for v in VECTORS if v["plaintext"].startswith("<xml>")]
ECHOSTR_VECTORS = [v for v in VECTORS if not v["plaintext"].startswith("<xml>")]


def _ids(vectors: list[dict[str, str]]) -> list[str]:
    return [v["name"] for v in vectors]


def _crypto_for(vector: dict[str, str], **override: str) -> MessageCrypto:
    ids = {"app_id": vector["app_id"]} if vector["kind"] == "wechat_mp" else {}
    if vector["kind"] == "wecom":
        ids = {"corp_id": vector["corp_id"]}
    ids.update(override)
    return MessageCrypto(
        vector["kind"],  # type: ignore[arg-type]
        token=vector["token"],
        encoding_aes_key=vector["encoding_aes_key"],
        **ids,
    )


def _envelope(vector: dict[str, str], encrypt: str | None = None) -> bytes:
    """The callback body Tencent posts in safe mode (WeCom adds AgentID)."""
    agent = "<AgentID><![CDATA[218]]></AgentID>" if vector["kind"] == "wecom" else ""
    return (
        "<xml><ToUserName><![CDATA[receiver]]></ToUserName>"
        f"<Encrypt><![CDATA[{encrypt or vector['encrypt']}]]></Encrypt>{agent}</xml>"
    ).encode()


def _xml(**fields: Any) -> str:
    nodes = []
    for name, value in fields.items():
        text = str(value)
        nodes.append(
            f"<{name}>{text}</{name}>"
            if isinstance(value, int)
            else f"<{name}><![CDATA[{text}]]></{name}>"
        )
    return "<xml>" + "".join(nodes) + "</xml>"


# --- official samples -------------------------------------------------------------------------


@pytest.mark.parametrize("vector", MESSAGE_VECTORS, ids=_ids(MESSAGE_VECTORS))
def test_decrypt_body_gives_official_plaintext(vector: dict[str, str]) -> None:
    crypto = _crypto_for(vector)
    plaintext = crypto.decrypt_body(
        _envelope(vector), vector["msg_signature"], vector["timestamp"], vector["nonce"]
    )
    assert plaintext == vector["plaintext"]


@pytest.mark.parametrize("vector", VECTORS, ids=_ids(VECTORS))
def test_official_msg_signature_verifies(vector: dict[str, str]) -> None:
    args = (vector["token"], vector["timestamp"], vector["nonce"], vector["encrypt"])
    assert url_signature(*args) == vector["msg_signature"]
    assert verify_url_signature(vector["msg_signature"], *args)
    assert not verify_url_signature("0" * 40, *args)


def test_official_mp_url_signature_verifies() -> None:
    for vector in (v for v in VECTORS if "url_signature" in v):
        args = (vector["token"], vector["timestamp"], vector["nonce"])
        assert verify_url_signature(vector["url_signature"], *args)
        assert not verify_url_signature(vector["url_signature"], "other-token", *args[1:])


@pytest.mark.parametrize("vector", MESSAGE_VECTORS, ids=_ids(MESSAGE_VECTORS))
def test_decrypt_body_rejects_wrong_signature(vector: dict[str, str]) -> None:
    crypto = _crypto_for(vector)
    wrong = "f" * 40
    with pytest.raises(ProtocolError) as caught:
        crypto.decrypt_body(_envelope(vector), wrong, vector["timestamp"], vector["nonce"])
    assert caught.value.status == 403
    with pytest.raises(ProtocolError) as caught:
        crypto.decrypt_body(_envelope(vector), vector["msg_signature"], vector["timestamp"], "999")
    assert caught.value.status == 403


@pytest.mark.parametrize("vector", MESSAGE_VECTORS, ids=_ids(MESSAGE_VECTORS))
def test_decrypt_body_rejects_message_for_another_app(vector: dict[str, str]) -> None:
    key = "app_id" if vector["kind"] == "wechat_mp" else "corp_id"
    crypto = _crypto_for(vector, **{key: "someone-else"})
    with pytest.raises(ProtocolError) as caught:
        crypto.decrypt_body(
            _envelope(vector), vector["msg_signature"], vector["timestamp"], vector["nonce"]
        )
    assert caught.value.status == 403


@pytest.mark.parametrize("vector", MESSAGE_VECTORS, ids=_ids(MESSAGE_VECTORS))
def test_encrypt_reply_round_trips(vector: dict[str, str]) -> None:
    crypto = _crypto_for(vector)
    reply = render_text_reply("resident", "account", "收到，谢谢 ]]> <b>", 1409735670)
    document = crypto.encrypt_reply(reply, "1320562133", "1409735670")
    fields = safe_parse_xml(document)
    assert set(fields) == {"Encrypt", "MsgSignature", "TimeStamp", "Nonce"}
    assert fields["TimeStamp"] == "1409735670"
    assert fields["Nonce"] == "1320562133"
    plaintext = crypto.decrypt_body(
        document.encode(), fields["MsgSignature"], "1409735670", "1320562133"
    )
    assert plaintext == reply
    assert safe_parse_xml(plaintext)["Content"] == "收到，谢谢 ]]> <b>"


@pytest.mark.parametrize("vector", MESSAGE_VECTORS, ids=_ids(MESSAGE_VECTORS))
def test_encrypt_reply_uses_fresh_random_prefix(vector: dict[str, str]) -> None:
    crypto = _crypto_for(vector)
    first = safe_parse_xml(crypto.encrypt_reply("<xml/>", "1", "2"))["Encrypt"]
    second = safe_parse_xml(crypto.encrypt_reply("<xml/>", "1", "2"))["Encrypt"]
    assert first != second


@pytest.mark.parametrize("vector", ECHOSTR_VECTORS, ids=_ids(ECHOSTR_VECTORS))
def test_decrypt_echostr_official_sample(vector: dict[str, str]) -> None:
    crypto = _crypto_for(vector)
    args = (vector["msg_signature"], vector["timestamp"], vector["nonce"])
    assert crypto.decrypt_echostr(vector["encrypt"], *args) == vector["plaintext"]
    with pytest.raises(ProtocolError) as caught:
        crypto.decrypt_echostr(vector["encrypt"], "0" * 40, *args[1:])
    assert caught.value.status == 403


def test_decrypt_refuses_garbage_that_is_correctly_signed() -> None:
    vector = MESSAGE_VECTORS[0]
    crypto = _crypto_for(vector)
    for garbage in ("not base64 at all!", "QUJD", "A" * 64):
        signature = url_signature(vector["token"], "1", "2", garbage)
        with pytest.raises(ProtocolError) as caught:
            crypto.decrypt_body(_envelope(vector, garbage), signature, "1", "2")
        assert caught.value.status in (400, 403)


def test_encrypt_reply_refuses_nonce_that_would_break_the_document() -> None:
    crypto = _crypto_for(MESSAGE_VECTORS[0])
    with pytest.raises(ProtocolError) as caught:
        crypto.encrypt_reply("<xml/>", "1]]><x>", "1409735670")
    assert caught.value.status == 400
    with pytest.raises(ProtocolError):
        crypto.encrypt_reply("<xml/>", "1", "soon")


def test_message_crypto_refuses_bad_configuration() -> None:
    key = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
    with pytest.raises(ValueError, match="43"):
        MessageCrypto("wecom", token="t", encoding_aes_key="short", corp_id="ww1")
    with pytest.raises(ValueError, match="app_id"):
        MessageCrypto("wechat_mp", token="t", encoding_aes_key=key, corp_id="ww1")
    with pytest.raises(ValueError, match="corp_id"):
        MessageCrypto("wecom", token="t", encoding_aes_key=key)
    with pytest.raises(ValueError, match="kind"):
        MessageCrypto("telegram", token="t", encoding_aes_key=key)  # type: ignore[arg-type]


def test_decrypt_body_refuses_hostile_xml_before_checking_signature() -> None:
    crypto = MessageCrypto(
        "wecom",
        token="t",
        encoding_aes_key="abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
        corp_id="ww1",
    )
    with pytest.raises(ProtocolError) as caught:
        crypto.decrypt_body(BILLION_LAUGHS.encode(), "x", "1", "2")
    assert caught.value.status == 400
    with pytest.raises(ProtocolError) as caught:
        crypto.decrypt_body(b"<xml><ToUserName>x</ToUserName></xml>", "x", "1", "2")
    assert caught.value.status == 400


# --- signatures and skew ----------------------------------------------------------------------


def test_url_signature_is_sha1_of_sorted_concatenation() -> None:
    import hashlib

    expected = hashlib.sha1(b"".join(sorted([b"tok", b"123", b"abc"]))).hexdigest()
    assert url_signature("tok", "123", "abc") == expected


def test_url_signature_sorts_non_ascii_values_by_their_utf8_bytes() -> None:
    import hashlib

    # U+FFFF sorts before U+10000 in UTF-8 (and code points), after it in UTF-16.
    values = ["令牌", "z", "\uffff", "\U00010000", "é"]
    encoded = sorted(value.encode("utf-8") for value in values)
    assert url_signature(*values) == hashlib.sha1(b"".join(encoded)).hexdigest()


def test_verify_url_signature_refuses_non_ascii_and_empty() -> None:
    assert not verify_url_signature("签名", "tok", "1", "2")
    assert not verify_url_signature("", "tok", "1", "2")
    assert verify_url_signature(url_signature("tok", "1", "2").upper(), "tok", "1", "2")


def test_within_skew() -> None:
    assert within_skew("1000", 1100.0, 300)
    assert within_skew("1300", 1000.0, 300)
    assert not within_skew("1000", 1301.0, 300)
    assert not within_skew("2000", 1000.0, 300)
    assert not within_skew("soon", 1000.0, 300)
    assert within_skew("1", 1_000_000.0, 0)
    assert within_skew("soon", 1_000_000.0, 0)


# --- safe XML ---------------------------------------------------------------------------------

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<xml><MsgType>text</MsgType><FromUserName>x</FromUserName><Content>&lol9;</Content></xml>"""

EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE xml [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<xml><MsgType>text</MsgType><FromUserName>x</FromUserName><Content>&xxe;</Content></xml>"""

PARAMETER_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE xml [<!ENTITY % remote SYSTEM "http://127.0.0.1:9/evil.dtd"> %remote;]>
<xml><MsgType>text</MsgType></xml>"""

EXTERNAL_DTD = """<?xml version="1.0"?>
<!DOCTYPE xml SYSTEM "http://127.0.0.1:9/evil.dtd">
<xml><MsgType>text</MsgType></xml>"""


@pytest.mark.parametrize(
    "document",
    [BILLION_LAUGHS, EXTERNAL_ENTITY, PARAMETER_ENTITY, EXTERNAL_DTD],
    ids=["billion-laughs", "external-entity", "parameter-entity", "external-dtd"],
)
def test_safe_parse_xml_refuses_dtds_and_entities(document: str) -> None:
    for body in (document, document.encode()):
        with pytest.raises(ProtocolError) as caught:
            safe_parse_xml(body)
        assert caught.value.status == 400


def test_to_inbound_refuses_billion_laughs() -> None:
    with pytest.raises(ProtocolError) as caught:
        to_inbound("wechat_mp", BILLION_LAUGHS)
    assert caught.value.status == 400


@pytest.mark.parametrize(
    "document",
    [
        b"",
        b"<xml><MsgType>text</MsgType>",
        b"<xml><MsgType>text</Msgtype></xml>",
        b"not xml at all",
        b"<xml></xml><xml></xml>",
        b"<xml>\x00</xml>",
    ],
)
def test_safe_parse_xml_refuses_malformed(document: bytes) -> None:
    with pytest.raises(ProtocolError) as caught:
        safe_parse_xml(document)
    assert caught.value.status == 400


def test_safe_parse_xml_refuses_non_utf8() -> None:
    gbk = '<?xml version="1.0" encoding="GBK"?><xml><Content>你好</Content></xml>'.encode("gbk")
    with pytest.raises(ProtocolError) as caught:
        safe_parse_xml(gbk)
    assert caught.value.status == 400
    assert "UTF-8" in caught.value.reason
    with pytest.raises(ProtocolError):
        safe_parse_xml(b"<xml><Content>\xff\xfe</Content></xml>")


def test_safe_parse_xml_refuses_oversized_body() -> None:
    body = b"<xml><Content>" + b"a" * MAX_BODY + b"</Content></xml>"
    with pytest.raises(ProtocolError) as caught:
        safe_parse_xml(body)
    assert caught.value.status == 413
    with pytest.raises(ProtocolError) as caught:
        safe_parse_xml(body.decode())
    assert caught.value.status == 413


def test_safe_parse_xml_refuses_other_root_and_repeated_elements() -> None:
    with pytest.raises(ProtocolError, match="root"):
        safe_parse_xml(b"<message><MsgType>text</MsgType></message>")
    with pytest.raises(ProtocolError, match="repeated"):
        safe_parse_xml(b"<xml><FromUserName>a</FromUserName><FromUserName>b</FromUserName></xml>")


def test_safe_parse_xml_reads_leaves_cdata_and_skips_nested() -> None:
    fields = safe_parse_xml(
        "\ufeff<xml><ToUserName><![CDATA[gh_1]]></ToUserName><CreateTime>12</CreateTime>"
        "<Content><![CDATA[<不是标签> & 36度5]]></Content><Empty></Empty>"
        "<ScanCodeInfo><ScanType>qrcode</ScanType></ScanCodeInfo></xml>".encode()
    )
    assert fields == {
        "ToUserName": "gh_1",
        "CreateTime": "12",
        "Content": "<不是标签> & 36度5",
        "Empty": "",
    }


# --- mapping to Inbound -----------------------------------------------------------------------

BASE = {"ToUserName": "gh_account", "FromUserName": "o_resident", "CreateTime": 1700000000}


def test_text_message() -> None:
    inbound = to_inbound("wechat_mp", _xml(**BASE, MsgType="text", Content="36度5", MsgId=101))
    assert inbound is not None
    assert inbound.channel == "wechat_mp"
    assert inbound.kind == "text"
    assert inbound.text == "36度5"
    assert inbound.sender_id == "o_resident"
    assert inbound.dedupe_key == "101"
    assert inbound.timestamp == 1700000000
    assert inbound.chat_id is None
    assert not inbound.is_group
    assert inbound.extra["to_user"] == "gh_account"


def test_image_message() -> None:
    inbound = to_inbound(
        "wechat_mp",
        _xml(**BASE, MsgType="image", PicUrl="http://img/1.jpg", MediaId="m1", MsgId=102),
    )
    assert inbound is not None
    assert inbound.kind == "image"
    assert inbound.text == ""
    assert inbound.extra["pic_url"] == "http://img/1.jpg"
    assert inbound.extra["media_id"] == "m1"
    assert inbound.dedupe_key == "102"


def test_location_message() -> None:
    inbound = to_inbound(
        "wechat_mp",
        _xml(
            **BASE,
            MsgType="location",
            Location_X="23.134521",
            Location_Y="113.358803",
            Scale="20",
            Label="某某小区3号楼",
            MsgId=103,
        ),
    )
    assert inbound is not None
    assert inbound.kind == "location"
    assert inbound.text == "某某小区3号楼"
    assert inbound.extra["latitude"] == pytest.approx(23.134521)
    assert inbound.extra["longitude"] == pytest.approx(113.358803)
    assert inbound.extra["scale"] == "20"


def test_voice_with_recognition_reads_as_text() -> None:
    inbound = to_inbound(
        "wechat_mp",
        _xml(**BASE, MsgType="voice", MediaId="v1", Format="amr", Recognition="没有", MsgId=104),
    )
    assert inbound is not None
    assert inbound.kind == "text"
    assert inbound.text == "没有"
    assert inbound.extra["msg_type"] == "voice"
    assert inbound.extra["media_id"] == "v1"


def test_voice_without_recognition_is_other() -> None:
    inbound = to_inbound(
        "wechat_mp", _xml(**BASE, MsgType="voice", MediaId="v1", Format="amr", MsgId=105)
    )
    assert inbound is not None
    assert inbound.kind == "other"
    assert inbound.text == ""
    assert inbound.extra["msg_type"] == "voice"


def test_link_message_carries_title_and_description() -> None:
    inbound = to_inbound(
        "wechat_mp",
        _xml(
            **BASE,
            MsgType="link",
            Title="喝板蓝根能预防",
            Description="转发周知",
            Url="http://example.invalid/a",
            MsgId=106,
        ),
    )
    assert inbound is not None
    assert inbound.kind == "other"
    assert inbound.text == "喝板蓝根能预防\n转发周知"
    assert inbound.extra == {
        "msg_type": "link",
        "to_user": "gh_account",
        "title": "喝板蓝根能预防",
        "description": "转发周知",
        "url": "http://example.invalid/a",
    }


def test_subscribe_event() -> None:
    inbound = to_inbound("wechat_mp", _xml(**BASE, MsgType="event", Event="subscribe"))
    assert inbound is not None
    assert inbound.kind == "event"
    assert inbound.event == "subscribe"
    assert inbound.event_key is None
    assert "scene" not in inbound.extra
    assert inbound.dedupe_key == "o_resident:1700000000:subscribe"


def test_subscribe_from_qr_scene_keeps_scene() -> None:
    inbound = to_inbound(
        "wechat_mp",
        _xml(**BASE, MsgType="event", Event="subscribe", EventKey="qrscene_grid-12", Ticket="T"),
    )
    assert inbound is not None
    assert inbound.event == "subscribe"
    assert inbound.event_key == "grid-12"
    assert inbound.extra["scene"] == "grid-12"
    assert inbound.extra["ticket"] == "T"
    assert inbound.dedupe_key == "o_resident:1700000000:subscribe:qrscene_grid-12"


def test_unsubscribe_event() -> None:
    inbound = to_inbound("wechat_mp", _xml(**BASE, MsgType="event", Event="unsubscribe"))
    assert inbound is not None
    assert (inbound.kind, inbound.event) == ("event", "unsubscribe")


def test_click_event_is_lowercased_with_key() -> None:
    inbound = to_inbound(
        "wechat_mp", _xml(**BASE, MsgType="event", Event="CLICK", EventKey="CHECKIN")
    )
    assert inbound is not None
    assert inbound.event == "click"
    assert inbound.event_key == "CHECKIN"
    assert inbound.dedupe_key == "o_resident:1700000000:CLICK:CHECKIN"


def test_view_event_keeps_url() -> None:
    inbound = to_inbound(
        "wechat_mp", _xml(**BASE, MsgType="event", Event="VIEW", EventKey="https://x.invalid/")
    )
    assert inbound is not None
    assert inbound.event == "view"
    assert inbound.extra["url"] == "https://x.invalid/"


def test_scan_event_keeps_scene() -> None:
    inbound = to_inbound(
        "wechat_mp", _xml(**BASE, MsgType="event", Event="SCAN", EventKey="grid-7", Ticket="T2")
    )
    assert inbound is not None
    assert inbound.event == "scan"
    assert inbound.event_key == "grid-7"
    assert inbound.extra["scene"] == "grid-7"
    assert inbound.extra["ticket"] == "T2"


def test_template_send_job_finish_event() -> None:
    inbound = to_inbound(
        "wechat_mp",
        _xml(
            **BASE,
            MsgType="event",
            Event="TEMPLATESENDJOBFINISH",
            MsgID=200163836,
            Status="failed:user block",
        ),
    )
    assert inbound is not None
    assert inbound.event == "templatesendjobfinish"
    assert inbound.extra["msg_id"] == "200163836"
    assert inbound.extra["status"] == "failed:user block"
    assert inbound.dedupe_key == "o_resident:1700000000:TEMPLATESENDJOBFINISH:200163836"


def test_wecom_enter_agent_event() -> None:
    inbound = to_inbound(
        "wecom",
        _xml(
            ToUserName="ww_corp",
            FromUserName="zhangsan",
            CreateTime=1700000000,
            MsgType="event",
            Event="enter_agent",
            EventKey="",
            AgentID=1000002,
        ),
    )
    assert inbound is not None
    assert inbound.channel == "wecom"
    assert inbound.event == "enter_agent"
    assert inbound.event_key is None
    assert inbound.extra["agent_id"] == "1000002"
    assert inbound.dedupe_key == "zhangsan:1700000000:enter_agent"


def test_wecom_group_message_sets_chat_id() -> None:
    inbound = to_inbound(
        "wecom",
        _xml(
            ToUserName="ww_corp",
            FromUserName="lisi",
            CreateTime=1700000001,
            MsgType="text",
            Content="收到",
            MsgId=9001,
            AgentID=1000002,
            ChatId="wrkSFfCgAAxxxx",
        ),
    )
    assert inbound is not None
    assert inbound.chat_id == "wrkSFfCgAAxxxx"
    assert inbound.is_group
    assert inbound.text == "收到"


def test_unknown_message_type_is_other_not_an_error() -> None:
    for msg_type in ("shortvideo", "miniprogrampage", "hologram"):
        inbound = to_inbound("wechat_mp", _xml(**BASE, MsgType=msg_type, MsgId=107))
        assert inbound is not None
        assert inbound.kind == "other"
        assert inbound.extra["msg_type"] == msg_type
        assert inbound.dedupe_key == "107"


def test_unknown_event_is_still_an_event() -> None:
    inbound = to_inbound("wechat_mp", _xml(**BASE, MsgType="event", Event="Some_New_Event"))
    assert inbound is not None
    assert (inbound.kind, inbound.event) == ("event", "some_new_event")


def test_message_without_sender_is_none_and_without_type_is_refused() -> None:
    assert to_inbound("wecom", _xml(ToUserName="ww", MsgType="event", Event="x")) is None
    with pytest.raises(ProtocolError) as caught:
        to_inbound("wechat_mp", _xml(FromUserName="o_resident"))
    assert caught.value.status == 400


@pytest.mark.parametrize("vector", MESSAGE_VECTORS, ids=_ids(MESSAGE_VECTORS))
def test_official_plaintext_maps_to_text_inbound(vector: dict[str, str]) -> None:
    inbound = to_inbound(vector["kind"], vector["plaintext"])
    assert inbound is not None
    assert inbound.kind == "text"
    assert inbound.text in ("abcdteT", "hello", "你好")
    assert inbound.dedupe_key.isdigit()


# --- wechatpy's message objects, from one parse ----------------------------------------------

_HEAD = (
    "<ToUserName><![CDATA[gh_account]]></ToUserName>"
    "<FromUserName><![CDATA[o_resident]]></FromUserName><CreateTime>1700000000</CreateTime>"
)
CALLBACK_DOCUMENTS = {
    "text": "<MsgType><![CDATA[text]]></MsgType><Content><![CDATA[帮助]]></Content>"
    "<MsgId>1</MsgId>",
    "text padded, empty and attributed": "<MsgType>\n  text </MsgType>"
    "<Content><![CDATA[  36度5 \n]]></Content><MsgId></MsgId><Extra kind='x'>y</Extra>",
    "text split by a comment": "<MsgType>text</MsgType><Content>a<!-- c -->b</Content>",
    "image": "<MsgType><![CDATA[image]]></MsgType><PicUrl><![CDATA[http://p/1.jpg]]></PicUrl>"
    "<MediaId><![CDATA[m1]]></MediaId><MsgId>2</MsgId>",
    "voice": "<MsgType><![CDATA[voice]]></MsgType><MediaId><![CDATA[m2]]></MediaId>"
    "<Format><![CDATA[amr]]></Format><Recognition><![CDATA[没有]]></Recognition>",
    "location": "<MsgType><![CDATA[location]]></MsgType><Location_X>23.1</Location_X>"
    "<Location_Y>113.3</Location_Y><Scale>15</Scale><Label><![CDATA[某小区]]></Label>",
    "link": "<MsgType><![CDATA[link]]></MsgType><Title><![CDATA[标题]]></Title>"
    "<Description><![CDATA[摘要]]></Description><Url><![CDATA[http://a/b]]></Url>",
    "unknown type": "<MsgType><![CDATA[hologram]]></MsgType>",
    "subscribe": "<MsgType>event</MsgType><Event>subscribe</Event><EventKey></EventKey>",
    "subscribe by QR scene": "<MsgType>event</MsgType><Event>subscribe</Event>"
    "<EventKey>qrscene_grid-12</EventKey><Ticket>T</Ticket>",
    "subscribe by product scan": "<MsgType>event</MsgType><Event>subscribe</Event>"
    "<EventKey>scanbarcode|x</EventKey>",
    "scan": "<MsgType>event</MsgType><Event>SCAN</Event><EventKey>grid-12</EventKey>",
    "click": "<MsgType>event</MsgType><Event>CLICK</Event><EventKey>CHECKIN</EventKey>",
    "view": "<MsgType>event</MsgType><Event>VIEW</Event><EventKey>http://a/</EventKey>",
    "location event": "<MsgType>event</MsgType><Event>LOCATION</Event>"
    "<Latitude>23.1</Latitude><Longitude>113.3</Longitude><Precision>1</Precision>",
    "template receipt": "<MsgType>event</MsgType><Event>TEMPLATESENDJOBFINISH</Event>"
    "<MsgID>200163836</MsgID><Status><![CDATA[success]]></Status>",
    "scan code with nested info": "<MsgType>event</MsgType><Event>scancode_waitmsg</Event>"
    "<EventKey>k</EventKey><ScanCodeInfo><ScanType>qrcode</ScanType>"
    "<ScanResult>1</ScanResult></ScanCodeInfo>",
    "pictures with a repeated item": "<MsgType>event</MsgType><Event>pic_weixin</Event>"
    "<SendPicsInfo><Count>2</Count><PicList><item><PicMd5Sum>a</PicMd5Sum></item>"
    "<item><PicMd5Sum>b</PicMd5Sum></item></PicList></SendPicsInfo>",
    "device event": "<MsgType>device_event</MsgType><Event>bind</Event>",
    "device text": "<MsgType>device_text</MsgType><Content>x</Content>",
    "event without Event": "<MsgType>event</MsgType>",
    "wecom enter agent": "<MsgType>event</MsgType><Event>enter_agent</Event>"
    "<EventKey></EventKey><AgentID>1000002</AgentID>",
    "wecom group text": "<MsgType>text</MsgType><Content>收到</Content><MsgId>9</MsgId>"
    "<AgentID>1000002</AgentID><ChatId>wrkSF</ChatId>",
}


def _wechatpy_parse(document: str, platform: str) -> Any:
    """What wechatpy's own parser makes of a document, or the exception it raises."""
    parse = wechatpy_parse_wecom if platform == "wecom" else wechatpy_parse_mp
    try:
        return parse(document)
    except (KeyError, AttributeError) as exc:
        return type(exc)


@pytest.mark.parametrize("platform", ["wechat_mp", "wecom"])
@pytest.mark.parametrize("name", list(CALLBACK_DOCUMENTS))
def test_parse_callback_builds_the_message_wechatpy_would(name: str, platform: str) -> None:
    document = f"<xml>{_HEAD}{CALLBACK_DOCUMENTS[name]}</xml>"
    expected = _wechatpy_parse(document, platform)
    try:
        fields, message = parse_callback(document, platform)  # type: ignore[arg-type]
    except (KeyError, AttributeError) as exc:
        assert type(exc) is expected
        return
    assert type(message) is type(expected)
    assert message._data == dict(expected._data)
    assert fields == safe_parse_xml(document)


def test_parse_callback_refuses_what_safe_parse_xml_refuses() -> None:
    with pytest.raises(ProtocolError, match="DTDForbidden"):
        parse_callback('<!DOCTYPE x [<!ENTITY a "b">]><xml><MsgType>&a;</MsgType></xml>', "wecom")
    with pytest.raises(ProtocolError, match="repeated"):
        parse_callback("<xml><MsgType>a</MsgType><MsgType>b</MsgType></xml>", "wechat_mp")


def test_deeply_nested_elements_are_refused_not_a_crash() -> None:
    document = _xml(**BASE, MsgType="text", Content="x").replace(
        "</xml>", "<Deep>" + "<a>" * 5000 + "</a>" * 5000 + "</Deep></xml>"
    )
    with pytest.raises(ProtocolError, match="nested too deeply") as caught:
        to_inbound("wechat_mp", document)
    assert caught.value.status == 400
    nested = "<SendPicsInfo><PicList><item><PicMd5Sum>a</PicMd5Sum></item></PicList></SendPicsInfo>"
    document = _xml(**BASE, MsgType="event", Event="pic_weixin")
    document = document.replace("</xml>", nested + "</xml>")
    assert to_inbound("wechat_mp", document) is not None


# --- passive reply ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("to_user", "from_user", "text"),
    [
        ("o_resident", "gh_account", "已记录：36.5℃"),
        ("o", "gh", "第一行\n\n第二行 & <b>不是标签</b>"),
        ("o]]>x", "gh", "a]]>b"),
        ("", "", ""),
    ],
)
def test_render_text_reply_is_wechatpys_text_reply(to_user: str, from_user: str, text: str) -> None:
    expected = TextReply(
        target=to_user.replace("]]>", "]]]]><![CDATA[>"),
        source=from_user.replace("]]>", "]]]]><![CDATA[>"),
        content=text.replace("]]>", "]]]]><![CDATA[>"),
        time=1700000009,
    ).render()
    assert render_text_reply(to_user, from_user, text, 1700000009) == expected


def test_render_text_reply() -> None:
    document = render_text_reply("o_resident", "gh_account", "已记录：36.5℃", 1700000009)
    fields = safe_parse_xml(document)
    assert fields == {
        "ToUserName": "o_resident",
        "FromUserName": "gh_account",
        "CreateTime": "1700000009",
        "MsgType": "text",
        "Content": "已记录：36.5℃",
    }


def test_render_text_reply_survives_cdata_terminator_and_control_characters() -> None:
    document = render_text_reply("o]]>x", "gh", "a]]><MsgType>news</MsgType>\x00\x07b", 1)
    fields = safe_parse_xml(document)
    assert fields["Content"] == "a]]><MsgType>news</MsgType>b"
    assert fields["ToUserName"] == "o]]>x"
    assert fields["MsgType"] == "text"
